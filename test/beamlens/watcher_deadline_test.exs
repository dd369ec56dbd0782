defmodule Beamlens.WatcherDeadlineTest do
  # Issue 13.4: deterministic alerts never wait for the model, and every
  # reply a check waits for has a deadline. The provider is a scripted
  # server on loopback that can hang; snapshots, gate, Lua and alerts are
  # real. Waits are on telemetry events, never on sleeps.
  use Beamlens.WatcherCase, async: false

  alias Beamlens.{LLMFixtures, LoopbackServer}

  @moduletag timeout: 120_000

  setup do
    server =
      start_provider([
        [:beamlens, :watcher, :check],
        [:beamlens, :watcher, :tool_call],
        [:beamlens, :watcher, :reply_timeout]
      ])

    %{server: server}
  end

  defp grow_ets(name, n) do
    table = :ets.new(name, [:public, :named_table])
    for i <- 1..n, do: :ets.insert(table, {i, "session-#{i}", %{user: i}})
    table
  end

  # A provider that accepts every request and never answers within the test.
  defp hang(server), do: LoopbackServer.set_handler(server, fn _ -> %{delay: 600_000} end)

  test "a hung provider does not delay the gate's alert", %{instance: instance, server: server} do
    hang(server)

    start_beamlens(instance,
      watchers: [[name: :ets, warmup: 5, gate_alert_grace: 200]],
      provider: LLMFixtures.config(:anthropic, server, timeout: 600_000)
    )

    await_ticks(instance, :ets, 8)
    between_snapshots(instance, [:ets], fn -> grow_ets(:deadline_hung, 300_000) end)

    # The check is stuck on the provider; the gate's alert goes out anyway.
    alert = await_alert(instance, :ets, "ets_memory_growth")
    assert alert.source == :gate
    assert %{checking?: true} = Beamlens.Watcher.info(Beamlens.Watcher.whereis(instance, :ets))
    refute_received {:telemetry, [:beamlens, :watcher, :check], _, _}
  end

  test "a lost model reply times out and the watcher goes on", %{
    instance: instance,
    server: server
  } do
    hang(server)

    start_beamlens(instance,
      watchers: [[name: :ets, warmup: 5, reply_timeout: 300]],
      provider: LLMFixtures.config(:anthropic, server, timeout: 600_000)
    )

    await_ticks(instance, :ets, 8)
    pid = Beamlens.Watcher.whereis(instance, :ets)
    between_snapshots(instance, [:ets], fn -> grow_ets(:deadline_lost_llm, 300_000) end)

    # Waited for in snapshots (40 at 50 ms each outlast the 300 ms).
    await_event(
      instance,
      :ets,
      &match?(
        {:telemetry, [:beamlens, :watcher, :reply_timeout], %{timeout: 300},
         %{watcher: :ets, awaiting: :llm}},
        &1
      )
    )

    # (One check or more: more findings may have joined a running one.)
    await_event(
      instance,
      :ets,
      &match?(
        {:telemetry, [:beamlens, :watcher, :check], _, %{outcome: :llm_timeout, gate_alerts: n}}
        when n >= 1,
        &1
      )
    )

    # The gate covered what the model could not report.
    assert %{source: :gate} = await_alert(instance, :ets, "ets_memory_growth")

    # The watcher lives on: it keeps ticking and checks again.
    info = Beamlens.Watcher.info(pid)
    await_ticks(instance, :ets, info.ticks + 5)
    assert Beamlens.Watcher.whereis(instance, :ets) == pid

    await_event(
      instance,
      :ets,
      &match?({:telemetry, [:beamlens, :watcher, :reply_timeout], _, %{awaiting: :llm}}, &1)
    )
  end

  test "a lost Lua reply is reported to the model and the check goes on", %{
    instance: instance,
    server: server
  } do
    # The process serving the watcher's Lua run dies before it can answer.
    handler = "beamlens-deadline-kill-runner-#{System.unique_integer([:positive])}"

    :ok =
      :telemetry.attach(
        handler,
        [:beamlens, :lua, :execute, :start],
        fn _, _, meta, instance ->
          if meta[:watcher] == :ets and Beamlens.Watcher.whereis(instance, :ets),
            do: Process.exit(self(), :kill)
        end,
        instance
      )

    on_exit(fn -> :telemetry.detach(handler) end)

    LoopbackServer.enqueue(
      server,
      Enum.map(
        [
          [{"execute_lua", %{"code" => "return 1"}}],
          [{"done", %{}}]
        ],
        &LLMFixtures.tool_calls(:anthropic, &1)
      )
    )

    start_beamlens(instance,
      watchers: [[name: :ets, warmup: 5]],
      provider: LLMFixtures.config(:anthropic, server)
    )

    await_ticks(instance, :ets, 8)
    between_snapshots(instance, [:ets], fn -> grow_ets(:deadline_lost_lua, 300_000) end)

    # Model round trips on a loopback server, counted in the watcher's
    # snapshots (which keep coming while it checks).
    {_, _, _, %{result: result}} =
      await_event(
        instance,
        :ets,
        &match?(
          {:telemetry, [:beamlens, :watcher, :tool_call], _,
           %{tool: "execute_lua", error?: true}},
          &1
        ),
        200
      )

    assert result =~ "The Lua run ended without an answer"

    # The model got the error and answered again (done, then asked for the
    # report it could not back with evidence): the check went on and ended.
    await_event(
      instance,
      :ets,
      &match?({:telemetry, [:beamlens, :watcher, :check], %{iterations: n}, _} when n >= 2, &1),
      200
    )

    assert Process.alive?(Beamlens.Watcher.whereis(instance, :ets))
  end
end
