//! Google Gemini API (`POST /v1beta/models/{model}:generateContent`), key
//! in the `x-goog-api-key` header.
//!
//! Tools are `functionDeclarations`, calls come back as `functionCall`
//! parts (usually without ids) and results go back as `functionResponse`
//! parts matched by name. Gemini 3 models attach a `thoughtSignature` to
//! function calls and reject a history that drops it: it is kept in
//! [`ToolCall::signature`](super::types::ToolCall) and sent back; calls that
//! have none (made by another provider of a fallback chain) get Google's
//! documented placeholder.

use serde_json::{json, Map, Value};

use super::config::ProviderConfig;
use super::error::{LlmError, Reason};
use super::http::{kind_error, protobuf_duration, status_error, HttpRequest, Sensitive};
use super::types::{
    group_by_side, ChatRequest, RawArguments, RawToolCall, Role, Side, StopReason, ToolChoice,
    Turn, Usage,
};
use super::wire;

/// Google's documented stand-in for a missing thought signature.
pub const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// JSON Schema keywords Gemini's `parameters` (an OpenAPI subset) accepts;
/// others (`additionalProperties`, `$schema`, ...) are dropped.
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

pub fn build(config: &ProviderConfig, request: &ChatRequest) -> Result<HttpRequest, LlmError> {
    let mut contents = Vec::new();
    for (side, group) in group_by_side(&request.messages) {
        let mut parts = Vec::new();
        for message in group {
            match message.role {
                Role::User | Role::Assistant => {
                    if !message.content.is_empty() {
                        parts.push(json!({"text": message.content}));
                    }
                    for (index, call) in message.tool_calls.iter().enumerate() {
                        let mut part = json!({"functionCall": {
                            "name": call.name,
                            "args": call.arguments.clone().unwrap_or_else(|| json!({})),
                        }});
                        match &call.signature {
                            Some(signature) => part["thoughtSignature"] = json!(signature),
                            None if index == 0 => part["thoughtSignature"] = json!(SKIP_SIGNATURE),
                            None => {}
                        }
                        parts.push(part);
                    }
                }
                Role::Tool => {
                    let key = if message.is_error { "error" } else { "output" };
                    parts.push(json!({"functionResponse": {
                        "name": message.name.as_deref().unwrap_or_else(|| tool_name_for(request, message.tool_call_id.as_deref())),
                        "response": {key: message.content},
                    }}));
                }
            }
        }
        let role = match side {
            Side::User => "user",
            Side::Assistant => "model",
        };
        if !parts.is_empty() {
            contents.push(json!({"role": role, "parts": parts}));
        }
    }

    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if let Some(system) = &request.system {
        body.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system}]}),
        );
    }
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut declaration = json!({
                    "name": tool.name,
                    "description": tool.description,
                });
                let parameters = schema(&tool.parameters);
                // Gemini rejects an object schema without properties
                // ("properties: should be non-empty for OBJECT type"); a
                // tool that takes nothing is declared without `parameters`.
                if takes_arguments(&parameters) {
                    declaration["parameters"] = parameters;
                }
                declaration
            })
            .collect();
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
        let config = match &request.tool_choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        body.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": config}),
        );
    }
    let mut generation = Map::new();
    generation.insert("maxOutputTokens".into(), json!(request.max_tokens));
    if let Some(temperature) = request.temperature {
        generation.insert("temperature".into(), json!(temperature));
    }
    body.insert("generationConfig".into(), Value::Object(generation));

    let model = config
        .model
        .strip_prefix("models/")
        .unwrap_or(&config.model);
    let url = format!(
        "{}/models/{}:generateContent",
        config.base_url,
        wire::path_segment(model)
    );
    let mut http = HttpRequest::post_json(url, &Value::Object(body));
    if let Some(key) = &config.api_key {
        http = http.header("x-goog-api-key", key.expose(), Sensitive::Yes);
    }
    Ok(wire::with_extra_headers(http, config))
}

/// The name of the tool a result answers, from the call in the history.
fn tool_name_for<'a>(request: &'a ChatRequest, call_id: Option<&str>) -> &'a str {
    request
        .messages
        .iter()
        .flat_map(|m| m.tool_calls.iter())
        .find(|call| Some(call.id.as_str()) == call_id)
        .map_or("unknown", |call| call.name.as_str())
}

/// Whether a (filtered) parameter schema declares any argument: `false` for
/// `null`, `{}` and object schemas with no (or empty) `properties` and
/// nothing else that constrains the arguments (what a tool without
/// arguments sends, `%{"type" => "object"}`).
fn takes_arguments(parameters: &Value) -> bool {
    let Value::Object(map) = parameters else {
        return !parameters.is_null();
    };
    map.iter().any(|(key, value)| match key.as_str() {
        "type" => !value
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("object")),
        "properties" => !value.as_object().is_some_and(Map::is_empty),
        "required" => !value.as_array().is_some_and(Vec::is_empty),
        "description" | "title" | "nullable" => false,
        _ => true,
    })
}

/// Keeps the keywords Gemini understands, recursively.
fn schema(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, value) in map {
                if !SCHEMA_KEYS.contains(&key.as_str()) {
                    continue;
                }
                let value = match key.as_str() {
                    "properties" => match value {
                        Value::Object(props) => Value::Object(
                            props
                                .iter()
                                .map(|(name, s)| (name.clone(), schema(s)))
                                .collect(),
                        ),
                        other => other.clone(),
                    },
                    "items" => schema(value),
                    "anyOf" => match value {
                        Value::Array(items) => Value::Array(items.iter().map(schema).collect()),
                        other => other.clone(),
                    },
                    _ => value.clone(),
                };
                out.insert(key.clone(), value);
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

pub fn parse(body: &[u8]) -> Result<Turn, LlmError> {
    let value = wire::json_body(body)?;
    let usage = value.get("usageMetadata");
    let count = |key: &str| {
        usage
            .and_then(|u| u.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    // promptTokenCount includes the cached part; thinking is output.
    let cached = count("cachedContentTokenCount");
    let usage = Usage {
        input_tokens: count("promptTokenCount").saturating_sub(cached),
        output_tokens: count("candidatesTokenCount").saturating_add(count("thoughtsTokenCount")),
        cache_read_tokens: cached,
        cache_write_tokens: 0,
    };
    let model = wire::string(&value, "modelVersion");

    let Some(candidate) = value
        .get("candidates")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    else {
        // A prompt blocked by safety filters has no candidates.
        if value.pointer("/promptFeedback/blockReason").is_some() {
            return Ok(Turn {
                text: String::new(),
                tool_calls: Vec::new(),
                stop_reason: StopReason::Other,
                usage,
                model,
            });
        }
        return Err(LlmError::malformed("the reply has no candidates"));
    };

    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let parts = candidate
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for part in parts {
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(call) = part.get("functionCall") {
            tool_calls.push(RawToolCall {
                id: wire::string(call, "id"),
                name: wire::string(call, "name")
                    .ok_or_else(|| LlmError::malformed("a functionCall part has no name"))?,
                arguments: RawArguments::Json(call.get("args").cloned().unwrap_or(Value::Null)),
                signature: wire::string(part, "thoughtSignature")
                    .or_else(|| wire::string(call, "thoughtSignature")),
            });
        }
    }
    let finish = candidate.get("finishReason").and_then(Value::as_str);
    if parts.is_empty()
        && !matches!(
            finish,
            Some(
                "MAX_TOKENS"
                    | "SAFETY"
                    | "RECITATION"
                    | "BLOCKLIST"
                    | "PROHIBITED_CONTENT"
                    | "SPII"
                    | "MALFORMED_FUNCTION_CALL"
                    | "OTHER"
            )
        )
    {
        return Err(LlmError::malformed("the candidate has no content parts"));
    }
    let stop_reason = match finish {
        Some("STOP") => StopReason::EndTurn,
        Some("MAX_TOKENS") => StopReason::MaxTokens,
        _ => StopReason::Other,
    };
    Ok(Turn {
        text,
        tool_calls,
        stop_reason,
        usage,
        model,
    })
}

/// `{"error": {"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED",
/// "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
/// "retryDelay": "12s"}, ...]}}`. The `retryDelay` becomes the error's
/// `retry_after` (Gemini puts the wait in the body, not in `Retry-After`);
/// `details[].reason == "API_KEY_INVALID"` (sent with a 400) makes it
/// `:unauthorized`.
pub fn error(status: u16, body: &[u8], secrets: &[&str]) -> LlmError {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let detail = value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| wire::text_excerpt(body));
    let detail = wire::clean(&detail, secrets);
    let details = value
        .pointer("/error/details")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let invalid_key = details
        .iter()
        .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"));
    let mut error = if invalid_key {
        kind_error(
            status,
            Reason::Unauthorized,
            false,
            "the provider rejected the credentials (API_KEY_INVALID)",
            &detail,
        )
    } else {
        status_error(status, &detail)
    };
    error.retry_after = details
        .iter()
        .filter(|d| d.get("@type").and_then(Value::as_str) == Some(RETRY_INFO))
        .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .and_then(protobuf_duration);
    error
}

/// The `@type` of the error detail that carries the wait.
pub const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::config::Secret;
    use crate::llm::types::tests::sample_request;
    use crate::llm::types::ProviderKind;
    use std::time::Duration;

    fn config() -> ProviderConfig {
        let mut config = ProviderConfig::new(ProviderKind::Gemini, "gemini-2.5-flash");
        config.api_key = Some(Secret::new("AIza-test-key"));
        config
    }

    #[test]
    fn builds_the_documented_request() {
        let mut request = sample_request();
        request.messages[1].tool_calls[0].signature = Some("c2lnbmF0dXJl".into());
        let http = build(&config(), &request).unwrap();
        assert_eq!(
            http.url,
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(http.header_value("x-goog-api-key"), Some("AIza-test-key"));
        assert_eq!(
            http.json(),
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "Memory is growing."}]},
                    {"role": "model", "parts": [
                        {"text": "Let me look."},
                        {"functionCall": {"name": "take_snapshot", "args": {}}, "thoughtSignature": "c2lnbmF0dXJl"},
                        {"functionCall": {"name": "execute_lua", "args": {"code": "return 1"}}}
                    ]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"name": "take_snapshot", "response": {"output": "{\"memory\": 10}"}}},
                        {"functionResponse": {"name": "execute_lua", "response": {"error": "syntax error"}}}
                    ]}
                ],
                "systemInstruction": {"parts": [{"text": "You watch the BEAM."}]},
                "tools": [{"functionDeclarations": [
                    {"name": "take_snapshot", "description": "Takes a snapshot."},
                    {"name": "execute_lua", "description": "Runs Lua.",
                     "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}
                ]}],
                "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
                "generationConfig": {"maxOutputTokens": 512, "temperature": 0.2}
            })
        );
    }

    #[test]
    fn unsigned_history_gets_the_placeholder_and_tool_choice_maps() {
        let mut request = sample_request();
        request.tool_choice = ToolChoice::Tool("execute_lua".into());
        let body = build(&config(), &request).unwrap().json();
        assert_eq!(
            body["contents"][1]["parts"][1]["thoughtSignature"],
            json!(SKIP_SIGNATURE)
        );
        assert!(body["contents"][1]["parts"][2]
            .get("thoughtSignature")
            .is_none());
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["execute_lua"]}})
        );
    }

    #[test]
    fn parses_function_calls_signatures_and_usage() {
        let body = json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "thinking...", "thought": true},
                {"functionCall": {"name": "take_snapshot", "args": {}}, "thoughtSignature": "sig1"},
                {"functionCall": {"name": "execute_lua", "args": {"code": "return 6"}}}
            ]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 80, "candidatesTokenCount": 10, "thoughtsTokenCount": 5,
                              "cachedContentTokenCount": 30, "totalTokenCount": 95},
            "modelVersion": "gemini-2.5-flash"
        });
        let turn = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(turn.text, "");
        assert_eq!(
            turn.usage,
            Usage {
                input_tokens: 50,
                output_tokens: 15,
                cache_read_tokens: 30,
                cache_write_tokens: 0
            }
        );
        assert_eq!(turn.tool_calls[0].signature.as_deref(), Some("sig1"));
        let response = turn.finish(&sample_request(), ProviderKind::Gemini, "gemini-2.5-flash");
        assert_eq!(response.stop_reason, StopReason::ToolUse);
        assert_eq!(response.tool_calls[1].id, "call_1");
        assert_eq!(
            response.tool_calls[1].arguments,
            Some(json!({"code": "return 6"}))
        );
    }

    #[test]
    fn blocked_prompts_and_missing_candidates() {
        let blocked = br#"{"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}}"#;
        let turn = parse(blocked).unwrap();
        assert_eq!(
            (turn.stop_reason, turn.usage.input_tokens),
            (StopReason::Other, 5)
        );
        assert_eq!(
            parse(br#"{"usageMetadata": {}}"#).unwrap_err().reason,
            Reason::MalformedResponse
        );
    }

    #[test]
    fn tools_without_arguments_have_no_parameters() {
        use crate::llm::types::Tool;
        let tool = |parameters: Value| Tool {
            name: "done".into(),
            description: "Ends the turn.".into(),
            parameters,
        };
        let mut request = sample_request();
        request.tools = vec![
            tool(json!({"type": "object", "properties": {}})),
            tool(json!({"type": "object"})),
            tool(json!({"type": "OBJECT", "additionalProperties": false})),
            tool(
                json!({"type": "object", "properties": {}, "required": [], "description": "none"}),
            ),
            tool(json!({})),
            tool(Value::Null),
        ];
        let body = build(&config(), &request).unwrap().json();
        for declaration in body["tools"][0]["functionDeclarations"].as_array().unwrap() {
            assert_eq!(
                declaration,
                &json!({"name": "done", "description": "Ends the turn."})
            );
        }
        // Anything else that describes arguments keeps the schema.
        request.tools = vec![tool(
            json!({"anyOf": [{"type": "object", "properties": {"a": {"type": "string"}}}]}),
        )];
        let body = build(&config(), &request).unwrap().json();
        assert!(body["tools"][0]["functionDeclarations"][0]
            .get("parameters")
            .is_some());
        // One argument is enough to keep the schema.
        request.tools = vec![tool(
            json!({"type": "object", "properties": {"why": {"type": "string"}}}),
        )];
        let body = build(&config(), &request).unwrap().json();
        assert_eq!(
            body["tools"][0]["functionDeclarations"][0]["parameters"],
            json!({"type": "object", "properties": {"why": {"type": "string"}}})
        );
    }

    #[test]
    fn a_call_to_a_tool_without_parameters_has_empty_arguments() {
        let body = json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "take_snapshot"}}
            ]}, "finishReason": "STOP"}]
        });
        let turn = parse(body.to_string().as_bytes()).unwrap();
        let response = turn.finish(&sample_request(), ProviderKind::Gemini, "gemini-2.5-flash");
        assert_eq!(response.tool_calls[0].arguments, Some(json!({})));
        assert_eq!(response.tool_calls[0].error, None);
    }

    /// The 429 body of the Gemini API: the wait is in a RetryInfo detail.
    #[test]
    fn retry_info_gives_the_wait() {
        let body = br#"{"error": {"code": 429,
            "message": "You exceeded your current quota. Please retry in 12.5s.",
            "status": "RESOURCE_EXHAUSTED", "details": [
              {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
               "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                               "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
              {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
              {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12.500s"}]}}"#;
        let error = error(429, body, &[]);
        assert_eq!((error.reason, error.retryable), (Reason::RateLimited, true));
        assert_eq!(error.retry_after, Some(Duration::from_millis(12_500)));

        let with_delay = |delay: &str| {
            let body = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "m",
                "details": [{"@type": RETRY_INFO, "retryDelay": delay}]}});
            super::error(429, body.to_string().as_bytes(), &[]).retry_after
        };
        assert_eq!(with_delay("7s"), Some(Duration::from_secs(7)));
        assert_eq!(with_delay("0s"), Some(Duration::ZERO));
        // Hostile or garbled waits: clamped or ignored, never a panic.
        assert_eq!(with_delay("1e300s"), None);
        assert_eq!(
            with_delay("99999999999999999999999999999s"),
            Some(crate::llm::http::MAX_RETRY_AFTER)
        );
        assert_eq!(with_delay("-5s"), None);
        assert_eq!(with_delay("12"), None);
        assert_eq!(with_delay("soon"), None);
        // Only a RetryInfo detail counts.
        let other = br#"{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "m",
            "details": [{"@type": "type.googleapis.com/google.rpc.Help", "retryDelay": "5s"}]}}"#;
        assert_eq!(super::error(429, other, &[]).retry_after, None);
    }

    #[test]
    fn huge_token_counts_saturate() {
        let body = json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": u64::MAX, "thoughtsTokenCount": u64::MAX}
        });
        let turn = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(turn.usage.output_tokens, u64::MAX);
    }

    #[test]
    fn invalid_keys_are_unauthorized() {
        let body = br#"{"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}"#;
        let error = error(400, body, &[]);
        assert_eq!(
            (error.reason, error.retryable),
            (Reason::Unauthorized, false)
        );
        assert_eq!(
            error.message,
            "the provider rejected the credentials (API_KEY_INVALID) (HTTP 400): \
             API key not valid. Please pass a valid API key."
        );
        let exhausted = br#"{"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            super::error(429, exhausted, &[]).reason,
            Reason::RateLimited
        );
    }
}
