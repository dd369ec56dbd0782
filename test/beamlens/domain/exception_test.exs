defmodule Beamlens.Domain.ExceptionTest do
  # The store is a named singleton with a :logger handler: run alone.
  use ExUnit.Case, async: false

  alias Beamlens.Domain.Exception, as: ExceptionDomain
  alias Beamlens.Domain.Exception.ExceptionStore

  defmodule Crasher do
    use GenServer

    def init(state), do: {:ok, state}

    def handle_cast({:charge, order}, state) do
      raise "charge failed for order #{order} (customer alice@example.com, card 4111 1111 1111 1111)"
      {:noreply, state}
    end

    def handle_cast(:lookup, state), do: {:noreply, Map.fetch!(state, :missing)}
    def handle_cast(:quit, state), do: {:stop, :upstream_gone, state}
  end

  defmodule Billing do
    def charge(_url, _card), do: :ok
  end

  # A Tower.Event as Tower builds it (the struct itself is not installable
  # here; the store reads these fields).
  defp tower_event(kind, reason, stacktrace, opts \\ []) do
    %{
      __struct__: Tower.Event,
      id: "0190a3c4-#{System.unique_integer([:positive])}",
      similarity_id: 1,
      datetime: DateTime.utc_now(),
      level: Keyword.get(opts, :level, :error),
      kind: kind,
      reason: reason,
      stacktrace: stacktrace,
      log_event: nil,
      plug_conn: nil,
      metadata: %{process: %{pid: Keyword.get(opts, :pid, self())}},
      by: Tower.LoggerHandler
    }
  end

  defp stacktrace do
    [
      {Billing, :charge, ["postgres://app:pgpass@db/prod", %{card: "4111111111111111"}],
       [file: ~c"lib/billing.ex", line: 12]},
      {MyApp.Web.CheckoutController, :create, 2, [file: ~c"lib/web/checkout.ex", line: 40]},
      {:gen_server, :try_dispatch, 4, [file: ~c"gen_server.erl", line: 1123]}
    ]
  end

  defp start_store(opts \\ []) do
    start_supervised!({ExceptionStore, Keyword.put_new(opts, :new_group_grace_ms, 0)})
  end

  # Waits until the store has handled everything sent before.
  defp settle, do: ExceptionStore.stats()

  describe "as a Tower reporter" do
    test "groups Tower events by similarity" do
      start_store()

      for i <- 1..5 do
        event =
          tower_event(
            :error,
            %RuntimeError{message: "timeout after #{i * 100}ms talking to #{inspect(self())}"},
            stacktrace(),
            pid: spawn(fn -> :ok end)
          )

        assert ExceptionStore.report_event(event) == :ok
      end

      ExceptionStore.report_event(
        tower_event(:error, %ArgumentError{message: "bad"}, stacktrace())
      )

      ExceptionStore.report_event(tower_event(:throw, {:halt, 1}, stacktrace()))
      ExceptionStore.report_event(tower_event(:exit, :killed, []))

      ExceptionStore.report_event(
        tower_event(:message, "disk almost full", [], level: :critical, pid: spawn(fn -> :ok end))
      )

      stats = settle()
      assert %{recorded: 8, messages: 1, groups: 5, duplicates: 0, dropped: 0} = stats
      assert stats.last_minute == 8

      [top | _] = ExceptionStore.top_groups(10)

      assert %{
               kind: "error",
               exception: "RuntimeError",
               module: "Beamlens.Domain.ExceptionTest.Billing",
               count: 5,
               new: true
             } = top

      assert top.message =~ ~r/^timeout after \d+ms talking to #PID</
      assert top.top_frame =~ "Beamlens.Domain.ExceptionTest.Billing.charge("

      kinds = ExceptionStore.top_groups(10) |> Enum.map(& &1.kind) |> Enum.sort()
      assert kinds == ["error", "error", "exit", "message", "throw"]

      assert [%{kind: "message", message: "disk almost full", source: "tower"} | _] =
               ExceptionStore.recent(10)
    end

    test "Exception.TowerReporter is the same reporter under its own name" do
      start_store()
      event = tower_event(:error, %ArgumentError{message: "bad"}, stacktrace())
      assert Beamlens.Domain.Exception.TowerReporter.report_event(event) == :ok
      assert ExceptionStore.report_event(event) == :ok
      assert %{recorded: 2, groups: 1} = settle()
      assert [%{exception: "ArgumentError", count: 2}] = ExceptionStore.top_groups(5)
    end

    test "does nothing when the store is not running" do
      refute ExceptionStore.running?()
      assert ExceptionStore.report_event(tower_event(:error, %RuntimeError{}, [])) == :ok
      assert ExceptionStore.report_event(:not_an_event) == :ok
      assert ExceptionStore.top_groups(5) == []
    end
  end

  describe "privacy" do
    test "messages are redacted and stack trace arguments kept as shapes only" do
      start_store()

      ExceptionStore.report_event(
        tower_event(
          :error,
          %RuntimeError{
            message:
              "login failed for alice@example.com with password=hunter2, key sk-ant-api03-abcdefghijklmnopqrstuv"
          },
          stacktrace()
        )
      )

      settle()
      [group] = ExceptionStore.top_groups(1)
      assert group.message == "login failed for [EMAIL] with password=[REDACTED], key [REDACTED]"

      detail = ExceptionStore.group(group.id)

      assert [
               "Beamlens.Domain.ExceptionTest.Billing.charge(<binary, 29 bytes>, <map, 1 keys>) (lib/billing.ex:12)",
               "MyApp.Web.CheckoutController.create/2 (lib/web/checkout.ex:40)",
               "gen_server.try_dispatch/4 (gen_server.erl:1123)"
             ] = detail.frames

      assert [%{stacktrace: [_, _, _], message: message}] = detail.examples
      assert message == group.message

      everything = inspect(detail) <> inspect(ExceptionStore.recent(10))

      for secret <- ["alice@example.com", "hunter2", "pgpass", "4111111111111111", "sk-ant-api03"] do
        refute everything =~ secret
      end
    end
  end

  describe "without Tower" do
    test "captures real crashes from the logger, each crash once" do
      start_store()

      for order <- 1..3 do
        {:ok, pid} = GenServer.start(Crasher, %{})
        GenServer.cast(pid, {:charge, order})
      end

      {:ok, pid} = GenServer.start(Crasher, %{})
      GenServer.cast(pid, :lookup)

      {:ok, pid} = GenServer.start(Crasher, %{})
      GenServer.cast(pid, :quit)

      {:ok, _} = Task.start(fn -> raise ArgumentError, "task failed" end)
      spawn(fn -> throw(:thrown) end)
      spawn(fn -> :erlang.error(:badarith) end)

      wait_until(fn -> settle().recorded >= 8 end)
      Process.sleep(50)
      stats = settle()

      # On Elixir 1.14 GenServer and Task crashes reach the handler twice
      # (terminate report and proc_lib crash report); since 1.15 Logger
      # drops the second. Either way each crash counts once.
      assert stats.recorded == 8
      assert stats.recorded + stats.duplicates == stats.received

      groups = ExceptionStore.top_groups(20)
      charge = Enum.find(groups, &(&1.exception == "RuntimeError"))
      assert charge.count == 3
      assert charge.module == "Beamlens.Domain.ExceptionTest.Crasher"
      assert charge.message =~ "charge failed for order"
      refute charge.message =~ "alice@example.com"
      refute charge.message =~ "4111"

      exceptions = groups |> Enum.map(& &1.exception) |> Enum.reject(&is_nil/1) |> Enum.sort()
      assert exceptions == ["ArgumentError", "ArithmeticError", "KeyError", "RuntimeError"]
      assert Enum.count(groups, &(&1.kind == "exit")) == 1
      assert Enum.count(groups, &(&1.kind == "throw")) == 1
      assert Enum.all?(ExceptionStore.recent(10), &(&1.source == "logger"))
    end

    test "capture_logs: false installs no handler" do
      start_store(capture_logs: false)
      assert {:error, _} = :logger.get_handler_config(:beamlens_exception_store)
      assert settle().sources == "tower"
    end
  end

  describe "bounds" do
    test "keeps at most :max_groups groups, least recently seen evicted" do
      start_store(max_groups: 3)

      for i <- 1..5 do
        stack = [{:"Elixir.Mod#{i}", :run, 0, []}]
        ExceptionStore.report_event(tower_event(:error, %RuntimeError{message: "m"}, stack))
      end

      assert settle().groups == 3
      assert settle().groups_created == 5

      assert ExceptionStore.top_groups(10) |> Enum.map(& &1.module) |> Enum.sort() ==
               ~w(Mod3 Mod4 Mod5)
    end

    test "only counts events beyond :max_pending while the store is busy" do
      pid = start_store(max_pending: 5)
      :ok = :sys.suspend(pid)

      for _ <- 1..20,
          do: ExceptionStore.report_event(tower_event(:error, %RuntimeError{message: "x"}, []))

      :ok = :sys.resume(pid)
      assert %{recorded: 5, dropped: 15, received: 20} = settle()
    end

    test "messages are capped" do
      start_store()

      ExceptionStore.report_event(
        tower_event(:error, %RuntimeError{message: String.duplicate("x", 100_000)}, [])
      )

      settle()
      assert [%{message: message}] = ExceptionStore.top_groups(1)
      assert String.length(message) == 500
    end
  end

  describe "new groups" do
    test "are those first seen after the grace period" do
      start_store(new_group_grace_ms: 60_000)
      ExceptionStore.report_event(tower_event(:error, %RuntimeError{message: "at boot"}, []))
      assert %{new_groups_recent: 0, new_groups: 0} = settle()
      assert ExceptionStore.new_groups(5) == []

      stop_supervised!(ExceptionStore)
      start_store(new_group_grace_ms: 0)
      ExceptionStore.report_event(tower_event(:error, %KeyError{key: :id, term: %{}}, []))
      assert %{new_groups_recent: 1} = settle()
      assert [%{exception: "KeyError", new: true}] = ExceptionStore.new_groups(5)
    end
  end

  describe "options" do
    test "are validated with the key and the expected type" do
      assert_raise ArgumentError, ~r/unknown .*ExceptionStore option :max_group; known/, fn ->
        ExceptionStore.start_link(max_group: 1)
      end

      assert_raise ArgumentError, ~r/option :max_groups to be a positive integer, got: 0/, fn ->
        ExceptionStore.start_link(max_groups: 0)
      end

      assert_raise ArgumentError, ~r/:capture_logs to be :auto, true or false/, fn ->
        ExceptionStore.start_link(capture_logs: :yes)
      end
    end
  end

  describe "the domain" do
    test "snapshot, metrics and callbacks" do
      start_store()

      for i <- 1..4 do
        ExceptionStore.report_event(
          tower_event(:error, %RuntimeError{message: "boom #{i}"}, stacktrace(),
            pid: spawn(fn -> :ok end)
          )
        )
      end

      settle()
      snapshot = ExceptionDomain.snapshot()

      assert %{exceptions_total: 4, groups: 1, new_groups_recent: 1, last_minute: 4} = snapshot
      assert [%{count: 4}] = snapshot.top_groups

      metrics = Map.new(ExceptionDomain.metrics(snapshot), &{&1.name, &1})

      assert %{
               anomaly_type: "exception_burst",
               kind: :counter,
               value: 4,
               entities: [
                 {"exception", "RuntimeError"},
                 {"module", "Beamlens.Domain.ExceptionTest.Billing"}
               ]
             } = metrics["exception.count"]

      assert %{anomaly_type: "new_exception_group", kind: :limit, value: 1} =
               metrics["exception.new_groups"]

      callbacks = Map.new(ExceptionDomain.callbacks(), &{&1.name, &1.fun})
      [group] = callbacks["top_groups"].(5)
      assert %{id: id, count: 4} = group
      assert %{examples: [_ | _], frames: [_ | _]} = callbacks["group"].(id)
      assert callbacks["group"].("nope") == nil
      assert [%{id: ^id}] = callbacks["search"].("BOOM", 5)
      assert [_, _, _, _] = callbacks["recent"].(10)
      assert %{recorded: 4} = callbacks["stats"].()
      assert_raise ArgumentError, ~r/n must be a number/, fn -> callbacks["recent"].("ten") end

      finding = %{value: 2.0, baseline: 0.0, threshold: 1.0, status: "new"}

      assert ExceptionDomain.summarize(finding, metrics["exception.count"]) =~
               "exception rate at 2.0/s, baseline 0.0/s, mostly RuntimeError"

      assert ExceptionDomain.summarize(%{finding | value: 1.0}, metrics["exception.new_groups"]) ==
               "1 new kind(s) of exception in the last 5 minutes (RuntimeError)"
    end

    test "a snapshot without the store says what is missing" do
      assert_raise RuntimeError, ~r/exception store is not running/, fn ->
        ExceptionDomain.snapshot()
      end
    end
  end

  defp wait_until(fun, timeout \\ 2_000) do
    deadline = System.monotonic_time(:millisecond) + timeout

    Stream.repeatedly(fn ->
      fun.() or
        (System.monotonic_time(:millisecond) > deadline and
           flunk("condition not met in time")) or
        Process.sleep(10)
    end)
    |> Enum.find(&(&1 == true))
  end
end
