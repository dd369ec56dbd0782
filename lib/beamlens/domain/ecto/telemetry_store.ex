defmodule Beamlens.Domain.Ecto.TelemetryStore do
  @options [
    repo: [type: :module, required: true, doc: "The Ecto repo module (required)."],
    window_ms: [type: :pos_integer, default: 60_000, doc: "Length of the rolling window."],
    slots: [type: :pos_integer, default: 12, doc: "Time slots in the window."],
    slow_query_ms: [
      type: :pos_integer,
      default: 100,
      doc: "Total time (ms) from which a query is slow."
    ],
    max_groups: [type: :pos_integer, default: 100, doc: "SQL groups kept."],
    max_sources: [type: :pos_integer, default: 200, doc: "Sources counted separately."],
    max_sql_bytes: [type: :pos_integer, default: 2_000, doc: "Longest normalised SQL kept."],
    max_pending: [
      type: :pos_integer,
      default: 500,
      doc: "Slow/failed queries waiting for the store before more are only counted."
    ]
  ]

  @moduledoc """
  Rolling statistics of one Ecto repo's queries, for an Ecto domain (see
  `Beamlens.Domain.Ecto`). Start it, after the registry and before
  BeamLens:

      children = [
        MyApp.Repo,
        {Registry, keys: :unique, name: Beamlens.Domain.Ecto.Registry},
        {Beamlens.Domain.Ecto.TelemetryStore, repo: MyApp.Repo},
        {Beamlens, watchers: [:beam, [name: :ecto, domain_module: MyApp.EctoDomain]]}
      ]

  It attaches to the repo's query event, `telemetry_prefix ++ [:query]`
  (`[:my_app, :repo, :query]` by default), and reads the measurements
  `:query_time`, `:queue_time`, `:decode_time` and `:total_time` (native
  units; any may be absent) and the metadata `:source`, `:query` and
  `:result`. It never reads `:params`.

  ## What it keeps

    * Over the last `:window_ms` (in `:slots` time slots): query count,
      errors, slow queries (`:total_time` at or above `:slow_query_ms`),
      and latency histograms of query, queue and total time (4 buckets per
      power of two, so percentiles are within 12%; see
      `Beamlens.Domain.Ecto.SlotRing` and `Beamlens.Domain.Ecto.Histogram`).
      Queue time is the time a query waited for a pool connection: the
      pool-pressure signal.
    * Since start: query, error and slow-query counts; per source (table):
      queries, total time and errors, for at most `:max_sources` sources
      (later ones are counted under `"other"`).
    * Slow and failed queries grouped by normalised SQL (comments dropped,
      literals replaced by `?`, `IN (?, ?, ?)` collapsed, capped at
      `:max_sql_bytes`, then redacted by `Beamlens.Redactor`): count, time,
      last error. At most `:max_groups` groups; the least recently seen
      goes first (`Beamlens.Domain.Ecto.QueryGroups`).

  ## Cost in the querying process

  The handler runs in the process that ran the query. It updates a few
  atomics and one ETS counter (about a microsecond); only for slow or
  failed queries does it send the SQL text to the store, and when
  `:max_pending` of those wait, it only counts them. The handler never
  raises (`:telemetry` would detach it).

  Queries that BeamLens itself runs (the `EctoPSQLExtras` diagnostics) are
  tagged with `telemetry_options: [beamlens: true]` and left out.

  ## Options

  #{Beamlens.Schema.docs(@options)}

  Starting fails with an `ArgumentError` that says what is wrong when the
  registry is not running, the repo is not loaded or not an Ecto repo, or
  it has no telemetry prefix.
  """

  use GenServer

  @compile {:no_warn_undefined, :telemetry}

  alias Beamlens.Domain.Ecto.{Histogram, QueryGroups, SlotRing}
  alias Beamlens.{Redactor, Store}

  @registry Beamlens.Domain.Ecto.Registry

  # Totals since start (a :counters array).
  @total_count 1
  @total_errors 2
  @total_slow 3
  @total_dropped 4

  @doc false
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts),
    do: Store.child_spec(__MODULE__, opts, {__MODULE__, Keyword.get(opts, :repo)})

  @doc """
  Starts the store for `opts[:repo]` (see the module docs). Raises
  `ArgumentError` with an explanation when it cannot work.
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    opts = validate!(opts)
    GenServer.start_link(__MODULE__, opts)
  end

  @doc """
  The store of `repo`: `{:ok, store}` or `{:error, message}` when none runs.
  """
  @spec lookup(module()) :: {:ok, map()} | {:error, String.t()}
  def lookup(repo) do
    # The registry drops a stopped store's entry only once it has processed
    # the exit, so a store that has just stopped can still be listed: its
    # ETS tables are gone with it, so it counts as not running.
    case Registry.lookup(@registry, {__MODULE__, repo}) do
      [{pid, store}] ->
        if Process.alive?(pid), do: {:ok, store}, else: not_running(repo)

      [] ->
        not_running(repo)
    end
  rescue
    ArgumentError ->
      {:error,
       "the registry #{inspect(@registry)} is not running: add " <>
         "{Registry, keys: :unique, name: #{inspect(@registry)}} to your supervision tree before the store"}
  end

  defp not_running(repo) do
    {:error,
     "no #{inspect(__MODULE__)} runs for #{inspect(repo)}: add " <>
       "{#{inspect(__MODULE__)}, repo: #{inspect(repo)}} to your supervision tree before BeamLens"}
  end

  ## Handler (runs in the querying process)

  @doc false
  @spec handle_event([atom()], map(), map(), map()) :: :ok
  def handle_event(_event, measurements, metadata, store) do
    unless own_query?(metadata) do
      query_us = us(measurements[:query_time])
      queue_us = us(measurements[:queue_time])
      decode_us = us(measurements[:decode_time])

      total_us =
        case us(measurements[:total_time]) do
          nil -> (query_us || 0) + (queue_us || 0) + (decode_us || 0)
          total -> total
        end

      error? = match?({:error, _}, metadata[:result])
      slow? = total_us >= store.slow_us

      now = System.monotonic_time(:millisecond) - store.origin
      SlotRing.record(store, now, {total_us, query_us, queue_us, decode_us}, error?, slow?)

      c = store.counters
      :counters.add(c, @total_count, 1)
      if error?, do: :counters.add(c, @total_errors, 1)
      if slow?, do: :counters.add(c, @total_slow, 1)

      source = metadata[:source]
      error = if error?, do: 1, else: 0
      count_source(store, if(is_binary(source), do: source, else: "(none)"), total_us, error)

      if slow? or error? do
        submit(store, %{
          sql: sql_text(metadata[:query], store.max_sql_bytes),
          source: if(is_binary(source), do: source),
          total_us: total_us,
          query_us: query_us,
          queue_us: queue_us,
          slow: slow?,
          error: if(error?, do: error_info(metadata[:result])),
          at: System.system_time(:millisecond)
        })
      end
    end

    :ok
  rescue
    _ -> :ok
  end

  defp own_query?(%{options: options}) when is_list(options),
    do: Keyword.get(options, :beamlens, false) == true

  defp own_query?(_), do: false

  defp us(nil), do: nil

  defp us(native) when is_integer(native),
    do: System.convert_time_unit(native, :native, :microsecond)

  defp us(_), do: nil

  # Once max_sources sources are counted, "other" takes the count.
  defp count_source(store, source, total_us, error) do
    ops = [{2, 1}, {3, total_us}, {4, error}]
    Store.bump(store.sources, source, ops, {source, 0, 0, 0}, store.max_sources)
  end

  defp submit(store, record) do
    if Store.offer(store, {:record, record}) == :full,
      do: :counters.add(store.counters, @total_dropped, 1)
  end

  defp sql_text(sql, max) when is_binary(sql) and byte_size(sql) <= max * 2, do: sql
  defp sql_text(sql, max) when is_binary(sql), do: binary_part(sql, 0, max * 2)
  defp sql_text(nil, _max), do: nil
  defp sql_text(other, max), do: inspect(other, limit: 20, printable_limit: max)

  defp error_info({:error, %{__exception__: true, __struct__: module} = exception}) do
    message =
      try do
        Exception.message(exception)
      rescue
        _ -> "(message unavailable)"
      end

    %{exception: Beamlens.Domain.id(module), message: Redactor.truncate(message, 500)}
  end

  defp error_info({:error, reason}),
    do: %{exception: nil, message: inspect(reason, limit: 10, printable_limit: 500)}

  ## Reading (in the caller, from the shared arrays)

  @doc """
  Statistics over the rolling window: `:queries`, `:errors`, `:slow`,
  `:window_ms` (the time covered), and for `:query_ms`, `:queue_ms`,
  `:total_ms` the `:p50`, `:p95`, `:p99`, `:max` and `:avg` (`nil` when
  no query in the window had that measurement), `:decode_avg_ms`,
  `:queued` (queries with a queue time) and the fraction of those that
  waited 10 ms and 100 ms or more.
  """
  @spec window(map()) :: map()
  def window(store) do
    w = SlotRing.read(store, System.monotonic_time(:millisecond) - store.origin)

    %{
      queries: w.queries,
      errors: w.errors,
      slow: w.slow,
      queued: w.queued,
      window_ms: w.window_ms,
      query_ms: Histogram.summary(w.query_hist, w.sum_query_us),
      queue_ms: Histogram.summary(w.queue_hist, w.sum_queue_us),
      total_ms: Histogram.summary(w.total_hist, w.sum_total_us),
      decode_avg_ms: if(w.queries > 0, do: ms(w.sum_decode_us / w.queries)),
      waited_10ms_share: Histogram.share_at_least(w.queue_hist, 10_000, w.queued),
      waited_100ms_share: Histogram.share_at_least(w.queue_hist, 100_000, w.queued)
    }
  end

  @doc "Totals since the store started: `:queries`, `:errors`, `:slow`, `:dropped`."
  @spec totals(map()) :: map()
  def totals(store) do
    c = store.counters

    %{
      queries: :counters.get(c, @total_count),
      errors: :counters.get(c, @total_errors),
      slow: :counters.get(c, @total_slow),
      dropped: :counters.get(c, @total_dropped)
    }
  end

  @doc "The `n` sources (tables) with the most total query time since start."
  @spec sources(map(), pos_integer()) :: [map()]
  def sources(store, n) do
    store.sources
    |> :ets.tab2list()
    |> Enum.sort_by(&elem(&1, 2), :desc)
    |> Enum.take(n)
    |> Enum.map(fn {source, count, total_us, errors} ->
      %{
        source: source,
        queries: count,
        total_ms: ms(total_us),
        avg_ms: ms(total_us / max(count, 1)),
        errors: errors
      }
    end)
  end

  @doc """
  The `n` groups of slow queries with the most total time: normalised,
  redacted SQL, source, count of slow executions, average and max time.
  """
  @spec slow_queries(map(), pos_integer()) :: [map()]
  def slow_queries(store, n), do: GenServer.call(store.pid, {:groups, :slow, n})

  @doc """
  The `n` groups of failed queries with the most errors: normalised,
  redacted SQL, source, error count and the last error (exception and
  redacted message).
  """
  @spec errors(map(), pos_integer()) :: [map()]
  def errors(store, n), do: GenServer.call(store.pid, {:groups, :errors, n})

  defp ms(us), do: Histogram.ms(us)

  ## GenServer

  @impl true
  def init(opts) do
    repo = opts[:repo]
    slots = opts[:slots]

    store =
      slots
      |> SlotRing.new(opts[:window_ms])
      |> Map.merge(Store.inbox(opts[:max_pending]))
      |> Map.merge(%{
        repo: repo,
        counters: :counters.new(4, [:write_concurrency]),
        sources: Store.table(:beamlens_ecto_sources),
        origin: System.monotonic_time(:millisecond),
        slow_us: opts[:slow_query_ms] * 1_000,
        max_sql_bytes: opts[:max_sql_bytes],
        max_sources: opts[:max_sources],
        slow_query_ms: opts[:slow_query_ms],
        pool_size: opts[:pool_size],
        event: opts[:prefix] ++ [:query]
      })

    handler_id = {__MODULE__, repo}
    Process.flag(:trap_exit, true)

    with {:ok, _} <- register(repo, store),
         :ok <- attach(handler_id, store) do
      state = %{
        store: store,
        handler_id: handler_id,
        groups: QueryGroups.new(opts[:max_groups], opts[:max_sql_bytes]),
        prepared: -1
      }

      {:ok, prepare_slots(state)}
    else
      {:error, message} -> {:stop, %ArgumentError{message: message}}
    end
  end

  defp register(repo, store) do
    case Registry.register(@registry, {__MODULE__, repo}, store) do
      {:ok, _} = ok ->
        ok

      {:error, {:already_registered, pid}} ->
        {:error, "a #{inspect(__MODULE__)} already runs for #{inspect(repo)} (#{inspect(pid)})"}
    end
  end

  defp attach(handler_id, store) do
    _ = :telemetry.detach(handler_id)

    case :telemetry.attach(handler_id, store.event, &__MODULE__.handle_event/4, store) do
      :ok ->
        :ok

      {:error, reason} ->
        {:error, "could not attach to #{inspect(store.event)}: #{inspect(reason)}"}
    end
  end

  @impl true
  def terminate(_reason, state) do
    :telemetry.detach(state.handler_id)
    :ok
  end

  @impl true
  def handle_info(:tick, state), do: {:noreply, prepare_slots(state)}

  def handle_info({:record, record}, state) do
    Store.taken(state.store)
    {:noreply, %{state | groups: QueryGroups.add(state.groups, record)}}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def handle_call({:groups, kind, n}, _from, state),
    do: {:reply, QueryGroups.top(state.groups, kind, n), state}

  # Clears the slot of the next tick ahead of time, so that the handler
  # never has to, then waits for the next tick. After a delay, the slots of
  # the ticks it missed are cleared too (losing the few queries already
  # counted in the current one rather than mixing in stale ones).
  defp prepare_slots(state) do
    store = state.store
    now = System.monotonic_time(:millisecond) - store.origin
    {prepared, wait_ms} = SlotRing.prepare(store, state.prepared, now)
    Process.send_after(self(), :tick, wait_ms)
    %{state | prepared: prepared}
  end

  @doc """
  Normalises SQL for grouping and for the model (see
  `Beamlens.Domain.Ecto.QueryGroups.normalize_sql/2`): comments dropped,
  string, dollar-quoted and numeric literals replaced by `?`, lists of `?`
  collapsed, whitespace squeezed, capped at `max_bytes`, then redacted.

      iex> Beamlens.Domain.Ecto.TelemetryStore.normalize_sql("SELECT * FROM t WHERE id IN (1, 2) -- x")
      "SELECT * FROM t WHERE id IN (?...)"
  """
  @spec normalize_sql(String.t() | nil, pos_integer()) :: String.t() | nil
  defdelegate normalize_sql(sql, max_bytes \\ 2_000), to: QueryGroups

  ## Options

  defp validate!(opts) do
    opts =
      Beamlens.Schema.validate!(opts, @options,
        label: "#{inspect(__MODULE__)} option",
        of: "#{inspect(__MODULE__)} options",
        missing:
          "#{inspect(__MODULE__)} needs the :repo option, e.g. " <>
            "{#{inspect(__MODULE__)}, repo: MyApp.Repo}"
      )

    repo = opts[:repo]

    unless Process.whereis(@registry) do
      raise ArgumentError,
            "#{inspect(__MODULE__)} needs the registry #{inspect(@registry)}: add " <>
              "{Registry, keys: :unique, name: #{inspect(@registry)}} before it in your supervision tree"
    end

    unless Code.ensure_loaded?(repo) do
      raise ArgumentError,
            "#{inspect(__MODULE__)}: the repo #{inspect(repo)} is not available (no such module)"
    end

    unless function_exported?(repo, :config, 0) and function_exported?(repo, :__adapter__, 0) do
      raise ArgumentError,
            "#{inspect(__MODULE__)}: #{inspect(repo)} is not an Ecto repo " <>
              "(it does not define config/0 and __adapter__/0; did you mean your `use Ecto.Repo` module?)"
    end

    config =
      try do
        repo.config()
      rescue
        e ->
          reraise ArgumentError,
                  [
                    message:
                      "#{inspect(__MODULE__)}: could not read the configuration of #{inspect(repo)}: " <>
                        Exception.message(e)
                  ],
                  __STACKTRACE__
      end

    prefix = Keyword.get(config, :telemetry_prefix)

    unless is_list(prefix) and prefix != [] and Enum.all?(prefix, &is_atom/1) do
      raise ArgumentError,
            "#{inspect(__MODULE__)}: #{inspect(repo)} has no telemetry prefix " <>
              "(config()[:telemetry_prefix] is #{inspect(prefix)}), so it emits no query events to watch"
    end

    unless Code.ensure_loaded?(:telemetry) do
      raise ArgumentError,
            "#{inspect(__MODULE__)} needs the :telemetry library (a dependency of Ecto), which is not loaded"
    end

    pool_size = if is_integer(config[:pool_size]), do: config[:pool_size]

    # Only these two settings are kept: the configuration holds credentials.
    Keyword.merge(opts, prefix: prefix, pool_size: pool_size)
  end
end
