defmodule Beamlens.RuntimeTest do
  # The system monitor is node-wide and the busy test fills every job slot.
  use ExUnit.Case, async: false

  alias Beamlens.{Error, Native, Runtime, SchedulerMonitor}

  test "status/0 reports the configured runtime" do
    assert {:ok, status} = Runtime.status()
    assert status.worker_threads == 2
    assert status.job_capacity == 4096
    assert status.jobs_in_flight >= 0
    assert Runtime.loaded?()
  end

  describe "async jobs" do
    test "1,000 concurrent jobs each reply exactly once" do
      refs =
        for i <- 1..1_000 do
          {:ok, ref} = Native.async_echo(%{"i" => i}, rem(i, 20))
          {ref, i}
        end

      replies = collect_replies(MapSet.new(refs, &elem(&1, 0)), %{}, 5_000)

      assert map_size(replies) == 1_000

      for {ref, i} <- refs do
        assert replies[ref] == [{:ok, %{"i" => i}}]
      end

      # Nothing arrives twice.
      assert_no_job_reply(100)
    end

    test "a panicking job replies with an error and the VM carries on" do
      {:ok, ref} = Native.async_panic("deliberate panic in a job")

      assert {:error, %Error{kind: :panic, message: message}} = Runtime.await(ref, 2_000)
      assert message =~ "deliberate panic in a job"
      refute_receive {^ref, _}, 50

      {:ok, ref} = Native.async_echo("still alive", 0)
      assert Runtime.await(ref) == {:ok, "still alive"}
    end

    test "a job replies to the process that started it" do
      parent = self()

      child =
        spawn(fn ->
          {:ok, ref} = Native.async_echo(:from_child, 0)
          send(parent, {:child_result, Runtime.await(ref)})
        end)

      assert_receive {:child_result, {:ok, "from_child"}}, 2_000
      refute Process.alive?(child)
      assert_no_job_reply(50)
    end

    test "a job whose caller has exited finishes without harm" do
      pid = spawn(fn -> {:ok, _} = Native.async_echo(1, 50) end)
      ref = Process.monitor(pid)
      assert_receive {:DOWN, ^ref, _, _, _}
      Process.sleep(100)
      {:ok, ref} = Native.async_echo(2, 0)
      assert Runtime.await(ref) == {:ok, 2}
    end

    test "overload turns into {:error, :busy} instead of an unbounded queue" do
      {:ok, %{job_capacity: capacity}} = Runtime.status()

      started =
        Enum.reduce_while(1..(capacity + 10), [], fn _, acc ->
          case Native.async_echo(nil, 300) do
            {:ok, ref} -> {:cont, [ref | acc]}
            {:error, :busy} -> {:halt, acc}
          end
        end)

      assert length(started) <= capacity
      assert Native.async_echo(nil, 0) == {:error, :busy}
      assert {:ok, %{jobs_busy_rejected: rejected}} = Runtime.status()
      assert rejected >= 1

      replies = collect_replies(MapSet.new(started), %{}, 5_000)
      assert map_size(replies) == length(started)

      {:ok, ref} = Native.async_echo(:free_again, 0)
      assert Runtime.await(ref) == {:ok, "free_again"}
    end

    test "await/2 times out with an error when no reply comes" do
      assert {:error, %Error{kind: :timeout}} = Runtime.await(make_ref(), 10)
    end
  end

  describe "panics in NIF bodies" do
    test "become error values" do
      assert {:error, {:panic, "native code panicked: in a nif", %{}}} =
               Native.sync_panic("in a nif")

      assert Process.alive?(self())
    end
  end

  describe "term conversion" do
    test "plain terms round-trip; atoms, tuples and pids become readable data" do
      value = %{
        :atom_key => [:an_atom, true, false, nil, 1.5, -7, "text"],
        "tuple" => {1, :two},
        "pid" => self(),
        "big" => 18_446_744_073_709_551_615,
        "bigger" => 18_446_744_073_709_551_616,
        Beamlens => Beamlens.Error
      }

      {:ok, ref} = Native.async_echo(value, 0)
      assert {:ok, echoed} = Runtime.await(ref)

      assert echoed["atom_key"] == ["an_atom", true, false, nil, 1.5, -7, "text"]
      assert echoed["tuple"] == [1, "two"]

      assert echoed["pid"] == inspect(self())

      assert echoed["big"] == 18_446_744_073_709_551_615
      assert echoed["bigger"] == "18446744073709551616"
      assert echoed["Beamlens"] == "Beamlens.Error"
    end

    test "deeply nested input is refused with an error naming the argument" do
      deep = Enum.reduce(1..100, [], fn _, acc -> [acc] end)

      assert {:error, {:bad_argument, message, %{"argument" => "value"}}} =
               Native.async_echo(deep, 0)

      assert message =~ "nested deeper than 32 levels"
    end

    test "nesting is walked without recursion, even on a dirty scheduler" do
      # 32 levels (16 maps each holding a list) is the limit; the walk uses a
      # heap stack, so a dirty scheduler's small C stack is never at risk.
      ok = Enum.reduce(1..15, %{"x" => 1}, fn _, acc -> %{"a" => [acc]} end)
      assert {:ok, json} = Native.json_encode(ok, 100_000)
      assert json =~ ~s({"a":[{"a":[)

      deep = Enum.reduce(1..5_000, %{"x" => 1}, fn _, acc -> %{"a" => [acc]} end)
      assert {:error, {:bad_argument, message, _}} = Native.json_encode(deep, 100_000)
      assert message =~ "nested deeper than 32 levels"
    end

    test "out-of-range arguments are refused with a readable message" do
      assert {:error, {:bad_argument, message, _}} = Native.async_echo(1, 3_600_000)
      assert message == "invalid argument delay_ms: must be at most 60000, got 3600000"
    end
  end

  describe "scheduler safety" do
    test "the dirty CPU example hashes large binaries off the normal schedulers" do
      data = :binary.copy(<<"0123456789abcdef">>, 4 * 1024 * 1024)

      {_, culprits} =
        SchedulerMonitor.long_schedules_in_nifs(fn ->
          assert {:ok, hash} = Native.dirty_checksum(data)
          assert is_integer(hash)
        end)

      assert culprits == [], "long schedules in BeamLens NIFs: #{inspect(culprits)}"

      assert Native.dirty_checksum("foobar") == {:ok, 0x85944171F73967E8}
    end

    test "1,000 jobs in flight cause no long schedule in a BeamLens NIF" do
      {_, culprits} =
        SchedulerMonitor.long_schedules_in_nifs(fn ->
          tasks =
            for _ <- 1..4 do
              Task.async(fn ->
                refs = for i <- 1..250, do: elem(Native.async_echo(%{"n" => i}, 5), 1)
                collect_replies(MapSet.new(refs), %{}, 5_000)
              end)
            end

          for task <- tasks, do: assert(map_size(Task.await(task)) == 250)
        end)

      assert culprits == [], "long schedules in BeamLens NIFs: #{inspect(culprits)}"
    end
  end

  defp assert_no_job_reply(timeout) do
    receive do
      {ref, result} when is_reference(ref) -> flunk("unexpected reply #{inspect(result)}")
    after
      timeout -> :ok
    end
  end

  defp collect_replies(pending, acc, timeout) do
    if MapSet.size(pending) == 0 do
      acc
    else
      receive do
        {ref, result} when is_reference(ref) ->
          acc = Map.update(acc, ref, [result], &(&1 ++ [result]))
          collect_replies(MapSet.delete(pending, ref), acc, timeout)
      after
        timeout -> flunk("#{MapSet.size(pending)} jobs never replied")
      end
    end
  end
end
