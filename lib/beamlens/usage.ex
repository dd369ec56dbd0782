defmodule Beamlens.Usage do
  @moduledoc """
  Token accounting per caller (a watcher, the coordinator's summarizer, an
  investigation), over the last hour and since start, and what BeamLens
  last saw of each provider's health.

  Fed by `Beamlens.LLM.handle_reply/2` with the usage the provider
  reported. When a provider reports none (both counts zero), the tokens
  are estimated (about one token per 4 bytes of the request and of the
  reply) and the caller's figures are marked `estimated: true`.

  Node-wide, like `Beamlens.LLM.usage/1` and the token budget: callers are
  terms such as `{:watcher, :beam}`, so two instances with a watcher of the
  same name share its figures. Bounded: at most 1,024 callers (further
  ones are counted under `:other`) and one row per caller and minute for
  the last hour, pruned every minute. The table belongs to a small process
  the first `Beamlens` supervisor starts and that lives as long as the VM;
  before any BeamLens instance has started, nothing is recorded.
  """

  use GenServer

  @table __MODULE__
  @max_callers 1_024
  @hour_minutes 60
  @breaker_threshold 5
  @breaker_cooldown 30_000

  @type tokens :: %{input: non_neg_integer(), output: non_neg_integer()}
  @type figures :: %{last_hour: tokens(), total: tokens(), estimated: boolean()}

  @doc false
  def child_spec(_opts) do
    %{id: __MODULE__, start: {__MODULE__, :start, []}}
  end

  @doc false
  # One table per node, kept for the life of the VM like the native usage
  # ledger: its owner is started once, unlinked, by the first Beamlens
  # supervisor, and outlives it (figures survive a restart of BeamLens).
  @spec start() :: :ignore | {:error, term()}
  def start do
    case GenServer.start(__MODULE__, [], name: __MODULE__) do
      {:ok, _pid} -> :ignore
      {:error, {:already_started, _}} -> :ignore
      {:error, reason} -> {:error, reason}
    end
  end

  @doc false
  # Called by Beamlens.LLM.handle_reply/2 in the process that made the request.
  @spec record_reply(
          Beamlens.LLM.Pending.t(),
          {:ok, Beamlens.LLM.Response.t()} | {:error, Beamlens.LLMError.t()},
          integer()
        ) :: :ok
  def record_reply(pending, result, now_ms \\ System.system_time(:millisecond))

  def record_reply(pending, {:ok, response}, now_ms) do
    usage = response.usage || %{}
    input = Map.get(usage, :input_tokens, 0) + Map.get(usage, :cache_read_tokens, 0)
    output = Map.get(usage, :output_tokens, 0)

    if input + output == 0 do
      estimate = Map.get(pending, :input_estimate) || 0
      record(pending.caller, estimate, reply_estimate(response), true, now_ms)
    else
      record(pending.caller, input, output, false, now_ms)
    end

    provider_result(response.provider, :ok, now_ms)
  end

  def record_reply(pending, {:error, error}, now_ms) do
    provider_result(error.provider || pending.provider, error.reason, now_ms)
  end

  @doc false
  # The estimated tokens of a request: about one per 4 bytes.
  @spec estimate(term()) :: non_neg_integer()
  def estimate(term), do: div(:erlang.external_size(term), 4)

  defp reply_estimate(response) do
    calls = Enum.map(response.tool_calls || [], &{&1.name, &1.arguments})
    estimate({response.content, calls})
  end

  @doc """
  Records `input` and `output` tokens for `caller` at `now_ms` (system
  time). `estimated?` marks figures that are estimates.
  """
  @spec record(term(), non_neg_integer(), non_neg_integer(), boolean(), integer()) :: :ok
  def record(caller, input, output, estimated?, now_ms \\ System.system_time(:millisecond)) do
    key = caller_key(caller)
    minute = div(now_ms, 60_000)
    est = if estimated?, do: 1, else: 0
    row = {{key, minute}, 0, 0, 0}
    :ets.update_counter(@table, {key, minute}, [{2, input}, {3, output}, {4, est}], row)
    :ets.update_counter(@table, {key, :total}, [{2, input}, {3, output}, {4, est}], row)
    :ok
  rescue
    ArgumentError -> :ok
  end

  defp caller_key(caller) do
    cond do
      :ets.member(@table, {caller, :total}) ->
        caller

      :ets.update_counter(@table, :callers, {2, 1}, {:callers, 0}) <= @max_callers ->
        caller

      true ->
        :other
    end
  end

  @doc """
  The tokens of `caller` in the last hour and since start, and whether any
  of them are estimates.
  """
  @spec get(term(), integer()) :: figures()
  def get(caller, now_ms \\ System.system_time(:millisecond)) do
    since = div(now_ms, 60_000) - @hour_minutes

    rows =
      :ets.select(@table, [
        {{{caller, :"$1"}, :"$2", :"$3", :"$4"},
         [{:orelse, {:==, :"$1", :total}, {:>, :"$1", since}}], [{{:"$1", :"$2", :"$3", :"$4"}}]}
      ])

    {hour, total} = Enum.split_with(rows, fn {minute, _, _, _} -> minute != :total end)

    %{
      last_hour: sum(hour),
      total: sum(total),
      estimated: Enum.any?(total, fn {_, _, _, est} -> est > 0 end)
    }
  rescue
    ArgumentError -> empty()
  end

  @doc "Figures with no tokens."
  @spec empty() :: figures()
  def empty,
    do: %{last_hour: %{input: 0, output: 0}, total: %{input: 0, output: 0}, estimated: false}

  defp sum(rows) do
    Enum.reduce(rows, %{input: 0, output: 0}, fn {_, i, o, _}, acc ->
      %{input: acc.input + i, output: acc.output + o}
    end)
  end

  ## Providers

  defp provider_result(nil, _result, _now), do: :ok

  defp provider_result(provider, :ok, _now) do
    :ets.insert(@table, {{:provider, provider}, 0, nil, nil})
    :ok
  rescue
    ArgumentError -> :ok
  end

  # Errors that say nothing about the provider's health.
  defp provider_result(_provider, reason, _now)
       when reason in [
              :budget_exceeded,
              :busy,
              :invalid_request,
              :config,
              :unavailable,
              :internal
            ],
       do: :ok

  defp provider_result(provider, reason, now) do
    {failures, opened} =
      case :ets.lookup(@table, {:provider, provider}) do
        [{_, failures, _last, opened}] -> {failures + 1, opened}
        [] -> {1, nil}
      end

    opened = if reason == :circuit_open, do: now, else: opened
    :ets.insert(@table, {{:provider, provider}, failures, now, opened})
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc """
  The circuit breaker of `provider` as BeamLens last saw it in replies:
  `:open` within `:breaker_cooldown` of a `:circuit_open` error or of the
  last of `:breaker_threshold` failed requests in a row, `:half_open` once
  that cooldown has passed without a success since, `:closed` otherwise.
  `opts` are the provider's `:breaker_threshold` (default #{@breaker_threshold})
  and `:breaker_cooldown` (ms, default #{@breaker_cooldown}); `0` as
  threshold means no breaker.
  """
  @spec breaker(atom(), keyword() | map(), integer()) :: :closed | :open | :half_open
  def breaker(provider, opts \\ [], now_ms \\ System.system_time(:millisecond)) do
    threshold = opts[:breaker_threshold] || @breaker_threshold
    cooldown = opts[:breaker_cooldown] || @breaker_cooldown

    case :ets.lookup(@table, {:provider, provider}) do
      [{_, failures, last, opened}] ->
        since =
          cond do
            is_integer(opened) -> opened
            threshold > 0 and failures >= threshold -> last
            true -> nil
          end

        cond do
          since == nil -> :closed
          now_ms - since < cooldown -> :open
          true -> :half_open
        end

      [] ->
        :closed
    end
  rescue
    ArgumentError -> :closed
  end

  ## Server

  @impl true
  def init([]) do
    :ets.new(@table, [:named_table, :public, :set, write_concurrency: true])
    schedule()
    {:ok, nil}
  end

  @impl true
  def handle_info(:prune, state) do
    prune(System.system_time(:millisecond))
    schedule()
    {:noreply, state}
  end

  @doc false
  # Drops the minute rows older than an hour before `now_ms`.
  @spec prune(integer()) :: non_neg_integer()
  def prune(now_ms) do
    cutoff = div(now_ms, 60_000) - @hour_minutes

    :ets.select_delete(@table, [
      {{{:_, :"$1"}, :_, :_, :_}, [{:is_integer, :"$1"}, {:"=<", :"$1", cutoff}], [true]}
    ])
  end

  defp schedule, do: Process.send_after(self(), :prune, 60_000)
end
