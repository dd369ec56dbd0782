defmodule Beamlens.Gate do
  @moduledoc """
  The anomaly gate: a per-watcher judge, in Rust, that decides from numbers
  alone whether a snapshot deserves attention.

  Each metric of a domain (see `t:Beamlens.Domain.metric/0`) is judged by
  its kind:

    * `:limit` - against `:warn` and `:critical` from the first sample
      (for example atom table usage above 50%).
    * `:level` - against a robust baseline (median and MAD of recent normal
      samples) learned during `warmup` snapshots and at least `warmup_ms`. It fires when the value is
      above the baseline by more than `z_threshold` robust deviations *and*
      by `:min_rel` (fraction, default 0.5) *and* by `:min_abs`; it is
      critical above `1 + :critical_rel` times the baseline (default 3x).
    * `:counter` - a monotonic counter turned into a per-second rate, then
      judged like `:level`, and against `:warn`/`:critical` when given
      (limits apply from the first rate, baselines after warm-up). With `:window_ms` the rate is the count of events over that trailing
      window (or over the last tick, when ticks are longer), so a workload
      gets the same verdict at a 500 ms and at a 30 s tick; `:min_count` is
      the fewest events in the judged span that can fire (a "burst" or a
      "storm" needs several events: one log line or one restart never
      fires). The window replaces `:sustain`.
    * `:growth` - a level that can leak (process count, ETS memory), judged
      on its floor: the lowest value over the trailing `:window_ms`
      (default 5 s, and at least four ticks). A spike that comes back within
      the window never moves the floor; growth that stays does. Floors are
      judged like `:level`; before a baseline exists (warm-up) the floor of a
      metric present since the gate's first snapshot is judged against its
      first value with `:min_rel`/`:min_abs`, so a leak that starts at boot
      is still found (a metric that appears later, such as a new table,
      waits for its own baseline).

  A metric fires after `:sustain` consecutive anomalous samples (default 2)
  and clears when it is back under a lower level (hysteresis). Values seen
  while it fires stay out of the baseline; after `relearn_after` samples of
  continuous firing, the level is accepted as the new normal. After
  clearing, a metric is quiet for `cooldown_ms` and fires at most
  `max_fires_per_hour` times, except that escalation always gets through:
  an episode that is clearly worse than the last one reported (a higher
  severity, or `escalate_ratio` times its peak value) fires with status
  `"escalated"` during the cooldown and over the cap, so an early false
  alarm cannot silence a real incident. A gate tracks at most 512 metrics.

  Observing a few dozen metrics takes microseconds.
  """

  alias Beamlens.{Error, Native}

  @type t :: reference()

  @type verdict :: %{
          findings: [Beamlens.Domain.finding()],
          cleared: [%{name: String.t(), reason: String.t()}],
          pending: [String.t()],
          dropped: [String.t()]
        }

  @schema [
    warmup: [
      type: :non_neg_integer,
      default: 10,
      doc: "Samples a baseline learns from before it judges (together with `:warmup_ms`)."
    ],
    warmup_ms: [
      type: :non_neg_integer,
      default: 60_000,
      doc: "Milliseconds since a metric's first sample before its baseline judges."
    ],
    growth_window_ms: [
      type: :pos_integer,
      default: nil,
      doc: "Overrides the window of every `:growth` metric."
    ],
    window: [type: :pos_integer, default: 120, doc: "Normal samples kept per baseline."],
    z_threshold: [
      type: :number,
      default: 4.0,
      doc: "Robust deviations above the baseline from which a value is anomalous."
    ],
    cooldown_ms: [
      type: :non_neg_integer,
      default: 900_000,
      doc: "Milliseconds after clearing during which a metric does not fire again."
    ],
    max_fires_per_hour: [
      type: :non_neg_integer,
      default: 3,
      doc: "Most firings of one metric per hour."
    ],
    relearn_after: [
      type: :pos_integer,
      default: 240,
      doc: "Samples of continuous firing after which the level is the new normal."
    ],
    escalate_ratio: [
      type: :number,
      default: 2.0,
      doc: "A value this many times the last one reported fires again as an escalation."
    ]
  ]

  @sample_keys [:warn, :critical, :min_rel, :min_abs, :critical_rel, :sustain, :min_count]

  @doc """
  Creates a gate. Options:

  #{Beamlens.Schema.docs(@schema)}
  """
  @spec new(keyword()) :: {:ok, t()} | {:error, Error.t()}
  def new(opts \\ []) do
    with {:ok, config} <- Beamlens.Schema.validate(opts, @schema, label: "gate option") do
      config = Map.new(config, fn {k, v} -> {Atom.to_string(k), v} end)
      Error.wrap(Native.gate_new(config))
    end
  end

  @doc """
  The default of each gate option.

      iex> Beamlens.Gate.defaults()[:z_threshold]
      4.0
  """
  @spec defaults() :: keyword()
  def defaults, do: Beamlens.Schema.defaults(@schema)

  @doc """
  Feeds the metrics of one snapshot taken at `now_ms` and returns the
  verdict. `now_ms` is a non-negative, non-decreasing millisecond clock,
  such as the time since the watcher started.
  """
  @spec observe(t(), [Beamlens.Domain.metric()], integer()) ::
          {:ok, verdict()} | {:error, Error.t()}
  def observe(gate, metrics, now_ms) when is_integer(now_ms) and now_ms >= 0 do
    samples = Enum.map(metrics, &to_sample/1)

    with {:ok, verdict} <- Error.wrap(Native.gate_observe(gate, samples, now_ms)) do
      {:ok,
       %{
         findings: Enum.map(verdict["findings"], &to_finding/1),
         cleared: Enum.map(verdict["cleared"], &%{name: &1["name"], reason: &1["reason"]}),
         pending: verdict["pending"],
         dropped: verdict["dropped"]
       }}
    end
  end

  defp to_sample(metric) do
    base = %{
      "name" => metric.name,
      "value" => metric.value * 1.0,
      "kind" => Atom.to_string(metric.kind)
    }

    base =
      case Map.fetch(metric, :window_ms) do
        {:ok, ms} when is_integer(ms) and ms > 0 -> Map.put(base, "window_ms", ms)
        _ -> base
      end

    Enum.reduce(@sample_keys, base, fn key, acc ->
      case Map.fetch(metric, key) do
        {:ok, value} when is_number(value) -> Map.put(acc, Atom.to_string(key), value)
        _ -> acc
      end
    end)
  end

  defp to_finding(f) do
    %{
      name: f["name"],
      severity: if(f["severity"] == "critical", do: :critical, else: :warning),
      status: f["status"],
      value: f["value"],
      baseline: f["baseline"],
      threshold: f["threshold"],
      z: f["z"],
      samples: f["samples"],
      count: f["count"],
      window_ms: f["window_ms"]
    }
  end
end
