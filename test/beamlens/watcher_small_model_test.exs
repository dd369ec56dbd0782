defmodule Beamlens.WatcherSmallModelTest do
  # What the watcher does with the mistakes small local models make, with
  # their replies scripted on loopback (the real model runs in the opt-in
  # :real_model group): tool calls written as text, made-up alerts, repeated
  # calls, and ending a check without reporting what the gate found.
  use Beamlens.WatcherCase, async: false

  alias Beamlens.{LLMFixtures, LoopbackServer}

  @moduletag timeout: 120_000

  setup do
    %{server: start_provider([[:beamlens, :watcher, :check], [:beamlens, :watcher, :tool_call]])}
  end

  defp grow_ets(name, n) do
    table = :ets.new(name, [:public, :named_table])
    for i <- 1..n, do: :ets.insert(table, {i, "session-#{i}", %{user: i}})
    table
  end

  defp tool_calls_seen(acc \\ []) do
    receive do
      {:telemetry, [:beamlens, :watcher, :tool_call], %{count: 1}, meta} ->
        tool_calls_seen([meta | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  test "tool calls a local model writes as text are recovered and run", %{
    instance: instance,
    server: server
  } do
    start_beamlens(instance,
      watchers: [[name: :ets, warmup: 5]],
      provider: LLMFixtures.config(:openai_compatible, server)
    )

    await_ticks(instance, :ets, 8)

    # What Qwen2.5 0.5B behind llama.cpp sends when the server's own
    # tool-call parser gives up: tags, a fenced block with prose, bare JSON.
    LoopbackServer.enqueue(server, [
      LLMFixtures.text(
        :openai_compatible,
        ~s|<tool_call>\n{"name": "execute_lua", "arguments": {"code": "return ets.tables(1, \\"memory\\")[1].name"}}\n</tool_call>|
      ),
      LLMFixtures.text(:openai_compatible, """
      The table is growing.
      ```json
      {"name": "fire_alert", "arguments": {"severity": "critical", "anomaly_type": "ets_memory_growth",
        "summary": "small_sessions holds most of the memory", "observation": "ETS share above 50%",}}
      ```
      """),
      LLMFixtures.text(:openai_compatible, ~s({"name": "done", "arguments": {}} That is all.))
    ])

    between_snapshots(instance, [:ets], fn -> grow_ets(:small_sessions, 300_000) end)

    assert_receive {:telemetry, [:beamlens, :watcher, :check], %{iterations: 3, corrections: 0},
                    %{outcome: :done}},
                   10_000

    assert [lua, alert, done] = tool_calls_seen()
    assert %{tool: "execute_lua", error?: false, result: result} = lua
    assert result =~ "small_sessions"
    assert %{tool: "fire_alert", error?: false, arguments: %{"severity" => "critical"}} = alert
    assert %{tool: "done", error?: false, watcher: :ets} = done

    alerts = collect_alerts(200)

    assert %{summary: "small_sessions holds most of the memory"} =
             Enum.find(alerts, &(&1.source == :llm))

    refute Enum.any?(alerts, &(&1.source == :gate and &1.anomaly_type == "ets_memory_growth"))

    # The history sent back holds structured tool calls, not the JSON text.
    [_, second, third | _] = LoopbackServer.requests(server)
    assert second.json["max_tokens"] == 1024
    assistant = Enum.find(second.json["messages"], &(&1["role"] == "assistant"))
    assert [%{"function" => %{"name" => "execute_lua"}}] = assistant["tool_calls"]
    assert assistant["content"] == nil

    assistant = third.json["messages"] |> Enum.filter(&(&1["role"] == "assistant")) |> List.last()
    assert assistant["content"] == "The table is growing."
  end

  test "made-up alerts are refused, repeated tools are withdrawn, and the report is asked for",
       %{instance: instance, server: server} do
    start_beamlens(instance,
      watchers: [[name: :ets, warmup: 5, max_iterations: 12]],
      provider: LLMFixtures.config(:anthropic, server)
    )

    await_ticks(instance, :ets, 8)

    alert = fn type ->
      {"fire_alert",
       %{
         "severity" => "critical",
         "anomaly_type" => type,
         "summary" => "ETS is in trouble",
         "observation" => "numbers"
       }}
    end

    LoopbackServer.enqueue(
      server,
      Enum.map(
        [
          [{"take_snapshot", %{}}],
          # No investigation yet: nothing to back an "other" alert.
          [alert.("other")],
          # The gate measures the table count and sees it normal.
          [alert.("ets_table_count_high")],
          [{"execute_lua", %{"code" => "return 1"}}],
          [{"execute_lua", %{"code" => "return 1"}}],
          [{"done", %{}}],
          [alert.("ets_memory_growth")],
          [{"done", %{}}]
        ],
        &LLMFixtures.tool_calls(:anthropic, &1)
      )
    )

    between_snapshots(instance, [:ets], fn -> grow_ets(:small_made_up, 300_000) end)

    assert_receive {:telemetry, [:beamlens, :watcher, :check], %{iterations: 8, corrections: 3},
                    %{outcome: :done, gate_alerts: 0}},
                   10_000

    results = Enum.map(tool_calls_seen(), &{&1.tool, &1.error?, &1.result})

    assert [
             {"take_snapshot", false, _},
             {"fire_alert", true, no_evidence},
             {"fire_alert", true, not_firing},
             {"execute_lua", false, _},
             {"execute_lua", true, repeated},
             {"done", false, report},
             {"fire_alert", false, fired},
             {"done", false, "OK."}
           ] = results

    assert no_evidence =~ "An alert of type other needs evidence"
    assert not_firing =~ "The gate measures ets_table_count_high and sees it within"
    assert not_firing =~ "What the gate sees wrong now: ets_memory_growth"
    assert repeated =~ "You already made this exact execute_lua call"
    assert report =~ "Not finished: the gate found"
    assert fired =~ ~r/^Alert \S+ fired\. Call done if you are finished\.$/

    # A later check may follow (unscripted); these are the first check's.
    requests = Enum.take(LoopbackServer.requests(server), 8)
    tools = Enum.map(requests, fn r -> Enum.map(r.json["tools"], & &1["name"]) end)
    assert "take_snapshot" in Enum.at(tools, 0)
    # Called once, take_snapshot could only be repeated; so could execute_lua once repeated.
    refute "take_snapshot" in Enum.at(tools, 1)
    assert "execute_lua" in Enum.at(tools, 4)
    refute "execute_lua" in Enum.at(tools, 5)

    assert Enum.map(requests, & &1.json["tool_choice"]) ==
             List.duplicate(%{"type" => "any"}, 6) ++
               [%{"type" => "tool", "name" => "fire_alert"}, %{"type" => "any"}]

    assert [%{source: :llm, anomaly_type: "ets_memory_growth"}] =
             Enum.filter(collect_alerts(200), &(&1.anomaly_type == "ets_memory_growth"))
  end
end
