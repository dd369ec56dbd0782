defmodule Beamlens.Domain.Exception.ExceptionStore do
  @moduledoc """
  A bounded store of the application's exceptions, grouped by similarity,
  read by the `:exception` watcher (`Beamlens.Domain.Exception`).

  ## Sources

    * **Tower.** This module is a [Tower](https://hex.pm/packages/tower)
      reporter: it implements `report_event/1` (see
      `Beamlens.Domain.Exception.TowerReporter`), so

          config :tower, reporters: [Beamlens.Domain.Exception.ExceptionStore]

      sends it every event Tower captures (`Tower.Event`: `id`, `datetime`,
      `level`, `kind`, `reason`, `stacktrace`, `metadata`, ...).
    * **`:logger`.** Without Tower, a `:logger` handler
      (`Beamlens.Domain.Exception.LoggerHandler`) captures crashes
      instead: the reports OTP logs when a process crashes (`GenServer`,
      `:gen_statem`, `Task`, `proc_lib` and plain processes) and error logs
      that carry a `crash_reason`. With `capture_logs: :auto` (the default)
      the handler is installed unless Tower is loaded and configured with
      this reporter, so a crash is not counted twice. The reports of one
      crash (a `GenServer`'s terminate report and its `proc_lib` crash
      report) count once. Both shapes of these reports are understood: as
      OTP logs them (Elixir 1.14) and as Logger translates them since 1.15.
      Since 1.15 Logger drops `proc_lib` crash reports unless the host sets
      `config :logger, handle_sasl_reports: true`, so a crash that only
      such a report describes (a bare `:proc_lib.spawn`) is in no log and
      is not captured either; `GenServer`, `Task`, `:gen_statem` and
      `spawn` crashes are.

  BeamLens starts the store when an `:exception` watcher runs. Start it
  yourself before BeamLens to pass options.

  ## Grouping

  Exceptions are grouped by a similarity key (`Beamlens.Domain.Exception.Fingerprint`): kind (`:error`, `:exit`,
  `:throw`, `:message`), exception module, the message with pids,
  references, numbers, UUIDs, hex ids and quoted strings normalised, and
  the top three stack frames. A group that appears after the start-up
  grace period (`:new_group_grace_ms`) and was never seen before is
  *new* for five minutes.

  ## Bounds and privacy

  At most `:max_groups` groups (least recently seen evicted), the last 50
  events, three examples per group with 20 frames each, messages capped at
  2 KiB. Messages pass `Beamlens.Redactor` when stored. Stack trace
  arguments are never stored as values: a frame shows the shapes of its
  arguments (`<binary, 12 bytes>`, `<map, 3 keys>`), atoms only.
  Reporters do the minimum in the reporting process and hand the event to
  the store; when more than `:max_pending` events wait, further ones are
  only counted (`:dropped`).

  ## Options

    * `:max_groups` - groups kept (default 200).
    * `:new_group_grace_ms` - after start, groups seen within this time are
      not reported as new (default 60000).
    * `:capture_logs` - `:auto` (default), `true` or `false`: install the
      `:logger` handler.
    * `:max_pending` - events waiting for the store before new ones are
      dropped (default 500).
  """

  use GenServer

  alias Beamlens.Domain.Exception.{Fingerprint, LoggerHandler, TowerReporter}
  alias Beamlens.{Redactor, Store}

  @key {__MODULE__, :shared}
  @max_examples 3
  @max_recent 50
  @max_known 10_000
  @new_window_ms 300_000
  @bucket_ms 10_000
  @buckets 90
  @dedupe_ms 5_000

  # counter indexes
  @received 1
  @dropped 2
  @recorded 3
  @messages 4
  @groups_created 5
  @new_groups 6
  @duplicates 7
  @counter_size 7

  @options [max_groups: 200, new_group_grace_ms: 60_000, capture_logs: :auto, max_pending: 500]

  @typedoc "A group of similar exceptions, as the read functions return it."
  @type group :: %{
          id: String.t(),
          kind: String.t(),
          exception: String.t() | nil,
          module: String.t() | nil,
          message: String.t(),
          count: non_neg_integer(),
          first_seen: String.t(),
          last_seen: String.t(),
          new: boolean(),
          top_frame: String.t() | nil
        }

  @doc false
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts), do: Store.child_spec(__MODULE__, opts)

  @doc """
  Starts the store (see the module docs for the options), or returns
  `:ignore` when it already runs. Raises `ArgumentError` on invalid options.
  """
  @spec start_link(keyword()) :: GenServer.on_start() | :ignore
  def start_link(opts \\ []) do
    opts = validate!(opts)
    Store.start_once(__MODULE__, opts)
  end

  @doc "Whether the store is running."
  @spec running?() :: boolean()
  def running?, do: shared() != nil

  ## Reporting

  @doc """
  Tower's reporter callback: records a `Tower.Event` (any map with `:kind`,
  `:reason` and optionally `:level`, `:stacktrace`, `:datetime`, `:id`,
  `:metadata`). Always returns `:ok`; does nothing when the store is not
  running. See `Beamlens.Domain.Exception.TowerReporter`.
  """
  @spec report_event(map() | term()) :: :ok
  defdelegate report_event(event), to: TowerReporter

  @doc false
  # Hands a reduced event to the store; runs in the reporting process.
  # Beyond :max_pending waiting events, only counts it.
  @spec submit(Store.inbox(), map()) :: :ok
  def submit(shared, entry) do
    :counters.add(shared.counters, @received, 1)

    if Store.offer(shared, {:event, entry}) == :full,
      do: :counters.add(shared.counters, @dropped, 1)

    :ok
  end

  ## Reading

  @doc """
  Counts since the store started (`:recorded` exceptions, `:messages`,
  `:dropped`, `:duplicates`, `:groups_created`, `:new_groups`), events in
  the last minute, 5 and 15 minutes, and the current number of groups.
  """
  @spec stats() :: map()
  def stats, do: call(:stats, %{})

  @doc "The `n` groups with the most events (most recent first on ties)."
  @spec top_groups(pos_integer()) :: [group()]
  def top_groups(n), do: call({:top_groups, n}, [])

  @doc "Groups first seen in the last five minutes after the start-up grace period."
  @spec new_groups(pos_integer()) :: [group()]
  def new_groups(n), do: call({:new_groups, n}, [])

  @doc "The `n` most recent events, newest first."
  @spec recent(pos_integer()) :: [map()]
  def recent(n), do: call({:recent, n}, [])

  @doc "One group with its examples and their stack traces, or `nil`."
  @spec group(String.t()) :: map() | nil
  def group(id), do: call({:group, id}, nil)

  @doc "Groups whose exception or message contains `text` (case-insensitive)."
  @spec search(String.t(), pos_integer()) :: [group()]
  def search(text, n), do: call({:search, text, n}, [])

  defp call(request, default) do
    case shared() do
      nil -> default
      %{pid: pid} -> GenServer.call(pid, request, 5_000)
    end
  catch
    :exit, _ -> default
  end

  @doc false
  # The state reporters share, or nil when the store is not running.
  @spec shared() :: Store.inbox() | nil
  def shared, do: Store.shared(@key)

  ## GenServer

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)

    shared =
      opts[:max_pending]
      |> Store.inbox()
      |> Map.put(:counters, :counters.new(@counter_size, [:write_concurrency]))

    Store.publish(@key, shared)

    capture? =
      case opts[:capture_logs] do
        :auto -> not TowerReporter.configured?()
        flag -> flag
      end

    if capture?, do: :ok = LoggerHandler.install(shared)

    {:ok,
     %{
       shared: shared,
       opts: opts,
       started_at: now_ms(),
       capture_logs: capture?,
       groups: %{},
       known: MapSet.new(),
       recent: [],
       seq: 0,
       app_modules: %{},
       buckets: %{},
       seen_pids: %{}
     }}
  end

  @impl true
  def terminate(_reason, state) do
    if state.capture_logs, do: LoggerHandler.remove()
    Store.unpublish(@key)
  end

  @impl true
  def handle_info({:event, entry}, state) do
    Store.taken(state.shared)
    {:noreply, record(entry, state)}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def handle_call(:stats, _from, state) do
    c = state.shared.counters
    now = now_ms()

    stats = %{
      recorded: :counters.get(c, @recorded),
      messages: :counters.get(c, @messages),
      received: :counters.get(c, @received),
      dropped: :counters.get(c, @dropped),
      duplicates: :counters.get(c, @duplicates),
      groups_created: :counters.get(c, @groups_created),
      new_groups: :counters.get(c, @new_groups),
      groups: map_size(state.groups),
      new_groups_recent: Enum.count(state.groups, fn {_, g} -> new?(g, now) end),
      last_minute: window_count(state, now, 60_000),
      last_5_minutes: window_count(state, now, 300_000),
      last_15_minutes: window_count(state, now, 900_000),
      sources: if(state.capture_logs, do: "tower and logger", else: "tower")
    }

    {:reply, stats, state}
  end

  def handle_call({:top_groups, n}, _from, state) do
    groups =
      state.groups
      |> Map.values()
      |> Enum.sort_by(&{&1.count, &1.seq}, :desc)
      |> Enum.take(n)
      |> Enum.map(&present(&1, now_ms()))

    {:reply, groups, state}
  end

  def handle_call({:new_groups, n}, _from, state) do
    now = now_ms()

    groups =
      state.groups
      |> Map.values()
      |> Enum.filter(&new?(&1, now))
      |> Enum.sort_by(&{&1.first_seen, &1.seq}, :desc)
      |> Enum.take(n)
      |> Enum.map(&present(&1, now))

    {:reply, groups, state}
  end

  def handle_call({:recent, n}, _from, state), do: {:reply, Enum.take(state.recent, n), state}

  def handle_call({:group, id}, _from, state) do
    reply =
      case Enum.find(state.groups, fn {_, g} -> g.id == id end) do
        nil ->
          nil

        {_, group} ->
          group
          |> present(now_ms())
          |> Map.merge(%{
            frames: group.frames,
            examples:
              Enum.map(group.examples, fn ex ->
                %{
                  ex
                  | at: iso(ex.at),
                    stacktrace: Enum.map(ex.stacktrace, &Fingerprint.format_frame/1)
                }
              end)
          })
      end

    {:reply, reply, state}
  end

  def handle_call({:search, text, n}, _from, state) do
    needle = String.downcase(text)

    groups =
      state.groups
      |> Map.values()
      |> Enum.filter(fn g ->
        String.contains?(String.downcase(g.message), needle) or
          String.contains?(String.downcase(g.exception || ""), needle)
      end)
      |> Enum.sort_by(& &1.seq, :desc)
      |> Enum.take(n)
      |> Enum.map(&present(&1, now_ms()))

    {:reply, groups, state}
  end

  ## Recording (in the store process)

  defp record(entry, state) do
    now = now_ms()
    c = state.shared.counters

    if duplicate?(entry, state, now) do
      :counters.add(c, @duplicates, 1)
      state
    else
      counter = if entry.kind == :message, do: @messages, else: @recorded
      :counters.add(c, counter, 1)

      {module, state} = app_module(entry.modules, state)
      entry = Map.put(entry, :module, module)
      message = entry.message |> Redactor.redact() |> String.slice(0, 500)
      hash = Fingerprint.key(entry.kind, entry.exception, message, entry.frames)

      example = %{
        at: entry.at,
        message: message,
        pid: entry.pid && inspect(entry.pid),
        stacktrace: Enum.map(entry.frames, &Fingerprint.redact_frame/1)
      }

      state
      |> remember_pid(entry, now)
      |> put_group(hash, entry, message, example, now)
      |> put_recent(hash, entry, message)
      |> bump_bucket(entry, now)
    end
  end

  # One crash can be reported twice: a GenServer's terminate report and its
  # proc_lib crash report, or Tower and the logger handler. A process dies
  # once, so two reports of its termination are one crash. Events that are
  # not termination reports (a process that rescues and reports, again and
  # again) are all counted.
  defp duplicate?(%{pid: pid, terminal: true} = entry, state, now) when is_pid(pid) do
    case state.seen_pids[{pid, entry.exception}] do
      at when is_integer(at) and now - at < @dedupe_ms -> true
      _ -> false
    end
  end

  defp duplicate?(_entry, _state, _now), do: false

  defp remember_pid(%{seen_pids: seen} = state, %{pid: pid, terminal: true} = entry, now)
       when is_pid(pid) do
    seen =
      if map_size(seen) >= 256,
        do: seen |> Enum.filter(fn {_, at} -> now - at < @dedupe_ms end) |> Map.new(),
        else: seen

    # Still full of recent crashes: forget the oldest.
    seen =
      if map_size(seen) >= 256,
        do: seen |> Enum.sort_by(&elem(&1, 1)) |> Enum.drop(64) |> Map.new(),
        else: seen

    %{state | seen_pids: Map.put(seen, {pid, entry.exception}, now)}
  end

  defp remember_pid(state, _entry, _now), do: state

  defp put_group(state, hash, entry, message, example, now) do
    case state.groups do
      %{^hash => group} ->
        group = %{
          group
          | count: group.count + 1,
            last_seen: now,
            seq: state.seq + 1,
            examples: Enum.take([example | group.examples], @max_examples)
        }

        %{state | groups: Map.put(state.groups, hash, group), seq: state.seq + 1}

      groups ->
        c = state.shared.counters
        :counters.add(c, @groups_created, 1)
        known? = MapSet.member?(state.known, hash)
        new? = not known? and now - state.started_at >= state.opts[:new_group_grace_ms]
        if new?, do: :counters.add(c, @new_groups, 1)

        group = %{
          id: Fingerprint.id(hash),
          kind: entry.kind,
          exception: entry.exception,
          module: entry.module,
          message: message,
          count: 1,
          first_seen: now,
          last_seen: now,
          seq: state.seq + 1,
          new: new?,
          frames:
            entry.frames
            |> Enum.take(5)
            |> Enum.map(&Fingerprint.format_frame(Fingerprint.redact_frame(&1))),
          examples: [example]
        }

        groups = Store.make_room(groups, hash, state.opts[:max_groups], & &1.seq)

        known =
          if MapSet.size(state.known) < @max_known,
            do: MapSet.put(state.known, hash),
            else: state.known

        %{state | groups: Map.put(groups, hash, group), known: known, seq: state.seq + 1}
    end
  end

  @system_apps [
    :elixir,
    :stdlib,
    :kernel,
    :erts,
    :logger,
    :compiler,
    :crypto,
    :ssl,
    :inets,
    :eex,
    :mix
  ]

  # The first module of the stack trace that belongs to the application
  # rather than to Erlang/OTP or Elixir: where the failure is likely rooted.
  # Looking a module's application up takes microseconds, so answers are
  # remembered (up to 2,000 modules).
  defp app_module(modules, state) do
    Enum.reduce_while(modules, {nil, state}, fn module, {nil, state} ->
      {app?, state} =
        case state.app_modules do
          %{^module => app?} ->
            {app?, state}

          known ->
            app? = app_module?(module)
            known = if map_size(known) >= 2_000, do: %{}, else: known
            {app?, %{state | app_modules: Map.put(known, module, app?)}}
        end

      if app?, do: {:halt, {Beamlens.Domain.id(module), state}}, else: {:cont, {nil, state}}
    end)
  end

  defp app_module?(module) do
    case :application.get_application(module) do
      {:ok, app} -> app not in @system_apps
      # :erlang and other preloaded modules belong to no application.
      :undefined -> :code.is_loaded(module) != {:file, :preloaded}
    end
  rescue
    _ -> false
  end

  defp put_recent(state, hash, entry, message) do
    event = %{
      at: iso(entry.at),
      group: state.groups[hash].id,
      kind: Atom.to_string(entry.kind),
      exception: entry.exception,
      message: Redactor.truncate(message, 200),
      source: Atom.to_string(entry.source)
    }

    %{state | recent: Enum.take([event | state.recent], @max_recent)}
  end

  defp bump_bucket(state, %{kind: :message}, _now), do: state

  defp bump_bucket(state, _entry, now) do
    bucket = div(now, @bucket_ms)

    buckets =
      state.buckets
      |> Map.update(bucket, 1, &(&1 + 1))
      |> Map.reject(fn {b, _} -> b <= bucket - @buckets end)

    %{state | buckets: buckets}
  end

  defp window_count(state, now, ms) do
    from = div(now - ms, @bucket_ms)

    state.buckets
    |> Enum.filter(fn {b, _} -> b > from end)
    |> Enum.map(&elem(&1, 1))
    |> Enum.sum()
  end

  defp new?(group, now), do: group.new and now - group.first_seen < @new_window_ms

  defp present(group, now) do
    %{
      id: group.id,
      kind: Atom.to_string(group.kind),
      exception: group.exception,
      module: group.module,
      message: group.message,
      count: group.count,
      first_seen: iso(group.first_seen),
      last_seen: iso(group.last_seen),
      new: new?(group, now),
      top_frame: List.first(group.frames)
    }
  end

  defp now_ms, do: System.system_time(:millisecond)

  defp iso(ms), do: ms |> DateTime.from_unix!(:millisecond) |> DateTime.to_iso8601()

  defp validate!(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError,
            "expected #{inspect(__MODULE__)} options to be a keyword list, got: #{inspect(opts)}"
    end

    for {key, _} <- opts, not Keyword.has_key?(@options, key) do
      raise ArgumentError,
            "unknown #{inspect(__MODULE__)} option #{inspect(key)}; known: " <>
              Enum.map_join(Keyword.keys(@options), ", ", &inspect/1)
    end

    opts = Keyword.merge(@options, opts)

    for key <- [:max_groups, :max_pending],
        not (is_integer(opts[key]) and opts[key] > 0) do
      raise ArgumentError,
            "expected #{inspect(__MODULE__)} option #{inspect(key)} to be a positive integer, " <>
              "got: #{inspect(opts[key])}"
    end

    unless is_integer(opts[:new_group_grace_ms]) and opts[:new_group_grace_ms] >= 0 do
      raise ArgumentError,
            "expected #{inspect(__MODULE__)} option :new_group_grace_ms to be a non-negative " <>
              "integer, got: #{inspect(opts[:new_group_grace_ms])}"
    end

    unless opts[:capture_logs] in [:auto, true, false] do
      raise ArgumentError,
            "expected #{inspect(__MODULE__)} option :capture_logs to be :auto, true or false, " <>
              "got: #{inspect(opts[:capture_logs])}"
    end

    opts
  end
end
