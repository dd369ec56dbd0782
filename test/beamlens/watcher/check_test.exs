defmodule Beamlens.Watcher.CheckTest do
  # One model check as a pure state machine: literal model responses in,
  # effects out. No process, no provider, no clock.
  use ExUnit.Case, async: true

  alias Beamlens.LLM.Response
  alias Beamlens.Watcher.Check

  alias Beamlens.TestDomain, as: Domain

  import Beamlens.MachineHelpers

  @config %{
    domain: Domain,
    interval: 1_000,
    max_iterations: 6,
    gate_alert_grace: 10_000,
    compaction_max_tokens: 100_000,
    compaction_keep_last: 10,
    llm_deadline: 30_000,
    lua_deadline: 15_000
  }

  @finding %{
    name: "tst.queue",
    value: 900,
    baseline: 10,
    threshold: 100,
    z: 9.0,
    severity: :critical,
    samples: 3,
    status: "new"
  }

  @metrics %{"tst.queue" => %{label: "queue length", anomaly_type: "queue_growth"}}

  defp env(fields \\ []) do
    Map.merge(
      %{
        now: 1_000,
        metrics: @metrics,
        firing: %{},
        pending: [],
        snapshot_ids: ["tst-1"],
        snapshot_busy?: false,
        paused?: false
      },
      Map.new(fields)
    )
  end

  defp start(groups \\ %{}, config \\ @config) do
    findings = groups |> Map.values() |> List.flatten()

    Check.start(
      %{
        reason: if(groups == %{}, do: "heartbeat", else: "gate findings"),
        snapshot_id: "tst-1",
        snapshot: %{value: 900},
        status: :healthy,
        findings: findings,
        groups: groups,
        reported: [],
        conversation: [],
        summary: nil,
        reported_tokens: 0
      },
      config,
      env()
    )
  end

  test "a heartbeat check asks the model, then ends when it calls done" do
    {check, effects} = start()

    assert [{:chat, request}, {:await, :llm, 30_000}] = effects
    assert request.tool_choice == :required
    assert request.system =~ "tst.top(n)"
    assert [%{role: :user, content: opening}] = request.messages
    assert opening =~ "Check tst-1 (heartbeat)"
    assert Enum.map(request.tools, & &1.name) |> Enum.member?("done")

    {check, effects} = Check.llm_replied(check, reply([{"done", %{}}]), env(now: 4_000))

    assert [{:tool_result, %{name: "done"}, "OK.", false}, {:finish, result}] = effects

    assert result == %{
             reason: "heartbeat",
             outcome: :done,
             duration: 3_000,
             iterations: 1,
             tokens: 120,
             corrections: 0,
             gate_alerts: 0
           }

    # The conversation goes back to the watcher: the check message, the
    # model's turn and the tool result.
    assert [%{role: :user}, %{role: :assistant}, %{role: :tool, content: "OK."}] =
             check.conversation

    assert check.reported_tokens == 100
  end

  test "Lua, the model's state and alert go out as effects and their results come back" do
    {check, _} = start(%{"queue_growth" => [@finding]})

    {check, effects} =
      Check.llm_replied(check, reply([{"execute_lua", %{"code" => "return tst.top(3)"}}]), env())

    assert [{:lua, %{name: "execute_lua"}, "return tst.top(3)"}, {:await, :lua, 15_000}] = effects

    {check, effects} = Check.lua_replied(check, {:ok, [1, 2, 3]}, env())
    assert [{"execute_lua", text, false}] = tool_results(effects)
    assert text =~ "[1,2,3]"

    assert [{:chat, _}, {:await, :llm, _}] =
             Enum.reject(effects, &match?({:tool_result, _, _, _}, &1))

    assert check.investigated?

    alert = %{
      "severity" => "critical",
      "anomaly_type" => "queue_growth",
      "summary" => "The queue grows",
      "observation" => "900 messages",
      "snapshot_ids" => ["tst-1"]
    }

    {check, effects} =
      Check.llm_replied(
        check,
        reply([{"fire_alert", alert}, {"set_state", %{"state" => "critical", "reason" => "q"}}]),
        env()
      )

    assert [{:fire, %{name: "fire_alert"}, %{anomaly_type: "queue_growth", severity: :critical}}] =
             effects

    {check, effects} = Check.tool_done(check, "Alert a1 fired.", false, env())

    assert [{:tool_result, %{name: "fire_alert"}, "Alert a1 fired.", false}, set_state] = effects

    assert {:set_state, %{name: "set_state"}, :critical, "q"} = set_state

    {check, effects} = Check.tool_done(check, "State is now critical.", false, env())
    assert [{"set_state", "State is now critical.", false}] = tool_results(effects)

    {_check, effects} = Check.llm_replied(check, reply([{"done", %{}}]), env())
    # The model reported the gate's finding: no gate alert in its place.
    refute Enum.any?(effects, &match?({:gate_fallback, _, _, _}, &1))
    assert %{outcome: :done, gate_alerts: 0, iterations: 3} = finish(effects)
  end

  test "ending without reporting what the gate found: asked once, then the gate's alert fires" do
    {check, effects} = start(%{"queue_growth" => [@finding]})
    assert {:timer, :gate_alerts_due, 10_000} = hd(effects)

    {check, effects} = Check.llm_replied(check, reply([{"done", %{}}]), env())
    assert [{"done", text, false}] = tool_results(effects)
    assert text =~ "Not finished: the gate found queue length at 900 (anomaly_type queue_growth)"
    assert [{:chat, %{tool_choice: {:tool, "fire_alert"}}} | _] = tl(effects)

    {_check, effects} = Check.llm_replied(check, reply([{"done", %{}}]), env())

    assert [
             {:tool_result, _, "OK.", false},
             {:gate_fallback, "queue_growth", [@finding], "tst-1"},
             {:finish, %{outcome: :done, gate_alerts: 1}}
           ] = effects
  end

  test "the gate's alert goes out when the grace runs out, and not again at the end" do
    {check, _} = start(%{"queue_growth" => [@finding]})
    assert {^check, []} = Check.gate_due(check, env(now: 10_999))

    {check, effects} = Check.gate_due(check, env(now: 11_000))
    assert [{:gate_fallback, "queue_growth", [@finding], "tst-1"}] = effects

    # An escalation of the type already reported goes out at once.
    worse = %{@finding | value: 5_000, status: "escalated"}

    assert {check, [{:raise, "queue_growth", [^worse], "tst-2"}]} =
             Check.gate_findings(check, %{"queue_growth" => [worse]}, "tst-2", env(now: 12_000))

    {_check, effects} = Check.llm_replied(check, reply([{"done", %{}}]), env())
    assert [{:tool_result, _, "OK.", false}, {:finish, %{gate_alerts: 1}}] = effects
  end

  test "paused while the check ran: the gate's alerts are not raised at its end" do
    {check, _} = start(%{"queue_growth" => [@finding]}, %{@config | gate_alert_grace: 0})
    check = %{check | report_asked?: true}
    {_check, effects} = Check.llm_replied(check, reply([{"done", %{}}]), env(paused?: true))
    assert [{:tool_result, _, "OK.", false}, {:finish, %{gate_alerts: 0}}] = effects
  end

  test "corrections: no tool call, a bad call, a repeat; the fourth ends the check" do
    {check, _} = start()

    {check, effects} =
      Check.llm_replied(check, {:ok, %Response{content: "hm", tool_calls: []}}, env())

    assert [:correction, {:chat, request}, {:await, :llm, _}] = effects

    assert List.last(request.messages) == %{
             role: :user,
             content: "Answer with a tool call. If you are finished, call done."
           }

    {check, effects} =
      Check.llm_replied(check, reply([{"set_state", %{"state" => "bad"}}]), env())

    assert [:correction, {:tool_result, _, "set_state needs state" <> _, true} | _] = effects

    lua = {"execute_lua", %{"code" => "return 1"}}
    {check, _} = Check.llm_replied(check, reply([lua]), env())
    {check, _} = Check.lua_replied(check, {:ok, 1}, env())
    {check, effects} = Check.llm_replied(check, reply([lua]), env())

    assert [
             :correction,
             {:tool_result, _, "You already made this exact execute_lua call" <> _, true},
             {:chat, request} | _
           ] = effects

    # A repeated tool is not offered again.
    refute Enum.any?(request.tools, &(&1.name == "execute_lua"))

    {_check, effects} = Check.llm_replied(check, reply([{"nope", %{}}]), env())

    assert [
             :correction,
             {:tool_result, _, "There is no tool named" <> _, true},
             {:finish, result}
           ] = effects

    assert %{outcome: :too_many_corrections, corrections: 4} = result
  end

  test "the iteration cap ends the check" do
    {check, _} = start(%{}, %{@config | max_iterations: 2})

    {check, _} =
      Check.llm_replied(check, reply([{"execute_lua", %{"code" => "return 1"}}]), env())

    {check, effects} = Check.lua_replied(check, {:ok, 1}, env())
    assert Enum.any?(effects, &match?({:chat, _}, &1))

    {check, _} =
      Check.llm_replied(check, reply([{"execute_lua", %{"code" => "return 2"}}]), env())

    {_check, effects} = Check.lua_replied(check, {:ok, 2}, env())
    assert %{outcome: :iteration_cap, iterations: 2} = finish(effects)
  end

  test "wait ends the check and asks for no routine check for a while" do
    {check, _} = start()
    {_check, effects} = Check.llm_replied(check, reply([{"wait", %{"ms" => 60_000}}]), env())

    assert [
             {:wait, 60_000},
             {:tool_result, _, "OK, next routine check in 60000 ms.", false},
             {:finish, %{outcome: :wait}}
           ] = effects
  end

  test "calls after done are skipped" do
    {check, _} = start()

    {_check, effects} =
      Check.llm_replied(check, reply([{"done", %{}}, {"take_snapshot", %{}}]), env())

    assert [{"done", "OK.", false}, {"take_snapshot", "Skipped: this check has ended.", true}] =
             tool_results(effects)
  end

  test "take_snapshot: taken by the watcher, or refused while one is being taken" do
    {check, _} = start()

    {busy, effects} =
      Check.llm_replied(check, reply([{"take_snapshot", %{}}]), env(snapshot_busy?: true))

    assert [{"take_snapshot", "A snapshot is being taken right now" <> _, true}] =
             tool_results(effects)

    assert busy.awaiting == :llm

    {check, effects} = Check.llm_replied(check, reply([{"take_snapshot", %{}}]), env())
    assert [{:snapshot, %{name: "take_snapshot"}}] = effects
    {_check, effects} = Check.snapshot_taken(check, {:ok, "tst-2", %{value: 3}}, env())
    assert [{"take_snapshot", "Snapshot tst-2:" <> _, false}] = tool_results(effects)
  end

  test "a failed or overdue model request ends the check with the provider's error" do
    {check, _} = start()
    error = %Beamlens.LLMError{reason: :rate_limited, provider: :anthropic, message: "slow down"}

    assert {_, [{:llm_failed, ^error}, {:finish, %{outcome: :llm_rate_limited, iterations: 1}}]} =
             Check.llm_replied(check, {:error, error}, env())

    # Refused before it was sent: no request counted.
    assert {_, [{:llm_failed, ^error}, {:finish, %{iterations: 0}}]} =
             Check.chat_failed(check, error, env())

    assert {_, [{:llm_failed, %{reason: :timeout, provider: :anthropic}}, {:finish, result}]} =
             Check.overdue(check, %{ms: 30_000, provider: :anthropic}, env())

    assert result.outcome == :llm_timeout
  end

  test "an overdue or dead Lua run is an error result, and the check goes on" do
    {check, _} = start()

    {check, _} =
      Check.llm_replied(check, reply([{"execute_lua", %{"code" => "while true do end"}}]), env())

    {_, effects} = Check.overdue(check, %{ms: 15_000, provider: nil}, env())

    assert [{"execute_lua", "The Lua run did not answer within 15000 ms." <> _, true}] =
             tool_results(effects)

    {_, effects} = Check.lua_replied(check, {:down, :killed}, env())

    assert [{"execute_lua", "The Lua run ended without an answer (:killed)." <> _, true}] =
             tool_results(effects)
  end

  test "a conversation over its budget is compacted before the request" do
    long = for i <- 1..40, do: %{role: :user, content: String.duplicate("word#{i} ", 200)}
    config = %{@config | compaction_max_tokens: 2_000, compaction_keep_last: 4}

    {check, effects} =
      Check.start(
        %{
          reason: "heartbeat",
          snapshot_id: "tst-1",
          snapshot: %{},
          status: :healthy,
          findings: [],
          groups: %{},
          reported: [],
          conversation: long,
          summary: nil,
          reported_tokens: 0
        },
        config,
        env()
      )

    assert [{:compaction, :start, before}, {:chat, request}, {:await, :compaction, 30_000}] =
             effects

    assert before > 2_000 and request.tool_choice == :none

    summary = {:ok, %Response{content: "Earlier: all healthy.", tool_calls: []}}
    {check, effects} = Check.llm_replied(check, summary, env())

    assert [{:compaction, :stop, %{method: :summary, messages_removed: cut}}, {:chat, chat}, _] =
             effects

    assert cut > 0
    assert chat.system =~ "Earlier: all healthy."
    assert check.summary == "Earlier: all healthy."
    assert [%{role: :user} | _] = chat.messages
    assert length(chat.messages) < 41
  end
end
