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

    {count, tops} =
      Enum.reduce(:erlang.processes(), {0, empty}, fn pid, {count, tops} ->
        {count + 1, Enum.reduce(@orderings, tops, &consider(&2, &1, pid, n))}
      end)

    top =
      Map.new(tops, fn {key, {_, entries}} -> {key, entries |> Enum.reverse() |> details()} end)

    %{
      count: count,
      max_message_queue_len: top_value(top.message_queue_len, :message_queue_len),
      top_by_message_queue: top.message_queue_len,
      top_by_heap: top.heap_size,
      top_by_reductions: top.reductions
    }
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
