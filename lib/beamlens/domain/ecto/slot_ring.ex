defmodule Beamlens.Domain.Ecto.SlotRing do
  @moduledoc """
  The rolling window of `Beamlens.Domain.Ecto.TelemetryStore`: a ring of
  `slots` time slots of `slot_ms` each in one `:atomics` array, written by
  the querying processes without locks or messages and read by anyone.

  A slot holds its tick (epoch), query count, errors, slow queries, sums of
  query, queue, total and decode time, the count of queries with a queue
  time, and three `Beamlens.Domain.Ecto.Histogram`s (query, queue and total
  time). The owner clears the slot of the next tick ahead of time
  (`prepare/3`), so a writer never has to; a reader only sums the slots
  whose epoch is within the window.

  Time is passed in: `now` is milliseconds since the ring's origin (any
  monotonic clock), which keeps these functions testable without waiting.
  """

  alias Beamlens.Domain.Ecto.Histogram

  # Fields of a slot in the atomics array.
  @epoch 0
  @count 1
  @errors 2
  @slow 3
  @sum_query 4
  @sum_queue 5
  @sum_total 6
  @sum_decode 7
  @queued 8
  @hist 9
  @buckets Histogram.size()
  @slot_size @hist + 3 * @buckets

  @typedoc """
  A ring: the atomics array, the number of slots and their length. The
  store keeps these keys in its own shared map.
  """
  @type t :: %{
          required(:atomics) => :atomics.atomics_ref(),
          required(:slots) => pos_integer(),
          required(:slot_ms) => pos_integer(),
          optional(atom()) => term()
        }

  @typedoc "One query: total, query, queue and decode time in microseconds (`nil` when not measured)."
  @type sample ::
          {non_neg_integer(), non_neg_integer() | nil, non_neg_integer() | nil,
           non_neg_integer() | nil}

  @typedoc "The sums over the window, see `read/2`."
  @type totals :: %{
          queries: non_neg_integer(),
          errors: non_neg_integer(),
          slow: non_neg_integer(),
          queued: non_neg_integer(),
          sum_query_us: non_neg_integer(),
          sum_queue_us: non_neg_integer(),
          sum_total_us: non_neg_integer(),
          sum_decode_us: non_neg_integer(),
          query_hist: Histogram.t(),
          queue_hist: Histogram.t(),
          total_hist: Histogram.t(),
          window_ms: pos_integer()
        }

  @doc "A new ring of `slots` slots spanning `window_ms`."
  @spec new(pos_integer(), pos_integer()) :: t()
  def new(slots, window_ms) do
    %{
      atomics: :atomics.new(slots * @slot_size, signed: false),
      slots: slots,
      slot_ms: max(div(window_ms, slots), 1)
    }
  end

  @doc """
  Counts one query at `now` (runs in the querying process): a few atomic
  additions, no allocation beyond the sample.
  """
  @spec record(t(), integer(), sample(), boolean(), boolean()) :: :ok
  def record(ring, now, {total_us, query_us, queue_us, decode_us}, error?, slow?) do
    a = ring.atomics
    base = rem(div(now, ring.slot_ms), ring.slots) * @slot_size + 1
    :atomics.add(a, base + @count, 1)
    :atomics.add(a, base + @sum_total, total_us)
    :atomics.add(a, base + @hist + 2 * @buckets + Histogram.bucket(total_us), 1)

    if query_us do
      :atomics.add(a, base + @sum_query, query_us)
      :atomics.add(a, base + @hist + Histogram.bucket(query_us), 1)
    end

    if queue_us do
      :atomics.add(a, base + @queued, 1)
      :atomics.add(a, base + @sum_queue, queue_us)
      :atomics.add(a, base + @hist + @buckets + Histogram.bucket(queue_us), 1)
    end

    if decode_us, do: :atomics.add(a, base + @sum_decode, decode_us)
    if error?, do: :atomics.add(a, base + @errors, 1)
    if slow?, do: :atomics.add(a, base + @slow, 1)
    :ok
  end

  @doc """
  Clears the slot of the tick after `now` ahead of time, and the slots of
  the ticks missed since the tick `prepared` (the one the last call
  returned; `-1` at first), losing the few queries already counted in the
  current one rather than mixing in stale ones. Returns the tick prepared
  and the milliseconds until the next tick, when the owner calls again.
  """
  @spec prepare(t(), integer(), integer()) :: {integer(), pos_integer()}
  def prepare(ring, prepared, now) do
    tick = div(now, ring.slot_ms)
    from = max(prepared + 1, tick + 2 - ring.slots)

    for t <- from..(tick + 1)//1 do
      base = rem(t, ring.slots) * @slot_size + 1
      for field <- 1..(@slot_size - 1), do: :atomics.put(ring.atomics, base + field, 0)
      :atomics.put(ring.atomics, base + @epoch, t + 1)
    end

    {tick + 1, max(ring.slot_ms - rem(now, ring.slot_ms), 1)}
  end

  @doc """
  The sums over the slots of the window that ends at `now`: counts, time
  sums in microseconds, the three histograms and `:window_ms`, the time
  the window covers (less than the full window right after the start).
  """
  @spec read(t(), integer()) :: totals()
  def read(ring, now) do
    a = ring.atomics
    tick = div(now, ring.slot_ms)

    bases =
      for back <- 0..(ring.slots - 1),
          t = tick - back,
          t >= 0,
          base = rem(t, ring.slots) * @slot_size + 1,
          :atomics.get(a, base + @epoch) == t + 1,
          do: base

    sum = fn field -> Enum.reduce(bases, 0, &(:atomics.get(a, &1 + field) + &2)) end

    hist = fn offset ->
      for bucket <- 0..(@buckets - 1) do
        Enum.reduce(bases, 0, &(:atomics.get(a, &1 + @hist + offset + bucket) + &2))
      end
    end

    %{
      queries: sum.(@count),
      errors: sum.(@errors),
      slow: sum.(@slow),
      queued: sum.(@queued),
      sum_query_us: sum.(@sum_query),
      sum_queue_us: sum.(@sum_queue),
      sum_total_us: sum.(@sum_total),
      sum_decode_us: sum.(@sum_decode),
      query_hist: hist.(0),
      queue_hist: hist.(@buckets),
      total_hist: hist.(2 * @buckets),
      window_ms: max(min(now, (ring.slots - 1) * ring.slot_ms + rem(now, ring.slot_ms)), 1)
    }
  end
end
