//! The BeamLens NIF library: glue between the Erlang VM and `beamlens_core`.
//!
//! The capabilities (gate, compaction, correlation, LLM client, sandbox,
//! redactor, runtime) are plain Rust in the `beamlens_core` crate and are
//! tested there without a VM. This crate holds only what touches rustler's
//! `Env` and `Term`: atoms, term conversion, replies, the one error encoding
//! (`error.rs`) and the `nif_*` adapters. rustler registers every
//! `#[rustler::nif]` by itself, so this file only declares modules.

pub mod atoms;
pub mod convert;
pub mod error;
pub mod reply;

mod nif_compaction;
mod nif_correlation;
mod nif_gate;
mod nif_json;
mod nif_llm;
mod nif_lua;
mod nif_redact;
mod nif_runtime;

// The core's modules, so that adapters name them `crate::sandbox`,
// `crate::runtime`, ... like this crate's own.
use beamlens_core::{calendar, compaction, correlation, gate, json, llm, redact, runtime, sandbox};

rustler::init!("Elixir.Beamlens.Native", load = nif_runtime::on_load);
