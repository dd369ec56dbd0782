defmodule Beamlens.LLMProvidersTest do
  # Every provider against the loopback server: the exact request on the
  # wire, real-shaped replies, and the provider's error bodies.
  use ExUnit.Case, async: true

  alias Beamlens.{LLM, LLMError, LLMFixtures, LoopbackServer}
  alias Beamlens.LLM.{Config, Response, ToolCall}

  @request %{
    system: "You watch the BEAM.",
    messages: [
      %{role: :user, content: "Memory is growing."},
      %{
        role: :assistant,
        content: "Let me look.",
        tool_calls: [
          %{id: "call_1", name: "take_snapshot", arguments: %{}},
          %{id: "call_2", name: "execute_lua", arguments: %{"code" => "return 1"}}
        ]
      },
      %{
        role: :tool,
        tool_call_id: "call_1",
        name: "take_snapshot",
        content: ~s({"memory": 10}),
        is_error: false
      },
      %{
        role: :tool,
        tool_call_id: "call_2",
        name: "execute_lua",
        content: "syntax error",
        is_error: true
      }
    ],
    tools: [
      %{
        name: "take_snapshot",
        description: "Takes a snapshot.",
        parameters: %{"type" => "object", "properties" => %{}}
      },
      %{
        name: "execute_lua",
        description: "Runs Lua.",
        parameters: %{
          "type" => "object",
          "properties" => %{"code" => %{"type" => "string"}},
          "required" => ["code"]
        }
      }
    ],
    max_tokens: 512,
    tool_choice: :auto,
    temperature: 0.2
  }

  @simple %{
    messages: [%{role: :user, content: "Status?"}],
    max_tokens: 100,
    tools: @request.tools
  }

  setup do
    server = start_supervised!(LoopbackServer)
    %{server: server}
  end

  defp config!(provider, server, extra \\ []) do
    {:ok, config} = Config.new(LLMFixtures.config(provider, server, extra))
    config
  end

  defp chat(provider, server, request, reply) do
    LoopbackServer.enqueue(server, reply)
    result = LLM.chat(config!(provider, server), request, caller: {:test, provider})
    [sent] = LoopbackServer.requests(server)
    assert sent.method == "POST"
    {result, sent}
  end

  defp openai_messages do
    [
      %{"role" => "system", "content" => "You watch the BEAM."},
      %{"role" => "user", "content" => "Memory is growing."},
      %{
        "role" => "assistant",
        "content" => "Let me look.",
        "tool_calls" => [
          %{
            "id" => "call_1",
            "type" => "function",
            "function" => %{"name" => "take_snapshot", "arguments" => "{}"}
          },
          %{
            "id" => "call_2",
            "type" => "function",
            "function" => %{"name" => "execute_lua", "arguments" => ~s({"code":"return 1"})}
          }
        ]
      },
      %{"role" => "tool", "tool_call_id" => "call_1", "content" => ~s({"memory": 10})},
      %{"role" => "tool", "tool_call_id" => "call_2", "content" => "Error: syntax error"}
    ]
  end

  defp openai_tools do
    for tool <- @request.tools do
      %{
        "type" => "function",
        "function" => %{
          "name" => tool.name,
          "description" => tool.description,
          "parameters" => tool.parameters
        }
      }
    end
  end

  describe ":anthropic" do
    test "sends the Messages API request", %{server: server} do
      {{:ok, _}, sent} = chat(:anthropic, server, @request, LLMFixtures.text(:anthropic, "ok"))

      assert sent.method == "POST"
      assert sent.path == "/v1/messages"
      assert sent.query == ""
      assert sent.headers["x-api-key"] == "test-key-anthropic"
      assert sent.headers["anthropic-version"] == "2023-06-01"
      assert sent.headers["content-type"] == "application/json"
      assert sent.headers["user-agent"] =~ "beamlens/"

      assert sent.json == %{
               "model" => "claude-test",
               "max_tokens" => 512,
               "system" => "You watch the BEAM.",
               "messages" => [
                 %{
                   "role" => "user",
                   "content" => [%{"type" => "text", "text" => "Memory is growing."}]
                 },
                 %{
                   "role" => "assistant",
                   "content" => [
                     %{"type" => "text", "text" => "Let me look."},
                     %{
                       "type" => "tool_use",
                       "id" => "call_1",
                       "name" => "take_snapshot",
                       "input" => %{}
                     },
                     %{
                       "type" => "tool_use",
                       "id" => "call_2",
                       "name" => "execute_lua",
                       "input" => %{"code" => "return 1"}
                     }
                   ]
                 },
                 %{
                   "role" => "user",
                   "content" => [
                     %{
                       "type" => "tool_result",
                       "tool_use_id" => "call_1",
                       "content" => ~s({"memory": 10})
                     },
                     %{
                       "type" => "tool_result",
                       "tool_use_id" => "call_2",
                       "content" => "syntax error",
                       "is_error" => true
                     }
                   ]
                 }
               ],
               "tools" =>
                 for tool <- @request.tools do
                   %{
                     "name" => tool.name,
                     "description" => tool.description,
                     "input_schema" => tool.parameters
                   }
                 end,
               "tool_choice" => %{"type" => "auto"}
             }
    end

    test "temperature goes only to models known to accept it", %{server: server} do
      # Claude Opus 4.7 and later answer 400 to any temperature; so do names
      # the library does not know (such as the fixtures' "claude-test").
      for {model, expected} <- [
            {"claude-sonnet-4-5-20250929", %{"temperature" => 0.2}},
            {"claude-3-5-haiku-20241022", %{"temperature" => 0.2}},
            {"claude-opus-4-7", %{}},
            {"claude-sonnet-5-5", %{}},
            {"claude-test", %{}}
          ] do
        LoopbackServer.enqueue(server, LLMFixtures.text(:anthropic, "ok"))
        config = config!(:anthropic, server, model: model)
        assert {:ok, _} = LLM.chat(config, %{@simple | tools: []} |> Map.put(:temperature, 0.2))
        sent = List.last(LoopbackServer.requests(server))

        assert sent.json ==
                 Map.merge(
                   %{
                     "model" => model,
                     "max_tokens" => 100,
                     "messages" => [
                       %{
                         "role" => "user",
                         "content" => [%{"type" => "text", "text" => "Status?"}]
                       }
                     ]
                   },
                   expected
                 ),
               model
      end

      # Never sent when the request leaves it out.
      LoopbackServer.enqueue(server, LLMFixtures.text(:anthropic, "ok"))
      config = config!(:anthropic, server, model: "claude-sonnet-4-5-20250929")
      assert {:ok, _} = LLM.chat(config, @simple)
      refute Map.has_key?(List.last(LoopbackServer.requests(server)).json, "temperature")
    end

    test "parses several tool calls, text and usage", %{server: server} do
      reply =
        LLMFixtures.tool_calls(
          :anthropic,
          [
            {"toolu_1", "take_snapshot", %{}},
            {"toolu_2", "execute_lua", %{"code" => "return 2"}}
          ],
          text: "Two checks.",
          usage: %{input: 120, output: 30, cache_read: 40, cache_write: 8}
        )

      {{:ok, response}, _} = chat(:anthropic, server, @simple, reply)

      assert %Response{
               content: "Two checks.",
               stop_reason: :tool_use,
               provider: :anthropic,
               model: "claude-test",
               attempts: 1,
               usage: %{
                 input_tokens: 120,
                 output_tokens: 30,
                 cache_read_tokens: 40,
                 cache_write_tokens: 8
               },
               tool_calls: [
                 %ToolCall{id: "toolu_1", name: "take_snapshot", arguments: %{}, error: nil},
                 %ToolCall{
                   id: "toolu_2",
                   name: "execute_lua",
                   arguments: %{"code" => "return 2"},
                   error: nil
                 }
               ]
             } = response
    end
  end

  describe ":openai" do
    test "sends the Chat Completions request", %{server: server} do
      {{:ok, _}, sent} = chat(:openai, server, @request, LLMFixtures.text(:openai, "ok"))

      assert sent.method == "POST"
      assert sent.path == "/v1/chat/completions"
      assert sent.headers["authorization"] == "Bearer test-key-openai"
      assert sent.headers["content-type"] == "application/json"

      assert sent.json == %{
               "model" => "gpt-test",
               "messages" => openai_messages(),
               "max_completion_tokens" => 512,
               "tools" => openai_tools(),
               "tool_choice" => "auto",
               "temperature" => 0.2
             }
    end

    test "parses tool calls with string arguments and cached usage", %{server: server} do
      reply =
        LLMFixtures.tool_calls(
          :openai,
          [{"take_snapshot", %{}}, {"execute_lua", %{"code" => "x"}}],
          usage: %{input: 20, output: 7, cache_read: 100}
        )

      {{:ok, response}, _} = chat(:openai, server, @simple, reply)
      assert response.stop_reason == :tool_use
      assert response.content == ""

      assert response.usage == %{
               input_tokens: 20,
               output_tokens: 7,
               cache_read_tokens: 100,
               cache_write_tokens: 0
             }

      assert [
               %ToolCall{id: "call_0", name: "take_snapshot"},
               %ToolCall{arguments: %{"code" => "x"}}
             ] = response.tool_calls
    end
  end

  describe ":azure_openai" do
    test "posts to the deployment with api-key and api-version", %{server: server} do
      {{:ok, response}, sent} =
        chat(:azure_openai, server, @request, LLMFixtures.text(:azure_openai, "ok"))

      assert response.content == "ok"
      assert sent.path == "/openai/deployments/gpt-test-deployment/chat/completions"
      assert sent.query == "api-version=2024-10-21"
      assert sent.headers["api-key"] == "test-key-azure_openai"
      refute Map.has_key?(sent.headers, "authorization")

      assert sent.json == %{
               "messages" => openai_messages(),
               "max_completion_tokens" => 512,
               "tools" => openai_tools(),
               "tool_choice" => "auto",
               "temperature" => 0.2
             }
    end

    test "honours :api_version", %{server: server} do
      LoopbackServer.enqueue(server, LLMFixtures.text(:azure_openai, "ok"))
      config = config!(:azure_openai, server, api_version: "2025-01-01-preview")
      assert {:ok, _} = LLM.chat(config, @simple)
      assert [%{query: "api-version=2025-01-01-preview"}] = LoopbackServer.requests(server)
    end
  end

  describe ":openai_compatible" do
    test "speaks Chat Completions with max_tokens to any base_url", %{server: server} do
      {{:ok, _}, sent} =
        chat(:openai_compatible, server, @request, LLMFixtures.text(:openai_compatible, "ok"))

      assert sent.path == "/v1/chat/completions"
      assert sent.headers["authorization"] == "Bearer test-key-openai_compatible"

      assert sent.json == %{
               "model" => "local-test",
               "messages" => openai_messages(),
               "max_tokens" => 512,
               "tools" => openai_tools(),
               "tool_choice" => "auto",
               "temperature" => 0.2
             }
    end

    test "sends no authorization without a key; extra headers are sent", %{server: server} do
      LoopbackServer.enqueue(server, LLMFixtures.text(:openai_compatible, "hi"))

      {:ok, config} =
        Config.new(
          provider: :openai_compatible,
          model: "qwen",
          base_url: LoopbackServer.url(server) <> "/v1",
          headers: [{"HTTP-Referer", "https://example.com"}, {"X-Title", "BeamLens"}]
        )

      assert {:ok, %Response{content: "hi"}} = LLM.chat(config, @simple)
      [sent] = LoopbackServer.requests(server)
      refute Map.has_key?(sent.headers, "authorization")
      assert sent.headers["http-referer"] == "https://example.com"
      assert sent.headers["x-title"] == "BeamLens"
    end

    test "maps errors of servers that are not OpenAI", %{server: server} do
      LoopbackServer.enqueue(server, %{status: 404, body: %{"detail" => "Model qwen not found"}})

      assert {:error, %LLMError{reason: :not_found, status: 404} = error} =
               LLM.chat(config!(:openai_compatible, server), @simple)

      assert error.message =~ "Model qwen not found"
    end
  end

  describe ":ollama" do
    test "sends the native /api/chat request", %{server: server} do
      {{:ok, _}, sent} = chat(:ollama, server, @request, LLMFixtures.text(:ollama, "ok"))

      assert sent.path == "/api/chat"
      refute Map.has_key?(sent.headers, "authorization")

      assert sent.json == %{
               "model" => "llama-test",
               "stream" => false,
               "options" => %{"num_predict" => 512, "temperature" => 0.2},
               "tools" => openai_tools(),
               "messages" => [
                 %{"role" => "system", "content" => "You watch the BEAM."},
                 %{"role" => "user", "content" => "Memory is growing."},
                 %{
                   "role" => "assistant",
                   "content" => "Let me look.",
                   "tool_calls" => [
                     %{"function" => %{"name" => "take_snapshot", "arguments" => %{}}},
                     %{
                       "function" => %{
                         "name" => "execute_lua",
                         "arguments" => %{"code" => "return 1"}
                       }
                     }
                   ]
                 },
                 %{
                   "role" => "tool",
                   "content" => ~s({"memory": 10}),
                   "tool_name" => "take_snapshot"
                 },
                 %{
                   "role" => "tool",
                   "content" => "Error: syntax error",
                   "tool_name" => "execute_lua"
                 }
               ]
             }
    end

    test "parses tool calls without ids and the eval counts", %{server: server} do
      reply =
        LLMFixtures.tool_calls(
          :ollama,
          [{"take_snapshot", %{}}, {"execute_lua", %{"code" => "y"}}],
          usage: %{input: 33, output: 4}
        )

      {{:ok, response}, _} = chat(:ollama, server, @simple, reply)
      assert response.stop_reason == :tool_use
      assert response.usage.input_tokens == 33 and response.usage.output_tokens == 4
      assert Enum.map(response.tool_calls, & &1.id) == ["call_0", "call_1"]
      assert Enum.at(response.tool_calls, 1).arguments == %{"code" => "y"}
    end

    test "maps errors", %{server: server} do
      LoopbackServer.enqueue(server, %{
        status: 404,
        body: %{"error" => ~s(model "nope" not found, try pulling it first)}
      })

      assert {:error, %LLMError{reason: :not_found} = error} =
               LLM.chat(config!(:ollama, server), @simple)

      assert error.message =~ "try pulling it first"
    end
  end

  describe ":bedrock" do
    test "sends a SigV4-signed Converse request", %{server: server} do
      {{:ok, _}, sent} = chat(:bedrock, server, @request, LLMFixtures.text(:bedrock, "ok"))

      assert sent.path == "/model/anthropic.claude-test-v1%3A0/converse"
      assert sent.headers["x-amz-security-token"] == "test-session-token"
      assert sent.headers["x-amz-date"] =~ ~r/^\d{8}T\d{6}Z$/
      date = binary_part(sent.headers["x-amz-date"], 0, 8)

      assert sent.headers["authorization"] =~
               ~r"^AWS4-HMAC-SHA256 Credential=AKIDTEST/#{date}/us-east-1/bedrock/aws4_request, SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token, Signature=[0-9a-f]{64}$"

      assert sent.json == %{
               "system" => [%{"text" => "You watch the BEAM."}],
               # A Claude model this library does not know: no temperature.
               "inferenceConfig" => %{"maxTokens" => 512},
               "messages" => [
                 %{"role" => "user", "content" => [%{"text" => "Memory is growing."}]},
                 %{
                   "role" => "assistant",
                   "content" => [
                     %{"text" => "Let me look."},
                     %{
                       "toolUse" => %{
                         "toolUseId" => "call_1",
                         "name" => "take_snapshot",
                         "input" => %{}
                       }
                     },
                     %{
                       "toolUse" => %{
                         "toolUseId" => "call_2",
                         "name" => "execute_lua",
                         "input" => %{"code" => "return 1"}
                       }
                     }
                   ]
                 },
                 %{
                   "role" => "user",
                   "content" => [
                     %{
                       "toolResult" => %{
                         "toolUseId" => "call_1",
                         "content" => [%{"text" => ~s({"memory": 10})}],
                         "status" => "success"
                       }
                     },
                     %{
                       "toolResult" => %{
                         "toolUseId" => "call_2",
                         "content" => [%{"text" => "syntax error"}],
                         "status" => "error"
                       }
                     }
                   ]
                 }
               ],
               "toolConfig" => %{
                 "tools" =>
                   for tool <- @request.tools do
                     %{
                       "toolSpec" => %{
                         "name" => tool.name,
                         "description" => tool.description,
                         "inputSchema" => %{"json" => tool.parameters}
                       }
                     }
                   end
               }
             }
    end

    test "toolChoice is sent only when it asks for more than auto", %{server: server} do
      choices = [
        {:auto, nil},
        {:required, %{"any" => %{}}},
        {{:tool, "execute_lua"}, %{"tool" => %{"name" => "execute_lua"}}}
      ]

      for {choice, expected} <- choices do
        LoopbackServer.enqueue(server, LLMFixtures.text(:bedrock, "ok"))
        assert {:ok, _} = LLM.chat(config!(:bedrock, server), %{@request | tool_choice: choice})
        tool_config = List.last(LoopbackServer.requests(server)).json["toolConfig"]
        assert tool_config["toolChoice"] == expected, inspect(choice)
        assert length(tool_config["tools"]) == 2
      end
    end

    test "temperature is kept for non-Claude models and dropped for new Claude ones", %{
      server: server
    } do
      for {model, expected} <- [
            {"meta.llama3-1-70b-instruct-v1:0", %{"maxTokens" => 512, "temperature" => 0.2}},
            {"us.anthropic.claude-sonnet-4-5-20250929-v1:0",
             %{"maxTokens" => 512, "temperature" => 0.2}},
            {"global.anthropic.claude-opus-4-7", %{"maxTokens" => 512}}
          ] do
        LoopbackServer.enqueue(server, LLMFixtures.text(:bedrock, "ok"))
        assert {:ok, _} = LLM.chat(config!(:bedrock, server, model: model), @request)
        assert List.last(LoopbackServer.requests(server)).json["inferenceConfig"] == expected
      end
    end

    test "parses toolUse blocks and usage", %{server: server} do
      reply =
        LLMFixtures.tool_calls(
          :bedrock,
          [{"tooluse_a", "take_snapshot", %{}}, {"tooluse_b", "execute_lua", %{"code" => "z"}}],
          usage: %{input: 50, output: 6, cache_read: 10, cache_write: 3}
        )

      {{:ok, response}, _} = chat(:bedrock, server, @simple, reply)

      assert response.usage == %{
               input_tokens: 50,
               output_tokens: 6,
               cache_read_tokens: 10,
               cache_write_tokens: 3
             }

      assert Enum.map(response.tool_calls, & &1.id) == ["tooluse_a", "tooluse_b"]
      assert response.model == "anthropic.claude-test-v1:0"
    end
  end

  describe ":gemini" do
    test "sends generateContent with functionDeclarations", %{server: server} do
      {{:ok, _}, sent} = chat(:gemini, server, @request, LLMFixtures.text(:gemini, "ok"))

      assert sent.path == "/models/gemini-test:generateContent"
      assert sent.headers["x-goog-api-key"] == "test-key-gemini"
      assert sent.query == ""

      assert sent.json == %{
               "systemInstruction" => %{"parts" => [%{"text" => "You watch the BEAM."}]},
               "generationConfig" => %{"maxOutputTokens" => 512, "temperature" => 0.2},
               "toolConfig" => %{"functionCallingConfig" => %{"mode" => "AUTO"}},
               "tools" => [
                 %{
                   "functionDeclarations" => [
                     # No arguments: no parameters (Gemini refuses an
                     # OBJECT schema without properties).
                     %{"name" => "take_snapshot", "description" => "Takes a snapshot."},
                     %{
                       "name" => "execute_lua",
                       "description" => "Runs Lua.",
                       "parameters" => Enum.at(@request.tools, 1).parameters
                     }
                   ]
                 }
               ],
               "contents" => [
                 %{"role" => "user", "parts" => [%{"text" => "Memory is growing."}]},
                 %{
                   "role" => "model",
                   "parts" => [
                     %{"text" => "Let me look."},
                     %{
                       "functionCall" => %{"name" => "take_snapshot", "args" => %{}},
                       "thoughtSignature" => "skip_thought_signature_validator"
                     },
                     %{
                       "functionCall" => %{
                         "name" => "execute_lua",
                         "args" => %{"code" => "return 1"}
                       }
                     }
                   ]
                 },
                 %{
                   "role" => "user",
                   "parts" => [
                     %{
                       "functionResponse" => %{
                         "name" => "take_snapshot",
                         "response" => %{"output" => ~s({"memory": 10})}
                       }
                     },
                     %{
                       "functionResponse" => %{
                         "name" => "execute_lua",
                         "response" => %{"error" => "syntax error"}
                       }
                     }
                   ]
                 }
               ]
             }
    end

    test "parses function calls and hands thought signatures back", %{server: server} do
      reply =
        LLMFixtures.tool_calls(
          :gemini,
          [{"take_snapshot", %{}}, {"execute_lua", %{"code" => "w"}}],
          signature: "c2lnLTE=",
          usage: %{input: 70, output: 9, cache_read: 20}
        )

      {{:ok, response}, _} = chat(:gemini, server, @simple, reply)
      assert response.stop_reason == :tool_use

      assert response.usage == %{
               input_tokens: 70,
               output_tokens: 9,
               cache_read_tokens: 20,
               cache_write_tokens: 0
             }

      assert [%ToolCall{signature: "c2lnLTE="} = first, %ToolCall{signature: nil}] =
               response.tool_calls

      # The next turn carries the response's tool calls back unchanged.
      LoopbackServer.enqueue(server, LLMFixtures.text(:gemini, "done"))

      next = %{
        @simple
        | messages:
            @simple.messages ++
              [
                %{role: :assistant, content: "", tool_calls: response.tool_calls},
                %{role: :tool, tool_call_id: first.id, name: first.name, content: "{}"}
              ]
      }

      assert {:ok, %Response{content: "done"}} = LLM.chat(config!(:gemini, server), next)
      [_, sent] = LoopbackServer.requests(server)
      [_, model, _] = sent.json["contents"]
      assert [%{"thoughtSignature" => "c2lnLTE="}, second] = model["parts"]
      refute Map.has_key?(second, "thoughtSignature")
    end

    test "tools without arguments are declared without parameters", %{server: server} do
      tools =
        for {name, parameters} <- [
              {"done", %{"type" => "object"}},
              {"take_snapshot", %{"type" => "object", "properties" => %{}}},
              {"list_alerts", %{}}
            ],
            do: %{name: name, description: "No arguments.", parameters: parameters}

      {{:ok, _}, sent} =
        chat(:gemini, server, %{@simple | tools: tools}, LLMFixtures.text(:gemini, "ok"))

      assert sent.json["tools"] == [
               %{
                 "functionDeclarations" =>
                   for(
                     tool <- tools,
                     do: %{"name" => tool.name, "description" => "No arguments."}
                   )
               }
             ]
    end
  end

  # One table for the error bodies of every provider (Bedrock by its
  # x-amzn-ErrorType header, Gemini's invalid key is a 400 API_KEY_INVALID).
  describe "error bodies of every provider" do
    for provider <- LLMFixtures.providers() do
      test "#{provider}: rate limit, overload, invalid key, bad request, server error", %{
        server: server
      } do
        provider = unquote(provider)

        assert_errors(
          provider,
          server,
          [
            {:rate_limited, :rate_limited, 429, true},
            {:overloaded, :overloaded, overloaded_status(provider), true},
            {:unauthorized, :unauthorized, invalid_key_status(provider), false},
            {:bad_request, :bad_request, 400, false},
            {:server_error, :server_error, 500, true}
          ] ++ own_errors(provider)
        )
      end
    end
  end

  describe "tool calls that cannot be used" do
    test "invalid JSON arguments and unknown tools come back with an error", %{server: server} do
      reply =
        LLMFixtures.tool_calls(:openai, [
          {"execute_lua", ~s({"code": "return 1")},
          {"drop_all_tables", %{}},
          {"execute_lua", "[1, 2]"},
          {"take_snapshot", "{}"}
        ])

      {{:ok, response}, _} = chat(:openai, server, @simple, reply)

      assert [bad_json, unknown, not_object, fine] = response.tool_calls
      assert bad_json.arguments == nil
      assert bad_json.error =~ "arguments are not valid JSON"
      assert bad_json.error =~ ~s({"code": "return 1")

      assert unknown.error ==
               ~s(unknown tool "drop_all_tables"; available tools: take_snapshot, execute_lua)

      assert not_object.error == "arguments must be a JSON object, got [1, 2]"
      assert fine.error == nil and fine.arguments == %{}
    end
  end

  describe "malformed replies" do
    for provider <- LLMFixtures.providers() do
      test "#{provider}: garbage, cut-off JSON and wrong shapes are :malformed_response", %{
        server: server
      } do
        provider = unquote(provider)
        config = config!(provider, server)

        for body <- ["<html>gateway</html>", ~s({"content": [), ~s({"unexpected": true})] do
          LoopbackServer.enqueue(server, %{
            status: 200,
            headers: [{"content-type", "application/json"}],
            body: body
          })

          assert {:error,
                  %LLMError{reason: :malformed_response, provider: ^provider, status: 200}} =
                   LLM.chat(config, @simple)
        end
      end
    end
  end

  defp assert_errors(provider, server, cases) do
    config = config!(provider, server)

    for {kind, reason, status, retryable} <- cases do
      LoopbackServer.enqueue(
        server,
        LLMFixtures.error(provider, kind, message: "scripted #{kind}")
      )

      assert {:error, %LLMError{} = error} = LLM.chat(config, @simple)
      assert error.reason == reason, "#{provider} #{kind}: got #{inspect(error)}"
      assert error.status == status
      assert error.provider == provider
      assert error.retryable? == retryable
      assert error.message =~ "scripted #{kind}"
      assert error.message =~ message_for(kind), "#{provider} #{kind}: #{error.message}"
    end
  end

  # Functions rather than `if provider == ...` on an unquoted literal, which
  # Elixir 1.18's type checker warns about.
  defp overloaded_status(:anthropic), do: 529
  defp overloaded_status(_), do: 503
  defp invalid_key_status(:gemini), do: 400
  defp invalid_key_status(_), do: 401
  defp own_errors(:bedrock), do: [{:model_not_ready, :overloaded, 429, true}]
  defp own_errors(_), do: []

  # The start of each message says what the error is, whatever the status.
  defp message_for(:model_not_ready),
    do: ~r/^the model is not ready to serve requests yet \(HTTP 429\)/

  defp message_for(:rate_limited), do: ~r/^rate limited \(HTTP 429\)/
  defp message_for(:overloaded), do: ~r/^the provider is overloaded \(HTTP 5\d\d\)/
  defp message_for(:unauthorized), do: ~r/^the provider rejected the credentials/
  defp message_for(:bad_request), do: ~r/^the provider refused the request \(HTTP 400\)/
  defp message_for(:server_error), do: ~r/^the provider failed \(HTTP 500\)/
end
