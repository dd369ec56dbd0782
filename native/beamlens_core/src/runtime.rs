//! The one shared tokio runtime of the NIF, and the bounded set of job slots.
//!
//! The runtime is created lazily on first use, with named worker threads
//! (`beamlens-rt-N`) so they are recognisable in `top -H` and crash reports.
//! Network waits (LLM calls) and job bookkeeping run here; CPU-heavy work
//! goes to `spawn_blocking` or a dirty scheduler. Every job holds a slot from
//! a fixed-size semaphore: when all slots are taken, submission fails at once
//! with [`Error::Busy`] instead of queueing without bound.
//!
//! [`Error`] is this module's own: busy, shut down, panicked. Callers whose
//! jobs fail in other ways use their own error type and implement
//! `From<runtime::Error>` for it (see [`run_guarded`], [`catch_panic`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

use tokio::runtime::{Handle, Runtime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a job could not run or did not finish.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Too many jobs are in flight; the submission was refused.
    #[error("the native job queue is full ({capacity} jobs in flight)")]
    Busy { capacity: usize },

    /// Rust code panicked. The panic was caught; the VM is unaffected.
    #[error("native code panicked: {0}")]
    Panic(String),

    /// The runtime is shutting down or could not be started.
    #[error("native runtime unavailable: {0}")]
    Shutdown(String),
}

impl Error {
    /// Builds a `Panic` error from the payload of a caught panic.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "unknown panic payload".to_string()
        };
        Error::Panic(message)
    }
}

/// Result type of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `f`, turning a panic into `Error::Panic` (converted to the caller's
/// error type). Use it around NIF bodies so that a bug becomes an error
/// instead of an exception raised from native code.
pub fn catch_panic<T, E: From<Error>>(f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(Error::from_panic(payload.as_ref()).into()),
    }
}

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
/// turning a panic inside the task into [`Error::Panic`] (converted to the
/// job's error type). A panic in a tokio task is otherwise swallowed and the
/// caller would never hear back.
pub async fn run_guarded<F, T, E>(future: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    match tokio::task::spawn(future).await {
        Ok(result) => result,
        Err(join_error) if join_error.is_panic() => {
            Err(Error::from_panic(join_error.into_panic().as_ref()).into())
        }
        Err(_) => Err(Error::Shutdown("the job was cancelled".into()).into()),
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
        let ok: Result<i32> = handle.block_on(run_guarded(async { Ok(21 * 2) }));
        assert_eq!(ok, Ok(42));

        let panicked: Result<u8> = handle.block_on(run_guarded(async { panic!("inside a job") }));
        assert_eq!(panicked, Err(Error::Panic("inside a job".into())));
    }

    #[test]
    fn catch_panic_turns_panics_into_errors() {
        let result: Result<()> = catch_panic(|| panic!("boom {}", 42));
        assert_eq!(result, Err(Error::Panic("boom 42".into())));

        let result: Result<()> = catch_panic(|| std::panic::panic_any(7_u8));
        assert_eq!(result, Err(Error::Panic("unknown panic payload".into())));

        assert_eq!(catch_panic(|| Ok::<_, Error>(1)), Ok(1));
    }

    #[test]
    fn messages_name_the_problem() {
        assert_eq!(
            Error::Busy { capacity: 8 }.to_string(),
            "the native job queue is full (8 jobs in flight)"
        );
        assert_eq!(
            Error::Shutdown("the job was cancelled".into()).to_string(),
            "native runtime unavailable: the job was cancelled"
        );
    }

    #[test]
    fn worker_threads_are_named() {
        let name = handle()
            .unwrap()
            .block_on(run_guarded(async {
                Ok::<_, Error>(std::thread::current().name().unwrap_or("").to_string())
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
