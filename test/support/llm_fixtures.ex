defmodule Beamlens.LLMFixtures do
  @moduledoc """
  Real-shaped provider replies and configurations for tests that script an
  LLM with `Beamlens.LoopbackServer`.

      server = start_supervised!(Beamlens.LoopbackServer)
      {:ok, config} = Beamlens.LLM.Config.new(LLMFixtures.config(:anthropic, server))

      LoopbackServer.enqueue(server, [
        LLMFixtures.tool_calls(:anthropic, [{"take_snapshot", %{}}]),
        LLMFixtures.tool_calls(:anthropic, [{"fire_alert", %{"severity" => "warning"}}, {"done", %{}}]),
        LLMFixtures.text(:anthropic, "All clear.", usage: %{input: 10, output: 3})
      ])

  Every function takes the provider first (`:anthropic`, `:openai`,
  `:azure_openai`, `:openai_compatible`, `:ollama`, `:bedrock`, `:gemini`)
  and returns a `Beamlens.LoopbackServer` reply.

  Tool calls are `{name, arguments}` or `{id, name, arguments}`; `arguments`
  is a map, or a binary sent verbatim where the provider encodes arguments
  as a string (OpenAI and compatible servers), to script invalid JSON.
  Usage is `%{input: n, output: n, cache_read: n, cache_write: n}` (all
  optional) and is encoded the way each provider reports it.
  """

  alias Beamlens.LoopbackServer

  @providers [:anthropic, :openai, :azure_openai, :openai_compatible, :ollama, :bedrock, :gemini]

  @doc "The providers these fixtures speak."
  @spec providers() :: [atom()]
  def providers, do: @providers

  @doc """
  Options for `Beamlens.LLM.Config.new/1` pointing `provider` at `server`,
  with test credentials (the key is `"test-key-<provider>"`), no retries
  and a short backoff. `extra` options override.
  """
  @spec config(atom(), GenServer.server() | String.t(), keyword()) :: keyword()
  def config(provider, server, extra \\ [])

  def config(provider, server, extra) when not is_binary(server),
    do: config(provider, LoopbackServer.url(server), extra)

  def config(provider, url, extra) do
    base =
      case provider do
        :anthropic ->
          [model: "claude-test", api_key: "test-key-anthropic"]

        :openai ->
          [model: "gpt-test", api_key: "test-key-openai", base_url: url <> "/v1"]

        :azure_openai ->
          [deployment: "gpt-test-deployment", api_key: "test-key-azure_openai"]

        :openai_compatible ->
          [model: "local-test", api_key: "test-key-openai_compatible", base_url: url <> "/v1"]

        :ollama ->
          [model: "llama-test"]

        :gemini ->
          [model: "gemini-test", api_key: "test-key-gemini"]

        :bedrock ->
          [
            model: "anthropic.claude-test-v1:0",
            region: "us-east-1",
            access_key_id: "AKIDTEST",
            secret_access_key: "test-key-bedrock",
            session_token: "test-session-token"
          ]
      end

    [provider: provider, base_url: url, max_retries: 0, base_backoff: 10, max_backoff: 50]
    |> Keyword.merge(base)
    |> Keyword.merge(extra)
  end

  @doc "The path each provider posts to, for a config from `config/3`."
  @spec path(atom()) :: String.t()
  def path(:anthropic), do: "/v1/messages"
  def path(:openai), do: "/v1/chat/completions"
  def path(:openai_compatible), do: "/v1/chat/completions"
  def path(:azure_openai), do: "/openai/deployments/gpt-test-deployment/chat/completions"
  def path(:ollama), do: "/api/chat"
  def path(:bedrock), do: "/model/anthropic.claude-test-v1%3A0/converse"
  def path(:gemini), do: "/models/gemini-test:generateContent"

  @doc "A reply with text only."
  @spec text(atom(), String.t(), keyword()) :: map()
  def text(provider, text, opts \\ []), do: reply(provider, text, [], opts)

  @doc "A reply with tool calls (and `opts[:text]`, default empty)."
  @spec tool_calls(atom(), [tuple()], keyword()) :: map()
  def tool_calls(provider, calls, opts \\ []) do
    calls =
      calls
      |> Enum.with_index()
      |> Enum.map(fn
        {{name, args}, i} -> {"call_#{i}", name, args}
        {{id, name, args}, _} -> {id, name, args}
      end)

    reply(provider, Keyword.get(opts, :text, ""), calls, opts)
  end

  defp reply(provider, text, calls, opts) do
    usage =
      Map.merge(
        %{input: 10, output: 5, cache_read: 0, cache_write: 0},
        Map.new(opts[:usage] || %{})
      )

    stop = Keyword.get(opts, :stop, if(calls == [], do: :end_turn, else: :tool_use))
    %{status: 200, body: body(provider, text, calls, usage, stop, opts)}
  end

  defp body(:anthropic, text, calls, usage, stop, opts) do
    blocks =
      if(text == "", do: [], else: [%{"type" => "text", "text" => text}]) ++
        for {id, name, args} <- calls do
          %{"type" => "tool_use", "id" => id, "name" => name, "input" => args}
        end

    %{
      "id" => "msg_test",
      "type" => "message",
      "role" => "assistant",
      "model" => Keyword.get(opts, :model, "claude-test"),
      "content" => blocks,
      "stop_reason" => Atom.to_string(stop),
      "stop_sequence" => nil,
      "usage" => %{
        "input_tokens" => usage.input,
        "output_tokens" => usage.output,
        "cache_creation_input_tokens" => usage.cache_write,
        "cache_read_input_tokens" => usage.cache_read
      }
    }
  end

  defp body(provider, text, calls, usage, stop, opts)
       when provider in [:openai, :azure_openai, :openai_compatible] do
    message =
      %{"role" => "assistant", "content" => if(text == "", do: nil, else: text)}
      |> then(fn message ->
        if calls == [] do
          message
        else
          Map.put(
            message,
            "tool_calls",
            for {id, name, args} <- calls do
              arguments = if is_binary(args), do: args, else: LoopbackServer.JSON.encode!(args)

              %{
                "id" => id,
                "type" => "function",
                "function" => %{"name" => name, "arguments" => arguments}
              }
            end
          )
        end
      end)

    finish =
      case stop do
        :end_turn -> "stop"
        :tool_use -> "tool_calls"
        :max_tokens -> "length"
        other -> Atom.to_string(other)
      end

    %{
      "id" => "chatcmpl-test",
      "object" => "chat.completion",
      "created" => 1_700_000_000,
      "model" => Keyword.get(opts, :model, "gpt-test"),
      "choices" => [%{"index" => 0, "message" => message, "finish_reason" => finish}],
      "usage" => %{
        "prompt_tokens" => usage.input + usage.cache_read,
        "completion_tokens" => usage.output,
        "total_tokens" => usage.input + usage.cache_read + usage.output,
        "prompt_tokens_details" => %{"cached_tokens" => usage.cache_read}
      }
    }
  end

  defp body(:ollama, text, calls, usage, stop, opts) do
    message = %{"role" => "assistant", "content" => text}

    message =
      if calls == [],
        do: message,
        else:
          Map.put(
            message,
            "tool_calls",
            for(
              {_id, name, args} <- calls,
              do: %{"function" => %{"name" => name, "arguments" => args}}
            )
          )

    %{
      "model" => Keyword.get(opts, :model, "llama-test"),
      "created_at" => "2025-01-01T00:00:00.000000Z",
      "message" => message,
      "done" => true,
      "done_reason" => if(stop == :max_tokens, do: "length", else: "stop"),
      "total_duration" => 1_000_000,
      "prompt_eval_count" => usage.input,
      "eval_count" => usage.output
    }
  end

  defp body(:bedrock, text, calls, usage, stop, _opts) do
    content =
      if(text == "", do: [], else: [%{"text" => text}]) ++
        for {id, name, args} <- calls do
          %{"toolUse" => %{"toolUseId" => id, "name" => name, "input" => args}}
        end

    %{
      "output" => %{"message" => %{"role" => "assistant", "content" => content}},
      "stopReason" => Atom.to_string(stop),
      "usage" => %{
        "inputTokens" => usage.input,
        "outputTokens" => usage.output,
        "totalTokens" => usage.input + usage.output + usage.cache_read + usage.cache_write,
        "cacheReadInputTokens" => usage.cache_read,
        "cacheWriteInputTokens" => usage.cache_write
      },
      "metrics" => %{"latencyMs" => 42}
    }
  end

  defp body(:gemini, text, calls, usage, stop, opts) do
    parts =
      if(text == "", do: [], else: [%{"text" => text}]) ++
        for {_id, name, args} <- calls do
          %{"functionCall" => %{"name" => name, "args" => args}}
        end

    parts =
      case {opts[:signature], parts} do
        {nil, parts} -> parts
        {signature, [first | rest]} -> [Map.put(first, "thoughtSignature", signature) | rest]
      end

    %{
      "candidates" => [
        %{
          "content" => %{"role" => "model", "parts" => parts},
          "finishReason" => if(stop == :max_tokens, do: "MAX_TOKENS", else: "STOP"),
          "index" => 0
        }
      ],
      "usageMetadata" => %{
        "promptTokenCount" => usage.input + usage.cache_read,
        "candidatesTokenCount" => usage.output,
        "cachedContentTokenCount" => usage.cache_read,
        "totalTokenCount" => usage.input + usage.cache_read + usage.output
      },
      "modelVersion" => Keyword.get(opts, :model, "gemini-test")
    }
  end

  @doc """
  A provider's error reply of the given kind: `:rate_limited`,
  `:overloaded`, `:unauthorized`, `:bad_request` or `:server_error`, and
  for `:bedrock` also `:model_not_ready` (the 429 `ModelNotReadyException`
  Bedrock sends while it loads a model).
  `opts[:retry_after]` (seconds, as a string or integer) adds a
  `Retry-After` header; `opts[:message]` overrides the text;
  `opts[:retry_delay]` (`:gemini`, a protobuf duration such as `"2s"`) adds
  the `google.rpc.RetryInfo` detail Gemini puts in its 429 bodies.
  """
  @spec error(atom(), atom(), keyword()) :: map()
  def error(provider, kind, opts \\ []) do
    {status, message} =
      case kind do
        :rate_limited -> {429, "Rate limit exceeded"}
        :overloaded -> {if(provider == :anthropic, do: 529, else: 503), "Overloaded"}
        :unauthorized -> {if(provider == :gemini, do: 400, else: 401), "invalid API key"}
        :bad_request -> {400, "bad request"}
        :server_error -> {500, "internal error"}
        :model_not_ready when provider == :bedrock -> {429, "Model is not ready for inference."}
      end

    message = Keyword.get(opts, :message, message)
    headers = if ra = opts[:retry_after], do: [{"retry-after", to_string(ra)}], else: []
    {body, extra_headers} = error_body(provider, kind, status, message)
    body = add_retry_delay(body, provider, opts[:retry_delay])
    %{status: status, headers: headers ++ extra_headers, body: body}
  end

  defp add_retry_delay(body, _provider, nil), do: body

  defp add_retry_delay(%{"error" => error} = body, :gemini, delay) do
    details =
      error["details"] ++
        [
          %{
            "@type" => "type.googleapis.com/google.rpc.QuotaFailure",
            "violations" => [
              %{"quotaId" => "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}
            ]
          },
          %{"@type" => "type.googleapis.com/google.rpc.RetryInfo", "retryDelay" => delay}
        ]

    %{body | "error" => %{error | "details" => details}}
  end

  defp error_body(:anthropic, kind, _status, message) do
    type =
      case kind do
        :rate_limited -> "rate_limit_error"
        :overloaded -> "overloaded_error"
        :unauthorized -> "authentication_error"
        :bad_request -> "invalid_request_error"
        :server_error -> "api_error"
      end

    {%{"type" => "error", "error" => %{"type" => type, "message" => message}}, []}
  end

  defp error_body(provider, kind, _status, message)
       when provider in [:openai, :azure_openai, :openai_compatible] do
    {type, code} =
      case kind do
        :rate_limited -> {"requests", "rate_limit_exceeded"}
        :unauthorized -> {"invalid_request_error", "invalid_api_key"}
        :bad_request -> {"invalid_request_error", nil}
        _ -> {"server_error", nil}
      end

    {%{"error" => %{"message" => message, "type" => type, "param" => nil, "code" => code}}, []}
  end

  defp error_body(:ollama, _kind, _status, message), do: {%{"error" => message}, []}

  defp error_body(:bedrock, kind, _status, message) do
    type =
      case kind do
        :rate_limited -> "ThrottlingException"
        :overloaded -> "ServiceUnavailableException"
        :unauthorized -> "UnrecognizedClientException"
        :bad_request -> "ValidationException"
        :server_error -> "InternalServerException"
        :model_not_ready -> "ModelNotReadyException"
      end

    {%{"message" => message},
     [{"x-amzn-errortype", "#{type}:http://internal.amazon.com/coral/com.amazon.bedrock/"}]}
  end

  defp error_body(:gemini, kind, status, message) do
    {status_name, details} =
      case kind do
        :rate_limited ->
          {"RESOURCE_EXHAUSTED", []}

        :overloaded ->
          {"UNAVAILABLE", []}

        :unauthorized ->
          {"INVALID_ARGUMENT",
           [
             %{
               "@type" => "type.googleapis.com/google.rpc.ErrorInfo",
               "reason" => "API_KEY_INVALID",
               "domain" => "googleapis.com"
             }
           ]}

        :bad_request ->
          {"INVALID_ARGUMENT", []}

        :server_error ->
          {"INTERNAL", []}
      end

    {%{
       "error" => %{
         "code" => status,
         "message" => message,
         "status" => status_name,
         "details" => details
       }
     }, []}
  end
end
