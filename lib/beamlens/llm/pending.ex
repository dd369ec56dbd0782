defmodule Beamlens.LLM.Pending do
  @moduledoc """
  A chat request in flight, returned by `Beamlens.LLM.chat_async/3`.

  Its reply arrives as a message `{pending.ref, raw}`; hand `raw` to
  `Beamlens.LLM.handle_reply/2`. The struct holds no secret.
  """

  @type t :: %__MODULE__{
          ref: reference(),
          caller: term(),
          provider: atom(),
          model: String.t() | nil,
          started_at: integer(),
          span_context: reference(),
          input_estimate: non_neg_integer() | nil
        }

  @enforce_keys [:ref, :caller, :provider, :started_at, :span_context]
  defstruct [:ref, :caller, :provider, :model, :started_at, :span_context, :input_estimate]
end
