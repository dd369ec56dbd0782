defmodule Beamlens.Domain.Ets do
  @moduledoc """
  The `:ets` domain: number of tables against the limit, total ETS memory and
  its share of VM memory, and the largest tables with their growth.

  Only table metadata is read (`:ets.info/2`), never table contents.
  """

  use Beamlens.Domain

  alias Beamlens.Domain

  @top 10

  @impl true
  def name, do: :ets

  @impl true
  def description do
    "ETS tables: count vs limit, total memory and share of VM memory, largest tables and their growth."
  end

  @impl true
  def snapshot do
    word = :erlang.system_info(:wordsize)
    tables = Enum.flat_map(:ets.all(), &table_info(&1, word))
    total_ets = Enum.reduce(tables, 0, &(&1.memory + &2))
    total = :erlang.memory(:total)

    %{
      table_count: length(tables),
      table_limit: :erlang.system_info(:ets_limit),
      memory: total_ets,
      vm_memory: total,
      memory_share: if(total > 0, do: total_ets / total, else: 0.0),
      largest: tables |> Enum.sort_by(& &1.memory, :desc) |> Enum.take(@top)
    }
  end

  @impl true
  def metrics(s) do
    tables =
      s.largest
      |> Enum.take(5)
      |> Enum.map(fn table ->
        %{
          name: "ets.table.#{table.name}.memory",
          label: "memory of ETS table #{table.name}",
          value: table.memory,
          kind: :growth,
          window_ms: 10_000,
          unit: :bytes,
          anomaly_type: "ets_table_growth",
          min_rel: 1.0,
          min_abs: 16 * 1024 * 1024,
          entities: table_entities(table),
          culprit: describe_table(table)
        }
      end)

    # The largest table is the likely culprit of total growth.
    top =
      case s.largest do
        [table | _] -> %{entities: table_entities(table), culprit: describe_table(table)}
        [] -> %{entities: [], culprit: nil}
      end

    [
      %{
        name: "ets.memory_share",
        label: "ETS share of total memory",
        value: s.memory_share,
        kind: :growth,
        window_ms: 10_000,
        unit: :ratio,
        anomaly_type: "ets_memory_growth",
        min_rel: 0.5,
        min_abs: 0.1,
        critical_rel: 2.0,
        entities: [{"resource", "memory"} | top.entities],
        culprit: top.culprit
      },
      %{
        name: "ets.memory",
        label: "ETS memory",
        value: s.memory,
        kind: :growth,
        window_ms: 10_000,
        unit: :bytes,
        anomaly_type: "ets_memory_growth",
        min_rel: 1.0,
        min_abs: 32 * 1024 * 1024,
        entities: [{"resource", "memory"} | top.entities],
        culprit: top.culprit
      },
      %{
        name: "ets.table_usage",
        label: "ETS table count vs limit",
        value: s.table_count / s.table_limit,
        kind: :limit,
        unit: :ratio,
        anomaly_type: "ets_table_count_high",
        warn: 0.7,
        critical: 0.9,
        sustain: 1
      },
      %{
        name: "ets.table_count",
        label: "ETS table count",
        value: s.table_count,
        kind: :growth,
        window_ms: 10_000,
        unit: :count,
        anomaly_type: "ets_table_count_high",
        min_rel: 0.5,
        min_abs: 500
      }
      | tables
    ]
  end

  defp table_entities(table) do
    [{"ets_table", table.name}] ++
      if(table[:owner_name], do: [{"process", table.owner_name}], else: []) ++
      [{"pid", table.owner}]
  end

  defp describe_table(table) do
    owner = if table[:owner_name], do: "#{table.owner_name} (#{table.owner})", else: table.owner

    "ets table #{table.name} owned by #{owner}, #{Domain.format(table.memory, :bytes)}"
  end

  @impl true
  def summarize(finding, %{name: "ets.memory_share"}) do
    baseline =
      if finding.baseline, do: ", baseline #{Domain.format(finding.baseline, :ratio)}", else: ""

    "ETS memory at #{Domain.format(finding.value, :ratio)} of total memory" <> baseline
  end

  def summarize(finding, metric), do: Domain.default_summary(finding, metric)

  @impl true
  def hypothesis("ets_memory_growth"),
    do: "An ETS table is growing without eviction, typically a cache or session store."

  def hypothesis("ets_table_growth"),
    do:
      "This table gains entries faster than it loses them; check its owner's eviction or TTL logic."

  def hypothesis("ets_table_count_high"),
    do:
      "Tables are created and not deleted, e.g. one table per request or per process that is never cleaned up."

  def hypothesis(_), do: nil

  @impl true
  def callbacks do
    [
      %{
        name: "tables",
        args: "(n, by)",
        doc:
          "The n (max 100) largest ETS tables by \"memory\" (bytes) or \"size\" (objects): " <>
            "name, size, memory, owner, type, protection. Metadata only. Cheap.",
        fun: &tables/2
      },
      %{
        name: "table_info",
        args: "(name)",
        doc:
          "Metadata of one table by name (as listed by tables): size, memory, owner, type, " <>
            "keypos, protection, concurrency flags, compression. Never contents.",
        fun: &table_info_by_name/1
      }
    ]
  end

  @doc false
  @spec tables(number(), String.t()) :: [map()]
  def tables(n, by) when is_number(n) and by in ["memory", "size"] do
    word = :erlang.system_info(:wordsize)
    key = if by == "memory", do: :memory, else: :size

    :ets.all()
    |> Enum.flat_map(&table_info(&1, word))
    |> Enum.sort_by(&Map.fetch!(&1, key), :desc)
    |> Enum.take(n |> trunc() |> max(1) |> min(100))
  end

  def tables(n, by),
    do:
      raise(
        ArgumentError,
        "expected tables(n, \"memory\" | \"size\"), got: (#{inspect(n)}, #{inspect(by)})"
      )

  @doc false
  @spec table_info_by_name(String.t()) :: map()
  def table_info_by_name(name) when is_binary(name) do
    word = :erlang.system_info(:wordsize)

    Enum.find_value(:ets.all(), fn tab ->
      case table_info(tab, word) do
        [%{name: ^name} = info] -> Map.merge(info, extra_info(tab))
        _ -> nil
      end
    end) || raise ArgumentError, "no ETS table named #{inspect(name)}"
  end

  defp table_info(tab, word) do
    case :ets.info(tab) do
      :undefined ->
        []

      info ->
        [
          %{
            name: table_name(tab, info[:name], info[:named_table]),
            size: info[:size],
            memory: info[:memory] * word,
            owner: inspect(info[:owner]),
            owner_name: registered_name(info[:owner]),
            type: Atom.to_string(info[:type]),
            protection: Atom.to_string(info[:protection])
          }
        ]
    end
  end

  defp registered_name(pid) when is_pid(pid) do
    case Process.info(pid, :registered_name) do
      {:registered_name, name} when is_atom(name) -> Domain.id(name)
      _ -> nil
    end
  end

  defp registered_name(_), do: nil

  defp extra_info(tab) do
    info = :ets.info(tab) || []

    %{
      keypos: info[:keypos],
      read_concurrency: info[:read_concurrency],
      write_concurrency: info[:write_concurrency] == true,
      compressed: info[:compressed],
      heir: inspect(info[:heir])
    }
  end

  defp table_name(_tab, name, true), do: Domain.id(name)
  defp table_name(tab, name, _), do: "#{Domain.id(name)} #{inspect(tab)}"
end
