defmodule Beamlens.GateSignalTest do
  # Issue 12's rules, pinned with the metric declarations the domains ship
  # and the gate's default settings; only the values are a simulated
  # workload, fed with a simulated clock (no sleeps).
  use ExUnit.Case, async: true

  alias Beamlens.Domain.{Beam, Logger, Sup}
  alias Beamlens.Gate

  @ticks [500, 30_000]

  # The metric as the domain declares it, with `value` instead of today's.
  defp declared(domain, name) do
    metric = domain.snapshot() |> domain.metrics() |> Enum.find(&(&1.name == name))
    assert metric, "#{inspect(domain)} declares no #{name}"
    fn value -> %{metric | value: value} end
  end

  # Feeds `value_at.(t)` every `tick` ms for `seconds`; returns the findings
  # that fired (new or escalated) with their time.
  defp run(metric, tick, seconds, value_at) do
    {:ok, gate} = Gate.new()

    for t <- 0..(seconds * 1000)//tick, reduce: [] do
      acc ->
        {:ok, verdict} = Gate.observe(gate, [metric.(value_at.(t))], t)
        acc ++ for f <- verdict.findings, f.status != "ongoing", do: Map.put(f, :at, t)
    end
  end

  setup_all do
    %{
      restarts: declared(Sup, "sup.restarts"),
      errors: declared(Logger, "logger.errors"),
      connection_errors: declared(Logger, "logger.connection_errors"),
      processes: declared(Beam, "beam.process_count")
    }
  end

  test "a single event never fires, in warm-up or after", m do
    for tick <- @ticks, name <- [:restarts, :errors, :connection_errors] do
      # One event 1 s after start (warm-up), one at 400 s.
      one = fn t -> Enum.count([1_000, 400_000], &(t >= &1)) end
      assert run(m[name], tick, 600, one) == [], "#{name} at a #{tick} ms tick"
    end
  end

  test "the same workload gets the same verdict at a 500 ms and a 30 s tick", m do
    # Healthy: one restart every 30 s. From 300 s, a child crashing every 50 ms.
    healthy = fn t -> div(t, 30_000) end
    storm = fn t -> healthy.(t) + div(max(t - 300_000, 0), 50) end

    for tick <- @ticks do
      assert run(m.restarts, tick, 600, healthy) == [], "healthy at #{tick} ms"

      assert [%{status: "new", severity: :critical, at: at} = f] =
               run(m.restarts, tick, 600, storm)

      assert at > 300_000 and at <= 300_000 + tick, "storm at #{tick} ms fired at #{at}"
      assert f.count >= 5
    end
  end

  test "a spike that decays is not a leak: the batch job of issue 12", m do
    # 3,000 workers every 10 s, all gone within 1.5 s; 99 processes otherwise.
    batch = fn t ->
      phase = rem(t, 10_000)
      if phase < 1_500, do: 99 + round(3_000 * (1 - phase / 1_500)), else: 99
    end

    for tick <- [500, 250] do
      assert run(m.processes, tick, 600, batch) == [], "at a #{tick} ms tick"
    end

    # The same workload plus a leak of 100 processes a second from 300 s.
    leaking = fn t -> batch.(t) + div(max(t - 300_000, 0), 10) end
    assert [%{status: "new", at: at} = f | _] = run(m.processes, 500, 600, leaking)
    assert f.value >= 2_099
    assert f.baseline == 99.0
    assert at < 300_000 + 30_000
  end

  test "a leak that starts at boot is found before any baseline exists", m do
    # 500 leaked processes a second from the first sample.
    leak = fn t -> 99 + div(t, 2) end
    assert [%{status: "new", baseline: 99.0, at: at} | _] = run(m.processes, 500, 120, leak)
    # Before the 60 s warm-up is over.
    assert at < 60_000
  end

  test "a real storm after a false alarm escalates through the 15-minute cooldown", m do
    # Five restarts in a second at 30 s, then one every 50 ms from 4 minutes.
    false_alarm = fn t -> min(div(max(t - 30_000, 0), 200), 5) end
    real = fn t -> false_alarm.(t) + div(max(t - 240_000, 0), 50) end

    assert [first, second] = run(m.restarts, 500, 300, real)
    assert first.status == "new" and first.at < 60_000
    assert second.status == "escalated" and second.at > 240_000
    assert second.value >= 2 * first.value

    # A repeat that is no worse stays folded in the gate's cooldown.
    again = fn t -> false_alarm.(t) + min(div(max(t - 240_000, 0), 200), 5) end
    assert [%{status: "new"}] = run(m.restarts, 500, 300, again)
  end
end
