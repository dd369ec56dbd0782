defmodule Beamlens.AsyncCaller do
  @moduledoc """
  A process that starts a run with `Beamlens.Lua.eval_async/3` and then
  only waits, for the tests of what happens to a run when its caller is
  killed.
  """

  @doc """
  Spawns the caller; returns its pid once `eval_async/3` has answered
  `{:ok, ref}` (it raises in the caller otherwise, and this flunks).
  """
  @spec start(String.t(), map(), keyword()) :: pid()
  def start(code, callbacks, opts) do
    test = self()

    caller =
      spawn(fn ->
        {:ok, _ref} = Beamlens.Lua.eval_async(code, callbacks, opts)
        send(test, {:async_caller_started, self()})
        Process.sleep(:infinity)
      end)

    receive do
      {:async_caller_started, ^caller} -> caller
    after
      5_000 -> raise ExUnit.AssertionError, "eval_async/3 did not start in #{inspect(caller)}"
    end
  end
end
