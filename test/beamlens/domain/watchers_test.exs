defmodule Beamlens.Domain.WatchersTest do
  # The :ecto and :exception watchers end to end, on realistic inputs: Ecto
  # query events of the exact shape Ecto SQL emits, Tower events, and real
  # crashes. Faults are injected into the test VM itself: run alone.
  use Beamlens.WatcherCase, async: false

  import Beamlens.EctoCase
  import Beamlens.CoordinatorCase, only: [start_coordinator: 1, attach_coordinator_events: 1]

  alias Beamlens.Coordinator
  alias Beamlens.Domain.Exception.ExceptionStore
  alias Beamlens.EctoCase.{DBError, Domain, Repo}

  @moduletag timeout: 60_000

  @ecto [name: :ecto, domain_module: Domain]

  defmodule OrderWorker do
    # Crashes the way a worker whose database went away does.
    use GenServer

    def init(state), do: {:ok, state}

    def handle_cast({:place, order}, state) do
      raise DBError, message: "connection refused placing order #{order} (db.internal:5432)"
      {:noreply, state}
    end
  end

  defp crash_workers(n, every_ms) do
    for order <- 1..n do
      {:ok, pid} = GenServer.start(OrderWorker, %{})
      GenServer.cast(pid, {:place, order})
      Process.sleep(every_ms)
    end
  end

  # A Tower.Event as Tower hands it to a reporter.
  defp tower_event(exception, stacktrace) do
    %{
      __struct__: Tower.Event,
      id: "evt-#{System.unique_integer([:positive])}",
      similarity_id: 0,
      datetime: DateTime.utc_now(),
      level: :error,
      kind: :error,
      reason: exception,
      stacktrace: stacktrace,
      log_event: nil,
      plug_conn: nil,
      metadata: %{process: %{pid: self()}},
      by: nil
    }
  end

  @checkout_stack [
    {MyApp.Checkout, :charge, 2, [file: ~c"lib/my_app/checkout.ex", line: 88]},
    {MyAppWeb.CheckoutController, :create, 2,
     [file: ~c"lib/my_app_web/checkout_controller.ex", line: 21]}
  ]

  describe "the :ecto watcher" do
    test "alerts on slow queries", %{instance: instance} do
      start_store(window_ms: 500, slots: 5)
      load = start_load(Repo, query: 2, queue: 0.05)
      start_beamlens(instance, watchers: [@ecto])
      await_ticks(instance, :ecto, 8)

      set_load(load,
        query: 450,
        queue: 0.05,
        source: "orders",
        sql: "SELECT o0.* FROM orders AS o0 WHERE o0.customer_email = 'bob@example.com'"
      )

      alert = assert_alert(:ecto, "slow_queries")
      assert alert.source == :gate
      assert {"repo", "Beamlens.EctoCase.Repo"} in alert.entities

      assert Enum.any?(
               Map.keys(alert.evidence.values),
               &(&1 in ["ecto.query_p95_ms", "ecto.slow_queries"])
             )

      assert alert.hypothesis =~ "index"

      [slowest | _] = Domain.snapshot().slowest
      assert slowest.sql == "SELECT o0.* FROM orders AS o0 WHERE o0.customer_email = ?"
    end

    test "alerts on pool saturation", %{instance: instance} do
      start_store(window_ms: 500, slots: 5)
      load = start_load(Repo, query: 2, queue: 0.05)
      start_beamlens(instance, watchers: [@ecto])
      await_ticks(instance, :ecto, 8)

      # Every connection is busy: queries wait 200 ms for one.
      set_load(load, query: 2, queue: 200)

      alert = assert_alert(:ecto, "pool_saturation")
      assert alert.summary =~ ~r/wait for a pool connection at \d+ ms/
      values = alert.evidence.values
      assert [_ | _] = Map.keys(values)
      assert Map.keys(values) -- ["ecto.queue_p95_ms", "ecto.queue_avg_ms"] == []

      # 200 ms is above the 50 ms warning limit, under the 500 ms critical one
      # (the average may fire first, against its baseline).
      if p95 = values["ecto.queue_p95_ms"], do: assert(p95.severity == :warning)
      assert Domain.snapshot().queue_ms.p95 >= 50
      assert alert.hypothesis =~ "pool"
    end
  end

  describe "the :exception watcher" do
    test "alerts on a burst of Tower events", %{instance: instance} do
      start_beamlens(instance, watchers: [:exception])
      await_ticks(instance, :exception, 8)

      burst =
        Task.async(fn ->
          for i <- 1..60 do
            ExceptionStore.report_event(
              tower_event(
                %DBError{message: "timeout after #{i}ms waiting for payment-api"},
                @checkout_stack
              )
            )

            Process.sleep(10)
          end
        end)

      alert = assert_alert(:exception, "exception_burst")
      # The rest of the burst is not needed; on a loaded machine it may take
      # longer than any fixed wait.
      Task.shutdown(burst, :brutal_kill)
      assert alert.summary =~ "exception rate at"
      assert alert.summary =~ "mostly Beamlens.EctoCase.DBError"
      assert {"exception", "Beamlens.EctoCase.DBError"} in alert.entities
      assert {"module", "MyApp.Checkout"} in alert.entities
    end

    test "alerts on real crashes without Tower", %{instance: instance} do
      start_beamlens(instance, watchers: [:exception])
      await_ticks(instance, :exception, 8)

      crashes = Task.async(fn -> crash_workers(40, 10) end)

      alert = assert_alert(:exception, "exception_burst")
      Task.shutdown(crashes, :brutal_kill)
      assert {"exception", "Beamlens.EctoCase.DBError"} in alert.entities
      assert {"module", "Beamlens.Domain.WatchersTest.OrderWorker"} in alert.entities
      assert alert.evidence.values["exception.count"].value > 1
    end

    test "alerts on a new kind of exception after start-up", %{instance: instance} do
      start_supervised!({ExceptionStore, new_group_grace_ms: 300})
      start_beamlens(instance, watchers: [:exception])

      # Known since start-up: not new.
      ExceptionStore.report_event(
        tower_event(%RuntimeError{message: "cache miss storm"}, @checkout_stack)
      )

      await_ticks(instance, :exception, 10)

      ExceptionStore.report_event(
        tower_event(%KeyError{key: :currency, term: %{}}, @checkout_stack)
      )

      alert = assert_alert(:exception, "new_exception_group")
      assert alert.summary == "1 new kind(s) of exception in the last 5 minutes (KeyError)"
      assert {"exception", "KeyError"} in alert.entities
      refute {"exception", "RuntimeError"} in alert.entities
    end
  end

  describe "both together" do
    test "failing queries and the crashes they cause correlate in the coordinator", context do
      %{instance: instance} = context
      attach_coordinator_events(context)
      coordinator = start_coordinator(context)

      start_store(window_ms: 500, slots: 5)
      load = start_load(Repo, query: 2)
      # The test reports the two alerts to its own coordinator.
      start_beamlens(instance, watchers: [:exception, @ecto], coordinator: false)
      await_ticks(instance, :ecto, 8)
      await_ticks(instance, :exception, 8)

      # The database starts refusing: queries fail...
      set_load(load, query: 1, result: %DBError{message: "connection refused (db.internal:5432)"})
      query_errors = assert_alert(:ecto, "query_error_rate")
      :ok = Coordinator.report_alert(coordinator, query_errors)

      # ... and the workers that needed them crash.
      crashes = Task.async(fn -> crash_workers(40, 10) end)
      burst = assert_alert(:exception, "exception_burst")
      :ok = Coordinator.report_alert(coordinator, burst)
      Task.shutdown(crashes, :brutal_kill)

      assert_receive {:coordinator_event, :insight_produced, _, %{insight: insight}}, 5_000
      assert insight.correlation_type == :causal
      assert Enum.sort(insight.alert_ids) == Enum.sort([query_errors.id, burst.id])
      assert insight.watchers |> Enum.sort() == [:ecto, :exception]
      assert %{anomaly_type: "query_error_rate", rule: "query_errors_logged"} = insight.root_cause
      assert insight.summary =~ "query_error_rate preceded exception_burst"
    end
  end
end
