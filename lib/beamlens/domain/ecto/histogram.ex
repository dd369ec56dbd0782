defmodule Beamlens.Domain.Ecto.Histogram do
  @moduledoc """
  Log-linear latency histograms in microseconds, as
  `Beamlens.Domain.Ecto.TelemetryStore` keeps them in atomics: bucket 0
  holds values under 1 us, then 4 buckets per power of two from 1 us up to
  2^27 us (134 s), so a percentile read from the buckets is within 12% of
  the true value. Pure functions; a histogram is a list of `size/0` counts.
  """

  @octaves 27
  @size 1 + @octaves * 4

  @typedoc "Counts per bucket, `size/0` of them."
  @type t :: [non_neg_integer()]

  @typedoc "Latency figures in milliseconds, `nil` when the histogram is empty."
  @type summary :: %{
          p50: float() | nil,
          p95: float() | nil,
          p99: float() | nil,
          max: float() | nil,
          avg: float() | nil
        }

  @doc """
  The number of buckets.

      iex> Beamlens.Domain.Ecto.Histogram.size()
      109
  """
  @spec size() :: pos_integer()
  def size, do: @size

  @doc """
  The bucket of a duration in microseconds.

      iex> Enum.map([0, 1, 2, 3, 1_000, 10_000_000_000], &Beamlens.Domain.Ecto.Histogram.bucket/1)
      [0, 1, 5, 7, 40, 108]
  """
  @spec bucket(integer()) :: non_neg_integer()
  def bucket(us) when us < 1, do: 0

  def bucket(us) do
    octave = min(bit_length(us) - 1, @octaves - 1)
    base = Bitwise.bsl(1, octave)
    sub = min(div((us - base) * 4, base), 3)
    1 + octave * 4 + sub
  end

  @doc """
  The middle of a bucket, in microseconds.

      iex> Beamlens.Domain.Ecto.Histogram.value(0)
      0.5
      iex> Beamlens.Domain.Ecto.Histogram.value(40)
      960.0
  """
  @spec value(non_neg_integer()) :: float()
  def value(0), do: 0.5

  def value(bucket) do
    octave = div(bucket - 1, 4)
    sub = rem(bucket - 1, 4)
    base = Bitwise.bsl(1, octave)
    base * (1 + (sub + 0.5) / 4)
  end

  defp bit_length(n), do: bit_length(n, 0)
  defp bit_length(0, acc), do: acc
  defp bit_length(n, acc), do: bit_length(Bitwise.bsr(n, 1), acc + 1)

  @doc """
  The p50, p95, p99, max and average of a histogram in milliseconds, given
  the sum of its values in microseconds.

      iex> hist = Beamlens.Domain.Ecto.Histogram.add(Beamlens.Domain.Ecto.Histogram.new(), [1_000, 1_000, 1_000, 9_000])
      iex> Beamlens.Domain.Ecto.Histogram.summary(hist, 12_000)
      %{p50: 0.96, p95: 9.22, p99: 9.22, max: 9.22, avg: 3.0}
      iex> Beamlens.Domain.Ecto.Histogram.summary(Beamlens.Domain.Ecto.Histogram.new(), 0)
      %{p50: nil, p95: nil, p99: nil, max: nil, avg: nil}
  """
  @spec summary(t(), number()) :: summary()
  def summary(hist, sum_us) do
    count = Enum.sum(hist)

    if count == 0 do
      %{p50: nil, p95: nil, p99: nil, max: nil, avg: nil}
    else
      %{
        p50: ms(percentile(hist, count, 0.50)),
        p95: ms(percentile(hist, count, 0.95)),
        p99: ms(percentile(hist, count, 0.99)),
        max: ms(hist |> highest_bucket() |> value()),
        avg: ms(sum_us / count)
      }
    end
  end

  @doc """
  The share of the `total` values at or above `us` microseconds, rounded
  to three decimals, or `nil` when `total` is 0.

      iex> hist = Beamlens.Domain.Ecto.Histogram.add(Beamlens.Domain.Ecto.Histogram.new(), [500, 20_000, 200_000])
      iex> Beamlens.Domain.Ecto.Histogram.share_at_least(hist, 10_000, 3)
      0.667
  """
  @spec share_at_least(t(), non_neg_integer(), non_neg_integer()) :: float() | nil
  def share_at_least(_hist, _us, 0), do: nil

  def share_at_least(hist, us, total) do
    over = hist |> Enum.drop(bucket(us)) |> Enum.sum()
    Float.round(over / total, 3)
  end

  @doc "An empty histogram."
  @spec new() :: t()
  def new, do: List.duplicate(0, @size)

  @doc "`hist` with the durations `values` (microseconds) counted."
  @spec add(t(), [integer()]) :: t()
  def add(hist, values) do
    counts = Enum.frequencies_by(values, &bucket/1)
    hist |> Enum.with_index() |> Enum.map(fn {n, b} -> n + Map.get(counts, b, 0) end)
  end

  @doc "Microseconds in milliseconds, rounded to two decimals."
  @spec ms(number()) :: float()
  def ms(us), do: Float.round(us / 1_000, 2)

  defp percentile(hist, count, p) do
    rank = max(ceil(p * count), 1)

    hist
    |> Enum.with_index()
    |> Enum.reduce_while(0, fn {n, bucket}, seen ->
      if seen + n >= rank, do: {:halt, {:bucket, bucket}}, else: {:cont, seen + n}
    end)
    |> case do
      {:bucket, bucket} -> value(bucket)
      _ -> 0.0
    end
  end

  defp highest_bucket(hist) do
    hist
    |> Enum.with_index()
    |> Enum.reduce(0, fn {n, bucket}, acc -> if n > 0, do: bucket, else: acc end)
  end
end
