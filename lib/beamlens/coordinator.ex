defmodule Beamlens.Coordinator do
  @moduledoc """
  Relates alerts from every watcher, on this node and across the cluster,
  and explains related alerts together as one `Beamlens.Insight`.

  Watchers hand their alerts to `report_alert/2`. The coordinator passes
  them in batches to the correlation engine (Rust, on a dirty scheduler),
  which groups them:

    * **causal** - the causal table (`causal_rules/0`) has a directed
      relation between the two anomaly types, both alerts are on the same
      node, and the cause was detected first, within the relation's expected
      lag (for example `ets_memory_growth` up to 10 minutes before
      `memory_growth`; `restart_storm` up to 2 minutes before
      `error_log_burst`). An effect detected up to `:order_tolerance_ms`
      before its cause still counts, since watchers detect on their own ticks.
    * **symptomatic** - the alerts name the same entity (a pid, registered
      name, module, ETS table, port, supervisor or node) or strain the same
      resource (the node's memory, CPU, ports...; the database is shared by
      all nodes), or the same anomaly fired on several nodes, within
      `:window_ms` and with no causal order between them.
    * **temporal** - alerts from different watchers on the same node within
      `:window_ms` of each other.

  Related alerts form one group, and a group of two or more distinct alerts
  is an insight. When more alerts join, the same insight (same id) is
  updated with a higher version; when a new alert relates two insights they
  merge and the older one survives. Alerts are deduplicated by id, and
  repeats of a fingerprint (watcher, anomaly type, node) are folded into
  the first. An alert is forgotten once its fingerprint has been quiet for
  the retention horizon: the longer of `:window_ms` and the slowest causal
  relation (10 minutes) plus `:order_tolerance_ms`.

  ## Summaries

  Without a `:summarizer`, an insight's summary and hypothesis are
  deterministic: they name the rule that matched for which alerts, and for a
  causal insight, the root cause the causal table points to and where to look
  first. With one (see `Beamlens.Coordinator.Summarizer`), the summarizer
  writes them, asynchronously, and the insight is emitted when it answers
  (or times out, with the deterministic text).

  ## Cluster

  Coordinators with the same `:name` on connected nodes join one `:pg`
  group in `:pg_scope`, and every alert reaches all of them, so each holds
  every alert still in play. Exactly one of them, the leader, emits
  insights (and calls the summarizer): the coordinator on the lowest node
  name among those that have been receiving alerts for `:leader_warmup_ms`
  (or among all, when none has yet). When the leader's node goes away the
  next one takes over with the alerts it already holds, and emits the
  insight versions the old leader had not announced: an insight may then be
  emitted twice with the same id and version, never lost.

  ## Overload

  `report_alert/2` never blocks. When the coordinator's mailbox holds
  5,000 messages or more, new alerts are dropped and
  `[:beamlens, :coordinator, :alert_dropped]` is emitted instead; repeats of
  a live fingerprint would only have been folded anyway.

  ## Options

  #{Beamlens.Coordinator.Options.docs()}

  ## Telemetry

  `[:beamlens, :coordinator, :insight_produced]`,
  `[:beamlens, :coordinator, :insight_updated]`,
  `[:beamlens, :coordinator, :alert_dropped]`,
  `[:beamlens, :coordinator, :leader_changed]` and
  `[:beamlens, :coordinator, :summary_failed]`; see `Beamlens.Telemetry`.
  """

  use GenServer
  require Logger

  alias Beamlens.{Alert, Error, Insight, Telemetry}
  alias Beamlens.Coordinator.{Engine, Options}

  # Alerts waiting in the mailbox beyond which report_alert/2 drops.
  @max_mailbox 5_000
  # Alerts handed to the engine at once.
  @batch_size 500
  # Summarizer calls running at once.
  @max_summaries 2
  # Expiry tick.
  @tick_ms 5_000
  # Longest summary or hypothesis kept from a summarizer, in characters.
  @max_summary_chars 4_000

  defmodule State do
    @moduledoc false
    defstruct [
      :name,
      :scope,
      :group,
      :engine,
      :horizon_ms,
      :max_alerts,
      :summarizer,
      :summarizer_opts,
      :summarizer_timeout,
      :leader,
      :history,
      :members_ref,
      :eligible_ref,
      members: [],
      eligible: [],
      # fingerprint => latest %Alert{} (for summarizers)
      alerts: %{},
      # insight id => %{insight: latest, emitted: version, published: emitted insight}
      insights: %{},
      # insight id => {version, at_ms}: versions the leader announced
      acked: %{},
      # ref => %{insight, pid, timer}
      summaries: %{},
      pending: MapSet.new()
    ]
  end

  @doc """
  A child specification; the child id is the `:name` option.
  """
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: Keyword.get(opts, :name, __MODULE__),
      start: {__MODULE__, :start_link, [opts]}
    }
  end

  @doc """
  Starts a coordinator. See the module docs for the options.

  Raises `ArgumentError` when an option is unknown or invalid. Fails with
  `{:error, exception}` when the `:pg` scope is not running or the native
  library is not loaded.
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []) do
    # :history is set by the Beamlens supervisor (Beamlens.History), not by users.
    {history, opts} = Keyword.pop(opts, :history)

    case Options.validate(opts) do
      {:ok, opts} ->
        GenServer.start_link(__MODULE__, Keyword.put(opts, :history, history), name: opts[:name])

      {:error, error} ->
        raise error
    end
  end

  @doc """
  Hands an alert to the coordinator. Never blocks: the alert is sent as a
  cast, or dropped (with `[:beamlens, :coordinator, :alert_dropped]`) when
  the coordinator is not running or its mailbox is full.

  Alerts built with `Beamlens.Alert.new/1` are sent as they are; a bare
  struct gets its id, node, detection time and fingerprint filled in first.
  """
  @spec report_alert(GenServer.server(), Alert.t()) :: :ok
  def report_alert(server \\ __MODULE__, %Alert{} = alert) do
    case GenServer.whereis(server) do
      pid when is_pid(pid) ->
        if overloaded?(pid) do
          dropped(alert, server, :overloaded)
        else
          GenServer.cast(pid, {:alert, complete(alert)})
        end

      {name, node} when is_atom(name) and is_atom(node) ->
        GenServer.cast(server, {:alert, complete(alert)})

      nil ->
        dropped(alert, server, :not_running)
    end

    :ok
  end

  @doc """
  The current insights this coordinator holds (on every node of a cluster,
  not only the leader), oldest first.
  """
  @spec insights(GenServer.server()) :: [Insight.t()]
  def insights(server \\ __MODULE__), do: GenServer.call(server, :insights)

  @doc """
  Counters and sizes: the engine's (`:received`, `:duplicates`, `:folded`,
  `:stale`, `:evicted`, `:live_members`, `:retained_members`, `:groups`,
  `:seen_ids`, `:horizon_ms`...) and the coordinator's (`:leader`,
  `:leader?`, `:members`, `:stored_alerts`, `:insights`,
  `:summaries_running`, `:summaries_pending`, `:message_queue_len`,
  `:memory`).
  """
  @spec stats(GenServer.server()) :: {:ok, map()} | {:error, Error.t()}
  def stats(server \\ __MODULE__), do: GenServer.call(server, :stats)

  @doc """
  The causal table: each relation's `:name`, `:lead` and `:lag` anomaly
  types, expected lag (`:min_lag_ms`, `:max_lag_ms`), whether it is
  `:mutual`, its `:mechanism` and where to `:look_at` first.
  """
  @spec causal_rules() :: {:ok, [map()]} | {:error, Error.t()}
  def causal_rules, do: Engine.rules()

  ## Server

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    scope = opts[:pg_scope]

    with :ok <- check_scope(scope),
         {:ok, engine} <- Engine.new(opts),
         {:ok, %{horizon_ms: horizon_ms}} <- Engine.stats(engine) do
      group = {__MODULE__, opts[:name]}
      :ok = :pg.join(scope, {group, :members}, self())
      {members_ref, members} = :pg.monitor(scope, {group, :members})
      {eligible_ref, eligible} = :pg.monitor(scope, {group, :eligible})
      Process.send_after(self(), :eligible, opts[:leader_warmup_ms] || horizon_ms)
      Process.send_after(self(), :tick, @tick_ms)

      state = %State{
        name: opts[:name],
        history: opts[:history],
        scope: scope,
        group: group,
        engine: engine,
        horizon_ms: horizon_ms,
        max_alerts: opts[:max_alerts],
        summarizer: opts[:summarizer],
        summarizer_timeout: opts[:summarizer_timeout],
        summarizer_opts: [
          compaction_max_tokens: opts[:compaction_max_tokens],
          compaction_keep_last: opts[:compaction_keep_last],
          timeout: opts[:summarizer_timeout]
        ],
        members_ref: members_ref,
        eligible_ref: eligible_ref,
        members: members,
        eligible: eligible
      }

      {:ok, update_leader(state)}
    else
      {:error, error} -> {:stop, error}
    end
  end

  defp check_scope(scope) do
    if is_pid(Process.whereis(scope)) do
      :ok
    else
      {:error,
       ArgumentError.exception(
         "the :pg scope #{inspect(scope)} is not running; start {:pg, #{inspect(scope)}} " <>
           "before the coordinator (the Beamlens supervisor does this)"
       )}
    end
  end

  @impl true
  def handle_cast({:alert, alert}, state) do
    batch = drain([alert], @batch_size - 1)

    for pid <- others(state) do
      send(pid, {:"$gen_cast", {:peer_alerts, batch}})
    end

    {:noreply, ingest(batch, state)}
  end

  def handle_cast({:peer_alerts, batch}, state) when is_list(batch) do
    {:noreply, ingest(batch, state)}
  end

  def handle_cast({:insight_emitted, id, version}, state) do
    acked =
      Map.update(state.acked, id, {version, now_ms()}, fn {old, _} ->
        {max(old, version), now_ms()}
      end)

    {:noreply, %{state | acked: acked}}
  end

  # Anything else (a stray or malformed cast) is dropped: five crashes in a
  # minute would stop BeamLens.
  def handle_cast(message, state) do
    Logger.debug("Beamlens.Coordinator ignored an unexpected cast: #{brief(message)}")
    {:noreply, state}
  end

  @impl true
  def handle_call(:insights, _from, state) do
    insights =
      state.insights
      |> Map.values()
      |> Enum.map(fn entry ->
        case entry do
          %{published: %Insight{version: v} = published, insight: %Insight{version: v}} ->
            published

          %{insight: insight} ->
            insight
        end
      end)
      |> Enum.sort_by(&{DateTime.to_unix(&1.created_at, :millisecond), &1.id})

    {:reply, insights, state}
  end

  def handle_call(:stats, _from, state) do
    reply =
      with {:ok, stats} <- Engine.stats(state.engine) do
        {:message_queue_len, queue} = Process.info(self(), :message_queue_len)
        {:memory, memory} = Process.info(self(), :memory)

        {:ok,
         Map.merge(stats, %{
           leader: state.leader && node(state.leader),
           leader?: leader?(state),
           members: length(state.members),
           stored_alerts: map_size(state.alerts),
           insights: map_size(state.insights),
           summaries_running: map_size(state.summaries),
           summaries_pending: MapSet.size(state.pending),
           message_queue_len: queue,
           memory: memory
         })}
      end

    {:reply, reply, state}
  end

  def handle_call(message, _from, state) do
    Logger.debug("Beamlens.Coordinator refused an unexpected call: #{brief(message)}")
    {:reply, {:error, :unknown_call}, state}
  end

  @impl true
  def handle_info({:summary, ref, result}, state) do
    case Map.pop(state.summaries, ref) do
      {nil, _} ->
        {:noreply, state}

      {job, summaries} ->
        Process.cancel_timer(job.timer)
        state = finish_summary(job, result, %{state | summaries: summaries})
        {:noreply, state |> publish(job.insight.id) |> start_pending()}
    end
  end

  def handle_info({:summary_timeout, ref}, state) do
    case Map.pop(state.summaries, ref) do
      {nil, _} ->
        {:noreply, state}

      {job, summaries} ->
        Process.unlink(job.pid)
        Process.exit(job.pid, :kill)
        state = finish_summary(job, {:error, :timeout}, %{state | summaries: summaries})
        {:noreply, state |> publish(job.insight.id) |> start_pending()}
    end
  end

  def handle_info({ref, event, _group, pids}, %State{members_ref: ref} = state)
      when event in [:join, :leave] do
    {:noreply, update_leader(%{state | members: change(state.members, event, pids)})}
  end

  def handle_info({ref, event, _group, pids}, %State{eligible_ref: ref} = state)
      when event in [:join, :leave] do
    {:noreply, update_leader(%{state | eligible: change(state.eligible, event, pids)})}
  end

  def handle_info(:eligible, state) do
    :ok = :pg.join(state.scope, {state.group, :eligible}, self())
    {:noreply, state}
  end

  def handle_info(:tick, state) do
    Process.send_after(self(), :tick, @tick_ms)
    now = now_ms()

    state =
      case Engine.advance(state.engine, now) do
        {:ok, report} -> apply_report(report, state)
        {:error, error} -> log_engine_error(error, state)
      end

    {:noreply, prune(state, now)}
  end

  # Summarizer processes exit normally after answering; a crash was caught
  # and answered too. Other exits (the parent's) are handled by GenServer.
  def handle_info({:EXIT, _pid, _reason}, state), do: {:noreply, state}

  def handle_info(message, state) do
    Logger.debug("Beamlens.Coordinator ignored an unexpected message: #{brief(message)}")
    {:noreply, state}
  end

  # Unexpected messages may be huge or hold secrets: log a bounded, redacted
  # rendering.
  defp brief(message) do
    message
    |> inspect(limit: 5, printable_limit: 100)
    |> String.slice(0, 300)
    |> Beamlens.Redactor.redact()
  end

  @impl true
  def terminate(_reason, state) do
    for {_ref, job} <- state.summaries, do: Process.exit(job.pid, :kill)
    :ok
  end

  ## Alerts in

  defp drain(acc, 0), do: Enum.reverse(acc)

  defp drain(acc, n) do
    receive do
      {:"$gen_cast", {:alert, %Alert{} = alert}} -> drain([alert | acc], n - 1)
    after
      0 -> Enum.reverse(acc)
    end
  end

  defp ingest(batch, state) do
    state = store(batch, state)

    case Engine.ingest(state.engine, batch, now_ms()) do
      {:ok, report} -> apply_report(report, state)
      {:error, error} -> log_engine_error(error, state)
    end
  end

  # The latest alert of each fingerprint, for summarizers, bounded like the
  # engine's own state.
  defp store(batch, state) do
    alerts =
      Enum.reduce(batch, state.alerts, fn %Alert{fingerprint: fp} = alert, alerts ->
        case alerts do
          %{^fp => %Alert{detected_at: at}} ->
            if DateTime.compare(alert.detected_at, at) == :lt,
              do: alerts,
              else: Map.put(alerts, fp, alert)

          _ when map_size(alerts) >= state.max_alerts ->
            alerts

          _ ->
            Map.put(alerts, fp, alert)
        end
      end)

    %{state | alerts: alerts}
  end

  defp apply_report(%{insights: insights, retired: retired} = report, state) do
    case report do
      %{rejected: [_ | _] = rejected} ->
        Logger.warning(
          "Beamlens.Coordinator skipped alerts it could not read: #{Enum.join(rejected, "; ")}"
        )

      _ ->
        :ok
    end

    state = Enum.reduce(retired, state, &retire/2)

    Enum.reduce(insights, state, fn snapshot, state ->
      insight = Insight.from_native(snapshot)
      entry = Map.get(state.insights, insight.id, %{emitted: 0, published: nil})

      state = %{
        state
        | insights: Map.put(state.insights, insight.id, Map.put(entry, :insight, insight))
      }

      publish(state, insight.id)
    end)
  catch
    # A report the coordinator cannot read is a bug; keep correlating.
    kind, reason ->
      Logger.error(
        "Beamlens.Coordinator could not apply a correlation report: " <>
          Exception.format(kind, reason, __STACKTRACE__)
      )

      state
  end

  defp retire(%{"id" => id}, state) do
    %{
      state
      | insights: Map.delete(state.insights, id),
        acked: Map.delete(state.acked, id),
        pending: MapSet.delete(state.pending, id)
    }
  end

  defp prune(state, now) do
    cutoff = now - state.horizon_ms

    alerts =
      for {fp, alert} <- state.alerts,
          DateTime.to_unix(alert.detected_at, :millisecond) > cutoff,
          into: %{},
          do: {fp, alert}

    acked =
      for {id, {_version, at}} = entry <- state.acked,
          Map.has_key?(state.insights, id) or at > cutoff,
          into: %{},
          do: entry

    %{state | alerts: alerts, acked: acked}
  end

  defp log_engine_error(error, state) do
    Logger.error("Beamlens.Coordinator: correlation failed: #{Exception.message(error)}")
    state
  end

  ## Insights out (leader only)

  defp publish(state, id), do: publish_insight(id, state)

  defp publish_insight(id, state) do
    with true <- leader?(state),
         %{insight: insight} <- state.insights[id],
         true <- insight.version > announced(state, id) do
      cond do
        is_nil(state.summarizer) ->
          emit(insight, state)

        in_flight?(state, id) or map_size(state.summaries) >= @max_summaries ->
          %{state | pending: MapSet.put(state.pending, id)}

        true ->
          start_summary(insight, state)
      end
    else
      _ -> state
    end
  end

  defp announced(state, id) do
    emitted =
      case state.insights do
        %{^id => %{emitted: emitted}} -> emitted
        _ -> 0
      end

    case state.acked do
      %{^id => {acked, _}} -> max(emitted, acked)
      _ -> emitted
    end
  end

  defp emit(%Insight{id: id} = insight, state) do
    event = if announced(state, id) == 0, do: :insight_produced, else: :insight_updated
    insight = %{insight | produced_by: node()}
    Beamlens.History.insight(state.history, insight)

    Telemetry.execute(
      [:coordinator, event],
      %{
        system_time: System.system_time(),
        version: insight.version,
        alert_count: insight.alert_count,
        confidence: insight.confidence
      },
      %{insight: insight}
    )

    for pid <- others(state) do
      send(pid, {:"$gen_cast", {:insight_emitted, id, insight.version}})
    end

    insights =
      Map.update(
        state.insights,
        id,
        %{insight: insight, emitted: insight.version, published: insight},
        fn entry ->
          %{entry | emitted: max(entry.emitted, insight.version), published: insight}
        end
      )

    %{state | insights: insights}
  end

  ## Summarizer

  defp in_flight?(state, id) do
    Enum.any?(state.summaries, fn {_ref, job} -> job.insight.id == id end)
  end

  defp start_summary(insight, state) do
    alerts =
      insight.fingerprints
      |> Enum.map(&Map.get(state.alerts, &1))
      |> Enum.reject(&is_nil/1)

    coordinator = self()
    ref = make_ref()
    summarizer = state.summarizer
    opts = state.summarizer_opts

    pid =
      spawn_link(fn ->
        send(coordinator, {:summary, ref, run_summarizer(summarizer, insight, alerts, opts)})
      end)

    timer = Process.send_after(self(), {:summary_timeout, ref}, state.summarizer_timeout)

    %{
      state
      | summaries: Map.put(state.summaries, ref, %{insight: insight, pid: pid, timer: timer}),
        pending: MapSet.delete(state.pending, insight.id)
    }
  end

  defp run_summarizer(summarizer, insight, alerts, opts) do
    case summarizer do
      fun when is_function(fun, 2) -> fun.(insight, alerts)
      {module, extra} -> module.summarize(insight, alerts, Keyword.merge(extra, opts))
      module -> module.summarize(insight, alerts, opts)
    end
  catch
    kind, reason -> {:error, Exception.format(kind, reason, __STACKTRACE__)}
  end

  defp finish_summary(%{insight: insight}, result, state) do
    if leader?(state) and Map.has_key?(state.insights, insight.id) do
      case result do
        {:ok, %{summary: summary, hypothesis: hypothesis}}
        when is_binary(summary) and is_binary(hypothesis) ->
          emit(
            %{
              insight
              | summary:
                  summary |> Beamlens.Redactor.redact() |> String.slice(0, @max_summary_chars),
                root_cause_hypothesis:
                  hypothesis |> Beamlens.Redactor.redact() |> String.slice(0, @max_summary_chars),
                summary_source: :summarizer
            },
            state
          )

        other ->
          reason =
            case other do
              {:error, reason} -> reason
              other -> {:unexpected_result, other}
            end

          Telemetry.execute([:coordinator, :summary_failed], %{count: 1}, %{
            insight: insight,
            reason: reason
          })

          Logger.warning(
            "Beamlens.Coordinator: the summarizer failed for insight #{insight.id} " <>
              "(#{inspect(reason, limit: 5, printable_limit: 500)}); using the deterministic summary"
          )

          emit(insight, state)
      end
    else
      state
    end
  end

  defp start_pending(state) do
    ready = Enum.find(state.pending, &(not in_flight?(state, &1)))

    if ready && map_size(state.summaries) < @max_summaries do
      state = %{state | pending: MapSet.delete(state.pending, ready)}
      start_pending(publish(state, ready))
    else
      state
    end
  end

  ## Cluster

  defp change(list, :join, pids), do: Enum.uniq(pids ++ list)
  defp change(list, :leave, pids), do: list -- pids

  defp others(state), do: List.delete(state.members, self())

  defp leader?(state), do: state.leader == self()

  defp update_leader(state) do
    candidates = if state.eligible == [], do: state.members, else: state.eligible
    leader = if candidates == [], do: self(), else: Enum.min_by(candidates, &{node(&1), &1})

    if leader == state.leader do
      state
    else
      Telemetry.execute(
        [:coordinator, :leader_changed],
        %{members: length(state.members)},
        %{
          coordinator: state.name,
          leader: node(leader),
          previous: state.leader && node(state.leader)
        }
      )

      state = %{state | leader: leader}
      if leader == self(), do: take_over(state), else: state
    end
  end

  # A new leader emits every insight version nobody has announced.
  defp take_over(state) do
    state.insights
    |> Map.keys()
    |> Enum.reduce(state, &publish_insight/2)
  end

  ## Helpers

  defp overloaded?(pid) do
    node(pid) == node() and
      match?(
        {:message_queue_len, n} when n >= @max_mailbox,
        Process.info(pid, :message_queue_len)
      )
  end

  defp dropped(alert, server, reason) do
    Telemetry.execute([:coordinator, :alert_dropped], %{count: 1}, %{
      alert: alert,
      reason: reason,
      coordinator: server
    })
  end

  defp complete(%Alert{id: id, fingerprint: fp, detected_at: %DateTime{}, node: node} = alert)
       when is_binary(id) and is_binary(fp) and is_atom(node) and not is_nil(node),
       do: alert

  defp complete(%Alert{} = alert), do: alert |> Map.from_struct() |> Map.to_list() |> Alert.new()

  defp now_ms, do: System.system_time(:millisecond)
end
