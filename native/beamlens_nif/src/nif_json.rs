//! NIF adapter for the bounded JSON encoder (`beamlens_core::json`): text
//! that goes to a model, such as snapshots and tool results. The Elixir side
//! has no JSON library (BeamLens has no Hex dependencies).

use rustler::{Env, Term};

use crate::convert::{self, Limits};
use crate::json::encode_bounded;
use crate::reply;

/// `json_encode(term, max_bytes)` -> `{:ok, binary}`. Output longer than
/// `max_bytes` is shrunk: long lists keep their first items and long strings
/// their start, with markers saying what was left out; if that is still too
/// long, the text is cut and says so.
#[rustler::nif(schedule = "DirtyCpu")]
fn json_encode<'a>(env: Env<'a>, term: Term<'a>, max_bytes: usize) -> Term<'a> {
    reply::guarded(env, || {
        let value = convert::term_to_json(term, "term", Limits::default())?;
        Ok(encode_bounded(&value, max_bytes))
    })
}
