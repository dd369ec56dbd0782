//! The anomaly gate: decides, from numbers alone, whether a snapshot is worth
//! a look. It runs on every tick of every watcher, so it is cheap (a few
//! microseconds for dozens of metrics) and never calls out.
//!
//! Each metric is judged by its kind:
//!
//! * `Limit`: a hard limit on the value (for example atoms used / atom
//!   limit). Judged from the first sample, no warm-up.
//! * `Level`: a robust baseline (median and MAD of the recent normal samples)
//!   learned during `warmup` samples; the value is anomalous when it is far
//!   above the baseline in robust z-score *and* in relative and absolute
//!   terms. The scale has a floor, so a metric that was perfectly flat can
//!   still trigger when it moves (a weakness of plain z-scores).
//! * `Counter`: a monotonic counter (GC runs, log lines, restarts). The gate
//!   turns it into a per-second rate and judges the rate like `Level`, plus
//!   optional hard limits on the rate. With `window_ms` the rate is the count
//!   of events over the trailing window (or over the last tick, when ticks
//!   are longer), so the same workload gets the same verdict at a 500 ms and
//!   at a 30 s tick; `min_count` is the fewest events in that span that can
//!   ever fire (a burst needs several events, one log line never fires), and
//!   the window replaces `sustain`.
//! * `Growth`: a level that leaks (process count, ETS memory). It is judged
//!   on its floor, the lowest value over the trailing `window_ms` (at least
//!   four ticks): a spike that comes back within the window never moves the
//!   floor, growth that stays does. Floors are judged like `Level` against a
//!   baseline of floors; before that baseline exists (warm-up) the floor of
//!   a metric seen since the gate's first observation is judged against its
//!   first value, so a leak that starts at boot is still found.
//!
//! A metric has to be anomalous for `sustain` consecutive samples before it
//! fires (hysteresis on the way in), and clears only once it is back under
//! the lower `clear` level (hysteresis on the way out). Samples taken while a
//! metric is firing are kept out of its baseline, so a leak cannot teach the
//! gate that the leak is normal; after `relearn_after` samples of continuous
//! firing the baseline is rebuilt from recent values (a level shift is
//! accepted as the new normal, and said so). After clearing, a metric stays
//! quiet for `cooldown_ms`, and it fires at most `max_fires_per_hour` times.
//!
//! Escalation always gets through: a value `escalate_ratio` times the last
//! one reported (or a higher severity) is reported as `"escalated"`, while
//! firing and also during the cooldown or over the hourly cap, so an early
//! false alarm cannot silence a real incident.
//!
//! The number of metrics per gate is bounded; metrics not seen for a while
//! are evicted first.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Most distinct metric names one gate tracks.
pub const MAX_METRICS: usize = 512;
const HOUR_MS: u64 = 3_600_000;
/// Most points of history kept per windowed metric; closer points merge.
const MAX_POINTS: usize = 256;
/// A growth floor spans at least this many ticks.
const GROWTH_MIN_TICKS: u64 = 4;
/// Default window of `Growth` metrics.
const DEFAULT_GROWTH_WINDOW_MS: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Limit,
    Level,
    Counter,
    Growth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

/// Gate-wide settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Samples a `Level`/`Counter`/`Growth` metric needs in its baseline
    /// before the baseline judges it ...
    pub warmup: usize,
    /// ... and time since its first sample, so that a fast tick does not
    /// shorten the warm-up below a few cycles of a busy app.
    pub warmup_ms: u64,
    /// Overrides the window of every `Growth` metric (tests, tuning).
    pub growth_window_ms: Option<u64>,
    /// Normal samples kept per metric for the baseline.
    pub window: usize,
    /// Robust z-score above which a value is anomalous.
    pub z_threshold: f64,
    /// After clearing, a metric does not fire again for this long.
    pub cooldown_ms: u64,
    /// A metric fires at most this often per hour.
    pub max_fires_per_hour: usize,
    /// Samples of continuous firing after which the baseline is rebuilt.
    pub relearn_after: usize,
    /// A value this many times the last one reported is an escalation: it is
    /// reported even during the cooldown or over the hourly cap.
    pub escalate_ratio: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            warmup: 10,
            warmup_ms: 60_000,
            growth_window_ms: None,
            window: 120,
            z_threshold: 4.0,
            cooldown_ms: 15 * 60 * 1000,
            max_fires_per_hour: 3,
            relearn_after: 240,
            escalate_ratio: 2.0,
        }
    }
}

/// One sample of one metric, with how to judge it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub name: String,
    pub value: f64,
    pub kind: Kind,
    /// Limits (for `Limit`, and optional rate limits for `Counter`).
    #[serde(default)]
    pub warn: Option<f64>,
    #[serde(default)]
    pub critical: Option<f64>,
    /// For `Level`/`Counter`: the value must exceed the baseline by at least
    /// this fraction (0.5 = +50%) ...
    #[serde(default = "default_min_rel")]
    pub min_rel: f64,
    /// ... and by at least this absolute amount.
    #[serde(default)]
    pub min_abs: f64,
    /// For `Level`/`Counter`: relative excess that makes it critical
    /// (1.0 = twice the baseline).
    #[serde(default = "default_critical_rel")]
    pub critical_rel: f64,
    /// Consecutive anomalous samples needed to fire (not used by windowed
    /// counters: their window is the hysteresis).
    #[serde(default = "default_sustain")]
    pub sustain: usize,
    /// For `Counter`: judge the count over this trailing window. For
    /// `Growth`: the span of the floor (default 5 s).
    #[serde(default)]
    pub window_ms: Option<u64>,
    /// For `Counter`: fewest events in the judged span that can fire.
    #[serde(default)]
    pub min_count: f64,
}

fn default_min_rel() -> f64 {
    0.5
}
fn default_critical_rel() -> f64 {
    2.0
}
fn default_sustain() -> usize {
    2
}

/// What the gate says about a metric that is firing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub name: String,
    pub severity: Severity,
    /// `"new"` on the sample it starts firing, `"escalated"` when it goes
    /// from warning to critical or to `escalate_ratio` times the value last
    /// reported (also when that happens during the cooldown), `"ongoing"`
    /// otherwise.
    pub status: &'static str,
    /// The judged value (for counters: the rate per second).
    pub value: f64,
    /// The baseline median, when there is one.
    pub baseline: Option<f64>,
    /// The level that was crossed.
    pub threshold: f64,
    /// Robust z-score against the baseline, when there is one.
    pub z: Option<f64>,
    /// Samples this metric has been firing.
    pub samples: usize,
    /// For counters: the events counted in the judged span.
    pub count: Option<f64>,
    /// For windowed counters and growth: the span judged, in ms.
    pub window_ms: Option<u64>,
}

/// A metric that stopped firing on this sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cleared {
    pub name: String,
    /// `"recovered"`, or `"relearned"` when the baseline was rebuilt.
    pub reason: &'static str,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub findings: Vec<Finding>,
    pub cleared: Vec<Cleared>,
    /// Metrics that are anomalous but not firing yet (waiting for
    /// `sustain`, in cooldown, or over the hourly cap).
    pub pending: Vec<String>,
    /// Metric names that were ignored because the gate is full.
    pub dropped: Vec<String>,
}

#[derive(Debug, Default)]
struct MetricState {
    baseline: VecDeque<f64>,
    seen: usize,
    /// For counters: the previous raw value and its time.
    last_counter: Option<(f64, u64)>,
    pending: usize,
    firing: Option<Severity>,
    firing_samples: usize,
    recent: VecDeque<f64>,
    quiet_until_ms: u64,
    fires: VecDeque<u64>,
    last_seen_ms: u64,
    /// Windowed counters and growth: (time, value) points, oldest first.
    history: VecDeque<(u64, f64)>,
    /// Growth: the first value seen and when (the boot reference).
    origin: Option<(u64, f64)>,
    /// Time between the last two samples.
    tick_ms: u64,
    /// The value and severity last reported (kept after clearing, so that
    /// a clearly worse episode escalates through the cooldown).
    reported: Option<(f64, Severity)>,
    /// Time of the previous sample.
    prev_ms: Option<u64>,
    /// Time of the first sample.
    born_ms: Option<u64>,
    /// Seen in the gate's first observation: its first value is a boot
    /// reference for growth (a metric that appears later, such as a new
    /// table, has no such reference and waits for its baseline).
    from_boot: bool,
}

/// The gate of one watcher.
#[derive(Debug, Default)]
pub struct Gate {
    config: Config,
    metrics: HashMap<String, MetricState>,
    /// Time of the first observation: metrics seen then were there at boot.
    first_ms: Option<u64>,
}

struct Judgement {
    severity: Option<Severity>,
    /// Still above the lower (clearing) level.
    above_clear: bool,
    baseline: Option<f64>,
    threshold: f64,
    z: Option<f64>,
}

impl Gate {
    pub fn new(config: Config) -> Self {
        Gate {
            config,
            metrics: HashMap::new(),
            first_ms: None,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }

    /// Feeds one snapshot's samples taken at `now_ms` and returns what fires.
    pub fn observe(&mut self, samples: &[Sample], now_ms: u64) -> Verdict {
        let mut verdict = Verdict::default();
        let first_ms = *self.first_ms.get_or_insert(now_ms);
        for sample in samples {
            if !sample.value.is_finite() {
                continue;
            }
            if !self.metrics.contains_key(&sample.name) && !self.make_room(now_ms) {
                verdict.dropped.push(sample.name.clone());
                continue;
            }
            let state = self.metrics.entry(sample.name.clone()).or_default();
            if state.born_ms.is_none() {
                state.from_boot = now_ms == first_ms;
            }
            state.last_seen_ms = now_ms;
            observe_one(&self.config, state, sample, now_ms, &mut verdict);
        }
        verdict
    }

    /// Evicts the least recently seen metric that is not firing, if the gate
    /// is full. Returns false when nothing can be evicted.
    fn make_room(&mut self, now_ms: u64) -> bool {
        if self.metrics.len() < MAX_METRICS {
            return true;
        }
        let victim = self
            .metrics
            .iter()
            .filter(|(_, s)| s.firing.is_none() && s.last_seen_ms < now_ms)
            .min_by_key(|(_, s)| s.last_seen_ms)
            .map(|(name, _)| name.clone());
        match victim {
            Some(name) => {
                self.metrics.remove(&name);
                true
            }
            None => false,
        }
    }
}

/// The value a sample is judged on, with what it counted.
struct Measured {
    value: f64,
    /// Counters: events in the judged span.
    count: Option<f64>,
    /// Windowed counters and growth: the span judged.
    window_ms: Option<u64>,
    /// Counters: enough events (`min_count`) for the rate to fire.
    enough: bool,
}

/// Turns a raw sample into the value to judge, or `None` while there is not
/// enough history (a counter's first sample or reset, a growth window not
/// yet covered).
fn measure(
    config: &Config,
    state: &mut MetricState,
    sample: &Sample,
    now_ms: u64,
) -> Option<Measured> {
    let plain = Measured {
        value: sample.value,
        count: None,
        window_ms: None,
        enough: true,
    };
    match (sample.kind, sample.window_ms) {
        (Kind::Limit | Kind::Level, _) => Some(plain),
        (Kind::Counter, None) => {
            let previous = state.last_counter.replace((sample.value, now_ms));
            match previous {
                Some((last, at)) if now_ms > at && sample.value >= last => {
                    let delta = sample.value - last;
                    Some(Measured {
                        value: delta * 1000.0 / (now_ms - at) as f64,
                        count: Some(delta),
                        window_ms: None,
                        enough: delta >= sample.min_count,
                    })
                }
                // A counter reset (restart) or a clock that did not move.
                _ => None,
            }
        }
        (Kind::Counter, Some(window)) => windowed_rate(state, sample, window.max(1), now_ms),
        (Kind::Growth, window) => {
            let window = config.growth_window_ms.or(window);
            growth_floor(state, sample, window, now_ms)
        }
    }
}

/// The event rate over the trailing window: from the newest point at or
/// before `now - window`, so a tick longer than the window counts over the
/// tick.
fn windowed_rate(
    state: &mut MetricState,
    sample: &Sample,
    window: u64,
    now_ms: u64,
) -> Option<Measured> {
    match state.history.back() {
        Some(&(at, last)) if sample.value < last || now_ms <= at => {
            if sample.value < last {
                // A counter reset: start over.
                state.history.clear();
                state.history.push_back((now_ms, sample.value));
            }
            return None;
        }
        _ => {}
    }
    state.history.push_back((now_ms, sample.value));
    if state.history.len() > MAX_POINTS {
        state.history.pop_front();
    }
    let edge = now_ms.saturating_sub(window);
    while state.history.len() >= 2 && state.history[1].0 <= edge {
        state.history.pop_front();
    }
    if state.history.len() < 2 {
        return None;
    }
    // Over the window, or over the last tick when ticks are longer, or over
    // the whole history while it is shorter than the window (then only
    // `min_count` events over the full window can fire).
    let (at, first) = state.history[0];
    let span = (now_ms - at).max(1);
    let count = sample.value - first;
    let rate = count * 1000.0 / span as f64;
    let min_rate = sample.min_count * 1000.0 / window as f64;
    Some(Measured {
        value: rate,
        count: Some(count),
        window_ms: Some(span),
        enough: count >= sample.min_count && rate >= min_rate,
    })
}

/// The lowest value over the trailing window (at least `GROWTH_MIN_TICKS`
/// ticks long), once the history covers it.
fn growth_floor(
    state: &mut MetricState,
    sample: &Sample,
    window: Option<u64>,
    now_ms: u64,
) -> Option<Measured> {
    let window = window
        .unwrap_or(DEFAULT_GROWTH_WINDOW_MS)
        .max(GROWTH_MIN_TICKS.saturating_mul(state.tick_ms))
        .max(1);
    let (since, _) = *state.origin.get_or_insert((now_ms, sample.value));
    let merge_within = window / MAX_POINTS as u64;
    match state.history.back_mut() {
        // Points closer than window / MAX_POINTS merge, keeping the lowest
        // value: the floor stays exact and the history bounded.
        Some(last) if now_ms.saturating_sub(last.0) < merge_within => {
            *last = (now_ms, last.1.min(sample.value));
        }
        _ => {
            state.history.push_back((now_ms, sample.value));
            if state.history.len() > MAX_POINTS {
                state.history.pop_front();
            }
        }
    }
    let edge = now_ms.saturating_sub(window);
    while state.history.front().is_some_and(|&(at, _)| at < edge) {
        state.history.pop_front();
    }
    if now_ms.saturating_sub(since) < window {
        return None;
    }
    let floor = state
        .history
        .iter()
        .map(|&(_, v)| v)
        .fold(f64::INFINITY, f64::min);
    Some(Measured {
        value: floor,
        count: None,
        window_ms: Some(window),
        enough: true,
    })
}

fn observe_one(
    config: &Config,
    state: &mut MetricState,
    sample: &Sample,
    now_ms: u64,
    verdict: &mut Verdict,
) {
    if let Some(previous) = state.prev_ms {
        if now_ms > previous {
            state.tick_ms = now_ms - previous;
        }
    }
    state.prev_ms = Some(now_ms);
    let born = *state.born_ms.get_or_insert(now_ms);

    let Some(measured) = measure(config, state, sample, now_ms) else {
        return;
    };
    let value = measured.value;

    let warm = now_ms.saturating_sub(born) >= config.warmup_ms;
    let mut judgement = judge(config, state, sample, value, warm);
    if !measured.enough {
        // Too few events for a burst, whatever the rate says.
        judgement.severity = None;
    }

    // Hysteresis in: `sustain` consecutive anomalous samples.
    if judgement.severity.is_some() {
        state.pending += 1;
    } else {
        state.pending = 0;
    }

    match state.firing {
        Some(previous) if judgement.above_clear => {
            state.firing_samples += 1;
            push_bounded(&mut state.recent, value, config.window.max(1));
            let severity = judgement.severity.unwrap_or(previous).max(previous);
            let status = if severity > previous {
                "escalated"
            } else {
                "ongoing"
            };
            state.firing = Some(severity);
            // Remember the peak of the episode: a later episode must be
            // clearly worse than it to escalate through the cooldown.
            let peak = state.reported.map_or(value, |(v, _)| v.max(value));
            state.reported = Some((peak, severity));
            if sample.kind != Kind::Limit && state.firing_samples >= config.relearn_after.max(1) {
                // A lasting level shift: accept it as the new normal.
                state.baseline = std::mem::take(&mut state.recent);
                clear(state, config, now_ms);
                verdict.cleared.push(Cleared {
                    name: sample.name.clone(),
                    reason: "relearned",
                });
                return;
            }
            verdict.findings.push(finding(
                sample, severity, status, &measured, &judgement, state,
            ));
        }
        Some(_) => {
            clear(state, config, now_ms);
            learn(config, state, value);
            verdict.cleared.push(Cleared {
                name: sample.name.clone(),
                reason: "recovered",
            });
        }
        None => {
            let sustain = if sample.kind == Kind::Counter && sample.window_ms.is_some() {
                1
            } else {
                sample.sustain.max(1)
            };
            let allowed = now_ms >= state.quiet_until_ms && fires_left(config, state, now_ms);
            match judgement.severity {
                Some(severity) if state.pending >= sustain => {
                    let escalation = clearly_worse(config, state.reported, value, severity);
                    if !allowed && !escalation {
                        // In cooldown or over the cap, and not worse than
                        // what was reported: keep it out of the baseline.
                        verdict.pending.push(sample.name.clone());
                        return;
                    }
                    state.firing = Some(severity);
                    state.firing_samples = 1;
                    state.recent.clear();
                    push_bounded(&mut state.recent, value, config.window.max(1));
                    state.fires.push_back(now_ms);
                    state.reported = Some((value, severity));
                    let status = if allowed { "new" } else { "escalated" };
                    verdict.findings.push(finding(
                        sample, severity, status, &measured, &judgement, state,
                    ));
                }
                // Anomalous but not (yet) firing: keep it out of the baseline.
                Some(_) => verdict.pending.push(sample.name.clone()),
                // A floor above the baseline's own spread may be a leak on
                // its way up: learning it would let the baseline chase it.
                None if sample.kind == Kind::Growth
                    && !learnable(config, state, value, judgement.above_clear) => {}
                None => learn(config, state, value),
            }
        }
    }
}

/// A higher severity than last reported, or `escalate_ratio` times the
/// value last reported.
fn clearly_worse(
    config: &Config,
    reported: Option<(f64, Severity)>,
    value: f64,
    severity: Severity,
) -> bool {
    match reported {
        Some((last, last_severity)) => {
            severity > last_severity
                || (last > 0.0
                    && config.escalate_ratio > 1.0
                    && value >= last * config.escalate_ratio)
        }
        None => false,
    }
}

fn finding(
    sample: &Sample,
    severity: Severity,
    status: &'static str,
    measured: &Measured,
    judgement: &Judgement,
    state: &MetricState,
) -> Finding {
    Finding {
        name: sample.name.clone(),
        severity,
        status,
        value: measured.value,
        baseline: judgement.baseline,
        threshold: judgement.threshold,
        z: judgement.z,
        samples: state.firing_samples,
        count: measured.count,
        window_ms: measured.window_ms,
    }
}

fn clear(state: &mut MetricState, config: &Config, now_ms: u64) {
    state.firing = None;
    state.firing_samples = 0;
    state.pending = 0;
    state.recent.clear();
    state.quiet_until_ms = now_ms.saturating_add(config.cooldown_ms);
}

fn fires_left(config: &Config, state: &mut MetricState, now_ms: u64) -> bool {
    while let Some(&at) = state.fires.front() {
        if now_ms.saturating_sub(at) >= HOUR_MS {
            state.fires.pop_front();
        } else {
            break;
        }
    }
    state.fires.len() < config.max_fires_per_hour.max(1)
}

/// Whether a growth floor may join the baseline: while the baseline is
/// young, if it is not halfway to firing; then, if it is within the
/// baseline's own spread (`z_threshold` robust deviations, without the
/// `min_abs` floor). A real level shift is accepted later by relearning.
fn learnable(config: &Config, state: &MetricState, value: f64, above_clear: bool) -> bool {
    if state.baseline.len() < config.warmup.max(1) {
        return !above_clear;
    }
    let (median, scale) = robust_stats(&state.baseline, 0.0);
    value <= median + config.z_threshold * scale
}

fn learn(config: &Config, state: &mut MetricState, value: f64) {
    state.seen += 1;
    push_bounded(&mut state.baseline, value, config.window.max(1));
}

fn push_bounded(queue: &mut VecDeque<f64>, value: f64, cap: usize) {
    if queue.len() >= cap {
        queue.pop_front();
    }
    queue.push_back(value);
}

fn judge(
    config: &Config,
    state: &MetricState,
    sample: &Sample,
    value: f64,
    warm: bool,
) -> Judgement {
    let mut judgement = Judgement {
        severity: None,
        above_clear: false,
        baseline: None,
        threshold: f64::INFINITY,
        z: None,
    };

    // Hard limits apply to Limit metrics, and to counter rates when given.
    if matches!(sample.kind, Kind::Limit | Kind::Counter) {
        if let Some(warn) = sample.warn {
            judgement.threshold = warn;
            // Clear 10% under the warning level.
            judgement.above_clear = value >= warn * 0.9;
            if sample.critical.is_some_and(|c| value >= c) {
                judgement.severity = Some(Severity::Critical);
                judgement.threshold = sample.critical.unwrap_or(warn);
            } else if value >= warn {
                judgement.severity = Some(Severity::Warning);
            }
        }
    }
    if sample.kind == Kind::Limit {
        return judgement;
    }

    // Baseline judgement for Level, Counter and Growth metrics.
    if !warm || state.seen < config.warmup || state.baseline.is_empty() {
        if let (Kind::Growth, Some((_, origin)), true) =
            (sample.kind, state.origin, state.from_boot)
        {
            // No baseline yet: judge growth against the first value seen,
            // so that a leak that starts at boot is still found.
            judge_against(&mut judgement, sample, value, origin, 0.0);
        }
        return judgement;
    }
    let (median, scale) = robust_stats(&state.baseline, sample.min_abs / config.z_threshold);
    judgement.z = Some((value - median) / scale);
    judge_against(
        &mut judgement,
        sample,
        value,
        median,
        config.z_threshold * scale,
    );
    judgement
}

/// Judges `value` against a reference level (a baseline median, or a growth
/// metric's first value): anomalous above the reference by `spread`, by
/// `min_rel` and by `min_abs`; critical at `critical_rel` above it and at
/// least twice the warning margin.
fn judge_against(judgement: &mut Judgement, sample: &Sample, value: f64, median: f64, spread: f64) {
    let rel_level = median.abs() * (1.0 + sample.min_rel);
    let level = (median + spread)
        .max(rel_level)
        .max(median + sample.min_abs);
    let clear_level = median + (level - median) * 0.5;

    judgement.baseline = Some(median);
    judgement.above_clear |= value >= clear_level;

    if value >= level {
        // Critical needs `critical_rel` above the baseline, and at least twice
        // the warning margin: with a baseline near zero, crossing the warning
        // level alone must not make it critical.
        let critical_level =
            (median.abs() * (1.0 + sample.critical_rel)).max(median + 2.0 * (level - median));
        let severity = if value >= critical_level {
            Severity::Critical
        } else {
            Severity::Warning
        };
        if judgement.severity.is_none_or(|s| severity > s) {
            judgement.severity = Some(severity);
            judgement.threshold = level;
        }
    }
}

/// Median and a robust scale (1.4826 × MAD) with floors: 5% of the median,
/// `abs_floor` (the metric's `min_abs` over the z threshold, so a flat
/// history at zero still has a meaningful scale) and a tiny constant.
fn robust_stats(values: &VecDeque<f64>, abs_floor: f64) -> (f64, f64) {
    let mut sorted: Vec<f64> = values.iter().copied().collect();
    let median = median_of(&mut sorted);
    let mut deviations: Vec<f64> = values.iter().map(|v| (v - median).abs()).collect();
    let mad = median_of(&mut deviations);
    let scale = (1.4826 * mad)
        .max(median.abs() * 0.05)
        .max(abs_floor)
        .max(1e-9);
    (median, scale)
}

fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(name: &str, value: f64) -> Sample {
        Sample {
            name: name.into(),
            value,
            kind: Kind::Level,
            warn: None,
            critical: None,
            min_rel: 0.5,
            min_abs: 0.0,
            critical_rel: 2.0,
            sustain: 2,
            window_ms: None,
            min_count: 0.0,
        }
    }

    fn limit(name: &str, value: f64, warn: f64, critical: f64) -> Sample {
        Sample {
            kind: Kind::Limit,
            warn: Some(warn),
            critical: Some(critical),
            sustain: 1,
            ..level(name, value)
        }
    }

    fn config() -> Config {
        Config {
            warmup: 5,
            warmup_ms: 0,
            window: 50,
            cooldown_ms: 1_000,
            ..Config::default()
        }
    }

    fn feed(gate: &mut Gate, samples: &[Sample], t: &mut u64) -> Verdict {
        *t += 100;
        gate.observe(samples, *t)
    }

    #[test]
    fn nothing_fires_during_warmup_or_on_noise() {
        let mut gate = Gate::new(config());
        let mut t = 0;
        for i in 0..200 {
            let noise = [100.0, 103.0, 98.0, 101.0, 99.0][i % 5];
            let v = feed(&mut gate, &[level("m", noise)], &mut t);
            assert!(v.findings.is_empty(), "sample {i}: {v:?}");
        }
    }

    #[test]
    fn a_jump_fires_once_after_sustain_and_clears_with_cooldown() {
        let mut gate = Gate::new(config());
        let mut t = 0;
        for _ in 0..10 {
            feed(&mut gate, &[level("m", 100.0)], &mut t);
        }
        // First anomalous sample: pending (sustain = 2).
        let v = feed(&mut gate, &[level("m", 400.0)], &mut t);
        assert!(v.findings.is_empty());
        assert_eq!(v.pending, vec!["m".to_string()]);
        let v = feed(&mut gate, &[level("m", 400.0)], &mut t);
        assert_eq!(v.findings.len(), 1);
        let f = &v.findings[0];
        assert_eq!(
            (f.status, f.severity, f.baseline),
            ("new", Severity::Critical, Some(100.0))
        );
        assert!(f.z.unwrap() > 10.0);

        let v = feed(&mut gate, &[level("m", 420.0)], &mut t);
        assert_eq!(v.findings[0].status, "ongoing");
        assert_eq!(v.findings[0].samples, 2);

        // Back to normal: cleared, and the anomalous values did not enter
        // the baseline.
        let v = feed(&mut gate, &[level("m", 100.0)], &mut t);
        assert_eq!(v.cleared[0].reason, "recovered");
        assert!(v.findings.is_empty());

        // Within the cooldown a new jump does not fire.
        for _ in 0..3 {
            assert!(feed(&mut gate, &[level("m", 400.0)], &mut t)
                .findings
                .is_empty());
        }
        // After the cooldown it does.
        t += 1_000;
        let v = feed(&mut gate, &[level("m", 400.0)], &mut t);
        assert_eq!(v.findings.len(), 1);
    }

    #[test]
    fn a_flat_metric_can_still_fire() {
        let mut gate = Gate::new(config());
        let mut t = 0;
        for _ in 0..20 {
            assert!(feed(&mut gate, &[level("flat", 10.0)], &mut t)
                .findings
                .is_empty());
        }
        // +10% on a flat metric is below min_rel (50%): not anomalous.
        for _ in 0..3 {
            assert!(feed(&mut gate, &[level("flat", 11.0)], &mut t)
                .findings
                .is_empty());
        }
        feed(&mut gate, &[level("flat", 16.0)], &mut t);
        let v = feed(&mut gate, &[level("flat", 16.0)], &mut t);
        assert_eq!(v.findings[0].severity, Severity::Warning);
    }

    #[test]
    fn limits_fire_without_warmup_and_escalate() {
        let mut gate = Gate::new(config());
        let mut t = 0;
        let v = feed(&mut gate, &[limit("atoms", 0.6, 0.5, 0.8)], &mut t);
        assert_eq!(v.findings[0].severity, Severity::Warning);
        assert_eq!(v.findings[0].threshold, 0.5);
        let v = feed(&mut gate, &[limit("atoms", 0.85, 0.5, 0.8)], &mut t);
        assert_eq!(
            (v.findings[0].status, v.findings[0].severity),
            ("escalated", Severity::Critical)
        );
        // Hysteresis: 0.46 is under the limit but above the clearing level.
        let v = feed(&mut gate, &[limit("atoms", 0.46, 0.5, 0.8)], &mut t);
        assert_eq!(v.findings[0].status, "ongoing");
        let v = feed(&mut gate, &[limit("atoms", 0.40, 0.5, 0.8)], &mut t);
        assert_eq!(v.cleared.len(), 1);
    }

    #[test]
    fn near_zero_baselines_are_not_critical_at_the_warning_level() {
        let mut gate = Gate::new(config());
        let mut t = 0;
        let sample = |v| Sample {
            min_abs: 10.0,
            ..level("queue_ms", v)
        };
        for _ in 0..10 {
            feed(&mut gate, &[sample(0.0)], &mut t);
        }
        feed(&mut gate, &[sample(12.0)], &mut t);
        let v = feed(&mut gate, &[sample(12.0)], &mut t);
        assert_eq!(v.findings[0].severity, Severity::Warning);
        let v = feed(&mut gate, &[sample(25.0)], &mut t);
        assert_eq!(v.findings[0].severity, Severity::Critical);
    }

    #[test]
    fn counters_are_judged_on_their_rate() {
        let mut gate = Gate::new(config());
        let mut t = 0;
        let mut total = 0.0;
        for _ in 0..20 {
            total += 5.0; // 50 per second at 100 ms per sample
            let s = Sample {
                kind: Kind::Counter,
                ..level("errors", total)
            };
            assert!(feed(&mut gate, &[s], &mut t).findings.is_empty());
        }
        let mut fired = None;
        for _ in 0..3 {
            total += 100.0; // 1,000 per second
            let s = Sample {
                kind: Kind::Counter,
                ..level("errors", total)
            };
            let v = feed(&mut gate, &[s], &mut t);
            if let Some(f) = v.findings.first() {
                fired = Some(f.clone());
            }
        }
        let f = fired.expect("the burst fired");
        assert_eq!(f.baseline, Some(50.0));
        assert_eq!(f.value, 1000.0);
    }

    #[test]
    fn a_counter_reset_is_not_a_burst() {
        let mut gate = Gate::new(config());
        let mut t = 0;
        for v in [100.0, 200.0, 300.0, 5.0, 105.0] {
            let s = Sample {
                kind: Kind::Counter,
                warn: Some(10_000.0),
                ..level("c", v)
            };
            assert!(feed(&mut gate, &[s], &mut t).findings.is_empty());
        }
    }

    #[test]
    fn a_lasting_shift_is_relearned() {
        let mut gate = Gate::new(Config {
            relearn_after: 5,
            ..config()
        });
        let mut t = 0;
        for _ in 0..10 {
            feed(&mut gate, &[level("m", 100.0)], &mut t);
        }
        let mut relearned = false;
        for _ in 0..10 {
            let v = feed(&mut gate, &[level("m", 300.0)], &mut t);
            relearned |= v.cleared.iter().any(|c| c.reason == "relearned");
        }
        assert!(relearned);
        // 300 is now normal.
        t += 10_000;
        assert!(feed(&mut gate, &[level("m", 300.0)], &mut t)
            .findings
            .is_empty());
    }

    #[test]
    fn fires_per_hour_are_capped() {
        let mut gate = Gate::new(Config {
            cooldown_ms: 0,
            max_fires_per_hour: 2,
            ..config()
        });
        let mut t = 0;
        let mut fires = 0;
        for _ in 0..10 {
            fires += feed(&mut gate, &[limit("l", 1.0, 0.5, 0.9)], &mut t)
                .findings
                .iter()
                .filter(|f| f.status == "new")
                .count();
            feed(&mut gate, &[limit("l", 0.0, 0.5, 0.9)], &mut t);
        }
        assert_eq!(fires, 2);
    }

    #[test]
    fn the_number_of_metrics_is_bounded() {
        let mut gate = Gate::new(config());
        let samples: Vec<Sample> = (0..MAX_METRICS + 10)
            .map(|i| level(&format!("m{i}"), 1.0))
            .collect();
        let v = gate.observe(&samples, 1);
        assert_eq!(gate.len(), MAX_METRICS);
        assert_eq!(v.dropped.len(), 10);
        // Later, old metrics make room for new ones.
        let v = gate.observe(&[level("fresh", 1.0)], 2);
        assert!(v.dropped.is_empty());
        assert_eq!(gate.len(), MAX_METRICS);
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let mut gate = Gate::new(config());
        let v = gate.observe(&[level("nan", f64::NAN)], 1);
        assert_eq!(v, Verdict::default());
        assert!(gate.is_empty());
    }

    // ---- Signal quality (issue 12): one test per rule. ----

    fn storm_counter(name: &str, total: f64) -> Sample {
        Sample {
            kind: Kind::Counter,
            warn: Some(0.5),
            critical: Some(5.0),
            min_rel: 2.0,
            min_abs: 0.5,
            sustain: 1,
            window_ms: Some(10_000),
            min_count: 5.0,
            ..level(name, total)
        }
    }

    fn shipped() -> Config {
        Config::default()
    }

    /// Runs `seconds` of a workload whose counter total at time t (ms) is
    /// `total(t)`, sampled every `tick_ms`; returns the findings that fired
    /// (new or escalated).
    fn run_counter(
        tick_ms: u64,
        seconds: u64,
        total: impl Fn(u64) -> f64,
        config: Config,
    ) -> Vec<Finding> {
        let mut gate = Gate::new(config);
        let mut fired = vec![];
        let mut t = 0;
        while t <= seconds * 1000 {
            let v = gate.observe(&[storm_counter("sup.restarts", total(t))], t);
            fired.extend(v.findings.into_iter().filter(|f| f.status != "ongoing"));
            t += tick_ms;
        }
        fired
    }

    #[test]
    fn a_single_event_never_fires_in_warmup_or_after() {
        for tick in [500, 30_000] {
            // One restart at 1 s (in warm-up), one at 400 s (after).
            let fired = run_counter(
                tick,
                600,
                |t| (t >= 1_000) as u8 as f64 + (t >= 400_000) as u8 as f64,
                shipped(),
            );
            assert!(fired.is_empty(), "tick {tick}: {fired:?}");
            // Nor does a healthy one restart every 30 s.
            let fired = run_counter(tick, 600, |t| (t / 30_000) as f64, shipped());
            assert!(fired.is_empty(), "tick {tick}: {fired:?}");
        }
    }

    #[test]
    fn the_same_workload_gets_the_same_verdict_at_two_tick_scales() {
        // Healthy: a restart every 30 s. Storm from 300 s: one every 50 ms.
        let storm = |t: u64| (t / 30_000) as f64 + (t.saturating_sub(300_000) / 50) as f64;
        for (tick, window) in [(500, 10_000), (30_000, 30_000)] {
            let fired = run_counter(tick, 600, storm, shipped());
            assert_eq!(fired.len(), 1, "tick {tick}: {fired:?}");
            let f = &fired[0];
            assert_eq!((f.status, f.severity), ("new", Severity::Critical));
            assert!(f.count.unwrap() >= 5.0);
            assert_eq!(f.window_ms, Some(window));
        }
        // A burst of 3 restarts within a second: too few events at both.
        let burst = |t: u64| ((t.saturating_sub(200_000) / 300).min(3)) as f64;
        for tick in [500, 30_000] {
            assert!(run_counter(tick, 600, burst, shipped()).is_empty());
        }
    }

    fn growth(name: &str, value: f64, min_abs: f64) -> Sample {
        Sample {
            kind: Kind::Growth,
            min_rel: 0.5,
            min_abs,
            window_ms: Some(5_000),
            ..level(name, value)
        }
    }

    #[test]
    fn a_spike_that_decays_is_not_a_leak() {
        // The batch job of issue 12: 3,000 workers every 10 s, all gone
        // within 1.5 s; 99 processes otherwise.
        let mut gate = Gate::new(shipped());
        for t in (0..600_000u64).step_by(500) {
            let phase = t % 10_000;
            let count = if phase < 1_500 {
                99.0 + 3_000.0 * (1.0 - phase as f64 / 1_500.0)
            } else {
                99.0
            };
            let v = gate.observe(&[growth("beam.process_count", count, 2_000.0)], t);
            assert!(v.findings.is_empty(), "at {t} ms: {v:?}");
        }
    }

    #[test]
    fn sustained_growth_is_a_leak_after_warmup() {
        let mut gate = Gate::new(shipped());
        let mut t = 0;
        while t < 60_000 {
            gate.observe(&[growth("p", 100.0 + (t % 7) as f64, 2_000.0)], t);
            t += 500;
        }
        // From 60 s, 1,000 processes a second that never exit.
        let mut fired = None;
        while t < 90_000 && fired.is_none() {
            let leaked = (t - 60_000) as f64;
            let v = gate.observe(&[growth("p", 100.0 + leaked, 2_000.0)], t);
            fired = v.findings.into_iter().find(|f| f.status == "new");
            t += 500;
        }
        let f = fired.expect("the leak fired");
        assert!(f.baseline.unwrap() < 110.0);
        assert!(f.value >= 2_100.0);
        assert_eq!(f.window_ms, Some(5_000));
        // Found within the window plus the growth to min_abs, plus sustain.
        assert!(t <= 60_000 + 5_000 + 2_100 + 1_500, "at {t}");
    }

    #[test]
    fn a_leak_from_boot_is_found_before_any_baseline() {
        let mut gate = Gate::new(shipped());
        let mut fired = None;
        let mut t = 0;
        while t < 30_000 && fired.is_none() {
            // 500 leaked processes a second from the first sample.
            let v = gate.observe(&[growth("p", 100.0 + t as f64 / 2.0, 2_000.0)], t);
            fired = v.findings.into_iter().next();
            t += 500;
        }
        let f = fired.expect("a boot-time leak fired during warm-up");
        assert_eq!(f.baseline, Some(100.0));
        assert!(f.value >= 2_100.0);
        // A healthy start-up that levels off stays quiet.
        let mut gate = Gate::new(shipped());
        for t in (0..120_000u64).step_by(500) {
            let value = 100.0 + (t.min(3_000) as f64) / 3.0;
            assert!(gate
                .observe(&[growth("q", value, 2_000.0)], t)
                .findings
                .is_empty());
        }
    }

    #[test]
    fn a_real_storm_escalates_through_the_cooldown_of_a_false_alarm() {
        // Issue 12: a false restart_storm, then a real one 3 min later,
        // inside the 15-minute cooldown. Five restarts in a second at 30 s
        // (enough to fire), then one every 50 ms from 4 min.
        let total = |t: u64| {
            let early = ((t.saturating_sub(30_000)) / 200).min(5) as f64;
            early + (t.saturating_sub(240_000) / 50) as f64
        };
        let fired = run_counter(500, 300, total, shipped());
        assert_eq!(fired.len(), 2, "{fired:?}");
        assert_eq!(fired[0].status, "new");
        assert_eq!(fired[1].status, "escalated");
        assert!(fired[1].value >= 2.0 * fired[0].value, "{fired:?}");

        // A repeat no worse than the first stays quiet in the cooldown.
        let same = |t: u64| {
            ((t.saturating_sub(30_000)) / 200).min(5) as f64
                + ((t.saturating_sub(240_000)) / 200).min(5) as f64
        };
        let fired = run_counter(500, 300, same, shipped());
        assert_eq!(fired.len(), 1, "{fired:?}");
    }

    #[test]
    fn a_clearly_worse_value_escalates_over_the_hourly_cap() {
        let mut gate = Gate::new(Config {
            cooldown_ms: 0,
            max_fires_per_hour: 1,
            ..config()
        });
        let mut t = 0;
        let mut statuses = vec![];
        for value in [0.6, 0.0, 0.6, 0.0, 0.95] {
            let v = feed(&mut gate, &[limit("l", value, 0.5, 0.9)], &mut t);
            statuses.extend(v.findings.iter().map(|f| f.status));
        }
        assert_eq!(statuses, vec!["new", "escalated"]);
    }

    #[test]
    fn a_slow_leak_does_not_teach_the_baseline_to_follow_it() {
        // The baseline is ready after a few floors; then 20 processes a
        // second leak, slowly enough that no single step looks anomalous.
        let mut gate = Gate::new(config());
        let mut t = 0;
        while t < 10_000 {
            gate.observe(&[growth("p", 100.0, 2_000.0)], t);
            t += 500;
        }
        let mut fired = None;
        while t < 200_000 && fired.is_none() {
            let value = 100.0 + (t - 10_000) as f64 / 50.0;
            fired = gate
                .observe(&[growth("p", value, 2_000.0)], t)
                .findings
                .into_iter()
                .next();
            t += 500;
        }
        let f = fired.expect("the slow leak fired");
        assert_eq!(f.baseline, Some(100.0));
        assert!(t < 10_000 + 110_000 + 5_000 + 1_000, "at {t}");
    }

    #[test]
    fn only_metrics_present_at_boot_are_judged_against_their_first_value() {
        let mut gate = Gate::new(shipped());
        let mut t = 0;
        while t < 60_000 {
            // A table that appears at 10 s and fills, then stays: judged
            // by its baseline later, not against its first value.
            let mut samples = vec![growth("boot", 100.0, 2_000.0)];
            if t >= 10_000 {
                samples.push(growth(
                    "late",
                    100.0 + (t - 10_000).min(5_000) as f64,
                    2_000.0,
                ));
            }
            let v = gate.observe(&samples, t);
            assert!(v.findings.is_empty(), "at {t}: {v:?}");
            t += 500;
        }
    }
}
