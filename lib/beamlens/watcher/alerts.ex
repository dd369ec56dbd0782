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
  @moduledoc false

  alias Beamlens.Alert

  @order %{warning: 0, critical: 1}

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
end
