defmodule Beamlens.Watcher.Turn do
  # What a watcher's check (`Beamlens.Watcher.Check`) and an investigation
  # (`Beamlens.Investigation.Loop`) share in their model conversations: the
  # shape of the turns they keep, and when a model that keeps getting its
  # tool calls wrong is given up on. Pure functions.
  @moduledoc false

  alias Beamlens.LLM.{Response, ToolCall}

  @max_corrections 3

  @doc false
  # The assistant turn of a model response, as kept in a conversation.
  @spec assistant(Response.t()) :: map()
  def assistant(response),
    do: %{role: :assistant, content: response.content || "", tool_calls: response.tool_calls}

  @doc false
  # A tool result turn, answering `call`.
  @spec tool_result(ToolCall.t(), String.t(), boolean()) :: map()
  def tool_result(call, text, error?),
    do: %{role: :tool, tool_call_id: call.id, name: call.name, content: text, is_error: error?}

  @doc false
  # A correction sent as a user turn (a reply without a usable tool call).
  @spec correction(String.t()) :: map()
  def correction(text), do: %{role: :user, content: text}

  @doc false
  # Whether a conversation with `corrections` corrections so far must end:
  # a model corrected more than 3 times will not get it
  # right in this one.
  @spec too_many_corrections?(non_neg_integer()) :: boolean()
  def too_many_corrections?(corrections), do: corrections > @max_corrections
end
