# What the watchers cost the host, and how often they call the model.
#
#   bench/run watchers      (or: MIX_ENV=test BEAMLENS_NIF_PROFILE=release mix run bench/watchers.exs)
#
# 1. Host overhead: the same CPU-and-message workload runs for a fixed time
#    without BeamLens and with all seven watchers (rules-only, healthy),
#    alternating A/B/A/B; throughput, VM CPU time and memory are compared in
#    the same run. Watchers tick every second here, 30x the default rate, so
#    the overhead shown is an upper bound for the default 30 s interval.
# 2. Snapshot cost per domain: median of 15 snapshots + metrics, then the
#    :beam snapshot with 100,000 extra processes.
# 3. Model calls per watcher-hour in a healthy run, gated vs :always: all
#    seven watchers against a scripted provider on loopback, with time
#    compressed 300x (100 ms ticks stand for the default 30 s; the 1 h
#    heartbeat for 12 s).

alias Beamlens.{LLMFixtures, LoopbackServer}

Logger.configure(level: :error)

Code.require_file("support/bench.exs", __DIR__)

defmodule Bench do
  defdelegate median(list), to: Bench.Support
  def f(x, d \\ 1), do: :erlang.float_to_binary(x * 1.0, decimals: d)

  # `n` ping-pongs with term building, spread over 4 processes.
  def fixed(n) do
    :erlang.garbage_collect()
    parent = self()
    {runtime0, _} = :erlang.statistics(:runtime)
    t0 = System.monotonic_time(:millisecond)

    for _ <- 1..4 do
      spawn_link(fn ->
        for _ <- 1..div(n, 4) do
          echo = spawn(fn -> receive do: ({from, msg} -> send(from, {:echo, msg})) end)
          send(echo, {self(), Enum.map(1..50, &{&1, &1 * 2})})
          receive do: ({:echo, _} -> :ok)
        end

        send(parent, :done)
      end)
    end

    for _ <- 1..4, do: receive(do: (:done -> :ok))
    {runtime1, _} = :erlang.statistics(:runtime)

    %{
      cpu_ms: runtime1 - runtime0,
      wall_ms: System.monotonic_time(:millisecond) - t0,
      memory: :erlang.memory(:total)
    }
  end

  def beamlens_memory(instance) do
    registry = Module.concat(instance, Registry)
    sup = Process.whereis(instance)

    pids =
      [sup | Enum.map(Supervisor.which_children(sup), &elem(&1, 1))] |> Enum.filter(&is_pid/1)

    watchers = Registry.select(registry, [{{:_, :"$1", :_}, [], [:"$1"]}])

    (pids ++ watchers)
    |> Enum.uniq()
    |> Enum.map(fn pid ->
      case Process.info(pid, :memory) do
        {:memory, m} -> m
        _ -> 0
      end
    end)
    |> Enum.sum()
  end
end

watchers = [:beam, :ets, :gc, :logger, :ports, :sup, :system]

IO.puts("== 1. Host overhead: all seven watchers, 1 s ticks, rules-only, healthy")
# A fixed amount of work; its VM CPU time (all threads) and wall time are
# compared. CPU time is what the host pays and is less disturbed than
# throughput by other jobs on a shared machine. Three alternating rounds.
work = 150_000

{:ok, _} = Application.ensure_all_started(:os_mon)
_ = Bench.fixed(20_000)

rounds =
  for round <- 1..3 do
    without = Bench.fixed(work)

    {:ok, sup} =
      Beamlens.start_link(
        name: BenchBL,
        watchers: watchers,
        interval: 1_000,
        warmup: 3,
        provider: :none
      )

    Process.sleep(4_000)
    with_bl = Bench.fixed(work)
    bl_memory = Bench.beamlens_memory(BenchBL)
    Supervisor.stop(sup)
    Process.sleep(500)

    IO.puts(
      "   round #{round}: without #{without.cpu_ms} ms CPU / #{without.wall_ms} ms wall, " <>
        "with #{with_bl.cpu_ms} ms CPU / #{with_bl.wall_ms} ms wall"
    )

    %{without: without, with: with_bl, bl_memory: bl_memory}
  end

cpu_ratio = Bench.median(Enum.map(rounds, &(&1.with.cpu_ms / &1.without.cpu_ms)))
wall_ratio = Bench.median(Enum.map(rounds, &(&1.with.wall_ms / &1.without.wall_ms)))
mem_extra = Bench.median(Enum.map(rounds, &(&1.with.memory - &1.without.memory)))
bl_mem = Bench.median(Enum.map(rounds, & &1.bl_memory))

IO.puts("   CPU time of the workload with / without BeamLens: #{Bench.f(cpu_ratio, 3)}x (median)")
IO.puts("   wall time with / without: #{Bench.f(wall_ratio, 3)}x (median)")

IO.puts(
  "   extra VM memory: #{Bench.f(mem_extra / 1_048_576)} MiB; BeamLens processes: #{Bench.f(bl_mem / 1_048_576, 2)} MiB"
)

IO.puts("\n== 2. Snapshot cost per domain (median of 15, snapshot + metrics)")

{:ok, _} = Beamlens.LogStore.start_link()

baseline_us = Bench.median(for _ <- 1..15, do: elem(:timer.tc(fn -> :erlang.memory() end), 0))

for w <- watchers do
  domain = Beamlens.Options.builtin_watchers()[w]

  us =
    Bench.median(
      for _ <- 1..15 do
        {us, _} = :timer.tc(fn -> domain.metrics(domain.snapshot()) end)
        us
      end
    )

  note = if w == :beam, do: " (includes a 50 ms utilisation sample, waited in parallel)", else: ""

  IO.puts(
    "   #{String.pad_trailing(to_string(w), 7)} #{String.pad_leading(Bench.f(us / 1000, 2), 8)} ms#{note}"
  )
end

IO.puts("   baseline :erlang.memory/0: #{Bench.f(baseline_us / 1000, 3)} ms")

pids = for _ <- 1..100_000, do: spawn(fn -> receive do: (:stop -> :ok) end)

scan_us =
  Bench.median(for _ <- 1..5, do: elem(:timer.tc(fn -> Beamlens.Domain.Processes.scan(5) end), 0))

beam_us = Bench.median(for _ <- 1..5, do: elem(:timer.tc(&Beamlens.Domain.Beam.snapshot/0), 0))

list_us =
  Bench.median(for _ <- 1..5, do: elem(:timer.tc(fn -> length(:erlang.processes()) end), 0))

IO.puts(
  "   with #{length(:erlang.processes())} processes: :beam snapshot #{Bench.f(beam_us / 1000)} ms, process scan #{Bench.f(scan_us / 1000)} ms (baseline: listing the processes #{Bench.f(list_us / 1000)} ms, #{Bench.f(scan_us / list_us)}x)"
)

Enum.each(pids, &send(&1, :stop))

IO.puts("\n== 3. Model calls per watcher-hour, healthy run, time compressed 300x")

{:ok, server} = LoopbackServer.start_link(record: false)

calls = :counters.new(1, [])

LoopbackServer.set_handler(server, fn _request ->
  :counters.add(calls, 1, 1)
  LLMFixtures.tool_calls(:anthropic, [{"done", %{}}], usage: %{input: 2_000, output: 20})
end)

simulated_hours = 2
tick = 100
real_ms = round(simulated_hours * 3600 * 1000 / 300)

for mode <- [:gated, :always] do
  :counters.put(calls, 1, 0)

  {:ok, sup} =
    Beamlens.start_link(
      name: BenchLLM,
      watchers: watchers,
      interval: tick,
      warmup: 5,
      llm: mode,
      heartbeat: 12_000,
      token_budget: :infinity,
      provider: LLMFixtures.config(:anthropic, server),
      coordinator: false
    )

  before = Map.new(watchers, &{&1, Beamlens.LLM.usage({:watcher, &1}).requests})
  Process.sleep(real_ms)
  n = :counters.get(calls, 1)
  Supervisor.stop(sup)

  per_watcher =
    Enum.map_join(watchers, ", ", fn w ->
      "#{w} #{Beamlens.LLM.usage({:watcher, w}).requests - before[w]}"
    end)

  per_watcher_hour = n / length(watchers) / simulated_hours
  tokens = per_watcher_hour * 2_020

  IO.puts(
    "   #{String.pad_trailing(to_string(mode), 7)} #{n} calls in #{simulated_hours} simulated h: " <>
      "#{Bench.f(per_watcher_hour)} calls per watcher-hour (~#{Bench.f(tokens / 1000, 0)}k tokens/watcher-hour at 2k tokens a call)\n" <>
      "           by watcher: #{per_watcher}"
  )
end

IO.puts(
  "   (:always calls the model on every 30 s tick: 120 calls per watcher-hour by construction)"
)
