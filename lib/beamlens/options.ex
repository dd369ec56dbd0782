defmodule Beamlens.Options do
  # The option schema of `{Beamlens, opts}` and of each watcher, in one place
  # (declared with `Beamlens.Schema`): validation with messages that name the
  # key, "did you mean" hints for unknown keys, and the docs rendered into the
  # `Beamlens` moduledoc.
  @moduledoc false

  alias Beamlens.Schema

  @builtin_watchers %{
    beam: Beamlens.Domain.Beam,
    ets: Beamlens.Domain.Ets,
    gc: Beamlens.Domain.Gc,
    logger: Beamlens.Domain.Logger,
    ports: Beamlens.Domain.Ports,
    sup: Beamlens.Domain.Sup,
    system: Beamlens.Domain.System,
    exception: Beamlens.Domain.Exception
  }

  # Watchers that need a module of the user's (see PRODUCT.md).
  @needs_domain_module %{
    ecto:
      "the :ecto watcher needs your own domain module: define one with " <>
        "`use Beamlens.Domain.Ecto, repo: MyApp.Repo` and list it as " <>
        "[name: :ecto, domain_module: MyApp.EctoDomain]"
  }

  @watcher_schema [
    name: [type: :atom, doc: "The watcher's name. Required for custom watchers."],
    domain_module: [
      type: :module,
      doc: "A module implementing `Beamlens.Domain`. Defaults to the built-in one for `name`."
    ],
    interval: [
      type: :pos_integer,
      default: 30_000,
      doc: "Milliseconds between snapshots."
    ],
    warmup: [
      type: :non_neg_integer,
      default: 10,
      doc: "Snapshots the anomaly gate learns from before it judges baselines."
    ],
    llm: [
      type: {:in, [:gated, :always]},
      default: :gated,
      doc:
        "`:gated` wakes the model only when the gate flags something, the watcher is " <>
          "not healthy, or on the heartbeat; `:always` runs the model on every snapshot."
    ],
    heartbeat: [
      type: {:or, [:pos_integer, {:in, [:infinity]}]},
      default: 3_600_000,
      doc:
        "In `:gated` mode, milliseconds after which a healthy watcher checks in with the model anyway."
    ],
    max_iterations: [
      type: :pos_integer,
      default: 8,
      doc: "Most model turns per wake-up."
    ],
    alert_cooldown: [
      type: :non_neg_integer,
      default: 900_000,
      doc:
        "Milliseconds during which a repeat of an alert (same fingerprint) is folded " <>
          "into the open alert instead of firing again."
    ],
    gate_alert_grace: [
      type: :non_neg_integer,
      default: 10_000,
      doc:
        "While a model check runs, milliseconds the model gets to report what the gate " <>
          "found before the gate's own alert fires anyway (0: at once). A hung or slow " <>
          "provider never delays a gate alert by more than this."
    ],
    reply_timeout: [
      type: {:or, [:pos_integer, {:in, [:auto]}]},
      default: :auto,
      doc:
        "Milliseconds a check waits for a model reply or a Lua result before it gives up " <>
          "on it and goes on. `:auto`: the longest the provider's retries and fallbacks " <>
          "can take plus 5 s, and the Lua time limit plus 5 s."
    ],
    compaction_max_tokens: [
      type: :pos_integer,
      default: 50_000,
      doc: "Estimated conversation size (tokens) at which older messages are summarised."
    ],
    compaction_keep_last: [
      type: :pos_integer,
      default: 5,
      doc: "Recent messages kept verbatim when compacting."
    ],
    gate: [
      type: :keyword,
      default: [],
      doc:
        "Anomaly gate tuning: the options of `Beamlens.Gate.new/1` (" <>
          (Beamlens.Gate.defaults()
           |> Enum.reject(fn {_, value} -> is_nil(value) end)
           |> Enum.map_join(", ", fn {key, value} -> "`#{inspect(key)}` #{inspect(value)}" end)) <>
          ", `:growth_window_ms`); `:warmup` and `:cooldown_ms` default to this watcher's `:warmup` and `:alert_cooldown`."
    ]
  ]

  @watcher_defaults_keys [
    :interval,
    :warmup,
    :llm,
    :heartbeat,
    :max_iterations,
    :alert_cooldown,
    :gate_alert_grace,
    :reply_timeout,
    :compaction_max_tokens,
    :compaction_keep_last,
    :gate
  ]

  @schema ([
             watchers: [
               type: {:list, :any},
               expected: "a list of watcher names or keyword lists",
               default: [:beam],
               doc:
                 "Watchers to run: built-in names (#{Enum.map_join(Map.keys(@builtin_watchers) |> Enum.sort(), ", ", &inspect/1)}) " <>
                   "or keyword lists with `:name`, `:domain_module` and any per-watcher option below."
             ],
             name: [
               type: :atom,
               default: Beamlens,
               doc: "Name of the BeamLens supervisor; change it only to run two instances."
             ],
             provider: [
               type: {:or, [:atom, :keyword, {:list, {:or, [:atom, :keyword]}}]},
               expected: "a provider name, a keyword list or a list of them",
               doc_default:
                 "`config :beamlens, :provider`, then `:anthropic` (with `ANTHROPIC_API_KEY`)",
               doc:
                 "The model: `:none` (rules only), a provider name such as `:anthropic`, a keyword " <>
                   "list (`[provider: :openai, model: \"...\"]`), or a list of those as a fallback " <>
                   "chain. Without a usable key BeamLens logs one error and runs rules-only."
             ],
             token_budget: [
               type: {:or, [:pos_integer, {:in, [:infinity]}]},
               default: 250_000,
               doc:
                 "Most LLM tokens (input + output) per hour across all watchers and the " <>
                   "coordinator. When spent, watchers fall back to rules-only until the hour turns."
             ],
             redact: [
               type: :keyword,
               validate: {__MODULE__, :check_redact, []},
               expected:
                 "a keyword list with :patterns (regexes), :keys, :function (arity 1) and " <>
                   ":defaults (boolean); see Beamlens.Redactor",
               doc:
                 "How text is scrubbed before it can reach the model: `:patterns`, `:keys`, " <>
                   "`:function`, `:defaults` (see `Beamlens.Redactor`). Defaults to " <>
                   "`config :beamlens, :redact`, then the built-in rules."
             ],
             history_size: [
               type: :pos_integer,
               default: 500,
               doc:
                 "Most alerts, and most insights, kept in memory for `Beamlens.alerts/1` and " <>
                   "`Beamlens.insights/1`; the oldest are dropped first."
             ],
             coordinator: [
               type: {:or, [:keyword, {:in, [false]}]},
               default: [],
               doc:
                 "Options of the coordinator (`:window_ms`, `:compaction_max_tokens`, " <>
                   "`:compaction_keep_last`), or `false` to run without one."
             ]
           ] ++
             Enum.map(@watcher_schema, fn {key, spec} ->
               if key in @watcher_defaults_keys do
                 {key,
                  Keyword.update!(
                    spec,
                    :doc,
                    &(&1 <> " Applies to every watcher unless it sets its own.")
                  )}
               end
             end))
          |> Enum.reject(&is_nil/1)

  @doc false
  def builtin_watchers, do: @builtin_watchers

  @doc false
  def docs, do: Schema.docs(@schema)

  @doc false
  def watcher_docs, do: Schema.docs(@watcher_schema)

  @doc false
  # The :redact option is valid when the redactor accepts it.
  @spec check_redact(keyword()) :: :ok | :error
  def check_redact(opts) do
    case Beamlens.Redactor.new(opts) do
      {:ok, _} -> :ok
      {:error, _} -> :error
    end
  end

  @doc """
  Validates the options of `{Beamlens, opts}`. Returns the normalised
  options with every watcher expanded to a full keyword list, or raises
  `ArgumentError` naming the bad key.
  """
  @spec validate!(keyword()) :: keyword()
  def validate!(opts) do
    opts =
      Schema.validate!(
        opts,
        @schema,
        wording(
          "BeamLens option",
          of: "BeamLens options",
          defaults: [provider: Application.get_env(:beamlens, :provider, :anthropic)]
        )
      )

    with coordinator when is_list(coordinator) <- opts[:coordinator],
         {:error, error} <- Beamlens.Coordinator.Options.validate(coordinator) do
      raise ArgumentError, "invalid :coordinator options: " <> Exception.message(error)
    end

    defaults = Keyword.take(opts, @watcher_defaults_keys)
    watchers = Enum.map(opts[:watchers], &normalize_watcher!(&1, defaults))

    case watchers |> Enum.map(& &1[:name]) |> duplicates() do
      [] ->
        :ok

      dups ->
        raise ArgumentError, "watcher names must be unique, got duplicates: #{inspect(dups)}"
    end

    Keyword.put(opts, :watchers, watchers)
  end

  defp normalize_watcher!(name, defaults) when is_atom(name) do
    cond do
      Map.has_key?(@builtin_watchers, name) ->
        normalize_watcher!([name: name], defaults)

      message = @needs_domain_module[name] ->
        raise ArgumentError, message

      true ->
        raise ArgumentError,
              "unknown watcher #{inspect(name)}. Built-in watchers are: " <>
                Enum.map_join(Map.keys(@builtin_watchers) |> Enum.sort(), ", ", &inspect/1) <>
                Schema.did_you_mean(name, Map.keys(@builtin_watchers)) <>
                ". For your own domain, pass [name: ..., domain_module: MyDomain]."
    end
  end

  defp normalize_watcher!(opts, defaults) when is_list(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError,
            "expected each watcher to be an atom or a keyword list, got: #{inspect(opts)}"
    end

    opts = Schema.validate!(opts, @watcher_schema, wording("watcher option", defaults: defaults))

    name =
      opts[:name] ||
        raise ArgumentError,
              "a watcher given as a keyword list needs :name, got: #{inspect(opts)}"

    domain =
      case Keyword.fetch(opts, :domain_module) do
        {:ok, module} ->
          module

        :error ->
          Map.get(@builtin_watchers, name) ||
            raise ArgumentError,
                  @needs_domain_module[name] ||
                    "watcher #{inspect(name)} is not built in, so it needs :domain_module"
      end

    unless Code.ensure_loaded?(domain) and function_exported?(domain, :snapshot, 0) do
      raise ArgumentError,
            "the :domain_module of watcher #{inspect(name)} must implement Beamlens.Domain " <>
              "(snapshot/0, metrics/1, ...), got: #{inspect(domain)}"
    end

    Keyword.put(opts, :domain_module, domain)
  end

  defp normalize_watcher!(other, _defaults) do
    raise ArgumentError,
          "expected each watcher to be an atom or a keyword list, got: #{inspect(other)}"
  end

  defp wording(label, extra) do
    [
      label: label,
      invalid: "invalid value for %{label} %{key}: expected %{expected}, got: %{value}"
    ] ++
      extra
  end

  defp duplicates(list) do
    list |> Enum.frequencies() |> Enum.filter(fn {_, n} -> n > 1 end) |> Enum.map(&elem(&1, 0))
  end
end
