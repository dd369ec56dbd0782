//! Plain-Rust core of BeamLens.
//!
//! Everything here is testable without an Erlang VM (`cargo test -p
//! beamlens_core`): no rustler types, no VM symbols. Each capability has its
//! own error type (`correlation::Error`, `llm::error::LlmError`,
//! `sandbox::Failure`, `runtime::Error`); the `beamlens_nif` crate turns each
//! into the `{kind, message, details}` tuple Elixir sees.

pub mod calendar;
pub mod compaction;
pub mod correlation;
pub mod gate;
pub mod json;
pub mod llm;
pub mod redact;
pub mod runtime;
pub mod sandbox;
