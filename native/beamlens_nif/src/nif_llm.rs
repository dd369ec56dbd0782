//! NIF adapters for the LLM client (`crate::llm`).
//!
//! A provider's configuration, secrets included, is handed over once and
//! kept in a resource; Elixir only holds the opaque handle, so no key sits
//! in a process state, a crash report or `inspect/1` output. A chat request
//! returns `{:ok, ref}` at once and its reply arrives as
//! `{ref, {:ok, response} | {:error, {:llm, message, details}}}`.

use std::sync::Arc;

use rustler::{Encoder, Env, ResourceArc, Term};

use crate::convert::{self, Json, Limits};
use crate::error::Error;
use crate::llm::config::ProviderConfig;
use crate::llm::error::LlmError;
use crate::llm::types::ChatRequest;
use crate::llm::{self, budget};
use crate::reply;

mod atoms {
    rustler::atoms! {
        // error reasons (llm::error::Reason)
        timeout,
        connect,
        rate_limited,
        overloaded,
        server_error,
        conflict,
        unauthorized,
        not_found,
        bad_request,
        malformed_response,
        body_too_large,
        circuit_open,
        budget_exceeded,
        invalid_request,
        config,
        // providers (llm::types::ProviderKind)
        anthropic,
        openai,
        azure_openai,
        openai_compatible,
        ollama,
        bedrock,
        gemini,
        infinity,
    }
}

/// One provider's configuration.
pub struct ProviderResource {
    config: Arc<ProviderConfig>,
}

#[rustler::resource_impl]
impl rustler::Resource for ProviderResource {}

/// Requests are converted on a dirty scheduler, but a conversation has no
/// business being larger than this.
const REQUEST_LIMITS: Limits = Limits {
    max_depth: 64,
    max_nodes: 2_000_000,
};

fn reason_atom(reason: llm::error::Reason) -> rustler::Atom {
    use llm::error::Reason::*;
    match reason {
        Timeout => atoms::timeout(),
        Connect => atoms::connect(),
        RateLimited => atoms::rate_limited(),
        Overloaded => atoms::overloaded(),
        ServerError => atoms::server_error(),
        Conflict => atoms::conflict(),
        Unauthorized => atoms::unauthorized(),
        NotFound => atoms::not_found(),
        BadRequest => atoms::bad_request(),
        MalformedResponse => atoms::malformed_response(),
        BodyTooLarge => atoms::body_too_large(),
        CircuitOpen => atoms::circuit_open(),
        BudgetExceeded => atoms::budget_exceeded(),
        InvalidRequest => atoms::invalid_request(),
        Config => atoms::config(),
    }
}

fn provider_atom(kind: llm::types::ProviderKind) -> rustler::Atom {
    use llm::types::ProviderKind::*;
    match kind {
        Anthropic => atoms::anthropic(),
        OpenAi => atoms::openai(),
        AzureOpenAi => atoms::azure_openai(),
        OpenAiCompatible => atoms::openai_compatible(),
        Ollama => atoms::ollama(),
        Bedrock => atoms::bedrock(),
        Gemini => atoms::gemini(),
    }
}

/// The details map of an `{:llm, message, details}` error tuple.
pub fn error_details<'a>(env: Env<'a>, error: &LlmError) -> Term<'a> {
    let nil = crate::atoms::nil().encode(env);
    let mut pairs: Vec<(&str, Term<'a>)> = vec![
        ("reason", reason_atom(error.reason).encode(env)),
        (
            "provider",
            error.provider.map_or(nil, |p| provider_atom(p).encode(env)),
        ),
        ("status", error.status.map_or(nil, |s| s.encode(env))),
        ("retryable", error.retryable.encode(env)),
        (
            "retry_after_ms",
            error
                .retry_after
                .map_or(nil, |d| (d.as_millis() as u64).encode(env)),
        ),
        ("attempts", error.attempts.encode(env)),
    ];
    for (key, value) in &error.details {
        pairs.push((key, value.encode(env)));
    }
    pairs
        .into_iter()
        .fold(Term::map_new(env), |map, (key, value)| {
            map.map_put(key.encode(env), value).unwrap_or(map)
        })
}

/// `{:ok, handle}` or `{:error, {:llm, message, details}}`.
#[rustler::nif]
fn llm_provider_new<'a>(env: Env<'a>, config: Term<'a>) -> Term<'a> {
    reply::guarded(env, || {
        let json = convert::term_to_json(config, "config", Limits::default())?;
        let config = ProviderConfig::from_json(&json).map_err(Error::Llm)?;
        Ok(ResourceArc::new(ProviderResource {
            config: Arc::new(config),
        }))
    })
}

/// Starts a chat request over the fallback chain `providers`. Returns
/// `{:ok, ref}`, or at once `{:error, ...}` when the request is invalid, the
/// budget is used up or the job queue is full.
#[rustler::nif(schedule = "DirtyCpu")]
fn llm_chat<'a>(
    env: Env<'a>,
    providers: Vec<ResourceArc<ProviderResource>>,
    request: Term<'a>,
    caller: String,
) -> Term<'a> {
    let prepared = crate::error::catch_panic(|| {
        if providers.is_empty() {
            return Err(Error::Llm(LlmError::config("no provider configured")));
        }
        let json = convert::term_to_json(request, "request", REQUEST_LIMITS)?;
        let request = ChatRequest::from_json(&json).map_err(Error::Llm)?;
        llm::check_budget().map_err(Error::Llm)?;
        Ok(request)
    });
    match prepared {
        Ok(request) => {
            let chain: Vec<Arc<ProviderConfig>> =
                providers.iter().map(|p| p.config.clone()).collect();
            reply::spawn(env, async move {
                let configs: Vec<&ProviderConfig> = chain.iter().map(|c| c.as_ref()).collect();
                llm::chat_and_record(&configs, &request, &caller)
                    .await
                    .map(|response| Json(response.to_json()))
                    .map_err(Error::Llm)
            })
        }
        Err(error) => reply::encode::<()>(env, Err(error)),
    }
}

fn counters_json(counters: budget::Counters) -> Json {
    let mut value = counters.usage.to_json();
    value["total_tokens"] = counters.usage.total().into();
    value["requests"] = counters.requests.into();
    value["failures"] = counters.failures.into();
    Json(value)
}

/// Usage counters in total (`caller` nil) or for one caller.
#[rustler::nif]
fn llm_usage(caller: Option<String>) -> Json {
    let counters = budget::with(|ledger| match &caller {
        Some(caller) => ledger.caller(caller),
        None => ledger.total(),
    });
    counters_json(counters)
}

/// Sets the hourly token budget (nil: no budget).
#[rustler::nif]
fn llm_set_budget(budget: Option<u64>) -> rustler::Atom {
    budget::with(|ledger| ledger.set_budget(budget));
    crate::atoms::ok()
}

/// `%{"budget" => n | :infinity, "used" => n}` for the last 60 minutes.
#[rustler::nif]
fn llm_budget(env: Env) -> Term {
    let minute = budget::current_minute();
    let (limit, used) = budget::with(|ledger| (ledger.budget(), ledger.used(minute)));
    let limit = match limit {
        Some(n) => n.encode(env),
        None => atoms::infinity().encode(env),
    };
    Term::map_new(env)
        .map_put("budget".encode(env), limit)
        .and_then(|m| m.map_put("used".encode(env), used.encode(env)))
        .unwrap_or_else(|_| Term::map_new(env))
}
