//! The correlation engine: groups related alerts into insights.
//!
//! Plain Rust, no rustler types; `beamlens_nif`'s `nif_correlation.rs`
//! adapts it to the VM.
//!
//! Alerts go in one at a time or in batches ([`Engine::ingest`]); what comes
//! out is a [`Report`]: the insights that were created or changed by the
//! batch, each with a new version, and the insights that were retired
//! (expired, or merged into another). Two alerts are linked when
//!
//! * **causal**: the causal table ([`rules::CAUSAL_RULES`]) has a relation
//!   from one anomaly type to the other, both alerts are on the same node,
//!   and the order and lag in time fit the relation;
//! * **symptomatic**: they share an entity (a pid, a registered name, a
//!   module, an ETS table, a node...) or a resource (memory, CPU, the
//!   database...), or the same anomaly fired on several nodes, with no causal
//!   order between them;
//! * **temporal**: they come from different watchers on the same node inside
//!   the correlation window.
//!
//! Linked alerts form one group, and a group of two or more distinct alerts is
//! an insight whose correlation type is the strongest link in it (causal, then
//! symptomatic, then temporal). A group is updated, not duplicated, when more
//! alerts join it; two groups that become linked are merged and the older
//! insight survives.
//!
//! Alerts are deduplicated: an alert id seen before is ignored, and an alert
//! with the fingerprint of a live alert (the same watcher, anomaly type and
//! node) is folded into it. Memory is bounded by time and by count: an alert
//! leaves the engine once nothing fired for its fingerprint for the retention
//! horizon (the longer of the window and the longest causal lag), and the
//! number of live alerts is capped, the oldest evicted first.

pub mod engine;
mod error;
pub mod rules;
mod summary;

pub use engine::{Config, Engine, InsightSnapshot, Kind, Report, Retired, Stats};
pub use error::{Error, Result};

use serde::Serialize;

/// Severity of an alert, ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// Parses `"info"`, `"warning"` or `"critical"`.
    pub fn parse(text: &str) -> Option<Severity> {
        match text {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// The fields of an alert the engine uses. All text comes from code fields
/// of `Beamlens.Alert` (never from model output), but it is still bounded.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertInput {
    pub id: String,
    pub fingerprint: String,
    pub watcher: String,
    pub anomaly_type: String,
    pub node: String,
    pub severity: Severity,
    /// `(kind, id)` pairs such as `("ets_table", "sessions")`.
    pub entities: Vec<(String, String)>,
    /// When the alert was first detected, in Unix milliseconds.
    pub detected_at_ms: i64,
}

#[cfg(test)]
mod tests;
