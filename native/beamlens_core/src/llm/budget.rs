//! Token accounting: cumulative usage in total and per caller, and an
//! hourly token budget.
//!
//! The budget covers a sliding window of the last 60 minutes, kept as 60
//! one-minute buckets, so spending cannot double up around the top of an
//! hour. A request is refused before it is sent when the tokens used in the
//! window have reached the budget; a request already in flight is still
//! counted when it completes, so the overshoot is bounded by what the
//! requests in flight use.
//!
//! Callers are identified by a string (Elixir passes `inspect(caller)`).
//! Their number is capped; beyond the cap, usage is counted under
//! [`OTHER_CALLERS`].

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::types::Usage;

pub const MAX_CALLERS: usize = 1024;
pub const OTHER_CALLERS: &str = "other";
const WINDOW_MINUTES: u64 = 60;

/// Usage counters of one caller (or of all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub usage: Usage,
    pub requests: u64,
    pub failures: u64,
}

/// The accounting state. One global instance backs the NIFs; tests build
/// their own with an explicit clock.
#[derive(Debug)]
pub struct Ledger {
    total: Counters,
    callers: HashMap<String, Counters>,
    /// `(minute, tokens)` for the last 60 minutes, indexed by minute % 60.
    buckets: [(u64, u64); WINDOW_MINUTES as usize],
    budget: Option<u64>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            total: Counters::default(),
            callers: HashMap::new(),
            buckets: [(0, 0); WINDOW_MINUTES as usize],
            budget: None,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    pub used: u64,
    pub budget: u64,
}

impl Ledger {
    pub fn set_budget(&mut self, budget: Option<u64>) {
        self.budget = budget;
    }

    pub fn budget(&self) -> Option<u64> {
        self.budget
    }

    /// Tokens used in the 60 minutes up to `minute`.
    pub fn used(&self, minute: u64) -> u64 {
        self.buckets
            .iter()
            .filter(|(m, _)| *m + WINDOW_MINUTES > minute && *m <= minute)
            .map(|(_, tokens)| tokens)
            .sum()
    }

    /// Whether a new request may start.
    pub fn check(&self, minute: u64) -> Result<(), OverBudget> {
        match self.budget {
            Some(budget) => {
                let used = self.used(minute);
                if used >= budget {
                    Err(OverBudget { used, budget })
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Records a finished request (its usage is zero when it failed).
    pub fn record(&mut self, caller: &str, usage: &Usage, ok: bool, minute: u64) {
        let slot = &mut self.buckets[(minute % WINDOW_MINUTES) as usize];
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        slot.1 = slot.1.saturating_add(usage.total());

        let known = self.callers.contains_key(caller);
        let key = if known || self.callers.len() < MAX_CALLERS {
            caller
        } else {
            OTHER_CALLERS
        };
        for counters in [
            &mut self.total,
            self.callers.entry(key.to_string()).or_default(),
        ] {
            counters.usage.add(usage);
            counters.requests += 1;
            if !ok {
                counters.failures += 1;
            }
        }
    }

    pub fn total(&self) -> Counters {
        self.total
    }

    pub fn caller(&self, caller: &str) -> Counters {
        self.callers.get(caller).copied().unwrap_or_default()
    }
}

static LEDGER: LazyLock<Mutex<Ledger>> = LazyLock::new(|| Mutex::new(Ledger::default()));

/// Runs `f` on the global ledger.
pub fn with<T>(f: impl FnOnce(&mut Ledger) -> T) -> T {
    f(&mut LEDGER.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The current minute since the Unix epoch.
pub fn current_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
        }
    }

    #[test]
    fn counts_per_caller_and_in_total() {
        let mut ledger = Ledger::default();
        ledger.record("a", &usage(10, 5), true, 100);
        ledger.record("a", &usage(1, 1), true, 100);
        ledger.record("b", &Usage::default(), false, 100);
        assert_eq!(ledger.caller("a").usage, usage(11, 6));
        assert_eq!(ledger.caller("a").requests, 2);
        assert_eq!(ledger.caller("b").failures, 1);
        assert_eq!(ledger.total().usage, usage(11, 6));
        assert_eq!(ledger.total().requests, 3);
        assert_eq!(ledger.caller("nobody"), Counters::default());
    }

    #[test]
    fn budget_is_a_sliding_hour() {
        let mut ledger = Ledger::default();
        assert!(ledger.check(0).is_ok());
        ledger.set_budget(Some(100));
        ledger.record("a", &usage(60, 0), true, 1_000);
        assert!(ledger.check(1_000).is_ok());
        ledger.record("a", &usage(30, 10), true, 1_030);
        assert_eq!(
            ledger.check(1_030),
            Err(OverBudget {
                used: 100,
                budget: 100
            })
        );
        // 59 minutes after the first spend it still counts...
        assert!(ledger.check(1_059).is_err());
        // ...and at 60 minutes it has left the window.
        assert_eq!(ledger.used(1_060), 40);
        assert!(ledger.check(1_060).is_ok());
        // A bucket reused after an hour starts from zero.
        ledger.record("a", &usage(5, 0), true, 1_060);
        assert_eq!(ledger.used(1_060), 45);
        ledger.set_budget(None);
        assert!(ledger.check(1_030).is_ok());
    }

    #[test]
    fn callers_are_capped() {
        let mut ledger = Ledger::default();
        for i in 0..(MAX_CALLERS + 5) {
            ledger.record(&format!("c{i}"), &usage(1, 0), true, 0);
        }
        assert_eq!(ledger.callers.len(), MAX_CALLERS + 1);
        assert_eq!(ledger.caller(OTHER_CALLERS).requests, 5);
        assert_eq!(ledger.total().requests as usize, MAX_CALLERS + 5);
    }
}
