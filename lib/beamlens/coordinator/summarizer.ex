defmodule Beamlens.Coordinator.Summarizer do
  @moduledoc """
  Writes an insight's summary and root-cause hypothesis, typically with an
  LLM, in place of the deterministic text.

  Give one to the coordinator with the `:summarizer` option: a module
  implementing this behaviour, `{module, opts}`, or a function
  `(insight, alerts -> result)`.

  The coordinator calls it in a separate process, never in its own, so a
  slow model does not delay correlation; only the leader of a cluster calls
  it, once per insight version. While a call for an insight is running,
  newer versions of that insight wait, and at most two calls run at once.
  When the call fails, raises, or takes longer than `:summarizer_timeout`,
  the insight goes out with the deterministic text and
  `[:beamlens, :coordinator, :summary_failed]` is emitted.

  The insight passed in already carries the deterministic `:summary`,
  `:root_cause_hypothesis`, `:rules` and `:root_cause`: a good starting point
  for a prompt. The alerts are the latest `%Beamlens.Alert{}` of each
  fingerprint in the insight that the coordinator still holds.

  `opts` holds the `{module, opts}` options plus `:compaction_max_tokens`,
  `:compaction_keep_last` (the coordinator's own settings for its LLM
  context) and `:timeout`.
  """

  alias Beamlens.{Alert, Insight}

  @typedoc "What a summarizer returns."
  @type result ::
          {:ok, %{required(:summary) => String.t(), required(:hypothesis) => String.t()}}
          | {:error, term()}

  @doc "Summarises `insight` from its grouped `alerts`."
  @callback summarize(insight :: Insight.t(), alerts :: [Alert.t()], opts :: keyword()) ::
              result()
end
