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
    previous = :erlang.system_monitor(self(), [{:long_schedule, 2}])

    try do
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

      Process.sleep(20)
      culprits = long_schedules_in_native([])
      assert culprits == [], "long schedules in BeamLens NIFs: #{inspect(culprits)}"
    after
      case previous do
        {pid, options} -> :erlang.system_monitor(pid, options)
        :undefined -> :erlang.system_monitor(:undefined)
      end
    end
  end

  defp long_schedules_in_native(acc) do
    receive do
      {:monitor, _who, :long_schedule, info} ->
        native? =
          Enum.any?(info, fn
            {key, {Beamlens.Native, _, _}} when key in [:in, :out] -> true
            _ -> false
          end)

        long_schedules_in_native(if native?, do: [info | acc], else: acc)
    after
      0 -> acc
    end
  end
end
