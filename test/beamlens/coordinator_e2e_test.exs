defmodule Beamlens.CoordinatorE2ETest do
  # Real watchers, real faults in this VM, the real coordinator started by
  # the Beamlens supervisor: each correlation type from injected faults.
  use Beamlens.WatcherCase, async: false

  @moduletag timeout: 120_000

  setup context do
    events = [
      [:beamlens, :coordinator, :insight_produced],
      [:beamlens, :coordinator, :insight_updated]
    ]

    id = "e2e-#{inspect(context.test)}"
    :ok = :telemetry.attach_many(id, events, &Beamlens.WatcherCase.forward/4, self())
    on_exit(fn -> :telemetry.detach(id) end)
    :ok
  end

  defp start(instance, watchers, window_ms) do
    start_beamlens(instance,
      watchers: watchers,
      warmup: 5,
      coordinator: [window_ms: window_ms, leader_warmup_ms: 0]
    )

    for w <- watchers, do: await_ticks(instance, w, 8)
  end

  # The latest version of the insight whose alerts include all `types`.
  defp await_insight(types, timeout) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_await_insight(MapSet.new(types), deadline)
  end

  defp do_await_insight(types, deadline) do
    remaining = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:telemetry, [:beamlens, :coordinator, _], _, %{insight: insight}} ->
        if MapSet.subset?(types, MapSet.new(insight.anomaly_types)),
          do: insight,
          else: do_await_insight(types, deadline)
    after
      remaining -> flunk("no insight grouped #{inspect(MapSet.to_list(types))}")
    end
  end

  # Inserts rows 100k at a time until total VM memory reaches `target`
  # (at least 1M rows, at most 20M).
  defp fill_until(table, next, target) do
    for i <- (next + 1)..(next + 100_000), do: :ets.insert(table, {i, i * 2, :cached})
    next = next + 100_000

    if next < 20_000_000 and (next < 1_000_000 or :erlang.memory(:total) < target),
      do: fill_until(table, next, target),
      else: next
  end

  defp spawn_owner(fun) do
    parent = self()

    pid =
      spawn(fn ->
        state = fun.()
        send(parent, {:owner_ready, self()})
        receive do: (:stop -> state)
      end)

    receive do: ({:owner_ready, ^pid} -> :ok)
    on_exit(fn -> Process.exit(pid, :kill) end)
    pid
  end

  test "causal: ETS growth drives total memory", %{instance: instance} do
    start(instance, [:ets, :beam], 30_000)

    # Small tuples, no large binaries, so only ETS and total memory move.
    # Total memory must grow by half and 64 MiB over its recent low; what
    # earlier tests left in this VM sets that low, so the table grows until
    # total memory is 1.7x what it was (at least 1M rows), whatever it was.
    between_snapshots(instance, [:ets, :beam], fn ->
      target = max(trunc(:erlang.memory(:total) * 1.7), :erlang.memory(:total) + 96 * 1024 * 1024)

      spawn_owner(fn ->
        table = :ets.new(:e2e_cache, [:public, :named_table])
        fill_until(table, 0, target)
        table
      end)
    end)

    insight = await_insight(["ets_memory_growth", "memory_growth"], 30_000)
    assert insight.correlation_type == :causal
    assert insight.root_cause_hypothesis =~ "ets_memory_growth"
    assert insight.summary =~ "ets_growth_drives_memory"
    assert insight.nodes == [node()]
    assert Enum.sort(insight.watchers) == [:beam, :ets]
  end

  test "symptomatic: one process leaks sockets and piles up messages", %{instance: instance} do
    start(instance, [:ports, :beam], 30_000)

    # All at once between two snapshots, as in the causal test.
    culprit =
      between_snapshots(instance, [:ports, :beam], fn ->
        culprit = spawn_owner(fn -> for _ <- 1..300, do: :gen_udp.open(0) end)
        for i <- 1..20_000, do: send(culprit, {:request, i})
        culprit
      end)

    insight = await_insight(["port_leak", "mailbox_buildup"], 15_000)
    assert insight.correlation_type == :symptomatic
    assert insight.summary =~ inspect(culprit)
    assert Enum.sort(insight.watchers) == [:beam, :ports]
  end

  test "temporal: unrelated faults at the same moment", %{instance: instance} do
    start(instance, [:beam, :logger], 30_000)

    require Logger

    between_snapshots(instance, [:beam, :logger], fn ->
      base = System.unique_integer([:positive])
      for i <- 1..15_000, do: _ = String.to_atom("e2e_atom_#{base}_#{i}")
      for i <- 1..80, do: Logger.error("invoice #{i} rejected by the tax rules")
    end)

    insight = await_insight(["atom_growth", "error_log_burst"], 15_000)
    assert insight.correlation_type == :temporal
    assert insight.summary =~ "temporal"
  end

  test "alerts far apart in time stay separate", %{instance: instance} do
    start(instance, [:ets, :ports], 1_000)

    between_snapshots(instance, [:ets], fn ->
      spawn_owner(fn ->
        table = :ets.new(:e2e_separate, [:public, :named_table])
        for i <- 1..300_000, do: :ets.insert(table, {i, "session-#{i}"})
        table
      end)
    end)

    assert_alert(:ets, "ets_memory_growth", 10_000)
    Process.sleep(3_000)
    spawn_owner(fn -> for _ <- 1..300, do: :gen_udp.open(0) end)
    assert_alert(:ports, "port_leak", 10_000)
    Process.sleep(1_500)

    insights = Beamlens.Coordinator.insights(Module.concat(instance, Coordinator))

    for insight <- insights do
      refute :ets in insight.watchers and :ports in insight.watchers,
             "unrelated alerts were grouped: #{insight.summary}"
    end
  end
end

defmodule Beamlens.CoordinatorLLMTest do
  use Beamlens.WatcherCase, async: false

  alias Beamlens.{LLMFixtures, LoopbackServer}

  @moduletag timeout: 60_000

  test "with a model, the insight's summary and hypothesis are the model's", %{instance: instance} do
    server = start_supervised!(LoopbackServer)
    parent = self()

    LoopbackServer.set_handler(server, fn request ->
      case request.json["tools"] do
        [%{"name" => "write_insight"}] ->
          send(parent, {:summarizer_prompt, request.json})

          LLMFixtures.tool_calls(:anthropic, [
            {"write_insight",
             %{
               "summary" =>
                 "The sessions cache grows without eviction and drags total memory up.",
               "hypothesis" =>
                 "Missing TTL on the e2e_llm_cache table; check its owner's insert path."
             }}
          ])

        _ ->
          # Watchers: end every check at once, so the gate's alerts fire.
          LLMFixtures.tool_calls(:anthropic, [{"done", %{}}])
      end
    end)

    events = [
      [:beamlens, :coordinator, :insight_produced],
      [:beamlens, :coordinator, :insight_updated]
    ]

    :ok = :telemetry.attach_many("coord-llm", events, &Beamlens.WatcherCase.forward/4, self())
    on_exit(fn -> :telemetry.detach("coord-llm") end)

    start_beamlens(instance,
      watchers: [:ports, :beam],
      warmup: 5,
      provider: LLMFixtures.config(:anthropic, server),
      token_budget: :infinity,
      coordinator: [window_ms: 30_000, leader_warmup_ms: 0]
    )

    for w <- [:ports, :beam], do: await_ticks(instance, w, 8)

    # One process leaks sockets and piles up messages: a symptomatic pair.
    owner =
      spawn(fn ->
        for _ <- 1..300, do: :gen_udp.open(0)
        Process.sleep(:infinity)
      end)

    on_exit(fn -> Process.exit(owner, :kill) end)
    for i <- 1..20_000, do: send(owner, {:request, i})

    assert_receive {:telemetry, [:beamlens, :coordinator, _], _,
                    %{insight: %{summary_source: :summarizer} = insight}},
                   30_000

    assert insight.summary ==
             "The sessions cache grows without eviction and drags total memory up."

    assert insight.root_cause_hypothesis =~ "Missing TTL"
    assert_received {:summarizer_prompt, json}
    assert json["tool_choice"] == %{"type" => "tool", "name" => "write_insight"}
    [%{"content" => [%{"text" => prompt}]}] = json["messages"]
    assert prompt =~ "Correlation: symptomatic"
    assert prompt =~ "port_leak"
    assert prompt =~ inspect(owner)
    assert prompt =~ "<data>"
  end
end
