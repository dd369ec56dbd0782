defmodule Beamlens.Lua.Result do
  @moduledoc """
  The full result of a Lua run, returned by `Beamlens.Lua.eval/3` and
  `Beamlens.Lua.eval_async/3` with `result: :full`.

    * `:value` - what the script returned, as a plain Elixir term (see
      `Beamlens.Lua` for the conversion).
    * `:output` - everything the script printed with `print/1`, one line per
      call, arguments separated by tabs (`""` if nothing).
    * `:stats` - what the run used: `:instructions` (interrupt checks, see
      the `:max_instructions` option), `:callbacks` (calls made), `:memory`
      (bytes held by the Lua state at the end), `:duration_us` (wall time).
  """

  @type stats :: %{
          instructions: non_neg_integer(),
          callbacks: non_neg_integer(),
          memory: non_neg_integer(),
          duration_us: non_neg_integer()
        }

  @type t :: %__MODULE__{value: term(), output: String.t(), stats: stats()}

  @enforce_keys [:value]
  defstruct [:value, output: "", stats: %{}]

  @stat_keys %{
    "instructions" => :instructions,
    "callbacks" => :callbacks,
    "memory" => :memory,
    "duration_us" => :duration_us
  }

  @doc false
  @spec stats_from_native(map()) :: map()
  def stats_from_native(map) when is_map(map) do
    for {native, key} <- @stat_keys, Map.has_key?(map, native), into: %{} do
      {key, Map.fetch!(map, native)}
    end
  end
end
