defmodule Beamlens.Domain.Processes do
  # Bounded scans of the process table, shared by the :beam and :gc domains.
  #
  # One pass reads a few cheap per-process counters with single-item
  # `process_info/2` calls (about 0.1 µs each; the list form and `:memory`
  # cost 10x more) and keeps only the top N of each ordering. Full details are
  # then read for those few processes alone. Message contents, dictionaries
  # and states are never read.
  @moduledoc false

  @orderings [:message_queue_len, :heap_size, :reductions]
  @max_n 50
  @group_sample 2_000

  @doc false
  def orderings, do: Enum.map(@orderings, &Atom.to_string/1) ++ ["memory"]

  @doc """
  Scans every process once. Returns the count, the largest message queue,
  and for each ordering the top `n` processes with details.
  """
  @spec scan(pos_integer()) :: map()
  def scan(n \\ 5) do
    n = min(n, @max_n)
    empty = Map.new(@orderings, &{&1, {0, []}})

    # Groups are counted on an even sample of at most @group_sample
    # processes and scaled back, so they cost little on a large node.
    stride = max(1, div(:erlang.system_info(:process_count), @group_sample))

    {count, tops, groups} =
      Enum.reduce(:erlang.processes(), {0, empty, %{}}, fn pid, {count, tops, groups} ->
        tops = Enum.reduce(@orderings, tops, &consider(&2, &1, pid, n))
        groups = if rem(count, stride) == 0, do: group(groups, pid, stride), else: groups
        {count + 1, tops, groups}
      end)

    top =
      Map.new(tops, fn {key, {_, entries}} -> {key, entries |> Enum.reverse() |> details()} end)

    %{
      count: count,
      max_message_queue_len: top_value(top.message_queue_len, :message_queue_len),
      top_by_message_queue: top.message_queue_len,
      top_by_heap: top.heap_size,
      top_by_reductions: top.reductions,
      top_groups: top_groups(groups, 3)
    }
  end

  @doc """
  The `n` largest groups of processes that run the same function, with the
  same parent (the process that spawned them, OTP 25+), among the processes
  for which `include?.(pid)` is true. Used for the culprit of a process leak
  (all processes) and of a run-queue saturation (runnable processes only).
  """
  @spec groups(pos_integer(), (pid() -> boolean())) :: [map()]
  def groups(n, include? \\ fn _ -> true end) do
    :erlang.processes()
    |> Enum.reduce(%{}, fn pid, acc -> if include?.(pid), do: group(acc, pid, 1), else: acc end)
    |> top_groups(n)
  end

  @doc "True when the process is running or waiting to run."
  @spec runnable?(pid()) :: boolean()
  def runnable?(pid) do
    case :erlang.process_info(pid, :status) do
      {:status, status} when status in [:running, :runnable] -> true
      _ -> false
    end
  end

  @doc """
  The `n` processes holding the most off-heap (reference-counted) binary
  memory, read from each process's garbage-collection info (no collection
  is triggered). One pass over all processes.
  """
  @spec top_binary_holders(pos_integer()) :: [map()]
  def top_binary_holders(n) do
    word = :erlang.system_info(:wordsize)

    {_, entries} =
      Enum.reduce(:erlang.processes(), {0, []}, fn pid, {min, entries} ->
        case :erlang.process_info(pid, :garbage_collection_info) do
          {:garbage_collection_info, info} ->
            bytes = ((info[:bin_vheap_size] || 0) + (info[:bin_old_vheap_size] || 0)) * word
            keep_top({min, entries}, {bytes, pid}, n)

          _ ->
            {min, entries}
        end
      end)

    entries
    |> Enum.reverse()
    |> Enum.flat_map(fn {bytes, pid} ->
      case info(pid) do
        nil -> []
        details -> [Map.put(details, :binary_bytes, bytes)]
      end
    end)
  end

  defp keep_top({_min, entries}, entry, n) when length(entries) < n do
    entries = insert(entry, entries)
    {elem(hd(entries), 0), entries}
  end

  defp keep_top({min, entries}, {value, _} = entry, _n) when value > min do
    entries = insert(entry, tl(entries))
    {elem(hd(entries), 0), entries}
  end

  defp keep_top(acc, _entry, _n), do: acc

  # At most @max_groups distinct groups are counted; later ones are ignored,
  # so a scan of a million processes keeps a bounded map.
  @max_groups 5_000

  defp group(groups, pid, weight) do
    with {:current_function, mfa} <- :erlang.process_info(pid, :current_function),
         {:parent, parent} <- :erlang.process_info(pid, :parent) do
      key = {mfa, parent}

      case groups do
        %{^key => {count, sample}} -> %{groups | key => {count + weight, sample}}
        _ when map_size(groups) < @max_groups -> Map.put(groups, key, {weight, pid})
        _ -> groups
      end
    else
      _ -> groups
    end
  rescue
    # `:parent` is unknown before OTP 25.
    ArgumentError -> groups
  end

  defp top_groups(groups, n) do
    groups
    |> Enum.sort_by(fn {_, {count, _}} -> count end, :desc)
    |> Enum.take(n)
    |> Enum.map(fn {{mfa, parent}, {count, sample}} ->
      %{
        count: count,
        function: mfa(mfa),
        parent: if(is_pid(parent), do: inspect(parent)),
        parent_name: if(is_pid(parent), do: registered_name(parent)),
        sample: inspect(sample),
        sample_name: registered_name(sample)
      }
    end)
  end

  defp registered_name(pid) do
    case :erlang.process_info(pid, :registered_name) do
      {:registered_name, name} when is_atom(name) -> Beamlens.Domain.id(name)
      _ -> nil
    end
  end

  @doc """
  The top `n` processes by one ordering (`"memory"`, `"message_queue_len"`,
  `"heap_size"` or `"reductions"`). For `"memory"` the candidates come from
  the heap-size ordering and are re-ranked by total memory.
  """
  @spec top(pos_integer(), String.t()) :: {:ok, [map()]} | {:error, String.t()}
  def top(n, by) when is_integer(n) and n > 0 do
    n = min(n, @max_n)

    case by do
      "memory" ->
        {_, entries} =
          Enum.reduce(:erlang.processes(), {0, []}, &consider_one(&2, :heap_size, &1, n * 2))

        {:ok, entries |> details() |> Enum.sort_by(& &1.memory, :desc) |> Enum.take(n)}

      by when by in ["message_queue_len", "heap_size", "reductions"] ->
        key = String.to_existing_atom(by)
        {_, entries} = Enum.reduce(:erlang.processes(), {0, []}, &consider_one(&2, key, &1, n))
        {:ok, entries |> Enum.reverse() |> details()}

      other ->
        {:error,
         "unknown ordering #{inspect(other)}; use one of: #{Enum.join(orderings(), ", ")}"}
    end
  end

  def top(n, _by), do: {:error, "n must be a positive integer, got: #{inspect(n)}"}

  @doc """
  Details of one process: no message contents, no dictionary, no state.
  """
  @spec info(pid()) :: map() | nil
  def info(pid) when is_pid(pid) do
    keys = [
      :registered_name,
      :current_function,
      :memory,
      :message_queue_len,
      :reductions,
      :heap_size,
      :total_heap_size,
      :status,
      :links,
      :trap_exit
    ]

    case :erlang.process_info(pid, keys) do
      :undefined ->
        nil

      info ->
        %{
          pid: inspect(pid),
          name: name(info[:registered_name]),
          current_function: mfa(info[:current_function]),
          memory: info[:memory],
          message_queue_len: info[:message_queue_len],
          reductions: info[:reductions],
          heap_words: info[:heap_size],
          total_heap_words: info[:total_heap_size],
          status: Atom.to_string(info[:status]),
          links: length(info[:links] || []),
          trap_exit: info[:trap_exit]
        }
    end
  end

  defp consider(tops, key, pid, n) do
    Map.update!(tops, key, &consider_one(&1, key, pid, n))
  end

  # Keeps the top n as an ascending list of {value, pid}, with the current
  # minimum cached so that most processes are rejected with one comparison.
  defp consider_one({min, entries}, key, pid, n) do
    case :erlang.process_info(pid, key) do
      {^key, value} when length(entries) < n ->
        entries = insert({value, pid}, entries)
        {elem(hd(entries), 0), entries}

      {^key, value} when value > min ->
        entries = insert({value, pid}, tl(entries))
        {elem(hd(entries), 0), entries}

      _ ->
        {min, entries}
    end
  end

  defp insert(entry, []), do: [entry]
  defp insert({v, _} = entry, [{w, _} | _] = list) when v <= w, do: [entry | list]
  defp insert(entry, [head | tail]), do: [head | insert(entry, tail)]

  defp details(entries) do
    entries
    |> Enum.map(fn {_value, pid} -> info(pid) end)
    |> Enum.reject(&is_nil/1)
  end

  defp top_value([first | _], key), do: Map.fetch!(first, key)
  defp top_value([], _key), do: 0

  defp name([]), do: nil
  defp name(nil), do: nil
  defp name(name), do: Beamlens.Domain.id(name)

  defp mfa({m, f, a}), do: "#{Beamlens.Domain.id(m)}.#{f}/#{a}"
  defp mfa(_), do: nil
end
