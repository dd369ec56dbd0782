defmodule HostApp.VmWatchersTest do
  # The :system and :sup watchers inside a real host app (Elixir 1.15+
  # prunes the code path to declared applications and filters OTP's
  # supervisor reports).
  use Beamlens.WatcherCase, async: false

  @moduletag timeout: 60_000

  test "the :system watcher reads the host through :os_mon", %{instance: instance} do
    start_beamlens(instance, watchers: [:system], warmup: 3)
    info = await_ticks(instance, :system, 4, 20_000)
    refute_received {:telemetry, [:beamlens, :watcher, :snapshot_failed], _, _}
    assert info.ticks >= 4

    s = Beamlens.Domain.System.snapshot()
    assert s.cores >= 1
    assert s.memory_used_ratio > 0 and s.memory_used_ratio < 1
    assert [%{mount: _, used_ratio: _} | _] = s.disks
  end

  test "the :sup watcher sees a restart storm in the host app", %{instance: instance} do
    start_beamlens(instance, watchers: [:sup])
    await_ticks(instance, :sup, 8, 20_000)

    flaky = %{
      id: :payment_gateway,
      start: {Task, :start_link, [fn -> Process.sleep(10) && exit(:gateway_unreachable) end]},
      restart: :permanent
    }

    # A supervisor of the app's own tree whose child cannot start.
    gateways = %{
      id: HostApp.GatewaySupervisor,
      start:
        {Supervisor, :start_link,
         [
           [flaky],
           [
             strategy: :one_for_one,
             max_restarts: 1_000,
             max_seconds: 1,
             name: HostApp.GatewaySupervisor
           ]
         ]},
      type: :supervisor
    }

    {:ok, _} = Supervisor.start_child(HostApp.Supervisor, gateways)

    on_exit(fn ->
      Supervisor.terminate_child(HostApp.Supervisor, HostApp.GatewaySupervisor)
      Supervisor.delete_child(HostApp.Supervisor, HostApp.GatewaySupervisor)
    end)

    alert = assert_alert(:sup, "restart_storm", 20_000)
    assert {"supervisor", "HostApp.GatewaySupervisor"} in alert.entities
    assert alert.summary =~ "most under HostApp.GatewaySupervisor"
    assert alert.evidence.values["sup.restarts"].value > 0
  end
end
