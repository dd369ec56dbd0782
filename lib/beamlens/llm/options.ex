defmodule Beamlens.LLM.Options do
  # The schema of a provider's options, its validation, and the docs rendered
  # from it into Beamlens.LLM.Config's moduledoc.
  @moduledoc false

  alias Beamlens.{LLMError, Schema}

  @providers [:anthropic, :openai, :azure_openai, :openai_compatible, :ollama, :bedrock, :gemini]

  # Where each provider lives unless `:base_url` says otherwise (Bedrock's
  # depends on the region; `:azure_openai` and `:openai_compatible` have none).
  @base_urls %{
    anthropic: "https://api.anthropic.com",
    openai: "https://api.openai.com/v1",
    ollama: "http://127.0.0.1:11434",
    gemini: "https://generativelanguage.googleapis.com/v1beta"
  }

  @secret [
    type: {:or, [:string, {:tuple, [{:in, [:system]}, :string]}]},
    expected: "a non-empty string or {:system, \"ENV_VAR\"}",
    secret: true
  ]

  @common [
    provider: [type: :any, doc: "The provider: #{Enum.map_join(@providers, ", ", &inspect/1)}."],
    model: [
      type: :string,
      doc:
        "The model name (for `:bedrock` the model or inference-profile id, for `:azure_openai` the default `:deployment`)."
    ],
    api_key:
      @secret ++
        [
          doc:
            "The API key, or `{:system, \"ENV_VAR\"}`. Defaults from the provider's environment variable (see below)."
        ],
    base_url: [
      type: :string,
      doc:
        "Where the API lives. Defaults: " <>
          Enum.map_join(@base_urls, ", ", fn {provider, url} ->
            "`#{inspect(provider)}` #{url}"
          end) <>
          ", `:bedrock` https://bedrock-runtime.REGION.amazonaws.com; " <>
          "`:azure_openai` and `:openai_compatible` have none."
    ],
    timeout: [
      type: :pos_integer,
      default: 60_000,
      doc:
        "Milliseconds one HTTP attempt may take, from connecting to the last byte of the reply."
    ],
    connect_timeout: [
      type: :pos_integer,
      default: 10_000,
      doc: "Milliseconds to establish a connection."
    ],
    max_retries: [
      type: {:integer, 0, 10},
      default: 2,
      expected: "an integer from 0 to 10",
      doc: "Retries after a timeout, a connection error or HTTP 408/409/429/5xx/529."
    ],
    base_backoff: [
      type: :pos_integer,
      default: 500,
      doc: "First wait before a retry, in ms; doubles per retry, with jitter."
    ],
    max_backoff: [type: :pos_integer, default: 8_000, doc: "Longest wait between retries, in ms."],
    max_retry_after: [
      type: :non_neg_integer,
      default: 30_000,
      doc:
        "Longest `Retry-After` (ms) BeamLens waits for; a longer one ends the attempt so the next provider is tried."
    ],
    max_body_bytes: [
      type: :pos_integer,
      default: 8_388_608,
      doc: "Largest reply accepted, in bytes; a larger one is a `:body_too_large` error."
    ],
    breaker_threshold: [
      type: :non_neg_integer,
      default: 5,
      doc: "Consecutive failed requests that open the provider's circuit breaker (0 disables it)."
    ],
    breaker_cooldown: [
      type: :pos_integer,
      default: 30_000,
      doc: "Milliseconds an open circuit stays open before one probe request is let through."
    ],
    headers: [
      type: {:list, {:tuple, [:binary, :binary]}},
      default: [],
      expected: "a list of {name, value} string pairs",
      secret: true,
      doc:
        "Extra HTTP headers as `{name, value}` string pairs (e.g. OpenRouter's `HTTP-Referer`). Treated as secrets."
    ]
  ]

  @specific %{
    azure_openai: [
      deployment: [
        type: :string,
        doc: "Azure OpenAI: the deployment name (defaults to `:model`)."
      ],
      api_version: [
        type: :string,
        default: "2024-10-21",
        doc: "Azure OpenAI: the `api-version` query parameter."
      ]
    ],
    bedrock: [
      region: [
        type: :string,
        doc: "Bedrock: the AWS region (`AWS_REGION` or `AWS_DEFAULT_REGION`)."
      ],
      access_key_id: @secret ++ [doc: "Bedrock: the access key id (`AWS_ACCESS_KEY_ID`)."],
      secret_access_key:
        @secret ++ [doc: "Bedrock: the secret access key (`AWS_SECRET_ACCESS_KEY`)."],
      session_token:
        @secret ++
          [doc: "Bedrock: the session token of temporary credentials (`AWS_SESSION_TOKEN`)."]
    ]
  }

  @key_env %{
    anthropic: ["ANTHROPIC_API_KEY"],
    openai: ["OPENAI_API_KEY"],
    azure_openai: ["AZURE_OPENAI_API_KEY"],
    gemini: ["GOOGLE_API_KEY", "GEMINI_API_KEY"]
  }

  @secret_keys [:api_key, :access_key_id, :secret_access_key, :session_token, :headers]

  @doc false
  def providers, do: @providers

  @doc false
  def docs do
    rows = Schema.docs(@common ++ Enum.flat_map(@specific, fn {_, opts} -> opts end))

    keys =
      Enum.map(@key_env, fn {provider, vars} ->
        "  * `#{inspect(provider)}`: #{Enum.map_join(vars, " or ", &"`#{&1}`")}"
      end)

    rows <>
      "\n\nKeys are read from the environment when `:api_key` is not given:\n\n" <>
      Enum.join(keys, "\n") <>
      "\n  * `:bedrock`: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`" <>
      "\n  * `:azure_openai` also reads its `:base_url` from `AZURE_OPENAI_ENDPOINT`." <>
      "\n  * `:ollama` and `:openai_compatible` need no key; none is read from the environment."
  end

  @doc """
  Validates one provider's options. Returns `{:ok, public, native}`: the
  public map holds no secret; the native map is handed to Rust once.
  """
  def validate(opts, env \\ &System.get_env/1)

  def validate(opts, env) when is_list(opts) do
    with :ok <- keyword(opts),
         {:ok, provider} <- provider(opts),
         schema = @common ++ Map.get(@specific, provider, []),
         {:ok, values} <- typed(opts, provider, schema),
         {:ok, values} <- resolve_secrets(values, provider, env),
         {:ok, values} <- defaults_from_env(values, provider, env),
         :ok <- required(values, provider) do
      values = resolve_defaults(values, provider)
      native = values |> Map.put(:provider, Atom.to_string(provider)) |> native_map()
      public = Map.drop(values, @secret_keys)
      {:ok, public, native}
    end
  end

  def validate(other, _env) do
    error(nil, "expected a keyword list of provider options, got: #{inspect(other)}")
  end

  defp keyword(opts) do
    if Keyword.keyword?(opts),
      do: :ok,
      else: error(nil, "expected a keyword list of provider options")
  end

  defp provider(opts) do
    case Keyword.fetch(opts, :provider) do
      {:ok, provider} when provider in @providers ->
        {:ok, provider}

      {:ok, :none} ->
        error(
          nil,
          "provider :none means rules-only mode: there is no LLM configuration to build"
        )

      {:ok, other} ->
        error(
          nil,
          "expected :provider to be one of #{inspect(@providers)}, got: #{inspect(other)}"
        )

      :error ->
        error(nil, "the :provider option is required (one of #{inspect(@providers)})")
    end
  end

  defp typed(opts, provider, schema) do
    case Schema.validate(opts, schema, of: "provider options") do
      {:ok, values} ->
        {:ok, Map.new(values)}

      {:error, %{details: %{"reason" => "unknown_option", "path" => [key]} = details}} ->
        hint =
          case details["suggestion"] do
            nil -> ""
            best -> ", did you mean #{inspect(best)}?"
          end

        error(provider, "unknown option #{inspect(key)} for provider #{inspect(provider)}#{hint}")

      {:error, %{message: message}} ->
        error(provider, message)
    end
  end

  defp resolve_secrets(values, provider, env) do
    Enum.reduce_while(values, {:ok, values}, fn
      {key, {:system, var}}, {:ok, acc} ->
        case env.(var) do
          value when is_binary(value) and value != "" ->
            {:cont, {:ok, Map.put(acc, key, value)}}

          _ ->
            {:halt,
             error(
               provider,
               "#{inspect(key)} names the environment variable #{var}, which is not set"
             )}
        end

      _, acc ->
        {:cont, acc}
    end)
  end

  defp defaults_from_env(values, :bedrock, env) do
    values =
      values
      |> put_new_env(:access_key_id, env, ["AWS_ACCESS_KEY_ID"])
      |> put_new_env(:secret_access_key, env, ["AWS_SECRET_ACCESS_KEY"])
      |> put_new_env(:region, env, ["AWS_REGION", "AWS_DEFAULT_REGION"])

    # A session token only belongs to the access key it came with.
    values =
      if Map.has_key?(values, :session_token) or
           values[:access_key_id] != env.("AWS_ACCESS_KEY_ID"),
         do: values,
         else: put_new_env(values, :session_token, env, ["AWS_SESSION_TOKEN"])

    {:ok, values}
  end

  defp defaults_from_env(values, :azure_openai, env) do
    {:ok,
     values
     |> put_new_env(:api_key, env, @key_env.azure_openai)
     |> put_new_env(:base_url, env, ["AZURE_OPENAI_ENDPOINT"])}
  end

  defp defaults_from_env(values, provider, env) do
    {:ok, put_new_env(values, :api_key, env, Map.get(@key_env, provider, []))}
  end

  defp put_new_env(values, key, env, vars) do
    if Map.has_key?(values, key) do
      values
    else
      case Enum.find_value(vars, &non_empty(env.(&1))) do
        nil -> values
        value -> Map.put(values, key, value)
      end
    end
  end

  defp non_empty(value) when is_binary(value) and value != "", do: value
  defp non_empty(_), do: nil

  defp required(values, provider) do
    with :ok <- require_model(values, provider),
         :ok <- require_key(values, provider),
         :ok <- require_base_url(values, provider),
         :ok <- require_aws(values, provider) do
      check_url(values, provider)
    end
  end

  defp require_model(values, :azure_openai) do
    if Map.has_key?(values, :model) or Map.has_key?(values, :deployment),
      do: :ok,
      else: error(:azure_openai, "provider :azure_openai needs :deployment (or :model)")
  end

  defp require_model(values, provider) do
    if Map.has_key?(values, :model),
      do: :ok,
      else: error(provider, "the :model option is required for provider #{inspect(provider)}")
  end

  defp require_key(values, provider) do
    case Map.fetch(@key_env, provider) do
      {:ok, vars} when not is_map_key(values, :api_key) ->
        error(
          provider,
          "no API key for provider #{inspect(provider)}: pass :api_key or set #{Enum.join(vars, " or ")}"
        )

      _ ->
        :ok
    end
  end

  defp require_base_url(values, provider)
       when provider in [:azure_openai, :openai_compatible] and not is_map_key(values, :base_url) do
    hint = if provider == :azure_openai, do: " (or set AZURE_OPENAI_ENDPOINT)", else: ""
    error(provider, "the :base_url option is required for provider #{inspect(provider)}#{hint}")
  end

  defp require_base_url(_values, _provider), do: :ok

  defp require_aws(values, :bedrock) do
    [
      {:access_key_id, "AWS_ACCESS_KEY_ID"},
      {:secret_access_key, "AWS_SECRET_ACCESS_KEY"},
      {:region, "AWS_REGION"}
    ]
    |> Enum.find(fn {key, _} -> not Map.has_key?(values, key) end)
    |> case do
      nil ->
        :ok

      {key, var} ->
        error(:bedrock, "no #{inspect(key)} for provider :bedrock: pass it or set #{var}")
    end
  end

  defp require_aws(_values, _provider), do: :ok

  defp check_url(%{base_url: url}, provider) do
    if String.starts_with?(url, ["http://", "https://"]),
      do: :ok,
      else:
        error(
          provider,
          "expected :base_url to start with http:// or https://, got: #{inspect(url)}"
        )
  end

  defp check_url(_values, _provider), do: :ok

  # Rust receives every value resolved: the provider's address, Azure's
  # deployment.
  defp resolve_defaults(values, :bedrock) when not is_map_key(values, :base_url),
    do: Map.put(values, :base_url, "https://bedrock-runtime.#{values.region}.amazonaws.com")

  defp resolve_defaults(values, :azure_openai) do
    Map.put_new_lazy(values, :deployment, fn -> values.model end)
  end

  defp resolve_defaults(values, provider) do
    case @base_urls do
      %{^provider => url} -> Map.put_new(values, :base_url, url)
      _ -> values
    end
  end

  defp native_map(values) do
    Map.new(values, fn
      {:headers, headers} -> {"headers", Enum.map(headers, fn {k, v} -> [k, v] end)}
      {key, value} -> {Atom.to_string(key), value}
    end)
  end

  defp error(provider, message) do
    {:error, %LLMError{reason: :config, provider: provider, message: message}}
  end
end
