//! Asynchronous NIF jobs: the NIF returns `{:ok, ref}` at once, the work runs
//! on the shared runtime, and the caller receives `{ref, {:ok, value}}` or
//! `{ref, {:error, {kind, message, details}}}` as a message. Each job replies
//! exactly once, panics included.

use std::future::Future;

use rustler::{Encoder, Env, OwnedEnv, Term};

use crate::atoms;
use crate::error::{Error, Result};
use crate::runtime;

/// Starts `future` as an async job for the calling process.
///
/// Returns `{:ok, ref}`, `{:error, :busy}` when every job slot is taken, or
/// `{:error, {kind, message, details}}` when the runtime is unavailable.
pub fn spawn<'a, F, T>(env: Env<'a>, future: F) -> Term<'a>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Encoder + Send + 'static,
{
    let slot = match runtime::try_acquire_slot() {
        Ok(slot) => slot,
        Err(_) => return (atoms::error(), atoms::busy()).encode(env),
    };
    let handle = match runtime::handle() {
        Ok(handle) => handle,
        Err(error) => return (atoms::error(), Error::from(error)).encode(env),
    };

    let pid = env.pid();
    let reference = env.make_ref();
    let mut owned_env = OwnedEnv::new();
    let saved_ref = owned_env.save(reference);

    handle.spawn(async move {
        let result = runtime::run_guarded(future).await;
        drop(slot);
        // The caller may have exited meanwhile; there is nobody to tell then.
        let _ = owned_env.send_and_clear(&pid, |env| {
            (saved_ref.load(env), encode_result(env, &result))
        });
    });

    (atoms::ok(), reference).encode(env)
}

fn encode_result<'a, T: Encoder>(env: Env<'a>, result: &Result<T>) -> Term<'a> {
    match result {
        Ok(value) => (atoms::ok(), value).encode(env),
        Err(error) => (atoms::error(), error).encode(env),
    }
}

/// Encodes a synchronous result as `{:ok, value}` or
/// `{:error, {kind, message, details}}`.
pub fn encode<'a, T: Encoder>(env: Env<'a>, result: Result<T>) -> Term<'a> {
    encode_result(env, &result)
}

/// Convenience for NIF bodies that may panic: runs `f` under
/// [`crate::error::catch_panic`] and encodes the outcome.
pub fn guarded<'a, T: Encoder>(env: Env<'a>, f: impl FnOnce() -> Result<T>) -> Term<'a> {
    encode(env, crate::error::catch_panic(f))
}
