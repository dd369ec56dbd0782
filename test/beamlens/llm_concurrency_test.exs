defmodule Beamlens.LLMConcurrencyTest do
  # The system monitor is node-wide: this module runs alone.
  use ExUnit.Case, async: false

  alias Beamlens.{LLM, LLMFixtures, LoopbackServer}
  alias Beamlens.LLM.Config

  test "100 concurrent requests each get their own answer, with no long schedule in a NIF" do
    server = start_supervised!(LoopbackServer)

    # No request is answered before all 100 are in flight at once: they
    # can only complete if submitting does not wait for the network and
    # the requests overlap, however fast the machine is.
    test = self()

    LoopbackServer.set_handler(server, fn request ->
      [%{"content" => [%{"text" => text}]}] = request.json["messages"]
      send(test, {:request_arrived, self()})

      receive do
        :answer -> LLMFixtures.text(:anthropic, "echo " <> text)
      after
        30_000 -> %{status: 504, body: "not released"}
      end
    end)

    {:ok, config} = Config.new(LLMFixtures.config(:anthropic, server))

    {_, culprits} =
      Beamlens.SchedulerMonitor.long_schedules_in_nifs(fn ->
        pendings =
          for i <- 1..100 do
            {:ok, pending} =
              LLM.chat_async(config, %{messages: [%{role: :user, content: "#{i}"}]},
                caller: :concurrency
              )

            {pending, i}
          end

        connections =
          for _ <- 1..100 do
            assert_receive {:request_arrived, connection}, 10_000
            connection
          end

        Enum.each(connections, &send(&1, :answer))

        for {pending, i} <- pendings do
          ref = pending.ref
          assert_receive {^ref, raw}, 5_000
          expected = "echo #{i}"
          assert {:ok, %{content: ^expected}} = LLM.handle_reply(pending, raw)
        end
      end)

    assert culprits == [], "long schedules in BeamLens NIFs: #{inspect(culprits)}"
  end
end
