defmodule Beamlens.Investigation.LoopTest do
  # The model part of an investigation as a pure state machine: literal
  # model responses in, effects out. No process, no provider, no clock.
  use ExUnit.Case, async: true

  alias Beamlens.Investigation.Loop
  alias Beamlens.LLM.{Response, ToolCall}

  alias Beamlens.TestDomain, as: Domain

  import Beamlens.MachineHelpers

  @finding %{
    watcher: :tst,
    anomaly_type: "queue_growth",
    severity: :critical,
    summary: "queue length at 900",
    evidence: %{
      metric: "tst.queue",
      value: 900,
      baseline: 10,
      threshold: 100,
      z: 9.0,
      samples: 3,
      source: "watcher gate",
      snapshot_id: "tst-1"
    },
    entities: ["worker"]
  }

  @domain %{
    name: :tst,
    domain: Domain,
    snapshot: %{value: 900},
    snapshot_id: "tst-1",
    fresh: [],
    metrics: %{"tst.queue" => %{label: "queue length", anomaly_type: "queue_growth"}}
  }

  defp start(fields \\ []) do
    fields = Map.new(fields)

    report = %Beamlens.Report{
      question: "Why is the queue long?",
      node: :nonode@nohost,
      findings: Map.get(fields, :findings, [@finding]),
      domains: [%{watcher: :tst, state: :critical, key_figures: %{"queue" => "900"}}]
    }

    Loop.start(
      %{
        report: report,
        domains: [@domain],
        functions: ["tst.top"],
        max_iterations: Map.get(fields, :max_iterations, 4),
        max_tokens: Map.get(fields, :max_tokens, 10_000),
        deadline: 60_000
      },
      1_000
    )
  end

  defp chat(effects),
    do: Enum.find_value(effects, fn e -> match?({:chat, _}, e) && elem(e, 1) end)

  test "the first request carries the question, the findings and the snapshot, and offers answer" do
    {loop, [{:chat, request}]} = start()

    assert loop.awaiting == :llm
    assert loop.iteration == 1
    assert [%{role: :user, content: opening}] = request.messages
    assert opening =~ "Question: Why is the queue long?"
    assert opening =~ "- tst/queue_growth (critical): queue length at 900"
    assert opening =~ "- tst (critical): queue 900"
    assert opening =~ ~s(tst: {"value":900})
    assert request.system =~ "tst.top(n) - the top n"
    assert request.tool_choice == :required
    names = Enum.map(request.tools, & &1.name)
    assert "answer" in names and "execute_lua" in names and "fire_alert" in names
    refute "done" in names or "take_snapshot" in names
  end

  test "Lua, then an alert, then the answer; tokens add up" do
    {loop, _} = start()

    {loop, effects} =
      Loop.llm_replied(loop, reply([{"execute_lua", %{"code" => "return 1"}}]), 0, 2_000)

    assert [{:lua, %ToolCall{name: "execute_lua"}, "return 1"}] = effects
    assert Loop.time_left(loop, 2_000) == 58_000

    {loop, effects} = Loop.lua_replied(loop, {:ok, %{value: 42, output: ""}}, 3_000)
    assert [{"execute_lua", text, false}] = tool_results(effects)
    assert text =~ "42"
    assert %{messages: _} = chat(effects)

    alert = %{
      "severity" => "critical",
      "anomaly_type" => "queue_growth",
      "summary" => "queue grows",
      "observation" => "900 messages"
    }

    {loop, effects} =
      Loop.llm_replied(
        loop,
        reply([{"fire_alert", alert}, {"answer", %{"summary" => "A slow consumer."}}]),
        0,
        4_000
      )

    assert [{:fire, fields}, {:tool_result, _, "Noted as an alert" <> _, false} | _] = effects
    assert fields[:watcher] == :tst
    assert fields[:state] == :critical
    assert fields[:source] == :llm
    assert fields[:entities] == ["worker"]
    assert fields[:evidence].snapshot_ids == ["tst-1"]
    assert %{value: 900, baseline: 10} = fields[:evidence].values["tst.queue"]

    assert %{
             outcome: :answered,
             answer: {"A slow consumer.", nil},
             requests: 2,
             tokens: %{input: 200, output: 40, estimated: false}
           } = finish(effects)

    assert loop.awaiting == nil
  end

  test "a reply in plain text is the answer" do
    {loop, _} = start()
    {_loop, effects} = Loop.llm_replied(loop, {:ok, %Response{content: " Fine. "}}, 7, 2_000)

    assert %{outcome: :answered, answer: {"Fine.", nil}, tokens: %{estimated: true, input: 7}} =
             finish(effects)
  end

  test "the last turn allowed is forced to answer; then the iteration cap ends the loop" do
    {loop, _} = start(max_iterations: 2)
    {loop, effects} = Loop.llm_replied(loop, reply([{"nope", %{}}]), 0, 2_000)

    assert [{"nope", "There is no tool named \"nope\"" <> _, true}] = tool_results(effects)
    assert :correction in effects
    assert chat(effects).tool_choice == {:tool, "answer"}

    {_loop, effects} = Loop.llm_replied(loop, reply([{"nope", %{}}]), 0, 3_000)
    assert %{outcome: :iteration_cap, answer: nil} = finish(effects)
  end

  test "the token limit ends the loop after the reply that reaches it" do
    {loop, _} = start(max_tokens: 100)

    {loop, effects} =
      Loop.llm_replied(loop, reply([{"execute_lua", %{"code" => "return 1"}}]), 0, 2_000)

    assert [{:lua, _, _}] = effects
    {_loop, effects} = Loop.lua_replied(loop, {:ok, 1}, 3_000)
    assert %{outcome: :token_cap, tokens: %{input: 100, output: 20}} = finish(effects)
    refute chat(effects)
  end

  test "Lua errors are corrections; past the limit the loop ends without an answer" do
    {loop, _} = start(max_iterations: 10)

    lua = for i <- 1..5, do: {"execute_lua", %{"code" => "return #{i}"}}
    {loop, [{:lua, _, "return 1"}]} = Loop.llm_replied(loop, reply(lua), 0, 2_000)

    error = %Beamlens.LuaError{kind: :runtime, message: "attempt to call a nil value"}

    {loop, effects} =
      Enum.reduce(1..3, {loop, []}, fn _, {loop, _} ->
        Loop.lua_replied(loop, {:error, error}, 3_000)
      end)

    assert [{"execute_lua", text, true}] = tool_results(effects)
    assert text =~ "Lua error: attempt to call a nil value"
    assert text =~ "The functions are: tst.top."

    {_loop, effects} = Loop.lua_replied(loop, {:error, error}, 3_000)

    assert [
             {"execute_lua", _, true},
             {"execute_lua", "Skipped: the investigation has ended.", true}
           ] = tool_results(effects)

    assert %{outcome: :answered, answer: {nil, nil}, requests: 1} = finish(effects)
  end

  test "an answer without a summary is refused" do
    {loop, _} = start()
    {_loop, effects} = Loop.llm_replied(loop, reply([{"answer", %{"summary" => " "}}]), 0, 2_000)

    assert [{"answer", ~s(answer needs {"summary": "...", "hypothesis": "..."}.), true}] =
             tool_results(effects)

    assert :correction in effects
    assert chat(effects)
  end

  test "the deadline: an overdue reply ends the loop, an overdue Lua run is an error" do
    {loop, _} = start()
    {_loop, effects} = Loop.overdue(loop, 61_000)
    assert [{:finish, %{outcome: :timeout, requests: 0}}] = effects

    {loop, _} =
      Loop.llm_replied(loop, reply([{"execute_lua", %{"code" => "return 1"}}]), 0, 2_000)

    assert Loop.time_left(loop, 61_000) == 0
    {_loop, effects} = Loop.overdue(loop, 61_000)

    assert [{"execute_lua", "Lua error: the investigation's time is up" <> _, true}] =
             tool_results(effects)

    assert %{outcome: :timeout, requests: 1} = finish(effects)
  end

  test "a failed request ends the loop with the error" do
    {loop, _} = start()
    error = %Beamlens.LLMError{reason: :unavailable, message: "down", retryable?: true}
    {_loop, effects} = Loop.llm_replied(loop, {:error, error}, 0, 2_000)
    assert [{:finish, %{outcome: {:llm_error, ^error}, requests: 0}}] = effects
  end

  test "an alert of a type the gate did not find is refused" do
    {loop, _} = start(findings: [])

    alert = %{
      "severity" => "warning",
      "anomaly_type" => "queue_growth",
      "summary" => "s",
      "observation" => "o"
    }

    {_loop, effects} = Loop.llm_replied(loop, reply([{"fire_alert", alert}]), 0, 2_000)
    refute Enum.any?(effects, &match?({:fire, _}, &1))
    assert [{"fire_alert", _, true}] = tool_results(effects)
    assert :correction in effects
  end
end
