defmodule Beamlens.Coordinator.Options do
  # The coordinator's option schema: validation and the docs rendered into
  # `Beamlens.Coordinator`'s moduledoc.
  @moduledoc false

  @schema [
    name: [
      type: :atom,
      default: Beamlens.Coordinator,
      doc: "the registered name; also names the `:pg` group of coordinators"
    ],
    pg_scope: [
      type: :atom,
      default: :beamlens_pg,
      doc:
        "the `:pg` scope coordinators meet in; it must be running (`{:pg, scope}` in a supervisor)"
    ],
    window_ms: [
      type: {:integer, 1, 86_400_000},
      default: 60_000,
      doc:
        "alerts from different watchers this close in time are related (temporal); symptomatic links need the same closeness"
    ],
    order_tolerance_ms: [
      type: {:integer, 0, 600_000},
      default: 5_000,
      doc:
        "how much earlier than its cause an effect may be detected and still count as caused by it (watchers detect on their own ticks)"
    ],
    max_alerts: [
      type: {:integer, 1, 1_000_000},
      default: 5_000,
      doc: "most distinct alerts (fingerprints) held for correlation; the oldest are evicted"
    ],
    leader_warmup_ms: [
      type: {:integer, 0, 86_400_000},
      default: nil,
      doc:
        "how long a coordinator receives alerts before it may lead (default: the retention horizon, so a new leader knows every alert still in play)"
    ],
    summarizer: [
      type: :summarizer,
      default: nil,
      doc:
        "writes summaries and hypotheses: a module implementing `Beamlens.Coordinator.Summarizer`, `{module, opts}`, or a 2-arity function `(insight, alerts -> result)`; `nil` keeps the deterministic text"
    ],
    summarizer_timeout: [
      type: {:integer, 1, 3_600_000},
      default: 120_000,
      doc:
        "milliseconds a summarizer may take before the insight goes out with the deterministic text"
    ],
    compaction_max_tokens: [
      type: {:integer, 1, 10_000_000},
      default: 50_000,
      doc: "token threshold before the summarizer's LLM context is compacted"
    ],
    compaction_keep_last: [
      type: {:integer, 0, 10_000},
      default: 5,
      doc: "recent messages the summarizer keeps verbatim after compaction"
    ]
  ]

  @keys Keyword.keys(@schema)

  @doc false
  def keys, do: @keys

  @doc false
  def docs do
    Enum.map_join(@schema, "\n", fn {key, spec} ->
      default =
        case Keyword.fetch!(spec, :default) do
          nil -> ""
          value -> " Defaults to `#{inspect(value)}`."
        end

      "  * `#{inspect(key)}` - #{type_doc(spec[:type])}, #{spec[:doc]}.#{default}"
    end)
  end

  @doc false
  @spec validate(keyword()) :: {:ok, keyword()} | {:error, ArgumentError.t()}
  def validate(opts) when is_list(opts) do
    with :ok <- check_keyword(opts),
         :ok <- check_unknown(opts) do
      Enum.reduce_while(@schema, {:ok, []}, fn {key, spec}, {:ok, acc} ->
        value = Keyword.get(opts, key, spec[:default])

        result =
          if is_nil(value) and is_nil(spec[:default]),
            do: :ok,
            else: check(key, spec[:type], value)

        case result do
          :ok -> {:cont, {:ok, [{key, value} | acc]}}
          {:error, _} = error -> {:halt, error}
        end
      end)
      |> case do
        {:ok, acc} -> {:ok, Enum.reverse(acc)}
        error -> error
      end
    end
  end

  def validate(other) do
    {:error,
     ArgumentError.exception("expected the options to be a keyword list, got: #{inspect(other)}")}
  end

  defp check_keyword(opts) do
    if Keyword.keyword?(opts) do
      :ok
    else
      {:error,
       ArgumentError.exception("expected the options to be a keyword list, got: #{inspect(opts)}")}
    end
  end

  defp check_unknown(opts) do
    case Enum.find(Keyword.keys(opts), &(&1 not in @keys)) do
      nil ->
        :ok

      key ->
        {:error,
         ArgumentError.exception(
           "unknown option #{inspect(key)} for Beamlens.Coordinator#{did_you_mean(key)}. " <>
             "Known options: #{Enum.map_join(@keys, ", ", &inspect/1)}"
         )}
    end
  end

  defp did_you_mean(key) do
    name = Atom.to_string(key)

    @keys
    |> Enum.map(&{&1, String.jaro_distance(name, Atom.to_string(&1))})
    |> Enum.max_by(&elem(&1, 1))
    |> case do
      {best, score} when score > 0.8 -> " (did you mean #{inspect(best)}?)"
      _ -> ""
    end
  end

  defp check(_key, :atom, value) when is_atom(value), do: :ok

  defp check(_key, {:integer, min, max}, value)
       when is_integer(value) and value >= min and value <= max,
       do: :ok

  defp check(key, :summarizer, value) do
    case value do
      fun when is_function(fun, 2) ->
        :ok

      {module, opts} when is_atom(module) and is_list(opts) ->
        check_summarizer_module(key, module)

      module when is_atom(module) ->
        check_summarizer_module(key, module)

      _ ->
        bad(key, :summarizer, value)
    end
  end

  defp check(key, type, value), do: bad(key, type, value)

  defp check_summarizer_module(key, module) do
    if Code.ensure_loaded?(module) and function_exported?(module, :summarize, 3) do
      :ok
    else
      {:error,
       ArgumentError.exception(
         "expected #{inspect(key)} to be a module implementing Beamlens.Coordinator.Summarizer " <>
           "(summarize/3), but #{inspect(module)} does not export summarize/3"
       )}
    end
  end

  defp bad(key, type, value) do
    {:error,
     ArgumentError.exception(
       "expected #{inspect(key)} to be #{type_doc(type)}, got: #{inspect(value)}"
     )}
  end

  defp type_doc(:atom), do: "an atom"
  defp type_doc({:integer, 0, max}), do: "a non-negative integer (at most #{max})"
  defp type_doc({:integer, min, max}), do: "an integer from #{min} to #{max}"

  defp type_doc(:summarizer),
    do: "nil, a module, a {module, keyword} tuple or a function of arity 2"
end
