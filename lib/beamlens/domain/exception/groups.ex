defmodule Beamlens.Domain.Exception.Groups do
  @moduledoc """
  The exception groups of `Beamlens.Domain.Exception.ExceptionStore`, as a
  pure state: `record/3` counts an event in its group (by
  `Beamlens.Domain.Exception.Fingerprint.key/4`) and the read functions
  answer the store's calls. Time is passed in (`now`, ms since the epoch).

    * At most `:max_groups` groups; the least recently seen goes first.
      Three examples per group, the last 50 events, messages redacted and
      cut at 500 characters.
    * A group first seen after the start-up grace period (`:grace_ms`) and
      never seen before (the last 10,000 keys are remembered) is *new* for
      five minutes.
    * Two reports of one process's termination within 5 s (a `GenServer`'s
      terminate report and its `proc_lib` crash report, or Tower and the
      `:logger` handler) count once.
    * Counts per 10 s bucket over the last 15 minutes, for the rates.
  """

  alias Beamlens.{Redactor, Store}
  alias Beamlens.Domain.Exception.Fingerprint

  @max_examples 3
  @max_recent 50
  @max_known 10_000
  @new_window_ms 300_000
  @bucket_ms 10_000
  @buckets 90
  @dedupe_ms 5_000

  defstruct groups: %{},
            known: MapSet.new(),
            recent: [],
            seq: 0,
            app_modules: %{},
            buckets: %{},
            seen_pids: %{},
            started_at: 0,
            grace_ms: 60_000,
            max_groups: 200

  @typedoc "The groups and what they remember."
  @type t :: %__MODULE__{
          groups: %{optional(non_neg_integer()) => map()},
          known: MapSet.t(non_neg_integer()),
          recent: [map()],
          seq: non_neg_integer(),
          app_modules: %{optional(module()) => boolean()},
          buckets: %{optional(integer()) => pos_integer()},
          seen_pids: %{optional({pid(), String.t() | nil}) => integer()},
          started_at: integer(),
          grace_ms: non_neg_integer(),
          max_groups: pos_integer()
        }

  @typedoc "A counter of the store that an event bumps."
  @type counter :: :duplicates | :recorded | :messages | :groups_created | :new_groups

  @doc """
  No groups yet, started at `now`: keeps at most `max_groups` groups, and
  reports none as new within `grace_ms` of `now`.
  """
  @spec new(integer(), pos_integer(), non_neg_integer()) :: t()
  def new(now, max_groups, grace_ms),
    do: %__MODULE__{started_at: now, max_groups: max_groups, grace_ms: grace_ms}

  ## Reading

  @doc """
  The number of groups, of new ones, and of exceptions (not messages) in
  the last minute, 5 and 15 minutes.
  """
  @spec stats(t(), integer()) :: map()
  def stats(%__MODULE__{} = state, now) do
    %{
      groups: map_size(state.groups),
      new_groups_recent: Enum.count(state.groups, fn {_, g} -> new?(g, now) end),
      last_minute: window_count(state, now, 60_000),
      last_5_minutes: window_count(state, now, 300_000),
      last_15_minutes: window_count(state, now, 900_000)
    }
  end

  @doc "The `n` groups with the most events (most recent first on ties)."
  @spec top(t(), non_neg_integer(), integer()) :: [map()]
  def top(%__MODULE__{groups: groups}, n, now) do
    groups
    |> Map.values()
    |> Enum.sort_by(&{&1.count, &1.seq}, :desc)
    |> Enum.take(n)
    |> Enum.map(&present(&1, now))
  end

  @doc "The `n` newest groups that are new (see the module docs)."
  @spec new_groups(t(), non_neg_integer(), integer()) :: [map()]
  def new_groups(%__MODULE__{groups: groups}, n, now) do
    groups
    |> Map.values()
    |> Enum.filter(&new?(&1, now))
    |> Enum.sort_by(&{&1.first_seen, &1.seq}, :desc)
    |> Enum.take(n)
    |> Enum.map(&present(&1, now))
  end

  @doc "The `n` most recent events, newest first."
  @spec recent(t(), non_neg_integer()) :: [map()]
  def recent(%__MODULE__{recent: recent}, n), do: Enum.take(recent, n)

  @doc "One group with its examples and their stack traces, or `nil`."
  @spec group(t(), String.t(), integer()) :: map() | nil
  def group(%__MODULE__{groups: groups}, id, now) do
    case Enum.find(groups, fn {_, g} -> g.id == id end) do
      nil ->
        nil

      {_, group} ->
        group
        |> present(now)
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
  end

  @doc "The `n` groups seen last whose exception or message contains `text` (case-insensitive)."
  @spec search(t(), String.t(), non_neg_integer(), integer()) :: [map()]
  def search(%__MODULE__{groups: groups}, text, n, now) do
    needle = String.downcase(text)

    groups
    |> Map.values()
    |> Enum.filter(fn g ->
      String.contains?(String.downcase(g.message), needle) or
        String.contains?(String.downcase(g.exception || ""), needle)
    end)
    |> Enum.sort_by(& &1.seq, :desc)
    |> Enum.take(n)
    |> Enum.map(&present(&1, now))
  end

  ## Recording

  @doc """
  Records an event (see `Beamlens.Domain.Exception.Fingerprint.event/3`,
  with `:source`, `:pid`, `:terminal` and `:at`) at `now` (ms), and says
  which of the store's counters it bumps: `:duplicates` (a second report of
  a crash already counted), `:recorded` or `:messages`, `:groups_created`,
  `:new_groups`.
  """
  @spec record(t(), map(), integer()) :: {t(), [counter()]}
  def record(%__MODULE__{} = state, entry, now) do
    if duplicate?(entry, state, now) do
      {state, [:duplicates]}
    else
      counter = if entry.kind == :message, do: :messages, else: :recorded

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

      {state, created} =
        state
        |> remember_pid(entry, now)
        |> put_group(hash, entry, message, example, now)

      state = state |> put_recent(hash, entry, message) |> bump_bucket(entry, now)
      {state, [counter | created]}
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

        {%{state | groups: Map.put(state.groups, hash, group), seq: state.seq + 1}, []}

      groups ->
        known? = MapSet.member?(state.known, hash)
        new? = not known? and now - state.started_at >= state.grace_ms

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

        groups = Store.make_room(groups, hash, state.max_groups, & &1.seq)

        known =
          if MapSet.size(state.known) < @max_known,
            do: MapSet.put(state.known, hash),
            else: state.known

        state = %{state | groups: Map.put(groups, hash, group), known: known, seq: state.seq + 1}
        {state, if(new?, do: [:groups_created, :new_groups], else: [:groups_created])}
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

  defp iso(ms), do: ms |> DateTime.from_unix!(:millisecond) |> DateTime.to_iso8601()
end
