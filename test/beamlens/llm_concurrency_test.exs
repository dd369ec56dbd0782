defmodule Beamlens.LLMConcurrencyTest do
  # The system monitor is node-wide: this module runs alone.
  use ExUnit.Case, async: false

  alias Beamlens.{LLM, LLMFixtures, LoopbackServer}
  alias Beamlens.LLM.Config

  test "100 concurrent requests each get their own answer, with no long schedule in a NIF" do
    server = start_supervised!(LoopbackServer)

    LoopbackServer.set_handler(server, fn request ->
      [%{"content" => [%{"text" => text}]}] = request.json["messages"]
      Map.put(LLMFixtures.text(:anthropic, "echo " <> text), :delay, 50)
    end)

    {:ok, config} = Config.new(LLMFixtures.config(:anthropic, server))

    {_, culprits} =
      Beamlens.SchedulerMonitor.long_schedules_in_nifs(fn ->
        started = System.monotonic_time(:millisecond)

        pendings =
          for i <- 1..100 do
            {:ok, pending} =
              LLM.chat_async(config, %{messages: [%{role: :user, content: "#{i}"}]},
                caller: :concurrency
              )

            {pending, i}
          end

        submit_ms = System.monotonic_time(:millisecond) - started

        for {pending, i} <- pendings do
          ref = pending.ref
          assert_receive {^ref, raw}, 5_000
          expected = "echo #{i}"
          assert {:ok, %{content: ^expected}} = LLM.handle_reply(pending, raw)
        end

        elapsed = System.monotonic_time(:millisecond) - started
        # Submitting does not wait for the network; the requests overlap.
        assert submit_ms < 500, "submitting took #{submit_ms} ms"
        assert elapsed < 3_000, "100 requests of 50 ms took #{elapsed} ms"
      end)

    assert culprits == [], "long schedules in BeamLens NIFs: #{inspect(culprits)}"
  end
end
