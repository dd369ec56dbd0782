//! The limits of one sandboxed run and the budget that enforces them.
//!
//! Every run gets a fresh [`Budget`]. The Luau interrupt runs at every loop
//! iteration, function call and pattern matching step, and calls
//! [`Budget::tick`] once per batch of such steps (see `interrupt.rs`); the
//! print function, the callbacks and the result
//! conversion charge their own counters. The first limit that is broken is
//! remembered ("tripped"): from then on every check fails again, so a script
//! that catches the error with `pcall` cannot carry on, and the run reports
//! that limit even if the script later returns normally.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ErrorKind;

/// Limits of one run, as `Beamlens.Lua` resolved them: the defaults live
/// there. [`Limits::default`] gives the same values, for unit tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall time of the whole run, callbacks included.
    pub timeout: Duration,
    /// Interrupt checks (loop iterations, function calls, pattern matching
    /// steps) the script may pass. Luau has no per-instruction hook; its
    /// interrupt runs at every point where a script could loop.
    pub max_instructions: u64,
    /// Bytes the script may allocate on top of the fresh state.
    pub max_memory: usize,
    /// Bytes of the converted result, and separately of `print` output.
    pub max_output: usize,
    /// Callback calls per run.
    pub max_callbacks: u32,
    /// Wall time of one callback call.
    pub callback_timeout: Duration,
}

impl Limits {
    /// Default wall time: long enough for a few callbacks, short enough that
    /// a runaway script cannot hold a CPU core for long.
    #[cfg(test)]
    pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
    /// About 50-100 ms of a tight Luau loop.
    #[cfg(test)]
    pub const DEFAULT_MAX_INSTRUCTIONS: u64 = 10_000_000;
    /// 8 MiB, as beamlens 0.4 used.
    #[cfg(test)]
    pub const DEFAULT_MAX_MEMORY: usize = 8 * 1024 * 1024;
    /// 64 KiB: a result an LLM can still read in one go.
    #[cfg(test)]
    pub const DEFAULT_MAX_OUTPUT: usize = 64 * 1024;
    #[cfg(test)]
    pub const DEFAULT_MAX_CALLBACKS: u32 = 200;
    #[cfg(test)]
    pub const DEFAULT_CALLBACK_TIMEOUT_MS: u64 = 1_000;

    /// Upper bounds accepted for each limit.
    pub const MAX_TIMEOUT_MS: u64 = 60_000;
    pub const MAX_INSTRUCTIONS: u64 = 10_000_000_000;
    pub const MAX_MEMORY: usize = 256 * 1024 * 1024;
    pub const MAX_OUTPUT: usize = 16 * 1024 * 1024;
    pub const MAX_CALLBACKS: u32 = 100_000;
}

#[cfg(test)]
impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(Self::DEFAULT_TIMEOUT_MS),
            max_instructions: Self::DEFAULT_MAX_INSTRUCTIONS,
            max_memory: Self::DEFAULT_MAX_MEMORY,
            max_output: Self::DEFAULT_MAX_OUTPUT,
            max_callbacks: Self::DEFAULT_MAX_CALLBACKS,
            callback_timeout: Duration::from_millis(Self::DEFAULT_CALLBACK_TIMEOUT_MS),
        }
    }
}

/// The counters of one run. Shared (behind an `Arc`) by the interrupt, the
/// print function and the callbacks of the run's Lua state.
#[derive(Debug)]
pub struct Budget {
    pub limits: Limits,
    pub started: Instant,
    pub deadline: Instant,
    steps: AtomicU64,
    callbacks: AtomicU32,
    tripped: AtomicU8,
    cancel: Arc<AtomicBool>,
    /// Set by the watchdog once the deadline has passed.
    expired: Arc<AtomicBool>,
    _watch: super::watchdog::Guard,
}

impl Budget {
    pub fn new(limits: Limits, cancel: Arc<AtomicBool>) -> Self {
        let started = Instant::now();
        let deadline = started + limits.timeout;
        let expired = Arc::new(AtomicBool::new(false));
        let watch = super::watchdog::watch(deadline, &expired);
        Budget {
            limits,
            started,
            deadline,
            steps: AtomicU64::new(0),
            callbacks: AtomicU32::new(0),
            tripped: AtomicU8::new(0),
            cancel,
            expired,
            _watch: watch,
        }
    }

    /// The flags whose setting must stop the run at its next step: the
    /// cancel flag and the deadline's.
    pub fn stop_flags(&self) -> [Arc<AtomicBool>; 2] {
        [self.cancel.clone(), self.expired.clone()]
    }

    /// Counts `steps` interrupt checks, then checks every limit.
    pub fn tick(&self, steps: u64) -> Result<(), ErrorKind> {
        let total = self.steps.fetch_add(steps, Ordering::Relaxed) + steps;
        if total > self.limits.max_instructions {
            return Err(self.trip(ErrorKind::InstructionLimit));
        }
        self.check()
    }

    /// Checks the wall clock, the cancel flag and any limit already broken.
    pub fn check(&self) -> Result<(), ErrorKind> {
        self.check_at(Instant::now())
    }

    /// [`Budget::check`] at `now`, for a caller that has just read the
    /// clock.
    pub fn check_at(&self, now: Instant) -> Result<(), ErrorKind> {
        if let Some(kind) = self.tripped() {
            return Err(kind);
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Err(self.trip(ErrorKind::Cancelled));
        }
        if now >= self.deadline {
            return Err(self.trip(ErrorKind::Timeout));
        }
        Ok(())
    }

    /// Counts one callback call, failing once `max_callbacks` are used up.
    pub fn charge_callback(&self) -> Result<(), ErrorKind> {
        self.charge_callback_at(Instant::now())
    }

    /// [`Budget::charge_callback`] at `now`.
    pub fn charge_callback_at(&self, now: Instant) -> Result<(), ErrorKind> {
        self.check_at(now)?;
        let calls = self.callbacks.fetch_add(1, Ordering::Relaxed) + 1;
        if calls > self.limits.max_callbacks {
            return Err(self.trip(ErrorKind::CallbackLimit));
        }
        Ok(())
    }

    /// Records that `kind` was broken (the first one wins) and returns the
    /// limit that is in force.
    pub fn trip(&self, kind: ErrorKind) -> ErrorKind {
        let _ = self
            .tripped
            .compare_exchange(0, kind as u8, Ordering::Relaxed, Ordering::Relaxed);
        self.tripped().unwrap_or(kind)
    }

    /// The limit broken so far, if any.
    pub fn tripped(&self) -> Option<ErrorKind> {
        ErrorKind::from_code(self.tripped.load(Ordering::Relaxed))
    }

    /// How long a callback may take: its own timeout, cut short by the
    /// run's deadline.
    pub fn callback_wait(&self) -> Duration {
        self.callback_wait_at(Instant::now())
    }

    /// [`Budget::callback_wait`] at `now`.
    pub fn callback_wait_at(&self, now: Instant) -> Duration {
        self.limits
            .callback_timeout
            .min(self.deadline.saturating_duration_since(now))
    }

    pub fn steps(&self) -> u64 {
        self.steps
            .load(Ordering::Relaxed)
            .min(self.limits.max_instructions)
    }

    pub fn callbacks(&self) -> u32 {
        self.callbacks
            .load(Ordering::Relaxed)
            .min(self.limits.max_callbacks)
    }

    pub fn past_deadline(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limits: Limits) -> Budget {
        Budget::new(limits, Arc::new(AtomicBool::new(false)))
    }

    #[test]
    fn instruction_limit_trips_and_stays_tripped() {
        let b = budget(Limits {
            max_instructions: 3,
            ..Limits::default()
        });
        assert!(b.tick(1).is_ok());
        assert!(b.tick(2).is_ok());
        assert_eq!(b.tick(1), Err(ErrorKind::InstructionLimit));
        assert_eq!(b.check(), Err(ErrorKind::InstructionLimit));
        assert_eq!(b.charge_callback(), Err(ErrorKind::InstructionLimit));
        assert_eq!(b.steps(), 3);
    }

    #[test]
    fn the_first_limit_broken_wins() {
        let b = budget(Limits::default());
        assert_eq!(b.trip(ErrorKind::OutputLimit), ErrorKind::OutputLimit);
        assert_eq!(b.trip(ErrorKind::Timeout), ErrorKind::OutputLimit);
        assert_eq!(b.tick(1), Err(ErrorKind::OutputLimit));
    }

    #[test]
    fn deadline_and_cancel_are_seen_by_check() {
        let b = budget(Limits {
            timeout: Duration::ZERO,
            ..Limits::default()
        });
        assert_eq!(b.check(), Err(ErrorKind::Timeout));

        let cancel = Arc::new(AtomicBool::new(false));
        let b = Budget::new(Limits::default(), cancel.clone());
        assert!(b.check().is_ok());
        cancel.store(true, Ordering::Relaxed);
        assert_eq!(b.check(), Err(ErrorKind::Cancelled));
    }

    #[test]
    fn callbacks_are_counted() {
        let b = budget(Limits {
            max_callbacks: 2,
            ..Limits::default()
        });
        assert!(b.charge_callback().is_ok());
        assert!(b.charge_callback().is_ok());
        assert_eq!(b.charge_callback(), Err(ErrorKind::CallbackLimit));
        assert_eq!(b.callbacks(), 2);
    }

    #[test]
    fn callback_wait_is_cut_by_the_deadline() {
        let b = budget(Limits {
            timeout: Duration::from_millis(50),
            callback_timeout: Duration::from_secs(10),
            ..Limits::default()
        });
        assert!(b.callback_wait() <= Duration::from_millis(50));
    }
}
