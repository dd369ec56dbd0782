defmodule Beamlens.Domain.Ecto.SlotRingTest do
  use ExUnit.Case, async: true

  alias Beamlens.Domain.Ecto.SlotRing

  # 4 slots of 100 ms; time is passed in, so nothing waits.
  defp ring do
    ring = SlotRing.new(4, 400)
    {prepared, wait} = SlotRing.prepare(ring, -1, 0)
    assert {prepared, wait} == {1, 100}
    {ring, prepared}
  end

  test "counts queries, errors, slow ones, time sums and histograms in the window" do
    {ring, _} = ring()
    SlotRing.record(ring, 10, {1_500, 1_000, 400, 100}, false, false)
    SlotRing.record(ring, 20, {200_000, 190_000, nil, nil}, true, true)

    w = SlotRing.read(ring, 50)
    assert %{queries: 2, errors: 1, slow: 1, queued: 1, window_ms: 50} = w
    assert %{sum_total_us: 201_500, sum_query_us: 191_000, sum_queue_us: 400} = w
    assert w.sum_decode_us == 100
    assert Enum.sum(w.total_hist) == 2
    assert Enum.sum(w.query_hist) == 2
    assert Enum.sum(w.queue_hist) == 1
  end

  test "a slot is only read while its tick is within the window" do
    {ring, prepared} = ring()
    SlotRing.record(ring, 10, {1_000, nil, nil, nil}, false, false)

    # The owner prepares the next tick at each tick.
    prepared =
      Enum.reduce(1..2, prepared, fn tick, prepared ->
        {next, _wait} = SlotRing.prepare(ring, prepared, tick * 100)
        SlotRing.record(ring, tick * 100 + 10, {1_000, nil, nil, nil}, false, false)
        next
      end)

    assert %{queries: 3, window_ms: 250} = SlotRing.read(ring, 250)

    # At 300 ms the owner prepares tick 4, which reuses the slot of tick 0:
    # the window now holds ticks 1 to 3.
    assert {4, 100} = SlotRing.prepare(ring, prepared, 300)
    SlotRing.record(ring, 310, {1_000, nil, nil, nil}, false, false)
    assert %{queries: 3, window_ms: 320} = SlotRing.read(ring, 320)
  end

  test "after a delay the owner clears the slots of the ticks it missed" do
    {ring, prepared} = ring()
    SlotRing.record(ring, 10, {1_000, nil, nil, nil}, false, false)
    SlotRing.record(ring, 110, {1_000, nil, nil, nil}, false, false)

    # The owner was late by many ticks: nothing stale is read.
    {prepared, wait} = SlotRing.prepare(ring, prepared, 1_030)
    assert prepared == 11
    assert wait == 70
    assert SlotRing.read(ring, 1_030).queries == 0

    SlotRing.record(ring, 1_040, {1_000, nil, nil, nil}, false, false)
    assert SlotRing.read(ring, 1_050).queries == 1
  end
end
