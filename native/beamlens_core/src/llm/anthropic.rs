//! Anthropic Messages API (`POST /v1/messages`).
//!
//! Tool calls are `tool_use` content blocks; tool results go back as
//! `tool_result` blocks in a user message. Authentication is the `x-api-key`
//! header with a pinned `anthropic-version`.

use serde_json::{json, Map, Value};

use super::config::ProviderConfig;
use super::error::{LlmError, Reason};
use super::http::{kind_error, reason_phrase, status_error, HttpRequest, Sensitive};
use super::types::{
    group_by_side, ChatRequest, RawArguments, RawToolCall, Role, Side, StopReason, ToolChoice,
    Turn, Usage,
};
use super::wire;

pub const API_VERSION: &str = "2023-06-01";

pub fn build(config: &ProviderConfig, request: &ChatRequest) -> Result<HttpRequest, LlmError> {
    let mut messages = Vec::new();
    for (side, group) in group_by_side(&request.messages) {
        let mut blocks = Vec::new();
        for message in group {
            match message.role {
                Role::User | Role::Assistant => {
                    if !message.content.is_empty() {
                        blocks.push(json!({"type": "text", "text": message.content}));
                    }
                    for call in &message.tool_calls {
                        blocks.push(json!({
                            "type": "tool_use",
                            "id": call.id,
                            "name": call.name,
                            "input": call.arguments.clone().unwrap_or_else(|| json!({})),
                        }));
                    }
                }
                Role::Tool => {
                    let mut block = json!({
                        "type": "tool_result",
                        "tool_use_id": message.tool_call_id,
                        "content": message.content,
                    });
                    if message.is_error {
                        block["is_error"] = json!(true);
                    }
                    blocks.push(block);
                }
            }
        }
        let role = match side {
            Side::User => "user",
            Side::Assistant => "assistant",
        };
        if !blocks.is_empty() {
            messages.push(json!({"role": role, "content": blocks}));
        }
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(config.model));
    body.insert("max_tokens".into(), json!(request.max_tokens));
    if let Some(system) = &request.system {
        body.insert("system".into(), json!(system));
    }
    body.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": tool.parameters,
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        let choice = match &request.tool_choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
        };
        body.insert("tool_choice".into(), choice);
    }
    if let Some(temperature) = claude_temperature(&config.model, request.temperature) {
        body.insert("temperature".into(), json!(temperature));
    }

    let mut http = HttpRequest::post_json(
        format!("{}/v1/messages", config.base_url),
        &Value::Object(body),
    )
    .header("anthropic-version", API_VERSION, Sensitive::No);
    if let Some(key) = &config.api_key {
        http = http.header("x-api-key", key.expose(), Sensitive::Yes);
    }
    Ok(wire::with_extra_headers(http, config))
}

/// The temperature to send to a Claude model, if any.
///
/// Claude Opus 4.7 and every Claude model released since reject `temperature`
/// (HTTP 400, "`temperature` is deprecated for this model"), and API version
/// 2026-10-21 rejects it for every model. It is therefore sent only when the
/// request sets it *and* the model is one known to accept it under the
/// pinned [`API_VERSION`] (Claude 2, 3, 3.5, 3.7 and Claude 4 up to 4.6),
/// clamped to Claude's range 0..=1. Any other model, including names this
/// list does not know (aliases, proxies' own names), gets none: leaving it
/// out is always accepted. Used for Bedrock's Claude models too.
pub fn claude_temperature(model: &str, requested: Option<f64>) -> Option<f64> {
    requested
        .filter(|_| accepts_temperature(model))
        .map(|t| t.clamp(0.0, 1.0))
}

/// Whether `model` (an Anthropic, Bedrock or Vertex model id, with or
/// without date, region prefix or ARN) is a Claude model known to accept
/// `temperature`.
pub fn accepts_temperature(model: &str) -> bool {
    let model = model.to_ascii_lowercase();
    let Some(at) = model.find("claude-") else {
        return false;
    };
    let rest = &model[at + "claude-".len()..];
    if ["2", "3", "instant", "v1", "v2"]
        .iter()
        .any(|old| rest.starts_with(old))
    {
        return true;
    }
    // claude-{family}-{major}[-{minor}][-{date}|@{date}][-v{n}:{m}]
    let mut parts = rest.split(['-', '@', ':', '.']);
    if !matches!(parts.next(), Some("opus" | "sonnet" | "haiku")) {
        return false;
    }
    if parts.next() != Some("4") {
        return false;
    }
    match parts.next() {
        // claude-sonnet-4, claude-sonnet-4-20250514, ...-4-v1:0
        None => true,
        Some(next) if next.len() >= 8 || next.starts_with('v') => true,
        Some(minor) => minor.parse::<u32>().is_ok_and(|minor| minor <= 6),
    }
}

pub fn parse(body: &[u8]) -> Result<Turn, LlmError> {
    let value = wire::json_body(body)?;
    if value.get("type").and_then(Value::as_str) != Some("message") {
        return Err(LlmError::malformed(
            "the reply is not a message (no \"type\": \"message\")",
        ));
    }
    let blocks = value
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| LlmError::malformed("the reply has no content list"))?;

    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => tool_calls.push(RawToolCall {
                id: wire::string(block, "id"),
                name: wire::string(block, "name")
                    .ok_or_else(|| LlmError::malformed("a tool_use block has no name"))?,
                arguments: RawArguments::Json(block.get("input").cloned().unwrap_or(Value::Null)),
                signature: None,
            }),
            // thinking, redacted_thinking, server tool blocks: not for us.
            _ => {}
        }
    }

    let stop_reason = match value.get("stop_reason").and_then(Value::as_str) {
        Some("end_turn") => StopReason::EndTurn,
        Some("tool_use") => StopReason::ToolUse,
        Some("max_tokens") => StopReason::MaxTokens,
        Some("stop_sequence") => StopReason::StopSequence,
        _ => StopReason::Other,
    };
    let usage = value.get("usage");
    let count = |key: &str| {
        usage
            .and_then(|u| u.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok(Turn {
        text,
        tool_calls,
        stop_reason,
        usage: Usage {
            input_tokens: count("input_tokens"),
            output_tokens: count("output_tokens"),
            cache_read_tokens: count("cache_read_input_tokens"),
            cache_write_tokens: count("cache_creation_input_tokens"),
        },
        model: wire::string(&value, "model"),
    })
}

/// `{"type": "error", "error": {"type": "overloaded_error", "message": "..."}}`
pub fn error(status: u16, body: &[u8], secrets: &[&str]) -> LlmError {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let kind = value.pointer("/error/type").and_then(Value::as_str);
    let detail = value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| wire::text_excerpt(body));
    let detail = wire::clean(&detail, secrets);
    let (reason, retryable) = match kind {
        Some("overloaded_error") => (Reason::Overloaded, true),
        Some("rate_limit_error") => (Reason::RateLimited, true),
        Some("authentication_error") => (Reason::Unauthorized, false),
        Some("permission_error") => {
            return kind_error(
                status,
                Reason::Unauthorized,
                false,
                "the provider refused access",
                &detail,
            )
        }
        _ => return status_error(status, &detail),
    };
    kind_error(status, reason, retryable, reason_phrase(reason), &detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::config::Secret;
    use crate::llm::types::tests::{sample_request, simple_request};
    use crate::llm::types::ProviderKind;

    fn config() -> ProviderConfig {
        let mut config = ProviderConfig::new(ProviderKind::Anthropic, "claude-sonnet-4-5");
        config.api_key = Some(Secret::new("sk-ant-test"));
        config
    }

    #[test]
    fn builds_the_documented_request() {
        let http = build(&config(), &sample_request()).unwrap();
        assert_eq!(http.url, "https://api.anthropic.com/v1/messages");
        assert_eq!(http.header_value("x-api-key"), Some("sk-ant-test"));
        assert_eq!(http.header_value("anthropic-version"), Some("2023-06-01"));
        assert_eq!(http.header_value("content-type"), Some("application/json"));
        assert_eq!(
            http.json(),
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 512,
                "system": "You watch the BEAM.",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Memory is growing."}]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "call_1", "name": "take_snapshot", "input": {}},
                        {"type": "tool_use", "id": "call_2", "name": "execute_lua", "input": {"code": "return 1"}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "{\"memory\": 10}"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": "syntax error", "is_error": true}
                    ]}
                ],
                "tools": [
                    {"name": "take_snapshot", "description": "Takes a snapshot.",
                     "input_schema": {"type": "object", "properties": {}}},
                    {"name": "execute_lua", "description": "Runs Lua.",
                     "input_schema": {"type": "object", "properties": {"code": {"type": "string"}},
                                      "required": ["code"], "additionalProperties": false}}
                ],
                "tool_choice": {"type": "auto"},
                "temperature": 0.2
            })
        );
    }

    #[test]
    fn temperature_only_for_models_that_accept_it() {
        let body_for = |model: &str, temperature: Option<f64>| {
            let mut config = config();
            config.model = model.into();
            let mut request = simple_request();
            request.temperature = temperature;
            build(&config, &request).unwrap().json()
        };
        for model in [
            "claude-3-5-sonnet-20241022",
            "claude-3-7-sonnet-latest",
            "claude-3-haiku-20240307",
            "claude-sonnet-4-20250514",
            "claude-opus-4-1-20250805",
            "claude-sonnet-4-5",
            "claude-haiku-4-5-20251001",
            "claude-opus-4-6",
            "claude-sonnet-4-5@20250929",
        ] {
            assert_eq!(
                body_for(model, Some(0.2)),
                json!({"model": model, "max_tokens": 64,
                       "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                       "temperature": 0.2}),
                "{model}"
            );
        }
        for model in [
            "claude-opus-4-7",
            "claude-opus-4-8-20260701",
            "claude-sonnet-5",
            "claude-opus-5-5",
            "claude-haiku-5-5",
            "claude-test",
            "my-proxy-alias",
        ] {
            assert_eq!(
                body_for(model, Some(0.2)),
                json!({"model": model, "max_tokens": 64,
                       "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
                "{model}"
            );
        }
        // Not set: never sent. Above Claude's range: clamped to 1.
        assert!(body_for("claude-sonnet-4-5", None)
            .get("temperature")
            .is_none());
        assert_eq!(
            body_for("claude-sonnet-4-5", Some(1.7))["temperature"],
            json!(1.0)
        );
    }

    #[test]
    fn tool_choice_and_no_tools() {
        let mut request = sample_request();
        request.tool_choice = ToolChoice::Required;
        assert_eq!(
            build(&config(), &request).unwrap().json()["tool_choice"],
            json!({"type": "any"})
        );
        request.tool_choice = ToolChoice::Tool("execute_lua".into());
        assert_eq!(
            build(&config(), &request).unwrap().json()["tool_choice"],
            json!({"type": "tool", "name": "execute_lua"})
        );
        let body = build(&config(), &simple_request()).unwrap().json();
        assert!(body.get("tools").is_none() && body.get("tool_choice").is_none());
        assert!(body.get("system").is_none());
    }

    #[test]
    fn parses_text_tool_calls_and_usage() {
        let body = json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "x"},
                {"type": "text", "text": "Checking two things."},
                {"type": "tool_use", "id": "toolu_1", "name": "take_snapshot", "input": {}},
                {"type": "tool_use", "id": "toolu_2", "name": "execute_lua", "input": {"code": "return 2"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 100, "output_tokens": 20,
                      "cache_creation_input_tokens": 7, "cache_read_input_tokens": 30}
        });
        let turn = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(turn.text, "Checking two things.");
        assert_eq!(turn.stop_reason, StopReason::ToolUse);
        assert_eq!(turn.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
        assert_eq!(
            turn.usage,
            Usage {
                input_tokens: 100,
                output_tokens: 20,
                cache_read_tokens: 30,
                cache_write_tokens: 7
            }
        );
        assert_eq!(turn.tool_calls.len(), 2);
        assert_eq!(turn.tool_calls[1].id.as_deref(), Some("toolu_2"));
        assert_eq!(
            turn.tool_calls[1].arguments,
            RawArguments::Json(json!({"code": "return 2"}))
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert_eq!(
            parse(b"{\"type\": \"message\"").unwrap_err().reason,
            Reason::MalformedResponse
        );
        assert_eq!(
            parse(b"{\"type\": \"message\"}").unwrap_err().reason,
            Reason::MalformedResponse
        );
        assert_eq!(parse(b"[]").unwrap_err().reason, Reason::MalformedResponse);
    }

    #[test]
    fn error_bodies_are_classified() {
        let overloaded =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let error = error(529, overloaded, &[]);
        assert_eq!((error.reason, error.retryable), (Reason::Overloaded, true));
        assert_eq!(
            error.message,
            "the provider is overloaded (HTTP 529): Overloaded"
        );

        let auth = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        assert_eq!(super::error(401, auth, &[]).reason, Reason::Unauthorized);

        // The kind wins over the status, and the message says the same.
        let overloaded_500 = super::error(500, overloaded, &[]);
        assert_eq!(overloaded_500.reason, Reason::Overloaded);
        assert_eq!(
            overloaded_500.message,
            "the provider is overloaded (HTTP 500): Overloaded"
        );

        let limited =
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
        assert_eq!(super::error(429, limited, &[]).reason, Reason::RateLimited);
    }
}
