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
      power of two, so percentiles are within 12%). Queue time is the time
      a query waited for a pool connection: the pool-pressure signal.
    * Since start: query, error and slow-query counts; per source (table):
      queries, total time and errors, for at most `:max_sources` sources
      (later ones are counted under `"other"`).
    * Slow and failed queries grouped by normalised SQL (comments dropped,
      literals replaced by `?`, `IN (?, ?, ?)` collapsed, capped at
      `:max_sql_bytes`, then redacted by `Beamlens.Redactor`): count, time,
      last error. At most `:max_groups` groups; the least recently seen
      goes first.

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

  alias Beamlens.Redactor

  @registry Beamlens.Domain.Ecto.Registry

  # Fields of a time slot in the atomics array.
  @epoch 0
  @count 1
  @errors 2
  @slow 3
  @sum_query 4
  @sum_queue 5
  @sum_total 6
  @sum_decode 7
  @queued 8
  @hist 9
  # Histogram buckets: bucket 0 holds values under 1 us, then 4 buckets per
  # power of two from 1 us up to 2^27 us (134 s).
  @octaves 27
  @buckets 1 + @octaves * 4
  @slot_size @hist + 3 * @buckets

  # Totals since start (a :counters array).
  @total_count 1
  @total_errors 2
  @total_slow 3
  @total_dropped 4

  @doc false
  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.get(opts, :repo)},
      start: {__MODULE__, :start_link, [opts]},
      type: :worker
    }
  end

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
    case Registry.lookup(@registry, {__MODULE__, repo}) do
      [{_pid, store}] ->
        {:ok, store}

      [] ->
        {:error,
         "no #{inspect(__MODULE__)} runs for #{inspect(repo)}: add " <>
           "{#{inspect(__MODULE__)}, repo: #{inspect(repo)}} to your supervision tree before BeamLens"}
    end
  rescue
    ArgumentError ->
      {:error,
       "the registry #{inspect(@registry)} is not running: add " <>
         "{Registry, keys: :unique, name: #{inspect(@registry)}} to your supervision tree before the store"}
  end

  ## Handler (runs in the querying process)

  @doc false
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

      a = store.atomics
      base = slot(store) * @slot_size + 1
      :atomics.add(a, base + @count, 1)
      :atomics.add(a, base + @sum_total, total_us)
      :atomics.add(a, base + @hist + 2 * @buckets + bucket(total_us), 1)

      if query_us do
        :atomics.add(a, base + @sum_query, query_us)
        :atomics.add(a, base + @hist + bucket(query_us), 1)
      end

      if queue_us do
        :atomics.add(a, base + @queued, 1)
        :atomics.add(a, base + @sum_queue, queue_us)
        :atomics.add(a, base + @hist + @buckets + bucket(queue_us), 1)
      end

      if decode_us, do: :atomics.add(a, base + @sum_decode, decode_us)
      if error?, do: :atomics.add(a, base + @errors, 1)
      if slow?, do: :atomics.add(a, base + @slow, 1)

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

  defp slot(store) do
    rem(div(System.monotonic_time(:millisecond) - store.origin, store.slot_ms), store.slots)
  end

  @doc false
  # The histogram bucket of a duration in microseconds.
  def bucket(us) when us < 1, do: 0

  def bucket(us) do
    octave = min(bit_length(us) - 1, @octaves - 1)
    base = Bitwise.bsl(1, octave)
    sub = min(div((us - base) * 4, base), 3)
    1 + octave * 4 + sub
  end

  # The middle of a bucket, in microseconds.
  defp bucket_value(0), do: 0.5

  defp bucket_value(bucket) do
    octave = div(bucket - 1, 4)
    sub = rem(bucket - 1, 4)
    base = Bitwise.bsl(1, octave)
    base * (1 + (sub + 0.5) / 4)
  end

  defp bit_length(n), do: bit_length(n, 0)
  defp bit_length(0, acc), do: acc
  defp bit_length(n, acc), do: bit_length(Bitwise.bsr(n, 1), acc + 1)

  defp count_source(store, source, total_us, error) do
    table = store.sources

    key =
      if :ets.member(table, source) or :ets.info(table, :size) < store.max_sources,
        do: source,
        else: "other"

    :ets.update_counter(table, key, [{2, 1}, {3, total_us}, {4, error}], {key, 0, 0, 0})
  end

  defp submit(store, record) do
    if :atomics.add_get(store.pending, 1, 1) > store.max_pending do
      :atomics.sub(store.pending, 1, 1)
      :counters.add(store.counters, @total_dropped, 1)
    else
      send(store.pid, {:record, record})
    end
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
    a = store.atomics
    now = System.monotonic_time(:millisecond) - store.origin
    tick = div(now, store.slot_ms)

    bases =
      for back <- 0..(store.slots - 1),
          t = tick - back,
          t >= 0,
          base = rem(t, store.slots) * @slot_size + 1,
          :atomics.get(a, base + @epoch) == t + 1,
          do: base

    sum = fn field -> Enum.reduce(bases, 0, &(:atomics.get(a, &1 + field) + &2)) end

    hist = fn offset ->
      for bucket <- 0..(@buckets - 1) do
        Enum.reduce(bases, 0, &(:atomics.get(a, &1 + @hist + offset + bucket) + &2))
      end
    end

    count = sum.(@count)
    queued = sum.(@queued)
    queue_hist = hist.(@buckets)

    %{
      queries: count,
      errors: sum.(@errors),
      slow: sum.(@slow),
      queued: queued,
      window_ms: max(min(now, (store.slots - 1) * store.slot_ms + rem(now, store.slot_ms)), 1),
      query_ms: latency(hist.(0), sum.(@sum_query)),
      queue_ms: latency(queue_hist, sum.(@sum_queue)),
      total_ms: latency(hist.(2 * @buckets), sum.(@sum_total)),
      decode_avg_ms: if(count > 0, do: ms(sum.(@sum_decode) / count)),
      waited_10ms_share: share_over(queue_hist, 10_000, queued),
      waited_100ms_share: share_over(queue_hist, 100_000, queued)
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

  defp latency(hist, sum_us) do
    count = Enum.sum(hist)

    if count == 0 do
      %{p50: nil, p95: nil, p99: nil, max: nil, avg: nil}
    else
      %{
        p50: ms(percentile(hist, count, 0.50)),
        p95: ms(percentile(hist, count, 0.95)),
        p99: ms(percentile(hist, count, 0.99)),
        max: ms(hist |> highest_bucket() |> bucket_value()),
        avg: ms(sum_us / count)
      }
    end
  end

  defp percentile(hist, count, p) do
    rank = max(ceil(p * count), 1)

    hist
    |> Enum.with_index()
    |> Enum.reduce_while(0, fn {n, bucket}, seen ->
      if seen + n >= rank, do: {:halt, {:bucket, bucket}}, else: {:cont, seen + n}
    end)
    |> case do
      {:bucket, bucket} -> bucket_value(bucket)
      _ -> 0.0
    end
  end

  defp highest_bucket(hist) do
    hist
    |> Enum.with_index()
    |> Enum.reduce(0, fn {n, bucket}, acc -> if n > 0, do: bucket, else: acc end)
  end

  defp share_over(_hist, _us, 0), do: nil

  defp share_over(hist, us, queued) do
    from = bucket(us)
    over = hist |> Enum.drop(from) |> Enum.sum()
    Float.round(over / queued, 3)
  end

  defp ms(us), do: Float.round(us / 1_000, 2)

  ## GenServer

  @impl true
  def init(opts) do
    repo = opts[:repo]
    slots = opts[:slots]

    store = %{
      pid: self(),
      repo: repo,
      atomics: :atomics.new(slots * @slot_size, signed: false),
      counters: :counters.new(4, [:write_concurrency]),
      pending: :atomics.new(1, signed: true),
      sources: :ets.new(:beamlens_ecto_sources, [:set, :public, write_concurrency: true]),
      origin: System.monotonic_time(:millisecond),
      slots: slots,
      slot_ms: max(div(opts[:window_ms], slots), 1),
      slow_us: opts[:slow_query_ms] * 1_000,
      max_sql_bytes: opts[:max_sql_bytes],
      max_sources: opts[:max_sources],
      max_pending: opts[:max_pending],
      slow_query_ms: opts[:slow_query_ms],
      pool_size: opts[:pool_size],
      event: opts[:prefix] ++ [:query]
    }

    handler_id = {__MODULE__, repo}
    Process.flag(:trap_exit, true)

    with {:ok, _} <- register(repo, store),
         :ok <- attach(handler_id, store) do
      state = %{
        store: store,
        handler_id: handler_id,
        groups: %{},
        normalized: %{},
        seq: 0,
        max_groups: opts[:max_groups],
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
    :atomics.sub(state.store.pending, 1, 1)
    {:noreply, add_record(state, record)}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def handle_call({:groups, kind, n}, _from, state) do
    field = if kind == :slow, do: :slow, else: :errors
    order = if kind == :slow, do: :slow_total_us, else: :errors

    groups =
      state.groups
      |> Map.values()
      |> Enum.filter(&(Map.fetch!(&1, field) > 0))
      |> Enum.sort_by(&{Map.fetch!(&1, order), &1.seq}, :desc)
      |> Enum.take(n)
      |> Enum.map(&present_group/1)

    {:reply, groups, state}
  end

  # Clears the slot of the next tick ahead of time, so that the handler
  # never has to, then waits for the next tick. After a delay, the slots of
  # the ticks it missed are cleared too (losing the few queries already
  # counted in the current one rather than mixing in stale ones).
  defp prepare_slots(state) do
    store = state.store
    now = System.monotonic_time(:millisecond) - store.origin
    tick = div(now, store.slot_ms)
    from = max(state.prepared + 1, tick + 2 - store.slots)

    for t <- from..(tick + 1)//1 do
      base = rem(t, store.slots) * @slot_size + 1
      for field <- 1..(@slot_size - 1), do: :atomics.put(store.atomics, base + field, 0)
      :atomics.put(store.atomics, base + @epoch, t + 1)
    end

    Process.send_after(self(), :tick, max(store.slot_ms - rem(now, store.slot_ms), 1))
    %{state | prepared: tick + 1}
  end

  defp add_record(state, record) do
    {sql, state} = normalized(state, record.sql)
    key = :erlang.phash2({sql, record.source})

    group =
      Map.get(state.groups, key, %{
        sql: sql,
        source: record.source,
        slow: 0,
        errors: 0,
        slow_total_us: 0,
        max_total_us: 0,
        last_error: nil,
        first_seen: record.at,
        last_seen: record.at,
        seq: 0
      })

    seq = state.seq + 1

    group = %{
      group
      | last_seen: record.at,
        seq: seq,
        max_total_us: max(group.max_total_us, record.total_us)
    }

    group =
      if record.slow,
        do: %{group | slow: group.slow + 1, slow_total_us: group.slow_total_us + record.total_us},
        else: group

    group =
      if record.error,
        do: %{
          group
          | errors: group.errors + 1,
            last_error: %{record.error | message: Redactor.redact(record.error.message)}
        },
        else: group

    groups =
      if Map.has_key?(state.groups, key) or map_size(state.groups) < state.max_groups do
        state.groups
      else
        {oldest, _} = Enum.min_by(state.groups, fn {_, g} -> g.seq end)
        Map.delete(state.groups, oldest)
      end

    %{state | groups: Map.put(groups, key, group), seq: seq}
  end

  # Applications run the same few SQL texts again and again: normalising
  # and redacting each text once keeps the store fast in a burst of slow
  # queries. At most 500 texts are remembered.
  defp normalized(state, sql) do
    key = :erlang.phash2(sql)

    case state.normalized do
      %{^key => {^sql, normal}} ->
        {normal, state}

      cache ->
        normal = normalize_sql(sql, state.store.max_sql_bytes)
        cache = if map_size(cache) >= 500, do: %{}, else: cache
        {normal, %{state | normalized: Map.put(cache, key, {sql, normal})}}
    end
  end

  defp present_group(group) do
    %{
      sql: group.sql,
      source: group.source,
      slow_count: group.slow,
      slow_avg_ms: if(group.slow > 0, do: ms(group.slow_total_us / group.slow)),
      max_ms: ms(group.max_total_us),
      errors: group.errors,
      last_error: group.last_error,
      first_seen: iso(group.first_seen),
      last_seen: iso(group.last_seen)
    }
  end

  defp iso(ms), do: ms |> DateTime.from_unix!(:millisecond) |> DateTime.to_iso8601()

  @doc """
  Normalises SQL for grouping and for the model: comments dropped, string,
  dollar-quoted and numeric literals replaced by `?`, lists of `?` collapsed,
  whitespace squeezed, capped at `max_bytes`, then redacted. Parameters
  (`$1`, `?`) and identifiers (`u0`, `"t1"`) are kept.

      iex> Beamlens.Domain.Ecto.TelemetryStore.normalize_sql(
      ...>   "SELECT u0.\\"id\\" FROM \\"users\\" AS u0 -- lookup\\n" <>
      ...>     "WHERE u0.\\"email\\" = 'bob@example.com' AND u0.\\"age\\" > 21 AND u0.\\"id\\" IN (1, 2, 3) LIMIT $1"
      ...> )
      ~S|SELECT u0."id" FROM "users" AS u0 WHERE u0."email" = ? AND u0."age" > ? AND u0."id" IN (?...) LIMIT $1|
  """
  @spec normalize_sql(String.t() | nil, pos_integer()) :: String.t() | nil
  def normalize_sql(sql, max_bytes \\ 2_000)
  def normalize_sql(nil, _max_bytes), do: nil

  def normalize_sql(sql, max_bytes) do
    sql
    |> String.replace(
      ~r/(?:\b[EeBbXxNn])?'(?:[^']|'')*'|--[^\n]*|\/\*[\s\S]*?\*\/|\$([A-Za-z_]*)\$[\s\S]*?\$\1\$/,
      fn
        "--" <> _ -> " "
        "/*" <> _ -> " "
        _literal -> "?"
      end
    )
    |> String.replace(~r/(?<![\w$."])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b/, "?")
    |> String.replace(~r/\(\s*\?(?:\s*,\s*\?)+\s*\)/, "(?...)")
    |> String.replace(~r/\s+/, " ")
    |> String.trim()
    |> Redactor.redact()
    |> truncate(max_bytes)
  end

  defp truncate(text, max) when byte_size(text) <= max, do: text
  defp truncate(text, max), do: String.slice(text, 0, max) <> "..."

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
