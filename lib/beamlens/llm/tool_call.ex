defmodule Beamlens.LLM.ToolCall do
  @moduledoc """
  A tool call made by the model.

    * `:id` - the call's id; answer it with a `:tool` message whose
      `:tool_call_id` is this id.
    * `:name` - the tool's name (a string; never turned into an atom).
    * `:arguments` - a map with string keys, or `nil` when the model's
      arguments could not be parsed.
    * `:error` - `nil` for a usable call; otherwise why it is unusable
      (arguments that are not a JSON object, a tool that was not offered),
      worded so that it can be fed back to the model as the tool result
      with `is_error: true`.
    * `:signature` - opaque data the provider wants back with the call
      (Gemini's thought signatures). Put the struct back into the
      assistant message's `:tool_calls` unchanged and it is sent back.
  """

  @type t :: %__MODULE__{
          id: String.t(),
          name: String.t(),
          arguments: map() | nil,
          error: String.t() | nil,
          signature: String.t() | nil
        }

  @enforce_keys [:id, :name]
  defstruct [:id, :name, arguments: nil, error: nil, signature: nil]
end
