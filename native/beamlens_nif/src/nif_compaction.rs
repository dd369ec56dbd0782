//! NIF adapter for context compaction (`compaction.rs`). Planning walks a
//! conversation of at most a few hundred KiB, so it runs on a dirty CPU
//! scheduler.

use rustler::{Env, Term};
use serde_json::json;

use crate::compaction::{self, Message};
use crate::convert::{self, Json, Limits};
use crate::error::Error;
use crate::reply;

fn decode_messages(messages: Term) -> crate::error::Result<Vec<Message>> {
    let json = convert::term_to_json(messages, "messages", Limits::default())?;
    serde_json::from_value(json).map_err(|e| Error::bad_argument("messages", e.to_string()))
}

/// `compaction_plan(messages, max_tokens, keep_last, fixed_tokens,
/// reported_tokens)` -> `{:ok, nil}` or `{:ok, %{"cut" => n, "tokens_before"
/// => n, "tokens_kept" => n, "transcript" => text, "instructions" => text}}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn compaction_plan<'a>(
    env: Env<'a>,
    messages: Term<'a>,
    max_tokens: usize,
    keep_last: usize,
    fixed_tokens: usize,
    reported_tokens: usize,
) -> Term<'a> {
    reply::guarded(env, || {
        let messages = decode_messages(messages)?;
        let plan = compaction::plan(
            &messages,
            max_tokens,
            keep_last,
            fixed_tokens,
            reported_tokens,
        );
        Ok(Json(match plan {
            None => serde_json::Value::Null,
            Some(plan) => json!({
                "cut": plan.cut,
                "tokens_before": plan.tokens_before,
                "tokens_kept": plan.tokens_kept,
                "transcript": plan.transcript,
                "needs_user_turn": plan.needs_user_turn,
                "instructions": compaction::INSTRUCTIONS,
            }),
        }))
    })
}

/// `compaction_truncate(messages, keep_last)` -> `{:ok, cut | nil}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn compaction_truncate<'a>(env: Env<'a>, messages: Term<'a>, keep_last: usize) -> Term<'a> {
    reply::guarded(env, || {
        let messages = decode_messages(messages)?;
        Ok(Json(match compaction::truncate(&messages, keep_last) {
            Some(cut) => json!(cut),
            None => serde_json::Value::Null,
        }))
    })
}

/// `compaction_estimate(messages)` -> `{:ok, tokens}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn compaction_estimate<'a>(env: Env<'a>, messages: Term<'a>) -> Term<'a> {
    reply::guarded(env, || {
        Ok(compaction::estimate_tokens(&decode_messages(messages)?))
    })
}
