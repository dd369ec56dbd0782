defmodule Beamlens.LLMBudgetTest do
  # The budget is node-wide: these tests run alone.
  use ExUnit.Case, async: false

  alias Beamlens.{LLM, LLMError, LLMFixtures, LoopbackServer}
  alias Beamlens.LLM.Config

  @request %{messages: [%{role: :user, content: "Status?"}], max_tokens: 50}

  setup context do
    handler_id = "#{inspect(__MODULE__)}-#{context.test}"
    # The budget is node-wide; an earlier test's BeamLens may have set one.
    LLM.set_budget(:infinity)

    on_exit(fn ->
      :telemetry.detach(handler_id)
      LLM.set_budget(:infinity)
    end)

    server = start_supervised!(LoopbackServer)
    {:ok, config} = Config.new(LLMFixtures.config(:anthropic, server))
    %{server: server, config: config, handler_id: handler_id}
  end

  def forward(event, measurements, metadata, pid),
    do: send(pid, {:event, event, measurements, metadata})

  test "requests fail fast once the hourly budget is used up", %{
    server: server,
    config: config,
    handler_id: id
  } do
    :ok =
      :telemetry.attach(id, [:beamlens, :llm, :budget_exceeded], &__MODULE__.forward/4, self())

    # Tokens used by earlier tests are in the window too; budget on top.
    %{used: used, budget: :infinity} = LLM.budget()
    :ok = LLM.set_budget(used + 100)
    assert LLM.budget() == %{budget: used + 100, used: used}

    LoopbackServer.enqueue(server, [
      LLMFixtures.text(:anthropic, "one", usage: %{input: 40, output: 20}),
      LLMFixtures.text(:anthropic, "two", usage: %{input: 40, output: 20})
    ])

    assert {:ok, _} = LLM.chat(config, @request, caller: {:watcher, :beam})
    assert LLM.budget().used == used + 60
    assert {:ok, _} = LLM.chat(config, @request, caller: {:watcher, :beam})

    assert {:error, %LLMError{reason: :budget_exceeded, retryable?: false} = error} =
             LLM.chat_async(config, @request, caller: {:watcher, :beam})

    # Refused before anything is sent.
    assert length(LoopbackServer.requests(server)) == 2
    assert error.details == %{used: used + 120, budget: used + 100}

    assert Exception.message(error) =~
             "token budget is used up: #{used + 120} of #{used + 100} tokens"

    assert_receive {:event, [:beamlens, :llm, :budget_exceeded], %{used: u, budget: b},
                    %{caller: {:watcher, :beam}, provider: :anthropic, model: "claude-test"}}

    assert {u, b} == {used + 120, used + 100}
    # Nothing was sent for the refused request.
    assert length(LoopbackServer.requests(server)) == 2

    :ok = LLM.set_budget(:infinity)
    LoopbackServer.enqueue(server, LLMFixtures.text(:anthropic, "three"))
    assert {:ok, %{content: "three"}} = LLM.chat(config, @request)
  end

  test "set_budget/1 validates its argument" do
    assert_raise ArgumentError, ~r/positive integer or :infinity/, fn -> LLM.set_budget(0) end
    assert_raise ArgumentError, fn -> LLM.set_budget("lots") end
  end
end
