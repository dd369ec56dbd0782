defmodule Beamlens.LLM.Response do
  @moduledoc """
  The model's answer to a chat request.

    * `:content` - the text (may be `""`, e.g. when the model only calls
      tools).
    * `:tool_calls` - `Beamlens.LLM.ToolCall` structs, in order.
    * `:stop_reason` - `:end_turn`, `:tool_use`, `:max_tokens`,
      `:stop_sequence` or `:other` (safety filters, refusals, ...).
    * `:usage` - `%{input_tokens:, output_tokens:, cache_read_tokens:,
      cache_write_tokens:}`. `input_tokens` excludes tokens read from or
      written to the prompt cache, so the four add up to all tokens
      processed, for every provider.
    * `:provider`, `:model` - who answered (with a fallback chain, not
      necessarily the first provider; the model as the provider reports it).
    * `:attempts` - HTTP attempts it took, over all providers tried.
  """

  alias Beamlens.LLM.ToolCall

  @type stop_reason :: :end_turn | :tool_use | :max_tokens | :stop_sequence | :other
  @type usage :: %{
          input_tokens: non_neg_integer(),
          output_tokens: non_neg_integer(),
          cache_read_tokens: non_neg_integer(),
          cache_write_tokens: non_neg_integer()
        }
  @type t :: %__MODULE__{
          content: String.t(),
          tool_calls: [ToolCall.t()],
          stop_reason: stop_reason(),
          usage: usage(),
          provider: atom(),
          model: String.t(),
          attempts: pos_integer()
        }

  defstruct content: "",
            tool_calls: [],
            stop_reason: :end_turn,
            usage: %{
              input_tokens: 0,
              output_tokens: 0,
              cache_read_tokens: 0,
              cache_write_tokens: 0
            },
            provider: nil,
            model: nil,
            attempts: 1

  @stop_reasons %{
    "end_turn" => :end_turn,
    "tool_use" => :tool_use,
    "max_tokens" => :max_tokens,
    "stop_sequence" => :stop_sequence,
    "other" => :other
  }

  @providers Map.new(Beamlens.LLM.Options.providers(), &{Atom.to_string(&1), &1})

  @doc false
  # Builds the struct from the map the native client sends (binary keys).
  # Strings become atoms only through the fixed tables above.
  @spec from_native(map()) :: t()
  def from_native(%{} = map) do
    usage = map["usage"] || %{}

    %__MODULE__{
      content: map["content"] || "",
      tool_calls:
        for call <- map["tool_calls"] || [] do
          %ToolCall{
            id: call["id"],
            name: call["name"],
            arguments: call["arguments"],
            error: call["error"],
            signature: call["signature"]
          }
        end,
      stop_reason: Map.get(@stop_reasons, map["stop_reason"], :other),
      usage: %{
        input_tokens: usage["input_tokens"] || 0,
        output_tokens: usage["output_tokens"] || 0,
        cache_read_tokens: usage["cache_read_tokens"] || 0,
        cache_write_tokens: usage["cache_write_tokens"] || 0
      },
      provider: Map.get(@providers, map["provider"]),
      model: map["model"],
      attempts: map["attempts"] || 1
    }
  end
end
