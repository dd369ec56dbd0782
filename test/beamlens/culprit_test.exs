defmodule Beamlens.CulpritTest do
  # Culprits are named in code: each domain measures the top contributors of
  # its metrics (the table and its owner, the process group that leaks, the
  # process whose mailbox piles up, the module that logs, the port owner, the
  # process with the large heap), and every alert names them in its entities
  # and its summary, whether the gate or the model wrote it.
  use Beamlens.WatcherCase, async: false

  require Logger

  alias Beamlens.{LLMFixtures, LogStore, LoopbackServer}
  alias Beamlens.Domain.{Beam, Ets, Gc, Ports}
  alias Beamlens.Domain.Logger, as: LoggerDomain

  @moduletag timeout: 120_000

  doctest Beamlens.Domain

  defp metric(domain, name) do
    Enum.find(domain.metrics(domain.snapshot()), &(&1.name == name)) ||
      flunk("no metric #{name} in #{inspect(domain)}")
  end

  # A registered process that runs `fun` and stays until the test ends.
  defp start_named(name, fun) do
    test = self()

    pid =
      spawn(fn ->
        Process.register(self(), name)
        state = fun.()
        send(test, {:ready, self()})
        receive do: (:stop -> state)
      end)

    assert_receive {:ready, ^pid}, 10_000
    on_exit(fn -> send(pid, :stop) end)
    pid
  end

  describe "domains measure the culprit" do
    test "ets: the largest table and its owner" do
      owner =
        start_named(:beamlens_culprit_cache, fn ->
          table = :ets.new(:beamlens_culprit_sessions, [:named_table, :public])
          for i <- 1..200_000, do: :ets.insert(table, {i, "session-#{i}"})
          table
        end)

      for name <- ["ets.memory", "ets.memory_share", "ets.table.beamlens_culprit_sessions.memory"] do
        m = metric(Ets, name)

        assert m.culprit =~
                 "ets table beamlens_culprit_sessions owned by beamlens_culprit_cache (#{inspect(owner)})"

        assert {"ets_table", "beamlens_culprit_sessions"} in m.entities
        assert {"process", "beamlens_culprit_cache"} in m.entities
      end
    end

    test "beam: a process leak names the function and the spawning parent" do
      spawner =
        start_named(:beamlens_culprit_spawner, fn ->
          for _ <- 1..20_000, do: spawn(&leaked_worker/0)
        end)

      m = metric(Beam, "beam.process_count")

      assert m.culprit =~
               ~r/^\d+ processes in Beamlens.CulpritTest.leaked_worker\/0 spawned by beamlens_culprit_spawner \(#{Regex.escape(inspect(spawner))}\)$/

      assert {"function", "Beamlens.CulpritTest.leaked_worker/0"} in m.entities
      assert {"process", "beamlens_culprit_spawner"} in m.entities
      assert {"pid", inspect(spawner)} in m.entities
    end

    test "beam: the process whose mailbox piles up" do
      sink = start_named(:beamlens_culprit_sink, fn -> :ok end)
      for i <- 1..20_000, do: send(sink, {:job, i})

      m = metric(Beam, "beam.max_message_queue")
      assert m.culprit =~ "beamlens_culprit_sink (#{inspect(sink)}) has the longest message queue"
      assert {"process", "beamlens_culprit_sink"} in m.entities
    end

    test "beam: the process that holds binaries" do
      holder =
        start_named(:beamlens_culprit_binaries, fn ->
          for i <- 1..48, do: :binary.copy(<<i>>, 1024 * 1024)
        end)

      m = metric(Beam, "beam.memory.binary")

      assert m.culprit =~
               ~r/^beamlens_culprit_binaries \(#{Regex.escape(inspect(holder))}\) holds/

      assert {"process", "beamlens_culprit_binaries"} in m.entities
    end

    test "beam: processes waiting to run, grouped by function" do
      test = self()
      spinners = for _ <- 1..6, do: spawn(fn -> spin(test) end)
      on_exit(fn -> Enum.each(spinners, &Process.exit(&1, :kill)) end)
      # Each says so once it runs; a loaded machine may take a while to run
      # six new processes: the bound is one only a stuck VM reaches.
      for _ <- spinners, do: assert_receive(:spinning, 30_000)

      me = self()

      groups =
        Beamlens.Domain.Processes.groups(
          3,
          &(&1 != me and Beamlens.Domain.Processes.runnable?(&1))
        )

      assert %{function: "Beamlens.CulpritTest.spin_loop/0", parent: parent} = hd(groups)
      assert parent == inspect(self())
    end

    test "gc: the process with the largest heap" do
      big = start_named(:beamlens_culprit_heap, fn -> Enum.to_list(1..3_000_000) end)

      m = metric(Gc, "gc.largest_heap")
      assert m.culprit =~ "beamlens_culprit_heap (#{inspect(big)}) has the largest heap"
      assert metric(Gc, "gc.collections").culprit == m.culprit
      assert {"process", "beamlens_culprit_heap"} in m.entities
    end

    test "logger: the module that logs now" do
      start_supervised!(LogStore)
      for i <- 1..5, do: Logger.error("payment gateway returned 502 for order #{i}")
      for i <- 1..3, do: Logger.warning("retrying order #{i}")

      errors = metric(LoggerDomain, "logger.errors")
      assert errors.culprit =~ "module Beamlens.CulpritTest (5 recent errors)"
      assert {"module", "Beamlens.CulpritTest"} in errors.entities
      assert metric(LoggerDomain, "logger.warnings").culprit =~ "(3 recent warnings)"
    end

    test "exception: the exception raised now leads, not the one raised most" do
      start_supervised!(Beamlens.Domain.Exception.ExceptionStore)

      report = fn exception, module ->
        Beamlens.Domain.Exception.ExceptionStore.report_event(%{
          kind: :error,
          reason: exception,
          stacktrace: [{module, :run, 1, [file: ~c"lib/app.ex", line: 1]}]
        })
      end

      for _ <- 1..30, do: report.(%RuntimeError{message: "old noise"}, Beamlens.CulpritTest.Old)

      for _ <- 1..15,
          do: report.(%ArgumentError{message: "card declined"}, Beamlens.CulpritTest.Checkout)

      m = metric(Beamlens.Domain.Exception, "exception.count")
      assert [{"exception", "ArgumentError"} | _] = m.entities

      assert Beamlens.Domain.Exception.summarize(%{value: 5.0, baseline: 0.1, threshold: 1.0}, m) =~
               "mostly ArgumentError"
    end

    test "ports: the port owner" do
      owner =
        start_named(:beamlens_culprit_sockets, fn ->
          for _ <- 1..12, do: elem(:gen_udp.open(0), 1)
        end)

      m = metric(Ports, "ports.port_count")

      assert m.culprit =~
               "port owner beamlens_culprit_sockets (#{inspect(owner)}) with 12 ports (udp_inet)"

      assert {"process", "beamlens_culprit_sockets"} in m.entities
    end
  end

  describe "alerts name the culprit" do
    test "a gate alert has the culprit in its entities and summary", %{instance: instance} do
      start_beamlens(instance, watchers: [:beam])
      await_ticks(instance, :beam, 3)

      sink = start_named(:beamlens_culprit_stuck, fn -> :ok end)
      for i <- 1..15_000, do: send(sink, {:job, i})

      alert = await_alert(:beam, "mailbox_buildup")
      assert alert.source == :gate

      assert alert.summary =~
               ~r/^A message queue holds \d+ messages, above the 10000 limit \(culprit: beamlens_culprit_stuck \(#{Regex.escape(inspect(sink))}\) has the longest message queue\)$/

      assert {"process", "beamlens_culprit_stuck"} in alert.entities
      assert {"pid", inspect(sink)} in alert.entities
    end

    test "a model's summary that does not name the culprit gets it appended", %{
      instance: instance
    } do
      server = start_provider([])
      config = LLMFixtures.config(:anthropic, server, [])
      start_beamlens(instance, watchers: [[name: :beam, warmup: 3]], provider: config)
      await_ticks(instance, :beam, 3)

      LoopbackServer.enqueue(
        server,
        Enum.map(
          [
            [
              {"fire_alert",
               %{
                 "severity" => "warning",
                 "anomaly_type" => "mailbox_buildup",
                 "summary" => "A consumer cannot keep up with its producers",
                 "observation" => "one message queue is long",
                 "hypothesis" => "slow consumer",
                 "snapshot_ids" => []
               }}
            ],
            [{"done", %{}}]
          ],
          &LLMFixtures.tool_calls(:anthropic, &1)
        )
      )

      sink = start_named(:beamlens_culprit_slow, fn -> :ok end)
      for i <- 1..15_000, do: send(sink, {:job, i})

      alert = await_alert(:beam, "mailbox_buildup")
      assert alert.source == :llm

      assert alert.summary ==
               "A consumer cannot keep up with its producers (culprit: beamlens_culprit_slow " <>
                 "(#{inspect(sink)}) has the longest message queue)"

      assert {"process", "beamlens_culprit_slow"} in alert.entities
    end
  end

  defp await_alert(watcher, type) do
    receive do
      {:telemetry, [:beamlens, :watcher, :alert_fired], _,
       %{watcher: ^watcher, alert: %{anomaly_type: ^type} = alert}} ->
        alert
    after
      20_000 -> flunk("no #{type} alert from #{inspect(watcher)}")
    end
  end

  @doc false
  def leaked_worker, do: receive(do: (:stop -> :ok))

  @doc false
  def spin(test) do
    send(test, :spinning)
    spin_loop()
  end

  defp spin_loop, do: spin_loop()
end
