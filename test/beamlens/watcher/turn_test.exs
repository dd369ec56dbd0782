defmodule Beamlens.Watcher.TurnTest do
  # The conversation turns a check and an investigation share.
  use ExUnit.Case, async: true

  alias Beamlens.LLM.{Response, ToolCall}
  alias Beamlens.Watcher.Turn

  test "turns keep the model's calls and answer them by id" do
    call = %ToolCall{id: "c1", name: "done", arguments: %{}}

    assert Turn.assistant(%Response{content: nil, tool_calls: [call]}) ==
             %{role: :assistant, content: "", tool_calls: [call]}

    assert Turn.tool_result(call, "OK.", false) ==
             %{role: :tool, tool_call_id: "c1", name: "done", content: "OK.", is_error: false}

    assert Turn.correction("Use a tool.") == %{role: :user, content: "Use a tool."}
  end

  test "a model is given up on after its fourth correction" do
    refute Turn.too_many_corrections?(3)
    assert Turn.too_many_corrections?(4)
  end
end
