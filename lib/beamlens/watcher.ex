defmodule Beamlens.Watcher do
  # One watcher: a GenServer that snapshots its domain on every tick, feeds
  # the numbers to its anomaly gate, keeps its state (:healthy, :observing,
  # :warning, :critical) and fires alerts.
  #
  # This module is the process shell: timers, tasks and messages in,
  # effects carried out. The decisions are pure modules with the clock
  # passed in: `Beamlens.Watcher.Status` (when the model looks, the state
  # floor), `Beamlens.Watcher.Check` (one model wake-up as a state machine),
  # `Beamlens.Watcher.Alerts` (building, fold, escalate, prune) and
  # `Beamlens.Watcher.Agent` (prompts, tools, validation).
  #
  # Nothing slow runs in this process. Snapshots run in tasks (a snapshot
  # still running at the next tick makes that tick skip), model requests run
  # on the native runtime and answer with a message, Lua runs in the sandbox
  # and answers with a message; each such answer is fed to the running
  # check. Every reply a check waits for has a deadline (and a Lua run is
  # monitored), so a hung provider or a lost reply ends the wait, never the
  # watcher. The gate's own alerts never wait for the model: the model gets
  # `:gate_alert_grace` ms to report the anomaly itself, then the gate's
  # alert fires whatever the provider does (and at the end of the check at
  # the latest).
  #
  # Times kept in the state (pauses, sleeps, alerts' fired_at) are on the
  # watcher's clock: ms since it started (`clock/1`).
  @moduledoc false

  use GenServer, restart: :permanent

  # The gate's own default, so that a watcher started without `:gate`
  # escalates at the ratio its documentation states.
  @escalate_ratio Keyword.fetch!(Beamlens.Gate.defaults(), :escalate_ratio)

  require Logger

  alias Beamlens.{Alert, Gate, LLM, Lua, Telemetry}
  alias Beamlens.Watcher.{Alerts, Check, Status}

  @max_snapshots 10
  @budget_pause_ms 300_000

  defstruct [
    :name,
    :domain,
    :instance,
    :gate,
    :task_sup,
    :snapshot_task,
    :snapshot_timer,
    :opts,
    :started_at,
    :coordinator,
    :llm,
    # The running check (a Beamlens.Watcher.Check) or nil, and what it
    # waits for: the reply's ref, its deadline timer, the Lua run's monitor.
    :wake,
    :await,
    :summary,
    status: :healthy,
    status_reason: "started",
    model_status: nil,
    tick: 0,
    skipped: 0,
    snapshots: [],
    metrics: %{},
    firing: %{},
    pending: [],
    open_alerts: %{},
    alerts_fired: 0,
    last_error: nil,
    conversation: [],
    last_wake_tick: nil,
    last_wake_at: nil,
    sleep_until: 0,
    llm_paused_until: 0,
    reported_tokens: 0,
    llm_errors: %{},
    # Operator controls (Beamlens.pause/2, check_now/2, status/1).
    paused_until: nil,
    paused_until_at: nil,
    check_requested: false,
    # Set while paused: what fires at the first verdict after the pause is
    # raised even if it started during the pause.
    raise_firing: false,
    last_tick_at: nil,
    last_check: nil,
    stats: %{checks: 0, llm_requests: 0, corrections: 0, compactions: 0, gate_fallbacks: 0}
  ]

  ## API

  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.fetch!(opts, :name)},
      start: {__MODULE__, :start_link, [opts]},
      restart: :permanent
    }
  end

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    GenServer.start_link(__MODULE__, opts, name: via(opts[:instance], opts[:name]))
  end

  @doc false
  @spec via(atom(), atom()) :: GenServer.name()
  def via(instance, name),
    do: {:via, Registry, {Module.concat(instance, Registry), {:watcher, name}}}

  @doc false
  @spec whereis(atom(), atom()) :: pid() | nil
  def whereis(instance, name) do
    case Registry.lookup(Module.concat(instance, Registry), {:watcher, name}) do
      [{pid, _}] -> pid
      [] -> nil
    end
  end

  @doc false
  @spec info(GenServer.server(), timeout()) :: map()
  def info(server, timeout \\ 5_000), do: GenServer.call(server, :info, timeout)

  ## GenServer

  @impl true
  def init(opts) do
    gate_opts =
      Keyword.merge([warmup: opts[:warmup], cooldown_ms: opts[:alert_cooldown]], opts[:gate])

    case Gate.new(gate_opts) do
      {:ok, gate} ->
        state = %__MODULE__{
          name: opts[:name],
          domain: opts[:domain_module],
          instance: opts[:instance],
          task_sup: Module.concat(opts[:instance], TaskSupervisor),
          coordinator: opts[:coordinator],
          llm: opts[:llm_config],
          gate: gate,
          opts: opts,
          started_at: System.monotonic_time(:millisecond)
        }

        send(self(), :tick)
        {:ok, state}

      {:error, error} ->
        {:stop, {:bad_gate_options, Exception.message(error)}}
    end
  end

  @impl true
  def handle_call(:info, _from, state) do
    info = %{
      name: state.name,
      domain: state.domain,
      state: state.status,
      reason: state.status_reason,
      mode: if(state.llm, do: state.opts[:llm], else: :rules_only),
      ticks: state.tick,
      skipped_ticks: state.skipped,
      alerts_fired: state.alerts_fired,
      firing: Map.keys(state.firing),
      checking?: state.wake != nil,
      conversation_messages: length(conversation(state)),
      stats: state.stats,
      last_snapshot_id: match?([_ | _], state.snapshots) && elem(hd(state.snapshots), 0),
      last_error: state.last_error
    }

    {:reply, info, state}
  end

  # Operator controls: see Beamlens.pause/2, resume/2, check_now/2, status/1.
  def handle_call(:status, _from, state), do: {:reply, Beamlens.Status.watcher(state), state}

  def handle_call({:pause, ms}, _from, state) do
    {until, at} =
      case ms do
        :infinity -> {:infinity, nil}
        ms -> {clock(state) + ms, DateTime.add(DateTime.utc_now(), ms, :millisecond)}
      end

    Telemetry.execute([:watcher, :paused], %{count: 1}, %{watcher: state.name, for: ms})
    {:reply, :ok, %{state | paused_until: until, paused_until_at: at}}
  end

  def handle_call(:resume, _from, state) do
    Telemetry.execute([:watcher, :resumed], %{count: 1}, %{watcher: state.name})
    {:reply, :ok, %{state | paused_until: nil, paused_until_at: nil}}
  end

  def handle_call(:check_now, _from, state) do
    state = %{state | check_requested: true}
    state = if state.snapshot_task, do: state, else: start_snapshot(state, :tick)
    {:reply, :ok, state}
  end

  # What the watcher's own gate sees now, for Beamlens.investigate/2.
  def handle_call(:gate_view, _from, state) do
    view = %{
      status: state.status,
      reason: state.status_reason,
      firing: Map.values(state.firing),
      pending: state.pending,
      metrics: state.metrics,
      snapshot_id: match?([_ | _], state.snapshots) && elem(hd(state.snapshots), 0),
      domain: state.domain
    }

    {:reply, view, state}
  end

  # An alert an investigation asked to fire (fire_alerts: true): delivered
  # like the watcher's own, folded into an open alert of the same problem.
  @impl true
  def handle_cast({:fire_external, %Alert{} = alert}, state) do
    candidate = %{
      severity: alert.severity,
      values: (alert.evidence && alert.evidence[:values]) || %{},
      escalated?: false
    }

    {state, _event} = deliver(state, alert.anomaly_type, candidate, &%{alert | occurrences: &1})
    {:noreply, state}
  end

  @impl true
  def handle_info(:tick, state) do
    Process.send_after(self(), :tick, state.opts[:interval])
    state = %{state | last_tick_at: DateTime.utc_now()}
    state = fire_due_gate_alerts(state)

    if state.snapshot_task do
      {:noreply, %{state | skipped: state.skipped + 1}}
    else
      {:noreply, start_snapshot(state, :tick)}
    end
  end

  # Tick snapshots and take_snapshot tool calls.
  def handle_info({ref, result}, %{snapshot_task: {%Task{ref: ref}, purpose}} = state) do
    Process.demonitor(ref, [:flush])
    cancel_timer(state.snapshot_timer)
    state = %{state | snapshot_task: nil, snapshot_timer: nil}
    {:noreply, snapshot_done(state, purpose, result)}
  end

  def handle_info(
        {:DOWN, ref, :process, _, reason},
        %{snapshot_task: {%Task{ref: ref}, purpose}} = state
      ) do
    cancel_timer(state.snapshot_timer)
    state = %{state | snapshot_task: nil, snapshot_timer: nil}

    {:noreply,
     snapshot_done(
       state,
       purpose,
       {:error, "snapshot process exited: #{inspect(reason, limit: 5)}"}
     )}
  end

  def handle_info(
        {:snapshot_timeout, ref},
        %{snapshot_task: {%Task{ref: ref} = task, purpose}} = state
      ) do
    Task.Supervisor.terminate_child(state.task_sup, task.pid)
    Process.demonitor(ref, [:flush])
    state = %{state | snapshot_task: nil, snapshot_timer: nil}

    {:noreply,
     snapshot_done(
       state,
       purpose,
       {:error, "snapshot took longer than #{snapshot_timeout(state)} ms"}
     )}
  end

  # Gate alerts whose grace ran out while a check is running.
  def handle_info(:gate_alerts_due, state), do: {:noreply, fire_due_gate_alerts(state)}

  # Model replies (a check's request or its compaction).
  def handle_info({ref, raw}, %{await: %{ref: ref, kind: kind} = await} = state)
      when kind in [:llm, :compaction] do
    result = LLM.handle_reply(await.pending, raw)
    state = settle(state)
    {:noreply, run(state, Check.llm_replied(state.wake, result, env(state)))}
  end

  # Lua results.
  def handle_info({ref, result}, %{await: %{ref: ref, kind: :lua}} = state) do
    state = settle(state)
    {:noreply, run(state, Check.lua_replied(state.wake, result, env(state)))}
  end

  # The process serving the Lua run ended without an answer.
  def handle_info({:DOWN, monitor, :process, _, reason}, %{await: %{monitor: monitor}} = state) do
    state = settle(state)
    {:noreply, run(state, Check.lua_replied(state.wake, {:down, reason}, env(state)))}
  end

  # A reply the check waits for is overdue: give up on it and go on.
  def handle_info({:await_deadline, token}, %{await: %{token: token} = await} = state) do
    Telemetry.execute([:watcher, :reply_timeout], %{timeout: await.ms}, %{
      watcher: state.name,
      awaiting: await.kind
    })

    overdue = %{ms: await.ms, provider: await[:pending] && await.pending.provider}
    state = settle(state)
    {:noreply, run(state, Check.overdue(state.wake, overdue, env(state)))}
  end

  # Late replies of requests that are no longer awaited.
  def handle_info(_other, state), do: {:noreply, state}

  ## Snapshots

  defp start_snapshot(state, purpose) do
    domain = state.domain

    task =
      Task.Supervisor.async_nolink(state.task_sup, fn ->
        try do
          {:ok, domain.snapshot()}
        rescue
          e -> {:error, Exception.message(e)}
        catch
          kind, reason -> {:error, "#{kind}: #{inspect(reason, limit: 5)}"}
        end
      end)

    timer = Process.send_after(self(), {:snapshot_timeout, task.ref}, snapshot_timeout(state))
    %{state | snapshot_task: {task, purpose}, snapshot_timer: timer}
  end

  defp snapshot_timeout(state), do: min(state.opts[:interval], 10_000) |> max(1_000)

  defp snapshot_done(state, :tick, {:ok, snapshot}), do: handle_snapshot(snapshot, state)
  defp snapshot_done(state, :tick, {:error, message}), do: snapshot_failed(state, message)

  defp snapshot_done(state, {:tool, _call}, {:ok, snapshot}) do
    {id, state} = store_snapshot(state, snapshot)
    run(state, Check.snapshot_taken(state.wake, {:ok, id, snapshot}, env(state)))
  end

  defp snapshot_done(state, {:tool, _call}, {:error, message}),
    do: run(state, Check.snapshot_taken(state.wake, {:error, message}, env(state)))

  defp snapshot_failed(state, message) do
    message = Beamlens.Redactor.redact_text(message)

    if state.last_error != message do
      Logger.warning("BeamLens watcher #{inspect(state.name)}: #{message}")
    end

    Telemetry.execute([:watcher, :snapshot_failed], %{count: 1}, %{
      watcher: state.name,
      error: message
    })

    %{state | last_error: message}
  end

  defp store_snapshot(state, snapshot) do
    tick = state.tick + 1
    id = "#{state.name}-#{tick}"
    snapshots = Enum.take([{id, snapshot} | state.snapshots], @max_snapshots)
    {id, %{state | tick: tick, snapshots: snapshots}}
  end

  defp handle_snapshot(snapshot, state) do
    {id, state} = store_snapshot(state, snapshot)
    state = %{state | last_error: nil}

    with {:ok, metrics} <- safe_metrics(state.domain, snapshot),
         {:ok, verdict} <- Gate.observe(state.gate, metrics, clock(state)) do
      state
      |> Map.put(:metrics, Map.new(metrics, &{&1.name, &1}))
      |> apply_verdict(verdict, id, snapshot)
      |> check_served()
    else
      {:error, error} -> snapshot_failed(state, error_message(error))
    end
  end

  # Milliseconds since the watcher started: a non-negative clock for the gate.
  defp clock(state), do: System.monotonic_time(:millisecond) - state.started_at

  defp safe_metrics(domain, snapshot) do
    {:ok, domain.metrics(snapshot)}
  rescue
    e -> {:error, "metrics/1 of #{inspect(domain)} failed: #{Exception.message(e)}"}
  end

  defp error_message(%{__exception__: true} = e), do: Exception.message(e)
  defp error_message(message) when is_binary(message), do: message

  ## Verdicts

  defp apply_verdict(state, verdict, snapshot_id, snapshot) do
    state = %{state | firing: Map.new(verdict.findings, &{&1.name, &1}), pending: verdict.pending}

    groups =
      verdict.findings
      |> Enum.filter(&(&1.status in ["new", "escalated"] or state.raise_firing))
      |> Enum.group_by(&anomaly_type(state, &1))

    state = update_status(state)

    cond do
      # Paused: the gate keeps learning and the state stays current, but
      # nothing is raised (no alert, no model).
      paused?(state) ->
        %{state | raise_firing: true}

      state.raise_firing and state.wake == nil ->
        state = %{state | raise_firing: false}

        if reason = wake_reason(state, groups),
          do: start_check(state, reason, snapshot_id, snapshot, verdict.findings, groups),
          else: fire_gate_alerts(state, groups, snapshot_id)

      state.wake != nil ->
        # A check is running: the model gets the grace period to report
        # these, then the gate's alerts fire.
        run(state, Check.gate_findings(state.wake, groups, snapshot_id, env(state)))

      reason = wake_reason(state, groups) ->
        state
        |> start_check(reason, snapshot_id, snapshot, verdict.findings, groups)
        |> fire_due_gate_alerts()

      true ->
        fire_gate_alerts(state, groups, snapshot_id)
    end
  end

  @doc false
  @spec paused?(%__MODULE__{}) :: boolean()
  def paused?(state), do: Status.paused?(state, clock(state))

  defp wake_reason(state, groups), do: Status.wake_reason(state, groups, clock(state))

  # A check_now/2 in rules-only mode (or while paused) is served by the
  # snapshot and the gate alone.
  defp check_served(%{check_requested: false} = state), do: state

  defp check_served(state) do
    state = %{state | check_requested: false}

    if state.wake,
      do: state,
      else: %{
        state
        | last_check: %{
            at: DateTime.utc_now(),
            reason: "check requested",
            outcome: :rules_only,
            tokens: 0
          }
      }
  end

  # Gate alerts of the running check whose grace ran out go out, unless the
  # model reported that anomaly type already.
  defp fire_due_gate_alerts(%{wake: nil} = state), do: state
  defp fire_due_gate_alerts(state), do: run(state, Check.gate_due(state.wake, env(state)))

  defp anomaly_type(state, finding), do: Alerts.anomaly_type(state, finding)

  ## Checks (model wake-ups, driven by Beamlens.Watcher.Check)

  defp start_check(state, reason, snapshot_id, snapshot, findings, groups) do
    start = %{
      reason: reason,
      snapshot_id: snapshot_id,
      snapshot: snapshot,
      status: state.status,
      findings: findings,
      groups: groups,
      reported: open_alert_types(state),
      conversation: state.conversation,
      summary: state.summary,
      reported_tokens: state.reported_tokens
    }

    config = %{
      domain: state.domain,
      interval: state.opts[:interval],
      max_iterations: state.opts[:max_iterations],
      gate_alert_grace: state.opts[:gate_alert_grace],
      compaction_max_tokens: state.opts[:compaction_max_tokens],
      compaction_keep_last: state.opts[:compaction_keep_last],
      llm_deadline: llm_deadline(state),
      lua_deadline: lua_deadline(state)
    }

    state = update_in(state.stats.checks, &(&1 + 1))
    run(state, Check.start(start, config, env(state)))
  end

  # What the check machine needs to know of the watcher now.
  defp env(state) do
    %{
      now: clock(state),
      metrics: state.metrics,
      firing: state.firing,
      pending: state.pending,
      snapshot_ids: Enum.map(state.snapshots, &elem(&1, 0)),
      snapshot_busy?: state.snapshot_task != nil,
      paused?: paused?(state)
    }
  end

  # Anomaly types with an open alert, so that follow-up checks do not
  # report them again.
  defp open_alert_types(state),
    do: Alerts.open_types(state.open_alerts, clock(state), state.opts[:alert_cooldown])

  # The conversation: the running check's, else the one kept between checks.
  defp conversation(%{wake: nil} = state), do: state.conversation
  defp conversation(%{wake: check}), do: check.conversation

  # Carries out the effects of a check transition in order. An effect whose
  # outcome the check needs (a request that cannot be sent, a state set, an
  # alert delivered) feeds it back at once, and the effects of that
  # transition follow.
  defp run(state, {check, effects}), do: carry_out(%{state | wake: check}, effects)

  defp carry_out(state, []), do: state

  defp carry_out(state, [effect | rest]) do
    case effect(state, effect) do
      {:next, state} -> carry_out(state, rest)
      {:then, state, transition} -> run(state, transition)
    end
  end

  defp effect(state, {:chat, request}) do
    case LLM.chat_async(state.llm, request, caller: {:watcher, state.name}) do
      {:ok, pending} -> {:next, %{state | await: %{ref: pending.ref, pending: pending}}}
      {:error, error} -> {:then, state, Check.chat_failed(state.wake, error, env(state))}
    end
  end

  # The timer's token (not the reply's ref) names the wait, so an overdue
  # reply is given up whatever happened to it.
  defp effect(state, {:await, kind, ms}) do
    token = make_ref()
    timer = Process.send_after(self(), {:await_deadline, token}, ms)
    await = Map.merge(state.await, %{kind: kind, ms: ms, token: token, timer: timer})
    state = %{state | await: await}
    {:next, if(kind == :llm, do: update_in(state.stats.llm_requests, &(&1 + 1)), else: state)}
  end

  defp effect(state, {:lua, _call, code}) do
    opts = [result: :full, telemetry_metadata: %{watcher: state.name}]

    case Lua.eval_async_monitored(code, lua_callbacks(state.domain), opts) do
      {:ok, ref, runner} ->
        {:next, %{state | await: %{ref: ref, monitor: Process.monitor(runner)}}}

      {:error, error} ->
        {:then, state, Check.lua_replied(state.wake, {:error, error}, env(state))}
    end
  end

  defp effect(state, {:snapshot, call}), do: {:next, start_snapshot(state, {:tool, call})}

  defp effect(state, {:set_state, _call, status, reason}) do
    state = update_status(%{state | model_status: status}, reason)
    text = "State is now #{state.status}."
    {:then, state, Check.tool_done(state.wake, text, false, env(state))}
  end

  defp effect(state, {:fire, _call, attrs}) do
    {state, text} = model_alert(state, attrs)
    {:then, state, Check.tool_done(state.wake, text, false, env(state))}
  end

  defp effect(state, {:raise, type, findings, snapshot_id}),
    do: {:next, raise_alert(state, type, findings, snapshot_id)}

  defp effect(state, {:gate_fallback, type, findings, snapshot_id}) do
    state = update_in(state.stats.gate_fallbacks, &(&1 + 1))
    {:next, raise_alert(state, type, findings, snapshot_id)}
  end

  defp effect(state, {:timer, :gate_alerts_due, ms}) do
    Process.send_after(self(), :gate_alerts_due, ms)
    {:next, state}
  end

  defp effect(state, {:tool_result, call, text, error?}) do
    Telemetry.execute([:watcher, :tool_call], %{count: 1}, %{
      watcher: state.name,
      tool: call.name,
      arguments: Beamlens.Redactor.redact(call.arguments),
      result: text |> Beamlens.Redactor.redact() |> String.slice(0, 500),
      error?: error?
    })

    {:next, state}
  end

  defp effect(state, :correction), do: {:next, update_in(state.stats.corrections, &(&1 + 1))}
  defp effect(state, {:llm_failed, error}), do: {:next, llm_failed(state, error)}

  defp effect(state, {:compaction, :start, tokens}) do
    Telemetry.execute([:compaction, :start], %{tokens: tokens}, %{watcher: state.name})
    {:next, state}
  end

  defp effect(state, {:compaction, :stop, info}) do
    Telemetry.execute(
      [:compaction, :stop],
      Map.take(info, [:tokens_before, :tokens_after, :messages_removed]),
      %{watcher: state.name, method: info.method}
    )

    {:next, update_in(state.stats.compactions, &(&1 + 1))}
  end

  defp effect(state, {:wait, ms}), do: {:next, %{state | sleep_until: clock(state) + ms}}
  defp effect(state, {:finish, result}), do: {:next, finish_check(state, result)}

  defp llm_failed(state, error) do
    now = clock(state)
    last = state.llm_errors[error.reason]

    if last == nil or now - last > 300_000 do
      Logger.warning(
        "BeamLens watcher #{inspect(state.name)}: model request failed, using rules only for now: #{Exception.message(error)}"
      )
    end

    state = put_in(state.llm_errors[error.reason], now)

    if error.reason == :budget_exceeded,
      do: %{state | llm_paused_until: now + @budget_pause_ms},
      else: state
  end

  @doc false
  # The domain's callbacks under their Lua names (`ets.tables`, ...).
  @spec lua_callbacks(module()) :: %{optional(String.t()) => function()}
  def lua_callbacks(domain) do
    prefix = Atom.to_string(domain.name())
    Map.new(domain.callbacks(), fn cb -> {"#{prefix}.#{cb.name}", cb.fun} end)
  end

  # The check is over: the watcher keeps its conversation for the next one.
  defp finish_check(state, result) do
    state = settle(state)
    check = state.wake

    state = %{
      state
      | wake: nil,
        conversation: check.conversation,
        summary: check.summary,
        reported_tokens: check.reported_tokens,
        last_wake_tick: state.tick,
        last_wake_at: clock(state),
        last_check: %{
          at: DateTime.utc_now(),
          reason: result.reason,
          outcome: result.outcome,
          tokens: result.tokens
        }
    }

    Telemetry.execute(
      [:watcher, :check],
      Map.take(result, [:duration, :iterations, :tokens, :corrections]),
      %{
        watcher: state.name,
        reason: result.reason,
        outcome: result.outcome,
        gate_alerts: result.gate_alerts
      }
    )

    state
  end

  # The awaited reply arrived (or was given up): stop waiting for it.
  defp settle(%{await: nil} = state), do: state

  defp settle(%{await: await} = state) do
    if await[:timer], do: Process.cancel_timer(await.timer)
    if await[:monitor], do: Process.demonitor(await.monitor, [:flush])
    %{state | await: nil}
  end

  # `:reply_timeout`, or by default the longest the configured retries and
  # fallbacks can take (plus 5 s) ...
  defp llm_deadline(state) do
    case state.opts[:reply_timeout] do
      ms when is_integer(ms) -> ms
      _ -> LLM.worst_case(state.llm)
    end
  end

  # ... and the Lua run's own time limit plus 5 s.
  defp lua_deadline(state) do
    case state.opts[:reply_timeout] do
      ms when is_integer(ms) -> ms
      _ -> Lua.defaults()[:timeout] + 5_000
    end
  end

  ## Alerts (built and deduplicated in Beamlens.Watcher.Alerts)

  defp fire_gate_alerts(state, groups, snapshot_id) do
    Enum.reduce(groups, state, fn {type, findings}, acc ->
      raise_alert(acc, type, findings, snapshot_id)
    end)
  end

  defp raise_alert(state, type, findings, snapshot_id) do
    at = DateTime.utc_now()
    build = &Alerts.gate_alert(state, type, findings, snapshot_id, &1, at)
    {state, _event} = deliver(state, type, Alerts.gate_candidate(findings), build)
    state
  end

  defp model_alert(state, attrs) do
    related = Alerts.related_findings(state, attrs.anomaly_type, found(state))
    at = DateTime.utc_now()
    build = &Alerts.model_alert(state, attrs, related, &1, at)
    candidate = Alerts.model_candidate(attrs, related)

    case deliver(state, attrs.anomaly_type, candidate, build) do
      {state, {:folded, alert}} ->
        {state,
         "Already reported as alert #{alert.id} (repeat folded into it). Call done if you are finished."}

      {state, fired_or_escalated} ->
        {state, "Alert #{elem(fired_or_escalated, 1).id} fired. Call done if you are finished."}
    end
  end

  defp found(%{wake: nil}), do: %{}
  defp found(%{wake: wake}), do: wake.gate_groups

  # Fires a new alert, folds a repeat of an open one (same fingerprint,
  # within the cooldown), or fires it again when it is clearly worse (see
  # `Beamlens.Watcher.Alerts`), and reports what happened.
  defp deliver(state, type, candidate, build) do
    rules = %{
      cooldown: state.opts[:alert_cooldown],
      ratio: Keyword.get(state.opts[:gate] || [], :escalate_ratio, @escalate_ratio)
    }

    {open_alerts, event} =
      Alerts.deliver(state.open_alerts, {state.name, type, candidate, build}, clock(state), rules)

    state = %{state | open_alerts: open_alerts}
    history = Beamlens.History.name(state.instance)

    case event do
      {:folded, alert} ->
        Telemetry.execute([:watcher, :alert_folded], %{occurrences: alert.occurrences}, %{
          alert: alert,
          watcher: state.name
        })

        Beamlens.History.alert(history, :folded, alert)
        {state, event}

      {:fired, alert} ->
        {fired(state, alert), event}

      {:escalated, alert, escalation} ->
        state = fired(state, alert)

        Telemetry.execute(
          [:watcher, :alert_escalated],
          %{occurrences: alert.occurrences},
          Map.put(escalation, :watcher, state.name)
        )

        {state, event}
    end
  end

  defp fired(state, alert) do
    Telemetry.execute([:watcher, :alert_fired], %{system_time: System.system_time()}, %{
      alert: alert,
      watcher: state.name
    })

    notify_coordinator(state, alert)
    Beamlens.History.alert(Beamlens.History.name(state.instance), :fired, alert)
    %{state | alerts_fired: state.alerts_fired + 1}
  end

  defp notify_coordinator(%{coordinator: nil}, _alert), do: :ok

  defp notify_coordinator(%{coordinator: {module, server}}, alert) do
    module.report_alert(server, alert)
  end

  ## States

  # The gate sets a floor: the model may raise the state, or lower it only
  # as far as what the gate still sees firing (`Beamlens.Watcher.Status`).
  defp update_status(state, model_reason \\ nil) do
    {status, reason} = Status.resolve(state, model_reason)
    set_status(state, status, reason)
  end

  defp set_status(%{status: status} = state, status, reason), do: %{state | status_reason: reason}

  defp set_status(state, status, reason) do
    Telemetry.execute([:watcher, :state_changed], %{system_time: System.system_time()}, %{
      watcher: state.name,
      from: state.status,
      to: status,
      reason: reason
    })

    %{state | status: status, status_reason: reason}
  end

  defp cancel_timer(nil), do: :ok
  defp cancel_timer(ref), do: Process.cancel_timer(ref)
end
