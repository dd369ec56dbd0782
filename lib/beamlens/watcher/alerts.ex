defmodule Beamlens.Watcher.Alerts do
  # Alert delivery rules of a watcher, as pure functions of the open alerts
  # and a clock passed in (tested without processes):
  #
  #   * a new alert fires;
  #   * a repeat of an open alert (same fingerprint, within the cooldown) is
  #     folded into it, its count visible in `[:beamlens, :watcher,
  #     :alert_folded]`;
  #   * unless it is clearly worse than the open alert: a higher severity, or
  #     a figure `ratio` times the one the open alert reported (or the gate
  #     said "escalated" and the open alert has no figure to compare).
  #     Then it fires again as an escalation, so an early false alarm can
  #     never silence a real incident.
  #
  # And the deadline of the gate's own alerts while a model check runs: the
  # model gets `grace` ms to write a richer alert, then the gate's fires
  # whatever the provider does.
  #
  # It also builds the alerts (the gate's from its findings, the model's
  # from its fire_alert call) and keeps the open alerts bounded. Nothing
  # here emits telemetry or talks to a process: `deliver/4` returns what
  # happened and the watcher reports it.
  @moduledoc false

  alias Beamlens.Alert
  alias Beamlens.Watcher.Status

  @order %{warning: 0, critical: 1}
  @max_open_alerts 64

  @typedoc """
  The watcher state an alert is built from: its name, state, domain,
  metrics by name and the findings firing now by metric name.
  """
  @type watcher :: %{
          required(:name) => atom(),
          required(:status) => atom(),
          required(:domain) => module(),
          required(:metrics) => %{optional(String.t()) => map()},
          required(:firing) => %{optional(String.t()) => map()},
          optional(atom()) => term()
        }

  @typedoc "What `deliver/4` did: fired a new alert, folded a repeat, or fired an escalation."
  @type event ::
          {:fired, Alert.t()} | {:folded, Alert.t()} | {:escalated, Alert.t(), map()}

  @typedoc "Delivery settings: the cooldown (ms) and the escalation ratio."
  @type rules :: %{cooldown: non_neg_integer(), ratio: number()}

  @typedoc "An open alert and when it fired (ms, the watcher's clock)."
  @type open :: %{alert: Alert.t(), fired_at: integer()}

  @typedoc """
  What a candidate alert says: its severity, its figures by metric name
  (`%{value: number}`), and whether the gate reported an escalation.
  """
  @type candidate :: %{
          severity: :warning | :critical,
          values: %{optional(String.t()) => map()},
          escalated?: boolean()
        }

  @type decision :: :fire | :fold | {:escalate, String.t()}

  @doc false
  @spec decide(open() | nil, candidate(), integer(), non_neg_integer(), number()) :: decision()
  def decide(nil, _candidate, _now, _cooldown, _ratio), do: :fire

  def decide(%{fired_at: at}, _candidate, now, cooldown, _ratio) when now - at >= cooldown,
    do: :fire

  def decide(%{alert: alert}, candidate, _now, _cooldown, ratio) do
    cond do
      rank(candidate.severity) > rank(alert.severity) ->
        {:escalate, "severity rose from #{alert.severity} to #{candidate.severity}"}

      reason = worse_figure(alert, candidate, ratio) ->
        {:escalate, reason}

      # The gate says it is worse, and the open alert has no figure to
      # compare with (the model wrote it about other metrics).
      candidate.escalated? and not comparable?(alert, candidate) ->
        {:escalate, "the gate reports an escalation"}

      true ->
        :fold
    end
  end

  defp comparable?(alert, candidate) do
    before = values(alert)
    Enum.any?(Map.keys(candidate.values), &Map.has_key?(before, &1))
  end

  defp values(alert), do: (alert.evidence && alert.evidence[:values]) || %{}

  defp rank(severity), do: Map.get(@order, severity, 0)

  # The first metric whose value is `ratio` times what the open alert said.
  defp worse_figure(alert, candidate, ratio) do
    before = values(alert)

    Enum.find_value(Enum.sort(candidate.values), fn {name, now} ->
      with %{value: old} when is_number(old) and old > 0 <- before[name],
           %{value: new} when is_number(new) <- now,
           true <- new >= old * ratio do
        "#{name} rose from #{figure(old)} to #{figure(new)}"
      else
        _ -> nil
      end
    end)
  end

  defp figure(n) when is_float(n), do: :erlang.float_to_binary(n, [:compact, decimals: 3])
  defp figure(n), do: to_string(n)

  @doc false
  # The open alert with one more occurrence.
  @spec fold(open()) :: open()
  def fold(%{alert: alert} = open),
    do: %{open | alert: %{alert | occurrences: alert.occurrences + 1}}

  @doc false
  # The figures of an escalation event: the old and new severity and values.
  @spec escalation(Alert.t(), Alert.t(), String.t()) :: map()
  def escalation(previous, alert, reason) do
    %{
      alert: alert,
      previous: previous,
      reason: reason,
      from: previous.severity,
      to: alert.severity,
      values: values(alert),
      previous_values: values(previous)
    }
  end

  @doc false
  # Splits gate alerts waiting on a model check into those due now and the
  # rest: `waiting` maps an anomaly type to the time it was found.
  @spec due(%{optional(String.t()) => integer()}, integer(), non_neg_integer()) ::
          {[String.t()], %{optional(String.t()) => integer()}}
  def due(waiting, now, grace) do
    {due, rest} = Enum.split_with(waiting, fn {_type, found_at} -> now - found_at >= grace end)
    {due |> Enum.map(&elem(&1, 0)) |> Enum.sort(), Map.new(rest)}
  end

  @doc false
  # Delivers a candidate alert of `type` among the open alerts (by
  # fingerprint): `build` makes the alert from its occurrence count. A new
  # one (or one after the cooldown) fires, a repeat folds, a clearly worse
  # one fires as an escalation. Returns the open alerts and what happened.
  @spec deliver(
          %{optional(String.t()) => open()},
          {atom(), String.t(), candidate(), (pos_integer() -> Alert.t())},
          integer(),
          rules()
        ) :: {%{optional(String.t()) => open()}, event()}
  def deliver(open_alerts, {name, type, candidate, build}, now, rules) do
    fingerprint = Alert.fingerprint(name, type, node())
    open = open_alerts[fingerprint]

    case decide(open, candidate, now, rules.cooldown, rules.ratio) do
      :fold ->
        open = fold(open)
        {Map.put(open_alerts, fingerprint, open), {:folded, open.alert}}

      :fire ->
        alert = build.(if open, do: open.alert.occurrences + 1, else: 1)
        {put_open(open_alerts, alert, now), {:fired, alert}}

      {:escalate, reason} ->
        alert = build.(open.alert.occurrences + 1)

        {put_open(open_alerts, alert, now),
         {:escalated, alert, escalation(open.alert, alert, reason)}}
    end
  end

  defp put_open(open_alerts, alert, now) do
    open_alerts
    |> Map.put(alert.fingerprint, %{alert: alert, fired_at: now})
    |> prune()
  end

  @doc false
  # At most the 64 most recently fired open alerts.
  @spec prune(%{optional(String.t()) => open()}) :: %{optional(String.t()) => open()}
  def prune(alerts) when map_size(alerts) <= @max_open_alerts, do: alerts

  def prune(alerts) do
    alerts
    |> Enum.sort_by(fn {_, %{fired_at: at}} -> at end, :desc)
    |> Enum.take(@max_open_alerts)
    |> Map.new()
  end

  @doc false
  # Anomaly types with an open alert (fired within the cooldown), so that
  # follow-up checks do not report them again.
  @spec open_types(%{optional(String.t()) => open()}, integer(), non_neg_integer()) ::
          [String.t()]
  def open_types(open_alerts, now, cooldown) do
    for {_, %{alert: alert, fired_at: at}} <- open_alerts,
        now - at < cooldown,
        uniq: true,
        do: alert.anomaly_type
  end

  @doc false
  # What a group of the gate's findings says, for `decide/5`.
  @spec gate_candidate([map()]) :: candidate()
  def gate_candidate(findings) do
    %{
      severity: severity(findings),
      values: evidence_values(findings),
      escalated?: Enum.any?(findings, &(&1.status == "escalated"))
    }
  end

  defp severity(findings),
    do: if(Enum.any?(findings, &(&1.severity == :critical)), do: :critical, else: :warning)

  @doc false
  # The gate's alert of `type` from its findings in snapshot `snapshot_id`,
  # detected at `at` (the wall clock, passed in).
  @spec gate_alert(watcher(), String.t(), [map()], String.t(), pos_integer(), DateTime.t()) ::
          Alert.t()
  def gate_alert(w, type, findings, snapshot_id, occurrences, at) do
    findings = Enum.sort_by(findings, &{&1.severity == :critical, &1.value}, :desc)
    lead = hd(findings)
    severity = severity(findings)

    Alert.new(
      watcher: w.name,
      severity: severity,
      state: severity,
      anomaly_type: type,
      summary: name_culprit(w, Status.summarize(w.domain, lead, w.metrics[lead.name]), findings),
      observation: Enum.map_join(findings, "; ", &describe_finding(&1, w.metrics[&1.name])),
      hypothesis: hypothesis(w.domain, type),
      evidence: %{snapshot_ids: [snapshot_id], values: evidence_values(findings)},
      entities: entities(w, findings),
      source: :gate,
      occurrences: occurrences,
      detected_at: at
    )
  end

  @doc false
  # The model's alert (the validated fire_alert arguments) about the
  # findings `related` to it, detected at `at`.
  @spec model_alert(watcher(), map(), [map()], pos_integer(), DateTime.t()) :: Alert.t()
  def model_alert(w, attrs, related, occurrences, at) do
    Alert.new(
      watcher: w.name,
      severity: attrs.severity,
      state: w.status,
      anomaly_type: attrs.anomaly_type,
      summary: name_culprit(w, attrs.summary, related),
      observation: attrs.observation,
      hypothesis: attrs.hypothesis,
      evidence: %{snapshot_ids: attrs.snapshot_ids, values: evidence_values(related)},
      entities: entities(w, related),
      source: :llm,
      occurrences: occurrences,
      detected_at: at
    )
  end

  @doc false
  # What the model's alert says, for `decide/5`.
  @spec model_candidate(map(), [map()]) :: candidate()
  def model_candidate(attrs, related),
    do: %{severity: attrs.severity, values: evidence_values(related), escalated?: false}

  @doc false
  # The findings a model alert is about: those of its anomaly type firing
  # now, else those the gate found in the running check (`found`: anomaly
  # type => {findings, snapshot_id}).
  @spec related_findings(watcher(), String.t(), map()) :: [map()]
  def related_findings(w, type, found) do
    case Enum.filter(Map.values(w.firing), &(anomaly_type(w, &1) == type)) do
      [] ->
        case found[type] do
          {findings, _snapshot_id} -> findings
          _ -> []
        end

      firing ->
        firing
    end
  end

  @doc false
  # The anomaly type of a finding's metric ("unknown" when the metric is gone).
  @spec anomaly_type(watcher(), map()) :: String.t()
  def anomaly_type(w, finding) do
    case w.metrics[finding.name] do
      %{anomaly_type: type} -> type
      _ -> "unknown"
    end
  end

  defp evidence_values(findings) do
    Map.new(
      findings,
      &{&1.name, Map.take(&1, [:value, :baseline, :threshold, :z, :severity, :samples])}
    )
  end

  # Every alert names the top contributor the domain measured (the growing
  # table, the leaking process group, the module that logs...), whoever
  # wrote the summary.
  defp name_culprit(w, summary, findings) do
    Enum.find_value(findings, summary, fn finding ->
      with %{} = metric <- w.metrics[finding.name],
           culprit when is_binary(culprit) <- Beamlens.Domain.culprit(metric) do
        Beamlens.Domain.with_culprit(summary, culprit, Map.get(metric, :entities, []))
      end
    end)
  end

  defp entities(w, findings) do
    findings
    |> Enum.flat_map(&Map.get(w.metrics[&1.name] || %{}, :entities, []))
    |> Enum.uniq()
  end

  @doc false
  # The domain's likely cause of an anomaly type (nil when it raises).
  @spec hypothesis(module(), String.t()) :: String.t() | nil
  def hypothesis(domain, type) do
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

    "#{finding.name} = #{fmt.(finding.value)}#{span(finding)} (#{base}#{z}; #{finding.severity} for #{finding.samples} sample(s))"
  end

  # How the gate measured it: events over a window (counters), or the floor
  # over a window (growth).
  defp span(finding) do
    window = Map.get(finding, :window_ms)
    seconds = window && Float.round(window / 1000, 1)

    case Map.get(finding, :count) do
      count when is_number(count) and is_number(window) -> ", #{round(count)} in #{seconds} s"
      _ when is_number(window) -> ", lowest over #{seconds} s"
      _ -> ""
    end
  end
end
