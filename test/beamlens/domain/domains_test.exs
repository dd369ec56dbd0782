defmodule Beamlens.Domain.DomainsTest do
  use ExUnit.Case, async: false

  alias Beamlens.Domain.{Ets, Gc, Ports, Sup, System}
  alias Beamlens.Domain.Logger, as: LoggerDomain
  alias Beamlens.LogStore

  @domains [Beamlens.Domain.Beam, Ets, Gc, LoggerDomain, Ports, Sup, System]

  # Polls every 20 ms, up to 30 s: the tracker follows restarts
  # asynchronously, later on a loaded machine; only a broken build reaches
  # the bound.
  defp settled?(fun), do: Beamlens.Eventually.eventually(fun, 1_500)

  setup do
    start_supervised!(LogStore)
    start_supervised!(Sup.Tracker)
    :ok
  end

  test "every built-in domain snapshots, yields well-formed metrics and documents its callbacks" do
    for domain <- @domains do
      snapshot = domain.snapshot()
      assert is_map(snapshot)
      assert is_binary(domain.description())

      for metric <- domain.metrics(snapshot) do
        assert %{name: name, label: label, value: value, kind: kind, anomaly_type: type} = metric
        assert is_binary(name) and is_binary(label) and is_binary(type)
        assert is_number(value), "#{inspect(domain)} #{name}: #{inspect(value)}"
        assert kind in [:limit, :level, :counter, :growth]
      end

      for cb <- domain.callbacks() do
        assert %{name: name, args: "(" <> _, doc: doc, fun: fun} = cb
        assert name =~ ~r/^[a-z_]+$/
        assert String.length(doc) > 20
        assert is_function(fun)
      end
    end
  end

  test "ETS callbacks show metadata, never contents" do
    table = :ets.new(:beamlens_domain_test_secrets, [:named_table, :public])
    :ets.insert(table, {:api_key, "sk-ant-very-secret"})

    assert [%{name: "beamlens_domain_test_secrets", size: 1} | _] =
             Ets.tables(100, "size") |> Enum.filter(&(&1.name == "beamlens_domain_test_secrets"))

    info = Ets.table_info_by_name("beamlens_domain_test_secrets")
    assert info.keypos == 1
    refute inspect(info) =~ "sk-ant"
    refute inspect(Ets.snapshot()) =~ "sk-ant"
    assert_raise ArgumentError, ~r/no ETS table named/, fn -> Ets.table_info_by_name("nope") end
  end

  test "logger callbacks return recent errors and search them" do
    require Logger
    Logger.error("database connection refused by 10.0.0.5")
    # The store's :logger handler runs in the logging process: the events
    # are stored when Logger returns.
    Logger.warning("slow request")

    assert [%{level: "error", message: "database connection refused by 10.0.0.5"} | _] =
             LoggerDomain.recent(5, "error")

    assert [%{message: "database connection refused" <> _}] =
             LoggerDomain.search("CONNECTION REFUSED", 5)

    assert LogStore.totals().connection_errors >= 1
    assert_raise ArgumentError, ~r/level must be/, fn -> LoggerDomain.recent(5, "loud") end
  end

  test "the log store is bounded" do
    stop_supervised!(LogStore)
    start_supervised!({LogStore, capacity: 10})
    require Logger
    for i <- 1..50, do: Logger.error("event #{i}")

    recent = LogStore.recent(100, :all)
    assert length(recent) == 10
    assert hd(recent).message == "event 50"
    assert LogStore.totals().error >= 50
  end

  test "supervision trees are walked read-only" do
    worker = %{id: :worker, start: {Agent, :start_link, [fn -> :ok end]}}

    inner = %{
      id: :inner,
      type: :supervisor,
      start: {Supervisor, :start_link, [[worker], [strategy: :one_for_one]]}
    }

    Beamlens.TestApp.start!(:beamlens_test_tree_app, [inner],
      strategy: :one_for_one,
      name: :beamlens_test_tree_sup
    )

    assert %{
             application: "beamlens_test_tree_app",
             supervisor: %{
               name: "beamlens_test_tree_sup",
               children_count: 1,
               children: [
                 %{
                   id: "inner",
                   type: "supervisor",
                   supervisor: %{children: [%{id: "worker", type: "worker"}]}
                 }
               ]
             }
           } = Sup.tree("beamlens_test_tree_app")

    assert_raise ArgumentError, ~r/no running application/, fn -> Sup.tree("nope") end

    snapshot = Sup.snapshot()
    assert snapshot.supervisors >= 2

    assert %{name: "beamlens_test_tree_sup", application: "beamlens_test_tree_app", children: 1} in (Sup.snapshot().largest ++
                                                                                                       largest_all())
  end

  test "a restarted child supervisor is followed again, and its children with it" do
    worker = %{id: :leaf, start: {Agent, :start_link, [fn -> :ok end]}}

    inner = %{
      id: :inner,
      type: :supervisor,
      start:
        {Supervisor, :start_link,
         [[worker], [strategy: :one_for_one, name: :beamlens_test_inner_sup]]}
    }

    top = Beamlens.TestApp.start!(:beamlens_test_nested_app, [inner], strategy: :one_for_one)
    Sup.snapshot()

    assert settled?(fn ->
             monitored_child(:beamlens_test_inner_sup) != nil
           end)

    # The whole inner supervisor crashes: one restart under the top one.
    inner_pid = Process.whereis(:beamlens_test_inner_sup)
    ref = Process.monitor(inner_pid)
    Process.exit(inner_pid, :kill)
    assert_receive {:DOWN, ^ref, _, _, :killed}

    # Its replacement's child is monitored without waiting for a snapshot.
    assert settled?(fn ->
             Process.whereis(:beamlens_test_inner_sup) not in [nil, inner_pid] and
               monitored_child(:beamlens_test_inner_sup) != nil
           end)

    pid = monitored_child(:beamlens_test_inner_sup)
    Process.exit(pid, :boom)

    assert settled?(fn ->
             Enum.sort(Enum.map(Sup.snapshot().restarting, &{&1.supervisor, &1.last_child})) ==
               Enum.sort([{"beamlens_test_inner_sup", "leaf"}, {inspect(top), "inner"}])
           end)
  end

  test "an application whose top process is no supervisor gets no supervisor calls" do
    # A GenServer without handle_call/3 crashes on any call.
    top =
      Beamlens.TestApp.start!(
        :beamlens_test_plain_app,
        {:process, {Agent, :start_link, [fn -> :state end]}}
      )

    Sup.snapshot()
    assert Process.alive?(top)

    assert %{application: "beamlens_test_plain_app", supervisor: %{children: []}} =
             Sup.tree("beamlens_test_plain_app")

    assert Process.alive?(top)
  end

  # The child of `sup` when the tracker monitors it.
  defp monitored_child(sup) do
    with [{_, pid, _, _}] when is_pid(pid) <- Supervisor.which_children(sup),
         {:monitored_by, by} <- Process.info(pid, :monitored_by),
         true <- Process.whereis(Sup.Tracker) in by do
      pid
    else
      _ -> nil
    end
  end

  defp largest_all do
    [%{fun: fun}] = Enum.filter(Sup.callbacks(), &(&1.name == "largest"))
    fun.(50)
  end

  test "restarts are counted from the children, whatever Logger does with supervisor reports" do
    worker = %{id: :flaky_worker, start: {Agent, :start_link, [fn -> :ok end]}}

    sup =
      Beamlens.TestApp.start!(:beamlens_test_restart_app, [worker],
        strategy: :one_for_one,
        name: :beamlens_test_restart_sup
      )

    Sup.snapshot()

    for _ <- 1..3 do
      # The tracker follows each child (the first, then its replacements)
      # before it is killed.
      assert settled?(fn -> monitored_child(sup) != nil end)
      pid = monitored_child(sup)
      ref = Process.monitor(pid)
      Process.exit(pid, :kill)
      assert_receive {:DOWN, ^ref, _, _, :killed}
    end

    assert settled?(fn -> monitored_child(sup) != nil end)

    # A child stopped on purpose is no restart.
    :ok = Supervisor.terminate_child(sup, :flaky_worker)

    snapshot = Sup.snapshot()
    assert snapshot.restarts_total == 3

    assert [
             %{
               supervisor: "beamlens_test_restart_sup",
               restarts_last_minute: 3,
               last_child: "flaky_worker",
               last_reason: "killed"
             }
           ] = snapshot.restarting

    assert [%{supervisor: "beamlens_test_restart_sup", restarts: 3}] =
             Sup.Tracker.top_supervisors(5)
  end

  test "ports list owners and descriptors" do
    sockets = for _ <- 1..5, do: elem(:gen_udp.open(0), 1)
    on_exit(fn -> Enum.each(sockets, &:gen_udp.close/1) end)
    snapshot = Ports.snapshot()
    assert snapshot.socket_count >= 5
    assert Enum.any?(snapshot.top_owners, &(&1.owner == inspect(self())))
    assert {open, limit} = Ports.file_descriptors()
    assert open > 0 and limit > open
  end

  test "GC info of a process does not collect it" do
    pid = spawn(fn -> Process.sleep(:infinity) end)
    {:garbage_collection, before} = :erlang.process_info(pid, :garbage_collection)
    info = Gc.process_gc(inspect(pid))
    {:garbage_collection, after_} = :erlang.process_info(pid, :garbage_collection)
    assert info.minor_gcs == before[:minor_gcs]
    assert after_[:minor_gcs] == before[:minor_gcs]
  end

  test "without :os_mon on the code path the :system watcher says what to add" do
    message = System.os_mon_error({:os_mon, {~c"no such file or directory", ~c"os_mon.app"}})
    assert message =~ "extra_applications: [:logger, :os_mon]"
    assert message =~ "erlang-os-mon"
    assert System.os_mon_error(:boom) =~ "failed to start: :boom"
  end

  test "system domain reads os_mon" do
    s = System.snapshot()
    assert s.cores >= 1
    assert s.memory_used_ratio > 0 and s.memory_used_ratio < 1
    assert [%{mount: _, used_ratio: _} | _] = s.disks
  end
end
