defmodule Beamlens.Watcher.Check do
  # One wake-up of the model (a "check") as a pure state machine.
  #
  #   request -> tool calls -> results -> request ... until the model calls
  #   done/wait, the iteration cap is reached, or something fails.
  #
  # Every transition takes the check, what happened and an `env` (what the
  # watcher sees now, with `now` on its clock) and returns `{check,
  # effects}`. The watcher (`Beamlens.Watcher`, a GenServer shell) carries
  # the effects out in order and feeds the answers back:
  #
  #   {:chat, request}                  send a model request (llm_replied/3,
  #                                     or chat_failed/3 if it cannot be sent)
  #   {:await, :llm | :compaction | :lua, ms}
  #                                     the reply is due within ms (overdue/3)
  #   {:lua, call, code}                run Lua in the sandbox (lua_replied/3)
  #   {:snapshot, call}                 take a snapshot (snapshot_taken/3)
  #   {:set_state, call, status, reason}
  #   {:fire, call, attrs}              the model's state or alert: answer
  #                                     with tool_done/4
  #   {:raise, type, findings, snapshot_id}
  #                                     the gate's alert goes out now
  #   {:gate_fallback, type, findings, snapshot_id}
  #                                     the same, in place of the model's
  #   {:timer, :gate_alerts_due, ms}    call gate_due/2 in ms
  #   {:tool_result, call, text, error?}
  #   :correction                       a correction was sent (for stats)
  #   {:llm_failed, error}              the model request failed
  #   {:compaction, :start, tokens}     compaction started / ended
  #   {:compaction, :stop, info}
  #   {:wait, ms}                       no routine check for ms
  #   {:finish, result}                 the check is over: the watcher takes
  #                                     its conversation back
  #
  # No process, no clock read, no telemetry here: the watcher emits the
  # events for the effects.
  @moduledoc false

  alias Beamlens.{Compaction, Redactor}
  alias Beamlens.LLM.{Response, ToolCall}
  alias Beamlens.Watcher.{Agent, Alerts, Status, Turn}

  @max_guarded 256
  @max_tokens_per_turn 1_024
  @continue "(Earlier turns are summarised in the system prompt. Continue this check.)"

  @typedoc """
  Fixed for a check: the domain, the watcher's tick interval and
  `:max_iterations`, the gate alert grace, the compaction limits and the
  reply deadlines (ms).
  """
  @type config :: %{
          domain: module(),
          interval: pos_integer(),
          max_iterations: pos_integer(),
          gate_alert_grace: non_neg_integer(),
          compaction_max_tokens: pos_integer(),
          compaction_keep_last: pos_integer(),
          llm_deadline: pos_integer(),
          lua_deadline: pos_integer()
        }

  @typedoc """
  What the watcher sees now: `now` (ms, its clock), its metrics and the
  findings firing by metric name, the metric names pending, the ids of its
  stored snapshots, whether a snapshot is being taken and whether it is
  paused.
  """
  @type env :: %{
          now: integer(),
          metrics: %{optional(String.t()) => map()},
          firing: %{optional(String.t()) => map()},
          pending: [String.t()],
          snapshot_ids: [String.t()],
          snapshot_busy?: boolean(),
          paused?: boolean()
        }

  @typedoc "Anomaly type => {the gate's findings, the snapshot id they come from}."
  @type groups :: %{optional(String.t()) => {[map()], String.t()}}

  @type awaiting ::
          nil
          | :llm
          | {:compaction, map()}
          | {:lua, ToolCall.t()}
          | {:snapshot, ToolCall.t()}
          | {:tool, ToolCall.t()}

  @type outcome ::
          :done | :wait | :iteration_cap | :too_many_corrections | {:llm_error, atom()}

  @type effect ::
          {:chat, map()}
          | {:await, :llm | :compaction | :lua, pos_integer()}
          | {:lua, ToolCall.t(), String.t()}
          | {:snapshot, ToolCall.t()}
          | {:set_state, ToolCall.t(), atom(), String.t()}
          | {:fire, ToolCall.t(), map()}
          | {:raise | :gate_fallback, String.t(), [map()], String.t()}
          | {:timer, :gate_alerts_due, non_neg_integer()}
          | {:tool_result, ToolCall.t(), String.t(), boolean()}
          | :correction
          | {:llm_failed, Exception.t()}
          | {:compaction, :start, non_neg_integer()}
          | {:compaction, :stop, map()}
          | {:wait, pos_integer()}
          | {:finish, map()}

  @type t :: %__MODULE__{
          reason: String.t(),
          config: config(),
          started_at: integer(),
          conversation: [map()],
          summary: String.t() | nil,
          reported_tokens: non_neg_integer(),
          iteration: non_neg_integer(),
          awaiting: awaiting(),
          queue: [ToolCall.t()],
          guard: {MapSet.t(), :queue.queue()},
          corrections: non_neg_integer(),
          force: String.t() | nil,
          report_asked?: boolean(),
          spent: MapSet.t(String.t()),
          investigated?: boolean(),
          fired_types: MapSet.t(String.t()),
          gate_groups: groups(),
          gate_waiting: %{optional(String.t()) => integer()},
          gate_fired: MapSet.t(String.t()),
          ended: nil | :done | :wait,
          requests: non_neg_integer(),
          tokens: non_neg_integer(),
          out: [effect()]
        }

  @enforce_keys [:reason, :config, :started_at]
  defstruct [
    :reason,
    :config,
    :started_at,
    summary: nil,
    conversation: [],
    reported_tokens: 0,
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
    gate_groups: %{},
    gate_waiting: %{},
    gate_fired: MapSet.new(),
    ended: nil,
    requests: 0,
    tokens: 0,
    # Effects of the running transition, newest first.
    out: []
  ]

  @doc false
  # Starts a check: the check message (the snapshot, the findings, the
  # metrics) is added to the conversation and the model is asked. `start`
  # has :reason, :snapshot_id, :snapshot, :status, :findings, :groups (the
  # new findings by anomaly type), :reported (anomaly types with an open
  # alert), :conversation, :summary and :reported_tokens.
  @spec start(map(), config(), env()) :: {t(), [effect()]}
  def start(start, config, env) do
    message = %{
      role: :user,
      content:
        Agent.check_message(%{
          snapshot_id: start.snapshot_id,
          snapshot: start.snapshot,
          reason: start.reason,
          status: start.status,
          findings: start.findings,
          metrics: env.metrics,
          domain: config.domain,
          reported: start.reported
        })
    }

    check = %__MODULE__{
      reason: start.reason,
      config: config,
      started_at: env.now,
      conversation: start.conversation ++ [message],
      summary: start.summary,
      reported_tokens: start.reported_tokens,
      gate_groups: Map.new(start.groups, fn {type, fs} -> {type, {fs, start.snapshot_id}} end)
    }

    start.groups
    |> Map.keys()
    |> Enum.reduce(check, &await_gate_alert(&2, &1, env))
    |> request_model(env)
    |> flush()
  end

  @doc false
  # The system prompt of the check's requests (with the compaction summary).
  @spec system_prompt(t()) :: String.t()
  def system_prompt(check) do
    domain = check.config.domain
    Agent.system_prompt(domain, domain.callbacks(), check.summary)
  end

  ## Gate alerts during a check

  @doc false
  # The gate found `groups` (anomaly type => findings) in snapshot
  # `snapshot_id` while the check runs: the model gets the grace period to
  # report new ones; an escalation of a type already reported in this check
  # goes out now. Then any gate alert whose grace ran out goes out.
  @spec gate_findings(t(), %{optional(String.t()) => [map()]}, String.t(), env()) ::
          {t(), [effect()]}
  def gate_findings(check, groups, snapshot_id, env) do
    groups
    |> Enum.reduce(check, fn {type, findings}, check ->
      if Map.has_key?(check.gate_groups, type) do
        escalated? = Enum.any?(findings, &(&1.status == "escalated"))
        reported? = type in check.gate_fired or type in check.fired_types

        cond do
          # Reported already in this check, and now worse: it goes out now.
          escalated? and reported? ->
            emit(check, {:raise, type, findings, snapshot_id})

          # Still waiting for the model: its alert (or the gate's) will
          # carry the worse figures.
          escalated? ->
            put_in(check.gate_groups[type], {findings, snapshot_id})

          true ->
            check
        end
      else
        check = put_in(check.gate_groups[type], {findings, snapshot_id})
        await_gate_alert(check, type, env)
      end
    end)
    |> fire_due(env)
    |> flush()
  end

  # The gate's alert of `type` waits at most the grace period for the model.
  defp await_gate_alert(check, type, env) do
    grace = check.config.gate_alert_grace
    check = if grace > 0, do: emit(check, {:timer, :gate_alerts_due, grace}), else: check
    put_in(check.gate_waiting[type], env.now)
  end

  @doc false
  # The gate alerts whose grace ran out go out, unless the model reported
  # that anomaly type already.
  @spec gate_due(t(), env()) :: {t(), [effect()]}
  def gate_due(check, env), do: check |> fire_due(env) |> flush()

  defp fire_due(check, env) do
    {due, waiting} = Alerts.due(check.gate_waiting, env.now, check.config.gate_alert_grace)
    check = %{check | gate_waiting: waiting}

    due
    |> Enum.reject(&(&1 in check.fired_types))
    |> Enum.reduce(check, fn type, check ->
      {findings, snapshot_id} = check.gate_groups[type]
      check = %{check | gate_fired: MapSet.put(check.gate_fired, type)}
      emit(check, {:gate_fallback, type, findings, snapshot_id})
    end)
  end

  ## Model requests

  defp request_model(check, env) do
    fixed = div(byte_size(system_prompt(check)) + 2_500, 4)

    case Compaction.plan(
           check.conversation,
           check.config.compaction_max_tokens,
           check.config.compaction_keep_last,
           fixed,
           check.reported_tokens
         ) do
      {:ok, nil} -> send_chat(check, env)
      {:ok, plan} -> start_compaction(check, plan)
      {:error, _} -> send_chat(check, env)
    end
  end

  defp send_chat(check, env) do
    request = %{
      system: system_prompt(check),
      messages: check.conversation,
      tools:
        Agent.tools(
          anomaly_types(env),
          check.config.interval,
          check.spent |> MapSet.delete(check.force) |> MapSet.to_list()
        ),
      max_tokens: @max_tokens_per_turn,
      tool_choice: if(check.force, do: {:tool, check.force}, else: :required)
    }

    %{check | force: nil, awaiting: :llm}
    |> emit({:chat, request})
    |> emit({:await, :llm, check.config.llm_deadline})
  end

  defp anomaly_types(env) do
    env.metrics |> Map.values() |> Enum.map(& &1.anomaly_type) |> Enum.uniq() |> Enum.sort()
  end

  @doc false
  # The model (or compaction) request could not be sent.
  @spec chat_failed(t(), Exception.t(), env()) :: {t(), [effect()]}
  def chat_failed(%{awaiting: :llm} = check, error, env),
    do: %{check | awaiting: nil} |> llm_failed(error, env) |> flush()

  def chat_failed(%{awaiting: {:compaction, plan}} = check, error, env),
    do: %{check | awaiting: nil} |> compaction_replied({:error, error}, plan, env) |> flush()

  @doc false
  # The reply to the awaited model (or compaction) request.
  @spec llm_replied(t(), {:ok, Response.t()} | {:error, Exception.t()}, env()) ::
          {t(), [effect()]}
  def llm_replied(%{awaiting: {:compaction, plan}} = check, result, env),
    do: %{check | awaiting: nil} |> compaction_replied(result, plan, env) |> flush()

  def llm_replied(%{awaiting: :llm} = check, result, env) do
    check = %{check | awaiting: nil, requests: check.requests + 1}

    case result do
      {:ok, response} -> responded(check, response, env)
      {:error, error} -> llm_failed(check, error, env)
    end
    |> flush()
  end

  defp responded(check, response, env) do
    usage = response.usage || %{}

    check = %{
      check
      | reported_tokens: usage[:input_tokens] || check.reported_tokens,
        tokens: check.tokens + (usage[:input_tokens] || 0) + (usage[:output_tokens] || 0),
        conversation: check.conversation ++ [Turn.assistant(response)]
    }

    case response.tool_calls do
      [] -> correction(check, "Answer with a tool call. If you are finished, call done.", env)
      calls -> next_tool(%{check | queue: calls}, env)
    end
  end

  defp llm_failed(check, error, env),
    do: check |> emit({:llm_failed, error}) |> finish({:llm_error, error.reason}, env)

  @doc false
  # The awaited reply is overdue (`ms` after it was asked for): a model
  # request fails with a timeout (of `provider`), a Lua run gets an error.
  @spec overdue(t(), %{ms: pos_integer(), provider: atom() | nil}, env()) :: {t(), [effect()]}
  def overdue(%{awaiting: {:lua, call}} = check, %{ms: ms}, env) do
    text = "The Lua run did not answer within #{ms} ms. Try something simpler or call done."
    %{check | awaiting: nil} |> tool_result(call, text, true) |> next_tool(env) |> flush()
  end

  def overdue(check, %{ms: ms, provider: provider}, env) do
    error = %Beamlens.LLMError{
      reason: :timeout,
      provider: provider,
      message: "no reply within #{ms} ms",
      retryable?: true
    }

    llm_replied(check, {:error, error}, env)
  end

  ## Corrections and turns

  # A reply without a usable tool call gets a short correction as a user turn.
  defp correction(check, text, env) do
    check = corrected(check)

    if stop?(check),
      do: finish(check, :too_many_corrections, env),
      else:
        next_turn(
          %{check | conversation: check.conversation ++ [Turn.correction(text)]},
          env
        )
  end

  # Counts a correction: past the limit (`Beamlens.Watcher.Turn`) the check stops.
  defp corrected(check), do: emit(%{check | corrections: check.corrections + 1}, :correction)
  defp stop?(check), do: Turn.too_many_corrections?(check.corrections)

  defp next_tool(%{queue: []} = check, env) do
    if check.ended, do: finish(check, check.ended, env), else: next_turn(check, env)
  end

  defp next_tool(%{queue: [call | rest]} = check, env),
    do: run_tool(%{check | queue: rest}, call, env)

  defp next_turn(check, env) do
    check = %{check | iteration: check.iteration + 1}

    if check.iteration >= check.config.max_iterations,
      do: finish(check, :iteration_cap, env),
      else: request_model(check, env)
  end

  ## Tools

  defp run_tool(%{ended: ended} = check, call, env) when ended != nil do
    check |> tool_result(call, "Skipped: this check has ended.", true) |> next_tool(env)
  end

  defp run_tool(check, call, env) do
    key = Agent.call_key(call)

    # done and wait end the check: repeating them cannot loop.
    if call.name not in ["done", "wait"] and MapSet.member?(elem(check.guard, 0), key) do
      # A model that repeats a call will likely repeat it again: stop
      # offering that tool.
      check = %{check | spent: MapSet.put(check.spent, call.name)}

      text =
        "You already made this exact #{call.name} call in this check. Use its result above, " <>
          "try something different, or call done."

      refused(check, call, text, env)
    else
      check = %{check | guard: remember_call(check.guard, key)}

      case Agent.validate(call, tool_context(check, env)) do
        {:ok, action} -> perform(check, call, action, env)
        {:error, text} -> refused(check, call, text, env)
      end
    end
  end

  # A tool call that is refused counts as a correction.
  defp refused(check, call, text, env) do
    check = check |> corrected() |> tool_result(call, text, true)
    if stop?(check), do: finish(check, :too_many_corrections, env), else: next_tool(check, env)
  end

  defp tool_context(check, env) do
    %{
      anomaly_types: anomaly_types(env),
      active_types: active_types(check, env),
      reported_types: check.fired_types,
      investigated?: check.investigated?,
      found?: map_size(check.gate_groups) > 0,
      snapshot_ids: env.snapshot_ids,
      interval: check.config.interval
    }
  end

  # Anomaly types the gate found in this check or sees firing or pending now
  # (a burst of log errors may be over by the time the model reports it).
  defp active_types(check, env) do
    firing = Enum.map(env.firing, fn {_, finding} -> Alerts.anomaly_type(env, finding) end)
    pending = Enum.map(env.pending, &get_in(env.metrics, [&1, :anomaly_type]))
    MapSet.new(Map.keys(check.gate_groups) ++ firing ++ pending)
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

  defp perform(check, call, :take_snapshot, env) do
    if env.snapshot_busy? do
      text = "A snapshot is being taken right now; its data will be in the next check."
      check |> tool_result(call, text, true) |> next_tool(env)
    else
      # It takes no arguments: any further call would be a repeat.
      check = %{check | spent: MapSet.put(check.spent, "take_snapshot")}
      emit(%{check | awaiting: {:snapshot, call}}, {:snapshot, call})
    end
  end

  defp perform(check, call, {:execute_lua, code}, _env) do
    %{check | awaiting: {:lua, call}}
    |> emit({:lua, call, code})
    |> emit({:await, :lua, check.config.lua_deadline})
  end

  defp perform(check, call, {:set_state, status, reason}, _env),
    do: emit(%{check | awaiting: {:tool, call}}, {:set_state, call, status, reason})

  defp perform(check, call, {:fire_alert, attrs}, _env) do
    check = %{check | fired_types: MapSet.put(check.fired_types, attrs.anomaly_type)}
    emit(%{check | awaiting: {:tool, call}}, {:fire, call, attrs})
  end

  defp perform(check, call, :done, env), do: end_or_report(check, call, :done, env)
  defp perform(check, call, {:wait, _} = action, env), do: end_or_report(check, call, action, env)

  @doc false
  # The watcher's answer to {:set_state, …} or {:fire, …}.
  @spec tool_done(t(), String.t(), boolean(), env()) :: {t(), [effect()]}
  def tool_done(%{awaiting: {:tool, call}} = check, text, error?, env),
    do: %{check | awaiting: nil} |> tool_result(call, text, error?) |> next_tool(env) |> flush()

  @doc false
  # The result of the awaited Lua run: `Beamlens.Lua`'s result, or
  # `{:down, reason}` when the process serving it ended without an answer.
  @spec lua_replied(t(), {:ok, term()} | {:error, Exception.t()} | {:down, term()}, env()) ::
          {t(), [effect()]}
  def lua_replied(%{awaiting: {:lua, call}} = check, {:down, reason}, env) do
    text =
      "The Lua run ended without an answer (#{inspect(reason, limit: 5)}). Try again or call done."

    %{check | awaiting: nil} |> tool_result(call, text, true) |> next_tool(env) |> flush()
  end

  def lua_replied(%{awaiting: {:lua, call}} = check, result, env) do
    {text, error?} = Agent.lua_result(result, check.config.domain)
    check = %{check | awaiting: nil, investigated?: check.investigated? or not error?}
    check |> tool_result(call, text, error?) |> next_tool(env) |> flush()
  end

  @doc false
  # The snapshot the model asked for: `{:ok, id, snapshot}` (stored by the
  # watcher under `id`) or `{:error, message}`.
  @spec snapshot_taken(t(), {:ok, String.t(), term()} | {:error, String.t()}, env()) ::
          {t(), [effect()]}
  def snapshot_taken(%{awaiting: {:snapshot, call}} = check, result, env) do
    check = %{check | awaiting: nil}

    case result do
      {:ok, id, snapshot} ->
        tool_result(check, call, Agent.snapshot_result(id, snapshot), false)

      {:error, message} ->
        tool_result(check, call, "Snapshot failed: #{Redactor.redact(message)}", true)
    end
    |> next_tool(env)
    |> flush()
  end

  defp end_or_report(check, call, action, env) do
    case unreported(check) do
      [_ | _] = types when not check.report_asked? -> ask_for_report(check, call, types, env)
      _ -> end_check(check, call, action, env)
    end
  end

  defp end_check(check, call, {:wait, ms}, env) do
    %{check | ended: :wait}
    |> emit({:wait, ms})
    |> tool_result(call, "OK, next routine check in #{ms} ms.", false)
    |> next_tool(env)
  end

  defp end_check(check, call, :done, env),
    do: %{check | ended: :done} |> tool_result(call, "OK.", false) |> next_tool(env)

  # Anomaly types the gate found in this check that nobody reported yet.
  defp unreported(check) do
    check.gate_groups
    |> Map.keys()
    |> Enum.reject(&(&1 in check.fired_types or &1 in check.gate_fired))
    |> Enum.sort()
  end

  # The model wants to end the check without reporting what the gate found:
  # once per check, ask it to write the alert (forced with tool_choice where
  # the provider supports it). If it still does not, the gate's alert fires.
  defp ask_for_report(check, call, types, env) do
    found =
      Enum.map_join(types, "; ", fn type ->
        {[finding | _], _} = check.gate_groups[type]
        summary = Status.summarize(check.config.domain, finding, env.metrics[finding.name])
        "#{summary} (anomaly_type #{type})"
      end)

    text =
      "Not finished: the gate found #{found}. Call fire_alert for it now: summary = what is wrong, " <>
        "observation = the numbers you saw, hypothesis = the likely cause. Then call done."

    %{check | report_asked?: true, force: "fire_alert"}
    |> tool_result(call, text, false)
    |> next_tool(env)
  end

  defp tool_result(check, call, text, error?) do
    %{check | conversation: check.conversation ++ [Turn.tool_result(call, text, error?)]}
    |> emit({:tool_result, call, text, error?})
  end

  ## Compaction

  defp start_compaction(check, plan) do
    transcript =
      if check.summary,
        do: "[summary of even earlier messages] #{check.summary}\n" <> plan.transcript,
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

    %{check | awaiting: {:compaction, plan}}
    |> emit({:compaction, :start, plan.tokens_before})
    |> emit({:chat, request})
    |> emit({:await, :compaction, check.config.llm_deadline})
  end

  defp compaction_replied(check, result, plan, env) do
    {check, cut, method} =
      case result do
        {:ok, %{content: summary}} when is_binary(summary) and summary != "" ->
          {%{check | summary: String.slice(summary, 0, 4_000)}, plan.cut, :summary}

        _ ->
          # Summarising failed: drop the older messages instead, so memory
          # stays bounded.
          case Compaction.truncate(check.conversation, check.config.compaction_keep_last) do
            {:ok, cut} when is_integer(cut) -> {check, cut, :truncate}
            _ -> {check, plan.cut, :truncate}
          end
      end

    conversation =
      case Enum.drop(check.conversation, cut) do
        [%{role: :user} | _] = kept -> kept
        kept -> [%{role: :user, content: @continue} | kept]
      end

    info = %{
      tokens_before: plan.tokens_before,
      tokens_after: plan.tokens_kept,
      messages_removed: cut,
      method: method
    }

    %{check | conversation: conversation, reported_tokens: 0}
    |> emit({:compaction, :stop, info})
    |> send_chat(env)
  end

  ## The end

  # The check is over. The model's alerts cover their anomaly types; the
  # gate covers the rest (some of it may have gone out already, when the
  # grace ran out), unless the watcher was paused while the check ran.
  defp finish(check, outcome, env) do
    uncovered =
      if env.paused?,
        do: [],
        else:
          check.gate_groups
          |> Enum.reject(fn {type, _} -> type in check.fired_types or type in check.gate_fired end)
          |> Enum.sort()

    check =
      Enum.reduce(uncovered, check, fn {type, {findings, snapshot_id}}, check ->
        emit(check, {:gate_fallback, type, findings, snapshot_id})
      end)

    result = %{
      reason: check.reason,
      outcome: outcome_name(outcome),
      duration: env.now - check.started_at,
      iterations: check.requests,
      tokens: check.tokens,
      corrections: check.corrections,
      gate_alerts: length(uncovered) + MapSet.size(check.gate_fired)
    }

    emit(%{check | awaiting: nil, queue: []}, {:finish, result})
  end

  defp outcome_name({:llm_error, reason}), do: :"llm_#{reason}"
  defp outcome_name(outcome), do: outcome

  defp emit(check, effect), do: %{check | out: [effect | check.out]}

  # The end of a transition: the check and its effects in order.
  defp flush(check), do: {%{check | out: []}, Enum.reverse(check.out)}
end
