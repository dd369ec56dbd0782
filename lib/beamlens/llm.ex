defmodule Beamlens.LLM do
  @moduledoc """
  Chat with a language model from any process without blocking it.

  The HTTP work happens in the native client (Rust, on its own threads):
  `chat_async/3` returns at once with a `Beamlens.LLM.Pending` and the
  answer later arrives as a message `{ref, raw}` that `handle_reply/2` turns
  into a result. A GenServer keeps serving calls while the model thinks:

      def handle_info(:investigate, state) do
        case Beamlens.LLM.chat_async(state.llm, request(state), caller: {:watcher, :beam}) do
          {:ok, pending} -> {:noreply, %{state | pending: pending}}
          {:error, %Beamlens.LLMError{reason: :budget_exceeded}} -> {:noreply, rules_only(state)}
          {:error, error} -> {:noreply, retry_later(state, error)}
        end
      end

      def handle_info({ref, raw}, %{pending: %{ref: ref} = pending} = state) do
        case Beamlens.LLM.handle_reply(pending, raw) do
          {:ok, response} -> ...
          {:error, error} -> ...
        end
      end

  `chat/3` does both steps in the calling process, for scripts and tests.

  ## Requests

      %{
        system: "You watch the BEAM...",
        messages: [
          %{role: :user, content: "Memory grew 40% in 5 minutes."},
          %{role: :assistant, content: "", tool_calls: [%{id: "call_1", name: "take_snapshot", arguments: %{}}]},
          %{role: :tool, tool_call_id: "call_1", name: "take_snapshot", content: "...", is_error: false}
        ],
        tools: [%{name: "take_snapshot", description: "...", parameters: %{"type" => "object"}}],
        max_tokens: 1024,
        tool_choice: :auto,     # :auto | :required | :none | {:tool, name}
        temperature: nil
      }

  `:tool_calls` may hold the `Beamlens.LLM.ToolCall` structs of a previous
  response as they are. A `:tool` message's `:content` may be any term that
  converts to JSON; it is sent as JSON text. The request is checked before
  anything is sent; an invalid one fails at once with reason
  `:invalid_request` and a message naming the field.

  ## Reliability

  Each provider of the configuration's chain gets up to `:max_retries + 1`
  attempts, each bounded by `:timeout`; timeouts, connection errors and
  HTTP 408/409/429/5xx/529 are retried with exponential backoff and jitter,
  or after the `Retry-After` the provider asked for. Other 4xx are final.
  When a provider gives up (or its circuit breaker is open) the next one is
  tried. Replies larger than `:max_body_bytes`, malformed or cut-off
  replies become `Beamlens.LLMError`s. A tool call with unparsable
  arguments or an unknown name does not fail the response: it comes back
  with `:error` set (see `Beamlens.LLM.ToolCall`).

  ## Usage and budget

  Every finished request is counted, in total and per `:caller`
  (`usage/0`, `usage/1`). `set_budget/1` caps the tokens used in any
  60-minute window; once it is reached `chat_async/3` fails at once with
  reason `:budget_exceeded` and emits `[:beamlens, :llm, :budget_exceeded]`.
  `handle_reply/2` also feeds `Beamlens.Usage` (tokens per caller over the
  last hour, estimated when a provider reports none).

  ## Telemetry

  `[:beamlens, :llm, :request, :start | :stop | :exception]` and
  `[:beamlens, :llm, :budget_exceeded]`; see `Beamlens.Telemetry`.
  """

  alias Beamlens.{LLMError, Native, Runtime, Telemetry}
  alias Beamlens.LLM.{Config, Pending, Response}

  @type request :: %{
          optional(:system) => String.t() | nil,
          required(:messages) => [map()],
          optional(:tools) => [map()],
          optional(:max_tokens) => pos_integer(),
          optional(:tool_choice) => :auto | :required | :none | {:tool, String.t()},
          optional(:temperature) => number() | nil
        }

  @type usage :: %{
          input_tokens: non_neg_integer(),
          output_tokens: non_neg_integer(),
          cache_read_tokens: non_neg_integer(),
          cache_write_tokens: non_neg_integer(),
          total_tokens: non_neg_integer(),
          requests: non_neg_integer(),
          failures: non_neg_integer()
        }

  @doc """
  Starts a chat request and returns at once.

  The reply arrives in the calling process as `{pending.ref, raw}`; pass
  `raw` to `handle_reply/2`. Fails at once, without a message to come,
  when the request is invalid (`:invalid_request`), the budget is used up
  (`:budget_exceeded`) or too many native jobs are in flight (`:busy`).

  Options:

    * `:caller` - any term naming who asks (`{:watcher, :beam}`); usage is
      counted per caller and it is in the telemetry metadata. Default:
      `:unknown`.
  """
  @spec chat_async(Config.t(), request(), keyword()) ::
          {:ok, Pending.t()} | {:error, LLMError.t()}
  def chat_async(%Config{} = config, request, opts \\ [])
      when is_map(request) and is_list(opts) do
    with {:ok, caller} <- caller_opt(opts) do
      started = System.monotonic_time()
      metadata = %{provider: Config.provider(config), model: Config.model(config), caller: caller}

      case native_chat(config, request, caller) do
        {:ok, ref} ->
          span_context = make_ref()
          metadata = Map.put(metadata, :telemetry_span_context, span_context)

          Telemetry.execute(
            [:llm, :request, :start],
            %{monotonic_time: started, system_time: System.system_time()},
            metadata
          )

          {:ok,
           %Pending{
             ref: ref,
             caller: caller,
             provider: metadata.provider,
             model: metadata.model,
             started_at: started,
             span_context: span_context,
             # For Beamlens.Usage, when the provider reports no usage.
             input_estimate: Beamlens.Usage.estimate(request)
           }}

        {:error, %LLMError{reason: :budget_exceeded} = error} ->
          Telemetry.execute(
            [:llm, :budget_exceeded],
            %{used: error.details[:used] || 0, budget: error.details[:budget] || 0},
            metadata
          )

          {:error, error}

        {:error, error} ->
          {:error, error}
      end
    end
  end

  defp caller_opt(opts) do
    case Keyword.keys(opts) -- [:caller] do
      [] ->
        {:ok, Keyword.get(opts, :caller, :unknown)}

      [key | _] ->
        {:error,
         %LLMError{
           reason: :invalid_request,
           message: "unknown option #{inspect(key)} (expected :caller)"
         }}
    end
  end

  defp native_chat(config, request, caller) do
    case Native.llm_chat(config.handles, request, caller_key(caller)) do
      {:ok, ref} -> {:ok, ref}
      {:error, reason} -> {:error, LLMError.from_native(reason)}
    end
  rescue
    e in ErlangError ->
      {:error, %LLMError{reason: :unavailable, message: Runtime.not_loaded(e).message}}
  end

  @doc """
  Turns the raw reply of a pending request into a result, and emits the
  `[:beamlens, :llm, :request, :stop]` (success) or `:exception` (error)
  telemetry event.

  Call it once, from the process that called `chat_async/3`, with the
  second element of the `{pending.ref, raw}` message.
  """
  @spec handle_reply(Pending.t(), term()) :: {:ok, Response.t()} | {:error, LLMError.t()}
  def handle_reply(%Pending{} = pending, raw) do
    result = do_handle_reply(pending, raw)
    Beamlens.Usage.record_reply(pending, result)
    result
  end

  defp do_handle_reply(pending, raw) do
    now = System.monotonic_time()
    duration = now - pending.started_at

    metadata = %{
      provider: pending.provider,
      model: pending.model,
      caller: pending.caller,
      telemetry_span_context: pending.span_context
    }

    case raw do
      {:ok, %{} = map} ->
        response = Response.from_native(map)

        measurements =
          Map.merge(response.usage, %{
            duration: duration,
            monotonic_time: now,
            total_tokens: Enum.sum(Map.values(response.usage))
          })

        Telemetry.execute(
          [:llm, :request, :stop],
          measurements,
          Map.merge(metadata, %{
            provider: response.provider,
            model: response.model,
            stop_reason: response.stop_reason,
            attempts: response.attempts,
            fallback?: Map.get(map, "chain_index", 0) > 0
          })
        )

        {:ok, response}

      {:error, reason} ->
        error = LLMError.from_native(reason)

        Telemetry.execute(
          [:llm, :request, :exception],
          %{duration: duration, monotonic_time: now},
          Map.merge(metadata, %{
            provider: error.provider || pending.provider,
            kind: :error,
            reason: error,
            stacktrace: []
          })
        )

        {:error, error}
    end
  end

  @doc """
  Waits in the calling process for the reply of `pending` and handles it.

  The default timeout covers every attempt and backoff the configuration
  allows. On timeout the request keeps running and its reply will still
  arrive as `{ref, raw}`; long-lived processes should ignore such stray
  messages.
  """
  @spec await(Pending.t(), timeout()) :: {:ok, Response.t()} | {:error, LLMError.t()}
  def await(%Pending{ref: ref} = pending, timeout) do
    receive do
      {^ref, raw} -> handle_reply(pending, raw)
    after
      timeout ->
        {:error,
         %LLMError{
           reason: :timeout,
           provider: pending.provider,
           message: "no reply within #{timeout} ms",
           retryable?: true
         }}
    end
  end

  @doc """
  Sends a chat request and waits for the answer in the calling process.

  Takes the options of `chat_async/3`, plus `:timeout` (default: the
  longest the configured retries and fallbacks can take, plus 5 s).
  """
  @spec chat(Config.t(), request(), keyword()) :: {:ok, Response.t()} | {:error, LLMError.t()}
  def chat(%Config{} = config, request, opts \\ []) do
    {timeout, opts} = Keyword.pop(opts, :timeout, worst_case(config))

    with {:ok, pending} <- chat_async(config, request, opts) do
      await(pending, timeout)
    end
  end

  @doc false
  # The longest a request may take before the native client answers.
  @spec worst_case(Config.t()) :: non_neg_integer()
  def worst_case(%Config{providers: providers}) do
    Enum.reduce(providers, 5_000, fn info, acc ->
      retries = info.max_retries
      waits = max(info.max_backoff, info.max_retry_after)
      acc + info.timeout * (retries + 1) + waits * retries
    end)
  end

  @doc """
  Tokens used and requests made since the VM started, over all callers.

  `:input_tokens` excludes cached input, counted apart in
  `:cache_read_tokens` and `:cache_write_tokens`; `:total_tokens` is the sum
  of the four. `:failures` counts requests that ended in an error.
  """
  @spec usage() :: usage()
  def usage, do: native_usage(nil)

  @doc """
  Like `usage/0`, for the requests made with `caller: caller`.

  At most 1,024 distinct callers are counted; usage beyond is counted
  under the caller `"other"`.
  """
  @spec usage(term()) :: usage()
  def usage(caller), do: native_usage(caller_key(caller))

  defp native_usage(key) do
    counters = Native.llm_usage(key)

    %{
      input_tokens: counters["input_tokens"],
      output_tokens: counters["output_tokens"],
      cache_read_tokens: counters["cache_read_tokens"],
      cache_write_tokens: counters["cache_write_tokens"],
      total_tokens: counters["total_tokens"],
      requests: counters["requests"],
      failures: counters["failures"]
    }
  end

  # "other" is the overflow bucket of the native ledger; no inspected term
  # can equal it (strings inspect with quotes).
  defp caller_key(caller), do: inspect(caller, limit: 50, printable_limit: 200)

  @doc """
  Sets the token budget: the most tokens (all four counters) that requests
  may use in any 60-minute window, or `:infinity` (the default) for no cap.

  The budget is checked when a request starts; requests already in flight
  are still counted when they finish.
  """
  @spec set_budget(pos_integer() | :infinity) :: :ok
  def set_budget(:infinity), do: Native.llm_set_budget(nil)

  def set_budget(tokens) when is_integer(tokens) and tokens > 0,
    do: Native.llm_set_budget(tokens)

  def set_budget(other) do
    raise ArgumentError,
          "expected the budget to be a positive integer or :infinity, got: #{inspect(other)}"
  end

  @doc """
  The budget and the tokens used in the last 60 minutes:
  `%{budget: pos_integer() | :infinity, used: non_neg_integer()}`.
  """
  @spec budget() :: %{budget: pos_integer() | :infinity, used: non_neg_integer()}
  def budget do
    %{"budget" => budget, "used" => used} = Native.llm_budget()
    %{budget: budget, used: used}
  end
end
