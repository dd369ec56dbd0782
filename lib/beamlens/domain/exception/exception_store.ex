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
  *new* for five minutes. The groups are kept by
  `Beamlens.Domain.Exception.Groups`.

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

  alias Beamlens.Domain.Exception.{Groups, LoggerHandler, TowerReporter}
  alias Beamlens.Store

  @key {__MODULE__, :shared}

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

    groups = Groups.new(now_ms(), opts[:max_groups], opts[:new_group_grace_ms])
    {:ok, %{shared: shared, capture_logs: capture?, groups: groups}}
  end

  @impl true
  def terminate(_reason, state) do
    if state.capture_logs, do: LoggerHandler.remove()
    Store.unpublish(@key)
  end

  @impl true
  def handle_info({:event, entry}, state) do
    Store.taken(state.shared)
    {groups, counted} = Groups.record(state.groups, entry, now_ms())
    for counter <- counted, do: :counters.add(state.shared.counters, counter_index(counter), 1)
    {:noreply, %{state | groups: groups}}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def handle_call(:stats, _from, state) do
    c = state.shared.counters

    stats =
      state.groups
      |> Groups.stats(now_ms())
      |> Map.merge(%{
        recorded: :counters.get(c, @recorded),
        messages: :counters.get(c, @messages),
        received: :counters.get(c, @received),
        dropped: :counters.get(c, @dropped),
        duplicates: :counters.get(c, @duplicates),
        groups_created: :counters.get(c, @groups_created),
        new_groups: :counters.get(c, @new_groups),
        sources: if(state.capture_logs, do: "tower and logger", else: "tower")
      })

    {:reply, stats, state}
  end

  def handle_call({:top_groups, n}, _from, state),
    do: {:reply, Groups.top(state.groups, n, now_ms()), state}

  def handle_call({:new_groups, n}, _from, state),
    do: {:reply, Groups.new_groups(state.groups, n, now_ms()), state}

  def handle_call({:recent, n}, _from, state), do: {:reply, Groups.recent(state.groups, n), state}

  def handle_call({:group, id}, _from, state),
    do: {:reply, Groups.group(state.groups, id, now_ms()), state}

  def handle_call({:search, text, n}, _from, state),
    do: {:reply, Groups.search(state.groups, text, n, now_ms()), state}

  defp counter_index(:duplicates), do: @duplicates
  defp counter_index(:recorded), do: @recorded
  defp counter_index(:messages), do: @messages
  defp counter_index(:groups_created), do: @groups_created
  defp counter_index(:new_groups), do: @new_groups

  defp now_ms, do: System.system_time(:millisecond)

  defp validate!(opts) do
    Beamlens.Schema.validate!(opts, @options,
      label: "#{inspect(__MODULE__)} option",
      of: "#{inspect(__MODULE__)} options",
      unknown: "unknown %{label} %{key}; known: %{known}%{hint}"
    )
  end
end
