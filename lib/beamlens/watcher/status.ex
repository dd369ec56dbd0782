defmodule Beamlens.Watcher.Status do
  # A watcher's wake policy and state floor, as pure functions of its state
  # and a clock passed in (`now`: ms on the watcher's clock, see
  # `Beamlens.Watcher`). No process, no clock read, no telemetry: the
  # watcher emits `[:beamlens, :watcher, :state_changed]` when the state it
  # gets from here differs from the one it had.
  #
  # Wake policy: the model never looks without a provider, while paused or
  # while the token budget is spent; it always looks in `:always` mode; in
  # `:gated` mode on new findings, on check_now/2, every few ticks while
  # the state is not healthy (unless it asked to wait) and on the heartbeat.
  #
  # State floor: the gate sets a floor. The model may raise the state, or
  # lower it only as far as what the gate still sees firing.
  @moduledoc false

  @routine_every_ticks 5
  @order %{healthy: 0, observing: 1, warning: 2, critical: 3}

  @type status :: :healthy | :observing | :warning | :critical

  @doc false
  # Why the model should look now, or nil. `w` is the watcher's state (the
  # fields read: llm, opts, tick, status, model_status, check_requested,
  # llm_paused_until, sleep_until, last_wake_tick, last_wake_at), `groups`
  # the new gate findings of this tick by anomaly type.
  @spec wake_reason(map(), map(), integer()) :: String.t() | nil
  def wake_reason(%{llm: nil}, _groups, _now), do: nil

  def wake_reason(w, groups, now) do
    since_last = if w.last_wake_tick, do: w.tick - w.last_wake_tick, else: nil

    cond do
      now < w.llm_paused_until ->
        nil

      w.check_requested ->
        "check requested"

      map_size(groups) > 0 ->
        "gate findings"

      w.opts[:llm] == :always ->
        "continuous check"

      now < w.sleep_until ->
        nil

      follow_up?(w) and (since_last == nil or since_last >= @routine_every_ticks) ->
        "state is #{w.status}"

      heartbeat_due?(w, now) ->
        "heartbeat"

      true ->
        nil
    end
  end

  # Routine follow-ups while something is wrong, or while the model said it
  # is observing. The gate's own "observing" (an anomaly not yet sustained)
  # waits for the gate to decide.
  defp follow_up?(w), do: w.status in [:warning, :critical] or w.model_status == :observing

  defp heartbeat_due?(w, now) do
    case w.opts[:heartbeat] do
      :infinity -> false
      ms -> now - (w.last_wake_at || 0) >= ms
    end
  end

  @doc false
  # Whether the watcher is paused at `now` (`paused_until`: nil, :infinity
  # or a time on the watcher's clock).
  @spec paused?(map(), integer()) :: boolean()
  def paused?(%{paused_until: nil}, _now), do: false
  def paused?(%{paused_until: :infinity}, _now), do: true
  def paused?(%{paused_until: until}, now), do: now < until

  @doc false
  # The state and its reason: the model's state (`model_status`, with
  # `model_reason` or the current reason) when it is at least the gate's,
  # else the gate's. `w` has status_reason, model_status, firing (findings
  # by metric name), pending (metric names), metrics and domain.
  @spec resolve(map(), String.t() | nil) :: {status(), String.t()}
  def resolve(w, model_reason \\ nil) do
    {gate_status, gate_reason} = gate_status(w)
    model_status = w.model_status

    if model_status != nil and @order[model_status] >= @order[gate_status],
      do: {model_status, model_reason || w.status_reason},
      else: {gate_status, gate_reason}
  end

  @doc false
  # What the gate alone says: critical or warning while findings of that
  # severity fire, observing while metrics are pending, else healthy.
  @spec gate_status(map()) :: {status(), String.t()}
  def gate_status(w) do
    cond do
      Enum.any?(w.firing, fn {_, f} -> f.severity == :critical end) ->
        {:critical, firing_reason(w, :critical)}

      map_size(w.firing) > 0 ->
        {:warning, firing_reason(w, :warning)}

      w.pending != [] ->
        {:observing, "watching #{Enum.join(w.pending, ", ")}"}

      true ->
        {:healthy, "all metrics within their baselines and limits"}
    end
  end

  defp firing_reason(w, severity) do
    w.firing
    |> Enum.filter(fn {_, f} -> f.severity == severity end)
    |> Enum.map_join("; ", fn {name, f} -> summarize(w.domain, f, w.metrics[name]) end)
  end

  @doc false
  # The domain's one-line summary of a finding; the default one when the
  # domain's own raises.
  @spec summarize(module(), map(), map() | nil) :: String.t()
  def summarize(domain, finding, metric) do
    domain.summarize(finding, metric || %{label: finding.name})
  rescue
    _ -> Beamlens.Domain.default_summary(finding, metric || %{label: finding.name})
  end
end
