//! Requests and configs shared by the provider tests.

use serde_json::json;

use super::config::{ProviderConfig, Secret};
use super::types::{ChatRequest, ProviderKind};

/// A request with every kind of message and two tools, shared by the
/// provider tests.
pub fn sample_request() -> ChatRequest {
    ChatRequest::from_json(&json!({
        "system": "You watch the BEAM.",
        "messages": [
            {"role": "user", "content": "Memory is growing."},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_1", "name": "take_snapshot", "arguments": {}},
                {"id": "call_2", "name": "execute_lua", "arguments": {"code": "return 1"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "name": "take_snapshot",
             "content": "{\"memory\": 10}", "is_error": false},
            {"role": "tool", "tool_call_id": "call_2", "name": "execute_lua",
             "content": "syntax error", "is_error": true}
        ],
        "tools": [
            {"name": "take_snapshot", "description": "Takes a snapshot.",
             "parameters": {"type": "object", "properties": {}}},
            {"name": "execute_lua", "description": "Runs Lua.",
             "parameters": {"type": "object", "properties": {"code": {"type": "string"}},
                            "required": ["code"], "additionalProperties": false}}
        ],
        "max_tokens": 512,
        "tool_choice": "auto",
        "temperature": 0.2
    }))
    .unwrap()
}

pub fn simple_request() -> ChatRequest {
    ChatRequest::from_json(&json!({
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 64
    }))
    .unwrap()
}

/// `kind` and `model` with the API key `key`.
pub fn keyed(kind: ProviderKind, model: &str, key: &str) -> ProviderConfig {
    let mut config = ProviderConfig::new(kind, model);
    config.api_key = Some(Secret::new(key));
    config
}
