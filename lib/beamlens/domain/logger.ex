defmodule Beamlens.Domain.Logger do
  @moduledoc """
  The `:logger` domain: error, warning and connection-error rates from the
  application's logs, the modules that log the most errors, and the recent
  errors themselves.

  Log events are captured by a bounded `:logger` handler (the last 500
  warnings and errors, capped at 1 KiB each; counters for everything else)
  that BeamLens installs while a `:logger`, `:sup` or `:exception` watcher
  runs.
  """

  use Beamlens.Domain

  alias Beamlens.LogStore

  @impl true
  def name, do: :logger

  @impl true
  def description do
    "Application logs: error/warning rates, connection errors, modules with most errors, recent errors."
  end

  @impl true
  def stores(_watcher_opts), do: [Beamlens.LogStore]

  @impl true
  def snapshot do
    totals = LogStore.totals()

    %{
      errors_total: Map.get(totals, :errors, 0),
      warnings_total: Map.get(totals, :warning, 0),
      connection_errors_total: Map.get(totals, :connection_errors, 0),
      crash_reports_total: Map.get(totals, :crash_reports, 0),
      top_modules: LogStore.top_modules(5),
      recent_errors: LogStore.recent(5, :error),
      recent_error_modules: recent_modules(:error),
      recent_warning_modules: recent_modules(:warning)
    }
  end

  @recent_window 25
  @recent_max_age_us 600_000_000

  # The modules behind the most recent errors (or warnings) of the last ten
  # minutes: the culprit of a burst is who logs now, not who logged most
  # since the start.
  defp recent_modules(level) do
    # Event times are ISO 8601 strings in UTC with microseconds: they
    # compare as strings.
    since =
      (System.system_time(:microsecond) - @recent_max_age_us)
      |> DateTime.from_unix!(:microsecond)
      |> DateTime.to_iso8601()

    @recent_window
    |> LogStore.recent(level)
    |> Enum.filter(&((level == :error or &1.level == :warning) and recent?(&1, since)))
    |> Enum.map(& &1[:module])
    |> Enum.reject(&(&1 in [nil, "unknown", "other"]))
    |> Beamlens.Domain.recent_leaders(3)
    |> Enum.map(fn {module, count} -> %{module: module, count: count} end)
  end

  @impl true
  def metrics(s) do
    errors = module_culprit(Map.get(s, :recent_error_modules, []), "errors")
    warnings = module_culprit(Map.get(s, :recent_warning_modules, []), "warnings")

    [
      %{
        name: "logger.errors",
        label: "error log rate",
        value: s.errors_total,
        kind: :counter,
        window_ms: 10_000,
        min_count: 10,
        unit: :per_second,
        anomaly_type: "error_log_burst",
        min_rel: 2.0,
        min_abs: 0.5,
        warn: 10,
        critical: 100,
        sustain: 1
      }
      |> Map.merge(errors),
      %{
        name: "logger.warnings",
        label: "warning log rate",
        value: s.warnings_total,
        kind: :counter,
        window_ms: 10_000,
        min_count: 20,
        unit: :per_second,
        anomaly_type: "warning_log_burst",
        min_rel: 3.0,
        min_abs: 2,
        sustain: 2
      }
      |> Map.merge(warnings),
      %{
        name: "logger.connection_errors",
        label: "connection error rate in logs",
        value: s.connection_errors_total,
        kind: :counter,
        window_ms: 10_000,
        min_count: 5,
        unit: :per_second,
        anomaly_type: "connection_errors",
        min_rel: 2.0,
        min_abs: 0.2,
        warn: 1,
        critical: 20,
        sustain: 1
      }
      |> Map.merge(errors)
    ]
  end

  defp recent?(%{time: time}, since) when is_binary(time), do: time >= since
  defp recent?(_event, _since), do: true

  defp module_culprit([], _what), do: %{entities: []}

  defp module_culprit(modules, what) do
    %{
      entities: Enum.map(modules, &{"module", &1.module}),
      culprit:
        modules
        |> Enum.with_index()
        |> Enum.map_join(", ", fn
          {m, 0} -> "module #{m.module} (#{m.count} recent #{what})"
          {m, _} -> "#{m.module} (#{m.count})"
        end)
    }
  end

  @impl true
  def hypothesis("error_log_burst"),
    do: "Something started failing repeatedly; the modules logging most errors point at where."

  def hypothesis("warning_log_burst"),
    do: "A degraded dependency or retry loop is logging warnings."

  def hypothesis("connection_errors"),
    do:
      "A dependency (database, HTTP service, socket peer) is refusing or dropping connections, or file descriptors ran out."

  def hypothesis(_), do: nil

  @impl true
  def callbacks do
    [
      %{
        name: "recent",
        args: "(n, level)",
        doc:
          "The n (max 100) most recent log events at level \"error\" (and worse), \"warning\" " <>
            "(and worse) or \"all\": time, level, module, pid, message (redacted, max 1 KiB).",
        fun: &recent/2
      },
      %{
        name: "search",
        args: "(text, n)",
        doc:
          "Up to n (max 100) stored events whose message contains text (case-insensitive, plain text, not a pattern).",
        fun: &search/2
      },
      %{
        name: "top_modules",
        args: "(n)",
        doc: "The n (max 50) modules with the most errors and warnings since BeamLens started.",
        fun: fn n -> LogStore.top_modules(cap(n, 50)) end
      },
      %{
        name: "totals",
        args: "()",
        doc:
          "Event counts per level since BeamLens started, plus restarts, crash reports, connection errors.",
        fun: &LogStore.totals/0
      }
    ]
  end

  @doc false
  @spec recent(number(), String.t()) :: [map()]
  def recent(n, level) when level in ["error", "warning", "all"] do
    level = %{"error" => :error, "warning" => :warning, "all" => :all}[level]
    n |> cap(100) |> LogStore.recent(level) |> Enum.map(&present/1)
  end

  def recent(_n, level),
    do:
      raise(
        ArgumentError,
        "level must be \"error\", \"warning\" or \"all\", got: #{inspect(level)}"
      )

  @doc false
  @spec search(String.t(), number()) :: [map()]
  def search(text, n) when is_binary(text) do
    text |> LogStore.search(cap(n, 100)) |> Enum.map(&present/1)
  end

  def search(text, _n), do: raise(ArgumentError, "text must be a string, got: #{inspect(text)}")

  defp present(event), do: Map.update!(event, :level, &Atom.to_string/1)

  defp cap(n, max) when is_number(n), do: n |> trunc() |> max(1) |> min(max)
  defp cap(n, _max), do: raise(ArgumentError, "n must be a number, got: #{inspect(n)}")
end
