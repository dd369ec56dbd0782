//! OpenAI Chat Completions (`POST /chat/completions`), also spoken by Azure
//! OpenAI (deployment URL, `api-key` header, `api-version` parameter) and by
//! OpenAI-compatible servers (vLLM, LM Studio, llama.cpp, Groq, OpenRouter,
//! LiteLLM).
//!
//! Tool calls come back as `choices[0].message.tool_calls` with their
//! arguments as a JSON *string*; [`parse_message`] keeps them raw so that
//! [`Turn::finish`](super::types::Turn::finish) and, for compatible servers,
//! [`recover`](super::recover) (tool calls small local models write as text)
//! can work on them.

use serde_json::{json, Map, Value};

use super::config::ProviderConfig;
use super::error::{LlmError, Reason};
use super::http::{kind_error, status_error, HttpRequest, Sensitive};
use super::types::{
    ChatRequest, ProviderKind, RawArguments, RawToolCall, Role, StopReason, ToolChoice, Turn, Usage,
};
use super::wire;

/// The Azure OpenAI GA API version used unless `api_version` says otherwise.
pub const AZURE_API_VERSION: &str = "2024-10-21";

pub fn build(config: &ProviderConfig, request: &ChatRequest) -> Result<HttpRequest, LlmError> {
    let mut body = Map::new();
    if config.kind != ProviderKind::AzureOpenAi {
        body.insert("model".into(), json!(config.model));
    }
    body.insert("messages".into(), Value::Array(messages(request)));
    // OpenAI and Azure replaced max_tokens (which reasoning models refuse);
    // most compatible servers only know the old name.
    let max_key = match config.kind {
        ProviderKind::OpenAiCompatible => "max_tokens",
        _ => "max_completion_tokens",
    };
    body.insert(max_key.into(), json!(request.max_tokens));
    if !request.tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools(request)));
        body.insert("tool_choice".into(), tool_choice(&request.tool_choice));
    }
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    let body = Value::Object(body);

    let http = match config.kind {
        ProviderKind::AzureOpenAi => {
            let deployment = config
                .deployment
                .as_deref()
                .ok_or_else(|| LlmError::config("azure_openai needs a deployment"))?;
            let version = config.api_version.as_deref().unwrap_or(AZURE_API_VERSION);
            let url = format!(
                "{}/openai/deployments/{}/chat/completions?api-version={}",
                config.base_url,
                wire::path_segment(deployment),
                wire::path_segment(version)
            );
            let http = HttpRequest::post_json(url, &body);
            match &config.api_key {
                Some(key) => http.header("api-key", key.expose(), Sensitive::Yes),
                None => http,
            }
        }
        _ => {
            let http =
                HttpRequest::post_json(format!("{}/chat/completions", config.base_url), &body);
            match &config.api_key {
                Some(key) => http.header(
                    "authorization",
                    format!("Bearer {}", key.expose()),
                    Sensitive::Yes,
                ),
                None => http,
            }
        }
    };
    Ok(wire::with_extra_headers(http, config))
}

/// The conversation in Chat Completions form (shared with Ollama's shape).
fn messages(request: &ChatRequest) -> Vec<Value> {
    let mut out = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = &request.system {
        out.push(json!({"role": "system", "content": system}));
    }
    for message in &request.messages {
        out.push(match message.role {
            Role::User => json!({"role": "user", "content": message.content}),
            Role::Assistant if message.tool_calls.is_empty() => {
                json!({"role": "assistant", "content": message.content})
            }
            Role::Assistant => {
                let calls: Vec<Value> = message
                    .tool_calls
                    .iter()
                    .map(|call| {
                        let arguments = call.arguments.clone().unwrap_or_else(|| json!({}));
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": arguments.to_string()},
                        })
                    })
                    .collect();
                let content = if message.content.is_empty() {
                    Value::Null
                } else {
                    json!(message.content)
                };
                json!({"role": "assistant", "content": content, "tool_calls": calls})
            }
            Role::Tool => json!({
                "role": "tool",
                "tool_call_id": message.tool_call_id,
                "content": tool_result_text(&message.content, message.is_error),
            }),
        });
    }
    out
}

/// Chat Completions has no error flag on tool results; say it in the text.
pub fn tool_result_text(content: &str, is_error: bool) -> String {
    if is_error {
        format!("Error: {content}")
    } else {
        content.to_string()
    }
}

pub fn tools(request: &ChatRequest) -> Vec<Value> {
    request
        .tools
        .iter()
        .map(|tool| {
            json!({
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                },
            })
        })
        .collect()
}

fn tool_choice(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::Required => json!("required"),
        ToolChoice::None => json!("none"),
        ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

pub fn parse(body: &[u8]) -> Result<Turn, LlmError> {
    let value = wire::json_body(body)?;
    let choice = value
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .ok_or_else(|| LlmError::malformed("the reply has no choices"))?;
    let message = choice
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| LlmError::malformed("the reply's first choice has no message"))?;

    let (text, tool_calls) = parse_message(message)?;
    let stop_reason = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("stop") => StopReason::EndTurn,
        Some("tool_calls" | "function_call") => StopReason::ToolUse,
        Some("length") => StopReason::MaxTokens,
        _ => StopReason::Other,
    };

    let usage = value.get("usage");
    let count = |pointer: &str| {
        usage
            .and_then(|u| u.pointer(pointer))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    // prompt_tokens includes the cached part; report it apart.
    let cached = count("/prompt_tokens_details/cached_tokens");
    Ok(Turn {
        text,
        tool_calls,
        stop_reason,
        usage: Usage {
            input_tokens: count("/prompt_tokens").saturating_sub(cached),
            output_tokens: count("/completion_tokens"),
            cache_read_tokens: cached,
            cache_write_tokens: 0,
        },
        model: wire::string(&value, "model"),
    })
}

/// The text and raw tool calls of a Chat Completions message.
pub fn parse_message(message: &Value) -> Result<(String, Vec<RawToolCall>), LlmError> {
    let text = match message.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        // Some servers send content parts.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        Some(_) => {
            return Err(LlmError::malformed(
                "the message content is neither text nor parts",
            ))
        }
    };
    let mut tool_calls = Vec::new();
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let function = call
                .get("function")
                .ok_or_else(|| LlmError::malformed("a tool call has no function"))?;
            let name = wire::string(function, "name")
                .ok_or_else(|| LlmError::malformed("a tool call has no function name"))?;
            let arguments = match function.get("arguments") {
                Some(Value::String(text)) => RawArguments::Text(text.clone()),
                Some(other) => RawArguments::Json(other.clone()),
                None => RawArguments::Json(Value::Null),
            };
            tool_calls.push(RawToolCall {
                id: wire::string(call, "id"),
                name,
                arguments,
                signature: None,
            });
        }
    }
    Ok((text, tool_calls))
}

/// `{"error": {"message": ..., "type": ..., "code": ...}}`, or what
/// compatible servers send instead (`{"error": "..."}`, `{"detail": ...}`).
pub fn error(status: u16, body: &[u8], secrets: &[&str]) -> LlmError {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let detail = value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .or_else(|| value.get("error").and_then(Value::as_str))
        .or_else(|| value.get("message").and_then(Value::as_str))
        .map(str::to_string)
        .or_else(|| {
            value
                .get("detail")
                .map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_string))
        })
        .unwrap_or_else(|| wire::text_excerpt(body));
    let code = value
        .pointer("/error/code")
        .and_then(Value::as_str)
        .or_else(|| value.pointer("/error/type").and_then(Value::as_str));
    let detail = wire::clean(&detail, secrets);
    if code == Some("insufficient_quota") {
        // The account is out of credit: waiting will not help.
        return kind_error(
            status,
            Reason::RateLimited,
            false,
            "the account's quota is used up (insufficient_quota; retrying will not help)",
            &detail,
        );
    }
    status_error(status, &detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::config::Secret;
    use crate::llm::types::tests::{sample_request, simple_request};

    fn config(kind: ProviderKind) -> ProviderConfig {
        let mut config = ProviderConfig::new(kind, "gpt-4o-mini");
        config.api_key = Some(Secret::new("sk-test-openai"));
        config
    }

    fn expected_messages() -> Value {
        json!([
            {"role": "system", "content": "You watch the BEAM."},
            {"role": "user", "content": "Memory is growing."},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "take_snapshot", "arguments": "{}"}},
                {"id": "call_2", "type": "function", "function": {"name": "execute_lua", "arguments": "{\"code\":\"return 1\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"memory\": 10}"},
            {"role": "tool", "tool_call_id": "call_2", "content": "Error: syntax error"}
        ])
    }

    #[test]
    fn builds_the_documented_openai_request() {
        let http = build(&config(ProviderKind::OpenAi), &sample_request()).unwrap();
        assert_eq!(http.url, "https://api.openai.com/v1/chat/completions");
        assert_eq!(
            http.header_value("authorization"),
            Some("Bearer sk-test-openai")
        );
        assert_eq!(
            http.json(),
            json!({
                "model": "gpt-4o-mini",
                "messages": expected_messages(),
                "max_completion_tokens": 512,
                "tools": [
                    {"type": "function", "function": {"name": "take_snapshot", "description": "Takes a snapshot.",
                        "parameters": {"type": "object", "properties": {}}}},
                    {"type": "function", "function": {"name": "execute_lua", "description": "Runs Lua.",
                        "parameters": {"type": "object", "properties": {"code": {"type": "string"}},
                                       "required": ["code"], "additionalProperties": false}}}
                ],
                "tool_choice": "auto",
                "temperature": 0.2
            })
        );
    }

    #[test]
    fn azure_uses_the_deployment_url_and_api_key_header() {
        let mut config = config(ProviderKind::AzureOpenAi);
        config.base_url = "https://my-res.openai.azure.com".into();
        config.deployment = Some("prod-gpt4o".into());
        let http = build(&config, &simple_request()).unwrap();
        assert_eq!(
            http.url,
            "https://my-res.openai.azure.com/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(http.header_value("api-key"), Some("sk-test-openai"));
        assert_eq!(http.header_value("authorization"), None);
        assert_eq!(
            http.json(),
            json!({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 64})
        );
    }

    #[test]
    fn compatible_servers_get_max_tokens_and_no_key_when_none() {
        let mut config = ProviderConfig::new(ProviderKind::OpenAiCompatible, "qwen2.5");
        config.base_url = "http://127.0.0.1:8000/v1".into();
        let mut request = sample_request();
        request.tool_choice = ToolChoice::Tool("execute_lua".into());
        let http = build(&config, &request).unwrap();
        assert_eq!(http.url, "http://127.0.0.1:8000/v1/chat/completions");
        assert_eq!(http.header_value("authorization"), None);
        let body = http.json();
        assert_eq!(body["max_tokens"], json!(512));
        assert_eq!(
            body["tool_choice"],
            json!({"type": "function", "function": {"name": "execute_lua"}})
        );
    }

    #[test]
    fn parses_tool_calls_usage_and_cached_tokens() {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null, "refusal": null,
                "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "take_snapshot", "arguments": "{}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "execute_lua", "arguments": "{\"code\":\"return 3\"}"}}
                ]}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
                      "prompt_tokens_details": {"cached_tokens": 100}}
        });
        let turn = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(turn.text, "");
        assert_eq!(turn.stop_reason, StopReason::ToolUse);
        assert_eq!(
            turn.usage,
            Usage {
                input_tokens: 20,
                output_tokens: 30,
                cache_read_tokens: 100,
                cache_write_tokens: 0
            }
        );
        assert_eq!(
            turn.tool_calls[1].arguments,
            RawArguments::Text("{\"code\":\"return 3\"}".into())
        );
        let response = turn.finish(&sample_request(), ProviderKind::OpenAi, "gpt-4o-mini");
        assert_eq!(
            response.tool_calls[1].arguments,
            Some(json!({"code": "return 3"}))
        );
        assert_eq!(response.model, "gpt-4o-mini-2024-07-18");
    }

    #[test]
    fn parses_plain_text_and_length_stops() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"All healthy."},"finish_reason":"length"}]}"#;
        let turn = parse(body).unwrap();
        assert_eq!(
            (turn.text.as_str(), turn.stop_reason),
            ("All healthy.", StopReason::MaxTokens)
        );
        assert_eq!(turn.usage, Usage::default());
        assert_eq!(
            parse(br#"{"choices": []}"#).unwrap_err().reason,
            Reason::MalformedResponse
        );
    }

    #[test]
    fn error_bodies_are_classified_and_redacted() {
        let key = "sk-proj-abcdefghijklmnop";
        let body = format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {key}.","type":"invalid_request_error","code":"invalid_api_key"}}}}"#
        );
        let error = error(401, body.as_bytes(), &[key]);
        assert_eq!(error.reason, Reason::Unauthorized);
        assert!(!error.message.contains(key));
        assert_eq!(error.message, "the provider rejected the credentials (HTTP 401): Incorrect API key provided: [REDACTED].");

        let quota = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        let quota = super::error(429, quota, &[]);
        assert_eq!(
            (quota.reason, quota.retryable),
            (Reason::RateLimited, false)
        );
        assert!(quota
            .message
            .starts_with("the account's quota is used up (insufficient_quota; retrying will not help) (HTTP 429)"));

        let vllm = br#"{"detail": "Not Found"}"#;
        assert_eq!(
            super::error(404, vllm, &[]).message,
            "not found (check the model name and base_url) (HTTP 404): Not Found"
        );
        assert_eq!(
            super::error(502, b"<html>bad gateway</html>", &[]).message,
            "the provider failed (HTTP 502): <html>bad gateway</html>"
        );
    }
}
