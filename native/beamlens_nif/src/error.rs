//! The one error encoding of the NIF library.
//!
//! Every error crosses the boundary as a tagged tuple
//! `{kind, message, details}`: `kind` is an atom from a fixed list, `message`
//! is a human-readable binary (never a debug dump, never a secret) and
//! `details` is a map with machine-readable fields. `Beamlens.Error.from_native/1`
//! turns the tuple into an exception struct on the Elixir side.
//!
//! Each core module has its own error type (`runtime::Error`,
//! `correlation::Error`, `sandbox::Failure`, `llm::error::LlmError`); [`Error`]
//! gathers them, together with the adapters' own argument errors, and is the
//! only type here that implements rustler's `Encoder`.

use rustler::{Encoder, Env, Term};

use crate::atoms;
use crate::{correlation, runtime};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Too many jobs are in flight; the submission was refused.
    #[error("the native job queue is full ({capacity} jobs in flight)")]
    Busy { capacity: usize },

    /// Rust code panicked. The panic was caught; the VM is unaffected.
    #[error("native code panicked: {0}")]
    Panic(String),

    /// An argument had the wrong shape or value.
    #[error("invalid argument {name}: {reason}")]
    BadArgument { name: String, reason: String },

    /// The operation did not finish within its time limit.
    #[error("timed out after {ms} ms")]
    Timeout { ms: u64 },

    /// The native runtime is shutting down or could not be started.
    #[error("native runtime unavailable: {0}")]
    Shutdown(String),

    /// A Lua script failed or broke one of its limits. Encodes with the
    /// sandbox's own kind (`:syntax`, `:timeout`, `:memory_limit`, ...).
    #[error("{0}")]
    Lua(Box<crate::sandbox::Failure>),
    /// An LLM request failed (see `llm::error`).
    #[error("{0}")]
    Llm(crate::llm::error::LlmError),
}

impl Error {
    pub fn bad_argument(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadArgument {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// Builds a `Panic` error from the payload of a caught panic.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        runtime::Error::from_panic(payload).into()
    }

    fn kind(&self) -> rustler::Atom {
        match self {
            Error::Busy { .. } => atoms::busy(),
            Error::Panic(_) => atoms::panic(),
            Error::BadArgument { .. } => atoms::bad_argument(),
            Error::Timeout { .. } => atoms::timeout(),
            Error::Shutdown(_) => atoms::shutdown(),
            Error::Lua(failure) => crate::nif_lua::kind_atom(failure.kind),
            Error::Llm(_) => atoms::llm(),
        }
    }

    fn details<'a>(&self, env: Env<'a>) -> Term<'a> {
        let map = Term::map_new(env);
        let put = |map: Term<'a>, key: &str, value: Term<'a>| {
            map.map_put(key.encode(env), value).unwrap_or(map)
        };
        match self {
            Error::Busy { capacity } => put(map, "capacity", capacity.encode(env)),
            Error::BadArgument { name, .. } => put(map, "argument", name.encode(env)),
            Error::Timeout { ms } => put(map, "timeout_ms", ms.encode(env)),
            Error::Panic(_) | Error::Shutdown(_) => map,
            Error::Lua(failure) => {
                let map = put(map, "line", failure.line.encode(env));
                let map = put(map, "output", failure.output.encode(env));
                crate::nif_lua::put_stats(env, map, &failure.stats)
            }
            Error::Llm(error) => crate::nif_llm::error_details(env, error),
        }
    }
}

impl From<runtime::Error> for Error {
    fn from(error: runtime::Error) -> Self {
        match error {
            runtime::Error::Busy { capacity } => Error::Busy { capacity },
            runtime::Error::Panic(message) => Error::Panic(message),
            runtime::Error::Shutdown(reason) => Error::Shutdown(reason),
        }
    }
}

impl From<correlation::Error> for Error {
    fn from(error: correlation::Error) -> Self {
        match error {
            correlation::Error::BadArgument { name, reason } => Error::BadArgument { name, reason },
        }
    }
}

impl Encoder for Error {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        (self.kind(), self.to_string(), self.details(env)).encode(env)
    }
}

/// Result type of the NIF adapters.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `f`, turning a panic into `Error::Panic`. Use it around NIF bodies so
/// that a bug becomes `{:error, {:panic, message, %{}}}` instead of an
/// exception raised from native code.
pub fn catch_panic<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    runtime::catch_panic(f)
}
