defmodule Beamlens.Watcher do
  # One watcher: a GenServer that snapshots its domain on every tick, feeds
  # the numbers to its anomaly gate, keeps its state (:healthy, :observing,
  # :warning, :critical), and fires alerts. The snapshot runs in a task so a
  # slow domain never blocks the watcher; a snapshot still running at the
  # next tick makes that tick skip.
  @moduledoc false

  use GenServer, restart: :permanent

  require Logger

  alias Beamlens.{Alert, Gate, Telemetry}

  @max_snapshots 10
  @max_open_alerts 64

  defstruct [
    :name,
    :domain,
    :instance,
    :gate,
    :task_sup,
    :snapshot_task,
    :snapshot_timer,
    :opts,
    :started_at,
    :coordinator,
    status: :healthy,
    status_reason: "started",
    tick: 0,
    skipped: 0,
    snapshots: [],
    metrics: %{},
    firing: %{},
    pending: [],
    open_alerts: %{},
    alerts_fired: 0,
    last_error: nil
  ]

  ## API

  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.fetch!(opts, :name)},
      start: {__MODULE__, :start_link, [opts]},
      restart: :permanent
    }
  end

  def start_link(opts) do
    GenServer.start_link(__MODULE__, opts, name: via(opts[:instance], opts[:name]))
  end

  @doc false
  def via(instance, name),
    do: {:via, Registry, {Module.concat(instance, Registry), {:watcher, name}}}

  @doc false
  def whereis(instance, name) do
    case Registry.lookup(Module.concat(instance, Registry), {:watcher, name}) do
      [{pid, _}] -> pid
      [] -> nil
    end
  end

  @doc false
  def info(server, timeout \\ 5_000), do: GenServer.call(server, :info, timeout)

  ## GenServer

  @impl true
  def init(opts) do
    gate_opts =
      Keyword.merge([warmup: opts[:warmup], cooldown_ms: opts[:alert_cooldown]], opts[:gate])

    case Gate.new(gate_opts) do
      {:ok, gate} ->
        state = %__MODULE__{
          name: opts[:name],
          domain: opts[:domain_module],
          instance: opts[:instance],
          task_sup: Module.concat(opts[:instance], TaskSupervisor),
          coordinator: opts[:coordinator],
          gate: gate,
          opts: opts,
          started_at: System.monotonic_time(:millisecond)
        }

        send(self(), :tick)
        {:ok, state}

      {:error, error} ->
        {:stop, {:bad_gate_options, Exception.message(error)}}
    end
  end

  @impl true
  def handle_call(:info, _from, state) do
    info = %{
      name: state.name,
      domain: state.domain,
      state: state.status,
      reason: state.status_reason,
      ticks: state.tick,
      skipped_ticks: state.skipped,
      alerts_fired: state.alerts_fired,
      firing: Map.keys(state.firing),
      last_snapshot_id: match?([_ | _], state.snapshots) && elem(hd(state.snapshots), 0),
      last_error: state.last_error
    }

    {:reply, info, state}
  end

  @impl true
  def handle_info(:tick, state) do
    Process.send_after(self(), :tick, state.opts[:interval])

    if state.snapshot_task do
      {:noreply, %{state | skipped: state.skipped + 1}}
    else
      {:noreply, start_snapshot(state)}
    end
  end

  def handle_info({ref, result}, %{snapshot_task: %Task{ref: ref}} = state) do
    Process.demonitor(ref, [:flush])
    cancel_timer(state.snapshot_timer)
    state = %{state | snapshot_task: nil, snapshot_timer: nil}

    case result do
      {:ok, snapshot} -> {:noreply, handle_snapshot(snapshot, state)}
      {:error, message} -> {:noreply, snapshot_failed(state, message)}
    end
  end

  def handle_info({:DOWN, ref, :process, _, reason}, %{snapshot_task: %Task{ref: ref}} = state) do
    cancel_timer(state.snapshot_timer)
    state = %{state | snapshot_task: nil, snapshot_timer: nil}
    {:noreply, snapshot_failed(state, "snapshot process exited: #{inspect(reason, limit: 5)}")}
  end

  def handle_info({:snapshot_timeout, ref}, %{snapshot_task: %Task{ref: ref} = task} = state) do
    Task.Supervisor.terminate_child(state.task_sup, task.pid)
    Process.demonitor(ref, [:flush])
    state = %{state | snapshot_task: nil, snapshot_timer: nil}
    {:noreply, snapshot_failed(state, "snapshot took longer than #{snapshot_timeout(state)} ms")}
  end

  def handle_info(_other, state), do: {:noreply, state}

  ## Snapshots

  defp start_snapshot(state) do
    domain = state.domain

    task =
      Task.Supervisor.async_nolink(state.task_sup, fn ->
        try do
          {:ok, domain.snapshot()}
        rescue
          e -> {:error, Exception.message(e)}
        catch
          kind, reason -> {:error, "#{kind}: #{inspect(reason, limit: 5)}"}
        end
      end)

    timer = Process.send_after(self(), {:snapshot_timeout, task.ref}, snapshot_timeout(state))
    %{state | snapshot_task: task, snapshot_timer: timer}
  end

  defp snapshot_timeout(state), do: min(state.opts[:interval], 10_000) |> max(1_000)

  defp snapshot_failed(state, message) do
    if state.last_error != message do
      Logger.warning("BeamLens watcher #{inspect(state.name)}: #{message}")
    end

    Telemetry.execute([:watcher, :snapshot_failed], %{count: 1}, %{
      watcher: state.name,
      error: message
    })

    %{state | last_error: message}
  end

  defp handle_snapshot(snapshot, state) do
    tick = state.tick + 1
    id = "#{state.name}-#{tick}"
    snapshots = Enum.take([{id, snapshot} | state.snapshots], @max_snapshots)
    state = %{state | tick: tick, snapshots: snapshots, last_error: nil}

    with {:ok, metrics} <- safe_metrics(state.domain, snapshot),
         {:ok, verdict} <- Gate.observe(state.gate, metrics, clock(state)) do
      state
      |> Map.put(:metrics, Map.new(metrics, &{&1.name, &1}))
      |> apply_verdict(verdict, id)
    else
      {:error, error} -> snapshot_failed(state, error_message(error))
    end
  end

  # Milliseconds since the watcher started: a non-negative clock for the gate.
  defp clock(state), do: System.monotonic_time(:millisecond) - state.started_at

  defp safe_metrics(domain, snapshot) do
    {:ok, domain.metrics(snapshot)}
  rescue
    e -> {:error, "metrics/1 of #{inspect(domain)} failed: #{Exception.message(e)}"}
  end

  defp error_message(%{__exception__: true} = e), do: Exception.message(e)
  defp error_message(message) when is_binary(message), do: message

  ## Verdicts, states and alerts

  defp apply_verdict(state, verdict, snapshot_id) do
    firing = Map.new(verdict.findings, &{&1.name, &1})
    state = %{state | firing: firing, pending: verdict.pending}

    state =
      verdict.findings
      |> Enum.filter(&(&1.status in ["new", "escalated"]))
      |> Enum.group_by(&anomaly_type(state, &1))
      |> Enum.reduce(state, fn {type, findings}, acc ->
        raise_alert(acc, type, findings, snapshot_id)
      end)

    update_status(state)
  end

  defp anomaly_type(state, finding) do
    case state.metrics[finding.name] do
      %{anomaly_type: type} -> type
      _ -> "unknown"
    end
  end

  defp raise_alert(state, type, findings, snapshot_id) do
    now = System.monotonic_time(:millisecond)
    fingerprint = Alert.fingerprint(state.name, type, node())
    cooldown = state.opts[:alert_cooldown]
    escalated? = Enum.any?(findings, &(&1.status == "escalated"))

    case state.open_alerts[fingerprint] do
      %{alert: alert, fired_at: fired_at} when now - fired_at < cooldown and not escalated? ->
        alert = %{alert | occurrences: alert.occurrences + 1}

        Telemetry.execute([:watcher, :alert_folded], %{occurrences: alert.occurrences}, %{
          alert: alert,
          watcher: state.name
        })

        put_in(state.open_alerts[fingerprint], %{alert: alert, fired_at: fired_at})

      previous ->
        occurrences = if previous, do: previous.alert.occurrences + 1, else: 1
        alert = gate_alert(state, type, findings, snapshot_id, occurrences)
        fire(state, alert, now)
    end
  end

  defp gate_alert(state, type, findings, snapshot_id, occurrences) do
    findings = Enum.sort_by(findings, &{&1.severity == :critical, &1.value}, :desc)
    lead = hd(findings)
    metric = state.metrics[lead.name]
    severity = if Enum.any?(findings, &(&1.severity == :critical)), do: :critical, else: :warning

    Alert.new(
      watcher: state.name,
      severity: severity,
      state: severity,
      anomaly_type: type,
      summary: summarize(state.domain, lead, metric),
      observation: Enum.map_join(findings, "; ", &describe_finding(&1, state.metrics[&1.name])),
      hypothesis: hypothesis(state.domain, type),
      evidence: %{
        snapshot_ids: [snapshot_id],
        values:
          Map.new(
            findings,
            &{&1.name, Map.take(&1, [:value, :baseline, :threshold, :z, :severity, :samples])}
          )
      },
      entities:
        findings
        |> Enum.flat_map(&Map.get(state.metrics[&1.name] || %{}, :entities, []))
        |> Enum.uniq(),
      source: :gate,
      occurrences: occurrences
    )
  end

  defp fire(state, alert, now) do
    Telemetry.execute([:watcher, :alert_fired], %{system_time: System.system_time()}, %{
      alert: alert,
      watcher: state.name
    })

    notify_coordinator(state, alert)

    open_alerts =
      state.open_alerts
      |> Map.put(alert.fingerprint, %{alert: alert, fired_at: now})
      |> prune_alerts()

    %{state | open_alerts: open_alerts, alerts_fired: state.alerts_fired + 1}
  end

  defp notify_coordinator(%{coordinator: nil}, _alert), do: :ok

  defp notify_coordinator(%{coordinator: coordinator}, alert) do
    if function_exported?(coordinator, :report_alert, 2) do
      apply(coordinator, :report_alert, [coordinator_name(coordinator), alert])
    end

    :ok
  end

  defp coordinator_name(module), do: module

  defp prune_alerts(alerts) when map_size(alerts) <= @max_open_alerts, do: alerts

  defp prune_alerts(alerts) do
    alerts
    |> Enum.sort_by(fn {_, %{fired_at: at}} -> at end, :desc)
    |> Enum.take(@max_open_alerts)
    |> Map.new()
  end

  defp update_status(state) do
    {status, reason} =
      cond do
        Enum.any?(state.firing, fn {_, f} -> f.severity == :critical end) ->
          {:critical, firing_reason(state, :critical)}

        map_size(state.firing) > 0 ->
          {:warning, firing_reason(state, :warning)}

        state.pending != [] ->
          {:observing, "watching #{Enum.join(state.pending, ", ")}"}

        true ->
          {:healthy, "all metrics within their baselines and limits"}
      end

    set_status(state, status, reason)
  end

  defp firing_reason(state, severity) do
    state.firing
    |> Enum.filter(fn {_, f} -> f.severity == severity end)
    |> Enum.map_join("; ", fn {name, f} -> summarize(state.domain, f, state.metrics[name]) end)
  end

  @doc false
  def set_status(%{status: status} = state, status, reason), do: %{state | status_reason: reason}

  def set_status(state, status, reason) do
    Telemetry.execute([:watcher, :state_changed], %{system_time: System.system_time()}, %{
      watcher: state.name,
      from: state.status,
      to: status,
      reason: reason
    })

    %{state | status: status, status_reason: reason}
  end

  defp summarize(domain, finding, metric) do
    domain.summarize(finding, metric || %{label: finding.name})
  rescue
    _ -> Beamlens.Domain.default_summary(finding, metric || %{label: finding.name})
  end

  defp hypothesis(domain, type) do
    domain.hypothesis(type)
  rescue
    _ -> nil
  end

  defp describe_finding(finding, metric) do
    unit = (metric && Map.get(metric, :unit)) || :count
    fmt = &Beamlens.Domain.format(&1, unit)

    base =
      case finding.baseline do
        nil -> "limit #{fmt.(finding.threshold)}"
        b -> "baseline #{fmt.(b)}, threshold #{fmt.(finding.threshold)}"
      end

    z = if finding.z, do: ", z=#{Float.round(finding.z * 1.0, 1)}", else: ""

    "#{finding.name} = #{fmt.(finding.value)} (#{base}#{z}; #{finding.severity} for #{finding.samples} sample(s))"
  end

  defp cancel_timer(nil), do: :ok
  defp cancel_timer(ref), do: Process.cancel_timer(ref)
end
