defmodule Beamlens.WatcherTest do
  # Faults are injected into the test VM itself, so these tests run alone.
  use Beamlens.WatcherCase, async: false

  @moduletag timeout: 60_000

  describe "a healthy run" do
    test "takes snapshots, stays healthy and fires no alert", %{instance: instance} do
      start_beamlens(instance, watchers: [:beam, :ets, :gc, :ports, :sup, :system], warmup: 3)

      for watcher <- [:beam, :ets, :gc, :ports, :sup, :system],
          do: await_ticks(instance, watcher, 15)

      # The :system watcher reports the host (load average, memory, disks),
      # and the :beam watcher's run queue and CPU time follow the machine's
      # load: other jobs on a shared CI machine can raise those. Everything
      # else inside the VM must stay quiet.
      host_types = ["cpu_load_high", "system_memory_high", "disk_usage_high"]
      load_types = ["run_queue_high", "scheduler_utilization_high"]
      load_metrics = ["beam.run_queue", "beam.cpu"]

      {host, vm} = Enum.split_with(collect_alerts(0), &(&1.watcher == :system))
      assert Enum.reject(vm, &(&1.watcher == :beam and &1.anomaly_type in load_types)) == []
      assert Enum.all?(host, &(&1.anomaly_type in host_types))

      for info <- Beamlens.watchers(instance) do
        assert info.last_error == nil
      end

      for status <- Beamlens.status(instance: instance).watchers, status.name != :system do
        assert status.firing -- load_metrics == [],
               "#{status.name}: #{status.state} (#{inspect(status.firing)})"

        if status.firing == [],
          do: assert(status.state in [:healthy, :observing], "#{status.name}: #{status.state}")
      end
    end
  end

  describe "injected faults fire the expected alert with evidence" do
    test "ETS table growth", %{instance: instance} do
      start_beamlens(instance, watchers: [:ets])
      await_ticks(instance, :ets, 8)

      between_snapshots(instance, [:ets], fn ->
        table = :ets.new(:beamlens_test_sessions, [:public, :named_table])

        for i <- 1..300_000,
            do: :ets.insert(table, {i, "session-#{i}", %{user: i, roles: [:a, :b]}})
      end)

      alert = await_alert(instance, :ets, "ets_memory_growth")

      assert alert.summary =~
               ~r/^ETS memory at \d+% of total memory, baseline \d+% \(culprit: ets table beamlens_test_sessions owned by /

      assert alert.source == :gate
      assert {"ets_table", "beamlens_test_sessions"} in alert.entities
      assert [snapshot_id] = alert.evidence.snapshot_ids
      assert snapshot_id =~ ~r/^ets-\d+$/
      assert %{value: share, baseline: baseline} = alert.evidence.values["ets.memory_share"]
      assert share > baseline
      assert alert.hypothesis =~ "ETS table"
    end

    test "process leak", %{instance: instance} do
      start_beamlens(instance, watchers: [:beam])
      await_ticks(instance, :beam, 8)

      # A leak is growth relative to what runs already (at least 50%): what
      # earlier tests left running must not hide it. Spawned all at once
      # between two snapshots: spawned over several ticks on a loaded
      # machine, it would be reported half-way.
      n = max(6_000, :erlang.system_info(:process_count))

      leaked =
        between_snapshots(instance, [:beam], fn ->
          for _ <- 1..n, do: spawn(fn -> Process.sleep(:infinity) end)
        end)

      on_exit(fn -> Enum.each(leaked, &Process.exit(&1, :kill)) end)

      alert = await_alert(instance, :beam, "process_leak")
      assert alert.summary =~ "process count at"
      assert alert.evidence.values["beam.process_count"].value >= n
    end

    test "mailbox build-up names the process", %{instance: instance} do
      start_beamlens(instance, watchers: [:beam])
      await_ticks(instance, :beam, 3)

      stuck = spawn(fn -> Process.sleep(:infinity) end)
      Process.register(stuck, :beamlens_test_stuck_consumer)
      on_exit(fn -> Process.exit(stuck, :kill) end)
      for i <- 1..15_000, do: send(stuck, {:job, i})

      alert = await_alert(instance, :beam, "mailbox_buildup")
      assert alert.summary =~ "A message queue holds"
      assert {"process", "beamlens_test_stuck_consumer"} in alert.entities
      assert {"pid", inspect(stuck)} in alert.entities
    end

    test "atom growth", %{instance: instance} do
      start_beamlens(instance, watchers: [:beam])
      await_ticks(instance, :beam, 8)

      # Atoms are never freed: this is a deliberate, permanent leak of 15k.
      base = System.unique_integer([:positive])
      _atoms = for i <- 1..15_000, do: String.to_atom("beamlens_test_atom_#{base}_#{i}")

      alert = await_alert(instance, :beam, "atom_growth")

      assert alert.evidence.values["beam.atom_count"].value >
               alert.evidence.values["beam.atom_count"].baseline
    end

    test "port and socket leak", %{instance: instance} do
      start_beamlens(instance, watchers: [:ports])
      await_ticks(instance, :ports, 8)

      # All 300 open before the next snapshot: opened over several ticks of a
      # loaded machine, the leak would be judged half-way.
      test = self()

      owner =
        between_snapshots(instance, [:ports], fn ->
          owner =
            spawn(fn ->
              sockets = for _ <- 1..300, do: elem(:gen_udp.open(0), 1)
              send(test, :opened)
              receive do: (:close -> Enum.each(sockets, &:gen_udp.close/1))
            end)

          on_exit(fn -> send(owner, :close) end)
          receive do: (:opened -> owner)
        end)

      leak = await_alert(instance, :ports, "port_leak")
      assert {"pid", inspect(owner)} in leak.entities
      # Waited for by type: the two fire on the same snapshots, in any order.
      assert await_alert(instance, :ports, "socket_growth").watcher == :ports
    end

    test "error-log burst", %{instance: instance} do
      start_beamlens(instance, watchers: [:logger])
      await_ticks(instance, :logger, 8)

      require Logger

      # 150 errors between two snapshots: the rate is judged over a 10 s
      # window, so paced out over a loaded machine's slow ticks it would be
      # a small rate; all at once it is many times the quiet baseline.
      between_snapshots(instance, [:logger], fn ->
        for i <- 1..150, do: Logger.error("payment gateway returned 502 for order #{i}")
      end)

      alert = await_alert(instance, :logger, "error_log_burst")
      assert alert.summary =~ "error log rate at"
      errors = alert.evidence.values["logger.errors"]
      assert errors.value >= errors.threshold
    end

    test "restart storm names the supervisor", %{instance: instance} do
      start_beamlens(instance, watchers: [:sup])
      await_ticks(instance, :sup, 8)

      children = [
        %{
          id: :flaky,
          start: {Task, :start_link, [fn -> Process.sleep(10) && exit(:boom) end]},
          restart: :permanent
        }
      ]

      # A host application whose tree holds the flaky child; Logger is
      # left as configured (on Elixir 1.15+ it logs no supervisor reports).
      Beamlens.TestApp.start!(:beamlens_test_flaky_app, children,
        strategy: :one_for_one,
        max_restarts: 1_000,
        max_seconds: 1,
        name: :beamlens_test_flaky_sup
      )

      alert = await_alert(instance, :sup, "restart_storm")
      assert {"supervisor", "beamlens_test_flaky_sup"} in alert.entities
      assert {"child", "flaky"} in alert.entities
      assert alert.summary =~ "most under beamlens_test_flaky_sup; child flaky"
    end

    test "GC pressure", %{instance: instance} do
      start_beamlens(instance, watchers: [:gc])
      {before, _, _} = :erlang.statistics(:garbage_collection)
      started = System.monotonic_time(:millisecond)
      await_ticks(instance, :gc, 8)
      {count, _, _} = :erlang.statistics(:garbage_collection)
      # Collections per second the VM made on its own so far, as the gate
      # learned them. Judged over a 10 s window, the fault is a fixed number
      # of collections made between two snapshots: ten times what the VM
      # makes on its own in that window, so eleven times its rate (between
      # 50k and 500k: at most some 7 s of a loaded 2-core machine).
      baseline = (count - before) * 1000 / max(System.monotonic_time(:millisecond) - started, 1)
      n = round(baseline * 10 * 10) |> max(50_000) |> min(500_000)
      per = div(n, System.schedulers_online()) + 1

      between_snapshots(instance, [:gc], fn ->
        1..System.schedulers_online()
        |> Enum.map(fn _ ->
          Task.async(fn -> Enum.each(1..per, fn _ -> :erlang.garbage_collect() end) end)
        end)
        |> Task.await_many(:infinity)
      end)

      alert = await_alert(instance, :gc, "gc_pressure")
      assert alert.summary =~ ~r/garbage collections|words reclaimed/
    end
  end

  describe "alert folding" do
    test "a repeat within the cooldown is folded, not fired again", %{instance: instance} do
      start_beamlens(instance,
        watchers: [
          [
            name: :beam,
            alert_cooldown: 60_000,
            gate: [cooldown_ms: 0, max_fires_per_hour: 10, warmup_ms: 0]
          ]
        ]
      )

      await_ticks(instance, :beam, 3)
      stuck = spawn(fn -> Process.sleep(:infinity) end)
      on_exit(fn -> Process.exit(stuck, :kill) end)

      for i <- 1..15_000, do: send(stuck, i)
      first = await_alert(instance, :beam, "mailbox_buildup")

      # Clear the fault, let the gate clear, then fault again.
      Process.exit(stuck, :kill)

      await_cleared(instance, :beam, "beam.max_message_queue")

      stuck2 = spawn(fn -> Process.sleep(:infinity) end)
      on_exit(fn -> Process.exit(stuck2, :kill) end)
      for i <- 1..15_000, do: send(stuck2, i)

      {_, _, _, %{alert: folded}} =
        await_event(
          instance,
          :beam,
          &match?({:telemetry, [:beamlens, :watcher, :alert_folded], %{occurrences: 2}, _}, &1)
        )

      assert folded.fingerprint == first.fingerprint
      assert folded.id == first.id

      refute_received {:telemetry, [:beamlens, :watcher, :alert_fired], _,
                       %{alert: %{anomaly_type: "mailbox_buildup"}}}
    end

    test "a clearly worse repeat escalates through the cooldown", %{instance: instance} do
      :ok =
        :telemetry.attach(
          "escalated-#{inspect(self())}",
          [:beamlens, :watcher, :alert_escalated],
          &Beamlens.WatcherCase.forward/4,
          self()
        )

      on_exit(fn -> :telemetry.detach("escalated-#{inspect(self())}") end)

      start_beamlens(instance,
        watchers: [
          [
            name: :beam,
            alert_cooldown: 900_000,
            gate: [cooldown_ms: 900_000, max_fires_per_hour: 3, warmup_ms: 0]
          ]
        ]
      )

      await_ticks(instance, :beam, 3)

      # A small build-up first (the "false alarm") ...
      small = spawn(fn -> Process.sleep(:infinity) end)
      on_exit(fn -> Process.exit(small, :kill) end)
      for i <- 1..15_000, do: send(small, i)
      first = await_alert(instance, :beam, "mailbox_buildup")
      assert first.severity == :warning
      Process.exit(small, :kill)

      await_cleared(instance, :beam, "beam.max_message_queue")

      # ... then a real one, inside both cooldowns: it is not folded away.
      big = spawn(fn -> Process.sleep(:infinity) end)
      on_exit(fn -> Process.exit(big, :kill) end)
      for i <- 1..150_000, do: send(big, i)

      second = await_alert(instance, :beam, "mailbox_buildup")
      assert second.severity == :critical
      assert second.fingerprint == first.fingerprint

      assert_receive {:telemetry, [:beamlens, :watcher, :alert_escalated], %{occurrences: 2},
                      %{alert: ^second, previous: ^first, from: :warning, to: :critical}},
                     1_000
    end
  end

  describe "state changes" do
    test "are emitted with a reason", %{instance: instance} do
      start_beamlens(instance, watchers: [:beam])
      await_ticks(instance, :beam, 3)
      stuck = spawn(fn -> Process.sleep(:infinity) end)
      on_exit(fn -> Process.exit(stuck, :kill) end)
      for i <- 1..120_000, do: send(stuck, i)

      {_, _, %{system_time: _}, %{reason: reason}} =
        await_event(
          instance,
          :beam,
          &match?({:telemetry, [:beamlens, :watcher, :state_changed], _, %{to: :critical}}, &1)
        )

      assert reason =~ "message queue holds"
    end
  end

  # Waits until the gate no longer sees `metric` firing, counted in the
  # watcher's snapshots. Not "the watcher is healthy": on a loaded machine
  # the real run queue may keep it at :warning.
  defp await_cleared(instance, watcher, metric, ticks \\ 40) do
    pid = Beamlens.Watcher.whereis(instance, watcher)
    limit = Beamlens.Watcher.info(pid).ticks + ticks
    do_await_cleared(instance, pid, watcher, metric, limit)
  end

  defp do_await_cleared(instance, pid, watcher, metric, limit) do
    taken = Beamlens.Watcher.info(pid).ticks
    status = Enum.find(Beamlens.status(instance: instance).watchers, &(&1.name == watcher))

    cond do
      metric not in status.firing ->
        :ok

      taken >= limit ->
        flunk("#{metric} still firing after #{taken} snapshots")

      true ->
        Process.sleep(20)
        do_await_cleared(instance, pid, watcher, metric, limit)
    end
  end
end
