//! NIF adapter for the redactor's text rules (`redact.rs`).
//!
//! `redactor_new/2` compiles the rules once into a resource; `redact_text/3`
//! runs them on a normal scheduler for short text and `redact_text_dirty/3`
//! on a dirty CPU scheduler for long text (the Elixir side picks by size,
//! see `Beamlens.Redactor`).

use std::borrow::Cow;

use rustler::{Binary, Encoder, Env, NewBinary, ResourceArc, Term};

use crate::error::Error;
use crate::redact::Redactor;
use crate::reply;

pub struct RedactorResource {
    redactor: Redactor,
}

#[rustler::resource_impl]
impl rustler::Resource for RedactorResource {}

/// `redactor_new(words, defaults?)` -> `{:ok, redactor}` or
/// `{:error, {:bad_argument, message, details}}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn redactor_new<'a>(env: Env<'a>, words: Vec<String>, defaults: bool) -> Term<'a> {
    reply::guarded(env, || {
        let redactor = Redactor::new(&words, defaults)
            .map_err(|e| Error::bad_argument("keys", e.to_string()))?;
        Ok(ResourceArc::new(RedactorResource { redactor }))
    })
}

/// `redact_text(redactor, text, node_names)` -> the redacted binary (`text`
/// itself when nothing was found). For text up to a few KB.
#[rustler::nif]
fn redact_text<'a>(
    env: Env<'a>,
    redactor: ResourceArc<RedactorResource>,
    text: Binary<'a>,
    nodes: Vec<Binary<'a>>,
) -> Term<'a> {
    run(env, &redactor, text, &nodes)
}

/// `redact_text_dirty/3`: `redact_text/3` on a dirty CPU scheduler.
#[rustler::nif(schedule = "DirtyCpu")]
fn redact_text_dirty<'a>(
    env: Env<'a>,
    redactor: ResourceArc<RedactorResource>,
    text: Binary<'a>,
    nodes: Vec<Binary<'a>>,
) -> Term<'a> {
    run(env, &redactor, text, &nodes)
}

fn run<'a>(
    env: Env<'a>,
    redactor: &RedactorResource,
    text: Binary<'a>,
    nodes: &[Binary<'a>],
) -> Term<'a> {
    let nodes: Vec<&[u8]> = nodes.iter().map(|n| n.as_slice()).collect();
    let result = crate::error::catch_panic(|| {
        Ok(match redactor.redactor.redact(text.as_slice(), &nodes) {
            Cow::Borrowed(_) => None,
            Cow::Owned(bytes) => Some(bytes),
        })
    });
    match result {
        Ok(None) => text.to_term(env),
        Ok(Some(bytes)) => {
            let mut binary = NewBinary::new(env, bytes.len());
            binary.as_mut_slice().copy_from_slice(&bytes);
            Term::from(binary)
        }
        Err(error) => reply::encode::<()>(env, Err(error)),
    }
    .encode(env)
}
