defmodule Beamlens.Coordinator.Options do
  # The coordinator's option schema (a `Beamlens.Schema`): validation and the
  # docs rendered into `Beamlens.Coordinator`'s moduledoc.
  @moduledoc false

  alias Beamlens.Schema

  @schema [
    name: [
      type: :atom,
      default: Beamlens.Coordinator,
      doc: "The registered name; also names the `:pg` group of coordinators."
    ],
    pg_scope: [
      type: :atom,
      default: :beamlens_pg,
      doc:
        "The `:pg` scope coordinators meet in; it must be running (`{:pg, scope}` in a supervisor)."
    ],
    window_ms: [
      type: {:integer, 1, 86_400_000},
      default: 60_000,
      doc:
        "Alerts from different watchers this close in time (ms) are related (temporal); symptomatic links need the same closeness."
    ],
    order_tolerance_ms: [
      type: {:integer, 0, 600_000},
      default: 5_000,
      doc:
        "How much earlier (ms) than its cause an effect may be detected and still count as caused by it (watchers detect on their own ticks)."
    ],
    max_alerts: [
      type: {:integer, 1, 1_000_000},
      default: 5_000,
      doc: "Most distinct alerts (fingerprints) held for correlation; the oldest are evicted."
    ],
    leader_warmup_ms: [
      type: {:integer, 0, 86_400_000},
      default: nil,
      doc:
        "How long (ms) a coordinator receives alerts before it may lead (default: the retention horizon, so a new leader knows every alert still in play)."
    ],
    summarizer: [
      type: {:or, [{:fun, 2}, :atom, {:tuple, [:atom, {:list, :any}]}]},
      default: nil,
      expected: "nil, a module, a {module, keyword} tuple or a function of arity 2",
      validate: {__MODULE__, :check_summarizer, []},
      doc:
        "Writes summaries and hypotheses: a module implementing `Beamlens.Coordinator.Summarizer`, `{module, opts}`, or a 2-arity function `(insight, alerts -> result)`; `nil` keeps the deterministic text."
    ],
    summarizer_timeout: [
      type: {:integer, 1, 3_600_000},
      default: 120_000,
      doc:
        "Milliseconds a summarizer may take before the insight goes out with the deterministic text."
    ],
    compaction_max_tokens: [
      type: {:integer, 1, 10_000_000},
      default: 50_000,
      doc: "Token threshold before the summarizer's LLM context is compacted."
    ],
    compaction_keep_last: [
      type: {:integer, 0, 10_000},
      default: 5,
      doc: "Recent messages the summarizer keeps verbatim after compaction."
    ]
  ]

  @keys Keyword.keys(@schema)

  @doc false
  def keys, do: @keys

  @doc false
  def docs, do: Schema.docs(@schema)

  @doc false
  @spec defaults() :: keyword()
  def defaults, do: Schema.defaults(@schema)

  @doc false
  @spec validate(term()) :: {:ok, keyword()} | {:error, ArgumentError.t()}
  def validate(opts) do
    case Schema.validate(opts, @schema, context: " for Beamlens.Coordinator") do
      {:ok, opts} -> {:ok, opts}
      {:error, error} -> {:error, ArgumentError.exception(error.message)}
    end
  end

  @doc false
  # A summarizer module (alone or in `{module, opts}`) must export summarize/3.
  @spec check_summarizer(term()) :: :ok | {:error, String.t()}
  def check_summarizer({module, _opts}), do: check_summarizer(module)

  def check_summarizer(module) when is_atom(module) and module != nil do
    if Code.ensure_loaded?(module) and function_exported?(module, :summarize, 3) do
      :ok
    else
      {:error,
       "expected :summarizer to be a module implementing Beamlens.Coordinator.Summarizer " <>
         "(summarize/3), but #{inspect(module)} does not export summarize/3"}
    end
  end

  def check_summarizer(_fun), do: :ok
end
