//! NIF adapters for the shared runtime: loading, status, and (with the
//! `test-nifs` feature, which only test builds enable) the example jobs
//! that prove the async and dirty-scheduler plumbing.

use rustler::{Encoder, Env, Term};

use crate::atoms;
use crate::runtime::{self, Config};

/// Called by `:erlang.load_nif/2`. `load_info` is a map with
/// `:worker_threads` and `:job_capacity`, both required (their defaults
/// live in `Beamlens.Runtime`); missing or bad values fail the load with a
/// non-zero return, which `Beamlens.Native` reports.
pub fn on_load(_env: Env, load_info: Term) -> bool {
    let get = |key: &str| -> Option<usize> {
        load_info
            .map_get(key_atom(load_info, key)?)
            .ok()?
            .decode::<usize>()
            .ok()
            .filter(|n| *n > 0)
    };
    let (Some(worker_threads), Some(job_capacity)) = (get("worker_threads"), get("job_capacity"))
    else {
        return false;
    };
    // A second load (hot upgrade) keeps the first configuration.
    runtime::configure(Config {
        worker_threads,
        job_capacity,
    });
    true
}

fn key_atom<'a>(load_info: Term<'a>, key: &str) -> Option<Term<'a>> {
    rustler::Atom::from_str(load_info.get_env(), key)
        .ok()
        .map(|atom| atom.encode(load_info.get_env()))
}

/// `%{worker_threads: n, job_capacity: n, jobs_in_flight: n, jobs_started: n,
/// jobs_busy_rejected: n}`. Does not start the runtime.
#[rustler::nif]
fn runtime_status(env: Env) -> Term {
    let status = runtime::status();
    let map = Term::map_new(env);
    [
        (atoms::worker_threads(), status.worker_threads as u64),
        (atoms::job_capacity(), status.job_capacity as u64),
        (atoms::jobs_in_flight(), status.jobs_in_flight as u64),
        (atoms::jobs_started(), status.jobs_started),
        (atoms::jobs_busy_rejected(), status.jobs_busy_rejected),
    ]
    .into_iter()
    .fold(map, |map, (key, value)| {
        map.map_put(key, value).unwrap_or(map)
    })
}

/// NIFs only the test suite calls, compiled with the `test-nifs` feature
/// (MIX_ENV=test builds) only.
#[cfg(feature = "test-nifs")]
mod test_nifs {
    use std::time::Duration;

    use rustler::{Binary, Env, Term};

    use crate::atoms;
    use crate::convert::{self, Json, Limits};
    use crate::error::{Error, Result};
    use crate::reply;

    /// Longest delay `async_echo/2` accepts.
    const MAX_ECHO_DELAY_MS: u64 = 60_000;

    /// Replies `{ref, {:ok, value}}` after `delay_ms`, with `value` converted to
    /// JSON and back (so it also exercises the term conversion).
    #[rustler::nif]
    fn async_echo<'a>(env: Env<'a>, value: Term<'a>, delay_ms: u64) -> Term<'a> {
        let prepared = (|| {
            if delay_ms > MAX_ECHO_DELAY_MS {
                return Err(Error::bad_argument(
                    "delay_ms",
                    format!("must be at most {MAX_ECHO_DELAY_MS}, got {delay_ms}"),
                ));
            }
            convert::term_to_json(value, "value", Limits::default())
        })();
        match prepared {
            Ok(json) => reply::spawn(env, async move {
                if delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                Ok(Json(json))
            }),
            Err(error) => reply::encode::<()>(env, Err(error)),
        }
    }

    /// An async job that panics: the caller still gets exactly one reply,
    /// `{ref, {:error, {:panic, message, %{}}}}`.
    #[rustler::nif]
    fn async_panic(env: Env, message: String) -> Term {
        reply::spawn(env, async move {
            if !message.is_empty() {
                panic!("{message}");
            }
            Ok(atoms::ok())
        })
    }

    /// A NIF body that panics: returns `{:error, {:panic, message, %{}}}`.
    #[rustler::nif]
    fn sync_panic(env: Env, message: String) -> Term {
        reply::guarded(env, || -> Result<rustler::Atom> { panic!("{message}") })
    }

    /// Runs `code` in the bare interpreter (no sandbox, no limits) on a
    /// dirty CPU scheduler and returns its numeric result: the ceiling
    /// `bench/lua_vs_luerl.exs` measures the sandbox against. A script that
    /// fails is a `:bad_argument` naming `code`, with Luau's message.
    #[rustler::nif(schedule = "DirtyCpu")]
    fn lua_reference_eval<'a>(env: Env<'a>, code: &str) -> Term<'a> {
        reply::guarded(env, || {
            beamlens_core::sandbox::reference::eval_number(code)
                .map_err(|message| Error::bad_argument("code", message))
        })
    }

    /// 64-bit FNV-1a of a binary, computed on a dirty CPU scheduler so that a
    /// large input never holds a normal scheduler.
    #[rustler::nif(schedule = "DirtyCpu")]
    fn dirty_checksum<'a>(env: Env<'a>, data: Binary) -> Term<'a> {
        reply::guarded(env, || Ok(super::fnv1a(data.as_slice())))
    }
}

/// 64-bit FNV-1a (`dirty_checksum/1`; its reference values are checked by
/// test/beamlens/runtime_test.exs).
#[cfg(feature = "test-nifs")]
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
