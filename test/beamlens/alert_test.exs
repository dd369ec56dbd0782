defmodule Beamlens.AlertTest do
  use ExUnit.Case, async: true
  doctest Beamlens.Alert

  alias Beamlens.Alert

  test "the fingerprint depends on code fields only" do
    a = Alert.new(watcher: :ets, severity: :warning, anomaly_type: "x", summary: "one text")
    b = Alert.new(watcher: :ets, severity: :critical, anomaly_type: "x", summary: "other text")
    c = Alert.new(watcher: :beam, severity: :warning, anomaly_type: "x", summary: "one text")

    assert a.fingerprint == b.fingerprint
    refute a.fingerprint == c.fingerprint
    refute a.id == b.id
    assert a.node == node()
    assert %DateTime{} = a.detected_at
  end

  test "an unknown severity is refused with the valid ones listed" do
    assert_raise ArgumentError, ~r/:severity to be one of \[:info, :warning, :critical\]/, fn ->
      Alert.new(watcher: :ets, severity: :bad, anomaly_type: "x", summary: "s")
    end
  end
end
