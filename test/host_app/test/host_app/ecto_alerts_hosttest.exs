defmodule HostApp.EctoAlertsTest do
  # The :ecto watcher on a real repo and a real PostgreSQL: every alert
  # comes from real query events, measured by Ecto and Postgrex.
  use Beamlens.WatcherCase, async: false

  import HostApp.Case

  alias HostApp.{EctoDomain, Orders}

  @moduletag timeout: 120_000
  @ecto [name: :ecto, domain_module: EctoDomain]

  setup do
    store = fresh_store()
    order = Orders.place!("acme", 4200)
    %{store: store, order: order}
  end

  defp healthy_load(order, n \\ 2), do: start_load(n, fn -> Orders.find(order.id) end)

  test "slow queries name their normalised SQL", %{instance: instance, order: order} do
    load = healthy_load(order)
    start_beamlens(instance, watchers: [@ecto])
    await_ticks(instance, :ecto, 8, 20_000)

    set_load(load, fn -> Orders.slow_report("acme", 0.3) end)

    alert = assert_alert(:ecto, "slow_queries", 20_000)
    assert alert.source == :gate
    assert {"repo", "HostApp.Repo"} in alert.entities
    assert {"db_table", "orders"} in alert.entities
    assert alert.summary =~ "(slowest tables: orders)"
    values = alert.evidence.values
    assert Enum.any?(Map.keys(values), &(&1 in ["ecto.query_p95_ms", "ecto.slow_queries"]))
    # What crossed the gate is this run's own slowdown, measured against the
    # baseline learnt in the same run: the pg_sleep queries, or on a loaded
    # machine the healthy queries slowed down before them (before the gate
    # has a baseline, its warm-up floor judged it).
    if p95 = values["ecto.query_p95_ms"] do
      assert is_nil(p95[:baseline]) or p95.value > p95.baseline, inspect(p95)
    end

    assert alert.hypothesis =~ "index"

    # Ecto inlined the literal status; the customer is a parameter.
    sql =
      ~s|SELECT pg_sleep($1::float) FROM "orders" AS o0 | <>
        ~s|WHERE ((o0."customer" = $2) AND (o0."status" != ?)) LIMIT ?|

    # The alert may come before the first 300 ms query has ended.
    wait_for(fn ->
      match?(
        [%{sql: ^sql, source: "orders", slow_count: n} | _] when n >= 1,
        EctoDomain.snapshot().slowest
      )
    end)

    # The model reads the same group through Lua.
    assert [%{"sql" => ^sql, "source" => "orders"} | _] = lua!("return ecto.slow_queries(3)")
  end

  test "more concurrent checkouts than the pool holds saturate it", %{
    instance: instance,
    order: order
  } do
    pool_size = HostApp.Repo.config()[:pool_size]
    load = healthy_load(order)
    start_beamlens(instance, watchers: [@ecto])
    await_ticks(instance, :ecto, 8, 20_000)

    # Three times as many callers as connections, each holding one 100 ms.
    busy = fn -> Orders.slow_report("acme", 0.1) end
    set_load(load, busy)
    start_load(3 * pool_size - 2, busy, pause: 0)

    alert = assert_alert(:ecto, "pool_saturation", 20_000)
    assert {"repo", "HostApp.Repo"} in alert.entities
    assert alert.summary =~ ~r/wait for a pool connection at \d+/
    assert Map.keys(alert.evidence.values) -- ["ecto.queue_p95_ms", "ecto.queue_avg_ms"] == []
    assert alert.hypothesis =~ "pool"

    # The model sees the queue through Lua (once the window is all saturation).
    pool =
      wait_for(fn ->
        pool = lua!("return ecto.pool()")
        p95 = pool["queue_ms"]["p95"]
        is_number(p95) and p95 >= 50 and pool
      end)

    assert pool["pool_size"] == pool_size
    assert pool["waited_10ms_share"] > 0
  end

  test "failing SQL gives the query error rate", %{instance: instance, order: order} do
    load = healthy_load(order)
    start_beamlens(instance, watchers: [@ecto])
    await_ticks(instance, :ecto, 8, 20_000)

    set_load(load, fn -> {:error, _} = Orders.broken_lookup(order.id) end)

    alert = assert_alert(:ecto, "query_error_rate", 20_000)
    assert {"repo", "HostApp.Repo"} in alert.entities

    assert Enum.any?(
             Map.keys(alert.evidence.values),
             &(&1 in ["ecto.error_share", "ecto.errors"])
           )

    assert alert.hypothesis =~ "fail"

    assert [error | _] = lua!("return ecto.errors(5)")
    assert error["sql"] == "SELECT * FROM order_archive WHERE id = $1"
    assert error["last_error"]["exception"] == "Postgrex.Error"
    assert error["last_error"]["message"] =~ ~s|relation "order_archive" does not exist|
  end
end
