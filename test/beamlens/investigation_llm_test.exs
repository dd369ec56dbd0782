defmodule Beamlens.InvestigationLLMTest do
  # Beamlens.investigate/2, check_now/2 and status/1 with a scripted model
  # (Beamlens.LoopbackServer): the replies are fixtures, everything else
  # (watchers, gates, snapshots, the Lua sandbox, usage accounting) is real.
  use Beamlens.WatcherCase, async: false

  alias Beamlens.{LLMFixtures, LoopbackServer, Report, Usage}

  @moduletag timeout: 120_000

  setup do
    %{server: start_provider([[:beamlens, :watcher, :check], [:beamlens, :investigation, :stop]])}
  end

  defp provider(server), do: LLMFixtures.config(:anthropic, server)

  defp replies(server, turns) do
    LoopbackServer.enqueue(server, Enum.map(turns, &LLMFixtures.tool_calls(:anthropic, &1)))
  end

  defp grow_ets(name, n) do
    table = :ets.new(name, [:public, :named_table])
    for i <- 1..n, do: :ets.insert(table, {i, "session-#{i}", %{user: i}})
    on_exit(fn -> if :ets.whereis(name) != :undefined, do: :ets.delete(name) end)
    table
  end

  # Watchers paused, so that only the investigation talks to the model.
  defp start_paused(instance, server) do
    start_beamlens(instance,
      watchers: [[name: :ets, warmup: 5], :beam],
      provider: provider(server)
    )

    await_ticks(instance, :ets, 8)
    :ok = Beamlens.pause(:ets, instance: instance)
    :ok = Beamlens.pause(:beam, instance: instance)
    # What they fired before the pause is not the investigation's.
    _before = collect_alerts(0)
  end

  test "the model looks closer with every domain's callbacks and answers, apart from the facts",
       %{
         instance: instance,
         server: server
       } do
    start_paused(instance, server)
    between_snapshots(instance, [:ets], fn -> grow_ets(:inv_llm_sessions, 300_000) end)

    await_state(instance, :ets, [:warning, :critical])

    before = Usage.get(:investigation)

    replies(server, [
      [
        {"execute_lua",
         %{"code" => ~s|return {ets.tables(3, "memory")[1], beam.top_processes(1, "memory")}|}}
      ],
      [
        {"fire_alert",
         %{
           "severity" => "critical",
           "anomaly_type" => "ets_memory_growth",
           "summary" => "inv_llm_sessions holds most of the memory",
           "observation" => "inv_llm_sessions is the largest table",
           "hypothesis" => "Sessions are never evicted"
         }}
      ],
      [
        {"answer",
         %{
           "summary" => "Memory grows because the inv_llm_sessions ETS table keeps growing.",
           "hypothesis" => "Sessions are inserted and never deleted."
         }}
      ]
    ])

    assert {:ok, %Report{} = report} =
             Beamlens.investigate("why is memory growing?", instance: instance)

    assert report.model_used
    assert report.no_model_reason == nil
    assert report.outcome == :answered
    assert report.summary == "Memory grows because the inv_llm_sessions ETS table keeps growing."
    assert report.hypothesis == "Sessions are inserted and never deleted."
    # Three replies of 10 tokens in, 5 out, as the provider reported them.
    assert report.tokens == %{input: 30, output: 15, estimated: false}
    after_ = Beamlens.status(instance: instance).investigations.tokens
    assert after_.total.input - before.total.input == 30
    assert after_.total.output - before.total.output == 15

    # The facts are the gate's; the model's alert replaces the gate's for that type.
    assert Enum.any?(report.findings, &(&1.anomaly_type == "ets_memory_growth"))
    llm = Enum.find(report.alerts, &(&1.source == :llm))
    assert llm.watcher == :ets
    assert llm.hypothesis == "Sessions are never evicted"

    refute Enum.any?(
             report.alerts,
             &(&1.source == :gate and &1.anomaly_type == "ets_memory_growth")
           )

    refute_received {:telemetry, [:beamlens, :watcher, :alert_fired], _, _}

    [first, second, _third] = LoopbackServer.requests(server)
    assert first.json["system"] =~ "ets.tables(n, by)"
    assert first.json["system"] =~ "beam.top_processes"
    assert Enum.map(first.json["tools"], & &1["name"]) == ~w(execute_lua fire_alert answer)
    assert [%{"content" => [%{"text" => opening}]}] = first.json["messages"]
    assert opening =~ "Question: why is memory growing?"
    assert opening =~ "ets/ets_memory_growth"
    assert opening =~ "<data>"

    assert %{"content" => [%{"type" => "tool_result", "content" => result}]} =
             List.last(second.json["messages"])

    assert result =~ "inv_llm_sessions"

    text = Report.to_text(report)
    assert text =~ "Model's answer (interpretation, not measured):"
    assert text =~ "Tokens: 30 in, 15 out"
  end

  test "the last turn allowed is forced to answer; usage without figures is estimated", %{
    instance: instance,
    server: server
  } do
    start_paused(instance, server)

    LoopbackServer.enqueue(server, [
      LLMFixtures.tool_calls(:anthropic, [{"answer", %{"summary" => "Nothing is wrong."}}],
        usage: %{input: 0, output: 0}
      )
    ])

    assert {:ok, report} = Beamlens.investigate(nil, instance: instance, max_iterations: 1)
    assert report.summary == "Nothing is wrong."
    assert report.tokens.estimated
    assert report.tokens.input > 0

    [request] = LoopbackServer.requests(server)
    assert request.json["tool_choice"] == %{"type" => "tool", "name" => "answer"}
  end

  test "provider down or budget spent: the facts, and why no model was used", %{
    instance: instance,
    server: server
  } do
    start_paused(instance, server)
    LoopbackServer.enqueue(server, [LLMFixtures.error(:anthropic, :unauthorized)])

    assert {:ok, report} = Beamlens.investigate("anything wrong?", instance: instance)
    refute report.model_used
    assert report.no_model_reason =~ "provider unavailable"
    assert report.outcome == :no_model
    assert [_, _] = report.domains

    # Spend the budget: one answered investigation, then a cap below its use.
    replies(server, [[{"answer", %{"summary" => "ok"}}]])
    assert {:ok, %{model_used: true}} = Beamlens.investigate(nil, instance: instance)
    Beamlens.LLM.set_budget(10)

    assert {:ok, report} = Beamlens.investigate(nil, instance: instance)
    refute report.model_used
    assert report.no_model_reason =~ "token budget spent"
    assert Beamlens.Report.to_text(report) =~ "No model was used (token budget spent"
    assert Beamlens.status(instance: instance).budget.left == 0
  end

  test "check_now wakes the model; status shows the check, the model and its tokens", %{
    instance: instance,
    server: server
  } do
    start_beamlens(instance,
      watchers: [[name: :ets, interval: 60_000]],
      provider: provider(server)
    )

    await_ticks(instance, :ets, 1)
    before = Usage.get({:watcher, :ets})

    replies(server, [[{"done", %{}}]])
    assert :ok = Beamlens.check_now(:ets, instance: instance)

    assert_receive {:telemetry, [:beamlens, :watcher, :check], %{tokens: 15},
                    %{watcher: :ets, reason: "check requested", outcome: :done}},
                   10_000

    status = Beamlens.status(instance: instance)
    assert [%{name: :ets, mode: :model, mode_reason: nil} = ets] = status.watchers
    assert %{reason: "check requested", outcome: :done, tokens: 15} = ets.last_check
    assert ets.tokens.last_hour.input - before.last_hour.input == 10
    assert ets.tokens.total.output - before.total.output == 5
    assert [%{provider: :anthropic, model: "claude-test", breaker: :closed}] = status.providers
    assert status.budget.limit == 250_000
  end
end
