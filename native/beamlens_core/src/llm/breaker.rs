//! A circuit breaker per provider endpoint (provider, base URL and model).
//!
//! After `threshold` consecutive failed requests (timeouts, connection
//! errors, 429, 5xx, malformed replies) the circuit opens for `cooldown`:
//! requests to that provider fail at once with `:circuit_open`, so a chain
//! falls through to the next provider without waiting. When the cooldown is
//! over one probe request is let through (half-open); its success closes the
//! circuit, its failure opens it again. Errors that say nothing about the
//! provider's health (401, 400, 404) do not count.
//!
//! Breakers are shared by every configuration that names the same endpoint,
//! and their number is capped.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Default)]
pub struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    /// While a half-open probe is in flight, until when it may take.
    probe_until: Option<Instant>,
}

impl Breaker {
    pub fn state(&self, now: Instant) -> State {
        match self.open_until {
            None => State::Closed,
            Some(until) if now < until => State::Open,
            Some(_) => State::HalfOpen,
        }
    }

    /// Whether a request may go out now. `probe_limit` bounds how long a
    /// half-open probe may take before another is allowed.
    pub fn allow(&mut self, now: Instant, probe_limit: Duration) -> Result<(), Duration> {
        match self.state(now) {
            State::Closed => Ok(()),
            State::Open => Err(self.open_until.map_or(Duration::ZERO, |u| u - now)),
            State::HalfOpen => match self.probe_until {
                Some(until) if now < until => Err(until - now),
                _ => {
                    self.probe_until = Some(later(now, probe_limit));
                    Ok(())
                }
            },
        }
    }

    pub fn record_success(&mut self) {
        *self = Breaker::default();
    }

    pub fn record_failure(&mut self, now: Instant, threshold: u32, cooldown: Duration) {
        self.failures = self.failures.saturating_add(1);
        self.probe_until = None;
        let half_open = self.state(now) == State::HalfOpen;
        if threshold > 0 && (half_open || self.failures >= threshold) {
            self.open_until = Some(later(now, cooldown));
        }
    }
}

/// `now + wait`, or a century on when that does not fit in an `Instant`
/// (a configured cooldown of `u64::MAX` ms must not panic the request).
fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

const MAX_BREAKERS: usize = 256;

static BREAKERS: LazyLock<Mutex<HashMap<String, Breaker>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Runs `f` on the breaker for `key`, creating it if needed.
pub fn with<T>(key: &str, f: impl FnOnce(&mut Breaker) -> T) -> T {
    let mut breakers = BREAKERS.lock().unwrap_or_else(|e| e.into_inner());
    if !breakers.contains_key(key) && breakers.len() >= MAX_BREAKERS {
        // Forget closed breakers first; they carry little information.
        breakers.retain(|_, b| b.open_until.is_some());
        if breakers.len() >= MAX_BREAKERS {
            breakers.clear();
        }
    }
    f(breakers.entry(key.to_string()).or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(30);
    const PROBE: Duration = Duration::from_secs(5);

    #[test]
    fn huge_cooldowns_and_probe_limits_do_not_overflow() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        breaker.record_failure(now, 1, Duration::MAX);
        assert_eq!(breaker.state(now), State::Open);
        assert!(breaker.allow(now, Duration::MAX).is_err());

        let mut breaker = Breaker::default();
        breaker.record_failure(now, 1, Duration::ZERO);
        assert!(breaker.allow(now, Duration::MAX).is_ok());
        assert!(breaker.allow(now, Duration::MAX).is_err());
    }

    #[test]
    fn opens_after_threshold_and_half_opens_after_cooldown() {
        let t0 = Instant::now();
        let mut breaker = Breaker::default();
        for _ in 0..2 {
            assert!(breaker.allow(t0, PROBE).is_ok());
            breaker.record_failure(t0, 3, COOLDOWN);
            assert_eq!(breaker.state(t0), State::Closed);
        }
        breaker.record_failure(t0, 3, COOLDOWN);
        assert_eq!(breaker.state(t0), State::Open);
        assert_eq!(
            breaker.allow(t0 + Duration::from_secs(10), PROBE),
            Err(Duration::from_secs(20))
        );

        // After the cooldown exactly one probe goes through.
        let t1 = t0 + COOLDOWN;
        assert_eq!(breaker.state(t1), State::HalfOpen);
        assert!(breaker.allow(t1, PROBE).is_ok());
        assert!(breaker.allow(t1, PROBE).is_err());
        // A probe that never reports back does not block forever.
        assert!(breaker.allow(t1 + PROBE, PROBE).is_ok());

        // A failed probe opens the circuit again at once.
        breaker.record_failure(t1 + PROBE, 3, COOLDOWN);
        assert_eq!(breaker.state(t1 + PROBE), State::Open);

        // A successful probe closes it.
        let t2 = t1 + PROBE + COOLDOWN;
        assert!(breaker.allow(t2, PROBE).is_ok());
        breaker.record_success();
        assert_eq!(breaker.state(t2), State::Closed);
        assert!(breaker.allow(t2, PROBE).is_ok());
    }

    #[test]
    fn a_success_resets_the_count_and_zero_disables() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        breaker.record_failure(now, 2, COOLDOWN);
        breaker.record_success();
        breaker.record_failure(now, 2, COOLDOWN);
        assert_eq!(breaker.state(now), State::Closed);

        let mut disabled = Breaker::default();
        for _ in 0..100 {
            disabled.record_failure(now, 0, COOLDOWN);
        }
        assert_eq!(disabled.state(now), State::Closed);
    }

    #[test]
    fn the_registry_is_bounded() {
        for i in 0..(MAX_BREAKERS + 10) {
            with(&format!("test-bound-{i}"), |b| b.record_success());
        }
        assert!(BREAKERS.lock().unwrap().len() <= MAX_BREAKERS);
    }
}
