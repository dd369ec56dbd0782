defmodule Beamlens.Watcher do
  # One watcher: a GenServer that snapshots its domain on every tick, feeds
  # the numbers to its anomaly gate, keeps its state (:healthy, :observing,
  # :warning, :critical) and fires alerts.
  #
  # Nothing slow runs in this process. Snapshots run in tasks (a snapshot
  # still running at the next tick makes that tick skip), model requests run
  # on the native runtime and answer with a message, Lua runs in the sandbox
  # and answers with a message. A "check" (one wake-up of the model) is a
  # small state machine driven by those messages: request -> tool calls ->
  # results -> request ... until the model calls done/wait, the iteration cap
  # is reached, or something fails. Every reply a check waits for has a
  # deadline (and a Lua run is monitored), so a hung provider or a lost reply
  # ends the wait, never the watcher. The gate's own alerts never wait for
  # the model: the model gets `:gate_alert_grace` ms to report the anomaly
  # itself, then the gate's alert fires whatever the provider does (and at
  # the end of the check at the latest). Delivery rules (fold, escalate)
  # are in `Beamlens.Watcher.Alerts`.
  @moduledoc false

  use GenServer, restart: :permanent

  require Logger

  alias Beamlens.{Alert, Compaction, Gate, LLM, Lua, Telemetry}
  alias Beamlens.Watcher.{Agent, Alerts, Status}

  @max_snapshots 10
  @max_corrections 3
  @max_guarded 256
  @max_tokens_per_turn 1_024
  @budget_pause_ms 300_000
  @continue "(Earlier turns are summarised in the system prompt. Continue this check.)"

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
    :wake,
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

  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.fetch!(opts, :name)},
      start: {__MODULE__, :start_link, [opts]},
      restart: :permanent
    }
  end

  def start_link(opts) do
    GenServer.start_link(__MODULE__, opts, name: via(opts[:instance], opts[:name]))
  end

  @doc false
  def via(instance, name),
    do: {:via, Registry, {Module.concat(instance, Registry), {:watcher, name}}}

  @doc false
  def whereis(instance, name) do
    case Registry.lookup(Module.concat(instance, Registry), {:watcher, name}) do
      [{pid, _}] -> pid
      [] -> nil
    end
  end

  @doc false
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
      conversation_messages: length(state.conversation),
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

  # Model replies.
  def handle_info({ref, raw}, %{wake: %{awaiting: {:llm, %{ref: ref} = pending}}} = state) do
    {:noreply, state |> settle() |> llm_replied(LLM.handle_reply(pending, raw))}
  end

  def handle_info(
        {ref, raw},
        %{wake: %{awaiting: {:compaction, %{ref: ref} = pending, plan}}} = state
      ) do
    {:noreply, state |> settle() |> compaction_replied(LLM.handle_reply(pending, raw), plan)}
  end

  # Lua results.
  def handle_info({ref, result}, %{wake: %{awaiting: {:lua, ref, call, _runner}}} = state) do
    {text, error?} = Agent.lua_result(result, state.domain)
    state = settle(state)
    state = if error?, do: state, else: put_in(state.wake.investigated?, true)
    {:noreply, state |> tool_result(call, text, error?) |> next_tool()}
  end

  # The process serving the Lua run ended without an answer.
  def handle_info(
        {:DOWN, monitor, :process, _, reason},
        %{wake: %{awaiting: {:lua, _ref, call, monitor}}} = state
      ) do
    text =
      "The Lua run ended without an answer (#{inspect(reason, limit: 5)}). Try again or call done."

    {:noreply, state |> settle() |> tool_result(call, text, true) |> next_tool()}
  end

  # A reply the check waits for is overdue: give up on it and go on.
  def handle_info({:await_deadline, token}, %{wake: %{deadline: {token, _}}} = state) do
    {:noreply, reply_overdue(state)}
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

  defp snapshot_done(state, {:tool, call}, {:ok, snapshot}) do
    {id, state} = store_snapshot(state, snapshot)
    state |> tool_result(call, Agent.snapshot_result(id, snapshot), false) |> next_tool()
  end

  defp snapshot_done(state, {:tool, call}, {:error, message}) do
    state
    |> tool_result(call, "Snapshot failed: #{Beamlens.Redactor.redact(message)}", true)
    |> next_tool()
  end

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
        state
        |> merge_groups(groups, snapshot_id)
        |> fire_due_gate_alerts()

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

  defp merge_groups(state, groups, snapshot_id) do
    now = System.monotonic_time(:millisecond)

    Enum.reduce(groups, state, fn {type, findings}, acc ->
      if Map.has_key?(acc.wake.gate_groups, type) do
        # An escalation of a type already found in this check goes out now.
        escalated? = Enum.any?(findings, &(&1.status == "escalated"))

        reported? =
          MapSet.member?(acc.wake.gate_fired, type) or MapSet.member?(acc.wake.fired_types, type)

        cond do
          # Reported already in this check, and now worse: it goes out now.
          escalated? and reported? ->
            raise_alert(acc, type, findings, snapshot_id)

          # Still waiting for the model: its alert (or the gate's) will carry
          # the worse figures.
          escalated? ->
            put_in(acc.wake.gate_groups[type], {findings, snapshot_id})

          true ->
            acc
        end
      else
        acc = put_in(acc.wake.gate_groups[type], {findings, snapshot_id})
        await_gate_alert(acc, type, now)
      end
    end)
  end

  # The gate's alert of `type` waits at most the grace period for the model.
  defp await_gate_alert(state, type, now) do
    grace = state.opts[:gate_alert_grace]
    if grace > 0, do: Process.send_after(self(), :gate_alerts_due, grace)
    put_in(state.wake.gate_waiting[type], now)
  end

  # Fires the gate alerts of the running check whose grace ran out, unless
  # the model reported that anomaly type already.
  defp fire_due_gate_alerts(%{wake: nil} = state), do: state

  defp fire_due_gate_alerts(state) do
    now = System.monotonic_time(:millisecond)
    {due, waiting} = Alerts.due(state.wake.gate_waiting, now, state.opts[:gate_alert_grace])
    state = put_in(state.wake.gate_waiting, waiting)

    due
    |> Enum.reject(&MapSet.member?(state.wake.fired_types, &1))
    |> Enum.reduce(state, fn type, acc ->
      {findings, snapshot_id} = acc.wake.gate_groups[type]
      acc = update_in(acc.stats.gate_fallbacks, &(&1 + 1))
      acc = update_in(acc.wake.gate_fired, &MapSet.put(&1, type))
      raise_alert(acc, type, findings, snapshot_id)
    end)
  end

  defp anomaly_type(state, finding), do: Alerts.anomaly_type(state, finding)

  ## Checks (model wake-ups)

  defp start_check(state, reason, snapshot_id, snapshot, findings, groups) do
    message = %{
      role: :user,
      content:
        Agent.check_message(%{
          snapshot_id: snapshot_id,
          snapshot: snapshot,
          reason: reason,
          status: state.status,
          findings: findings,
          metrics: state.metrics,
          domain: state.domain,
          reported: open_alert_types(state)
        })
    }

    wake = %{
      reason: reason,
      iteration: 0,
      awaiting: nil,
      queue: [],
      guard: {MapSet.new(), :queue.new()},
      corrections: 0,
      force: nil,
      report_asked?: false,
      spent: MapSet.new(),
      investigated?: false,
      fired_types: MapSet.new(),
      gate_groups: Map.new(groups, fn {type, fs} -> {type, {fs, snapshot_id}} end),
      gate_waiting: %{},
      gate_fired: MapSet.new(),
      deadline: nil,
      ended: nil,
      started_at: System.monotonic_time(:millisecond),
      requests: 0,
      tokens: 0
    }

    stats = Map.update!(state.stats, :checks, &(&1 + 1))
    now = System.monotonic_time(:millisecond)

    state = %{state | wake: wake, conversation: state.conversation ++ [message], stats: stats}

    groups
    |> Map.keys()
    |> Enum.reduce(state, &await_gate_alert(&2, &1, now))
    |> request_model()
  end

  # Anomaly types with an open alert, so that follow-up checks do not
  # report them again.
  defp open_alert_types(state),
    do: Alerts.open_types(state.open_alerts, clock(state), state.opts[:alert_cooldown])

  defp request_model(state) do
    fixed = div(byte_size(system_prompt(state)) + 2_500, 4)

    case Compaction.plan(
           state.conversation,
           state.opts[:compaction_max_tokens],
           state.opts[:compaction_keep_last],
           fixed,
           state.reported_tokens
         ) do
      {:ok, nil} -> send_chat(state)
      {:ok, plan} -> start_compaction(state, plan)
      {:error, _} -> send_chat(state)
    end
  end

  defp system_prompt(state),
    do: Agent.system_prompt(state.domain, state.domain.callbacks(), state.summary)

  defp send_chat(state) do
    request = %{
      system: system_prompt(state),
      messages: state.conversation,
      tools:
        Agent.tools(
          anomaly_types(state),
          state.opts[:interval],
          state.wake.spent |> MapSet.delete(state.wake.force) |> MapSet.to_list()
        ),
      max_tokens: @max_tokens_per_turn,
      tool_choice: if(state.wake.force, do: {:tool, state.wake.force}, else: :required)
    }

    case LLM.chat_async(state.llm, request, caller: {:watcher, state.name}) do
      {:ok, pending} ->
        state = put_in(state.wake.force, nil)
        state = update_in(state.stats.llm_requests, &(&1 + 1))
        state = update_in(state.wake.requests, &(&1 + 1))
        await(state, {:llm, pending}, llm_deadline(state))

      {:error, error} ->
        finish_check(llm_failed(state, error), {:llm_error, error.reason})
    end
  end

  defp anomaly_types(state) do
    state.metrics |> Map.values() |> Enum.map(& &1.anomaly_type) |> Enum.uniq() |> Enum.sort()
  end

  defp llm_replied(state, {:ok, response}) do
    usage = response.usage || %{}
    state = %{state | reported_tokens: usage[:input_tokens] || state.reported_tokens}

    state =
      update_in(
        state.wake.tokens,
        &(&1 + (usage[:input_tokens] || 0) + (usage[:output_tokens] || 0))
      )

    assistant = %{
      role: :assistant,
      content: response.content || "",
      tool_calls: response.tool_calls
    }

    state = %{state | conversation: state.conversation ++ [assistant]}

    case response.tool_calls do
      [] ->
        correction(state, "Answer with a tool call. If you are finished, call done.")

      calls ->
        state |> put_in([Access.key(:wake), :queue], calls) |> next_tool()
    end
  end

  defp llm_replied(state, {:error, error}) do
    finish_check(llm_failed(state, error), {:llm_error, error.reason})
  end

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

  # A reply without a usable tool call gets a short correction as a user turn.
  defp correction(state, text) do
    state = update_in(state.stats.corrections, &(&1 + 1))
    state = update_in(state.wake.corrections, &(&1 + 1))

    if state.wake.corrections > @max_corrections do
      finish_check(state, :too_many_corrections)
    else
      %{state | conversation: state.conversation ++ [%{role: :user, content: text}]}
      |> next_turn()
    end
  end

  defp next_tool(%{wake: %{queue: []}} = state) do
    if state.wake.ended, do: finish_check(state, state.wake.ended), else: next_turn(state)
  end

  defp next_tool(%{wake: %{queue: [call | rest]}} = state) do
    state = put_in(state.wake.queue, rest)
    run_tool(state, call)
  end

  defp next_turn(state) do
    state = update_in(state.wake.iteration, &(&1 + 1))

    if state.wake.iteration >= state.opts[:max_iterations] do
      finish_check(state, :iteration_cap)
    else
      request_model(state)
    end
  end

  defp run_tool(%{wake: %{ended: ended}} = state, call) when ended != nil do
    state |> tool_result(call, "Skipped: this check has ended.", true) |> next_tool()
  end

  defp run_tool(state, call) do
    key = Agent.call_key(call)

    cond do
      # done and wait end the check: repeating them cannot loop.
      call.name not in ["done", "wait"] and MapSet.member?(elem(state.wake.guard, 0), key) ->
        state = update_in(state.wake.corrections, &(&1 + 1))
        state = update_in(state.stats.corrections, &(&1 + 1))
        # A model that repeats a call will likely repeat it again: stop offering that tool.
        state = update_in(state.wake.spent, &MapSet.put(&1, call.name))

        text =
          "You already made this exact #{call.name} call in this check. Use its result above, " <>
            "try something different, or call done."

        state = tool_result(state, call, text, true)

        if state.wake.corrections > @max_corrections,
          do: finish_check(state, :too_many_corrections),
          else: next_tool(state)

      true ->
        state = update_in(state.wake.guard, &remember_call(&1, key))

        ctx = %{
          anomaly_types: anomaly_types(state),
          active_types: active_types(state),
          reported_types: state.wake.fired_types,
          investigated?: state.wake.investigated?,
          found?: map_size(state.wake.gate_groups) > 0,
          snapshot_ids: Enum.map(state.snapshots, &elem(&1, 0)),
          interval: state.opts[:interval]
        }

        case Agent.validate(call, ctx) do
          {:ok, action} ->
            perform(state, call, action)

          {:error, text} ->
            state = update_in(state.wake.corrections, &(&1 + 1))
            state = update_in(state.stats.corrections, &(&1 + 1))
            state = tool_result(state, call, text, true)

            if state.wake.corrections > @max_corrections,
              do: finish_check(state, :too_many_corrections),
              else: next_tool(state)
        end
    end
  end

  # Anomaly types the gate found in this check or sees firing or pending now
  # (a burst of log errors may be over by the time the model reports it).
  defp active_types(state) do
    firing = Enum.map(state.firing, fn {_, finding} -> anomaly_type(state, finding) end)
    pending = Enum.map(state.pending, &get_in(state.metrics, [&1, :anomaly_type]))
    MapSet.new(Map.keys(state.wake.gate_groups) ++ firing ++ pending)
  end

  # The repeated-call guard remembers the last @max_guarded calls of a check.
  defp remember_call({set, order}, key) do
    {set, order} = {MapSet.put(set, key), :queue.in(key, order)}

    if MapSet.size(set) > @max_guarded do
      {{:value, oldest}, order} = :queue.out(order)
      {MapSet.delete(set, oldest), order}
    else
      {set, order}
    end
  end

  defp perform(state, call, :take_snapshot) do
    if state.snapshot_task do
      state
      |> tool_result(
        call,
        "A snapshot is being taken right now; its data will be in the next check.",
        true
      )
      |> next_tool()
    else
      # It takes no arguments: any further call would be a repeat.
      state = update_in(state.wake.spent, &MapSet.put(&1, "take_snapshot"))
      start_snapshot(state, {:tool, call})
    end
  end

  defp perform(state, call, {:execute_lua, code}) do
    callbacks = lua_callbacks(state.domain)
    opts = [result: :full, telemetry_metadata: %{watcher: state.name}]

    case Lua.eval_async_monitored(code, callbacks, opts) do
      {:ok, ref, runner} ->
        monitor = Process.monitor(runner)
        await(state, {:lua, ref, call, monitor}, lua_deadline(state))

      {:error, error} ->
        state
        |> tool_result(call, elem(Agent.lua_result({:error, error}, state.domain), 0), true)
        |> next_tool()
    end
  end

  defp perform(state, call, {:set_state, status, reason}) do
    state = %{state | model_status: status}
    state = update_status(state, reason)
    state |> tool_result(call, "State is now #{state.status}.", false) |> next_tool()
  end

  defp perform(state, call, {:fire_alert, attrs}) do
    {state, text} = model_alert(state, attrs)
    state = update_in(state.wake.fired_types, &MapSet.put(&1, attrs.anomaly_type))
    state |> tool_result(call, text, false) |> next_tool()
  end

  defp perform(state, call, :done), do: end_or_report(state, call, :done)
  defp perform(state, call, {:wait, _} = action), do: end_or_report(state, call, action)

  defp end_or_report(state, call, action) do
    case unreported(state) do
      [_ | _] = types when not state.wake.report_asked? -> ask_for_report(state, call, types)
      _ -> end_check(state, call, action)
    end
  end

  defp end_check(state, call, {:wait, ms}) do
    state = %{state | sleep_until: clock(state) + ms}
    state = put_in(state.wake.ended, :wait)
    state |> tool_result(call, "OK, next routine check in #{ms} ms.", false) |> next_tool()
  end

  defp end_check(state, call, :done) do
    state = put_in(state.wake.ended, :done)
    state |> tool_result(call, "OK.", false) |> next_tool()
  end

  # Anomaly types the gate found in this check that nobody reported yet.
  defp unreported(state) do
    state.wake.gate_groups
    |> Map.keys()
    |> Enum.reject(&MapSet.member?(state.wake.fired_types, &1))
    |> Enum.reject(&MapSet.member?(state.wake.gate_fired, &1))
    |> Enum.sort()
  end

  # The model wants to end the check without reporting what the gate found:
  # once per check, ask it to write the alert (forced with tool_choice where
  # the provider supports it). If it still does not, the gate's alert fires.
  defp ask_for_report(state, call, types) do
    found =
      Enum.map_join(types, "; ", fn type ->
        {[finding | _], _} = state.wake.gate_groups[type]
        "#{summarize(state.domain, finding, state.metrics[finding.name])} (anomaly_type #{type})"
      end)

    text =
      "Not finished: the gate found #{found}. Call fire_alert for it now: summary = what is wrong, " <>
        "observation = the numbers you saw, hypothesis = the likely cause. Then call done."

    state = put_in(state.wake.report_asked?, true)
    state = put_in(state.wake.force, "fire_alert")
    state |> tool_result(call, text, false) |> next_tool()
  end

  @doc false
  def lua_callbacks(domain) do
    prefix = Atom.to_string(domain.name())
    Map.new(domain.callbacks(), fn cb -> {"#{prefix}.#{cb.name}", cb.fun} end)
  end

  defp tool_result(state, call, text, error?) do
    Telemetry.execute([:watcher, :tool_call], %{count: 1}, %{
      watcher: state.name,
      tool: call.name,
      arguments: Beamlens.Redactor.redact(call.arguments),
      result: text |> Beamlens.Redactor.redact() |> String.slice(0, 500),
      error?: error?
    })

    message = %{
      role: :tool,
      tool_call_id: call.id,
      name: call.name,
      content: text,
      is_error: error?
    }

    %{state | conversation: state.conversation ++ [message]}
  end

  defp finish_check(state, outcome) do
    state = settle(state)
    wake = state.wake
    state = %{state | wake: nil, last_wake_tick: state.tick, last_wake_at: clock(state)}

    state = %{
      state
      | last_check: %{
          at: DateTime.utc_now(),
          reason: wake.reason,
          outcome: outcome_name(outcome),
          tokens: wake.tokens
        }
    }

    # Paused while the check ran: raise nothing.
    uncovered_source = if paused?(state), do: %{}, else: wake.gate_groups

    # The model's alerts cover their anomaly types; the gate covers the rest
    # (some of it may have gone out already, when the grace ran out).
    uncovered =
      uncovered_source
      |> Enum.reject(fn {type, _} -> MapSet.member?(wake.fired_types, type) end)
      |> Enum.reject(fn {type, _} -> MapSet.member?(wake.gate_fired, type) end)

    state =
      Enum.reduce(uncovered, state, fn {type, {findings, snapshot_id}}, acc ->
        acc = update_in(acc.stats.gate_fallbacks, &(&1 + 1))
        raise_alert(acc, type, findings, snapshot_id)
      end)

    Telemetry.execute(
      [:watcher, :check],
      %{
        duration: System.monotonic_time(:millisecond) - wake.started_at,
        iterations: wake.requests,
        tokens: wake.tokens,
        corrections: wake.corrections
      },
      %{
        watcher: state.name,
        reason: wake.reason,
        outcome: outcome_name(outcome),
        gate_alerts: length(uncovered) + MapSet.size(wake.gate_fired)
      }
    )

    state
  end

  defp outcome_name({:llm_error, reason}), do: :"llm_#{reason}"
  defp outcome_name(outcome), do: outcome

  ## Replies a check waits for

  # Waits for `awaiting` with a deadline: the timer's token (not the reply's
  # ref) names the wait, so an overdue reply is given up whatever happened
  # to it.
  defp await(state, awaiting, ms) do
    token = make_ref()
    timer = Process.send_after(self(), {:await_deadline, token}, ms)
    state = put_in(state.wake.awaiting, awaiting)
    put_in(state.wake.deadline, {token, timer})
  end

  # The awaited reply arrived (or was given up): stop waiting for it.
  defp settle(%{wake: %{deadline: deadline, awaiting: awaiting}} = state) do
    case deadline do
      {_token, timer} -> Process.cancel_timer(timer)
      nil -> :ok
    end

    case awaiting do
      {:lua, _ref, _call, monitor} -> Process.demonitor(monitor, [:flush])
      _ -> :ok
    end

    state = put_in(state.wake.deadline, nil)
    put_in(state.wake.awaiting, nil)
  end

  defp reply_overdue(state) do
    awaiting = state.wake.awaiting
    {_, ms} = deadline_ms(state, awaiting)
    state = settle(state)

    Telemetry.execute([:watcher, :reply_timeout], %{timeout: ms}, %{
      watcher: state.name,
      awaiting: elem(awaiting, 0)
    })

    case awaiting do
      {:llm, pending} ->
        llm_replied(state, {:error, overdue_error(pending, ms)})

      {:compaction, pending, plan} ->
        compaction_replied(state, {:error, overdue_error(pending, ms)}, plan)

      {:lua, _ref, call, _monitor} ->
        text = "The Lua run did not answer within #{ms} ms. Try something simpler or call done."
        state |> tool_result(call, text, true) |> next_tool()
    end
  end

  defp overdue_error(pending, ms) do
    %Beamlens.LLMError{
      reason: :timeout,
      provider: pending.provider,
      message: "no reply within #{ms} ms",
      retryable?: true
    }
  end

  defp deadline_ms(state, {:lua, _, _, _}), do: {:lua, lua_deadline(state)}
  defp deadline_ms(state, _llm), do: {:llm, llm_deadline(state)}

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

  ## Compaction

  defp start_compaction(state, plan) do
    transcript =
      if state.summary,
        do: "[summary of even earlier messages] #{state.summary}\n" <> plan.transcript,
        else: plan.transcript

    request = %{
      system: "You compact the memory of a monitoring agent.",
      messages: [
        %{role: :user, content: plan.instructions <> "\n<data>\n" <> transcript <> "\n</data>"}
      ],
      tools: [],
      max_tokens: 600,
      tool_choice: :none
    }

    Telemetry.execute([:compaction, :start], %{tokens: plan.tokens_before}, %{watcher: state.name})

    case LLM.chat_async(state.llm, request, caller: {:watcher, state.name}) do
      {:ok, pending} -> await(state, {:compaction, pending, plan}, llm_deadline(state))
      {:error, error} -> state |> compaction_replied({:error, error}, plan)
    end
  end

  defp compaction_replied(state, result, plan) do
    {state, cut, method} =
      case result do
        {:ok, %{content: summary}} when is_binary(summary) and summary != "" ->
          {%{state | summary: String.slice(summary, 0, 4_000)}, plan.cut, :summary}

        _ ->
          # Summarising failed: drop the older messages instead, so memory stays bounded.
          case Compaction.truncate(state.conversation, state.opts[:compaction_keep_last]) do
            {:ok, cut} when is_integer(cut) -> {state, cut, :truncate}
            _ -> {state, plan.cut, :truncate}
          end
      end

    conversation = Enum.drop(state.conversation, cut)

    conversation =
      case conversation do
        [%{role: :user} | _] -> conversation
        _ -> [%{role: :user, content: @continue} | conversation]
      end

    state = %{state | conversation: conversation, reported_tokens: 0}
    state = update_in(state.stats.compactions, &(&1 + 1))

    Telemetry.execute(
      [:compaction, :stop],
      %{tokens_before: plan.tokens_before, tokens_after: plan.tokens_kept, messages_removed: cut},
      %{watcher: state.name, method: method}
    )

    send_chat(state)
  end

  ## Alerts (built and deduplicated in Beamlens.Watcher.Alerts)

  defp fire_gate_alerts(state, groups, snapshot_id) do
    Enum.reduce(groups, state, fn {type, findings}, acc ->
      raise_alert(acc, type, findings, snapshot_id)
    end)
  end

  defp raise_alert(state, type, findings, snapshot_id) do
    build = &Alerts.gate_alert(state, type, findings, snapshot_id, &1)
    {state, _event} = deliver(state, type, Alerts.gate_candidate(findings), build)
    state
  end

  defp model_alert(state, attrs) do
    related = Alerts.related_findings(state, attrs.anomaly_type, found(state))
    build = &Alerts.model_alert(state, attrs, related, &1)
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
      ratio: Keyword.get(state.opts[:gate] || [], :escalate_ratio, 2.0)
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

  defp summarize(domain, finding, metric), do: Status.summarize(domain, finding, metric)

  defp cancel_timer(nil), do: :ok
  defp cancel_timer(ref), do: Process.cancel_timer(ref)
end
