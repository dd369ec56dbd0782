defmodule Beamlens.UsageTest do
  # Node-wide table; every test uses callers of its own.
  use ExUnit.Case, async: true

  alias Beamlens.{LLM, Usage}

  setup context do
    # The owner lives as long as the VM; starting it again is a no-op.
    :ignore = Usage.start()
    %{caller: {:usage_test, context.test}}
  end

  test "counts tokens per caller over the last hour and in total", %{caller: caller} do
    now = 1_800_000_000_000
    :ok = Usage.record(caller, 100, 20, false, now - 2 * 3_600_000)
    :ok = Usage.record(caller, 10, 2, false, now - 60_000)
    :ok = Usage.record(caller, 5, 1, false, now)

    assert %{
             last_hour: %{input: 15, output: 3},
             total: %{input: 115, output: 23},
             estimated: false
           } = Usage.get(caller, now)

    assert Usage.get({:usage_test, :nobody}, now) == Usage.empty()
  end

  test "a reply without usage is estimated and marked", %{caller: caller} do
    pending = %LLM.Pending{
      ref: make_ref(),
      caller: caller,
      provider: :ollama,
      started_at: 0,
      span_context: make_ref(),
      input_estimate:
        Usage.estimate(%{messages: [%{role: :user, content: String.duplicate("a", 400)}]})
    }

    response = %LLM.Response{
      content: String.duplicate("b", 200),
      tool_calls: [],
      usage: %{input_tokens: 0, output_tokens: 0, cache_read_tokens: 0, cache_write_tokens: 0},
      provider: :ollama
    }

    Usage.record_reply(pending, {:ok, response})
    figures = Usage.get(caller)
    assert figures.estimated
    assert figures.total.input >= 100
    assert figures.total.output >= 50
  end

  test "old minutes are pruned", %{caller: caller} do
    now = 1_900_000_000_000
    :ok = Usage.record(caller, 7, 7, false, now - 3 * 3_600_000)
    Usage.prune(now)
    # The total stays; the minute row is gone.
    assert %{total: %{input: 7}, last_hour: %{input: 0}} = Usage.get(caller, now)

    assert :ets.match_object(Usage, {{caller, now |> div(60_000) |> Kernel.-(180)}, :_, :_, :_}) ==
             []
  end

  test "the breaker as seen in replies" do
    provider = :"usage_test_provider_#{System.unique_integer([:positive])}"

    pending = %LLM.Pending{
      ref: make_ref(),
      caller: :x,
      provider: provider,
      started_at: 0,
      span_context: make_ref()
    }

    error = %Beamlens.LLMError{reason: :server_error, provider: provider, message: "500"}
    now = 2_000_000_000_000

    for _ <- 1..4, do: Usage.record_reply(pending, {:error, error}, now)
    assert Usage.breaker(provider, [], now) == :closed
    # The provider's own threshold and cooldown apply.
    assert Usage.breaker(provider, [breaker_threshold: 3, breaker_cooldown: 1_000], now) == :open
    assert Usage.breaker(provider, [breaker_threshold: 0], now) == :closed
    Usage.record_reply(pending, {:error, error}, now)
    assert Usage.breaker(provider, [], now) == :open
    assert Usage.breaker(provider, [], now + 31_000) == :half_open

    ok = %LLM.Response{
      content: "",
      tool_calls: [],
      usage: %{input_tokens: 1, output_tokens: 1},
      provider: provider
    }

    Usage.record_reply(%{pending | caller: {:usage_test, provider}}, {:ok, ok}, now)
    assert Usage.breaker(provider, [], now) == :closed

    circuit = %Beamlens.LLMError{reason: :circuit_open, provider: provider, message: "open"}
    Usage.record_reply(pending, {:error, circuit}, now)
    assert Usage.breaker(provider, [], now + 1) == :open
  end
end
