defmodule Beamlens.LLMFaultsTest do
  # Faults against the loopback server; each must end in the expected result.
  # Wall-time assertions are lower bounds (a wait that must happen), or upper
  # bounds set by what the wrong behaviour would take (the delayed reply, the
  # long Retry-After), never by how fast this machine is: counts of requests
  # and attempts prove the rest.
  use ExUnit.Case, async: true

  alias Beamlens.{LLM, LLMError, LLMFixtures, LoopbackServer}
  alias Beamlens.LLM.Config

  @request %{messages: [%{role: :user, content: "Status?"}], max_tokens: 50}

  setup do
    %{server: start_supervised!(LoopbackServer)}
  end

  defp config!(provider \\ :anthropic, server, extra) do
    {:ok, config} = Config.new(LLMFixtures.config(provider, server, extra))
    config
  end

  defp timed(fun) do
    started = System.monotonic_time(:millisecond)
    result = fun.()
    {result, System.monotonic_time(:millisecond) - started}
  end

  describe "retries" do
    test "429 with Retry-After waits as asked, then succeeds", %{server: server} do
      LoopbackServer.enqueue(server, [
        LLMFixtures.error(:anthropic, :rate_limited, retry_after: 1),
        LLMFixtures.text(:anthropic, "after the wait")
      ])

      config = config!(server, max_retries: 2)
      {result, ms} = timed(fn -> LLM.chat(config, @request) end)

      assert {:ok, %{content: "after the wait", attempts: 2}} = result
      assert ms >= 1_000, "took #{ms} ms"
      assert length(LoopbackServer.requests(server)) == 2
    end

    test "retry-after-ms is honoured too", %{server: server} do
      LoopbackServer.enqueue(server, [
        %{LLMFixtures.error(:openai, :rate_limited) | headers: [{"retry-after-ms", "300"}]},
        LLMFixtures.text(:openai, "ok")
      ])

      {result, ms} = timed(fn -> LLM.chat(config!(:openai, server, max_retries: 1), @request) end)
      assert {:ok, %{attempts: 2}} = result
      assert ms >= 300, "took #{ms} ms"
    end

    test "a Retry-After beyond :max_retry_after is not waited for", %{server: server} do
      LoopbackServer.enqueue(server, [
        LLMFixtures.error(:anthropic, :rate_limited, retry_after: 120)
      ])

      config = config!(server, max_retries: 3, max_retry_after: 5_000)
      {result, ms} = timed(fn -> LLM.chat(config, @request) end)

      assert {:error,
              %LLMError{
                reason: :rate_limited,
                retry_after: 120_000,
                retryable?: true,
                attempts: 1
              }} = result

      # Waiting would take at least :max_retry_after.
      assert ms < 5_000, "took #{ms} ms"
      assert length(LoopbackServer.requests(server)) == 1
    end

    test "a huge Retry-After is clamped and the fallback chain goes on", %{server: server} do
      # Retry-After: 1e300 used to panic the request (Duration overflow),
      # which ended the whole chain with an internal error.
      backup = start_supervised!({LoopbackServer, id: :backup})

      for huge <- ["1e300", "inf", "99999999999999999999999", "Fri, 31 Dec 9999 23:59:59 GMT"] do
        LoopbackServer.enqueue(
          server,
          LLMFixtures.error(:anthropic, :rate_limited, retry_after: huge)
        )

        LoopbackServer.enqueue(backup, LLMFixtures.text(:openai, "from the backup"))

        {:ok, chain} =
          Config.new([
            LLMFixtures.config(:anthropic, server, max_retries: 3, breaker_threshold: 0),
            LLMFixtures.config(:openai, backup)
          ])

        assert {:ok, %{content: "from the backup", provider: :openai, attempts: 2}} =
                 LLM.chat(chain, @request),
               huge

        # Alone, the provider reports the wait, clamped to a day.
        LoopbackServer.enqueue(
          server,
          LLMFixtures.error(:anthropic, :rate_limited, retry_after: huge)
        )

        assert {:error, %LLMError{reason: :rate_limited, retry_after: 86_400_000, attempts: 1}} =
                 LLM.chat(config!(server, max_retries: 3, breaker_threshold: 0), @request),
               huge
      end
    end

    test "Gemini's RetryInfo in a 429 body is waited for like Retry-After", %{server: server} do
      LoopbackServer.enqueue(server, [
        LLMFixtures.error(:gemini, :rate_limited, retry_delay: "0.400s"),
        LLMFixtures.text(:gemini, "after the wait")
      ])

      {result, ms} = timed(fn -> LLM.chat(config!(:gemini, server, max_retries: 1), @request) end)
      assert {:ok, %{content: "after the wait", attempts: 2}} = result
      assert ms >= 400, "took #{ms} ms"
    end

    test "Gemini's RetryInfo beyond :max_retry_after moves on at once", %{server: server} do
      LoopbackServer.enqueue(
        server,
        LLMFixtures.error(:gemini, :rate_limited, retry_delay: "57s")
      )

      assert {:error, %LLMError{reason: :rate_limited, retry_after: 57_000, attempts: 1}} =
               LLM.chat(
                 config!(:gemini, server, max_retries: 3, max_retry_after: 5_000),
                 @request
               )

      assert length(LoopbackServer.requests(server)) == 1
    end

    test "500 then 529 then success, with exponential backoff", %{server: server} do
      LoopbackServer.enqueue(server, [
        LLMFixtures.error(:anthropic, :server_error),
        LLMFixtures.error(:anthropic, :overloaded),
        LLMFixtures.text(:anthropic, "third time")
      ])

      config = config!(server, max_retries: 2, base_backoff: 100, max_backoff: 1_000)
      {result, ms} = timed(fn -> LLM.chat(config, @request) end)

      assert {:ok, %{content: "third time", attempts: 3}} = result
      # Waits of 50..100 ms, then 100..200 ms.
      assert ms >= 150, "took #{ms} ms"
    end

    test "retries stop after :max_retries", %{server: server} do
      LoopbackServer.set_handler(server, fn _ -> LLMFixtures.error(:anthropic, :server_error) end)
      {result, ms} = timed(fn -> LLM.chat(config!(server, max_retries: 2), @request) end)

      assert {:error,
              %LLMError{reason: :server_error, status: 500, attempts: 3, retryable?: true}} =
               result

      assert length(LoopbackServer.requests(server)) == 3
      assert ms >= 15, "took #{ms} ms: the two backoffs (at least 5 + 10 ms) were skipped"
    end

    test "other 4xx are not retried", %{server: server} do
      LoopbackServer.set_handler(server, fn _ -> LLMFixtures.error(:anthropic, :bad_request) end)

      assert {:error, %LLMError{reason: :bad_request, attempts: 1}} =
               LLM.chat(config!(server, max_retries: 3), @request)

      LoopbackServer.set_handler(server, fn _ -> LLMFixtures.error(:anthropic, :unauthorized) end)

      assert {:error, %LLMError{reason: :unauthorized, attempts: 1}} =
               LLM.chat(config!(server, max_retries: 3), @request)

      assert length(LoopbackServer.requests(server)) == 2
    end

    test "408 and 409 are retried", %{server: server} do
      LoopbackServer.enqueue(server, [
        %{status: 408, body: "timeout"},
        %{status: 409, body: "conflict"},
        LLMFixtures.text(:anthropic, "ok")
      ])

      assert {:ok, %{attempts: 3}} = LLM.chat(config!(server, max_retries: 2), @request)
    end
  end

  describe "timeouts" do
    test "a provider that does not answer times out within :timeout", %{server: server} do
      LoopbackServer.enqueue(
        server,
        %{LLMFixtures.text(:anthropic, "too late") | status: 200} |> Map.put(:delay, 3_000)
      )

      {result, ms} = timed(fn -> LLM.chat(config!(server, timeout: 300), @request) end)

      assert {:error, %LLMError{reason: :timeout, retryable?: true, status: nil, attempts: 1}} =
               result

      # Before the reply would have come.
      assert ms >= 300 and ms < 3_000, "took #{ms} ms"
    end

    test "timeouts are retried", %{server: server} do
      LoopbackServer.enqueue(server, [
        Map.put(LLMFixtures.text(:anthropic, "late"), :delay, 2_000),
        LLMFixtures.text(:anthropic, "on time")
      ])

      {result, ms} =
        timed(fn -> LLM.chat(config!(server, timeout: 300, max_retries: 1), @request) end)

      assert {:ok, %{content: "on time", attempts: 2}} = result
      assert ms >= 300 and ms < 2_000, "took #{ms} ms"
      assert length(LoopbackServer.requests(server)) == 2
    end

    test "a body that trickles in slower than :timeout times out", %{server: server} do
      reply =
        Map.put(LLMFixtures.text(:anthropic, String.duplicate("x", 400)), :trickle, {20, 100})

      LoopbackServer.enqueue(server, reply)
      {result, ms} = timed(fn -> LLM.chat(config!(server, timeout: 500), @request) end)

      assert {:error, %LLMError{reason: :timeout}} = result
      # The whole body takes 20 intervals of 100 ms.
      assert ms >= 500 and ms < 2_000, "took #{ms} ms"
    end

    test "a slow but timely body is read whole", %{server: server} do
      reply = Map.put(LLMFixtures.text(:anthropic, "slow and steady"), :trickle, {64, 20})
      LoopbackServer.enqueue(server, reply)

      assert {:ok, %{content: "slow and steady"}} =
               LLM.chat(config!(server, timeout: 5_000), @request)
    end
  end

  describe "connections" do
    test "connection refused is a :connect error, retried, within its bound" do
      {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
      {:ok, port} = :inet.port(socket)
      :gen_tcp.close(socket)

      config =
        config!("http://127.0.0.1:#{port}", max_retries: 2, base_backoff: 20, max_backoff: 40)

      {result, ms} = timed(fn -> LLM.chat(config, @request) end)

      assert {:error, %LLMError{reason: :connect, attempts: 3, retryable?: true} = error} = result
      assert error.message =~ "refused"
      # Two backoffs of at least 10 and 20 ms.
      assert ms >= 30, "took #{ms} ms"
    end

    test "https goes through rustls: a plain-HTTP server fails the handshake cleanly", %{
      server: server
    } do
      LoopbackServer.set_handler(server, fn _ -> %{status: 400, body: "not TLS"} end)
      url = String.replace(LoopbackServer.url(server), "http://", "https://")

      assert {:error, %LLMError{reason: :connect, retryable?: true} = error} =
               LLM.chat(config!(url, max_retries: 0), @request)

      # The TLS client started a handshake the server could not answer.
      assert error.message =~ ~r/tls handshake/i
    end

    test "a connection closed without an answer is retried", %{server: server} do
      LoopbackServer.enqueue(server, [%{close: true}, LLMFixtures.text(:anthropic, "second try")])

      assert {:ok, %{content: "second try", attempts: 2}} =
               LLM.chat(config!(server, max_retries: 1), @request)
    end

    test "a cut-off body is :malformed_response and retryable", %{server: server} do
      reply = Map.put(LLMFixtures.text(:anthropic, String.duplicate("y", 1_000)), :truncate, 300)
      LoopbackServer.enqueue(server, reply)

      assert {:error, %LLMError{reason: :malformed_response, retryable?: true} = error} =
               LLM.chat(config!(server, max_retries: 0), @request)

      assert error.message =~ "cut off"
    end
  end

  describe "body size caps" do
    test "a Content-Length over :max_body_bytes fails without reading the body", %{server: server} do
      LoopbackServer.enqueue(server, LLMFixtures.text(:anthropic, String.duplicate("z", 50_000)))

      assert {:error, %LLMError{reason: :body_too_large, retryable?: false} = error} =
               LLM.chat(config!(server, max_body_bytes: 10_000), @request)

      assert error.message =~ "10000-byte limit"
    end

    test "a body without Content-Length is cut at :max_body_bytes", %{server: server} do
      huge = :binary.copy("0123456789", 2_000_000)
      head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
      LoopbackServer.enqueue(server, %{raw: [head, huge]})

      assert {:error, %LLMError{reason: :body_too_large}} =
               LLM.chat(config!(server, max_body_bytes: 100_000), @request)
    end
  end

  describe "hostile replies" do
    # Each must end in a bounded, classified error: never a panic, a hang
    # until :timeout, or a buffer that grows with what the server sends.

    test "a body that never ends is cut at the cap, for errors and successes", %{server: server} do
      chunk = :binary.copy("{\"error\": ", 1_000)

      LoopbackServer.enqueue(server, [
        %{status: 500, endless: chunk},
        %{status: 200, headers: [{"content-type", "application/json"}], endless: chunk}
      ])

      # A generous timeout: reaching it would mean the body was read on.
      config = config!(server, timeout: 60_000, max_body_bytes: 200_000)

      assert {:error, %LLMError{reason: :server_error, status: 500} = error} =
               LLM.chat(config, @request)

      assert String.length(error.message) < 600

      assert {:error, %LLMError{reason: :body_too_large}} = LLM.chat(config, @request)
    end

    test "a huge Content-Length is refused or read as far as the body goes", %{server: server} do
      huge = "99999999999999999"

      LoopbackServer.enqueue(server, [
        %{raw: ["HTTP/1.1 200 OK\r\ncontent-length: #{huge}\r\n\r\n", "{}"]},
        %{raw: ["HTTP/1.1 503 Service Unavailable\r\ncontent-length: #{huge}\r\n\r\n", "oops"]},
        %{raw: ["HTTP/1.1 200 OK\r\ncontent-length: 1#{String.duplicate("0", 40)}\r\n\r\n{}"]}
      ])

      config = config!(server, timeout: 60_000)
      assert {:error, %LLMError{reason: :body_too_large}} = LLM.chat(config, @request)

      assert {:error, %LLMError{reason: :malformed_response, retryable?: true} = error} =
               LLM.chat(config, @request)

      assert error.message =~ "cut off"

      # Beyond u64: the HTTP client refuses the head itself.
      assert {:error, %LLMError{reason: reason, retryable?: true}} = LLM.chat(config, @request)
      assert reason in [:connect, :malformed_response]
    end

    test "invalid UTF-8 in bodies and headers", %{server: server} do
      bad = <<0xFF, 0xFE, 0xC3, 0x28, 0xED, 0xA0, 0x80>>

      LoopbackServer.enqueue(server, [
        %{status: 429, headers: [{"retry-after", bad}], body: "slow down " <> bad},
        %{
          status: 200,
          headers: [{"content-type", "application/json"}],
          body: ~s({"a": ") <> bad <> ~s("})
        }
      ])

      config = config!(server, [])

      assert {:error, %LLMError{reason: :rate_limited, retry_after: nil} = error} =
               LLM.chat(config, @request)

      assert String.valid?(error.message)
      assert error.message =~ "slow down"

      assert {:error, %LLMError{reason: :malformed_response} = error} = LLM.chat(config, @request)
      assert String.valid?(error.message)
    end

    test "deeply nested JSON is malformed, not a crash", %{server: server} do
      deep = String.duplicate("[", 100_000) <> String.duplicate("]", 100_000)
      arguments = String.duplicate("{\"a\":", 10_000) <> "1" <> String.duplicate("}", 10_000)

      LoopbackServer.enqueue(server, [
        %{status: 200, headers: [{"content-type", "application/json"}], body: deep},
        %{status: 500, headers: [{"content-type", "application/json"}], body: deep},
        LLMFixtures.tool_calls(:openai, [{"execute_lua", arguments}])
      ])

      assert {:error, %LLMError{reason: :malformed_response} = error} =
               LLM.chat(config!(server, []), @request)

      assert error.message =~ "recursion limit"

      assert {:error, %LLMError{reason: :server_error} = error} =
               LLM.chat(config!(server, []), @request)

      assert String.length(error.message) < 600

      tools = [
        %{name: "execute_lua", description: "Runs Lua.", parameters: %{"type" => "object"}}
      ]

      assert {:ok, %{tool_calls: [%{arguments: nil, error: message}]}} =
               LLM.chat(config!(:openai, server, []), Map.put(@request, :tools, tools))

      assert message =~ "not valid JSON"
    end

    test "a response head larger than the client accepts is a retryable error", %{server: server} do
      header = String.duplicate("a", 2_000_000)

      LoopbackServer.enqueue(server, %{
        raw: ["HTTP/1.1 200 OK\r\nx-junk: ", header, "\r\ncontent-length: 2\r\n\r\n{}"]
      })

      assert {:error, %LLMError{reason: :connect, retryable?: true}} =
               LLM.chat(config!(server, []), @request)
    end
  end

  describe "fallback chain" do
    test "the next provider answers when the first fails", %{server: server} do
      backup = start_supervised!({LoopbackServer, id: :backup})
      LoopbackServer.set_handler(server, fn _ -> LLMFixtures.error(:anthropic, :overloaded) end)
      LoopbackServer.enqueue(backup, LLMFixtures.text(:openai, "from the backup"))

      {:ok, config} =
        Config.new([
          LLMFixtures.config(:anthropic, server, max_retries: 1),
          LLMFixtures.config(:openai, backup)
        ])

      assert {:ok, %{content: "from the backup", provider: :openai, attempts: 3}} =
               LLM.chat(config, @request)

      assert length(LoopbackServer.requests(server)) == 2
      assert length(LoopbackServer.requests(backup)) == 1
    end

    test "when every provider fails the error names them all", %{server: server} do
      backup = start_supervised!({LoopbackServer, id: :backup})
      LoopbackServer.set_handler(server, fn _ -> LLMFixtures.error(:anthropic, :server_error) end)
      LoopbackServer.set_handler(backup, fn _ -> LLMFixtures.error(:gemini, :rate_limited) end)

      {:ok, config} =
        Config.new([LLMFixtures.config(:anthropic, server), LLMFixtures.config(:gemini, backup)])

      assert {:error, %LLMError{reason: :rate_limited, provider: :gemini, attempts: 2} = error} =
               LLM.chat(config, @request)

      assert error.message =~ "every provider failed"
      assert error.message =~ "anthropic: the provider failed (HTTP 500)"
    end
  end

  describe "circuit breaker" do
    test "opens after repeated failures, skips the provider, and closes after a good probe", %{
      server: server
    } do
      LoopbackServer.set_handler(server, fn _ -> LLMFixtures.error(:anthropic, :server_error) end)
      config = config!(server, breaker_threshold: 2, breaker_cooldown: 400)

      for _ <- 1..2,
          do: assert({:error, %LLMError{reason: :server_error}} = LLM.chat(config, @request))

      assert {:error, %LLMError{reason: :circuit_open, provider: :anthropic, retryable?: true}} =
               LLM.chat(config, @request)

      # No request reached the provider while the breaker was open.
      assert length(LoopbackServer.requests(server)) == 2

      # A chain skips the open provider without waiting.
      backup = start_supervised!({LoopbackServer, id: :backup})
      LoopbackServer.enqueue(backup, LLMFixtures.text(:ollama, "local model"))

      {:ok, chain} =
        Config.new([
          LLMFixtures.config(:anthropic, server, breaker_threshold: 2, breaker_cooldown: 400),
          LLMFixtures.config(:ollama, backup)
        ])

      assert {:ok, %{provider: :ollama}} = LLM.chat(chain, @request)
      assert length(LoopbackServer.requests(server)) == 2

      # After the cooldown one probe goes through; its success closes it.
      Process.sleep(450)
      LoopbackServer.set_handler(server, fn _ -> LLMFixtures.text(:anthropic, "recovered") end)
      assert {:ok, %{content: "recovered"}} = LLM.chat(config, @request)
      assert {:ok, %{content: "recovered"}} = LLM.chat(config, @request)
    end

    test "extreme timeouts and cooldowns saturate instead of overflowing", %{server: server} do
      huge = 18_446_744_073_709_551_615

      config =
        config!(server,
          timeout: huge,
          connect_timeout: huge,
          max_backoff: huge,
          max_retries: 0,
          max_retry_after: huge,
          breaker_cooldown: huge,
          breaker_threshold: 1
        )

      LoopbackServer.enqueue(server, LLMFixtures.error(:anthropic, :server_error))
      assert {:error, %LLMError{reason: :server_error}} = LLM.chat(config, @request)

      # The circuit is open for "ever" (a century), without an overflow.
      assert {:error, %LLMError{reason: :circuit_open}} = LLM.chat(config, @request)
      assert length(LoopbackServer.requests(server)) == 1
    end

    test "client errors do not open the circuit", %{server: server} do
      LoopbackServer.set_handler(server, fn _ -> LLMFixtures.error(:anthropic, :unauthorized) end)
      config = config!(server, breaker_threshold: 1)

      for _ <- 1..3,
          do: assert({:error, %LLMError{reason: :unauthorized}} = LLM.chat(config, @request))

      assert length(LoopbackServer.requests(server)) == 3
    end
  end
end
