defmodule Beamlens.Domain.EctoTest do
  # Uses the global Beamlens.Domain.Ecto.Registry and telemetry handlers.
  use ExUnit.Case, async: false

  import Beamlens.EctoCase

  alias Beamlens.Domain.Ecto.TelemetryStore
  alias Beamlens.EctoCase.{DBError, Domain, OtherRepo, Repo, SilentRepo}

  doctest TelemetryStore

  defp store(repo \\ Repo) do
    {:ok, store} = TelemetryStore.lookup(repo)
    store
  end

  # Waits until the store process has handled the records sent before.
  defp settle(store), do: TelemetryStore.errors(store, 1)

  describe "rolling statistics" do
    test "come from query events of Ecto's exact shape" do
      start_store()

      for i <- 1..95, do: emit_query(Repo, query: 1 + rem(i, 3), queue: 0.1, decode: 0.05)
      for _ <- 1..5, do: emit_query(Repo, query: 400, queue: 120, source: "orders")

      for _ <- 1..4 do
        emit_query(Repo,
          query: 1,
          source: "payments",
          result: %DBError{
            message: "ERROR 57014 (query_canceled) canceling statement due to statement timeout"
          }
        )
      end

      s = store()
      w = TelemetryStore.window(s)

      assert %{queries: 104, errors: 4, slow: 5, queued: 104} = w
      # Histogram buckets are a quarter octave wide: within 12.5%.
      assert_in_delta w.query_ms.p50, 2.0, 0.4
      assert_in_delta w.query_ms.p99, 400, 50
      assert_in_delta w.query_ms.max, 400, 50
      assert_in_delta w.queue_ms.p50, 0.1, 0.02
      assert_in_delta w.queue_ms.p99, 120, 15
      assert_in_delta w.total_ms.p99, 520, 65
      assert_in_delta w.query_ms.avg, (95 * 2 + 5 * 400 + 4) / 104, 0.5
      assert w.waited_10ms_share == Float.round(5 / 104, 3)
      assert w.decode_avg_ms > 0

      assert %{queries: 104, errors: 4, slow: 5, dropped: 0} = TelemetryStore.totals(s)

      assert [
               %{source: "orders", queries: 5},
               %{source: "users", queries: 95},
               %{source: "payments", errors: 4}
             ] = TelemetryStore.sources(s, 5)
    end

    test "roll out of the window while the totals stay" do
      start_store(window_ms: 200, slots: 4)
      for _ <- 1..10, do: emit_query()
      assert TelemetryStore.window(store()).queries == 10

      Process.sleep(300)
      w = TelemetryStore.window(store())
      assert w.queries == 0
      assert w.query_ms.p95 == nil
      assert TelemetryStore.totals(store()).queries == 10
    end

    test "cope with absent measurements and unusual metadata" do
      start_store()
      prefix = [:beamlens_test, :repo, :query]

      :telemetry.execute(
        prefix,
        %{query_time: System.convert_time_unit(5, :millisecond, :native)},
        %{
          repo: Repo,
          query: {:find, "users", %{}},
          result: :ok
        }
      )

      :telemetry.execute(prefix, %{}, %{})
      :telemetry.execute(prefix, %{total_time: :not_a_number}, %{result: {:error, :closed}})

      # Every event counts, even without measurements (as 0 ms).
      w = TelemetryStore.window(store())
      assert w.queries == 3
      assert w.queued == 0
      assert w.queue_ms.p95 == nil
      assert_in_delta w.query_ms.p50, 5, 0.7

      # Still attached: the handler never raised.
      assert [%{id: {TelemetryStore, Repo}}] = :telemetry.list_handlers(prefix)
    end

    test "leave out the queries BeamLens runs itself" do
      start_store()

      :telemetry.execute([:beamlens_test, :repo, :query], %{total_time: 1_000}, %{
        query: "SELECT 1",
        result: {:ok, %{}},
        options: [beamlens: true]
      })

      assert TelemetryStore.totals(store()).queries == 0
    end
  end

  describe "slow and failed queries" do
    test "are grouped by normalised SQL, redacted, and params are never read" do
      start_store()

      for i <- 1..6 do
        emit_query(Repo,
          query: 150 + i,
          source: "users",
          sql:
            "SELECT * FROM users WHERE email = 'user#{i}@example.com' AND id > #{i} /* req=#{i} */",
          params: ["hunter2-param"]
        )
      end

      for _ <- 1..3 do
        emit_query(Repo,
          source: "users",
          sql: ~s|INSERT INTO "users" ("email","password_hash") VALUES ($1,$2)|,
          params: ["alice@example.com", "$2b$12$secrethash"],
          result: %DBError{
            message:
              "ERROR 23505 (unique_violation) duplicate key value violates unique constraint \"users_email_index\"\n" <>
                "Key (email)=(alice@example.com) already exists."
          }
        )
      end

      s = store()
      settle(s)

      assert [slow] = TelemetryStore.slow_queries(s, 10)

      assert %{
               sql: "SELECT * FROM users WHERE email = ? AND id > ?",
               source: "users",
               slow_count: 6,
               errors: 0
             } = slow

      assert_in_delta slow.slow_avg_ms, 153.5, 0.5
      assert_in_delta slow.max_ms, 156, 1

      assert [failed] = TelemetryStore.errors(s, 10)
      assert failed.sql == ~s|INSERT INTO "users" ("email","password_hash") VALUES ($1,$2)|
      assert failed.errors == 3
      assert failed.last_error.exception == "Beamlens.EctoCase.DBError"
      assert failed.last_error.message =~ "Key (email)=([EMAIL]) already exists."

      everything = inspect({TelemetryStore.slow_queries(s, 10), TelemetryStore.errors(s, 10)})

      for secret <- ["hunter2", "alice@example.com", "user1@example.com", "secrethash"],
          do: refute(everything =~ secret)
    end

    test "SQL normalisation keeps identifiers and parameters" do
      n = &TelemetryStore.normalize_sql/1

      assert n.(~s|SELECT t0."id" FROM "t1" AS t0 WHERE t0."x" = $1 OFFSET 20|) ==
               ~s|SELECT t0."id" FROM "t1" AS t0 WHERE t0."x" = $1 OFFSET ?|

      assert n.("SELECT 'it''s -- not a comment', E'\\\\x', -4.5e3 -- trailing\nFROM x") ==
               "SELECT ?, ?, ? FROM x"

      assert n.("SELECT $$ dollar 'quoted' $$, $tag$ body $tag$ FROM f(1, 2)") ==
               "SELECT ?, ? FROM f(?...)"

      assert n.("SELECT * FROM a WHERE b IN (?, ?, ?) AND c IN ($1, $2)") ==
               "SELECT * FROM a WHERE b IN (?...) AND c IN ($1, $2)"

      assert n.("SELECT '#{String.duplicate("x", 50)}' FROM #{String.duplicate("t", 3_000)}") =~
               ~r/^SELECT \? FROM t+\.\.\.$/

      assert byte_size(n.(String.duplicate("SELECT a FROM b; ", 500))) <= 2_003
    end

    test "are bounded: groups, sources and pending records" do
      pid = start_store(max_groups: 3, max_sources: 2, max_pending: 5)

      for i <- 1..5, do: emit_query(Repo, query: 200, source: "t#{i}", sql: "SELECT * FROM t#{i}")

      s = store()
      settle(s)
      groups = TelemetryStore.slow_queries(s, 10)
      assert length(groups) == 3
      assert Enum.map(groups, & &1.source) |> Enum.sort() == ~w(t3 t4 t5)

      sources = TelemetryStore.sources(s, 10) |> Map.new(&{&1.source, &1.queries})
      assert sources == %{"t1" => 1, "t2" => 1, "other" => 3}

      :ok = :sys.suspend(pid)
      for _ <- 1..10, do: emit_query(Repo, query: 200)
      :ok = :sys.resume(pid)
      settle(s)
      assert TelemetryStore.totals(s).dropped == 5
      assert TelemetryStore.totals(s).slow == 15
    end
  end

  describe "starting the store" do
    test "explains what is missing" do
      assert_raise ArgumentError,
                   ~r/needs the registry Beamlens.Domain.Ecto.Registry: add \{Registry, keys: :unique/,
                   fn ->
                     TelemetryStore.start_link(repo: Repo)
                   end

      start_supervised!({Registry, keys: :unique, name: Beamlens.Domain.Ecto.Registry})

      assert_raise ArgumentError,
                   ~r/needs the :repo option, e.g. \{Beamlens.Domain.Ecto.TelemetryStore, repo: MyApp.Repo\}/,
                   fn ->
                     TelemetryStore.start_link([])
                   end

      assert_raise ArgumentError, ~r/the repo NoSuch.Repo is not available/, fn ->
        TelemetryStore.start_link(repo: NoSuch.Repo)
      end

      assert_raise ArgumentError,
                   ~r/String is not an Ecto repo \(it does not define config\/0 and __adapter__\/0/,
                   fn ->
                     TelemetryStore.start_link(repo: String)
                   end

      assert_raise ArgumentError,
                   ~r/SilentRepo has no telemetry prefix \(config\(\)\[:telemetry_prefix\] is nil\)/,
                   fn ->
                     TelemetryStore.start_link(repo: SilentRepo)
                   end

      assert_raise ArgumentError,
                   ~r/option :slow_query_ms to be a positive integer, got: -1/,
                   fn ->
                     TelemetryStore.start_link(repo: Repo, slow_query_ms: -1)
                   end

      assert_raise ArgumentError, ~r/unknown .*TelemetryStore option :windw_ms/, fn ->
        TelemetryStore.start_link(repo: Repo, windw_ms: 1)
      end

      start_supervised!({TelemetryStore, repo: Repo})

      assert {:error, {%ArgumentError{message: message}, _}} =
               start_supervised({TelemetryStore, repo: Repo}, id: :second)

      assert message =~ "already runs for Beamlens.EctoCase.Repo"
    end

    test "one store per repo, each on its own event" do
      start_store()
      start_supervised!({TelemetryStore, repo: OtherRepo})
      emit_query(OtherRepo, [])
      assert TelemetryStore.totals(store(OtherRepo)).queries == 1
      assert TelemetryStore.totals(store(Repo)).queries == 0
    end

    test "stops listening when it stops" do
      start_store()
      stop_supervised!({TelemetryStore, Repo})
      assert :telemetry.list_handlers([:beamlens_test, :repo, :query]) == []
      assert {:error, message} = TelemetryStore.lookup(Repo)
      assert message =~ "add {Beamlens.Domain.Ecto.TelemetryStore, repo: Beamlens.EctoCase.Repo}"
    end
  end

  describe "use Beamlens.Domain.Ecto" do
    test "defines a domain for the repo" do
      assert Domain.name() == :ecto
      assert Domain.__beamlens_repo__() == Repo
      assert Domain.description() =~ "Ecto repo Beamlens.EctoCase.Repo"
      assert Enum.map(Domain.callbacks(), & &1.name) == ~w(stats slow_queries errors pool sources)
    end

    test "takes a :name and refuses unknown or missing options" do
      [{module, _}] =
        Code.compile_quoted(
          quote do
            defmodule Beamlens.Domain.EctoTest.Named do
              use Beamlens.Domain.Ecto, repo: Beamlens.EctoCase.OtherRepo, name: :billing_db
            end
          end
        )

      assert module.name() == :billing_db

      assert_raise ArgumentError, ~r/needs the :repo option/, fn ->
        Code.compile_quoted(
          quote do
            defmodule Beamlens.Domain.EctoTest.NoRepo do
              use Beamlens.Domain.Ecto
            end
          end
        )
      end

      assert_raise ArgumentError, ~r/unknown option :rep for use Beamlens.Domain.Ecto/, fn ->
        Code.compile_quoted(
          quote do
            defmodule Beamlens.Domain.EctoTest.Typo do
              use Beamlens.Domain.Ecto, rep: Beamlens.EctoCase.Repo
            end
          end
        )
      end
    end

    test "snapshots, metrics and callbacks read the store" do
      start_store()
      for _ <- 1..30, do: emit_query(Repo, query: 2, queue: 0.1)

      for _ <- 1..2,
          do:
            emit_query(Repo, query: 300, queue: 90, source: "orders", sql: "SELECT * FROM orders")

      emit_query(Repo, result: %DBError{message: "connection refused"})
      settle(store())

      snapshot = Domain.snapshot()

      assert %{
               repo: "Beamlens.EctoCase.Repo",
               queries: 33,
               errors: 1,
               slow: 2,
               pool_size: 10,
               queries_total: 33,
               slowest: [%{sql: "SELECT * FROM orders", source: "orders", slow_count: 2}]
             } = snapshot

      refute inspect(snapshot) =~ "fake-repo-password"

      metrics = Map.new(Domain.metrics(snapshot), &{&1.name, &1})

      assert Map.keys(metrics) |> Enum.sort() ==
               ~w(ecto.error_share ecto.errors ecto.query_p95_ms ecto.queue_avg_ms ecto.queue_p95_ms
                  ecto.slow_queries ecto.total_p95_ms)

      assert %{kind: :counter, value: 2, anomaly_type: "slow_queries"} =
               metrics["ecto.slow_queries"]

      assert {"db_table", "orders"} in metrics["ecto.slow_queries"].entities

      assert %{kind: :limit, warn: 50, anomaly_type: "pool_saturation"} =
               metrics["ecto.queue_p95_ms"]

      assert %{kind: :limit, anomaly_type: "query_error_rate"} = metrics["ecto.error_share"]
      assert %{anomaly_type: "request_latency"} = metrics["ecto.total_p95_ms"]

      callbacks = Map.new(Domain.callbacks(), &{&1.name, &1.fun})
      assert %{queries: 33, pool_size: 10} = callbacks["stats"].()
      assert [%{source: "orders"}] = callbacks["slow_queries"].(5)
      assert [%{last_error: %{message: "connection refused"}}] = callbacks["errors"].(5.0)
      assert %{queue_ms: %{p95: _}, pool_size: 10} = callbacks["pool"].()
      assert [%{source: "orders"}, %{source: "users", errors: 1}] = callbacks["sources"].(5)
      assert_raise ArgumentError, ~r/n must be a number/, fn -> callbacks["sources"].("5") end

      finding = %{value: 300.0, baseline: 2.0, threshold: 22.0, status: "new"}

      assert Domain.summarize(finding, metrics["ecto.query_p95_ms"]) ==
               "p95 query time at 300 ms, baseline 2 ms (slowest tables: orders)"

      assert Domain.hypothesis("pool_saturation") =~ "pool"
    end

    test "few queries give no latency metrics" do
      start_store()
      emit_query()
      names = Domain.snapshot() |> Domain.metrics() |> Enum.map(& &1.name)
      assert names == ["ecto.slow_queries", "ecto.errors"]
    end

    test "a snapshot without a store says what to add" do
      start_supervised!({Registry, keys: :unique, name: Beamlens.Domain.Ecto.Registry})

      assert_raise RuntimeError,
                   ~r/add \{Beamlens.Domain.Ecto.TelemetryStore, repo: Beamlens.EctoCase.Repo\}/,
                   fn ->
                     Domain.snapshot()
                   end
    end
  end

  describe "EctoPSQLExtras" do
    test "without it, no database diagnostics are offered" do
      refute Code.ensure_loaded?(EctoPSQLExtras)
      refute Enum.any?(Domain.callbacks(), &(&1.name == "locks"))
    end

    test "when loaded, its diagnostics run through the repo, bounded and redacted" do
      define_psql_extras()
      start_store()
      Process.register(self(), :beamlens_test_repo_listener)

      names = Enum.map(Domain.callbacks(), & &1.name)

      assert names -- ~w(stats slow_queries errors pool sources) ==
               ~w(locks blocking long_running_queries cache_hit index_usage bloat connections)

      callbacks = Map.new(Domain.callbacks(), &{&1.name, &1.fun})

      assert [row] = callbacks["long_running_queries"].()

      assert row == %{
               "pid" => 4242,
               "duration" => "754 seconds",
               "query" => "UPDATE users SET api_token = ? WHERE email = ?"
             }

      # One query, with the module's default arguments, and no probes.
      assert_received {:repo_query,
                       "/* ECTO_PSQL_EXTRAS: long_running_queries */ SELECT '500 milliseconds'",
                       opts}

      refute_received {:repo_query, _, _}
      assert opts[:log] == false
      assert opts[:timeout] == 900
      assert opts[:telemetry_options] == [beamlens: true]

      # Statements (EctoPSQLExtras's blocking) are SQL too: normalised.
      assert [blocked] = callbacks["blocking"].()

      assert blocked == %{
               "blocked_pid" => 4243,
               "blocked_statement" => "UPDATE orders SET status = ? WHERE id = ?",
               "blocking_pid" => 4242,
               "blocking_statement" => "UPDATE orders SET status = ?, card = ? WHERE id = ?"
             }

      assert length(callbacks["cache_hit"].()) == 20
      # BeamLens's own queries stay out of the statistics.
      assert TelemetryStore.totals(store()).queries == 0
    end
  end

  # A stand-in for ecto_psql_extras with its public shape: one function per
  # query taking the repo and `format: :raw`, running the SQL with
  # `repo.query!(sql, [], query_opts)` and returning the raw result.
  defp define_psql_extras do
    modules = ~w(Locks Blocking LongRunningQueries CacheHit IndexUsage Bloat Connections)

    Code.compile_string(~S"""
    defmodule EctoPSQLExtras do
      @moduledoc false
      # Like the real one, each top-level function first probes the database.
      def locks(repo, _opts), do: repo.query!("select installed_version from pg_available_extensions", [], [])
    end

    for {module, name} <- [
          {Locks, "locks"},
          {Blocking, "blocking"},
          {LongRunningQueries, "long_running_queries"},
          {CacheHit, "cache_hit"},
          {IndexUsage, "index_usage"},
          {Bloat, "bloat"},
          {Connections, "connections"}
        ] do
      defmodule Module.concat(EctoPSQLExtras, module) do
        @moduledoc false
        @name name
        def info, do: %{title: @name, columns: [], default_args: [threshold: "500 milliseconds"]}
        def query(args), do: "/* ECTO_PSQL_EXTRAS: #{@name} */ SELECT '#{args[:threshold]}'"
      end
    end
    """)

    on_exit(fn ->
      for module <- [EctoPSQLExtras | Enum.map(modules, &Module.concat(EctoPSQLExtras, &1))] do
        :code.purge(module)
        :code.delete(module)
      end
    end)
  end
end
