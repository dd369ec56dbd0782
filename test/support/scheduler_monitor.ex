defmodule Beamlens.SchedulerMonitor do
  @moduledoc """
  Runs a function under `:erlang.system_monitor/2` with `{:long_schedule,
  ms}` and returns the long schedules that a BeamLens NIF was part of (the
  process was scheduled in or out in `Beamlens.Native`). The system monitor
  is node-wide, so tests using this must not be async.
  """

  @doc """
  Runs `fun` and returns `{result, culprits}`.

  On a loaded machine the OS preempts scheduler threads at random, and the
  monitor reports that as a long schedule of whatever was running, a NIF
  call too. A NIF that really holds its scheduler does so on every run, so
  when a run reports culprits `fun` runs again, up to `runs` times in all,
  and only the NIFs reported by every run are culprits (the last run's
  reports of them).
  """
  @spec long_schedules_in_nifs((() -> result), pos_integer(), pos_integer()) ::
          {result, [list()]}
        when result: term()
  def long_schedules_in_nifs(fun, threshold_ms \\ 2, runs \\ 3) do
    {result, culprits} = monitor(fun, threshold_ms)
    repeat(fun, threshold_ms, runs - 1, {result, culprits}, MapSet.new(culprits, &nif/1))
  end

  defp repeat(fun, threshold_ms, runs, {result, culprits}, nifs) do
    if runs == 0 or MapSet.size(nifs) == 0 do
      {result, Enum.filter(culprits, &MapSet.member?(nifs, nif(&1)))}
    else
      {result, culprits} = monitor(fun, threshold_ms)
      nifs = MapSet.intersection(nifs, MapSet.new(culprits, &nif/1))
      repeat(fun, threshold_ms, runs - 1, {result, culprits}, nifs)
    end
  end

  defp nif(info) do
    Enum.find_value(info, fn
      {key, {Beamlens.Native, _fun, _arity} = mfa} when key in [:in, :out] -> mfa
      _ -> nil
    end)
  end

  defp monitor(fun, threshold_ms) do
    {result, reports} =
      long_schedules(
        fn ->
          result = fun.()
          Process.sleep(20)
          result
        end,
        threshold_ms
      )

    {result, for({_who, info} <- reports, in_native?(info), do: info)}
  end

  @doc """
  Runs `fun` under the node's system monitor with `{:long_schedule,
  threshold_ms}` (the previous monitor is put back after) and returns
  `{result, reports}`, each report `{pid_or_port, info}` as the monitor
  sent it by the time `fun` returned, oldest first.
  """
  @spec long_schedules((() -> result), pos_integer()) :: {result, [{pid() | port(), list()}]}
        when result: term()
  def long_schedules(fun, threshold_ms) do
    previous = :erlang.system_monitor(self(), [{:long_schedule, threshold_ms}])

    try do
      result = fun.()
      {result, collect([])}
    after
      case previous do
        {pid, options} -> :erlang.system_monitor(pid, options)
        :undefined -> :erlang.system_monitor(:undefined)
      end
    end
  end

  defp collect(acc) do
    receive do
      {:monitor, who, :long_schedule, info} -> collect([{who, info} | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  defp in_native?(info) do
    Enum.any?(info, fn
      {key, {Beamlens.Native, _fun, _arity}} when key in [:in, :out] -> true
      _ -> false
    end)
  end
end
