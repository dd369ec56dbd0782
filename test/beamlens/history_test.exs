defmodule Beamlens.HistoryTest do
  use ExUnit.Case, async: true

  alias Beamlens.{Alert, History, Insight}

  setup context do
    instance = Module.concat(BeamlensHistoryTest, "I#{:erlang.phash2(context.test)}")
    start_supervised!({History, instance: instance, size: Map.get(context, :size, 500)})
    %{history: History.name(instance)}
  end

  defp alert(type, opts \\ []) do
    Alert.new(
      watcher: Keyword.get(opts, :watcher, :ets),
      severity: Keyword.get(opts, :severity, :warning),
      anomaly_type: type,
      summary: Keyword.get(opts, :summary, "#{type} detected"),
      detected_at: Keyword.get(opts, :at, DateTime.utc_now())
    )
  end

  test "keeps fired alerts newest first, with filters", %{history: h} do
    old = DateTime.add(DateTime.utc_now(), -7_200, :second)
    a = alert("ets_memory_growth", at: old)
    b = alert("memory_growth", watcher: :beam, severity: :critical)
    c = alert("error_log_burst", watcher: :logger)
    for x <- [a, b, c], do: History.alert(h, :fired, x)

    assert Enum.map(History.alerts(h), & &1.id) == [c.id, b.id, a.id]
    assert [%{id: id}] = History.alerts(h, watcher: :beam)
    assert id == b.id
    assert [%{id: ^id}] = History.alerts(h, severity: :critical)

    assert [%{anomaly_type: "ets_memory_growth"}] =
             History.alerts(h, anomaly_type: "ets_memory_growth")

    hour_ago = DateTime.add(DateTime.utc_now(), -3_600, :second)
    assert length(History.alerts(h, since: hour_ago)) == 2
    assert length(History.alerts(h, limit: 1)) == 1
  end

  test "a folded repeat updates occurrences and last_seen_at in place", %{history: h} do
    a = alert("ets_memory_growth", at: DateTime.add(DateTime.utc_now(), -60, :second))
    History.alert(h, :fired, a)
    History.alert(h, :folded, %{a | occurrences: 2})

    assert [%{id: id, occurrences: 2} = kept] = History.alerts(h)
    assert id == a.id
    assert DateTime.compare(kept.last_seen_at, a.detected_at) == :gt
    # Seen recently, though first detected a minute ago.
    assert [_] = History.alerts(h, since: DateTime.add(DateTime.utc_now(), -5, :second))
  end

  test "a higher severity for the same problem is recorded as an escalation", %{history: h} do
    warning = alert("ets_memory_growth", summary: "ETS at 30%")
    critical = alert("ets_memory_growth", severity: :critical, summary: "ETS at 60%")
    History.alert(h, :fired, warning)
    History.alert(h, :fired, critical)

    assert [latest, first] = History.alerts(h)
    assert first.escalations == []

    assert [%{severity: :critical, summary: "ETS at 60%", at: %DateTime{}}] = latest.escalations
  end

  @tag size: 3
  test "is bounded: the oldest entries go first", %{history: h} do
    alerts = for i <- 1..5, do: alert("custom_#{i}")
    for a <- alerts, do: History.alert(h, :fired, a)
    assert Enum.map(History.alerts(h), & &1.anomaly_type) == ~w(custom_5 custom_4 custom_3)

    for i <- 1..5, do: History.insight(h, insight("i#{i}", 1))
    assert h |> History.insights() |> length() == 3
  end

  test "keeps the latest version of each insight", %{history: h} do
    History.insight(h, insight("x", 1))
    History.insight(h, insight("x", 3))
    History.insight(h, insight("x", 2))
    assert [%Insight{id: "x", version: 3}] = History.insights(h)
  end

  test "bad filters raise, naming the filter", %{history: h} do
    assert_raise ArgumentError, ~r/unknown filter :sevrity/, fn ->
      History.alerts(h, sevrity: :x)
    end

    assert_raise ArgumentError, ~r/:severity to be :info/, fn ->
      History.alerts(h, severity: :bad)
    end

    assert_raise ArgumentError, ~r/:since to be a DateTime/, fn -> History.alerts(h, since: 1) end
  end

  test "recording to a history that is not running does nothing; reading it says so" do
    assert :ok = History.alert(:no_such_history, :fired, alert("x"))
    assert :ok = History.insight(nil, insight("x", 1))

    assert_raise ArgumentError, ~r/is the BeamLens instance running/, fn ->
      Beamlens.alerts(instance: NoSuchBeamlens)
    end

    {:ok, io} = StringIO.open("")
    assert :ok = Beamlens.report(instance: NoSuchBeamlens, device: io)
    assert {:ok, {_, "BeamLens (NoSuchBeamlens) is not running on " <> _}} = StringIO.close(io)
  end

  defp insight(id, version) do
    now = DateTime.utc_now()

    %Insight{
      id: id,
      version: version,
      correlation_type: :temporal,
      summary: "s",
      root_cause_hypothesis: "h",
      confidence: 0.5,
      severity: :warning,
      created_at: now,
      updated_at: now,
      produced_by: node()
    }
  end
end
