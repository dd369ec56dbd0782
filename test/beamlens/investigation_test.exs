defmodule Beamlens.InvestigationTest do
  # Beamlens.investigate/2 on real watchers with injected faults: rules-only
  # here, with a scripted model in investigation_llm_test.exs.
  use Beamlens.WatcherCase, async: false

  alias Beamlens.Report

  @moduletag timeout: 120_000

  defmodule SlowDomain do
    # A domain whose snapshot waits, when asked to, until the test says go.
    @moduledoc false
    use Beamlens.Domain

    @impl true
    def name, do: :slow

    @impl true
    def description, do: "A domain whose snapshot can be held by the test"

    @impl true
    def snapshot do
      case :persistent_term.get({__MODULE__, :hold}, nil) do
        nil ->
          %{value: 1}

        pid ->
          send(pid, {:snapshot_held, self()})

          receive do
            :go -> %{value: 1}
          end
      end
    end

    @impl true
    def metrics(snapshot) do
      [
        %{
          name: "slow.value",
          label: "slow value",
          value: snapshot.value,
          kind: :level,
          anomaly_type: "slow_value"
        }
      ]
    end
  end

  setup do
    handler = "investigation-span-#{System.unique_integer([:positive])}"

    :ok =
      :telemetry.attach_many(
        handler,
        [[:beamlens, :investigation, :start], [:beamlens, :investigation, :stop]],
        &Beamlens.WatcherCase.forward/4,
        self()
      )

    on_exit(fn ->
      :telemetry.detach(handler)
      :persistent_term.erase({SlowDomain, :hold})
    end)
  end

  defp grow_ets(name, n) do
    table = :ets.new(name, [:public, :named_table])
    for i <- 1..n, do: :ets.insert(table, {i, "session-#{i}", %{user: i}})
    on_exit(fn -> if :ets.whereis(name) != :undefined, do: :ets.delete(name) end)
    table
  end

  test "rules-only: findings with evidence, key figures, alerts it would raise, no model", %{
    instance: instance
  } do
    start_beamlens(instance, watchers: [[name: :ets, warmup: 5], :beam])
    await_ticks(instance, :ets, 8)
    # Paused, the watchers raise nothing themselves: any alert would be the investigation's.
    :ok = Beamlens.pause(:ets, instance: instance)
    :ok = Beamlens.pause(:beam, instance: instance)
    # What they fired before the pause (a loaded machine can make the :beam
    # watcher alert) is not the investigation's.
    _before = collect_alerts(0)
    # All at once between two snapshots: grown over many ticks on a loaded
    # machine, the gate's baseline would follow it.
    between_snapshots(instance, [:ets], fn -> grow_ets(:inv_sessions, 300_000) end)

    await_state(instance, :ets, [:warning, :critical])

    assert {:ok, %Report{} = report} =
             Beamlens.investigate("why is memory growing?", instance: instance)

    assert_receive {:telemetry, [:beamlens, :investigation, :start], _,
                    %{question: "why is memory growing?"}}

    assert_receive {:telemetry, [:beamlens, :investigation, :stop], %{duration: _},
                    %{model_used: false}}

    assert report.question == "why is memory growing?"
    refute report.model_used
    assert report.no_model_reason == "no provider configured"
    assert report.summary == nil and report.hypothesis == nil
    assert report.tokens == %{input: 0, output: 0, estimated: false}

    assert [
             %{watcher: :beam, key_figures: beam},
             %{watcher: :ets, state: ets_state, key_figures: ets}
           ] = report.domains

    assert ets_state in [:warning, :critical]
    assert map_size(beam) > 0
    assert Map.has_key?(ets, "ETS memory")

    finding = Enum.find(report.findings, &(&1.anomaly_type == "ets_memory_growth"))
    assert finding.watcher == :ets
    assert finding.severity in [:warning, :critical]
    assert finding.summary =~ "ETS"
    assert finding.evidence.source == "watcher gate"
    assert is_number(finding.evidence.value) and is_number(finding.evidence.threshold)
    assert finding.entities != []

    # Judged by type: 300k rows in a new table may also make it an
    # ets_table_growth, which is not what this test is about.
    assert [%Beamlens.Alert{source: :gate, watcher: :ets}] =
             Enum.filter(report.alerts, &(&1.anomaly_type == "ets_memory_growth"))

    # Not fired: the report only says what it would raise.
    refute_received {:telemetry, [:beamlens, :watcher, :alert_fired], _, _}

    text = Report.to_text(report)
    assert text =~ "Question: why is memory growing?"
    assert text =~ "critical ets/ets_memory_growth" or text =~ "warning ets/ets_memory_growth"
    assert text =~ "No model was used (no provider configured)"
    assert length(String.split(text, "\n")) < 40

    # Asked to, it fires them, through the watcher.
    assert {:ok, _} =
             Beamlens.investigate(nil, instance: instance, watchers: [:ets], fire_alerts: true)

    alert = await_alert(instance, :ets, "ets_memory_growth")
    assert alert.source == :gate
  end

  test "one at a time per node; a held snapshot does not outlive the timeout", %{
    instance: instance
  } do
    start_beamlens(instance,
      watchers: [[name: :slow, domain_module: SlowDomain, interval: 60_000], :beam]
    )

    await_ticks(instance, :slow, 1)
    :persistent_term.put({SlowDomain, :hold}, self())

    first =
      Task.async(fn -> Beamlens.investigate("first", instance: instance, timeout: 30_000) end)

    # Bounded by the investigation's snapshot limit (10 s): a snapshot task
    # that has not started by then never will.
    assert_receive {:snapshot_held, holder}, 10_000

    assert {:error, %Beamlens.Error{kind: :busy, message: message}} =
             Beamlens.investigate("second", instance: instance)

    assert message =~ "already running"
    send(holder, :go)
    assert {:ok, %Report{question: "first"} = first} = Task.await(first, 30_000)

    assert %{watcher: :beam, key_figures: beam} = Enum.find(first.domains, &(&1.watcher == :beam))

    assert map_size(beam) > 0

    # Held until the timeout: the report comes back without that domain's
    # figures, and the held snapshot is gone. Only :slow is asked: on a
    # loaded machine a :beam snapshot alone may take longer than 300 ms.
    assert {:ok, report} =
             Beamlens.investigate(nil, instance: instance, watchers: [:slow], timeout: 300)

    assert [%{watcher: :slow, key_figures: figures}] = report.domains
    assert figures == %{}

    # A loaded machine may not even have started it within 300 ms; if it
    # did, it did not outlive the investigation.
    receive do
      {:snapshot_held, held} -> refute Process.alive?(held)
    after
      0 -> :ok
    end
  end

  test "bad questions, options and watchers are refused with a message", %{instance: instance} do
    start_beamlens(instance, watchers: [:beam])

    assert {:error, %Beamlens.Error{kind: :not_found, message: m}} =
             Beamlens.investigate(nil, instance: instance, watchers: [:ets])

    assert m =~ ":ets" and m =~ ":beam"

    assert {:error, %Beamlens.Error{kind: :bad_argument, message: m}} =
             Beamlens.investigate(nil, instance: instance, max_iteration: 3)

    assert m =~ ":max_iteration"

    assert {:error, %Beamlens.Error{kind: :bad_argument}} =
             Beamlens.investigate(:why, instance: instance)

    assert {:error, %Beamlens.Error{kind: :not_found}} =
             Beamlens.investigate(nil, instance: NoSuchBeamlensInstance)
  end
end
