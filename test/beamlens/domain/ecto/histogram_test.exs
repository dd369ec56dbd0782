defmodule Beamlens.Domain.Ecto.HistogramTest do
  use ExUnit.Case, async: true

  alias Beamlens.Domain.Ecto.Histogram

  doctest Histogram

  test "every bucket's middle falls back into it, and buckets grow with the value" do
    # From 4 us on, each bucket is at least 1 us wide.
    for bucket <- Histogram.bucket(4)..(Histogram.size() - 1) do
      assert Histogram.bucket(trunc(Histogram.value(bucket))) == bucket
    end

    buckets = Enum.map(0..1_000_000//997, &Histogram.bucket/1)
    assert buckets == Enum.sort(buckets)
  end

  test "a percentile read from the buckets is within 12% of the value (from 1 ms: figures are in ms)" do
    for us <- [999, 1_500, 12_345, 77_777, 5_000_000, 100_000_000] do
      %{p50: p50} = Histogram.summary(Histogram.add(Histogram.new(), [us]), us)
      assert abs(p50 * 1_000 - us) / us <= 0.125, "#{us} us read as #{p50} ms"
    end
  end

  test "values beyond the last octave land in the last bucket" do
    assert Histogram.bucket(1_000_000_000_000) == Histogram.size() - 1
  end

  test "percentiles take the rank, and the share counts from the value's bucket" do
    hist = Histogram.add(Histogram.new(), List.duplicate(1_000, 95) ++ List.duplicate(100_000, 5))
    summary = Histogram.summary(hist, 95 * 1_000 + 5 * 100_000)
    assert summary.p50 < 1.2
    assert summary.p95 < 1.2
    assert summary.p99 > 90
    assert summary.max == summary.p99
    assert summary.avg == 5.95
    assert Histogram.share_at_least(hist, 50_000, 100) == 0.05
    assert Histogram.share_at_least(hist, 50_000, 0) == nil
  end
end
