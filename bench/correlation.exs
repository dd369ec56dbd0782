# Ingesting 100,000 alerts into the correlation engine.
#
#   mix run bench/correlation.exs
#
# (MIX_ENV=dev builds the NIF in release mode.) The machine is shared and
# noisy, so every figure is the median of several runs and is also given as
# a ratio to a baseline measured in the same run: inserting the same alerts
# into an ETS set keyed by fingerprint, the least work any deduplicating
# store does.

alias Beamlens.{Alert, Coordinator}
alias Beamlens.Coordinator.Engine

Code.require_file("support/bench.exs", __DIR__)

defmodule Bench do
  defdelegate median(runs, fun), to: Bench.Support

  def ms(us), do: :erlang.float_to_binary(us / 1000, decimals: 1) <> " ms"
  def per_alert(us, n), do: :erlang.float_to_binary(us / n, decimals: 2) <> " us/alert"
  def ratio(a, b), do: :erlang.float_to_binary(a / b, decimals: 1) <> "x"
end

n = 100_000
runs = 5
batch = 500
:rand.seed(:exsss, {2024, 6, 1})

{:ok, rules} = Coordinator.causal_rules()
types = rules |> Enum.flat_map(&(&1.lead ++ &1.lag)) |> Enum.uniq()
watchers = ~w(beam ets gc logger ports sup system ecto exception)a
nodes = for k <- 1..20, do: :"app#{k}@10.0.0.#{k}"
start = DateTime.add(DateTime.utc_now(), -500, :second)

# Alerts as watchers on a 20-node cluster would fire them: the causal
# table's vocabulary, entities from small pools, 5 ms apart (500 s in all,
# inside the retention horizon), plus custom anomalies of custom watchers.
alerts =
  for i <- 1..n do
    {type, watcher} =
      if rem(i, 5) == 0,
        do: {"custom_#{rem(i, 400)}", Enum.at(watchers, rem(i, 9))},
        else: {Enum.at(types, rem(i * 7, length(types))), Enum.at(watchers, rem(i, 9))}

    Alert.new(
      watcher: watcher,
      severity: Enum.at([:info, :warning, :warning, :critical], rem(i, 4)),
      anomaly_type: type,
      summary: "#{type} detected",
      node: Enum.at(nodes, rem(i * 13, 20)),
      entities: [{"pid", "#PID<0.#{rem(i, 211)}.0>"}, {"module", "MyApp.M#{rem(i, 17)}"}],
      detected_at: DateTime.add(start, i * 5, :millisecond)
    )
  end

batches = Enum.chunk_every(alerts, batch)
now = System.system_time(:millisecond)

IO.puts("""
Correlation benchmark: #{n} alerts, #{length(nodes)} nodes, #{length(types) + 400} anomaly types, \
batches of #{batch}, median of #{runs} runs
""")

baseline =
  Bench.median(runs, fn ->
    table = :ets.new(:bench, [:set])
    for alert <- alerts, do: :ets.insert(table, {alert.fingerprint, alert})
    :ets.delete(table)
  end)

IO.puts(
  "baseline  ETS insert keyed by fingerprint     #{Bench.ms(baseline)}  (#{Bench.per_alert(baseline, n)})"
)

engine_opts = [window_ms: 60_000, order_tolerance_ms: 5_000, max_alerts: 5_000]
insights = :counters.new(1, [])

ingest =
  Bench.median(runs, fn ->
    {:ok, engine} = Engine.new(engine_opts)

    for b <- batches do
      {:ok, report} = Engine.ingest(engine, b, now)
      :counters.add(insights, 1, length(report.insights))
    end
  end)

{:ok, engine} = Engine.new(engine_opts)
for b <- batches, do: {:ok, _} = Engine.ingest(engine, b, now)
{:ok, final} = Engine.stats(engine)

IO.puts(
  "engine    ingest through the NIF                #{Bench.ms(ingest)}  (#{Bench.per_alert(ingest, n)})  " <>
    "#{Bench.ratio(ingest, baseline)} baseline"
)

IO.puts(
  "          #{final.received} received, #{final.folded} folded, #{final.evicted} evicted, " <>
    "#{final.live_members} live, #{final.groups} groups, " <>
    "#{div(:counters.get(insights, 1), runs)} insight reports per run"
)

# The whole path: report_alert/2 casts from one process, the coordinator
# drains its mailbox in batches, correlates and emits insight events.
{:ok, _} = :pg.start_link(:bench_pg)

coordinator_runs =
  for run <- 1..3 do
    name = :"bench_coordinator_#{run}"
    {:ok, pid} = Coordinator.start_link(name: name, pg_scope: :bench_pg)

    {us, received} =
      :timer.tc(fn ->
        for alert <- alerts, do: Coordinator.report_alert(name, alert)
        # Handled after every alert cast before it: the final count.
        {:ok, %{received: received}} = Coordinator.stats(name)
        received
      end)

    GenServer.stop(pid)
    {us, received, n - received}
  end

{us, received, drops} = coordinator_runs |> Enum.sort() |> Enum.at(1)

IO.puts(
  "coordinator report_alert/2 -> insights          #{Bench.ms(us)}  (#{Bench.per_alert(us, n)})  " <>
    "#{Bench.ratio(us, baseline)} baseline; #{received} correlated, #{drops} dropped (mailbox bound)"
)
