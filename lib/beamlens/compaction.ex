defmodule Beamlens.Compaction do
  # Thin wrapper over the Rust compaction planner (native compaction.rs).
  @moduledoc false

  alias Beamlens.{Error, Native}

  @doc """
  Returns `{:ok, nil}` when the conversation fits in `max_tokens`, or
  `{:ok, plan}` with `:cut`, `:tokens_before`, `:tokens_kept`,
  `:transcript`, `:instructions` and `:needs_user_turn` (the kept part
  opens with an assistant turn; put a user turn in front).
  """
  def plan(messages, max_tokens, keep_last, fixed_tokens, reported_tokens) do
    case Native.compaction_plan(
           plain(messages),
           max_tokens,
           keep_last,
           fixed_tokens,
           reported_tokens
         ) do
      {:ok, nil} ->
        {:ok, nil}

      {:ok, plan} ->
        {:ok,
         %{
           cut: plan["cut"],
           tokens_before: plan["tokens_before"],
           tokens_kept: plan["tokens_kept"],
           transcript: plan["transcript"],
           needs_user_turn: plan["needs_user_turn"],
           instructions: plan["instructions"]
         }}

      {:error, reason} ->
        {:error, Error.from_native(reason)}
    end
  end

  @doc "The cut that drops older messages without summarising them."
  def truncate(messages, keep_last) do
    Error.wrap(Native.compaction_truncate(plain(messages), keep_last))
  end

  @doc "Estimated tokens of a conversation."
  def estimate(messages), do: Error.wrap(Native.compaction_estimate(plain(messages)))

  # The planner only needs roles, text and tool calls.
  defp plain(messages) do
    Enum.map(messages, fn message ->
      %{
        "role" => Atom.to_string(message.role),
        "content" => text(Map.get(message, :content)),
        "name" => Map.get(message, :name),
        "tool_calls" =>
          Enum.map(Map.get(message, :tool_calls) || [], fn call ->
            %{"name" => call.name, "arguments" => call.arguments || %{}}
          end)
      }
    end)
  end

  defp text(content) when is_binary(content), do: content
  defp text(nil), do: ""
  defp text(other), do: inspect(other, limit: 50, printable_limit: 2_000)
end
