defmodule Beamlens.LLM.Config do
  @moduledoc """
  A validated LLM configuration: one provider, or a fallback chain of them.

      {:ok, config} =
        Beamlens.LLM.Config.new(provider: :anthropic, model: "claude-sonnet-4-5")

      # A chain: when Anthropic fails (after its retries) or its circuit is
      # open, the request goes to the local Ollama model.
      {:ok, config} =
        Beamlens.LLM.Config.new([
          [provider: :anthropic, model: "claude-sonnet-4-5"],
          [provider: :ollama, model: "qwen2.5:14b"]
        ])

  Options are checked once, here, and every error names the bad option and
  what was expected. A missing key is an error at this point (a watcher then
  runs rules-only), not at the first request.

  Credentials are handed to the native client when the configuration is
  built and are not kept in the struct: it holds opaque handles, so a key
  never appears in `inspect/1`, a process state or a crash report. See
  `docs/providers.md` for a snippet per provider.

  ## Options

  #{Beamlens.LLM.Options.docs()}
  """

  alias Beamlens.{LLMError, Native, Runtime}
  alias Beamlens.LLM.Options

  @typedoc """
  What is known about each provider of the chain, without secrets:
  `:provider`, `:model`, `:base_url`, `:timeout`, `:max_retries`, ...
  """
  @type provider_info :: %{required(:provider) => atom(), optional(atom()) => term()}

  @type t :: %__MODULE__{providers: [provider_info()], handles: [reference()]}

  @enforce_keys [:providers, :handles]
  defstruct [:providers, :handles]

  @doc """
  Builds a configuration from one provider's keyword list, or from a list
  of keyword lists (a fallback chain, tried in order).

  Returns `{:error, %Beamlens.LLMError{reason: :config}}` naming the bad
  option.
  """
  @spec new(keyword() | [keyword()]) :: {:ok, t()} | {:error, LLMError.t()}
  def new(opts), do: new(opts, &System.get_env/1)

  @doc false
  # `env` reads environment variables (tests pass a map lookup).
  @spec new(keyword() | [keyword()], (String.t() -> String.t() | nil)) ::
          {:ok, t()} | {:error, LLMError.t()}
  def new([first | _] = chain, env) when is_list(first) do
    chain
    |> Enum.with_index()
    |> Enum.reduce_while({:ok, []}, fn {opts, index}, {:ok, acc} ->
      case build(opts, env) do
        {:ok, provider} ->
          {:cont, {:ok, [provider | acc]}}

        {:error, error} ->
          {:halt, {:error, %{error | message: "provider ##{index + 1}: #{error.message}"}}}
      end
    end)
    |> case do
      {:ok, providers} -> {:ok, from_providers(Enum.reverse(providers))}
      error -> error
    end
  end

  def new(opts, env) do
    with {:ok, provider} <- build(opts, env), do: {:ok, from_providers([provider])}
  end

  @doc """
  Like `new/1`, but raises `Beamlens.LLMError` on invalid options.
  """
  @spec new!(keyword() | [keyword()]) :: t()
  def new!(opts) do
    case new(opts) do
      {:ok, config} -> config
      {:error, error} -> raise error
    end
  end

  @doc """
  The first provider of the chain (`:anthropic`, ...).
  """
  @spec provider(t()) :: atom()
  def provider(%__MODULE__{providers: [first | _]}), do: first.provider

  @doc """
  The model of the first provider of the chain.
  """
  @spec model(t()) :: String.t() | nil
  def model(%__MODULE__{providers: [first | _]}), do: first[:model] || first[:deployment]

  defp build(opts, env) do
    with {:ok, public, native} <- Options.validate(opts, env),
         {:ok, handle} <- provider_new(native) do
      {:ok, {public, handle}}
    end
  end

  defp provider_new(native) do
    case Native.llm_provider_new(native) do
      {:ok, handle} -> {:ok, handle}
      {:error, reason} -> {:error, LLMError.from_native(reason)}
    end
  rescue
    e in ErlangError ->
      {:error, %LLMError{reason: :unavailable, message: Runtime.not_loaded(e).message}}
  end

  defp from_providers(providers) do
    %__MODULE__{
      providers: Enum.map(providers, &elem(&1, 0)),
      handles: Enum.map(providers, &elem(&1, 1))
    }
  end

  defimpl Inspect do
    def inspect(%{providers: providers}, _opts) do
      chain =
        Enum.map_join(providers, " -> ", fn info ->
          "#{info.provider} #{info[:model] || info[:deployment]}"
        end)

      "#Beamlens.LLM.Config<#{chain}>"
    end
  end
end
