defmodule Beamlens.Domain.Exception.ExceptionStore do
  @options [
    max_groups: [type: :pos_integer, default: 200, doc: "Groups kept."],
    new_group_grace_ms: [
      type: :non_neg_integer,
      default: 60_000,
      doc: "After start, groups seen within this time are not reported as new."
    ],
    capture_logs: [
      type: {:in, [:auto, true, false]},
      default: :auto,
      expected: ":auto, true or false",
      doc: "`:auto`, `true` or `false`: install the `:logger` handler."
    ],
    max_pending: [
      type: :pos_integer,
      default: 500,
      doc: "Events waiting for the store before new ones are dropped."
    ]
  ]

  @moduledoc """
  A bounded store of the application's exceptions, grouped by similarity,
  read by the `:exception` watcher (`Beamlens.Domain.Exception`).

  ## Sources

    * **Tower.** This module is a [Tower](https://hex.pm/packages/tower)
      reporter: it implements `report_event/1`, so

          config :tower, reporters: [Beamlens.Domain.Exception.ExceptionStore]

      sends it every event Tower captures (`Tower.Event`: `id`, `datetime`,
      `level`, `kind`, `reason`, `stacktrace`, `metadata`, ...).
    * **`:logger`.** Without Tower, a `:logger` handler captures crashes
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

  Exceptions are grouped by a similarity key: kind (`:error`, `:exit`,
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

  #{Beamlens.Schema.docs(@options)}
  """

  use GenServer

  alias Beamlens.Redactor

  @key {__MODULE__, :shared}
  @handler_id :beamlens_exception_store
  @max_message 2_048
  @max_frames 20
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
  def child_spec(opts) do
    %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}, type: :worker}
  end

  @doc """
  Starts the store (see the module docs for the options), or returns
  `:ignore` when it already runs. Raises `ArgumentError` on invalid options.
  """
  @spec start_link(keyword()) :: GenServer.on_start() | :ignore
  def start_link(opts \\ []) do
    opts = validate!(opts)

    case GenServer.start_link(__MODULE__, opts, name: __MODULE__) do
      {:error, {:already_started, _pid}} -> :ignore
      other -> other
    end
  end

  @doc "Whether the store is running."
  @spec running?() :: boolean()
  def running?, do: shared() != nil

  ## Reporting

  @doc """
  Tower's reporter callback: records a `Tower.Event` (any map with `:kind`,
  `:reason` and optionally `:level`, `:stacktrace`, `:datetime`, `:id`,
  `:metadata`). Always returns `:ok`; does nothing when the store is not
  running.
  """
  @spec report_event(map()) :: :ok
  def report_event(%{kind: kind, reason: reason} = event) do
    with %{} = shared <- shared() do
      # Tower.Event is a struct: no Access, only Map functions.
      {kind, exception, stacktrace} = classify(kind, reason, Map.get(event, :stacktrace))

      submit(shared, %{
        source: :tower,
        kind: kind,
        exception: exception,
        message: message(kind, exception, reason),
        frames: frames(stacktrace),
        modules: stack_modules(stacktrace),
        pid: tower_pid(event),
        terminal: otp_report?(Map.get(event, :log_event)),
        at: tower_time(Map.get(event, :datetime))
      })
    end

    :ok
  rescue
    _ -> :ok
  end

  def report_event(_other), do: :ok

  @doc false
  # Called by the :logger handler, in the process that logs.
  def report_crash(shared, kind, reason, stacktrace, pid, time_us, terminal? \\ true) do
    {kind, exception, stacktrace} = classify(kind, reason, stacktrace)

    submit(shared, %{
      source: :logger,
      kind: kind,
      exception: exception,
      message: message(kind, exception, reason),
      frames: frames(stacktrace),
      modules: stack_modules(stacktrace),
      pid: pid,
      terminal: terminal?,
      at: if(is_integer(time_us), do: div(time_us, 1_000), else: now_ms())
    })
  end

  defp submit(shared, entry) do
    :counters.add(shared.counters, @received, 1)

    if :atomics.add_get(shared.pending, 1, 1) > shared.max_pending do
      :atomics.sub(shared.pending, 1, 1)
      :counters.add(shared.counters, @dropped, 1)
    else
      send(shared.pid, {:event, entry})
    end

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

  defp shared, do: :persistent_term.get(@key, nil)

  ## GenServer

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)

    shared = %{
      pid: self(),
      counters: :counters.new(@counter_size, [:write_concurrency]),
      pending: :atomics.new(1, signed: true),
      max_pending: opts[:max_pending]
    }

    :persistent_term.put(@key, shared)

    capture? =
      case opts[:capture_logs] do
        :auto -> not tower_reports_here?()
        flag -> flag
      end

    if capture? do
      _ = :logger.remove_handler(@handler_id)

      :ok =
        :logger.add_handler(@handler_id, __MODULE__.LoggerHandler, %{
          level: :error,
          config: shared
        })
    end

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
    if state.capture_logs, do: :logger.remove_handler(@handler_id)
    :persistent_term.erase(@key)
    :ok
  end

  @impl true
  def handle_info({:event, entry}, state) do
    :atomics.sub(state.shared.pending, 1, 1)
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
                %{ex | at: iso(ex.at), stacktrace: Enum.map(ex.stacktrace, &format_frame/1)}
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
      normalized = normalize(message)
      top = entry.frames |> Enum.take(3) |> Enum.map(&{&1.module, &1.function, &1.arity})
      hash = :erlang.phash2({entry.kind, entry.exception, normalized, top})

      example = %{
        at: entry.at,
        message: message,
        pid: entry.pid && inspect(entry.pid),
        stacktrace: Enum.map(entry.frames, &redact_frame/1)
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
          id: Integer.to_string(hash, 16) |> String.downcase(),
          kind: entry.kind,
          exception: entry.exception,
          module: entry.module,
          message: message,
          count: 1,
          first_seen: now,
          last_seen: now,
          seq: state.seq + 1,
          new: new?,
          frames: entry.frames |> Enum.take(5) |> Enum.map(&format_frame(redact_frame(&1))),
          examples: [example]
        }

        groups = evict(groups, state.opts[:max_groups])

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

  defp evict(groups, max) when map_size(groups) < max, do: groups

  defp evict(groups, _max) do
    {oldest, _} = Enum.min_by(groups, fn {_, g} -> g.seq end)
    Map.delete(groups, oldest)
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

  ## Classifying and compacting (in the reporting process)

  @doc false
  # {kind, exception module name or nil, stacktrace}
  def classify(:error, reason, stacktrace) do
    stacktrace = stacktrace(stacktrace)
    exception = Exception.normalize(:error, reason, stacktrace)

    if is_exception(exception),
      do: {:error, exception_name(exception), stacktrace},
      else: {:error, nil, stacktrace}
  end

  def classify(kind, _reason, stacktrace) when kind in [:exit, :throw, :message],
    do: {kind, nil, stacktrace(stacktrace)}

  def classify(_kind, _reason, stacktrace), do: {:exit, nil, stacktrace(stacktrace)}

  defp stacktrace(list) when is_list(list), do: list
  defp stacktrace(_), do: []

  defp exception_name(%module{}), do: Beamlens.Domain.id(module)

  defp message(:error, _name, reason) do
    exception = Exception.normalize(:error, reason, [])

    text =
      if is_exception(exception),
        do: Exception.message(exception),
        else: inspect(reason, limit: 20, printable_limit: @max_message)

    cap(text)
  rescue
    _ -> "(message unavailable)"
  end

  defp message(:exit, _name, reason) do
    cap(Exception.format_exit(reason))
  rescue
    _ -> cap(inspect(reason, limit: 20, printable_limit: @max_message))
  end

  defp message(:throw, _name, reason),
    do: cap("throw: " <> inspect(reason, limit: 20, printable_limit: @max_message))

  defp message(:message, _name, reason) when is_binary(reason), do: cap(reason)

  defp message(:message, _name, reason) do
    cap(IO.chardata_to_string(reason))
  rescue
    _ -> cap(inspect(reason, limit: 20, printable_limit: @max_message))
  end

  defp cap(text) when byte_size(text) <= @max_message, do: text
  defp cap(text), do: Redactor.truncate(text, @max_message)

  @doc false
  def frames(stacktrace) do
    stacktrace
    |> Enum.take(@max_frames)
    |> Enum.flat_map(fn
      {module, function, arity_or_args, location} when is_atom(module) ->
        {arity, args} =
          if is_list(arity_or_args),
            do: {length(arity_or_args), Enum.map(arity_or_args, &shape/1)},
            else: {arity_or_args, nil}

        [
          %{
            module: Beamlens.Domain.id(module),
            function: function_name(function),
            arity: arity,
            args: args,
            file: location_file(location),
            line: location[:line]
          }
        ]

      {fun, arity_or_args, location} when is_function(fun) ->
        [
          %{
            module: nil,
            function: inspect(fun),
            arity: if(is_list(arity_or_args), do: length(arity_or_args), else: arity_or_args),
            args: nil,
            file: location_file(location),
            line: location[:line]
          }
        ]

      _ ->
        []
    end)
  rescue
    _ -> []
  end

  defp stack_modules(stacktrace) do
    for {module, _, _, _} when is_atom(module) <- Enum.take(stacktrace, @max_frames), do: module
  end

  defp function_name(name) when is_atom(name), do: Atom.to_string(name)
  defp function_name(other), do: inspect(other)

  defp location_file(location) when is_list(location) do
    case location[:file] do
      nil -> nil
      file -> file |> to_string() |> String.slice(0, 200)
    end
  end

  defp location_file(_), do: nil

  # Argument values are never kept: only their shape.
  defp shape(value) when is_atom(value), do: Beamlens.Domain.id(value)
  defp shape(value) when is_binary(value), do: "<binary, #{byte_size(value)} bytes>"
  defp shape(value) when is_integer(value), do: "<integer>"
  defp shape(value) when is_float(value), do: "<float>"
  defp shape(value) when is_list(value), do: "<list, #{length(value)} items>"
  defp shape(%module{}), do: "<%#{Beamlens.Domain.id(module)}{}>"
  defp shape(value) when is_map(value), do: "<map, #{map_size(value)} keys>"
  defp shape(value) when is_tuple(value), do: "<tuple, #{tuple_size(value)} elements>"
  defp shape(value) when is_pid(value), do: inspect(value)
  defp shape(value) when is_function(value), do: "<function>"
  defp shape(_value), do: "<term>"

  defp redact_frame(frame), do: %{frame | args: frame.args && Redactor.redact(frame.args)}

  defp format_frame(%{module: nil} = frame),
    do: "#{frame.function}/#{frame.arity}#{location(frame)}"

  defp format_frame(%{args: args} = frame) when is_list(args),
    do: "#{frame.module}.#{frame.function}(#{Enum.join(args, ", ")})#{location(frame)}"

  defp format_frame(frame),
    do: "#{frame.module}.#{frame.function}/#{frame.arity}#{location(frame)}"

  defp location(%{file: nil}), do: ""
  defp location(%{file: file, line: nil}), do: " (#{file})"
  defp location(%{file: file, line: line}), do: " (#{file}:#{line})"

  @doc false
  # The message with what varies between occurrences of the same problem
  # replaced: pids, references, ports, UUIDs, long hex ids, quoted strings,
  # numbers.
  def normalize(message) do
    message
    |> String.replace(~r/#(PID|Reference|Port)<[\d.]+>/, "#\\1<>")
    |> String.replace(
      ~r/\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b/i,
      "<uuid>"
    )
    |> String.replace(~r/\b[0-9a-f]{12,}\b/i, "<hex>")
    |> String.replace(~r/"(?:[^"\\]|\\.)*"/, "\"…\"")
    |> String.replace(~r/'(?:[^'\\]|\\.)*'/, "'…'")
    |> String.replace(~r/\d+(?:\.\d+)?/, "N")
  end

  defp tower_pid(event) do
    case Map.get(event, :metadata) do
      %{process: %{pid: pid}} when is_pid(pid) ->
        pid

      _ ->
        case Map.get(event, :log_event) do
          %{meta: %{pid: pid}} when is_pid(pid) -> pid
          _ -> nil
        end
    end
  end

  # Tower events built from an OTP report (a process that crashed).
  defp otp_report?(%{meta: %{domain: [:otp | _]}}), do: true
  defp otp_report?(_log_event), do: false

  defp tower_time(%DateTime{} = datetime), do: DateTime.to_unix(datetime, :millisecond)
  defp tower_time(_), do: now_ms()

  defp tower_reports_here? do
    Code.ensure_loaded?(Tower) and
      __MODULE__ in List.wrap(Application.get_env(:tower, :reporters, []))
  end

  defp now_ms, do: System.system_time(:millisecond)

  defp iso(ms), do: ms |> DateTime.from_unix!(:millisecond) |> DateTime.to_iso8601()

  defp validate!(opts) do
    Beamlens.Schema.validate!(opts, @options,
      label: "#{inspect(__MODULE__)} option",
      of: "#{inspect(__MODULE__)} options",
      unknown: "unknown %{label} %{key}; known: %{known}%{hint}"
    )
  end

  defmodule LoggerHandler do
    @moduledoc false
    # A :logger handler that turns crash reports into exception events. It
    # runs in the process that logs, so it only recognises the report and
    # hands it over; it never raises (a failing handler is removed).

    alias Beamlens.Domain.Exception.ExceptionStore

    def log(%{level: level, msg: msg, meta: meta}, %{config: shared})
        when level in [:error, :critical, :alert, :emergency] do
      case crash(msg, meta) do
        {kind, reason, stacktrace, pid} ->
          # A crash_reason on an application's own log line is not a
          # process termination; OTP's reports and the emulator's "process
          # raised" errors are (since Elixir 1.15 both arrive translated,
          # with a crash_reason).
          terminal? = not Map.has_key?(meta, :crash_reason) or otp_termination?(meta)

          ExceptionStore.report_crash(
            shared,
            kind,
            reason,
            stacktrace,
            pid,
            meta[:time],
            terminal?
          )

        nil ->
          :ok
      end
    rescue
      _ -> :ok
    end

    def log(_event, _config), do: :ok

    defp otp_termination?(%{domain: [:otp | _]}), do: true
    defp otp_termination?(%{error_logger: %{emulator: true}}), do: true
    defp otp_termination?(_meta), do: false

    # Two shapes of the same crashes reach this handler. Elixir 1.14 lets
    # OTP's reports through as they are (the clauses on `{:report, ...}`
    # below). Since 1.15, Logger's primary filter translates them to text
    # and puts the crash in the metadata as `crash_reason` (the first
    # clause), and it drops the `[:otp, :sasl]` reports (`proc_lib` crash
    # reports, supervisor reports) unless the host sets
    # `handle_sasl_reports: true`: a process whose only report is its
    # proc_lib crash report is then in no log, and not captured here either.
    # Libraries such as Plug and Bandit also attach a `crash_reason`.
    defp crash(_msg, %{crash_reason: {reason, stacktrace}} = meta) when is_list(stacktrace),
      do: from_reason(reason, stacktrace, meta[:pid])

    defp crash({:report, %{label: {:gen_server, :terminate}, reason: reason}}, meta),
      do: from_exit_reason(reason, meta[:pid])

    defp crash({:report, %{label: {:gen_statem, :terminate}, reason: {kind, reason, st}}}, meta),
      do: {kind, reason, st, meta[:pid]}

    defp crash({:report, %{label: {:gen_event, :terminate}, reason: reason}}, meta),
      do: from_exit_reason(reason, meta[:pid])

    defp crash({:report, %{label: {Task.Supervisor, :terminating}, report: report}}, meta),
      do: from_exit_reason(report[:reason], meta[:pid])

    defp crash({:report, %{label: {:proc_lib, :crash}, report: [info | _]}}, meta)
         when is_list(info) do
      case info[:error_info] do
        {kind, reason, stacktrace} -> {kind, reason, stacktrace, info[:pid] || meta[:pid]}
        _ -> nil
      end
    end

    # A process started with spawn/1 that raised.
    defp crash({~c"Error in process ~p with exit value:~n~p~n", [pid, reason]}, _meta),
      do: from_exit_reason(reason, pid)

    # The same, on a distributed node.
    defp crash(
           {~c"Error in process ~p on node ~p with exit value:~n~p~n", [pid, _node, reason]},
           _meta
         ),
         do: from_exit_reason(reason, pid)

    defp crash(_msg, _meta), do: nil

    defp from_reason({:nocatch, value}, stacktrace, pid), do: {:throw, value, stacktrace, pid}

    # Elixir 1.15+ translates an uncaught throw in a plain process to this.
    defp from_reason(%ErlangError{original: {:nocatch, value}}, stacktrace, pid),
      do: {:throw, value, stacktrace, pid}

    defp from_reason(reason, stacktrace, pid) do
      if is_exception(reason),
        do: {:error, reason, stacktrace, pid},
        else: {:exit, reason, stacktrace, pid}
    end

    # OTP reports an error raised in a process as {reason, stacktrace}.
    defp from_exit_reason({{:nocatch, value}, stacktrace}, pid) when is_list(stacktrace),
      do: {:throw, value, stacktrace, pid}

    defp from_exit_reason({reason, [{_, _, _, _} | _] = stacktrace}, pid),
      do: {:error, reason, stacktrace, pid}

    defp from_exit_reason(reason, pid), do: {:exit, reason, [], pid}
  end
end
