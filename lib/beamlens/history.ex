defmodule Beamlens.History do
  @moduledoc """
  The recent alerts and insights of a BeamLens instance, kept in memory so
  that they can be read later (`Beamlens.alerts/1`, `Beamlens.insights/1`)
  whether or not a telemetry handler was attached when they went out.

  One history per instance, started by the `Beamlens` supervisor. Both
  lists are bounded (`:history_size` entries each, default 500; the
  oldest entries are dropped first). Watchers and the coordinator hand
  entries over with a cast that is dropped, never queued without bound,
  when the history is overloaded.

  An alert is recorded when it fires and updated in place when a repeat is
  folded into it (`:occurrences`, `:last_seen_at`). When an alert fires
  for a problem (fingerprint) whose latest recorded alert had a lower
  severity, the new alert carries that alert's escalations plus one more
  (`%{at, severity, summary}`).
  """

  use GenServer

  alias Beamlens.{Alert, Insight}

  @default_size 500
  @max_queue 10_000
  @max_escalations 20
  @rank %{info: 0, warning: 1, critical: 2}

  @alert_filters [:watcher, :severity, :anomaly_type, :since, :limit]
  @insight_filters [:since, :limit]

  @doc false
  def child_spec(opts) do
    %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}}
  end

  @doc false
  def start_link(opts) do
    instance = Keyword.fetch!(opts, :instance)
    size = Keyword.get(opts, :size, @default_size)
    GenServer.start_link(__MODULE__, size, name: name(instance))
  end

  @doc "The registered name of the history of `instance`."
  @spec name(atom()) :: atom()
  def name(instance), do: Module.concat(instance, History)

  @doc """
  Records an alert that fired (`:fired`) or whose repeat was folded into it
  (`:folded`). Never blocks; does nothing when the history is not running.
  """
  @spec alert(atom() | nil, :fired | :folded, Alert.t()) :: :ok
  def alert(nil, _event, _alert), do: :ok

  def alert(server, event, %Alert{} = alert) when event in [:fired, :folded],
    do: cast(server, {event, alert})

  @doc "Records an insight the coordinator emitted. Never blocks."
  @spec insight(atom() | nil, Insight.t()) :: :ok
  def insight(nil, _insight), do: :ok
  def insight(server, %Insight{} = insight), do: cast(server, {:insight, insight})

  defp cast(server, message) do
    case Process.whereis(server) do
      nil ->
        :ok

      pid ->
        case Process.info(pid, :message_queue_len) do
          {:message_queue_len, n} when n < @max_queue -> GenServer.cast(pid, message)
          _ -> :ok
        end
    end
  end

  @doc """
  The recorded alerts, newest first. Filters: `:watcher`, `:severity`,
  `:anomaly_type`, `:since` (a `DateTime`: alerts last seen at or after
  it), `:limit`. Raises `ArgumentError` naming a bad filter.
  """
  @spec alerts(atom(), keyword()) :: [Alert.t()]
  def alerts(server, filters \\ []) do
    filters = validate!(filters, @alert_filters)
    call(server, {:alerts, filters})
  end

  @doc """
  The recorded insights (latest version of each), newest first. Filters:
  `:since` (a `DateTime`: insights updated at or after it), `:limit`.
  """
  @spec insights(atom(), keyword()) :: [Insight.t()]
  def insights(server, filters \\ []) do
    filters = validate!(filters, @insight_filters)
    call(server, {:insights, filters})
  end

  defp call(server, request) do
    GenServer.call(server, request)
  catch
    :exit, {:noproc, _} ->
      raise ArgumentError,
            "no BeamLens history #{inspect(server)}: is the BeamLens instance running on #{node()}?"
  end

  @doc false
  # Validates filters; shared with `Beamlens.insights/1`, which merges in
  # the coordinator's live insights.
  @spec validate!(keyword(), [atom()]) :: keyword()
  def validate!(filters, known) do
    unless Keyword.keyword?(filters) do
      raise ArgumentError, "expected the filters to be a keyword list, got: #{inspect(filters)}"
    end

    Enum.each(filters, fn {key, value} ->
      unless key in known do
        raise ArgumentError,
              "unknown filter #{inspect(key)}; known filters: #{Enum.map_join(known, ", ", &inspect/1)}"
      end

      check_filter!(key, value)
    end)

    filters
  end

  defp check_filter!(:watcher, value) when is_atom(value), do: :ok
  defp check_filter!(:severity, value) when value in [:info, :warning, :critical], do: :ok
  defp check_filter!(:anomaly_type, value) when is_binary(value), do: :ok
  defp check_filter!(:since, %DateTime{}), do: :ok
  defp check_filter!(:limit, value) when is_integer(value) and value > 0, do: :ok

  defp check_filter!(key, value) do
    expected =
      case key do
        :watcher -> "an atom"
        :severity -> ":info, :warning or :critical"
        :anomaly_type -> "a string"
        :since -> "a DateTime"
        :limit -> "a positive integer"
      end

    raise ArgumentError,
          "expected filter #{inspect(key)} to be #{expected}, got: #{inspect(value)}"
  end

  @doc false
  # Keeps the entries of `list` (newest first) that pass the filters.
  @spec filter([map()], keyword(), (map() -> DateTime.t())) :: [map()]
  def filter(list, filters, time_of) do
    list
    |> Enum.filter(fn entry ->
      Enum.all?(filters, fn
        {:watcher, w} -> Map.get(entry, :watcher) == w
        {:severity, s} -> Map.get(entry, :severity) == s
        {:anomaly_type, t} -> Map.get(entry, :anomaly_type) == t
        {:since, since} -> DateTime.compare(time_of.(entry), since) != :lt
        {:limit, _} -> true
      end)
    end)
    |> then(fn list ->
      case filters[:limit] do
        nil -> list
        n -> Enum.take(list, n)
      end
    end)
  end

  ## Server

  @impl true
  def init(size) do
    {:ok, %{size: size, alerts: [], insights: %{}, order: []}}
  end

  @impl true
  def handle_cast({:fired, alert}, state) do
    alert = %{alert | last_seen_at: alert.last_seen_at || alert.detected_at}

    alert =
      with_escalations(alert, Enum.find(state.alerts, &(&1.fingerprint == alert.fingerprint)))

    alerts = [alert | Enum.reject(state.alerts, &(&1.id == alert.id))]

    {:noreply, %{state | alerts: Enum.take(alerts, state.size)}}
  end

  def handle_cast({:folded, folded}, state) do
    # A fold is a detection seen now, unless the watcher says when.
    seen =
      case folded.last_seen_at do
        %DateTime{} = at when at != folded.detected_at -> at
        _ -> DateTime.utc_now()
      end

    alerts =
      Enum.map(state.alerts, fn
        %{id: id} = alert when id == folded.id ->
          %{alert | occurrences: max(alert.occurrences, folded.occurrences), last_seen_at: seen}

        alert ->
          alert
      end)

    {:noreply, %{state | alerts: alerts}}
  end

  def handle_cast({:insight, insight}, state) do
    case state.insights[insight.id] do
      %Insight{version: v} when v > insight.version ->
        {:noreply, state}

      _ ->
        insights = Map.put(state.insights, insight.id, insight)
        order = [insight.id | List.delete(state.order, insight.id)]

        {order, dropped} = Enum.split(order, state.size)
        insights = Map.drop(insights, dropped)
        {:noreply, %{state | insights: insights, order: order}}
    end
  end

  @impl true
  def handle_call({:alerts, filters}, _from, state) do
    {:reply, filter(state.alerts, filters, & &1.last_seen_at), state}
  end

  def handle_call({:insights, filters}, _from, state) do
    insights =
      state.order
      |> Enum.map(&state.insights[&1])
      |> Enum.sort_by(&DateTime.to_unix(&1.updated_at, :microsecond), :desc)

    {:reply, filter(insights, filters, & &1.updated_at), state}
  end

  # The severity rose since the latest alert of this problem: carry its
  # escalations and add this one.
  defp with_escalations(%Alert{escalations: [_ | _]} = alert, _previous), do: alert
  defp with_escalations(alert, nil), do: alert

  defp with_escalations(alert, previous) do
    if @rank[alert.severity] > @rank[previous.severity] do
      step = %{at: alert.detected_at, severity: alert.severity, summary: alert.summary}
      %{alert | escalations: Enum.take(previous.escalations ++ [step], -@max_escalations)}
    else
      alert
    end
  end
end
