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
end
