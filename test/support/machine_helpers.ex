defmodule Beamlens.MachineHelpers do
  # Replies and effect readers shared by the pure state-machine tests
  # (Watcher.Check, Investigation.Loop), which drive the machines with
  # literal model responses and read the effects they return.
  @moduledoc false

  alias Beamlens.LLM.{Response, ToolCall}

  @doc "A model reply that calls `calls` (`{name, args}` pairs), in order."
  def reply(calls, usage \\ %{input_tokens: 100, output_tokens: 20}) do
    tool_calls =
      calls
      |> Enum.with_index()
      |> Enum.map(fn {{name, args}, i} -> %ToolCall{id: "c#{i}", name: name, arguments: args} end)

    {:ok, %Response{content: "", tool_calls: tool_calls, usage: usage}}
  end

  @doc "The tool results among `effects`, as `{tool, text, error?}`."
  def tool_results(effects),
    do: for({:tool_result, call, text, error?} <- effects, do: {call.name, text, error?})

  @doc "What the `{:finish, _}` effect carries, if any."
  def finish(effects),
    do: Enum.find_value(effects, fn e -> match?({:finish, _}, e) && elem(e, 1) end)
end
