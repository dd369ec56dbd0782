defmodule HostApp.PsqlExtrasTest do
  # Two transactions contend for one row of the real database; the model
  # sees it through the ecto_psql_extras callbacks, run through Lua the way
  # the watcher runs the model's code.
  use ExUnit.Case, async: false

  import HostApp.Case

  alias HostApp.{Orders, Repo}

  @moduletag timeout: 60_000

  setup do
    fresh_store()
    %{order: Orders.place!("acme", 100)}
  end

  # Runs `sql` in a transaction that then waits for :release; tells the
  # test when its statement has run.
  defp transaction(sql, params) do
    test = self()

    ExUnit.Callbacks.start_supervised!(
      {Task,
       fn ->
         Repo.transaction(fn ->
           Repo.query!(sql, params)
           send(test, {:ran, self()})

           receive do
             :release -> :ok
           end
         end)
       end},
      id: make_ref()
    )
  end

  # Backends of this database waiting for a lock, seen from another connection.
  defp waiting_for_lock do
    %{rows: [[n]]} =
      Repo.query!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
      )

    n > 0
  end

  test "locks, blocking and long-running queries show a row lock contention", %{order: order} do
    update = ~s|UPDATE "orders" SET "status" = 'paid', "amount" = 4200 WHERE "id" = $1|
    holder = transaction(update, [order.id])
    assert_receive {:ran, ^holder}, 10_000

    waiter = transaction(~s|UPDATE "orders" SET "status" = 'shipped' WHERE "id" = $1|, [order.id])
    wait_for(&waiting_for_lock/0)

    normalised_holder = ~s|UPDATE "orders" SET "status" = ?, "amount" = ? WHERE "id" = $1|
    normalised_waiter = ~s|UPDATE "orders" SET "status" = ? WHERE "id" = $1|

    result =
      wait_for(fn ->
        result =
          lua!("""
          return {locks = ecto.locks(), blocking = ecto.blocking(),
                  long = ecto.long_running_queries()}
          """)

        # long_running_queries lists queries running for more than 500 ms,
        # the holder's (idle in transaction) among them, and it started
        # first: wait for the waiter's own entry, not for any entry.
        Enum.any?(result["long"], &(&1["query"] == normalised_waiter)) && result
      end)

    orders_locks = Enum.filter(result["locks"], &(&1["relname"] == "orders"))
    assert Enum.any?(orders_locks, &(&1["mode"] == "RowExclusiveLock" and &1["granted"]))
    assert Enum.any?(orders_locks, &(&1["query_snippet"] == normalised_waiter))

    assert [blocked | _] = result["blocking"]
    assert blocked["blocked_statement"] == normalised_waiter
    assert blocked["blocking_statement"] == normalised_holder
    assert is_integer(blocked["blocked_pid"]) and is_integer(blocked["blocking_pid"])

    assert long = Enum.find(result["long"], &(&1["query"] == normalised_waiter))
    # A Postgrex.Interval, shown as text.
    assert is_binary(long["duration"]) and long["duration"] != ""

    # BeamLens's own diagnostics (tagged through Ecto's telemetry_options)
    # stay out of the statistics.
    {:ok, store} = Beamlens.Domain.Ecto.TelemetryStore.lookup(Repo)
    before = Beamlens.Domain.Ecto.TelemetryStore.totals(store).queries
    lua!("return {ecto.locks(), ecto.blocking(), ecto.connections()}")
    assert Beamlens.Domain.Ecto.TelemetryStore.totals(store).queries == before

    # Literals never reach the model.
    refute inspect(result) =~ "paid"
    refute inspect(result) =~ "shipped"

    send(holder, :release)
    assert_receive {:ran, ^waiter}, 10_000
    send(waiter, :release)
  end

  test "every diagnostic answers on the real database, as rows of plain values" do
    result =
      lua!("""
      return {cache_hit = ecto.cache_hit(), index_usage = ecto.index_usage(),
              bloat = ecto.bloat(), connections = ecto.connections()}
      """)

    # Decimals come as text.
    assert [%{"name" => "index hit rate", "ratio" => ratio} | _] = result["cache_hit"]
    assert is_binary(ratio)
    assert Enum.any?(result["index_usage"], &(&1["name"] == "orders"))
    assert is_list(result["bloat"])
    # This test's own connections, with their client address as text.
    assert [%{"username" => "postgres", "client_address" => address} | _] = result["connections"]
    assert address =~ "127.0.0.1"
  end
end
