//! The settings of an engine and the retention horizon they imply.

use super::error::{Error, Result};
use super::rules;

/// Settings of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Alerts from different watchers this close in time are related
    /// (temporal); symptomatic links need the same closeness.
    pub window_ms: i64,
    /// How much earlier than its lead a lag alert may be detected and still
    /// count as caused by it. Watchers detect on their own ticks, so two
    /// effects of one change are seldom seen in their true order.
    pub order_tolerance_ms: i64,
    /// Most live alert fingerprints held; the oldest are evicted beyond it.
    pub max_members: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window_ms: 60_000,
            order_tolerance_ms: 5_000,
            max_members: 5_000,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        if !(1..=86_400_000).contains(&self.window_ms) {
            return Err(Error::bad_argument(
                "window_ms",
                format!("must be between 1 and 86400000, got {}", self.window_ms),
            ));
        }
        if !(0..=600_000).contains(&self.order_tolerance_ms) {
            return Err(Error::bad_argument(
                "order_tolerance_ms",
                format!(
                    "must be between 0 and 600000, got {}",
                    self.order_tolerance_ms
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.max_members) {
            return Err(Error::bad_argument(
                "max_members",
                format!("must be between 1 and 1000000, got {}", self.max_members),
            ));
        }
        Ok(())
    }

    /// How long an alert stays after its fingerprint last fired: long enough
    /// for the window and for the slowest causal relation.
    pub fn horizon_ms(&self) -> i64 {
        self.window_ms
            .max(rules::max_causal_lag_ms() + self.order_tolerance_ms)
    }
}
