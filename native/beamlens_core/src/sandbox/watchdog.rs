//! Raises a run's `expired` flag when its deadline passes.
//!
//! The interrupt (see `interrupt.rs`) reads the flag every few steps, so a
//! run notices its deadline within a few loop iterations, function calls or
//! pattern-matching steps, however expensive the steps between two budget
//! checks are (a pattern step can scan megabytes). One thread serves every
//! run; it sleeps until the earliest deadline and is only woken when a new
//! deadline comes before the one it sleeps towards, so a run costs a map
//! insert and remove, not a thread wake-up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, Weak};
use std::time::Instant;

struct Watchdog {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    /// Deadlines in force; the id makes equal instants distinct.
    deadlines: BTreeMap<(Instant, u64), Weak<AtomicBool>>,
    /// When the thread will next look at the map; `None` when it sleeps
    /// until woken.
    sleeping_until: Option<Instant>,
    started: bool,
}

static WATCHDOG: LazyLock<Watchdog> = LazyLock::new(|| Watchdog {
    state: Mutex::new(State {
        deadlines: BTreeMap::new(),
        sleeping_until: None,
        started: false,
    }),
    wake: Condvar::new(),
});

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// While alive, `flag` is set once `deadline` passes. Dropping it
/// unregisters the deadline.
#[derive(Debug)]
pub struct Guard {
    key: (Instant, u64),
}

/// Registers `flag` to be set at `deadline`.
pub fn watch(deadline: Instant, flag: &Arc<AtomicBool>) -> Guard {
    let key = (deadline, NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let dog = &*WATCHDOG;
    let mut state = lock(&dog.state);
    state.deadlines.insert(key, Arc::downgrade(flag));
    if !state.started {
        state.started = true;
        let spawned = std::thread::Builder::new()
            .name("beamlens-lua-watchdog".into())
            .spawn(run);
        if spawned.is_err() {
            // Without the thread, the interrupt's own clock checks still
            // stop the run, only less promptly.
            state.started = false;
        }
    } else if state.sleeping_until.is_none_or(|until| deadline < until) {
        dog.wake.notify_one();
    }
    Guard { key }
}

impl Drop for Guard {
    fn drop(&mut self) {
        lock(&WATCHDOG.state).deadlines.remove(&self.key);
    }
}

fn run() {
    let dog = &*WATCHDOG;
    let mut state = lock(&dog.state);
    loop {
        let now = Instant::now();
        while let Some(entry) = state.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            if let Some(flag) = entry.remove().upgrade() {
                flag.store(true, Ordering::Relaxed);
            }
        }
        // Sleep until the earliest deadline, or until woken when there is
        // none. Back-to-back runs rarely wake the thread: each new deadline
        // is later than the one it sleeps towards.
        match state
            .deadlines
            .first_key_value()
            .map(|((deadline, _), _)| *deadline)
        {
            Some(until) => {
                state.sleeping_until = Some(until);
                state = dog
                    .wake
                    .wait_timeout(state, until.saturating_duration_since(now))
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
            None => {
                state.sleeping_until = None;
                state = dog
                    .wake
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_flag_is_set_after_the_deadline_and_not_before() {
        let flag = Arc::new(AtomicBool::new(false));
        let later = Arc::new(AtomicBool::new(false));
        let _guard = watch(Instant::now() + Duration::from_millis(30), &flag);
        let _later = watch(Instant::now() + Duration::from_secs(60), &later);
        let started = Instant::now();
        while !flag.load(Ordering::Relaxed) {
            assert!(started.elapsed() < Duration::from_secs(10), "never set");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(started.elapsed() >= Duration::from_millis(25));
        assert!(!later.load(Ordering::Relaxed));
    }

    #[test]
    fn a_dropped_guard_unregisters() {
        let flag = Arc::new(AtomicBool::new(false));
        let guard = watch(Instant::now() + Duration::from_secs(60), &flag);
        let key = guard.key;
        drop(guard);
        assert!(!lock(&WATCHDOG.state).deadlines.contains_key(&key));
    }
}
