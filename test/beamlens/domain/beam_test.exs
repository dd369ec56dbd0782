defmodule Beamlens.Domain.BeamTest do
  use ExUnit.Case, async: false
  import Beamlens.Eventually

  alias Beamlens.Domain.Beam

  # Polls every 20 ms, up to 30 s: state that settles asynchronously takes
  # longer on a loaded machine, and only a broken build reaches the bound.
  @attempts 1_500

  test "snapshot has memory, counts against limits and top processes" do
    s = Beam.snapshot()
    assert s.memory.total > 0
    assert s.process_count > 0 and s.process_limit > s.process_count
    assert s.atom_count < s.atom_limit
    assert %{total: total, schedulers: [_ | _]} = s.scheduler_utilization
    assert is_float(total) and total >= 0 and total <= 1, inspect(s.scheduler_utilization)
    assert [%{pid: "#PID<" <> _, memory: m} | _] = s.top_by_heap
    assert m > 0

    for metric <- Beam.metrics(s) do
      assert is_binary(metric.name) and is_number(metric.value) and
               metric.kind in [:limit, :level, :counter, :growth]
    end
  end

  test "sampling utilisation leaves scheduler_wall_time as it was" do
    # A sampler of an earlier test's watcher may still be finishing.
    assert eventually(fn -> :erlang.statistics(:scheduler_wall_time) == :undefined end, @attempts)
    _ = Beam.snapshot()
    assert %{total: _} = Beam.scheduler_utilization(20)
    assert eventually(fn -> :erlang.statistics(:scheduler_wall_time) == :undefined end, @attempts)
  end

  test "top processes never expose messages, and rank by the requested key" do
    hoarder = spawn(fn -> Process.sleep(:infinity) end)
    for i <- 1..500, do: send(hoarder, {:secret_token, "sk-live-#{i}"})
    on_exit(fn -> Process.exit(hoarder, :kill) end)

    [top | _] = Beam.top_processes(3, "message_queue_len")
    assert top.pid == inspect(hoarder)
    assert top.message_queue_len == 500
    refute inspect(Beam.top_processes(50, "memory")) =~ "sk-live"
    refute inspect(Beam.process_info(inspect(hoarder))) =~ "sk-live"

    assert_raise ArgumentError, ~r/unknown ordering "bogus"/, fn ->
      Beam.top_processes(3, "bogus")
    end

    assert_raise ArgumentError, ~r/not a pid/, fn -> Beam.process_info("hello") end
    {dead, ref} = spawn_monitor(fn -> :ok end)
    assert_receive {:DOWN, ^ref, :process, ^dead, :normal}, 5_000
    assert Beam.process_info(inspect(dead)) == %{pid: inspect(dead), alive: false}
    assert_raise ArgumentError, ~r/not a pid/, fn -> Beam.process_info("<0.99999999.0>") end
  end

  # The cost is compared with a baseline measured in the same run, the
  # least any look at every process costs (one process_info call per
  # process; the snapshot ranks three orderings), so that a loaded or slow
  # machine slows both alike.
  test "a snapshot with 100,000 processes costs a few plain passes over the process table" do
    parent = self()

    pids =
      for _ <- 1..100_000 do
        spawn(fn -> receive do: (:stop -> send(parent, :stopped)) end)
      end

    on_exit(fn -> Enum.each(pids, &Process.exit(&1, :kill)) end)

    baseline = fn ->
      Enum.each(:erlang.processes(), &Process.info(&1, :message_queue_len))
    end

    # Best of five, interleaved: the machine is shared, the cost is the minimum.
    {snapshot_us, baseline_us} =
      for _ <- 1..5, reduce: {nil, nil} do
        {best_snapshot, best_baseline} ->
          {us, s} = :timer.tc(&Beam.snapshot/0)
          assert s.process_count >= 100_000
          {base_us, _} = :timer.tc(baseline)
          {min(best_snapshot, us), min(best_baseline, base_us)}
      end

    assert snapshot_us < 8 * baseline_us,
           "snapshot #{div(snapshot_us, 1000)} ms, plain pass #{div(baseline_us, 1000)} ms"
  end
end
