defmodule Beamlens.Domain.Gc do
  @moduledoc """
  The `:gc` domain: garbage collections and words reclaimed per second, and
  the processes with the largest heaps.

  Reads `:erlang.statistics(:garbage_collection)` and per-process heap sizes;
  it never triggers a garbage collection.
  """

  use Beamlens.Domain

  alias Beamlens.Domain.Processes

  @impl true
  def name, do: :gc

  @impl true
  def description do
    "Garbage collection: collections and words reclaimed per second, processes with the largest heaps."
  end

  @impl true
  def snapshot do
    {count, words, _} = :erlang.statistics(:garbage_collection)
    word = :erlang.system_info(:wordsize)
    scan = Processes.scan(5)

    largest =
      scan.top_by_heap
      |> Enum.map(&Map.put(&1, :total_heap_bytes, (&1.total_heap_words || 0) * word))
      |> Enum.sort_by(& &1.total_heap_bytes, :desc)

    %{
      gc_count: count,
      words_reclaimed: words,
      word_size: word,
      largest_heaps: largest,
      largest_heap_bytes: largest |> Enum.map(& &1.total_heap_bytes) |> Enum.max(fn -> 0 end)
    }
  end

  @impl true
  def metrics(s) do
    culprit =
      case List.first(s.largest_heaps) do
        nil ->
          %{}

        top ->
          %{
            entities: Beamlens.Domain.process_entities(top),
            culprit:
              "#{Beamlens.Domain.describe_process(top)} has the largest heap " <>
                "(#{Beamlens.Domain.format(top.total_heap_bytes, :bytes)})"
          }
      end

    [
      %{
        name: "gc.collections",
        label: "garbage collections",
        value: s.gc_count,
        kind: :counter,
        window_ms: 10_000,
        min_count: 0,
        unit: :per_second,
        anomaly_type: "gc_pressure",
        min_rel: 2.0,
        min_abs: 500,
        sustain: 3
      }
      |> Map.merge(culprit),
      %{
        name: "gc.words_reclaimed",
        label: "words reclaimed by GC",
        value: s.words_reclaimed,
        kind: :counter,
        window_ms: 10_000,
        min_count: 0,
        unit: :per_second,
        anomaly_type: "gc_pressure",
        min_rel: 2.0,
        min_abs: 5_000_000,
        sustain: 3
      }
      |> Map.merge(culprit),
      %{
        name: "gc.largest_heap",
        label: "largest process heap",
        value: s.largest_heap_bytes,
        kind: :limit,
        unit: :bytes,
        anomaly_type: "large_heap_process",
        warn: 256 * 1024 * 1024,
        critical: 1024 * 1024 * 1024,
        sustain: 2
      }
      |> Map.merge(culprit)
    ]
  end

  @impl true
  def summarize(finding, %{name: "gc.largest_heap"} = metric) do
    "A process has a #{Beamlens.Domain.format(finding.value, :bytes)} heap, above the " <>
      "#{Beamlens.Domain.format(finding.threshold, metric.unit)} limit"
  end

  def summarize(finding, metric), do: Beamlens.Domain.default_summary(finding, metric)

  @impl true
  def hypothesis("gc_pressure"),
    do:
      "Processes allocate much more than usual, e.g. building large terms repeatedly or copying big messages."

  def hypothesis("large_heap_process"),
    do:
      "One process holds a very large heap: a big state, an accumulating list, or a long message queue."

  def hypothesis(_), do: nil

  @impl true
  def callbacks do
    [
      %{
        name: "stats",
        args: "()",
        doc: "Total garbage collections and words reclaimed since the VM started. Cheap.",
        fun: fn ->
          {count, words, _} = :erlang.statistics(:garbage_collection)
          %{gc_count: count, words_reclaimed: words}
        end
      },
      %{
        name: "top_heaps",
        args: "(n)",
        doc: "The n (max 50) processes with the largest heaps. One pass over all processes.",
        fun: fn n -> Beamlens.Domain.Beam.top_processes(n, "heap_size") end
      },
      %{
        name: "process_gc",
        args: "(pid)",
        doc:
          "GC settings and counters of one process (min_heap_size, fullsweep_after, minor_gcs, " <>
            "heap sizes). Read-only: does not collect.",
        fun: &process_gc/1
      }
    ]
  end

  @doc false
  @spec process_gc(String.t()) :: map()
  def process_gc(pid_string) when is_binary(pid_string) do
    with {:ok, pid} <- Beamlens.Domain.Beam.parse_pid(pid_string),
         {:garbage_collection, gc} <- :erlang.process_info(pid, :garbage_collection) do
      gc
      |> Keyword.take([:min_heap_size, :min_bin_vheap_size, :fullsweep_after, :minor_gcs])
      |> Map.new()
      |> Map.merge(%{
        heap_words: elem(:erlang.process_info(pid, :heap_size), 1),
        total_heap_words: elem(:erlang.process_info(pid, :total_heap_size), 1)
      })
    else
      :error -> raise ArgumentError, "not a pid: #{inspect(pid_string)}"
      _ -> %{pid: pid_string, alive: false}
    end
  end
end
