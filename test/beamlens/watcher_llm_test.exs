defmodule Beamlens.WatcherLLMTest do
  # The watcher's model loop against a scripted provider on loopback: the
  # model's replies are fixtures, everything else (snapshots, gate, Lua,
  # alerts, compaction) is real.
  use Beamlens.WatcherCase, async: false

  alias Beamlens.{LLMFixtures, LoopbackServer}

  @moduletag timeout: 120_000

  setup do
    %{server: start_provider([[:beamlens, :watcher, :check], [:beamlens, :compaction, :stop]])}
  end

  defp provider(server, extra \\ []), do: LLMFixtures.config(:anthropic, server, extra)

  defp model_turns(server, turns) do
    LoopbackServer.enqueue(server, Enum.map(turns, &LLMFixtures.tool_calls(:anthropic, &1)))
  end

  defp grow_ets(name, n) do
    table = :ets.new(name, [:public, :named_table])
    for i <- 1..n, do: :ets.insert(table, {i, "session-#{i}", %{user: i}})
    table
  end

  test "the model investigates with Lua, fires its own alert and sets the state", %{
    instance: instance,
    server: server
  } do
    start_beamlens(instance, watchers: [[name: :ets, warmup: 5]], provider: provider(server))
    await_ticks(instance, :ets, 8)

    model_turns(server, [
      [{"execute_lua", %{"code" => ~s|local t = ets.tables(3, "memory") return t[1]|}}],
      [
        {"fire_alert",
         %{
           "severity" => "critical",
           "anomaly_type" => "ets_memory_growth",
           "summary" => "The llm_sessions table holds most of the VM's memory",
           "observation" => "llm_sessions is the largest table",
           "hypothesis" => "Sessions are never evicted",
           "snapshot_ids" => ["ets-9", "made-up-id"]
         }}
      ],
      [{"set_state", %{"state" => "critical", "reason" => "session table growing"}}],
      [{"done", %{}}]
    ])

    between_snapshots(instance, [:ets], fn -> grow_ets(:llm_sessions, 300_000) end)

    assert_receive {:telemetry, [:beamlens, :watcher, :check], %{iterations: 4} = m,
                    %{outcome: :done} = meta},
                   10_000

    assert m.tokens > 0
    assert meta.watcher == :ets

    alerts = collect_alerts(200)
    llm = Enum.find(alerts, &(&1.source == :llm))
    assert llm.summary == "The llm_sessions table holds most of the VM's memory"
    assert llm.anomaly_type == "ets_memory_growth"
    assert llm.hypothesis == "Sessions are never evicted"
    # Only snapshot ids that exist survive.
    refute "made-up-id" in llm.evidence.snapshot_ids
    # The model covered ets_memory_growth, so the gate did not fire it again.
    refute Enum.any?(alerts, &(&1.source == :gate and &1.anomaly_type == "ets_memory_growth"))

    assert %{state: :critical, reason: "session table growing"} =
             Beamlens.Watcher.info(Beamlens.Watcher.whereis(instance, :ets))

    [first, second | _] = LoopbackServer.requests(server)

    # The check: a system prompt naming the Lua functions, data in <data> tags, six tools, a forced tool call.
    assert first.json["system"] =~ "ets.tables(n, by)"
    assert [%{"role" => "user", "content" => [%{"text" => check}]}] = first.json["messages"]
    assert check =~ "Gate findings:\n- ets_memory_growth (critical, new): ETS memory at"
    assert check =~ "<data>"

    assert Enum.map(first.json["tools"], & &1["name"]) ==
             ~w(execute_lua fire_alert set_state done wait take_snapshot)

    assert first.json["tool_choice"] == %{"type" => "any"}
    # The Lua result came back as a tool result.
    assert %{"role" => "user", "content" => [%{"type" => "tool_result", "content" => result}]} =
             List.last(second.json["messages"])

    assert result =~ "llm_sessions"
  end

  test "invalid, unknown and repeated tool calls get corrections, not crashes", %{
    instance: instance,
    server: server
  } do
    start_beamlens(instance,
      watchers: [[name: :ets, warmup: 5, max_iterations: 10]],
      provider: provider(server)
    )

    await_ticks(instance, :ets, 8)

    model_turns(server, [
      [{"reboot_the_server", %{}}],
      [{"execute_lua", %{"script" => "return 1"}}],
      [{"execute_lua", %{"code" => "return 1 +"}}],
      [{"execute_lua", %{"code" => "return 1 +"}}],
      [{"done", %{}}],
      # Asked once to report the gate's finding, it ends the check anyway.
      [{"done", %{}}]
    ])

    between_snapshots(instance, [:ets], fn -> grow_ets(:llm_corrections, 300_000) end)

    assert_receive {:telemetry, [:beamlens, :watcher, :check], %{corrections: 3},
                    %{outcome: :done}},
                   10_000

    # The sixth request is the check's last; a follow-up check may follow it.
    last = Enum.at(LoopbackServer.requests(server), 5)
    # The report was asked for with a forced tool call.
    assert last.json["tool_choice"] == %{"type" => "tool", "name" => "fire_alert"}

    results =
      last
      |> get_in([Access.key(:json), "messages"])
      |> Enum.flat_map(fn m -> if is_list(m["content"]), do: m["content"], else: [] end)
      |> Enum.filter(&(&1["type"] == "tool_result"))

    assert [unknown, missing, syntax, repeated, report] = Enum.map(results, & &1["content"])
    assert unknown =~ ~s(unknown tool "reboot_the_server")
    assert missing =~ ~s(execute_lua needs {"code")
    assert syntax =~ "Lua error: line 1"
    assert repeated =~ "You already made this exact execute_lua call"
    assert report =~ "Not finished: the gate found ETS memory at"
    assert report =~ "(anomaly_type ets_memory_growth). Call fire_alert"
    assert Enum.all?(Enum.take(results, 4), &(&1["is_error"] in [true, nil]))

    # Safety does not depend on the model: it fired nothing, the gate did.
    assert Enum.any?(
             collect_alerts(200),
             &(&1.source == :gate and &1.anomaly_type == "ets_memory_growth")
           )

    assert Process.alive?(Beamlens.Watcher.whereis(instance, :ets))
  end

  test "a provider outage leaves the watcher alive and the gate's alerts firing", %{
    instance: instance,
    server: server
  } do
    LoopbackServer.set_handler(server, fn _ -> %{status: 500, body: %{"error" => "down"}} end)

    start_beamlens(instance, watchers: [[name: :ets, warmup: 5]], provider: provider(server))
    await_ticks(instance, :ets, 8)
    pid = Beamlens.Watcher.whereis(instance, :ets)

    between_snapshots(instance, [:ets], fn -> grow_ets(:llm_outage, 300_000) end)

    assert_receive {:telemetry, [:beamlens, :watcher, :check], _, %{outcome: :llm_server_error}},
                   10_000

    alert = assert_alert(:ets, "ets_memory_growth")
    assert alert.source == :gate
    assert Beamlens.Watcher.whereis(instance, :ets) == pid
    assert %{state: :critical} = Beamlens.Watcher.info(pid)
  end

  test "a spent token budget falls back to rules only", %{instance: instance, server: server} do
    LoopbackServer.set_handler(server, fn _ ->
      LLMFixtures.tool_calls(:anthropic, [{"done", %{}}], usage: %{input: 5_000, output: 100})
    end)

    start_beamlens(instance,
      watchers: [[name: :ets, warmup: 3, llm: :always]],
      provider: provider(server),
      # The budget is a node-wide sliding hour: leave room for one request.
      token_budget: Beamlens.LLM.budget().used + 1_000
    )

    on_exit(fn -> Beamlens.LLM.set_budget(:infinity) end)

    assert_receive {:telemetry, [:beamlens, :watcher, :check], _, %{outcome: :done}}, 5_000

    assert_receive {:telemetry, [:beamlens, :watcher, :check], _,
                    %{outcome: :llm_budget_exceeded}},
                   5_000

    between_snapshots(instance, [:ets], fn -> grow_ets(:llm_budget, 300_000) end)
    assert %{source: :gate} = assert_alert(:ets, "ets_memory_growth")
  end

  test "compaction keeps the conversation bounded and the repeated-call guard survives it",
       %{instance: instance, server: server} do
    {:ok, script} = Agent.start_link(fn -> %{turn: 0, compacted: false, phase: :running} end)

    # The model runs a new script every turn. Right after the first
    # compaction it repeats its very first script, then calls done.
    LoopbackServer.set_handler(server, fn request ->
      if request.json["tools"] in [nil, []] do
        Agent.update(script, &%{&1 | compacted: true})
        LLMFixtures.text(:anthropic, "Earlier: ran return 0 and many numbered scripts; all fine.")
      else
        {turn, call} =
          Agent.get_and_update(script, fn s ->
            turn = s.turn + 1

            {call, phase} =
              case {s.phase, s.compacted} do
                {:running, true} ->
                  {{"execute_lua", %{"code" => "return 0"}}, :repeated}

                {:repeated, _} ->
                  {{"done", %{}}, :finished}

                {:running, false} when turn == 1 ->
                  {{"execute_lua", %{"code" => "return 0"}}, :running}

                {phase, _} ->
                  {{"execute_lua", %{"code" => "return #{turn}"}}, phase}
              end

            {{turn, call}, %{s | turn: turn, phase: phase}}
          end)

        _ = turn
        LLMFixtures.tool_calls(:anthropic, [call])
      end
    end)

    start_beamlens(instance,
      watchers: [
        [
          name: :ets,
          warmup: 2,
          llm: :always,
          max_iterations: 200,
          compaction_max_tokens: 1_500,
          compaction_keep_last: 4
        ]
      ],
      provider: provider(server)
    )

    assert_receive {:telemetry, [:beamlens, :compaction, :stop],
                    %{tokens_before: before, tokens_after: after_}, %{method: :summary}},
                   30_000

    assert after_ < before

    assert_receive {:telemetry, [:beamlens, :watcher, :check], %{corrections: 1},
                    %{outcome: :done}},
                   30_000

    requests = Enum.filter(LoopbackServer.requests(server), &(&1.json["tools"] not in [nil, []]))
    last = List.last(requests)

    # The summary rides in the system prompt, the history was cut, and the
    # repeat of the first script was refused although it was summarised away.
    assert last.json["system"] =~ "Earlier: ran return 0"
    assert length(last.json["messages"]) < 12

    assert %{"content" => [%{"type" => "tool_result", "is_error" => true, "content" => refused}]} =
             List.last(last.json["messages"])

    assert refused =~ "You already made this exact execute_lua call"

    info = Beamlens.Watcher.info(Beamlens.Watcher.whereis(instance, :ets))
    assert info.stats.compactions >= 1
  end
end

defmodule Beamlens.WatcherLongRunTest do
  use Beamlens.WatcherCase, async: false

  alias Beamlens.{LLMFixtures, LoopbackServer}

  @moduletag timeout: 300_000

  test "10,000 model iterations run in bounded memory", %{instance: instance} do
    server = start_supervised!({LoopbackServer, record: false})
    turns = :counters.new(1, [])

    # Without recording, the server does not decode bodies: look at the raw JSON.
    LoopbackServer.set_handler(server, fn request ->
      if not String.contains?(request.body, ~s("tools")) do
        LLMFixtures.text(:anthropic, "Summary: routine scripts, nothing found.")
      else
        :counters.add(turns, 1, 1)
        n = :counters.get(turns, 1)
        LLMFixtures.tool_calls(:anthropic, [{"execute_lua", %{"code" => "return #{n}"}}])
      end
    end)

    handler = "long-run-#{System.unique_integer()}"

    :ok =
      :telemetry.attach(
        handler,
        [:beamlens, :watcher, :check],
        &Beamlens.WatcherCase.forward/4,
        self()
      )

    on_exit(fn -> :telemetry.detach(handler) end)

    start_beamlens(instance,
      watchers: [
        [
          name: :ets,
          warmup: 1,
          interval: 60_000,
          llm: :always,
          max_iterations: 10_000,
          compaction_max_tokens: 2_000,
          compaction_keep_last: 6
        ]
      ],
      provider: LLMFixtures.config(:anthropic, server)
    )

    pid = Beamlens.Watcher.whereis(instance, :ets)
    samples = sample_memory(pid, turns, [1_000, 5_000, 9_000], [])

    assert_receive {:telemetry, [:beamlens, :watcher, :check], %{iterations: 10_000},
                    %{outcome: :iteration_cap}},
                   280_000

    info = Beamlens.Watcher.info(pid)
    assert info.conversation_messages <= 60
    assert info.stats.compactions >= 100

    # Memory after 9,000 turns is no larger than after 1,000 (give or take GC timing).
    [{1_000, early}, {5_000, _}, {9_000, late}] = samples
    assert late < early * 2, "watcher memory grew from #{early} to #{late} bytes"
    assert late < 2_000_000
  end

  defp sample_memory(_pid, _turns, [], acc), do: Enum.reverse(acc)

  defp sample_memory(pid, turns, [at | rest] = all, acc) do
    if :counters.get(turns, 1) >= at do
      # Live memory, not garbage waiting for the next collection.
      :erlang.garbage_collect(pid)
      {:memory, bytes} = Process.info(pid, :memory)
      sample_memory(pid, turns, rest, [{at, bytes} | acc])
    else
      Process.sleep(20)
      sample_memory(pid, turns, all, acc)
    end
  end
end
