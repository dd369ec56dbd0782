defmodule Beamlens.Watcher.AlertsTest do
  # Delivery rules of a watcher's alerts, with the clock passed in.
  use ExUnit.Case, async: true

  alias Beamlens.Alert
  alias Beamlens.Watcher.Alerts

  @cooldown 900_000

  defp open(severity, values, fired_at \\ 0) do
    alert =
      Alert.new(
        watcher: :sup,
        severity: severity,
        anomaly_type: "restart_storm",
        summary: "child restart rate at 0.5/s",
        evidence: %{snapshot_ids: ["sup-1"], values: values},
        source: :gate
      )

    %{alert: alert, fired_at: fired_at}
  end

  defp candidate(severity, values, escalated? \\ false),
    do: %{severity: severity, values: values, escalated?: escalated?}

  test "a first alert fires, and so does a repeat after the cooldown" do
    c = candidate(:warning, %{"sup.restarts" => %{value: 0.5}})
    assert Alerts.decide(nil, c, 0, @cooldown, 2.0) == :fire
    open = open(:warning, %{"sup.restarts" => %{value: 0.5}})
    assert Alerts.decide(open, c, @cooldown, @cooldown, 2.0) == :fire
  end

  test "a repeat no worse than the open alert is folded, and counted" do
    open = open(:critical, %{"sup.restarts" => %{value: 0.5}})
    c = candidate(:critical, %{"sup.restarts" => %{value: 0.9}})
    assert Alerts.decide(open, c, 180_000, @cooldown, 2.0) == :fold
    assert Alerts.fold(Alerts.fold(open)).alert.occurrences == 3
  end

  test "the issue's scenario: a real storm after a false alarm escalates through the cooldown" do
    # A false restart_storm at 0.5/s, then a real one (20/s) 3 minutes later.
    open = open(:warning, %{"sup.restarts" => %{value: 0.5}})
    real = candidate(:warning, %{"sup.restarts" => %{value: 20.0}})

    assert {:escalate, "sup.restarts rose from 0.5 to 20.0"} =
             Alerts.decide(open, real, 180_000, @cooldown, 2.0)

    # A higher severity escalates whatever the figures.
    critical = candidate(:critical, %{"sup.restarts" => %{value: 0.6}})

    assert {:escalate, "severity rose from warning to critical"} =
             Alerts.decide(open, critical, 180_000, @cooldown, 2.0)
  end

  test "a gate escalation counts only when the open alert has nothing to compare" do
    c = candidate(:warning, %{"sup.restarts" => %{value: 0.6}}, true)
    # The model's open alert is about other figures: trust the gate.
    open_other = open(:warning, %{})
    assert {:escalate, _} = Alerts.decide(open_other, c, 1, @cooldown, 2.0)
    # The open alert already has these figures: they decide.
    open_same = open(:warning, %{"sup.restarts" => %{value: 0.5}})
    assert Alerts.decide(open_same, c, 1, @cooldown, 2.0) == :fold
  end

  test "an escalation event carries the old and the new figures" do
    previous = open(:warning, %{"sup.restarts" => %{value: 0.5}}).alert
    alert = open(:critical, %{"sup.restarts" => %{value: 20.0}}).alert
    event = Alerts.escalation(previous, alert, "worse")

    assert %{from: :warning, to: :critical, reason: "worse"} = event
    assert event.values["sup.restarts"].value == 20.0
    assert event.previous_values["sup.restarts"].value == 0.5
  end

  test "gate alerts waiting on the model are due after the grace, whatever else happens" do
    waiting = %{"restart_storm" => 1_000, "error_log_burst" => 9_000}
    assert {[], ^waiting} = Alerts.due(waiting, 1_500, 10_000)

    assert {["restart_storm"], %{"error_log_burst" => 9_000}} =
             Alerts.due(waiting, 11_000, 10_000)

    assert {["error_log_burst", "restart_storm"], %{}} = Alerts.due(waiting, 11_000, 0)
  end

  describe "building and delivering" do
    defmodule Domain do
      @moduledoc false
      def summarize(finding, metric), do: "#{metric.label} at #{finding.value}"
      def hypothesis("restart_storm"), do: "a child crashes on start"
    end

    @finding %{
      name: "sup.restarts",
      value: 20.0,
      baseline: 0.1,
      threshold: 1.0,
      z: 8.04,
      severity: :critical,
      samples: 3,
      status: "new",
      count: 40,
      window_ms: 2_000
    }

    @rules %{cooldown: @cooldown, ratio: 2.0}

    defp watcher do
      %{
        name: :sup,
        status: :critical,
        domain: Domain,
        metrics: %{
          "sup.restarts" => %{
            label: "child restarts",
            anomaly_type: "restart_storm",
            entities: [{"supervisor", "MyApp.Sup"}]
          }
        },
        firing: %{"sup.restarts" => @finding}
      }
    end

    test "the gate's alert names the culprit and describes how the gate measured" do
      at = ~U[2026-12-01 12:00:00Z]
      alert = Alerts.gate_alert(watcher(), "restart_storm", [@finding], "sup-7", 1, at)

      assert %Alert{source: :gate, severity: :critical, state: :critical, detected_at: ^at} =
               alert

      assert alert.summary == "child restarts at 20.0 (culprit: supervisor MyApp.Sup)"

      assert alert.observation ==
               "sup.restarts = 20, 40 in 2.0 s (baseline 0, threshold 1, z=8.0; critical for 3 sample(s))"

      assert alert.hypothesis == "a child crashes on start"
      assert alert.evidence.snapshot_ids == ["sup-7"]
      assert alert.evidence.values["sup.restarts"].value == 20.0
      assert alert.entities == [{"supervisor", "MyApp.Sup"}]
      assert Alerts.gate_candidate([@finding]).severity == :critical
    end

    test "the model's alert is about the findings of its type firing, else those found" do
      w = watcher()
      assert [@finding] = Alerts.related_findings(w, "restart_storm", %{})
      found = %{"oom" => {[%{@finding | name: "x"}], "sup-1"}}
      assert [%{name: "x"}] = Alerts.related_findings(w, "oom", found)
      assert [] = Alerts.related_findings(w, "other", found)

      attrs = %{
        severity: :warning,
        anomaly_type: "restart_storm",
        summary: "MyApp.Sup restarts its worker in a loop",
        observation: "20 restarts/s",
        hypothesis: "bad config",
        snapshot_ids: ["sup-7"]
      }

      alert = Alerts.model_alert(w, attrs, [@finding], 2, ~U[2026-12-01 12:00:00Z])
      assert %Alert{source: :llm, state: :critical, occurrences: 2} = alert
      assert alert.summary == "MyApp.Sup restarts its worker in a loop"
      assert Alerts.model_candidate(attrs, [@finding]).values["sup.restarts"].value == 20.0
    end

    test "deliver/4 fires, folds a repeat, and escalates what is clearly worse" do
      w = watcher()
      calm = %{@finding | value: 2.0, severity: :warning}
      at = ~U[2026-12-01 12:00:00Z]
      build = fn findings -> &Alerts.gate_alert(w, "restart_storm", findings, "sup-1", &1, at) end

      item = fn findings ->
        {:sup, "restart_storm", Alerts.gate_candidate(findings), build.(findings)}
      end

      assert {open, {:fired, %Alert{occurrences: 1} = first}} =
               Alerts.deliver(%{}, item.([calm]), 0, @rules)

      assert Alerts.open_types(open, 1_000, @cooldown) == ["restart_storm"]
      assert Alerts.open_types(open, @cooldown, @cooldown) == []

      assert {open, {:folded, %Alert{occurrences: 2, id: id}}} =
               Alerts.deliver(open, item.([calm]), 1_000, @rules)

      assert id == first.id

      assert {open, {:escalated, %Alert{occurrences: 3} = worse, escalation}} =
               Alerts.deliver(open, item.([@finding]), 2_000, @rules)

      assert escalation.reason == "severity rose from warning to critical"
      assert map_size(open) == 1
      assert open[worse.fingerprint].fired_at == 2_000
    end

    test "prune/1 keeps the 64 most recently fired open alerts" do
      alerts =
        Map.new(1..70, fn i -> {"fp#{i}", %{alert: open(:warning, %{}).alert, fired_at: i}} end)

      pruned = Alerts.prune(alerts)
      assert map_size(pruned) == 64
      assert Map.has_key?(pruned, "fp70") and not Map.has_key?(pruned, "fp6")
    end
  end
end
