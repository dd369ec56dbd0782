//! The one shared tokio runtime of the NIF, and the bounded set of job slots.
//!
//! The runtime is created lazily on first use, with named worker threads
//! (`beamlens-rt-N`) so they are recognisable in `top -H` and crash reports.
//! Network waits (LLM calls) and job bookkeeping run here; CPU-heavy work
//! goes to `spawn_blocking` or a dirty scheduler. Every job holds a slot from
//! a fixed-size semaphore: when all slots are taken, submission fails at once
//! with [`Error::Busy`] instead of queueing without bound.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

use tokio::runtime::{Handle, Runtime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Settings read once, when the NIF library is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Tokio worker threads. BeamLens mostly waits on the network, so a
    /// couple of threads are plenty even on large hosts.
    pub worker_threads: usize,
    /// Upper bound on jobs in flight (running or waiting on the network).
    pub job_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            worker_threads: 2,
            job_capacity: 4096,
        }
    }
}

static CONFIG: OnceLock<Config> = OnceLock::new();

static RUNTIME: LazyLock<std::result::Result<Runtime, String>> = LazyLock::new(|| {
    let next_id = AtomicUsize::new(0);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config().worker_threads)
        .max_blocking_threads(16)
        .thread_name_fn(move || format!("beamlens-rt-{}", next_id.fetch_add(1, Ordering::Relaxed)))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
});

static SLOTS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(config().job_capacity)));

static JOBS_STARTED: AtomicU64 = AtomicU64::new(0);
static JOBS_REJECTED: AtomicU64 = AtomicU64::new(0);

/// Sets the configuration. Only the first call has an effect, and only if it
/// happens before the runtime is first used; later calls return `false`.
pub fn configure(config: Config) -> bool {
    CONFIG.set(config).is_ok()
}

/// The configuration in effect.
pub fn config() -> Config {
    *CONFIG.get_or_init(Config::default)
}

/// A handle to the shared runtime, starting it on first use.
pub fn handle() -> Result<Handle> {
    match &*RUNTIME {
        Ok(runtime) => Ok(runtime.handle().clone()),
        Err(reason) => Err(Error::Shutdown(reason.clone())),
    }
}

/// A slot for one job. The slot is released when the value is dropped.
#[derive(Debug)]
pub struct JobSlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// Takes a job slot, or fails with [`Error::Busy`] when all are in use.
pub fn try_acquire_slot() -> Result<JobSlot> {
    match SLOTS.clone().try_acquire_owned() {
        Ok(permit) => {
            JOBS_STARTED.fetch_add(1, Ordering::Relaxed);
            Ok(JobSlot(permit))
        }
        Err(_) => {
            JOBS_REJECTED.fetch_add(1, Ordering::Relaxed);
            Err(Error::Busy {
                capacity: config().job_capacity,
            })
        }
    }
}

/// Runs `future` on the shared runtime inside its own task and waits for it,
/// turning a panic inside the task into [`Error::Panic`]. A panic in a tokio
/// task is otherwise swallowed and the caller would never hear back.
pub async fn run_guarded<F, T>(future: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn(future).await {
        Ok(result) => result,
        Err(join_error) if join_error.is_panic() => {
            Err(Error::from_panic(join_error.into_panic().as_ref()))
        }
        Err(_) => Err(Error::Shutdown("the job was cancelled".into())),
    }
}

/// Counters describing the runtime, for `Beamlens.Native.runtime_status/0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub worker_threads: usize,
    pub job_capacity: usize,
    pub jobs_in_flight: usize,
    pub jobs_started: u64,
    pub jobs_busy_rejected: u64,
}

pub fn status() -> Status {
    let config = config();
    Status {
        worker_threads: config.worker_threads,
        job_capacity: config.job_capacity,
        jobs_in_flight: config.job_capacity - SLOTS.available_permits(),
        jobs_started: JOBS_STARTED.load(Ordering::Relaxed),
        jobs_busy_rejected: JOBS_REJECTED.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn guarded_task_reports_panics_and_values() {
        let handle = handle().unwrap();
        let ok = handle.block_on(run_guarded(async { Ok(21 * 2) }));
        assert_eq!(ok, Ok(42));

        let panicked: Result<u8> = handle.block_on(run_guarded(async { panic!("inside a job") }));
        assert_eq!(panicked, Err(Error::Panic("inside a job".into())));
    }

    #[test]
    fn worker_threads_are_named() {
        let name = handle()
            .unwrap()
            .block_on(run_guarded(async {
                Ok(std::thread::current().name().unwrap_or("").to_string())
            }))
            .unwrap();
        assert!(name.starts_with("beamlens-rt-"), "thread name was {name:?}");
    }

    #[test]
    fn slots_are_bounded_and_released() {
        let capacity = config().job_capacity;
        let before = status().jobs_in_flight;
        let mut held = Vec::new();
        // Other tests may hold slots concurrently; take whatever is left.
        while let Ok(slot) = try_acquire_slot() {
            held.push(slot);
        }
        assert!(held.len() + before >= capacity - 8);
        assert_eq!(try_acquire_slot().unwrap_err(), Error::Busy { capacity });
        drop(held);
        std::thread::sleep(Duration::from_millis(1));
        assert!(try_acquire_slot().is_ok());
    }
}
