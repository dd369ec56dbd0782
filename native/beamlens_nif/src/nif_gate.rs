//! NIF adapter for the anomaly gate (`gate.rs`). Observing a few dozen
//! metrics takes microseconds, so these run on normal schedulers.

use std::sync::Mutex;

use rustler::{Env, ResourceArc, Term};

use crate::convert::{self, Json, Limits};
use crate::error::Error;
use crate::gate::{Config, Gate, Sample};
use crate::reply;

/// Most samples accepted in one `gate_observe/3` call.
const MAX_SAMPLES: usize = 2_048;

pub struct GateResource {
    gate: Mutex<Gate>,
}

#[rustler::resource_impl]
impl rustler::Resource for GateResource {}

/// `gate_new(config_map)` -> `{:ok, gate}` or `{:error, {:bad_argument, ...}}`.
#[rustler::nif]
fn gate_new<'a>(env: Env<'a>, config: Term<'a>) -> Term<'a> {
    reply::guarded(env, || {
        let json = convert::term_to_json(config, "config", Limits::default())?;
        let config: Config = serde_json::from_value(json)
            .map_err(|e| Error::bad_argument("config", e.to_string()))?;
        Ok(ResourceArc::new(GateResource {
            gate: Mutex::new(Gate::new(config)),
        }))
    })
}

/// `gate_observe(gate, samples, now_ms)` -> `{:ok, %{"findings" => [...],
/// "cleared" => [...], "dropped" => [...]}}`.
#[rustler::nif]
fn gate_observe<'a>(
    env: Env<'a>,
    gate: ResourceArc<GateResource>,
    samples: Term<'a>,
    now_ms: u64,
) -> Term<'a> {
    reply::guarded(env, || {
        let json = convert::term_to_json(
            samples,
            "samples",
            Limits {
                max_depth: 4,
                max_nodes: MAX_SAMPLES * 16,
            },
        )?;
        let samples: Vec<Sample> = serde_json::from_value(json)
            .map_err(|e| Error::bad_argument("samples", e.to_string()))?;
        if samples.len() > MAX_SAMPLES {
            return Err(Error::bad_argument(
                "samples",
                format!("at most {MAX_SAMPLES} per call, got {}", samples.len()),
            ));
        }
        let verdict = {
            let mut gate = gate
                .gate
                .lock()
                .map_err(|_| Error::panic("gate lock poisoned"))?;
            gate.observe(&samples, now_ms)
        };
        let value = serde_json::to_value(verdict)
            .map_err(|e| Error::panic(format!("cannot encode verdict: {e}")))?;
        Ok(Json(value))
    })
}
