//! NIF adapters for the correlation engine (`correlation/`).
//!
//! An engine lives in a resource owned by one coordinator process. Every
//! call that touches it runs on a dirty CPU scheduler: a batch of alerts is
//! cheap (about a microsecond per alert) but nothing bounds how long the
//! lock or a large batch might take on a loaded host.

use std::sync::{Mutex, MutexGuard};

use rustler::{Binary, Env, ListIterator, ResourceArc, Term};
use serde_json::{json, Value};

use crate::calendar::days_from_civil;
use crate::convert::{self, Json, Limits};
use crate::correlation::engine::MAX_BATCH;
use crate::correlation::rules::CAUSAL_RULES;
use crate::correlation::{AlertInput, Config, Engine, Severity};
use crate::error::{Error, Result};
use crate::reply;

/// A correlation engine owned by a coordinator.
pub struct EngineResource {
    engine: Mutex<Engine>,
}

#[rustler::resource_impl]
impl rustler::Resource for EngineResource {}

impl EngineResource {
    /// Locks the engine. A panic while it was locked may have left it half
    /// updated, so a poisoned engine is replaced by an empty one with the
    /// same settings: correlation restarts, the VM and the coordinator carry
    /// on.
    fn lock(&self) -> MutexGuard<'_, Engine> {
        match self.engine.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                let mut guard = poisoned.into_inner();
                let config = guard.config();
                if let Ok(fresh) = Engine::new(config) {
                    *guard = fresh;
                }
                self.engine.clear_poison();
                guard
            }
        }
    }
}

/// `correlation_new(%{window_ms: n, order_tolerance_ms: n, max_members: n})`
/// -> `{:ok, engine}`. Every key is required: the defaults live in
/// `Beamlens.Coordinator.Options`.
#[rustler::nif]
fn correlation_new<'a>(env: Env<'a>, options: Term<'a>) -> Term<'a> {
    reply::guarded(env, || {
        let options = convert::term_to_json(options, "options", Limits::default())?;
        let config = Config {
            window_ms: int_option(&options, "window_ms")?,
            order_tolerance_ms: int_option(&options, "order_tolerance_ms")?,
            max_members: usize::try_from(int_option(&options, "max_members")?)
                .map_err(|_| Error::bad_argument("max_members", "must be positive"))?,
        };
        let engine = Engine::new(config)?;
        Ok(ResourceArc::new(EngineResource {
            engine: Mutex::new(engine),
        }))
    })
}

fn int_option(options: &Value, key: &str) -> Result<i64> {
    match options.get(key) {
        None | Some(Value::Null) => Err(Error::bad_argument(key, "is required")),
        Some(value) => value
            .as_i64()
            .ok_or_else(|| Error::bad_argument(key, format!("must be an integer, got {value}"))),
    }
}

/// `correlation_ingest(engine, alerts, now_ms)` -> `{:ok, report}`, where
/// `alerts` is a list of `%Beamlens.Alert{}` structs. Only code fields are
/// read: `id`, `fingerprint`, `watcher`, `anomaly_type`, `node`, `severity`,
/// `entities` and `detected_at`. An element that is not such an alert is
/// skipped, and why is listed under `"rejected"` (at most
/// [`MAX_REJECTIONS`] reasons), so one bad alert never costs the batch.
#[rustler::nif(schedule = "DirtyCpu")]
fn correlation_ingest<'a>(
    env: Env<'a>,
    engine: ResourceArc<EngineResource>,
    alerts: Term<'a>,
    now_ms: i64,
) -> Term<'a> {
    reply::guarded(env, || {
        let (alerts, rejected) = decode_alerts(alerts)?;
        let report = engine.lock().ingest(alerts, now_ms);
        let mut json = to_json(&report)?;
        if let Value::Object(map) = &mut json.0 {
            map.insert("rejected".into(), json!(rejected));
        }
        Ok(json)
    })
}

/// `correlation_advance(engine, now_ms)` -> `{:ok, report}`: expiry only.
#[rustler::nif(schedule = "DirtyCpu")]
fn correlation_advance(env: Env, engine: ResourceArc<EngineResource>, now_ms: i64) -> Term {
    reply::guarded(env, || {
        let report = engine.lock().advance(now_ms);
        to_json(&report)
    })
}

/// `correlation_stats(engine)` -> `{:ok, stats}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn correlation_stats(env: Env, engine: ResourceArc<EngineResource>) -> Term {
    reply::guarded(env, || to_json(&engine.lock().stats()))
}

/// `correlation_rules()` -> `{:ok, [rule]}`: the causal table.
#[rustler::nif]
fn correlation_rules(env: Env) -> Term {
    reply::guarded(env, || {
        Ok(Json(Value::Array(
            CAUSAL_RULES
                .iter()
                .map(|rule| {
                    json!({
                        "name": rule.name,
                        "lead": rule.lead,
                        "lag": rule.lag,
                        "min_lag_ms": rule.min_lag_ms,
                        "max_lag_ms": rule.max_lag_ms,
                        "mutual": rule.mutual,
                        "mechanism": rule.mechanism,
                        "look_at": rule.look_at,
                    })
                })
                .collect(),
        )))
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Json> {
    serde_json::to_value(value)
        .map(Json)
        .map_err(|e| Error::panic(format!("could not encode the correlation report: {e}")))
}

/// Reasons for skipped alerts reported per batch.
const MAX_REJECTIONS: usize = 10;

fn decode_alerts(term: Term) -> Result<(Vec<AlertInput>, Vec<String>)> {
    let items: ListIterator = term
        .decode()
        .map_err(|_| Error::bad_argument("alerts", "must be a list"))?;
    let mut alerts = Vec::new();
    let mut rejected = Vec::new();
    for (i, item) in items.enumerate() {
        if i >= MAX_BATCH {
            return Err(Error::bad_argument(
                "alerts",
                format!("has more than {MAX_BATCH} alerts"),
            ));
        }
        match decode_alert(item) {
            Ok(alert) => alerts.push(alert),
            Err(reason) if rejected.len() < MAX_REJECTIONS => {
                rejected.push(format!("alerts[{i}] {reason}"));
            }
            Err(_) => {}
        }
    }
    Ok((alerts, rejected))
}

/// Keys read from `%Beamlens.Alert{}` and `%DateTime{}` (fixed names).
mod keys {
    rustler::atoms! {
        id, fingerprint, watcher, anomaly_type, node, severity, entities, detected_at,
        year, month, day, hour, minute, second, microsecond, utc_offset, std_offset,
    }
}

fn decode_alert(term: Term) -> std::result::Result<AlertInput, String> {
    let field = |key: rustler::Atom, name: &str| {
        term.map_get(key)
            .map_err(|_| format!("must be a %Beamlens.Alert{{}} with :{name}"))
    };
    let severity_text = name(field(keys::severity(), "severity")?, "severity")?;
    let severity = Severity::parse(&severity_text).ok_or_else(|| {
        format!("severity must be :info, :warning or :critical, got {severity_text:?}")
    })?;
    let entities: ListIterator = field(keys::entities(), "entities")?
        .decode()
        .map_err(|_| "entities must be a list".to_string())?;
    let entities = entities
        .map(|entity| {
            let pair = rustler::types::tuple::get_tuple(entity)
                .ok()
                .filter(|pair| pair.len() == 2)
                .ok_or_else(|| "each entity must be a {kind, id} tuple".to_string())?;
            Ok((name(pair[0], "entity kind")?, name(pair[1], "entity id")?))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Ok(AlertInput {
        id: text(field(keys::id(), "id")?, "id")?,
        fingerprint: text(field(keys::fingerprint(), "fingerprint")?, "fingerprint")?,
        watcher: name(field(keys::watcher(), "watcher")?, "watcher")?,
        anomaly_type: text(field(keys::anomaly_type(), "anomaly_type")?, "anomaly_type")?,
        node: name(field(keys::node(), "node")?, "node")?,
        severity,
        entities,
        detected_at_ms: unix_ms(field(keys::detected_at(), "detected_at")?)?,
    })
}

/// A binary, or the name of an atom (without `Elixir.`), or any other term
/// printed (a pid named as an entity, say).
fn name(term: Term, what: &str) -> std::result::Result<String, String> {
    if term.is_binary() {
        return text(term, what);
    }
    if term.is_atom() {
        let name = term
            .atom_to_string()
            .map_err(|_| format!("{what} is an unreadable atom"))?;
        return Ok(match name.strip_prefix("Elixir.") {
            Some(rest) => rest.to_string(),
            None => name,
        });
    }
    Ok(format!("{term:?}"))
}

/// Unix milliseconds of a `%DateTime{}` in the ISO calendar.
fn unix_ms(term: Term) -> std::result::Result<i64, String> {
    let int = |key: rustler::Atom| -> std::result::Result<i64, String> {
        term.map_get(key)
            .and_then(|v| v.decode::<i64>())
            .map_err(|_| "detected_at must be a DateTime".to_string())
    };
    let (micro, _precision): (i64, i64) = term
        .map_get(keys::microsecond())
        .and_then(|v| v.decode())
        .map_err(|_| "detected_at must be a DateTime".to_string())?;
    let days = days_from_civil(int(keys::year())?, int(keys::month())?, int(keys::day())?);
    let seconds = days * 86_400
        + int(keys::hour())? * 3_600
        + int(keys::minute())? * 60
        + int(keys::second())?
        - int(keys::utc_offset())?
        - int(keys::std_offset())?;
    Ok(seconds * 1_000 + micro.div_euclid(1_000))
}

fn text(term: Term, what: &str) -> std::result::Result<String, String> {
    let binary: Binary = term
        .decode()
        .map_err(|_| format!("{what} must be a binary"))?;
    Ok(String::from_utf8_lossy(binary.as_slice()).into_owned())
}
