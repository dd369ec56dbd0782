defmodule Beamlens.CoordinatorFloodTest do
  use Beamlens.CoordinatorCase, async: false

  @alerts 10_000
  @producers 10
  @max_alerts 1_000

  @tag timeout: 120_000
  test "a flood of 10,000 alerts leaves memory and mailbox bounded", context do
    attach_coordinator_events(context)
    name = start_coordinator(context, max_alerts: @max_alerts)
    pid = Process.whereis(name)
    sampler = spawn_link(fn -> sample(pid, {0, 0}) end)

    # Ten watchers firing as fast as they can: the real vocabulary on twenty
    # nodes, plus 3,000 distinct custom anomalies that cannot be folded.
    {:ok, rules} = Coordinator.causal_rules()
    types = rules |> Enum.flat_map(&(&1.lead ++ &1.lag)) |> Enum.uniq()
    nodes = for k <- 1..20, do: :"flood_#{k}@127.0.0.1"

    1..@producers
    |> Enum.map(fn p ->
      Task.async(fn ->
        for i <- 1..div(@alerts, @producers) do
          n = p * 100_000 + i

          alert =
            if rem(n, 2) == 0 do
              alert(Enum.at(types, rem(n, length(types))),
                node: Enum.at(nodes, rem(n, 20)),
                entities: [{"pid", "#PID<0.#{rem(n, 97)}.0>"}]
              )
            else
              alert("flood_#{rem(n, 3_000)}", watcher: :custom)
            end

          :ok = Coordinator.report_alert(name, alert)
        end
      end)
    end)
    |> Task.await_many(60_000)

    sync(name)
    send(sampler, {:stop, self()})
    assert_receive {:sampled, max_queue, max_memory}, 5_000

    dropped = count_dropped(0)
    {:ok, stats} = Coordinator.stats(name)

    # Every alert was either correlated or dropped (and reported as dropped).
    assert stats.received + dropped == @alerts
    assert stats.received >= div(@alerts, 2)

    # The mailbox never went past report_alert/2's bound (plus the alerts
    # producers had in flight when it was reached).
    assert max_queue <= 5_000 + @producers

    # Correlation state is bounded by :max_alerts, not by the flood.
    assert stats.live_members <= @max_alerts
    assert stats.retained_members <= @max_alerts
    assert stats.stored_alerts <= @max_alerts
    assert stats.seen_ids <= 4 * @max_alerts
    assert stats.evicted > 0

    for insight <- Coordinator.insights(name) do
      assert length(insight.alert_ids) <= 200
    end

    # The coordinator's own memory stays small, during the flood and after.
    :erlang.garbage_collect(pid)
    {:memory, memory} = Process.info(pid, :memory)
    assert memory < 16 * 1024 * 1024, "coordinator holds #{memory} bytes"
    assert max_memory < 64 * 1024 * 1024, "coordinator peaked at #{max_memory} bytes"

    IO.puts(
      "\nflood: #{stats.received} correlated, #{dropped} dropped, max mailbox #{max_queue}, " <>
        "peak memory #{div(max_memory, 1024)} KiB, after GC #{div(memory, 1024)} KiB, " <>
        "#{stats.live_members} live alerts, #{stats.evicted} evicted"
    )
  end

  defp sample(pid, {max_queue, max_memory}) do
    receive do
      {:stop, to} -> send(to, {:sampled, max_queue, max_memory})
    after
      1 ->
        case Process.info(pid, [:message_queue_len, :memory]) do
          [message_queue_len: queue, memory: memory] ->
            sample(pid, {max(max_queue, queue), max(max_memory, memory)})

          nil ->
            sample(pid, {max_queue, max_memory})
        end
    end
  end

  defp count_dropped(n) do
    receive do
      {:coordinator_event, :alert_dropped, %{count: 1}, %{reason: :overloaded}} ->
        count_dropped(n + 1)

      {:coordinator_event, _, _, _} ->
        count_dropped(n)
    after
      0 -> n
    end
  end
end
