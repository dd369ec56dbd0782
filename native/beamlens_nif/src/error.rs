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
    /// The job could not run or did not finish: busy, a caught panic, or
    /// the runtime shutting down (see `runtime::Error`).
    #[error(transparent)]
    Runtime(runtime::Error),

    /// An argument had the wrong shape or value.
    #[error("invalid argument {name}: {reason}")]
    BadArgument { name: String, reason: String },

    /// The operation did not finish within its time limit.
    #[error("timed out after {ms} ms")]
    Timeout { ms: u64 },

    /// A Lua script failed or broke one of its limits. Encodes with the
    /// sandbox's own kind (`:syntax`, `:timeout`, `:memory_limit`, ...).
    #[error("{0}")]
    Lua(Box<crate::sandbox::Failure>),
    /// An LLM request failed (see `llm::error`).
    #[error("{0}")]
    Llm(crate::llm::error::LlmError),
}

impl Error {
    /// A `BadArgument` naming the argument and what is wrong with it.
    pub fn bad_argument(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadArgument {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// A caught failure of native code, with what went wrong.
    pub fn panic(message: impl Into<String>) -> Self {
        Error::Runtime(runtime::Error::Panic(message.into()))
    }

    /// The refusal of a job because `capacity` jobs are already in flight.
    pub fn busy(capacity: usize) -> Self {
        Error::Runtime(runtime::Error::Busy { capacity })
    }

    /// Builds a `Panic` error from the payload of a caught panic.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        runtime::Error::from_panic(payload).into()
    }

    fn kind(&self) -> rustler::Atom {
        match self {
            Error::Runtime(runtime::Error::Busy { .. }) => atoms::busy(),
            Error::Runtime(runtime::Error::Panic(_)) => atoms::panic(),
            Error::Runtime(runtime::Error::Shutdown(_)) => atoms::shutdown(),
            Error::BadArgument { .. } => atoms::bad_argument(),
            Error::Timeout { .. } => atoms::timeout(),
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
            Error::Runtime(runtime::Error::Busy { capacity }) => {
                put(map, "capacity", capacity.encode(env))
            }
            Error::BadArgument { name, .. } => put(map, "argument", name.encode(env)),
            Error::Timeout { ms } => put(map, "timeout_ms", ms.encode(env)),
            Error::Runtime(_) => map,
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
        Error::Runtime(error)
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

/// Runs `f`, turning a panic into a `runtime::Error::Panic`. Use it around NIF bodies so
/// that a bug becomes `{:error, {:panic, message, %{}}}` instead of an
/// exception raised from native code.
pub fn catch_panic<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    runtime::catch_panic(f)
}
