defmodule Beamlens.ReportTest do
  use ExUnit.Case, async: true

  alias Beamlens.{Alert, Report}

  defp report(fields) do
    struct!(
      %Report{
        question: "why is memory growing?",
        node: :app@host,
        started_at: ~U[2026-12-01 03:12:45Z],
        duration_ms: 840,
        domains: [
          %{
            watcher: :beam,
            state: :warning,
            key_figures: %{"binary memory" => "1.2 GiB", "process count" => "812"},
            watching: ["total VM memory 2.0 GiB"]
          },
          %{watcher: :ets, state: :healthy, key_figures: %{}, watching: []}
        ],
        findings: [
          %{
            watcher: :beam,
            anomaly_type: "binary_memory_growth",
            severity: :warning,
            summary: "binary memory at 1.2 GiB, baseline 80.0 MiB",
            evidence: %{metric: "beam.memory.binary", value: 1.2e9},
            entities: [{"pid", "#PID<0.512.0>"}, {"module", "MyApp.Uploads"}]
          }
        ],
        alerts: [
          Alert.new(
            watcher: :beam,
            severity: :warning,
            anomaly_type: "binary_memory_growth",
            summary: "s"
          )
        ]
      },
      fields
    )
  end

  test "rules-only: the facts, and why no model was used" do
    text = Report.to_text(report(no_model_reason: "no provider configured"))

    assert text == """
           BeamLens investigation on app@host at 03:12:45 (840 ms)
           Question: why is memory growing?
           Domains:
             beam       warning   binary memory 1.2 GiB, process count 812
             ets        healthy   (no fresh snapshot)
           Anomalous, not yet alerted: beam: total VM memory 2.0 GiB
           Findings (measured):
             warning beam/binary_memory_growth: binary memory at 1.2 GiB, baseline 80.0 MiB [pid #PID<0.512....
           Alerts it would raise: 1 (binary_memory_growth)
           No model was used (no provider configured); the findings above are the gate's.
           """
  end

  test "with a model: its answer is marked as interpretation, wrapped for a terminal" do
    summary = String.duplicate("The uploads process keeps references to large binaries. ", 5)

    text =
      Report.to_text(
        report(
          model_used: true,
          summary: summary,
          hypothesis: "MyApp.Uploads never hibernates.",
          tokens: %{input: 5_210, output: 402, estimated: true}
        )
      )

    assert text =~ "Model's answer (interpretation, not measured):"
    assert text =~ "Hypothesis: MyApp.Uploads never hibernates."
    assert text =~ "Tokens: 5210 in, 402 out (estimated)"
    refute text =~ "No model was used"
    lines = String.split(text, "\n")
    assert Enum.all?(lines, &(String.length(&1) <= 100))
    assert Enum.count(lines, &String.starts_with?(&1, "    ")) >= 2
  end
end
