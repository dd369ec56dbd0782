defmodule Beamlens.CoordinatorTest do
  # Telemetry handlers see every coordinator's events: run alone.
  use Beamlens.CoordinatorCase, async: false

  # Events that another process sends (a summarizer, a timer, :pg) arrive
  # later the more loaded the machine is: wait for them up to a bound only a
  # broken build reaches. (Events the coordinator emits while it handles an
  # alert are already here when `report/2`'s synchronous call returns.)
  @event_ms 10_000

  setup context do
    attach_coordinator_events(context)
  end

  defp report(name, alerts) do
    for alert <- List.wrap(alerts), do: :ok = Coordinator.report_alert(name, alert)
    sync(name)
  end

  describe "options" do
    test "unknown keys are refused with a hint" do
      assert_raise ArgumentError, ~r/unknown option :windw_ms .*did you mean :window_ms\?/, fn ->
        Coordinator.start_link(windw_ms: 10)
      end
    end

    test "values are checked against their type" do
      assert_raise ArgumentError,
                   ~r/expected :window_ms to be an integer from 1 to 86400000, got: 0/,
                   fn ->
                     Coordinator.start_link(window_ms: 0)
                   end

      assert_raise ArgumentError,
                   ~r/expected :compaction_keep_last to be a non-negative integer/,
                   fn ->
                     Coordinator.start_link(compaction_keep_last: -1)
                   end

      assert_raise ArgumentError, ~r/expected :pg_scope to be an atom, got: "pg"/, fn ->
        Coordinator.start_link(pg_scope: "pg")
      end

      assert_raise ArgumentError, ~r/:summarizer .* String does not export summarize\/3/, fn ->
        Coordinator.start_link(summarizer: String)
      end

      assert_raise ArgumentError, ~r/expected :summarizer to be nil, a module/, fn ->
        Coordinator.start_link(summarizer: fn _ -> :ok end)
      end
    end

    test "the :pg scope must be running" do
      assert {:error, {%ArgumentError{message: message}, _}} =
               start_supervised(
                 {Coordinator, name: :coordinator_without_pg, pg_scope: :no_such_scope}
               )

      assert message =~ "the :pg scope :no_such_scope is not running"
    end
  end

  describe "temporal" do
    test "alerts from different watchers on one node inside the window", context do
      name = start_coordinator(context)
      # One clock for both: their spacing is exactly 20 s, however slow the machine.
      now = DateTime.utc_now()
      queue = alert("run_queue_high", ago_ms: 20_000, now: now)
      disk = alert("disk_usage_high", now: now)
      report(name, [queue, disk])

      assert_receive {:coordinator_event, :insight_produced, measurements, %{insight: insight}}
      assert %Insight{correlation_type: :temporal} = insight
      assert insight.alert_ids == [queue.id, disk.id]
      assert insight.nodes == [node()]
      assert insight.watchers == [:beam, :system]
      assert insight.anomaly_types == ["run_queue_high", "disk_usage_high"]
      assert insight.summary_source == :rules
      assert insight.summary =~ "Temporal correlation of 2 alerts"
      assert insight.summary =~ "fired within 20 s of each other"
      assert insight.summary =~ "temporal: different watchers inside the 1 min window"
      assert insight.root_cause_hypothesis =~ "The earliest, run_queue_high"
      assert insight.root_cause == nil
      assert [%{kind: :temporal, rule: "time_window", lag_ms: lag}] = insight.rules
      assert lag == 20_000
      assert insight.produced_by == node()
      # Detection times cross the boundary to the millisecond.
      assert insight.created_at == DateTime.truncate(disk.detected_at, :millisecond)
      assert insight.updated_at == insight.created_at
      assert measurements.alert_count == 2
      assert measurements.version == insight.version
    end

    test "the window is configurable", context do
      name = start_coordinator(context, window_ms: 10_000)
      report(name, [alert("run_queue_high", ago_ms: 20_000), alert("disk_usage_high")])
      refute_receive {:coordinator_event, :insight_produced, _, _}, 100
    end
  end

  describe "causal" do
    test "ETS growth before total memory growth names the table as the root cause", context do
      name = start_coordinator(context)

      ets = alert("ets_memory_growth", ago_ms: 40_000, entities: [{"ets_table", "sessions"}])

      memory = alert("memory_growth")
      report(name, [ets, memory])

      assert_receive {:coordinator_event, :insight_produced, _, %{insight: insight}}
      assert insight.correlation_type == :causal
      assert insight.confidence == 0.7

      assert %{alert_id: alert_id, anomaly_type: "ets_memory_growth", watcher: :ets} =
               insight.root_cause

      assert alert_id == ets.id
      assert insight.root_cause.entity == "ets_table sessions"
      assert insight.root_cause.rule == "ets_growth_drives_memory"
      assert [%{kind: :causal, rule: "ets_growth_drives_memory"}] = insight.rules
      assert insight.summary =~ "ets_memory_growth preceded memory_growth by 40 s"

      assert insight.root_cause_hypothesis =~
               "Likely root cause: ets_memory_growth on #{node()} (ets_table sessions)"

      assert insight.root_cause_hypothesis =~ "added straight to total VM memory"
    end

    test "only when the order in time fits", context do
      name = start_coordinator(context)
      # The error burst came first: the restart storm cannot have caused it.
      report(name, [alert("error_log_burst", ago_ms: 30_000), alert("restart_storm")])

      assert_receive {:coordinator_event, :insight_produced, _, %{insight: insight}}
      assert insight.correlation_type == :temporal
      assert insight.root_cause == nil
    end

    test "a restart storm before an error burst", context do
      name = start_coordinator(context)
      storm = alert("restart_storm", ago_ms: 30_000, entities: [{"supervisor", "MyApp.Sup"}])
      report(name, [storm, alert("error_log_burst")])

      assert_receive {:coordinator_event, :insight_produced, _, %{insight: insight}}
      assert insight.correlation_type == :causal
      assert insight.root_cause.alert_id == storm.id
      assert insight.root_cause_hypothesis =~ "the first crash reason of its children"
    end
  end

  describe "symptomatic" do
    test "alerts naming the same entity", context do
      name = start_coordinator(context)
      entity = [{"module", "MyApp.Worker"}]

      report(name, [
        alert("exception_burst", entities: entity),
        alert("connection_errors", entities: entity)
      ])

      assert_receive {:coordinator_event, :insight_produced, _, %{insight: insight}}
      assert insight.correlation_type == :symptomatic
      assert [%{rule: "shared_entity", shared: "module MyApp.Worker"}] = insight.rules
      assert insight.root_cause_hypothesis =~ "A common cause acting on module MyApp.Worker"
    end

    test "the same symptom on several nodes is one insight listing them", context do
      name = start_coordinator(context)
      a = alert("connection_errors", node: :"app_a@127.0.0.1", ago_ms: 5_000)
      b = alert("connection_errors", node: :"app_b@127.0.0.1")
      report(name, [a, b])

      assert_receive {:coordinator_event, :insight_produced, _, %{insight: insight}}
      assert insight.correlation_type == :symptomatic
      assert insight.nodes == [:"app_a@127.0.0.1", :"app_b@127.0.0.1"]
      assert insight.summary =~ "connection_errors fired on 2 nodes"
      assert insight.root_cause_hypothesis =~ "rather than a fault of one node"
    end
  end

  test "unrelated alerts stay separate", context do
    name = start_coordinator(context)

    report(name, [
      # one watcher, unrelated resources
      alert("atom_growth"),
      alert("run_queue_high"),
      # other nodes, nothing shared
      alert("disk_usage_high", node: :"app_c@127.0.0.1"),
      alert("ets_table_count_high", node: :"app_d@127.0.0.1"),
      # different watchers too far apart in time
      alert("pool_saturation", node: :"app_e@127.0.0.1", ago_ms: 120_000),
      alert("warning_log_burst", node: :"app_e@127.0.0.1")
    ])

    refute_receive {:coordinator_event, _, _, %{insight: _}}, 100

    assert Coordinator.insights(name) == []
    assert {:ok, %{groups: 6, received: 6}} = Coordinator.stats(name)
  end

  describe "one insight per group" do
    test "a joining alert updates the insight; repeats are folded", context do
      name = start_coordinator(context)
      ets = alert("ets_memory_growth", ago_ms: 60_000)
      memory = alert("memory_growth", ago_ms: 30_000)
      report(name, [ets, memory])
      assert_receive {:coordinator_event, :insight_produced, _, %{insight: first}}

      # The same alert twice (as through the cluster) and a repeat of the
      # same problem: nothing new to say.
      report(name, [memory, alert("memory_growth", ago_ms: 20_000)])
      refute_receive {:coordinator_event, _, _, %{insight: _}}, 100

      os = alert("system_memory_high")
      report(name, os)
      assert_receive {:coordinator_event, :insight_updated, _, %{insight: updated}}
      assert updated.id == first.id
      assert updated.version > first.version
      assert os.id in updated.alert_ids
      assert updated.alert_count == 4
      assert updated.root_cause.alert_id == ets.id

      assert [%Insight{id: id, version: version}] = Coordinator.insights(name)
      assert {id, version} == {first.id, updated.version}

      assert {:ok, %{received: 5, duplicates: 1, folded: 1}} = Coordinator.stats(name)
    end

    test "a rising severity updates the insight", context do
      name = start_coordinator(context)

      report(name, [
        alert("ets_memory_growth", ago_ms: 60_000),
        alert("memory_growth", ago_ms: 30_000)
      ])

      assert_receive {:coordinator_event, :insight_produced, _, %{insight: %{severity: :warning}}}
      report(name, alert("memory_growth", severity: :critical))
      assert_receive {:coordinator_event, :insight_updated, _, %{insight: %{severity: :critical}}}
    end

    test "two insights that become related merge into the older one", context do
      name = start_coordinator(context)
      other = :"app_e@127.0.0.1"

      report(name, [
        alert("ets_memory_growth", ago_ms: 60_000),
        alert("memory_growth", ago_ms: 40_000)
      ])

      assert_receive {:coordinator_event, :insight_produced, _, %{insight: x}}

      report(name, [
        alert("fd_usage_high", node: other, ago_ms: 30_000),
        alert("connection_errors", node: other, ago_ms: 20_000)
      ])

      assert_receive {:coordinator_event, :insight_produced, _, %{insight: y}}
      assert y.correlation_type == :causal

      # memory_growth on the other node too: the same symptom links them.
      report(name, alert("memory_growth", node: other))
      assert_receive {:coordinator_event, :insight_updated, _, %{insight: merged}}
      assert merged.id == x.id
      assert merged.merged_ids == [y.id]
      assert merged.nodes == Enum.sort([node(), other])
      assert [%Insight{id: id}] = Coordinator.insights(name)
      assert id == x.id
    end
  end

  describe "summarizer" do
    defmodule TestSummarizer do
      @behaviour Beamlens.Coordinator.Summarizer

      # Reports the call to the test, then answers as told by :reply.
      @impl true
      def summarize(insight, alerts, opts) do
        send(opts[:test], {:summarize, insight, alerts, opts, self()})

        case opts[:reply] do
          :slow ->
            receive do
              :go -> {:ok, %{summary: "written after a wait", hypothesis: "h"}}
            end

          :fail ->
            {:error, :provider_down}

          :raise ->
            raise "summarizer bug"

          :ok ->
            {:ok,
             %{
               summary: "ETS table sessions grew, and total memory followed.",
               hypothesis: "Sessions are never expired."
             }}
        end
      end
    end

    test "writes the summary and hypothesis from the grouped alerts", context do
      name =
        start_coordinator(context,
          summarizer: {TestSummarizer, test: self(), reply: :ok},
          compaction_max_tokens: 20_000,
          compaction_keep_last: 3
        )

      ets = alert("ets_memory_growth", ago_ms: 40_000, entities: [{"ets_table", "sessions"}])
      memory = alert("memory_growth")
      report(name, [ets, memory])

      assert_receive {:summarize, %Insight{} = given, alerts, opts, _pid}, @event_ms
      assert given.summary_source == :rules
      assert given.summary =~ "ets_growth_drives_memory"
      assert Enum.sort(Enum.map(alerts, & &1.id)) == Enum.sort([ets.id, memory.id])
      assert opts[:compaction_max_tokens] == 20_000
      assert opts[:compaction_keep_last] == 3
      assert opts[:timeout] == 120_000

      assert_receive {:coordinator_event, :insight_produced, _, %{insight: insight}}, @event_ms
      assert insight.summary_source == :summarizer
      assert insight.summary == "ETS table sessions grew, and total memory followed."
      assert insight.root_cause_hypothesis == "Sessions are never expired."
      assert insight.correlation_type == :causal
      assert [%Insight{summary_source: :summarizer}] = Coordinator.insights(name)
    end

    test "runs without blocking the coordinator", context do
      name = start_coordinator(context, summarizer: {TestSummarizer, test: self(), reply: :slow})
      report(name, [alert("run_queue_high", ago_ms: 10_000), alert("disk_usage_high")])
      assert_receive {:summarize, _, _, _, summarizer}, @event_ms

      # The coordinator keeps correlating while the summarizer works.
      report(name, [alert("restart_storm", ago_ms: 30_000), alert("error_log_burst", node: :x@h)])
      assert {:ok, %{summaries_running: 1, received: 4}} = Coordinator.stats(name)
      refute_received {:coordinator_event, :insight_produced, _, _}

      send(summarizer, :go)
      assert_receive {:coordinator_event, :insight_produced, _, %{insight: insight}}, @event_ms
      assert insight.summary == "written after a wait"
    end

    test "a function works as a summarizer", context do
      test = self()

      summarizer = fn insight, alerts ->
        send(test, {:called, length(alerts)})
        {:ok, %{summary: "#{length(insight.alert_ids)} alerts", hypothesis: "a guess"}}
      end

      name = start_coordinator(context, summarizer: summarizer)
      report(name, [alert("run_queue_high", ago_ms: 10_000), alert("disk_usage_high")])
      assert_receive {:called, 2}, @event_ms

      assert_receive {:coordinator_event, :insight_produced, _,
                      %{insight: %{summary: "2 alerts"}}},
                     @event_ms
    end

    for {reply, reason} <- [fail: ":provider_down", raise: "summarizer bug"] do
      test "falls back to the deterministic text when it answers #{reply}", context do
        name =
          start_coordinator(context,
            summarizer: {TestSummarizer, test: self(), reply: unquote(reply)}
          )

        report(name, [alert("run_queue_high", ago_ms: 10_000), alert("disk_usage_high")])

        assert_receive {:coordinator_event, :summary_failed, _,
                        %{reason: reason, insight: failed}},
                       @event_ms

        assert inspect(reason) =~ unquote(reason)
        assert_receive {:coordinator_event, :insight_produced, _, %{insight: insight}}, @event_ms
        assert insight.id == failed.id
        assert insight.summary_source == :rules
        assert insight.summary =~ "Temporal correlation"
      end
    end

    test "falls back when it takes too long", context do
      name =
        start_coordinator(context,
          summarizer: {TestSummarizer, test: self(), reply: :slow},
          summarizer_timeout: 50
        )

      report(name, [alert("run_queue_high", ago_ms: 10_000), alert("disk_usage_high")])
      assert_receive {:summarize, _, _, _, summarizer}, @event_ms
      ref = Process.monitor(summarizer)
      assert_receive {:coordinator_event, :summary_failed, _, %{reason: :timeout}}, @event_ms

      assert_receive {:coordinator_event, :insight_produced, _,
                      %{insight: %{summary_source: :rules}}},
                     @event_ms

      assert_receive {:DOWN, ^ref, :process, ^summarizer, :killed}, @event_ms
    end
  end

  describe "report_alert/2" do
    test "never blocks: a coordinator that is not running drops the alert" do
      alert = alert("memory_growth")
      assert Coordinator.report_alert(:no_such_coordinator, alert) == :ok

      assert_receive {:coordinator_event, :alert_dropped, %{count: 1},
                      %{reason: :not_running, alert: ^alert, coordinator: :no_such_coordinator}}
    end

    defp count_overloaded(n) do
      receive do
        {:coordinator_event, :alert_dropped, %{count: 1}, %{reason: :overloaded}} ->
          count_overloaded(n + 1)
      after
        0 -> n
      end
    end

    # Correlating the 5,000 queued alerts takes seconds in the debug build
    # on a loaded machine: the test waits for the coordinator's answer, not
    # for a deadline.
    @tag timeout: 300_000
    test "a full mailbox drops alerts instead of growing", context do
      name = start_coordinator(context)
      pid = Process.whereis(name)
      :ok = :sys.suspend(pid)

      for i <- 1..5_100 do
        Coordinator.report_alert(name, alert("custom_#{i}", watcher: :custom))
      end

      # Alerts are only cast below the bound; a timer tick of the
      # coordinator may sit among them.
      {:message_queue_len, queued} = Process.info(pid, :message_queue_len)
      assert queued in 5_000..5_001
      dropped = count_overloaded(0)
      assert dropped >= 100
      refute_received {:coordinator_event, :alert_dropped, _, _}
      :ok = :sys.resume(pid)

      # The stats call is answered after every queued alert: all were
      # taken in, and each of the others was reported as dropped.
      assert {:ok, %{received: received}} = GenServer.call(name, :stats, :infinity)
      assert received + dropped == 5_100
    end

    test "fills in what a bare alert struct lacks", context do
      name = start_coordinator(context)

      bare = %Alert{
        watcher: :beam,
        severity: :warning,
        anomaly_type: "run_queue_high",
        summary: "s",
        detected_at: DateTime.add(DateTime.utc_now(), -5, :second)
      }

      report(name, [bare, alert("disk_usage_high")])
      assert_receive {:coordinator_event, :insight_produced, _, %{insight: insight}}
      assert length(insight.alert_ids) == 2
    end
  end

  test "the engine skips what is not an alert and keeps the rest" do
    {:ok, engine} =
      Beamlens.Coordinator.Engine.new(window_ms: 60_000, order_tolerance_ms: 0, max_alerts: 10)

    good = [alert("run_queue_high", ago_ms: 1_000), alert("disk_usage_high")]
    broken = %{hd(good) | id: "broken", severity: :urgent}
    now = System.system_time(:millisecond)

    assert {:ok, %{insights: [insight], rejected: [reason, junk]}} =
             Beamlens.Coordinator.Engine.ingest(engine, [broken, :junk | good], now)

    assert reason =~ "alerts[0] severity must be :info, :warning or :critical"
    assert junk =~ "alerts[1] must be a %Beamlens.Alert{}"
    assert insight["alert_ids"] == Enum.map(good, & &1.id)

    assert {:error, %Beamlens.Error{kind: :bad_argument, message: message}} =
             Beamlens.Coordinator.Engine.ingest(engine, :not_a_list, now)

    assert message =~ "alerts: must be a list"
  end

  test "causal_rules/0 lists the causal table" do
    assert {:ok, rules} = Coordinator.causal_rules()
    rule = Enum.find(rules, &(&1.name == "ets_growth_drives_memory"))
    assert rule.lead == ["ets_memory_growth", "ets_table_growth"]
    assert rule.lag == ["memory_growth"]
    assert rule.max_lag_ms == 600_000
    assert rule.mutual == false
    assert Enum.any?(rules, &(&1.name == "gc_pressure_with_process_memory" and &1.mutual))
  end

  test "a single coordinator leads", context do
    name = start_coordinator(context)

    assert_receive {:coordinator_event, :leader_changed, %{members: 1},
                    %{leader: leader, previous: nil}},
                   @event_ms

    assert leader == node()
    assert {:ok, %{leader?: true, members: 1}} = Coordinator.stats(name)
  end
end
