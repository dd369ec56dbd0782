//! Conversion between Erlang terms and `serde_json::Value`.
//!
//! Everything the Rust core receives from Elixir (snapshots, tool results,
//! callback answers) and everything it returns (LLM responses, Lua results)
//! goes through here. The mapping is total and never creates atoms:
//!
//! | Erlang                         | JSON                                 |
//! |--------------------------------|--------------------------------------|
//! | `nil`, `:undefined`            | `null`                               |
//! | `true`, `false`                | booleans                             |
//! | other atoms                    | strings                              |
//! | integers, floats               | numbers (out-of-range integers: strings) |
//! | binaries                       | strings (invalid UTF-8 is replaced)  |
//! | lists, tuples                  | arrays                               |
//! | maps                           | objects (keys converted to strings)  |
//! | pids, refs, ports, funs        | readable strings such as `"#PID<0.1.0>"` |
//!
//! In the other direction objects become maps with binary keys and `null`
//! becomes `nil`. Depth and size are bounded so that a hostile or runaway
//! value cannot exhaust memory.

use rustler::{Encoder, Env, Term, TermType};
use serde_json::{Map, Number, Value};

use crate::atoms;
use crate::error::{Error, Result};

/// Bounds for a conversion.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest nesting accepted.
    pub max_depth: usize,
    /// Most nodes (scalars, list elements, map entries) accepted.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 32,
            max_nodes: 1_000_000,
        }
    }
}

/// Converts a term to JSON. `what` names the argument in error messages.
///
/// The walk is iterative (an explicit stack on the heap), so a deeply nested
/// term cannot overflow the small C stack of a dirty scheduler.
pub fn term_to_json(term: Term, what: &str, limits: Limits) -> Result<Value> {
    // Children are pulled lazily, so the node limit stops a huge list or map
    // after `max_nodes` elements instead of after collecting all of them.
    enum Items<'a> {
        List(rustler::ListIterator<'a>),
        Tuple(std::vec::IntoIter<Term<'a>>),
    }
    enum Frame<'a> {
        Array(Items<'a>, Vec<Value>),
        Object(Box<rustler::MapIterator<'a>>, Map<String, Value>, String),
    }

    let mut nodes = 0;
    let mut stack: Vec<Frame> = Vec::new();
    let mut next = Some(term);

    loop {
        // Descend into `next`, or produce a scalar.
        let mut produced = match next.take() {
            Some(term) => {
                nodes += 1;
                if nodes > limits.max_nodes {
                    return Err(Error::bad_argument(
                        what,
                        format!("has more than {} elements", limits.max_nodes),
                    ));
                }
                if stack.len() > limits.max_depth {
                    return Err(Error::bad_argument(
                        what,
                        format!("is nested deeper than {} levels", limits.max_depth),
                    ));
                }
                match term.get_type() {
                    TermType::List => {
                        let iter: rustler::ListIterator = term
                            .decode()
                            .map_err(|_| Error::bad_argument(what, "contains an improper list"))?;
                        stack.push(Frame::Array(Items::List(iter), Vec::new()));
                        None
                    }
                    TermType::Tuple => {
                        let items = rustler::types::tuple::get_tuple(term).map_err(|_| {
                            Error::bad_argument(what, "contains an unreadable tuple")
                        })?;
                        stack.push(Frame::Array(Items::Tuple(items.into_iter()), Vec::new()));
                        None
                    }
                    TermType::Map => {
                        let iter = rustler::MapIterator::new(term).ok_or_else(|| {
                            Error::bad_argument(what, "contains an unreadable map")
                        })?;
                        stack.push(Frame::Object(Box::new(iter), Map::new(), String::new()));
                        None
                    }
                    _ => Some(scalar_to_json(term, what)?),
                }
            }
            None => None,
        };

        // Feed the produced value to its parent and pick the next child.
        loop {
            let Some(frame) = stack.last_mut() else {
                return Ok(produced.unwrap_or(Value::Null));
            };
            match frame {
                Frame::Array(items, out) => {
                    if let Some(value) = produced.take() {
                        out.push(value);
                    }
                    let child = match items {
                        Items::List(iter) => iter.next(),
                        Items::Tuple(iter) => iter.next(),
                    };
                    if let Some(child) = child {
                        next = Some(child);
                        break;
                    }
                }
                Frame::Object(entries, out, pending_key) => {
                    if let Some(value) = produced.take() {
                        out.insert(std::mem::take(pending_key), value);
                    }
                    let child = entries.find_map(|(key, child)| {
                        let key = key_to_string(key);
                        (key != "__struct__").then_some((key, child))
                    });
                    if let Some((key, child)) = child {
                        *pending_key = key;
                        next = Some(child);
                        break;
                    }
                }
            }
            // The frame is complete: pop it and hand its value to the parent.
            produced = Some(match stack.pop() {
                Some(Frame::Array(_, out)) => Value::Array(out),
                Some(Frame::Object(_, out, _)) => Value::Object(out),
                None => unreachable!("checked above"),
            });
        }
    }
}

fn scalar_to_json(term: Term, what: &str) -> Result<Value> {
    let value = match term.get_type() {
        TermType::Atom => atom_to_json(term)?,
        TermType::Binary => {
            let bytes = term
                .decode_as_binary()
                .map_err(|_| Error::bad_argument(what, "contains an unreadable binary"))?;
            Value::String(String::from_utf8_lossy(bytes.as_slice()).into_owned())
        }
        TermType::Integer => {
            if let Ok(i) = term.decode::<i64>() {
                Value::Number(i.into())
            } else if let Ok(u) = term.decode::<u64>() {
                Value::Number(u.into())
            } else {
                Value::String(format!("{term:?}"))
            }
        }
        TermType::Float => {
            let f: f64 = term
                .decode()
                .map_err(|_| Error::bad_argument(what, "contains an unreadable float"))?;
            Number::from_f64(f).map_or(Value::Null, Value::Number)
        }
        TermType::Pid => Value::String(format!("#PID{term:?}")),
        TermType::Port => Value::String(format!("#Port{term:?}")),
        TermType::Ref => Value::String(format!("#Reference{term:?}")),
        TermType::Fun => Value::String(format!("#Function{term:?}")),
        _ => Value::String(format!("{term:?}")),
    };
    Ok(value)
}

fn atom_to_json(term: Term) -> Result<Value> {
    let name = term
        .atom_to_string()
        .map_err(|_| Error::bad_argument("term", "contains an unreadable atom"))?;
    Ok(match name.as_str() {
        "nil" | "undefined" => Value::Null,
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(strip_elixir_prefix(name)),
    })
}

fn strip_elixir_prefix(name: String) -> String {
    match name.strip_prefix("Elixir.") {
        Some(rest) => rest.to_string(),
        None => name,
    }
}

fn key_to_string(key: Term) -> String {
    match key.get_type() {
        TermType::Atom => key
            .atom_to_string()
            .map(strip_elixir_prefix)
            .unwrap_or_default(),
        TermType::Binary => key
            .decode_as_binary()
            .map(|b| String::from_utf8_lossy(b.as_slice()).into_owned())
            .unwrap_or_default(),
        _ => format!("{key:?}"),
    }
}

/// A JSON value that encodes as a plain Elixir term (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Json(pub Value);

impl Encoder for Json {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        json_to_term(env, &self.0)
    }
}

/// Converts JSON to a term: objects become maps with binary keys.
pub fn json_to_term<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    match value {
        Value::Null => atoms::nil().encode(env),
        Value::Bool(b) => b.encode(env),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.encode(env)
            } else if let Some(u) = n.as_u64() {
                u.encode(env)
            } else {
                n.as_f64().unwrap_or(0.0).encode(env)
            }
        }
        Value::String(s) => s.encode(env),
        Value::Array(items) => items
            .iter()
            .map(|item| json_to_term(env, item))
            .collect::<Vec<_>>()
            .encode(env),
        Value::Object(map) => {
            let keys: Vec<Term> = map.keys().map(|k| k.encode(env)).collect();
            let values: Vec<Term> = map.values().map(|v| json_to_term(env, v)).collect();
            Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
        }
    }
}
