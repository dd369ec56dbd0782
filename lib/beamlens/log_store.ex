defmodule Beamlens.LogStore do
  # A bounded record of what the application logs, fed by a `:logger`
  # handler and read by the :logger domain. (Its restart counts come from
  # OTP's supervisor reports, which Elixir 1.15+ drops by default; the :sup
  # domain counts restarts itself, see Beamlens.Domain.Sup.Tracker.)
  #
  # The handler runs in the process that logs, so it does the minimum: it
  # bumps counters for every event, and only for warnings and worse formats
  # the message (capped at 1 KiB) and writes it into a fixed-size ring of ETS
  # slots. Nothing here grows without bound: the ring has `capacity` slots,
  # and the per-module and per-supervisor tables stop adding new keys at
  # #{@max_keys} (later ones are counted under "other"). A failing handler is
  # removed by :logger itself; every callback here rescues to avoid that.
  @moduledoc false

  use GenServer

  @options [capacity: [type: :pos_integer, default: 500, doc: "Slots of the event ring."]]

  alias Beamlens.Store

  @levels [:emergency, :alert, :critical, :error, :warning, :notice, :info, :debug]
  @max_keys 500
  @message_limit 1024
  @format_chars 4096
  @format_depth 20
  @format_max_size 8192
  @handler_id :beamlens_log_store

  # counter indexes
  @restarts 9
  @sup_shutdowns 10
  @connection_errors 11
  @crash_reports 12
  @handler_errors 13
  @counter_size 13

  @connection_pattern ~r/econnrefused|econnreset|ehostunreach|enetunreach|nxdomain|connection refused|connection reset|connection closed|:closed\b|timed? ?out|:timeout\b/i

  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts), do: Store.child_spec(__MODULE__, opts)

  @doc "Starts the store, or does nothing when it already runs."
  @spec start_link(keyword()) :: GenServer.on_start() | :ignore
  def start_link(opts \\ []) do
    opts = Beamlens.Schema.validate!(opts, @options, label: "#{inspect(__MODULE__)} option")
    Store.start_once(__MODULE__, opts)
  end

  @doc "Whether the store is running."
  @spec running?() :: boolean()
  def running?, do: state() != nil

  @doc "Totals since the store started: per level, restarts, crash reports, connection errors."
  @spec totals() :: map()
  def totals do
    case state() do
      nil ->
        %{}

      %{counters: c} ->
        levels =
          Map.new(Enum.with_index(@levels, 1), fn {level, i} -> {level, :counters.get(c, i)} end)

        Map.merge(levels, %{
          errors: Enum.sum(for l <- [:emergency, :alert, :critical, :error], do: levels[l]),
          restarts: :counters.get(c, @restarts),
          supervisor_shutdowns: :counters.get(c, @sup_shutdowns),
          connection_errors: :counters.get(c, @connection_errors),
          crash_reports: :counters.get(c, @crash_reports),
          handler_errors: :counters.get(c, @handler_errors)
        })
    end
  end

  @doc """
  The most recent stored events, newest first, messages redacted (see
  `Beamlens.Redactor`). `level` is `:error` (errors and worse), `:warning`
  (warnings and worse) or `:all`.
  """
  @spec recent(pos_integer() | :infinity, :error | :warning | :all) :: [map()]
  def recent(n, level \\ :warning) do
    case state() do
      nil ->
        []

      %{events: events} ->
        keep = allowed(level)

        events
        |> :ets.tab2list()
        |> Enum.map(&elem(&1, 1))
        |> Enum.filter(&(&1.level in keep))
        |> Enum.sort_by(& &1.seq, :desc)
        |> take(n)
        |> Enum.map(&Map.update!(&1, :message, fn text -> Beamlens.Redactor.redact(text) end))
    end
  end

  defp take(list, :infinity), do: list
  defp take(list, n), do: Enum.take(list, n)

  @doc "Stored events whose message contains `text` (case-insensitive), newest first."
  @spec search(String.t(), pos_integer()) :: [map()]
  def search(text, n) when is_binary(text) do
    needle = String.downcase(text)

    recent(:infinity, :all)
    |> Enum.filter(&String.contains?(String.downcase(&1.message), needle))
    |> Enum.take(n)
  end

  @doc "Modules with the most errors and warnings."
  @spec top_modules(pos_integer()) :: [map()]
  def top_modules(n) do
    case state() do
      nil ->
        []

      %{modules: modules} ->
        modules
        |> :ets.tab2list()
        |> Enum.map(fn {module, errors, warnings} ->
          %{module: module, errors: errors, warnings: warnings}
        end)
        |> Enum.sort_by(&{&1.errors, &1.warnings}, :desc)
        |> Enum.take(n)
    end
  end

  @doc "Supervisors whose children terminated abnormally the most."
  @spec top_supervisors(pos_integer()) :: [map()]
  def top_supervisors(n) do
    case state() do
      nil ->
        []

      %{supervisors: sups} ->
        sups
        |> :ets.tab2list()
        |> Enum.map(fn {sup, restarts, last_child, last_reason} ->
          %{supervisor: sup, restarts: restarts, last_child: last_child, last_reason: last_reason}
        end)
        |> Enum.sort_by(& &1.restarts, :desc)
        |> Enum.take(n)
    end
  end

  defp allowed(:error), do: [:emergency, :alert, :critical, :error]
  defp allowed(:warning), do: [:emergency, :alert, :critical, :error, :warning]
  defp allowed(_), do: @levels

  defp state, do: Store.shared(__MODULE__)

  ## GenServer

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    capacity = opts[:capacity]

    state = %{
      capacity: capacity,
      counters: :counters.new(@counter_size, [:write_concurrency]),
      sequence: :atomics.new(1, signed: false),
      events: Store.table(:beamlens_log_events, read_concurrency: true),
      modules: Store.table(:beamlens_log_modules),
      supervisors: Store.table(:beamlens_log_supervisors)
    }

    Store.publish(__MODULE__, state)

    case Store.attach_logger(@handler_id, __MODULE__.Handler, :all, state) do
      :ok -> {:ok, state}
      {:error, reason} -> {:stop, {:logger_handler, reason}}
    end
  end

  @impl true
  def terminate(_reason, _state) do
    Store.detach_logger(@handler_id)
    Store.unpublish(__MODULE__)
  end

  ## Handler (runs in the logging process)

  @doc false
  @spec handle_event(:logger.log_event(), map()) :: :ok
  def handle_event(%{level: level} = event, config) do
    c = config.counters
    :counters.add(c, level_index(level), 1)

    case event do
      %{msg: {:report, %{label: {:supervisor, :child_terminated}, report: report}}} ->
        record_restart(config, report)

      %{msg: {:report, %{label: {:supervisor, :shutdown}}}} ->
        :counters.add(c, @sup_shutdowns, 1)

      %{msg: {:report, %{label: {:proc_lib, :crash}}}} ->
        :counters.add(c, @crash_reports, 1)

      _ ->
        :ok
    end

    if level in [:emergency, :alert, :critical, :error, :warning] do
      store(event, config)
    end

    :ok
  rescue
    _ -> :counters.add(config.counters, @handler_errors, 1)
  end

  defp store(event, config) do
    message = format(event)
    module = module(event)

    if level_rank(event.level) <= level_rank(:error) and
         Regex.match?(@connection_pattern, message) do
      :counters.add(config.counters, @connection_errors, 1)
    end

    {errors, warnings} = if event.level == :warning, do: {0, 1}, else: {1, 0}

    Store.bump(
      config.modules,
      module || "unknown",
      [{2, errors}, {3, warnings}],
      {module || "unknown", 0, 0},
      @max_keys
    )

    seq = :atomics.add_get(config.sequence, 1, 1)

    entry = %{
      seq: seq,
      time: event.meta[:time] && format_time(event.meta[:time]),
      level: event.level,
      module: module,
      pid: event.meta[:pid] && inspect(event.meta[:pid]),
      message: message
    }

    :ets.insert(config.events, {rem(seq, config.capacity), entry})
  end

  defp record_restart(config, report) do
    :counters.add(config.counters, @restarts, 1)
    supervisor = report |> Keyword.get(:supervisor) |> supervisor_name()
    child = report |> Keyword.get(:offender, []) |> Keyword.get(:id) |> short()
    reason = report |> Keyword.get(:reason) |> short()

    # Once the table is full, "other" takes the count.
    key =
      Store.bump(
        config.supervisors,
        supervisor,
        [{2, 1}],
        {supervisor, 0, child, reason},
        @max_keys
      )

    :ets.update_element(config.supervisors, key, [{3, child}, {4, reason}])
  end

  # Formatting runs in the process that logs, so it is bounded before it
  # starts: reports are printed to depth 20 and about 4096 characters (a
  # crash report of a process whose state is a million-element list costs
  # as much as a small one), and the text is cut at 8 KiB.
  defp format(event) do
    event
    |> :logger_formatter.format(%{
      single_line: true,
      template: [:msg],
      chars_limit: @format_chars,
      depth: @format_depth,
      max_size: @format_max_size
    })
    |> IO.chardata_to_string()
    |> cut(@message_limit)
  rescue
    _ -> "(unformattable log event)"
  end

  # Messages are redacted when read, so a secret cut in half here would
  # escape the redactor's shapes: the cut drops the partial last word.
  @doc false
  @spec cut(String.t(), pos_integer()) :: String.t()
  def cut(text, limit), do: Beamlens.Redactor.truncate(text, limit)

  defp module(%{meta: %{mfa: {m, _, _}}}), do: Beamlens.Domain.id(m)
  defp module(%{meta: %{module: m}}) when is_atom(m), do: Beamlens.Domain.id(m)
  defp module(_), do: nil

  defp supervisor_name({:local, name}), do: Beamlens.Domain.id(name)
  defp supervisor_name({:global, name}), do: short(name)
  defp supervisor_name({:via, _, name}), do: short(name)
  defp supervisor_name({pid, module}) when is_pid(pid), do: Beamlens.Domain.id(module)
  defp supervisor_name(other), do: short(other)

  defp short(term) when is_atom(term), do: Beamlens.Domain.id(term)
  defp short(term) when is_binary(term), do: String.slice(term, 0, 200)
  defp short(term), do: term |> inspect(limit: 5, printable_limit: 200) |> String.slice(0, 200)

  defp format_time(us) do
    us |> DateTime.from_unix!(:microsecond) |> DateTime.to_iso8601()
  rescue
    _ -> nil
  end

  defp level_index(level), do: Enum.find_index(@levels, &(&1 == level)) + 1
  defp level_rank(level), do: level_index(level)

  defmodule Handler do
    @moduledoc false
    # :logger handler callbacks; see Beamlens.LogStore.

    @spec log(:logger.log_event(), :logger.handler_config()) :: :ok
    def log(event, %{config: config}), do: Beamlens.LogStore.handle_event(event, config)
  end
end
