# The eval report of the watcher loop against a real open model: for each
# fault scenario (ETS growth, process leak, error-log burst), what the model
# did in its wake-up and whether its own alert named the right cause.
#
#   MIX_ENV=test mix run bench/real_model_eval.exs     (bench/run real_model)
#
# The model: BEAMLENS_REAL_MODEL_URL (an OpenAI-compatible server; see
# Beamlens.RealModel for BEAMLENS_REAL_MODEL_PROVIDER/_NAME), or else the
# local Qwen2.5-Coder-0.5B started (and stopped) through
# ../shared/tools/local-llm or $BEAMLENS_LOCAL_LLM.
#
# Environment: ROUNDS (runs per scenario, default 1), HEALTHY (0 skips the
# healthy runs, default 1), SCENARIOS (comma-separated names, default all).
#
# Columns, per scenario (summed over rounds):
#   valid calls   tool calls the model made that the watcher accepted and
#                 that worked (a Lua script that failed is not valid) / all
#   corr.         corrections the watcher had to send (invalid, unknown or
#                 repeated calls, replies without a call)
#   tokens/wake   model tokens (input + output) per wake-up
#   s/wake        wall time per wake-up (one check: first request to end)
#   turns/wake    model requests per wake-up (cap: max_iterations)
#   lua / alert   wake-ups where the model itself called execute_lua /
#                 fire_alert with valid arguments ("asked": only after the
#                 watcher asked for the report with a forced tool choice)
#   right cause   wake-ups where the model's own alert had the right anomaly
#                 type / also named the culprit in its text
#   alerted by    who fired the alert of the fault type (model, gate)
#   healthy       alerts in a healthy run of the same length (should be 0)

for {module, file} <- [
      {:telemetry, "test/support/telemetry.ex"},
      {Beamlens.RealModel, "test/support/real_model.ex"}
    ],
    not Code.ensure_loaded?(module) do
  Code.require_file(file)
end

Logger.remove_backend(:console)

defmodule Bench.RealModelEval do
  alias Beamlens.RealModel

  def main do
    case model_url() do
      {:ok, url, stop} ->
        System.put_env("BEAMLENS_REAL_MODEL_URL", url)

        try do
          run(url)
        after
          stop.()
        end

      {:error, message} ->
        IO.puts("real_model_eval: skipped: #{message}")
    end
  end

  defp run(url) do
    rounds = String.to_integer(System.get_env("ROUNDS", "1"))
    healthy? = System.get_env("HEALTHY", "1") != "0"
    wanted = System.get_env("SCENARIOS", "") |> String.split(",", trim: true)

    scenarios = Enum.filter(RealModel.scenarios(), &(wanted == [] or &1.name in wanted))

    IO.puts("Model: #{url} (#{RealModel.provider()[:provider]})")
    IO.puts("Watcher options: #{inspect(RealModel.watcher_options())}")

    IO.puts(
      "#{rounds} round(s) per scenario#{if healthy?, do: ", each with a healthy run", else: ""}\n"
    )

    rows =
      for scenario <- scenarios do
        results =
          for round <- 1..rounds do
            run = RealModel.fault(scenario)
            facts = RealModel.facts(run, scenario)

            healthy =
              if healthy?,
                do: RealModel.healthy(scenario, max(run.wall_ms - RealModel.warmup_ms(), 1_000)),
                else: nil

            IO.puts(
              "#{scenario.name} round #{round}: #{facts.turns} turns, calls " <>
                Enum.map_join(
                  run.tool_calls,
                  ", ",
                  &"#{&1.tool}#{if &1.error?, do: "(x)", else: ""}"
                ) <>
                Enum.map_join(
                  facts.model_alerts,
                  "",
                  &"\n    model alert: [#{&1.anomaly_type}] #{&1.summary}"
                )
            )

            {facts, healthy}
          end

        row(scenario, results)
      end

    IO.puts("")
    print_table(rows)
  end

  defp row(scenario, results) do
    facts = Enum.map(results, &elem(&1, 0))
    wakes = facts |> Enum.map(& &1.checks) |> Enum.sum() |> max(1)
    sum = fn key -> facts |> Enum.map(&Map.fetch!(&1, key)) |> Enum.sum() end
    count = fn pred -> Enum.count(facts, pred) end
    n = length(facts)

    ms = facts |> Enum.map(&(&1.ms_per_check * &1.checks)) |> Enum.sum()

    healthy =
      case Enum.reject(Enum.map(results, &elem(&1, 1)), &is_nil/1) do
        [] -> "-"
        runs -> runs |> Enum.map(&length(&1.alerts)) |> Enum.sum() |> to_string()
      end

    own = count.(&(&1.alert_valid? and not &1.alert_forced?))
    asked = count.(& &1.alert_forced?)

    sources =
      facts
      |> Enum.flat_map(& &1.alert_sources)
      |> Enum.frequencies()
      |> Enum.map_join(" ", fn {source, k} ->
        "#{if source == :llm, do: "model", else: "gate"}:#{k}"
      end)

    [
      scenario.name,
      "#{sum.(:valid_calls)}/#{sum.(:model_calls)}",
      "#{sum.(:corrections)}",
      "#{div(sum.(:tokens), wakes)}",
      :io_lib.format("~.1f", [ms / wakes / 1000]) |> to_string(),
      :io_lib.format("~.1f", [sum.(:turns) / wakes]) |> to_string(),
      "#{count.(& &1.lua_valid?)}/#{n}",
      "#{own}/#{n}" <> if(asked > 0, do: " +#{asked} asked", else: ""),
      "#{count.(& &1.right_type?)}/#{n} / #{count.(& &1.names_cause?)}/#{n}",
      if(sources == "", do: "none", else: sources),
      healthy
    ]
  end

  @header [
    "scenario",
    "valid calls",
    "corr.",
    "tokens/wake",
    "s/wake",
    "turns/wake",
    "lua",
    "alert",
    "right cause (type / culprit)",
    "alerted by",
    "healthy"
  ]

  defp print_table(rows) do
    widths =
      Enum.map(0..(length(@header) - 1), fn i ->
        [@header | rows] |> Enum.map(&String.length(Enum.at(&1, i))) |> Enum.max()
      end)

    line = fn cells ->
      cells
      |> Enum.zip(widths)
      |> Enum.map_join(" | ", fn {cell, w} -> String.pad_trailing(cell, w) end)
      |> then(&("| " <> &1 <> " |"))
    end

    IO.puts(line.(@header))
    IO.puts("|" <> Enum.map_join(widths, "|", &String.duplicate("-", &1 + 2)) <> "|")
    Enum.each(rows, &IO.puts(line.(&1)))
  end

  # The model server: the given URL, a running local model, or one started
  # here (and stopped at the end).
  defp model_url do
    case System.get_env("BEAMLENS_REAL_MODEL_URL") do
      url when url not in [nil, ""] ->
        {:ok, url, fn -> :ok end}

      _ ->
        script =
          System.get_env("BEAMLENS_LOCAL_LLM") ||
            Path.expand("../../shared/tools/local-llm", __DIR__)

        if File.exists?(script) do
          {url, 0} = System.cmd(script, ["url"])
          url = String.trim(url)

          if healthy?(url) do
            {:ok, url, fn -> :ok end}
          else
            IO.puts("Starting the local model with #{script}...")

            case System.cmd(script, ["start"], stderr_to_stdout: true) do
              {out, 0} ->
                url = out |> String.split("\n", trim: true) |> List.last()
                {:ok, url, fn -> System.cmd(script, ["stop"]) end}

              {out, _} ->
                {:error, "#{script} start failed: #{String.slice(out, -500, 500)}"}
            end
          end
        else
          {:error,
           "no model: set BEAMLENS_REAL_MODEL_URL, or BEAMLENS_LOCAL_LLM to the local-llm script " <>
             "(not found at #{script})"}
        end
    end
  end

  defp healthy?(url) do
    :inets.start()
    health = String.replace_suffix(url, "/v1", "") <> "/health"

    match?(
      {:ok, {{_, 200, _}, _, _}},
      :httpc.request(:get, {String.to_charlist(health), []}, [timeout: 2_000], [])
    )
  end
end

Bench.RealModelEval.main()
