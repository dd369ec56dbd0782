defmodule Beamlens.LuaError do
  @moduledoc """
  Why a Lua script run by `Beamlens.Lua` did not produce a value.

  The message is plain text meant for the model (or person) that wrote the
  script: the line number when there is one, what went wrong, and for broken
  limits what to do instead. For example:

      line 3: attempt to index nil with 'memory'
      line 1: syntax error: Expected 'end' (to close 'function' at line 1), got <eof>
      the script returned no value; end it with a `return` statement, ...

  Fields:

    * `:kind` - one of the atoms below.
    * `:message` - the text above (`Exception.message/1` returns it as is).
    * `:line` - the script line the error points at, or `nil`.
    * `:output` - what the script printed before it failed (`""` if nothing).
    * `:stats` - what the run used, when it ran: `%{instructions:
      non_neg_integer, callbacks: non_neg_integer, memory: bytes,
      duration_us: non_neg_integer}`; `%{}` when it never started.

  Kinds:

    * `:syntax` - the script does not compile.
    * `:runtime` - the script raised an error (including `error(...)`).
    * `:timeout` - the run went over its `:timeout` (wall time, callbacks
      included).
    * `:instruction_limit`, `:memory_limit`, `:output_limit` (the result or
      the `print` output), `:callback_limit` - a limit was broken.
    * `:callback_error` - a callback raised, exited or returned data that
      cannot be converted, and the script did not catch it.
    * `:callback_timeout` - a callback did not answer within
      `:callback_timeout`.
    * `:no_return` - the script ended without `return`ing a value.
    * `:cancelled` - the run was stopped because its caller exited.
    * `:busy` - too many Lua runs (or native jobs) are in flight; retry later.
    * `:bad_argument` - the code, callbacks or options are invalid.
    * `:panic`, `:shutdown`, `:nif_not_loaded`, `:internal` - failures of
      BeamLens itself, not of the script.
  """

  @type kind ::
          :syntax
          | :runtime
          | :timeout
          | :instruction_limit
          | :memory_limit
          | :output_limit
          | :callback_limit
          | :callback_error
          | :callback_timeout
          | :no_return
          | :cancelled
          | :busy
          | :bad_argument
          | :panic
          | :shutdown
          | :nif_not_loaded
          | :internal

  @type stats :: %{
          optional(:instructions) => non_neg_integer(),
          optional(:callbacks) => non_neg_integer(),
          optional(:memory) => non_neg_integer(),
          optional(:duration_us) => non_neg_integer()
        }

  @type t :: %__MODULE__{
          kind: kind(),
          message: String.t(),
          line: pos_integer() | nil,
          output: String.t(),
          stats: stats()
        }

  defexception [:kind, :message, line: nil, output: "", stats: %{}]

  @impl true
  def message(%__MODULE__{message: message}), do: message

  @doc """
  Builds the exception from the error tuple the native sandbox sends.

      iex> Beamlens.LuaError.from_native({:runtime, "line 2: boom", %{"line" => 2, "output" => ""}})
      %Beamlens.LuaError{kind: :runtime, message: "line 2: boom", line: 2, output: "", stats: %{}}
  """
  @spec from_native(term()) :: t()
  def from_native({:busy, _message, details}) when is_map(details) do
    capacity = Map.get(details, "capacity")

    %__MODULE__{
      kind: :busy,
      message:
        "too many Lua scripts or native jobs are running at once" <>
          if(capacity, do: " (capacity #{capacity})", else: "") <> "; try again shortly"
    }
  end

  def from_native({kind, message, details})
      when is_atom(kind) and is_binary(message) and is_map(details) do
    %__MODULE__{
      kind: kind,
      message: message,
      line: Map.get(details, "line"),
      output: Map.get(details, "output") || "",
      stats: Beamlens.Lua.Result.stats_from_native(details)
    }
  end

  def from_native(:busy), do: from_native(Beamlens.Error.busy())

  def from_native(other) do
    %__MODULE__{kind: :internal, message: "unexpected native error: #{inspect(other, limit: 20)}"}
  end
end
