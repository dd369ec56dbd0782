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
      # which other jobs on a shared CI machine can load; everything inside
      # the VM must stay quiet.
      {host, vm} = Enum.split_with(collect_alerts(0), &(&1.watcher == :system))
      assert vm == []

      assert Enum.all?(
               host,
               &(&1.anomaly_type in ["cpu_load_high", "system_memory_high", "disk_usage_high"])
             )

      for info <- Beamlens.watchers(instance) do
        if info.name != :system do
          assert info.state in [:healthy, :observing],
                 "#{info.name}: #{info.state} (#{info.reason})"
        end

        assert info.last_error == nil
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

      alert = assert_alert(:ets, "ets_memory_growth")

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

      alert = assert_alert(:beam, "process_leak")
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

      alert = assert_alert(:beam, "mailbox_buildup")
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

      alert = assert_alert(:beam, "atom_growth")

      assert alert.evidence.values["beam.atom_count"].value >
               alert.evidence.values["beam.atom_count"].baseline
    end

    test "port and socket leak", %{instance: instance} do
      start_beamlens(instance, watchers: [:ports])
      await_ticks(instance, :ports, 8)

      owner =
        spawn(fn ->
          sockets = for _ <- 1..300, do: elem(:gen_udp.open(0), 1)
          receive do: (:close -> Enum.each(sockets, &:gen_udp.close/1))
        end)

      on_exit(fn -> send(owner, :close) end)

      alerts = collect_until(["port_leak", "socket_growth"], 5_000)
      assert %{"port_leak" => leak, "socket_growth" => _} = alerts
      assert {"pid", inspect(owner)} in leak.entities
    end

    test "error-log burst", %{instance: instance} do
      start_beamlens(instance, watchers: [:logger])
      await_ticks(instance, :logger, 8)

      require Logger

      burst =
        Task.async(fn ->
          for i <- 1..60 do
            Logger.error("payment gateway returned 502 for order #{i}")
            Process.sleep(5)
          end
        end)

      alert = assert_alert(:logger, "error_log_burst")
      Task.await(burst)
      assert alert.summary =~ "error log rate at"
      assert alert.evidence.values["logger.errors"].value > 5
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

      alert = assert_alert(:sup, "restart_storm")
      assert {"supervisor", "beamlens_test_flaky_sup"} in alert.entities
      assert {"child", "flaky"} in alert.entities
      assert alert.summary =~ "most under beamlens_test_flaky_sup; child flaky"
    end

    test "GC pressure", %{instance: instance} do
      start_beamlens(instance, watchers: [:gc])
      await_ticks(instance, :gc, 8)

      # One churning process per scheduler: what the rest of the VM collects
      # (other tests' leftovers on a loaded machine) must not hide it.
      churn =
        for _ <- 1..System.schedulers_online() do
          spawn(fn ->
            Stream.repeatedly(fn -> Enum.to_list(1..2_000) |> Enum.map(&{&1, &1}) end)
            |> Stream.run()
          end)
        end

      on_exit(fn -> Enum.each(churn, &Process.exit(&1, :kill)) end)

      alert = assert_alert(:gc, "gc_pressure", 8_000)
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
      first = assert_alert(:beam, "mailbox_buildup")

      # Clear the fault, let the gate clear, then fault again.
      Process.exit(stuck, :kill)

      assert_receive {:telemetry, [:beamlens, :watcher, :state_changed], _,
                      %{watcher: :beam, to: :healthy}},
                     5_000

      stuck2 = spawn(fn -> Process.sleep(:infinity) end)
      on_exit(fn -> Process.exit(stuck2, :kill) end)
      for i <- 1..15_000, do: send(stuck2, i)

      assert_receive {:telemetry, [:beamlens, :watcher, :alert_folded], %{occurrences: 2},
                      %{alert: folded}},
                     5_000

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
      first = assert_alert(:beam, "mailbox_buildup")
      assert first.severity == :warning
      Process.exit(small, :kill)

      assert_receive {:telemetry, [:beamlens, :watcher, :state_changed], _,
                      %{watcher: :beam, to: :healthy}},
                     5_000

      # ... then a real one, inside both cooldowns: it is not folded away.
      big = spawn(fn -> Process.sleep(:infinity) end)
      on_exit(fn -> Process.exit(big, :kill) end)
      for i <- 1..150_000, do: send(big, i)

      second = assert_alert(:beam, "mailbox_buildup")
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

      assert_receive {:telemetry, [:beamlens, :watcher, :state_changed], %{system_time: _},
                      %{watcher: :beam, to: :critical, reason: reason}},
                     5_000

      assert reason =~ "message queue holds"
    end
  end

  defp collect_until(types, timeout) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_collect(MapSet.new(types), %{}, deadline)
  end

  defp do_collect(wanted, acc, deadline) do
    if MapSet.subset?(wanted, MapSet.new(Map.keys(acc))) do
      acc
    else
      remaining = max(deadline - System.monotonic_time(:millisecond), 0)

      receive do
        {:telemetry, [:beamlens, :watcher, :alert_fired], _, %{alert: alert}} ->
          do_collect(wanted, Map.put(acc, alert.anomaly_type, alert), deadline)
      after
        remaining -> acc
      end
    end
  end
end
