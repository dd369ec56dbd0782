//! Ollama's native chat API (`POST /api/chat`, non-streaming).
//!
//! Messages look like Chat Completions, but tool-call arguments are JSON
//! objects rather than strings, tool calls usually carry no id, tool results
//! name the tool (`tool_name`), and limits go in `options`. Ollama has no
//! tool_choice: `:none` leaves the tools out; `:required` and
//! `{:tool, name}` cannot be enforced and behave like `:auto`.

use serde_json::{json, Map, Value};

use super::config::ProviderConfig;
use super::error::LlmError;
use super::http::{status_error, HttpRequest, Sensitive};
use super::openai::{tool_result_text, tools};
use super::types::{
    ChatRequest, RawArguments, RawToolCall, Role, StopReason, ToolChoice, Turn, Usage,
};
use super::wire;

pub fn build(config: &ProviderConfig, request: &ChatRequest) -> Result<HttpRequest, LlmError> {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for message in &request.messages {
        messages.push(match message.role {
            Role::User => json!({"role": "user", "content": message.content}),
            Role::Assistant if message.tool_calls.is_empty() => {
                json!({"role": "assistant", "content": message.content})
            }
            Role::Assistant => {
                let calls: Vec<Value> = message
                    .tool_calls
                    .iter()
                    .map(|call| {
                        json!({"function": {
                            "name": call.name,
                            "arguments": call.arguments.clone().unwrap_or_else(|| json!({})),
                        }})
                    })
                    .collect();
                json!({"role": "assistant", "content": message.content, "tool_calls": calls})
            }
            Role::Tool => {
                let mut result = json!({
                    "role": "tool",
                    "content": tool_result_text(&message.content, message.is_error),
                });
                if let Some(name) = &message.name {
                    result["tool_name"] = json!(name);
                }
                result
            }
        });
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(config.model));
    body.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() && request.tool_choice != ToolChoice::None {
        body.insert("tools".into(), Value::Array(tools(request)));
    }
    body.insert("stream".into(), json!(false));
    let mut options = Map::new();
    options.insert("num_predict".into(), json!(request.max_tokens));
    if let Some(temperature) = request.temperature {
        options.insert("temperature".into(), json!(temperature));
    }
    body.insert("options".into(), Value::Object(options));

    let mut http = HttpRequest::post_json(
        format!("{}/api/chat", config.base_url),
        &Value::Object(body),
    );
    // Ollama itself has no keys; a proxy in front of it may.
    if let Some(key) = &config.api_key {
        http = http.header(
            "authorization",
            format!("Bearer {}", key.expose()),
            Sensitive::Yes,
        );
    }
    Ok(wire::with_extra_headers(http, config))
}

pub fn parse(body: &[u8]) -> Result<Turn, LlmError> {
    let value = wire::json_body(body)?;
    let message = value
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| LlmError::malformed("the reply has no message"))?;
    if value.get("done").and_then(Value::as_bool) == Some(false) {
        return Err(LlmError::malformed(
            "the reply is an unfinished (streamed) chunk",
        ));
    }
    let text = message
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut tool_calls = Vec::new();
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let function = call
                .get("function")
                .ok_or_else(|| LlmError::malformed("a tool call has no function"))?;
            let arguments = match function.get("arguments") {
                Some(Value::String(text)) => RawArguments::Text(text.clone()),
                Some(other) => RawArguments::Json(other.clone()),
                None => RawArguments::Json(Value::Null),
            };
            tool_calls.push(RawToolCall {
                id: wire::string(call, "id"),
                name: wire::string(function, "name")
                    .ok_or_else(|| LlmError::malformed("a tool call has no function name"))?,
                arguments,
                signature: None,
            });
        }
    }
    let stop_reason = match value.get("done_reason").and_then(Value::as_str) {
        Some("stop") | None => StopReason::EndTurn,
        Some("length") => StopReason::MaxTokens,
        Some(_) => StopReason::Other,
    };
    let count = |key: &str| value.get(key).and_then(Value::as_u64).unwrap_or(0);
    Ok(Turn {
        text,
        tool_calls,
        stop_reason,
        usage: Usage {
            input_tokens: count("prompt_eval_count"),
            output_tokens: count("eval_count"),
            cache_read_tokens: 0,
            cache_write_tokens: 0,
        },
        model: wire::string(&value, "model"),
    })
}

/// `{"error": "model \"x\" not found, try pulling it first"}`
pub fn error(status: u16, body: &[u8], secrets: &[&str]) -> LlmError {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let detail = value
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| wire::text_excerpt(body));
    status_error(status, &wire::clean(&detail, secrets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::error::Reason;
    use crate::llm::types::tests::sample_request;
    use crate::llm::types::ProviderKind;

    #[test]
    fn builds_the_documented_request() {
        let config = ProviderConfig::new(ProviderKind::Ollama, "llama3.1:8b");
        let http = build(&config, &sample_request()).unwrap();
        assert_eq!(http.url, "http://127.0.0.1:11434/api/chat");
        assert_eq!(http.header_value("authorization"), None);
        let body = http.json();
        assert_eq!(
            body["messages"],
            json!([
                {"role": "system", "content": "You watch the BEAM."},
                {"role": "user", "content": "Memory is growing."},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [
                    {"function": {"name": "take_snapshot", "arguments": {}}},
                    {"function": {"name": "execute_lua", "arguments": {"code": "return 1"}}}
                ]},
                {"role": "tool", "content": "{\"memory\": 10}", "tool_name": "take_snapshot"},
                {"role": "tool", "content": "Error: syntax error", "tool_name": "execute_lua"}
            ])
        );
        assert_eq!(body["stream"], json!(false));
        assert_eq!(
            body["options"],
            json!({"num_predict": 512, "temperature": 0.2})
        );
        assert_eq!(body["tools"][1]["function"]["name"], json!("execute_lua"));
        assert_eq!(body["model"], json!("llama3.1:8b"));

        let mut request = sample_request();
        request.tool_choice = ToolChoice::None;
        assert!(build(&config, &request)
            .unwrap()
            .json()
            .get("tools")
            .is_none());
    }

    #[test]
    fn parses_tool_calls_without_ids_and_counts() {
        let body = json!({
            "model": "llama3.1:8b", "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "take_snapshot", "arguments": {}}},
                {"function": {"name": "execute_lua", "arguments": {"code": "return 4"}}}
            ]},
            "done": true, "done_reason": "stop",
            "total_duration": 123, "prompt_eval_count": 50, "eval_count": 12
        });
        let turn = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(turn.usage.input_tokens, 50);
        assert_eq!(turn.usage.output_tokens, 12);
        let response = turn.finish(&sample_request(), ProviderKind::Ollama, "llama3.1:8b");
        assert_eq!(response.stop_reason, StopReason::ToolUse);
        assert_eq!(response.tool_calls[0].id, "call_0");
        assert_eq!(response.tool_calls[1].id, "call_1");
        assert_eq!(
            response.tool_calls[1].arguments,
            Some(json!({"code": "return 4"}))
        );

        let unfinished = br#"{"message": {"role": "assistant", "content": "par"}, "done": false}"#;
        assert_eq!(
            parse(unfinished).unwrap_err().reason,
            Reason::MalformedResponse
        );
    }

    #[test]
    fn error_bodies_are_quoted() {
        let error = error(
            404,
            br#"{"error":"model \"nope\" not found, try pulling it first"}"#,
            &[],
        );
        assert_eq!(error.reason, Reason::NotFound);
        assert!(error
            .message
            .ends_with("model \"nope\" not found, try pulling it first"));
    }
}
