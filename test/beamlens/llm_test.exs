defmodule Beamlens.LLMTest do
  use ExUnit.Case, async: true

  alias Beamlens.{LLM, LLMError, LLMFixtures, LoopbackServer}
  alias Beamlens.LLM.{Config, Pending, Response}

  @request %{messages: [%{role: :user, content: "Status?"}], max_tokens: 50}

  setup context do
    handler_id = "#{inspect(__MODULE__)}-#{context.test}"
    on_exit(fn -> :telemetry.detach(handler_id) end)
    %{server: start_supervised!(LoopbackServer), handler_id: handler_id}
  end

  defp config!(provider \\ :anthropic, server, extra \\ []) do
    {:ok, config} = Config.new(LLMFixtures.config(provider, server, extra))
    config
  end

  def forward(event, measurements, metadata, pid),
    do: send(pid, {:event, event, measurements, metadata})

  defp attach(id, events),
    do: :ok = :telemetry.attach_many(id, events, &__MODULE__.forward/4, self())

  describe "Config.new/1" do
    test "builds one provider or a chain" do
      assert {:ok,
              %Config{providers: [%{provider: :anthropic, model: "claude-x", timeout: 60_000}]} =
                config} = Config.new(provider: :anthropic, model: "claude-x", api_key: "k")

      assert Config.provider(config) == :anthropic
      assert Config.model(config) == "claude-x"

      assert {:ok, %Config{providers: [%{provider: :openai}, %{provider: :ollama}]}} =
               Config.new([
                 [provider: :openai, model: "gpt-4o", api_key: "k"],
                 [provider: :ollama, model: "llama3.1"]
               ])
    end

    test "errors name the bad key and the expected type" do
      assert {:error, %LLMError{reason: :config, message: message}} =
               Config.new(provider: :anthropic, modle: "x", api_key: "k")

      assert message == "unknown option :modle for provider :anthropic, did you mean :model?"

      assert {:error, %LLMError{message: "expected :timeout to be a positive integer, got: -1"}} =
               Config.new(provider: :anthropic, model: "m", api_key: "k", timeout: -1)

      assert {:error,
              %LLMError{message: "expected :max_retries to be an integer from 0 to 10, got: 11"}} =
               Config.new(provider: :anthropic, model: "m", api_key: "k", max_retries: 11)

      assert {:error, %LLMError{message: "expected :provider to be one of" <> _}} =
               Config.new(provider: :claude, model: "m")

      assert {:error, %LLMError{message: "the :model option is required for provider :openai"}} =
               Config.new(provider: :openai, api_key: "k")

      assert {:error,
              %LLMError{
                message: "the :base_url option is required for provider :openai_compatible"
              }} = Config.new(provider: :openai_compatible, model: "m")

      assert {:error,
              %LLMError{
                message:
                  "expected :base_url to start with http:// or https://, got: \"localhost\""
              }} = Config.new(provider: :ollama, model: "m", base_url: "localhost")

      assert {:error,
              %LLMError{message: "provider #2: unknown option :region for provider :openai" <> _}} =
               Config.new([
                 [provider: :ollama, model: "m"],
                 [provider: :openai, model: "m", api_key: "k", region: "x"]
               ])

      assert_raise LLMError, ~r/the :provider option is required/, fn ->
        Config.new!(model: "m")
      end
    end

    test "a missing key is an error at new/1, naming the environment variable" do
      env = fn _ -> nil end

      assert {:error, %LLMError{reason: :config, provider: :anthropic, message: message}} =
               Config.new([provider: :anthropic, model: "m"], env)

      assert message ==
               "no API key for provider :anthropic: pass :api_key or set ANTHROPIC_API_KEY"

      assert {:error,
              %LLMError{
                message:
                  "no API key for provider :gemini: pass :api_key or set GOOGLE_API_KEY or GEMINI_API_KEY"
              }} = Config.new([provider: :gemini, model: "m"], env)

      assert {:error,
              %LLMError{
                message:
                  "no :access_key_id for provider :bedrock: pass it or set AWS_ACCESS_KEY_ID"
              }} = Config.new([provider: :bedrock, model: "m"], env)

      assert {:error,
              %LLMError{message: ":api_key names the environment variable NOPE, which is not set"}} =
               Config.new([provider: :openai, model: "m", api_key: {:system, "NOPE"}], env)
    end

    test "keys and AWS credentials default from the environment", %{server: server} do
      values = env_map(server)
      env = &Map.get(values, &1)
      url = LoopbackServer.url(server)

      for {provider, opts, header, expected} <- [
            {:anthropic, [model: "m", base_url: url], "x-api-key", "env-anthropic"},
            {:gemini, [model: "m", base_url: url], "x-goog-api-key", "env-gemini"},
            {:azure_openai, [deployment: "d"], "api-key", "env-azure"},
            {:bedrock, [model: "m", base_url: url], "x-amz-security-token", "env-token"}
          ] do
        {:ok, config} = Config.new([provider: provider] ++ opts, env)
        LoopbackServer.enqueue(server, LLMFixtures.text(provider, "ok"))
        assert {:ok, _} = LLM.chat(config, @request)
        sent = List.last(LoopbackServer.requests(server))
        assert sent.headers[header] == expected, "#{provider}: #{inspect(sent.headers)}"
      end

      assert List.last(LoopbackServer.requests(server)).headers["authorization"] =~
               "Credential=AKIDENV/"

      assert List.last(LoopbackServer.requests(server)).headers["authorization"] =~
               "/eu-central-1/bedrock/"

      # An explicit access key does not pick up the environment's session token.
      {:ok, config} =
        Config.new(
          [
            provider: :bedrock,
            model: "m",
            base_url: url,
            access_key_id: "AKIDOWN",
            secret_access_key: "own"
          ],
          env
        )

      LoopbackServer.enqueue(server, LLMFixtures.text(:bedrock, "ok"))
      assert {:ok, _} = LLM.chat(config, @request)

      refute Map.has_key?(
               List.last(LoopbackServer.requests(server)).headers,
               "x-amz-security-token"
             )
    end

    test "inspect shows the chain and no secret" do
      {:ok, config} =
        Config.new([
          [provider: :anthropic, model: "claude-x", api_key: "sk-ant-hidden-0123456789"],
          [
            provider: :bedrock,
            model: "m",
            region: "us-east-1",
            access_key_id: "AKIDHIDDEN",
            secret_access_key: "aws-hidden"
          ]
        ])

      assert inspect(config) == "#Beamlens.LLM.Config<anthropic claude-x -> bedrock m>"
      dump = inspect(config, structs: false, limit: :infinity)

      for secret <- ["sk-ant-hidden-0123456789", "AKIDHIDDEN", "aws-hidden"],
          do: refute(dump =~ secret)
    end

    test "a secret of the wrong type is described, not shown" do
      assert {:error, %LLMError{message: message}} =
               Config.new(provider: :openai, model: "m", api_key: [?s, ?k, ?-, ?x])

      assert message ==
               "expected :api_key to be a non-empty string or {:system, \"ENV_VAR\"}, got: a list of 4 elements"
    end
  end

  defp env_map(server) do
    %{
      "ANTHROPIC_API_KEY" => "env-anthropic",
      "GEMINI_API_KEY" => "env-gemini",
      "AWS_ACCESS_KEY_ID" => "AKIDENV",
      "AWS_SECRET_ACCESS_KEY" => "env-secret",
      "AWS_SESSION_TOKEN" => "env-token",
      "AWS_DEFAULT_REGION" => "eu-central-1",
      "AZURE_OPENAI_API_KEY" => "env-azure",
      "AZURE_OPENAI_ENDPOINT" => LoopbackServer.url(server)
    }
  end

  describe "requests" do
    test "an invalid request fails at once, naming the field", %{server: server} do
      config = config!(server)

      assert {:error,
              %LLMError{
                reason: :invalid_request,
                message: "request messages[0].role must be :user, :assistant or :tool"
              }} = LLM.chat_async(config, %{messages: [%{role: :system, content: "x"}]})

      assert {:error,
              %LLMError{
                reason: :invalid_request,
                message: "request tool_choice names \"nope\"" <> _
              }} = LLM.chat_async(config, Map.put(@request, :tool_choice, {:tool, "nope"}))

      assert {:error,
              %LLMError{
                reason: :invalid_request,
                message: "unknown option :calller (expected :caller)"
              }} = LLM.chat_async(config, @request, calller: :x)

      assert LoopbackServer.requests(server) == []
    end

    test "structured tool results are sent as JSON text", %{server: server} do
      LoopbackServer.enqueue(server, LLMFixtures.text(:anthropic, "ok"))

      request = %{
        messages: [
          %{role: :user, content: "go"},
          %{
            role: :assistant,
            content: "",
            tool_calls: [%{id: "c1", name: "take_snapshot", arguments: %{}}]
          },
          %{
            role: :tool,
            tool_call_id: "c1",
            name: "take_snapshot",
            content: %{"memory" => %{"total" => 10}}
          }
        ],
        tools: [%{name: "take_snapshot", description: "", parameters: %{"type" => "object"}}]
      }

      assert {:ok, _} = LLM.chat(config!(server), request)
      [sent] = LoopbackServer.requests(server)
      [_, _, %{"content" => [result]}] = sent.json["messages"]
      assert result["content"] == ~s({"memory":{"total":10}})
      # :max_tokens defaults to 1024.
      assert sent.json["max_tokens"] == 1024
    end
  end

  describe "chat_async/3 and handle_reply/2" do
    test "return at once; the reply arrives as a message", %{server: server} do
      hold_replies(server, LLMFixtures.text(:anthropic, "later"))

      assert {:ok, %Pending{ref: ref} = pending} =
               LLM.chat_async(config!(server), @request, caller: :me)

      # chat_async returned while the server still holds the reply.
      assert_receive {:request_held, connection}, 2_000
      refute_received {^ref, _}
      send(connection, :answer)

      assert_receive {^ref, raw}, 2_000
      assert {:ok, %Response{content: "later"}} = LLM.handle_reply(pending, raw)
      refute_receive {^ref, _}, 50
    end

    test "a GenServer keeps serving calls while the model thinks", %{server: server} do
      hold_replies(server, LLMFixtures.text(:anthropic, "answer"))
      config = config!(server)
      test = self()

      {:ok, pid} =
        Agent.start_link(fn ->
          {:ok, pending} = LLM.chat_async(config, @request, caller: {:watcher, :agent})
          pending
        end)

      # The agent answers while the server holds its request's reply.
      assert_receive {:request_held, connection}, 2_000
      for _ <- 1..10, do: assert(%Pending{} = Agent.get(pid, & &1))
      send(connection, :answer)

      Agent.update(pid, fn pending ->
        receive do
          {ref, raw} when ref == pending.ref ->
            send(test, {:result, LLM.handle_reply(pending, raw)})
        after
          2_000 -> send(test, :no_reply)
        end

        pending
      end)

      assert_receive {:result, {:ok, %Response{content: "answer"}}}, 3_000
    end
  end

  # The server answers `reply` to each request only when the test sends
  # :answer to the connection it reports as {:request_held, pid}.
  defp hold_replies(server, reply) do
    test = self()

    LoopbackServer.set_handler(server, fn _request ->
      send(test, {:request_held, self()})

      receive do
        :answer -> reply
      after
        30_000 -> %{status: 504, body: "not released"}
      end
    end)
  end

  describe "chat/3" do
    test "gives up waiting after :timeout; the request goes on", %{server: server} do
      LoopbackServer.enqueue(server, Map.put(LLMFixtures.text(:anthropic, "late"), :delay, 500))

      assert {:error, %LLMError{reason: :timeout, message: "no reply within 100 ms"}} =
               LLM.chat(config!(server), @request, timeout: 100)

      # The reply still comes, as a stray message the caller may ignore.
      assert_receive {ref, {:ok, %{"content" => "late"}}} when is_reference(ref), 2_000
    end
  end

  describe "telemetry" do
    # Handlers are global and other tests run concurrently: events are
    # matched on this test's own caller.
    test "a request emits start and stop with usage", %{
      server: server,
      handler_id: id,
      test: test
    } do
      caller = {:watcher, test}
      attach(id, [[:beamlens, :llm, :request, :start], [:beamlens, :llm, :request, :stop]])

      LoopbackServer.enqueue(
        server,
        LLMFixtures.text(:anthropic, "hi",
          usage: %{input: 11, output: 7, cache_read: 5, cache_write: 2}
        )
      )

      assert {:ok, _} = LLM.chat(config!(server), @request, caller: caller)

      assert_receive {:event, [:beamlens, :llm, :request, :start],
                      %{monotonic_time: _, system_time: _},
                      %{
                        provider: :anthropic,
                        model: "claude-test",
                        caller: ^caller,
                        telemetry_span_context: ctx
                      }}

      assert_receive {:event, [:beamlens, :llm, :request, :stop], measurements,
                      %{caller: ^caller} = metadata}

      assert %{
               input_tokens: 11,
               output_tokens: 7,
               cache_read_tokens: 5,
               cache_write_tokens: 2,
               total_tokens: 25,
               duration: duration
             } = measurements

      assert is_integer(duration) and duration > 0

      assert %{
               provider: :anthropic,
               model: "claude-test",
               caller: ^caller,
               stop_reason: :end_turn,
               attempts: 1,
               fallback?: false,
               telemetry_span_context: ^ctx
             } = metadata
    end

    test "stop says when a later provider of the chain answered", %{
      server: server,
      handler_id: id,
      test: test
    } do
      attach(id, [[:beamlens, :llm, :request, :stop]])

      LoopbackServer.enqueue(server, [
        LLMFixtures.error(:anthropic, :overloaded),
        LLMFixtures.text(:anthropic, "b")
      ])

      {:ok, chain} =
        Config.new([
          LLMFixtures.config(:anthropic, server),
          LLMFixtures.config(:anthropic, server, model: "backup")
        ])

      assert {:ok, %{provider: :anthropic}} = LLM.chat(chain, @request, caller: test)
      assert_receive {:event, _, _, %{caller: ^test, fallback?: true, attempts: 2}}
    end

    test "a failed request emits :exception with the error", %{
      server: server,
      handler_id: id,
      test: test
    } do
      attach(id, [[:beamlens, :llm, :request, :exception]])
      LoopbackServer.enqueue(server, LLMFixtures.error(:anthropic, :unauthorized))

      assert {:error, error} = LLM.chat(config!(server), @request, caller: :failing)

      assert_receive {:event, [:beamlens, :llm, :request, :exception], %{duration: _},
                      %{
                        provider: :anthropic,
                        caller: :failing,
                        kind: :error,
                        reason: ^error,
                        stacktrace: []
                      }}
    end
  end

  describe "usage" do
    test "is counted per caller and in total", %{server: server, test: test} do
      caller = {:usage_test, test}
      before = LLM.usage()

      LoopbackServer.enqueue(server, [
        LLMFixtures.text(:anthropic, "a",
          usage: %{input: 100, output: 10, cache_read: 1, cache_write: 2}
        ),
        LLMFixtures.text(:anthropic, "b", usage: %{input: 50, output: 5}),
        LLMFixtures.error(:anthropic, :bad_request)
      ])

      config = config!(server)
      assert {:ok, _} = LLM.chat(config, @request, caller: caller)
      assert {:ok, _} = LLM.chat(config, @request, caller: caller)
      assert {:error, _} = LLM.chat(config, @request, caller: caller)

      assert LLM.usage(caller) == %{
               input_tokens: 150,
               output_tokens: 15,
               cache_read_tokens: 1,
               cache_write_tokens: 2,
               total_tokens: 168,
               requests: 3,
               failures: 1
             }

      total = LLM.usage()
      assert total.requests >= before.requests + 3
      assert total.input_tokens >= before.input_tokens + 150

      assert LLM.usage({:usage_test, :never_used}) == %{
               input_tokens: 0,
               output_tokens: 0,
               cache_read_tokens: 0,
               cache_write_tokens: 0,
               total_tokens: 0,
               requests: 0,
               failures: 0
             }
    end
  end

  describe "errors" do
    test "LLMError has a readable message" do
      error = %LLMError{
        reason: :rate_limited,
        provider: :openai,
        message: "rate limited (HTTP 429)"
      }

      assert Exception.message(error) == "(rate_limited) openai: rate limited (HTTP 429)"
      assert Exception.message(%LLMError{reason: :config, message: "bad"}) == "(config) bad"
      assert :budget_exceeded in LLMError.reasons()
    end
  end
end
