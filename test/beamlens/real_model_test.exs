defmodule Beamlens.RealModelTest do
  # The watcher loop against a real open model on loopback. Opt-in: runs when
  # BEAMLENS_REAL_MODEL_URL is set, e.g. by `bin/test --real-model`, which
  # starts Qwen2.5-Coder-0.5B under llama.cpp through ../shared/tools/local-llm.
  #
  # Each scenario injects a fault and asserts only what must hold whatever
  # the model says: the watcher stays alive, every check ends within its
  # iteration cap, tokens are counted, an alert for the fault fires (from
  # the model or the gate), and a healthy run of the same length, in which
  # the model checks in on a heartbeat, fires nothing. What the model did is
  # printed, not asserted: `bench/real_model_eval.exs` tabulates it.
  use ExUnit.Case, async: false

  alias Beamlens.RealModel

  @moduletag :real_model
  @moduletag timeout: 1_800_000

  for name <- ~w(ets_growth process_leak error_log_burst) do
    test "#{name}: the loop survives a real model and the fault is alerted" do
      scenario = Enum.find(RealModel.scenarios(), &(&1.name == unquote(name)))
      max_iterations = RealModel.watcher_options()[:max_iterations]

      run = RealModel.fault(scenario)
      facts = RealModel.facts(run, scenario)
      report(scenario, run, facts)

      assert run.alive? and not run.restarted?, "the watcher died or restarted"
      assert run.checks != [], "no check ended within the timeout"

      assert Enum.all?(run.checks, &(&1.iterations <= max_iterations)),
             "a check ran #{facts.max_turns} model turns (cap #{max_iterations})"

      assert facts.tokens > 0 and run.usage_tokens > 0, "no tokens were counted"

      assert facts.fault_alerts != [],
             "no alert of #{inspect(scenario.expected_types)} fired; alerts: " <>
               inspect(Enum.map(run.alerts, &{&1.source, &1.anomaly_type}))

      healthy = RealModel.healthy(scenario, max(run.wall_ms - RealModel.warmup_ms(), 1_000))
      report_healthy(healthy)

      assert healthy.alive? and not healthy.restarted?

      assert healthy.alerts == [],
             "the healthy run fired: " <>
               inspect(Enum.map(healthy.alerts, &{&1.source, &1.anomaly_type, &1.summary}))
    end
  end

  defp report(scenario, run, facts) do
    IO.puts("""

    [real_model] #{scenario.name} (#{scenario.watcher} watcher, #{div(run.wall_ms, 1000)} s)
      alert for the fault from: #{Enum.map_join(facts.alert_sources, " and ", &source/1)}
      model called execute_lua validly: #{facts.lua_valid?}; fire_alert validly: #{facts.alert_valid?}#{if facts.alert_forced?, do: " (after the watcher asked)", else: ""}
      model alert has the right type: #{facts.right_type?}; names the culprit: #{facts.names_cause?}#{model_alert(facts)}
      #{facts.checks} check(s), #{facts.turns} turns, #{facts.valid_calls}/#{facts.model_calls} valid tool calls, #{facts.corrections} corrections, #{facts.tokens} tokens, outcomes #{inspect(facts.outcomes)}
      calls: #{Enum.map_join(run.tool_calls, ", ", &"#{&1.tool}#{if &1.error?, do: "(x)", else: ""}")}\
    """)
  end

  defp report_healthy(run) do
    calls = Enum.map_join(run.tool_calls, ", ", &"#{&1.tool}#{if &1.error?, do: "(x)", else: ""}")

    IO.puts(
      "  healthy run (#{div(run.wall_ms, 1000)} s): #{length(run.checks)} check(s), " <>
        "#{length(run.alerts)} alert(s); calls: #{if calls == "", do: "none", else: calls}"
    )
  end

  defp model_alert(%{model_alerts: [alert | _]}),
    do: "\n      model alert: [#{alert.anomaly_type}] #{alert.summary} | #{alert.observation}"

  defp model_alert(_facts), do: ""

  defp source(:llm), do: "the model"
  defp source(:gate), do: "the gate"
end
