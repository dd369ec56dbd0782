defmodule Beamlens.OperatingTest do
  # The operator API on real watcher sets with injected faults, rules-only:
  # status, alert history, pause/resume, check_now and report.
  use Beamlens.WatcherCase, async: false

  @moduletag timeout: 120_000

  defp grow_ets(name, n) do
    table = :ets.new(name, [:public, :named_table])
    for i <- 1..n, do: :ets.insert(table, {i, "session-#{i}", %{user: i}})
    on_exit(fn -> if :ets.whereis(name) != :undefined, do: :ets.delete(name) end)
    table
  end

  defp watcher_status(instance, name),
    do: Enum.find(Beamlens.status(instance: instance).watchers, &(&1.name == name))

  # Polls until `fun` holds, up to a bound only a broken build reaches.
  defp await(fun, deadline \\ System.monotonic_time(:millisecond) + 30_000) do
    cond do
      fun.() -> :ok
      System.monotonic_time(:millisecond) > deadline -> flunk("condition not reached in 30 s")
      true -> Process.sleep(20) && await(fun, deadline)
    end
  end

  test "status: each watcher's state, mode, ticks, checks and tokens", %{instance: instance} do
    # Tokens are counted node-wide per watcher name: an earlier test's :ets
    # watcher may have used a model. This one, rules-only, adds nothing.
    tokens_before = Beamlens.Usage.get({:watcher, :ets})
    start_beamlens(instance, watchers: [:beam, :ets])
    await_ticks(instance, :ets, 2)

    status = Beamlens.status(instance: instance)
    assert status.node == node()
    assert Enum.map(status.watchers, & &1.name) == [:beam, :ets]
    assert status.providers == []
    assert status.budget == %{limit: :infinity, used_this_hour: 0, left: :infinity}
    assert %{leader?: true, insights: 0} = status.coordinator

    ets = watcher_status(instance, :ets)
    assert ets.state == :healthy
    assert ets.mode == :rules_only
    assert ets.mode_reason == "no provider configured"
    refute ets.paused
    assert DateTime.diff(ets.next_tick_at, ets.last_tick_at, :millisecond) == 50
    assert ets.firing == []
    assert ets.last_check == nil

    assert %{last_hour: %{input: _, output: _}, total: %{input: _, output: _}, estimated: _} =
             ets.tokens

    assert ets.tokens == tokens_before
  end

  test "alerts are kept without any handler, with filters", %{instance: instance} do
    start_beamlens(instance, watchers: [[name: :ets, warmup: 5], :beam])
    await_ticks(instance, :ets, 8)
    # All at once between two snapshots: grown over many ticks of a loaded
    # machine, the gate's baseline would follow it.
    between_snapshots(instance, [:ets], fn -> grow_ets(:op_history_sessions, 300_000) end)

    fired = await_alert(instance, :ets, "ets_memory_growth")
    # The watcher records the alert (a cast to the history) right after the
    # event: once it answers a call, the cast is in the history's mailbox.
    :sys.get_state(Beamlens.Watcher.whereis(instance, :ets))
    assert Beamlens.alerts(instance: instance) != []

    kept = Enum.find(Beamlens.alerts(instance: instance, watcher: :ets), &(&1.id == fired.id))
    assert %Beamlens.Alert{anomaly_type: "ets_memory_growth"} = kept
    assert kept.escalations == []
    assert %DateTime{} = kept.last_seen_at
    # The :beam watcher may alert on a loaded machine's run queue: the filter
    # is judged on what it returns, not on the machine being quiet.
    beam = Beamlens.alerts(instance: instance, watcher: :beam)
    assert Enum.all?(beam, &(&1.watcher == :beam))
    refute Enum.any?(beam, &(&1.id == fired.id))
    assert Beamlens.alerts(instance: instance, anomaly_type: "nothing_like_it") == []
    future = DateTime.add(DateTime.utc_now(), 60, :second)
    assert Beamlens.alerts(instance: instance, since: future) == []

    assert_raise ArgumentError, ~r/unknown filter :wacher/, fn ->
      Beamlens.alerts(instance: instance, wacher: :ets)
    end

    status = watcher_status(instance, :ets)
    assert status.state in [:warning, :critical]
    assert "ets.memory_share" in status.firing or "ets.memory_bytes" in status.firing
  end

  test "a paused watcher keeps judging but raises nothing; resume raises what fires", %{
    instance: instance
  } do
    start_beamlens(instance, watchers: [[name: :ets, warmup: 5]])
    await_ticks(instance, :ets, 8)

    assert :ok = Beamlens.pause(:ets, instance: instance)
    assert %{paused: true, paused_until: nil} = watcher_status(instance, :ets)

    between_snapshots(instance, [:ets], fn -> grow_ets(:op_paused_sessions, 300_000) end)

    # The gate still sees it: the state changes...
    await_state(instance, :ets, [:warning, :critical])

    info =
      await_ticks(
        instance,
        :ets,
        Beamlens.Watcher.info(Beamlens.Watcher.whereis(instance, :ets)).ticks + 3
      )

    # ...but nothing was raised.
    assert info.alerts_fired == 0
    refute_received {:telemetry, [:beamlens, :watcher, :alert_fired], _, _}
    assert Beamlens.alerts(instance: instance) == []

    assert :ok = Beamlens.resume(:ets, instance: instance)
    await_alert(instance, :ets, "ets_memory_growth")
    refute watcher_status(instance, :ets).paused
  end

  test "pause for a while, and errors that name the watcher or option", %{instance: instance} do
    start_beamlens(instance, watchers: [:ets])
    await_ticks(instance, :ets, 1)

    assert :ok = Beamlens.pause(:ets, instance: instance, for: 60_000)
    status = watcher_status(instance, :ets)
    assert status.paused
    assert DateTime.diff(status.paused_until, DateTime.utc_now(), :second) in 55..60

    assert :ok = Beamlens.pause(:ets, instance: instance, for: 1)
    ticks = Beamlens.Watcher.info(Beamlens.Watcher.whereis(instance, :ets)).ticks
    await_ticks(instance, :ets, ticks + 2)
    refute watcher_status(instance, :ets).paused

    assert {:error, %Beamlens.Error{kind: :not_found, message: message}} =
             Beamlens.pause(:nope, instance: instance)

    assert message =~ "no watcher named :nope"
    assert message =~ ":ets"

    assert {:error, %Beamlens.Error{kind: :bad_argument, message: message}} =
             Beamlens.pause(:ets, instance: instance, for: -5)

    assert message =~ "for:"

    assert {:error, %Beamlens.Error{kind: :bad_argument}} =
             Beamlens.resume(:ets, instance: instance, bogus: 1)
  end

  test "check_now takes a snapshot at once, rules-only", %{instance: instance} do
    # One tick at start, then none for a minute.
    start_beamlens(instance, watchers: [[name: :beam, interval: 60_000]])
    await_ticks(instance, :beam, 1)

    assert :ok = Beamlens.check_now(:beam, instance: instance)
    await_ticks(instance, :beam, 2)

    # The check is served when that snapshot's result comes back, after the
    # tick was counted; a loaded machine may take seconds to take it.
    await(fn ->
      match?(
        %{reason: "check requested", outcome: :rules_only},
        watcher_status(instance, :beam).last_check
      )
    end)

    assert {:error, %Beamlens.Error{kind: :not_found}} =
             Beamlens.check_now(:ets, instance: instance)
  end

  test "report fits a terminal with every built-in watcher", %{instance: instance} do
    watchers = [:beam, :ets, :gc, :logger, :ports, :sup, :system, :exception]

    start_beamlens(instance,
      watchers: watchers ++ [[name: :ets2, domain_module: Beamlens.Domain.Ets]]
    )

    await_ticks(instance, :ets, 2)
    Beamlens.pause(:logger, instance: instance)

    {:ok, io} = StringIO.open("")
    assert :ok = Beamlens.report(instance: instance, device: io)
    {:ok, {_, text}} = StringIO.close(io)

    lines = String.split(text, "\n", trim: true)
    assert length(lines) < 40
    assert Enum.all?(lines, &(String.length(&1) <= 100))
    assert text =~ "BeamLens on #{node()}"
    assert text =~ ~r/logger\s+\w+\s+PAUSED/
    assert text =~ "rules-only: no provider configured"
    # A loaded test box may well have a CPU load alert.
    assert text =~ ~r/Recent alerts( \(newest first\):|: none)/
    for w <- watchers, do: assert(text =~ ~r/^  #{w}\s/m)
  end
end

defmodule Beamlens.OperatingInsightsTest do
  # Insights outlive their telemetry events too: the coordinator started by
  # the Beamlens supervisor records what it emits.
  use Beamlens.WatcherCase, async: false

  import Beamlens.CoordinatorCase, only: [alert: 2, attach_coordinator_events: 1]

  test "insights/1 lists what the coordinator produced, and report/1 shows the latest", context do
    instance =
      start_beamlens(context.instance,
        watchers: [[name: :beam, interval: 60_000]],
        coordinator: [window_ms: 30_000, leader_warmup_ms: 0]
      )

    attach_coordinator_events(context)
    name = Module.concat(instance, Coordinator)
    :ok = Beamlens.Coordinator.report_alert(name, alert("ets_memory_growth", ago_ms: 2_000))
    :ok = Beamlens.Coordinator.report_alert(name, alert("memory_growth", ago_ms: 1_000))

    assert_receive {:coordinator_event, :insight_produced, _, %{insight: produced}}, 10_000

    assert [%Beamlens.Insight{id: id}] = Beamlens.insights(instance: instance)
    assert id == produced.id

    assert Beamlens.insights(
             instance: instance,
             since: DateTime.add(DateTime.utc_now(), 60, :second)
           ) == []

    {:ok, io} = StringIO.open("")
    :ok = Beamlens.report(instance: instance, device: io)
    {:ok, {_, text}} = StringIO.close(io)
    assert text =~ "Latest insight (causal, 2 alerts"
  end
end
