defmodule Beamlens.LLMSecretsTest do
  # A failing request with a key the provider echoes back: the key must not
  # show up in anything BeamLens produces.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Beamlens.{LLM, LLMFixtures, LoopbackServer}
  alias Beamlens.LLM.Config

  @key "sk-test-SECRET-0123456789abcdef"
  @aws_secret "wJalrXUtnFEMI/SECRET/bPxRfiCYEXAMPLEKEY"
  @session "SESSION-TOKEN-SECRET-42"

  setup context do
    handler_id = "#{inspect(__MODULE__)}-#{context.test}"
    on_exit(fn -> :telemetry.detach(handler_id) end)
    %{server: start_supervised!(LoopbackServer), handler_id: handler_id}
  end

  def capture(event, measurements, metadata, pid),
    do: send(pid, {:telemetry, event, measurements, metadata})

  defp collect_telemetry(acc) do
    receive do
      {:telemetry, _, _, _} = event -> collect_telemetry([event | acc])
    after
      0 -> acc
    end
  end

  test "keys appear in no log, telemetry, inspect output, error or crash report", context do
    %{server: server, handler_id: id} = context

    :ok =
      :telemetry.attach_many(
        id,
        [
          [:beamlens, :llm, :request, :start],
          [:beamlens, :llm, :request, :stop],
          [:beamlens, :llm, :request, :exception]
        ],
        &__MODULE__.capture/4,
        self()
      )

    # The provider echoes the credentials it was sent in its error message,
    # as some do.
    LoopbackServer.set_handler(server, fn request ->
      echoed = Enum.map_join(request.headers, " ", fn {name, value} -> "#{name}=#{value}" end)

      %{
        status: 401,
        body: %{
          "error" => %{
            "message" => "Incorrect API key provided: #{echoed}",
            "code" => "invalid_api_key"
          }
        }
      }
    end)

    url = LoopbackServer.url(server)

    log =
      capture_log(fn ->
        {:ok, config} =
          Config.new([
            LLMFixtures.config(:openai, server, api_key: @key, headers: [{"x-proxy-token", @key}]),
            LLMFixtures.config(:bedrock, url,
              secret_access_key: @aws_secret,
              session_token: @session
            )
          ])

        {:ok, pending} =
          LLM.chat_async(config, %{messages: [%{role: :user, content: "hi"}]}, caller: :secrets)

        assert_receive {ref, raw} when ref == pending.ref, 5_000
        {:error, error} = LLM.handle_reply(pending, raw)

        # The provider did receive the key: the check below is meaningful.
        sent = Enum.map(LoopbackServer.requests(server), &inspect(&1.headers))
        assert Enum.any?(sent, &(&1 =~ @key))
        assert Enum.any?(sent, &(&1 =~ @session))

        # A process holding the configuration crashes; its report is logged.
        {pid, monitor} = spawn_monitor(fn -> exit({:boom, config, error, pending}) end)
        assert_receive {:DOWN, ^monitor, :process, ^pid, _}

        {:ok, agent} = Agent.start(fn -> config end)
        Process.unlink(agent)

        catch_exit(
          Agent.update(agent, fn _ -> raise "crash while holding #{inspect(config)}" end)
        )

        captured = [
          inspect(config),
          inspect(config, structs: false, limit: :infinity, printable_limit: :infinity),
          inspect(pending, structs: false, limit: :infinity),
          inspect(error, structs: false, limit: :infinity, printable_limit: :infinity),
          Exception.message(error),
          inspect(collect_telemetry([]), limit: :infinity, printable_limit: :infinity),
          inspect(:sys.get_state(server) |> Map.drop([:requests]), limit: :infinity)
        ]

        send(self(), {:captured, captured, error})
        Process.sleep(100)
      end)

    assert_receive {:captured, captured, error}
    assert error.reason == :unauthorized
    assert error.message =~ "[REDACTED]"

    for text <- [log | captured], secret <- [@key, @aws_secret, @session] do
      refute text =~ secret, "found a secret in: #{String.slice(text, 0, 2_000)}"
    end

    assert log =~
             "crash while holding #Beamlens.LLM.Config<openai gpt-test -> bedrock anthropic.claude-test-v1:0>"
  end
end
