defmodule Beamlens.LLMError do
  @moduledoc """
  Why an LLM request (or an LLM configuration) failed.

  Fields:

    * `:reason` - an atom from a fixed list:
      * `:timeout` - no complete answer within `:timeout` (or HTTP 408);
      * `:connect` - the connection could not be made or broke;
      * `:rate_limited` - HTTP 429 (or the provider's throttling error);
      * `:overloaded` - HTTP 503/529, the provider is overloaded;
      * `:server_error` - another HTTP 5xx;
      * `:conflict` - HTTP 409;
      * `:unauthorized` - the key or credentials were refused (401/403);
      * `:not_found` - HTTP 404, usually a wrong model name or `base_url`;
      * `:bad_request` - another HTTP 4xx: the provider refused the request;
      * `:malformed_response` - the reply was not what the API documents
        (invalid or cut-off JSON, missing fields);
      * `:body_too_large` - the reply was larger than `:max_body_bytes`;
      * `:circuit_open` - the provider failed repeatedly and is skipped for
        a while (see `Beamlens.LLM.Config`);
      * `:budget_exceeded` - the hourly token budget is used up
        (`Beamlens.LLM.set_budget/1`);
      * `:busy` - too many native jobs are in flight;
      * `:invalid_request` - the request map is malformed (the message
        names the field);
      * `:config` - the configuration is invalid or incomplete (the message
        names the option);
      * `:unavailable` - the native library is not loaded or shutting down;
      * `:internal` - a bug in BeamLens (caught; the VM is unaffected).
    * `:provider` - the provider that failed (`:anthropic`, ...), or `nil`.
    * `:status` - the HTTP status, or `nil` when there was no HTTP answer.
    * `:message` - a readable explanation. It never contains an API key or
      other credential: text quoted from a provider is scrubbed first.
    * `:retryable?` - whether trying again later may succeed. The client
      already retried as configured before reporting the error.
    * `:retry_after` - the wait in milliseconds the provider asked for
      (`Retry-After`, `retry-after-ms`, or Gemini's `RetryInfo.retryDelay`),
      at most a day (86,400,000), or `nil`.
    * `:attempts` - HTTP attempts made, over all providers of the chain.
    * `:details` - extra machine-readable values (`%{used: n, budget: n}`
      for `:budget_exceeded`).
  """

  @reasons [
    :timeout,
    :connect,
    :rate_limited,
    :overloaded,
    :server_error,
    :conflict,
    :unauthorized,
    :not_found,
    :bad_request,
    :malformed_response,
    :body_too_large,
    :circuit_open,
    :budget_exceeded,
    :busy,
    :invalid_request,
    :config,
    :unavailable,
    :internal
  ]

  @type reason ::
          :timeout
          | :connect
          | :rate_limited
          | :overloaded
          | :server_error
          | :conflict
          | :unauthorized
          | :not_found
          | :bad_request
          | :malformed_response
          | :body_too_large
          | :circuit_open
          | :budget_exceeded
          | :busy
          | :invalid_request
          | :config
          | :unavailable
          | :internal

  @type t :: %__MODULE__{
          reason: reason(),
          provider: atom() | nil,
          status: non_neg_integer() | nil,
          message: String.t(),
          retryable?: boolean(),
          retry_after: non_neg_integer() | nil,
          attempts: non_neg_integer(),
          details: map()
        }

  defexception reason: :internal,
               provider: nil,
               status: nil,
               message: "LLM request failed",
               retryable?: false,
               retry_after: nil,
               attempts: 0,
               details: %{}

  @impl true
  def message(%__MODULE__{provider: nil, reason: reason, message: message}),
    do: "(#{reason}) #{message}"

  def message(%__MODULE__{provider: provider, reason: reason, message: message}),
    do: "(#{reason}) #{provider}: #{message}"

  @doc """
  The reasons an error can have.
  """
  @spec reasons() :: [reason()]
  def reasons, do: @reasons

  @doc false
  @spec from_native(term()) :: t()
  def from_native({:llm, message, details}) when is_binary(message) and is_map(details) do
    extra = Map.drop(details, ~w(reason provider status retryable retry_after_ms attempts))

    %__MODULE__{
      reason: Map.get(details, "reason", :internal),
      provider: Map.get(details, "provider"),
      status: Map.get(details, "status"),
      message: message,
      retryable?: Map.get(details, "retryable", false),
      retry_after: Map.get(details, "retry_after_ms"),
      attempts: Map.get(details, "attempts", 0),
      details: Map.new(extra, fn {key, value} -> {detail_key(key), value} end)
    }
  end

  def from_native(:busy), do: from_native(Beamlens.Error.busy())

  def from_native({:busy, message, _details}) when is_binary(message) do
    %__MODULE__{reason: :busy, message: message, retryable?: true}
  end

  def from_native({:bad_argument, message, _details}) when is_binary(message) do
    %__MODULE__{reason: :invalid_request, message: message}
  end

  def from_native({:shutdown, message, _details}) when is_binary(message) do
    %__MODULE__{reason: :unavailable, message: message, retryable?: true}
  end

  def from_native({:panic, message, _details}) when is_binary(message) do
    %__MODULE__{reason: :internal, message: message}
  end

  def from_native(other) do
    %__MODULE__{reason: :internal, message: "unexpected native error: #{inspect(other)}"}
  end

  defp detail_key("used"), do: :used
  defp detail_key("budget"), do: :budget
  defp detail_key(other), do: other
end
