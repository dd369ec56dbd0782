# The busy-but-healthy app of issue 12, rules only, with the shipped gate
# defaults and a 500 ms tick, then two real faults; prints every alert with
# its time. Run from the repository root:
#
#   MIX_ENV=test BEAMLENS_NIF_PROFILE=debug mix run bench/gate_busy_app.exs [healthy_seconds]
#
# Goal: no alert while healthy (after or during warm-up), then one alert
# per fault (plus escalations), each within seconds.
require Logger

healthy_s = String.to_integer(List.first(System.argv()) || "120")
Logger.configure(level: :warning)
# Quiet console; BeamLens' own log handlers still see every event.
:logger.remove_handler(:default)
if function_exported?(Logger, :remove_backend, 1), do: Logger.remove_backend(:console)

t0 = System.monotonic_time(:millisecond)
now = fn -> System.monotonic_time(:millisecond) - t0 end
me = self()

:telemetry.attach(
  "busy-bench",
  [:beamlens, :watcher, :alert_fired],
  fn _, _, %{alert: a}, _ -> send(me, {:alert, now.(), a}) end,
  nil
)

# A cache filled for 20 s, then cleared.
spawn(fn ->
  table = :ets.new(:busy_cache, [:public, :named_table])

  Stream.iterate(0, &(&1 + 1))
  |> Enum.each(fn i ->
    if rem(i, 200) == 0, do: :ets.delete_all_objects(table)
    for j <- 1..100, do: :ets.insert(table, {{i, j}, :binary.copy("x", 64)})
    Process.sleep(100)
  end)
end)

# A batch job: 3,000 short-lived workers every 10 s, all gone within 1.5 s.
spawn(fn ->
  Stream.repeatedly(fn ->
    for _ <- 1..3_000, do: spawn(fn -> Process.sleep(:rand.uniform(1_500)) end)
    Process.sleep(10_000)
  end)
  |> Stream.run()
end)

# Steady warnings, an occasional error, allocation churn, sockets opened and closed.
spawn(fn ->
  Stream.iterate(0, &(&1 + 1))
  |> Enum.each(fn i ->
    Logger.warning("slow upstream #{i}")
    if rem(i, 35) == 0, do: Logger.error("payment declined #{i}")
    _ = Enum.map(1..5_000, &{&1, &1})
    Process.sleep(200)
  end)
end)

spawn(fn ->
  Stream.repeatedly(fn ->
    sockets = for _ <- 1..20, do: elem(:gen_udp.open(0), 1)
    Process.sleep(500)
    Enum.each(sockets, &:gen_udp.close/1)
    Process.sleep(500)
  end)
  |> Stream.run()
end)

# One worker restarted every 30 s.
{:ok, _} =
  Supervisor.start_link(
    [
      %{
        id: :busy_worker,
        start: {Task, :start_link, [fn -> Process.sleep(30_000) && exit(:recycle) end]},
        restart: :permanent
      }
    ],
    strategy: :one_for_one,
    name: :busy_worker_sup
  )

{:ok, _} =
  Supervisor.start_link(
    [
      {Beamlens,
       name: BusyBench,
       provider: :none,
       interval: 500,
       watchers: [:beam, :ets, :gc, :logger, :ports, :sup]}
    ],
    strategy: :one_for_one
  )

collect = fn until ->
  Stream.repeatedly(fn ->
    receive do
      {:alert, at, a} -> {at, a}
    after
      max(until - now.(), 0) -> :done
    end
  end)
  |> Enum.take_while(&(&1 != :done))
end

show = fn alerts ->
  for {at, a} <- alerts,
      do: IO.puts("  #{at} ms  #{a.watcher}/#{a.anomaly_type} #{a.severity}: #{a.summary}")
end

healthy = collect.(healthy_s * 1_000)
IO.puts("healthy #{healthy_s} s: #{length(healthy)} alerts")
show.(healthy)

# Fault 1: a restart storm (a child crashing every 50 ms).
storm_at = now.()

{:ok, storm} =
  Supervisor.start_link(
    [
      %{
        id: :flaky,
        start: {Task, :start_link, [fn -> Process.sleep(50) && exit(:boom) end]},
        restart: :permanent
      }
    ],
    strategy: :one_for_one,
    max_restarts: 100_000,
    max_seconds: 1,
    name: :busy_flaky_sup
  )

storm_alerts = collect.(storm_at + 20_000)
Supervisor.stop(storm)
IO.puts("restart storm from #{storm_at} ms: #{length(storm_alerts)} alerts")
show.(storm_alerts)

# Fault 2: a process leak (500 processes a second that never exit).
leak_at = now.()

spawn(fn ->
  Stream.repeatedly(fn ->
    for _ <- 1..50, do: spawn(fn -> Process.sleep(:infinity) end)
    Process.sleep(100)
  end)
  |> Stream.run()
end)

leak_alerts = collect.(leak_at + 20_000)
IO.puts("process leak from #{leak_at} ms: #{length(leak_alerts)} alerts")
show.(leak_alerts)
