defmodule Beamlens.Eventually do
  @moduledoc """
  Polls a condition every 20 ms until it holds or the attempts run out;
  returns whether it held. For state that settles asynchronously (slots
  released, a flag reverted by an exiting process).
  """

  @spec eventually((() -> boolean()), non_neg_integer()) :: boolean()
  def eventually(fun, attempts \\ 50) do
    cond do
      fun.() -> true
      attempts == 0 -> false
      true -> Process.sleep(20) && eventually(fun, attempts - 1)
    end
  end
end
