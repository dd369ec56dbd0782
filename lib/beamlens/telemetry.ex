defmodule Beamlens.Telemetry do
  @moduledoc """
  Telemetry events emitted by BeamLens.

  Every event name starts with `:beamlens`. Attach with `:telemetry.attach/4`
  or `:telemetry.attach_many/4`; handlers run in the emitting BeamLens
  process, so keep them fast.

  The events are listed here as the subsystems that emit them are added.

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

  defp available? do
    :erlang.module_loaded(:telemetry) or Code.ensure_loaded?(:telemetry)
  end
end
