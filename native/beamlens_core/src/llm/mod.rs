//! The LLM client: one provider-neutral chat call over Anthropic, OpenAI,
//! Azure OpenAI, OpenAI-compatible servers, Ollama, Bedrock and Gemini.
//!
//! [`chat`] walks a fallback chain of providers. For each provider it checks
//! the circuit breaker, then makes up to `max_retries + 1` HTTP attempts,
//! each bounded by `timeout`, retrying timeouts, connection failures and
//! 408/409/429/5xx/529 with exponential backoff and jitter (or the wait the
//! provider asked for in `Retry-After`, up to `max_retry_after`). Other 4xx
//! are not retried. When a provider gives up, the next one is tried.
//!
//! Plain Rust: the NIF adapter is `beamlens_nif`'s `nif_llm`.

pub mod anthropic;
pub mod bedrock;
pub mod breaker;
pub mod budget;
pub mod config;
pub mod error;
pub mod gemini;
pub mod http;
pub mod ollama;
pub mod openai;
pub mod recover;
pub mod types;
mod wire;

use std::time::{Instant, SystemTime};

use self::config::ProviderConfig;
use self::error::{LlmError, Reason};
use self::http::{HttpRequest, HttpResponse};
use self::types::{ChatRequest, ChatResponse, ProviderKind};

/// Builds the HTTP request for `config`'s provider.
pub fn build_request(
    config: &ProviderConfig,
    request: &ChatRequest,
    now: SystemTime,
) -> Result<HttpRequest, LlmError> {
    match config.kind {
        ProviderKind::Anthropic => anthropic::build(config, request),
        ProviderKind::OpenAi | ProviderKind::AzureOpenAi | ProviderKind::OpenAiCompatible => {
            openai::build(config, request)
        }
        ProviderKind::Ollama => ollama::build(config, request),
        ProviderKind::Bedrock => bedrock::build(config, request, now),
        ProviderKind::Gemini => gemini::build(config, request),
    }
}

/// Turns an HTTP response into a chat response or a classified error.
pub fn interpret(
    config: &ProviderConfig,
    request: &ChatRequest,
    response: &HttpResponse,
) -> Result<ChatResponse, LlmError> {
    let kind = config.kind;
    if (200..300).contains(&response.status) {
        let turn = match kind {
            ProviderKind::Anthropic => anthropic::parse(&response.body),
            ProviderKind::OpenAi | ProviderKind::AzureOpenAi | ProviderKind::OpenAiCompatible => {
                openai::parse(&response.body)
            }
            ProviderKind::Ollama => ollama::parse(&response.body),
            ProviderKind::Bedrock => bedrock::parse(&response.body),
            ProviderKind::Gemini => gemini::parse(&response.body),
        };
        return turn
            .map(|mut turn| {
                // Small local models often write their tool calls as text.
                if matches!(kind, ProviderKind::OpenAiCompatible | ProviderKind::Ollama) {
                    recover::recover(&mut turn, request);
                }
                turn.finish(request, kind, &config.model)
            })
            .map_err(|e| e.status(response.status));
    }
    let secrets = config.secrets();
    let (status, body) = (response.status, response.body.as_slice());
    let mut error = match kind {
        ProviderKind::Anthropic => anthropic::error(status, body, &secrets),
        ProviderKind::OpenAi | ProviderKind::AzureOpenAi | ProviderKind::OpenAiCompatible => {
            openai::error(status, body, &secrets)
        }
        ProviderKind::Ollama => ollama::error(status, body, &secrets),
        ProviderKind::Bedrock => bedrock::error(status, &response.headers, body, &secrets),
        ProviderKind::Gemini => gemini::error(status, body, &secrets),
    };
    // A header wins over a wait the provider gave in its body (Gemini's
    // RetryInfo); both are clamped to http::MAX_RETRY_AFTER.
    if let Some(wait) = http::retry_after(&response.headers, SystemTime::now()) {
        error.retry_after = Some(wait);
    }
    Err(error)
}

fn breaker_key(config: &ProviderConfig) -> String {
    format!("{}|{}|{}", config.kind, config.base_url, config.model)
}

/// One provider, with retries, under its circuit breaker.
pub async fn call_provider(
    config: &ProviderConfig,
    request: &ChatRequest,
) -> Result<ChatResponse, LlmError> {
    let kind = config.kind;
    // Build once up front: a request the provider cannot express is a
    // configuration problem, not a provider failure.
    let mut next =
        Some(build_request(config, request, SystemTime::now()).map_err(|e| e.provider(kind))?);

    let key = breaker_key(config);
    let probe_limit = config
        .timeout
        .saturating_mul(config.max_retries + 1)
        .saturating_add(config.max_backoff.saturating_mul(config.max_retries));
    if let Err(wait) = breaker::with(&key, |b| b.allow(Instant::now(), probe_limit)) {
        return Err(LlmError::new(
            Reason::CircuitOpen,
            format!(
                "{kind} is failing; its circuit breaker is open for another {} ms",
                wait.as_millis()
            ),
        )
        .provider(kind)
        .retryable(true));
    }

    let mut attempts = 0;
    let result = loop {
        attempts += 1;
        let http = match next.take() {
            Some(http) => http,
            None => build_request(config, request, SystemTime::now())?,
        };
        let outcome = match http::send(
            &http,
            config.connect_timeout,
            config.timeout,
            config.max_body_bytes,
        )
        .await
        {
            Ok(response) => interpret(config, request, &response),
            Err(error) => Err(error),
        };
        match outcome {
            Ok(response) => break Ok(response),
            Err(error) if error.retryable && attempts <= config.max_retries => {
                let wait = match error.retry_after {
                    Some(wait) if wait > config.max_retry_after => break Err(error),
                    Some(wait) => wait,
                    None => http::backoff(attempts - 1, config.base_backoff, config.max_backoff),
                };
                tokio::time::sleep(wait).await;
            }
            Err(error) => break Err(error),
        }
    };

    breaker::with(&key, |b| match &result {
        Err(error) if error.reason.is_health_failure() => b.record_failure(
            Instant::now(),
            config.breaker_threshold,
            config.breaker_cooldown,
        ),
        // Any answer, even a 401, shows the provider is up.
        _ => b.record_success(),
    });

    match result {
        Ok(mut response) => {
            response.attempts = attempts;
            Ok(response)
        }
        Err(mut error) => {
            error.provider = Some(kind);
            error.attempts = attempts;
            Err(error)
        }
    }
}

/// Walks the fallback chain until a provider answers.
pub async fn chat(
    chain: &[&ProviderConfig],
    request: &ChatRequest,
) -> Result<ChatResponse, LlmError> {
    let mut failures: Vec<LlmError> = Vec::new();
    let mut attempts = 0;
    for (index, config) in chain.iter().enumerate() {
        match call_provider(config, request).await {
            Ok(mut response) => {
                response.attempts += attempts;
                response.chain_index = index;
                return Ok(response);
            }
            Err(error) => {
                attempts += error.attempts;
                failures.push(error);
            }
        }
    }
    let Some(mut last) = failures.pop() else {
        return Err(LlmError::config("no provider configured"));
    };
    if !failures.is_empty() {
        let earlier: Vec<String> = failures
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.provider.map_or("?", ProviderKind::name),
                    e.message
                )
            })
            .collect();
        last.message = format!(
            "every provider failed; {}: {} (earlier: {})",
            last.provider.map_or("?", ProviderKind::name),
            last.message,
            earlier.join("; ")
        );
    }
    last.attempts = attempts;
    Err(last)
}

/// [`chat`], then the outcome is recorded for `caller` in the usage ledger.
pub async fn chat_and_record(
    chain: &[&ProviderConfig],
    request: &ChatRequest,
    caller: &str,
) -> Result<ChatResponse, LlmError> {
    let result = chat(chain, request).await;
    let minute = budget::current_minute();
    budget::with(|ledger| match &result {
        Ok(response) => ledger.record(caller, &response.usage, true, minute),
        Err(_) => ledger.record(caller, &types::Usage::default(), false, minute),
    });
    result
}

/// Refuses a request when the hourly budget is used up.
pub fn check_budget() -> Result<(), LlmError> {
    let minute = budget::current_minute();
    budget::with(|ledger| ledger.check(minute)).map_err(|over| {
        let mut error = LlmError::new(
            Reason::BudgetExceeded,
            format!(
                "the LLM token budget is used up: {} of {} tokens in the last hour",
                over.used, over.budget
            ),
        );
        error.details = vec![("used", over.used), ("budget", over.budget)];
        error
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};
    use serde_json::json;

    fn response(status: u16, body: Vec<u8>) -> HttpResponse {
        HttpResponse {
            status,
            headers: HeaderMap::new(),
            body,
        }
    }

    /// Bodies a hostile or broken server may send, for success and error
    /// statuses of every provider: each must end in a bounded error (or a
    /// turn), never a panic or a stack overflow.
    fn hostile_bodies() -> Vec<(&'static str, Vec<u8>)> {
        let deep_array = format!("{}{}", "[".repeat(60_000), "]".repeat(60_000));
        let deep_object = format!("{}1{}", "{\"error\":".repeat(30_000), "}".repeat(30_000));
        let mut invalid_utf8 = br#"{"error": {"message": "bad "#.to_vec();
        invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28, 0xed, 0xa0, 0x80]);
        invalid_utf8.extend_from_slice(br#""}}"#);
        let long_message = json!({"error": {"message": "x".repeat(60_000), "type": "overloaded_error"},
                                   "message": "y".repeat(60_000)});
        let huge_numbers = json!({"usage": {"input_tokens": 1e300, "output_tokens": -1},
            "usageMetadata": {"promptTokenCount": u64::MAX, "candidatesTokenCount": u64::MAX,
                              "thoughtsTokenCount": u64::MAX, "cachedContentTokenCount": u64::MAX}});
        vec![
            ("deep array", deep_array.into_bytes()),
            ("deep object", deep_object.into_bytes()),
            ("invalid utf-8", invalid_utf8),
            ("raw invalid utf-8", vec![0xff; 4096]),
            ("long message", long_message.to_string().into_bytes()),
            ("huge numbers", huge_numbers.to_string().into_bytes()),
            ("empty", Vec::new()),
            ("nul bytes", vec![0; 1024]),
        ]
    }

    #[test]
    fn hostile_bodies_give_bounded_errors_for_every_provider() {
        let request = types::tests::sample_request();
        for kind in ProviderKind::ALL {
            let config = ProviderConfig::new(kind, "m");
            for (name, body) in hostile_bodies() {
                for status in [200, 400, 429, 500, 529] {
                    let result = interpret(&config, &request, &response(status, body.clone()));
                    if let Err(error) = result {
                        assert!(
                            error.message.chars().count() < 600,
                            "{kind} {name} {status}: {} chars",
                            error.message.chars().count()
                        );
                        assert!(!error.message.contains('\u{0}'), "{kind} {name} {status}");
                    }
                }
            }
        }
    }

    #[test]
    fn deeply_nested_replies_are_malformed_not_a_crash() {
        let request = types::tests::sample_request();
        let config = ProviderConfig::new(ProviderKind::OpenAi, "m");
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let error = interpret(&config, &request, &response(200, deep.into_bytes())).unwrap_err();
        assert_eq!(error.reason, Reason::MalformedResponse);
        assert!(
            error.message.contains("recursion limit"),
            "{}",
            error.message
        );

        // Nested tool-call arguments (a JSON string inside the reply) come
        // back as a tool call with an error, and the reply itself is fine.
        let arguments = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
        let body = json!({"choices": [{"message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "execute_lua", "arguments": arguments}}]},
            "finish_reason": "tool_calls"}]});
        for kind in [ProviderKind::OpenAi, ProviderKind::OpenAiCompatible] {
            let config = ProviderConfig::new(kind, "m");
            let reply = interpret(
                &config,
                &request,
                &response(200, body.to_string().into_bytes()),
            )
            .unwrap();
            assert!(reply.tool_calls[0].arguments.is_none(), "{kind}");
            assert!(reply.tool_calls[0].error.is_some(), "{kind}");
        }
    }

    #[test]
    fn a_header_wait_wins_over_a_body_wait_and_both_are_clamped() {
        let request = types::tests::sample_request();
        let config = ProviderConfig::new(ProviderKind::Gemini, "m");
        let body =
            json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down",
            "details": [{"@type": gemini::RETRY_INFO, "retryDelay": "4s"}]}})
            .to_string()
            .into_bytes();
        let mut reply = response(429, body);
        let error = interpret(&config, &request, &reply).unwrap_err();
        assert_eq!(error.retry_after, Some(std::time::Duration::from_secs(4)));

        reply
            .headers
            .insert("retry-after", HeaderValue::from_static("1e300"));
        let error = interpret(&config, &request, &reply).unwrap_err();
        assert_eq!(error.retry_after, Some(http::MAX_RETRY_AFTER));
    }
}
