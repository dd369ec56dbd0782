defmodule Beamlens.Telemetry do
  @moduledoc """
  Telemetry events emitted by BeamLens.

  Every event name starts with `:beamlens`. Attach with `:telemetry.attach/4`
  or `:telemetry.attach_many/4`; handlers run in the emitting BeamLens
  process, so keep them fast.

  ## Watchers

  Emitted by each watcher process. Metadata always has `:watcher` (its name).

    * `[:beamlens, :watcher, :alert_fired]` - an alert went out.
      * Measurements: `:system_time`.
      * Metadata: `:alert` (`Beamlens.Alert`; `alert.source` is `:gate` or `:llm`).

    * `[:beamlens, :watcher, :alert_folded]` - a repeat of an open alert
      (same fingerprint, within `:alert_cooldown`, and not clearly worse)
      was folded into it instead of firing again.
      * Measurements: `:occurrences` (the count of detections folded into
        the open alert so far, this one included).
      * Metadata: `:alert` (the open alert, with the new count).

    * `[:beamlens, :watcher, :alert_escalated]` - a repeat of an open alert
      was clearly worse (a higher severity, or a figure `:escalate_ratio`
      times the open alert's, see the `:gate` option), so it fired again
      (an `:alert_fired` event precedes this one) instead of being folded.
      An early false alarm never silences a real incident.
      * Measurements: `:occurrences` (of the new alert).
      * Metadata: `:alert` (the new alert), `:previous` (the open alert it
        supersedes), `:reason` (a sentence), `:from`, `:to` (severities),
        `:values`, `:previous_values` (the gate's figures by metric name).

    * `[:beamlens, :watcher, :reply_timeout]` - a model reply or a Lua
      result a check waited for did not come within `:reply_timeout`; the
      check went on without it (a model request ends the check as
      `:llm_timeout`, a Lua run gets an error result).
      * Measurements: `:timeout` (ms).
      * Metadata: `:awaiting` (`:llm`, `:compaction` or `:lua`).

    * `[:beamlens, :watcher, :state_changed]` - the watcher's state changed.
      * Measurements: `:system_time`.
      * Metadata: `:from`, `:to` (`:healthy | :observing | :warning |
        :critical`), `:reason` (a sentence).

    * `[:beamlens, :watcher, :snapshot_failed]` - a snapshot raised, exited
      or timed out; the watcher carries on.
      * Measurements: `:count` (1).
      * Metadata: `:error` (a message).

    * `[:beamlens, :watcher, :check]` - a model check (one wake-up) ended.
      * Measurements: `:duration` (ms), `:iterations` (model requests),
        `:tokens` (input + output), `:corrections` (invalid, unknown or
        repeated tool calls, replies without one, and alerts the gate's
        measurements contradict, each answered with a correction).
      * Metadata: `:reason` (why it woke: `"gate findings"`, `"heartbeat"`,
        ...), `:outcome` (`:done`, `:wait`, `:iteration_cap`,
        `:too_many_corrections`, or `:llm_<reason>` when the model request
        failed), `:gate_alerts` (gate alerts fired for anomalies the model
        did not report: when `:gate_alert_grace` ran out, or at its end).

    * `[:beamlens, :watcher, :tool_call]` - the model called a tool and got
      its result.
      * Measurements: `:count` (1).
      * Metadata: `:tool`, `:arguments` (as the model sent them, or as
        recovered from its text; `nil` when unparsable), `:result` (the
        first 500 characters the model got back), `:error?` (the call was
        refused with a correction, or its Lua script failed).

    * `[:beamlens, :watcher, :paused]` and `[:beamlens, :watcher, :resumed]` -
      `Beamlens.pause/2` or `Beamlens.resume/2` was called.
      * Measurements: `:count` (1).
      * Metadata: `:for` (ms, or `:infinity`) for `:paused`.

  ## Investigations

    * `[:beamlens, :investigation, :start | :stop | :exception]` - a span
      around `Beamlens.investigate/2`, in the task that runs it.
      * Start metadata: `:question`, `:watchers`.
      * Stop measurements: `:duration`, `:input_tokens`, `:output_tokens`.
      * Stop metadata: also `:model_used`, `:outcome`, `:findings` (count).

  ## Compaction

    * `[:beamlens, :compaction, :start]` - a watcher's conversation is over
      its `:compaction_max_tokens` and is being summarised.
      * Measurements: `:tokens` (estimated). Metadata: `:watcher`.

    * `[:beamlens, :compaction, :stop]` - older messages were replaced by a
      summary (or dropped when summarising failed).
      * Measurements: `:tokens_before`, `:tokens_after`, `:messages_removed`.
      * Metadata: `:watcher`, `:method` (`:summary` or `:truncate`).

  ## Lua sandbox

  Emitted by the process that serves a `Beamlens.Lua` run: the caller of
  `Beamlens.Lua.eval/3` for a run it executes inline, otherwise the run's
  own process.

    * `[:beamlens, :lua, :execute, :start]` - a run started.
      * Measurements: `%{system_time: integer, monotonic_time: integer}`
      * Metadata: `%{callbacks: [String.t()]}` merged with the run's
        `:telemetry_metadata` option.

    * `[:beamlens, :lua, :execute, :stop]` - a run ended, successfully or
      not (a failed script is a result, so there is no `:exception` event).
      * Measurements: `%{duration: native_time, monotonic_time: integer,
        instructions: integer, callbacks: integer, memory: bytes}`
        (the last three are absent when the run never started in Lua)
      * Metadata: the start metadata plus `result: :ok | :error`,
        `error: Beamlens.LuaError.kind() | nil` and `path: :inline |
        :thread` (whether the run finished in the calling process or on
        the native thread pool; see `Beamlens.Lua`).

  ## LLM requests

  Emitted by `Beamlens.LLM` in the process that made the request. All
  durations and times are in `:native` time units.

    * `[:beamlens, :llm, :request, :start]` - a request was handed to the
      native client.
      * Measurements: `:monotonic_time`, `:system_time`.
      * Metadata: `:provider` and `:model` (the first of the chain),
        `:caller` (the `:caller` option), `:telemetry_span_context`.

    * `[:beamlens, :llm, :request, :stop]` - the request succeeded.
      * Measurements: `:duration`, `:monotonic_time`, `:input_tokens`,
        `:output_tokens`, `:cache_read_tokens`, `:cache_write_tokens`,
        `:total_tokens` (the sum of the four; `:input_tokens` excludes
        cached input).
      * Metadata: `:provider` and `:model` (who answered), `:caller`,
        `:stop_reason`, `:attempts` (HTTP attempts over the chain),
        `:fallback?` (a later provider of the chain answered),
        `:telemetry_span_context`.

    * `[:beamlens, :llm, :request, :exception]` - the request ended in an
      error (after retries and fallbacks).
      * Measurements: `:duration`, `:monotonic_time`.
      * Metadata: `:provider` (the one that failed last), `:model`,
        `:caller`, `:kind` (`:error`), `:reason` (the `Beamlens.LLMError`),
        `:stacktrace` (`[]`), `:telemetry_span_context`.

    * `[:beamlens, :llm, :budget_exceeded]` - a request was refused because
      the hourly token budget is used up (`Beamlens.LLM.set_budget/1`).
      No start event precedes it.
      * Measurements: `:used` (tokens in the last 60 minutes), `:budget`.
      * Metadata: `:provider`, `:model`, `:caller`.

  No event carries an API key or other credential.

  ## Coordinator

  Emitted by `Beamlens.Coordinator`. Insight events come only from the
  cluster's leader coordinator.

    * `[:beamlens, :coordinator, :insight_produced]` - a group of related
      alerts became an insight.
      Measurements: `:system_time`, `:version`, `:alert_count`, `:confidence`.
      Metadata: `:insight` (`Beamlens.Insight`).

    * `[:beamlens, :coordinator, :insight_updated]` - more alerts joined an
      insight, its severity rose, its correlation became stronger, or other
      insights were merged into it (listed in `insight.merged_ids`). Same id,
      higher `insight.version`.
      Measurements and metadata: as for `:insight_produced`.

    * `[:beamlens, :coordinator, :alert_dropped]` - `report_alert/2` dropped
      an alert because the coordinator was not running or its mailbox was
      full. Emitted in the process that reported the alert.
      Measurements: `:count` (1).
      Metadata: `:alert`, `:reason` (`:not_running` or `:overloaded`),
      `:coordinator` (the server it was sent to).

    * `[:beamlens, :coordinator, :leader_changed]` - a coordinator's view of
      which coordinator leads the cluster changed (emitted on every node,
      also when a coordinator starts).
      Measurements: `:members` (coordinators in the group).
      Metadata: `:coordinator` (its name), `:leader` (node of the leader),
      `:previous` (node of the previous leader, or `nil`).

    * `[:beamlens, :coordinator, :summary_failed]` - the summarizer failed,
      raised or timed out; the insight went out with its deterministic text.
      Measurements: `:count` (1).
      Metadata: `:insight`, `:reason`.
  """

  # `:telemetry` is a dependency of the host application (Phoenix, Ecto and
  # Plug all bring it), not of BeamLens when built offline.
  @compile {:no_warn_undefined, :telemetry}

  @doc """
  Emits `[:beamlens | suffix]` with the given measurements and metadata.

  Does nothing when the `:telemetry` library is not available.
  """
  @spec execute([atom()], map(), map()) :: :ok
  def execute(suffix, measurements, metadata \\ %{}) when is_list(suffix) do
    if available?() do
      :telemetry.execute([:beamlens | suffix], measurements, metadata)
    end

    :ok
  end

  @doc """
  Runs `fun` inside a `[:beamlens | suffix]` span (`:start`, then `:stop` or
  `:exception`). `fun` returns `{result, stop_metadata}` or
  `{result, extra_measurements, stop_metadata}`, as with `:telemetry.span/3`.
  """
  @spec span([atom()], map(), (() -> {term(), map()} | {term(), map(), map()})) :: term()
  def span(suffix, metadata, fun) when is_list(suffix) and is_function(fun, 0) do
    if available?() do
      :telemetry.span([:beamlens | suffix], metadata, fun)
    else
      case fun.() do
        {result, _metadata} -> result
        {result, _measurements, _metadata} -> result
      end
    end
  end

  # `:erlang.module_loaded/1` is a cheap BIF; the code server is asked only
  # once (loading the module if it is on the code path), not per event.
  defp available? do
    :erlang.module_loaded(:telemetry) or
      (:persistent_term.get({__MODULE__, :looked_up}, false) == false and look_up())
  end

  defp look_up do
    :persistent_term.put({__MODULE__, :looked_up}, true)
    Code.ensure_loaded?(:telemetry)
  end
end
