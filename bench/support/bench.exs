# Helpers shared by the benchmarks in bench/. Each script requires this
# file (`Code.require_file("support/bench.exs", __DIR__)`); bench/run only
# runs bench/*.exs, so this file is never run on its own.
#
# The machine is shared and noisy: figures are medians of several runs,
# and each script compares them with a baseline measured in the same run.

defmodule Bench.Support do
  @moduledoc false

  @doc "The median time in microseconds of `runs` calls of `fun`, each after a garbage collection."
  def median(runs, fun) when is_integer(runs) and is_function(fun, 0) do
    for _ <- 1..runs do
      :erlang.garbage_collect()
      {us, _} = :timer.tc(fun)
      us
    end
    |> median()
  end

  @doc "The median of a list of numbers (the upper one of an even count)."
  def median(list) when is_list(list), do: list |> Enum.sort() |> Enum.at(div(length(list), 2))

  @doc "As `median/2` for a function that measures (and returns) its own time."
  def median_measured(runs, fun), do: median(for _ <- 1..runs, do: fun.())

  @doc "The time of one call of `fun` in microseconds."
  def timed(fun) do
    {us, _} = :timer.tc(fun)
    us
  end
end
