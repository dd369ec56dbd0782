defmodule Beamlens.SchedulerMonitor do
  @moduledoc """
  Runs a function under `:erlang.system_monitor/2` with `{:long_schedule,
  ms}` and returns the long schedules that a BeamLens NIF was part of (the
  process was scheduled in or out in `Beamlens.Native`). The system monitor
  is node-wide, so tests using this must not be async.
  """

  @doc "Runs `fun` and returns `{result, culprits}`."
  @spec long_schedules_in_nifs((() -> result), pos_integer()) :: {result, [list()]}
        when result: term()
  def long_schedules_in_nifs(fun, threshold_ms \\ 2) do
    previous = :erlang.system_monitor(self(), [{:long_schedule, threshold_ms}])

    try do
      result = fun.()
      Process.sleep(20)
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
      {:monitor, _who, :long_schedule, info} ->
        if in_native?(info), do: collect([info | acc]), else: collect(acc)
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
