//! Validating a chat request given as JSON, with errors that name the
//! offending field.

use serde_json::{json, Value};

use super::error::LlmError;
use super::types::{ChatRequest, Message, Role, Tool, ToolCall, ToolChoice};

impl ChatRequest {
    /// Validates a request given as JSON (converted from an Elixir map).
    pub fn from_json(value: &Value) -> Result<ChatRequest, LlmError> {
        let object = value
            .as_object()
            .ok_or_else(|| invalid("request", "must be a map"))?;

        for key in object.keys() {
            if !matches!(
                key.as_str(),
                "system" | "messages" | "tools" | "max_tokens" | "tool_choice" | "temperature"
            ) {
                return Err(invalid(
                    key,
                    "is not a known request key (expected :system, :messages, :tools, :max_tokens, :tool_choice or :temperature)",
                ));
            }
        }

        let system = match object.get("system") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(invalid("system", "must be a string or nil")),
        };

        let messages = match object.get("messages") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_message(i, item))
                .collect::<Result<Vec<_>, _>>()?,
            Some(Value::Array(_)) => return Err(invalid("messages", "must not be empty")),
            Some(_) => return Err(invalid("messages", "must be a list of messages")),
            None => return Err(invalid("messages", "is required")),
        };

        let tools = match object.get("tools") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_tool(i, item))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(invalid("tools", "must be a list of tools")),
        };
        let mut names = std::collections::HashSet::new();
        for tool in &tools {
            if !names.insert(tool.name.as_str()) {
                return Err(invalid(
                    "tools",
                    format!("has two tools named {:?}", tool.name),
                ));
            }
        }

        let max_tokens = match object.get("max_tokens") {
            None | Some(Value::Null) => 1024,
            Some(value) => value
                .as_u64()
                .filter(|n| (1..=1_000_000).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| invalid("max_tokens", "must be an integer from 1 to 1000000"))?,
        };

        let tool_choice = match object.get("tool_choice") {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                "none" => ToolChoice::None,
                _ => return Err(tool_choice_error()),
            },
            Some(Value::Array(items)) => match items.as_slice() {
                [Value::String(tag), Value::String(name)] if tag == "tool" => {
                    if !tools.iter().any(|t| &t.name == name) {
                        return Err(invalid(
                            "tool_choice",
                            format!("names {name:?}, which is not among the request's tools"),
                        ));
                    }
                    ToolChoice::Tool(name.clone())
                }
                _ => return Err(tool_choice_error()),
            },
            Some(_) => return Err(tool_choice_error()),
        };

        let temperature = match object.get("temperature") {
            None | Some(Value::Null) => None,
            Some(value) => Some(
                value
                    .as_f64()
                    .filter(|t| (0.0..=2.0).contains(t))
                    .ok_or_else(|| invalid("temperature", "must be a number from 0 to 2"))?,
            ),
        };

        Ok(ChatRequest {
            system,
            messages,
            tools,
            max_tokens,
            tool_choice,
            temperature,
        })
    }

    /// Whether any message carries tool calls or tool results (some
    /// providers then insist on the tool definitions being present).
    pub fn has_tool_history(&self) -> bool {
        self.messages
            .iter()
            .any(|m| m.role == Role::Tool || !m.tool_calls.is_empty())
    }
}

fn tool_choice_error() -> LlmError {
    invalid(
        "tool_choice",
        "must be :auto, :required, :none or {:tool, name}",
    )
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> LlmError {
    LlmError::invalid_request(format!("request {field} {reason}"))
}

fn parse_message(index: usize, value: &Value) -> Result<Message, LlmError> {
    let at = |field: &str| format!("messages[{index}].{field}");
    let object = value
        .as_object()
        .ok_or_else(|| invalid(&format!("messages[{index}]"), "must be a map"))?;

    let role = match object.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("tool") => Role::Tool,
        _ => return Err(invalid(&at("role"), "must be :user, :assistant or :tool")),
    };

    let content = match object.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        // Tool results may be structured; the model gets them as JSON text.
        Some(other) if role == Role::Tool => other.to_string(),
        Some(_) => return Err(invalid(&at("content"), "must be a string")),
    };

    let tool_calls = match (role, object.get("tool_calls")) {
        (_, None | Some(Value::Null)) => Vec::new(),
        (Role::Assistant, Some(Value::Array(calls))) => calls
            .iter()
            .enumerate()
            .map(|(i, call)| parse_history_call(index, i, call))
            .collect::<Result<Vec<_>, _>>()?,
        (Role::Assistant, Some(_)) => {
            return Err(invalid(&at("tool_calls"), "must be a list of tool calls"))
        }
        (_, Some(Value::Array(calls))) if calls.is_empty() => Vec::new(),
        (_, Some(_)) => {
            return Err(invalid(
                &at("tool_calls"),
                "is only allowed on assistant messages",
            ))
        }
    };

    let (tool_call_id, name, is_error) = if role == Role::Tool {
        let id = object
            .get("tool_call_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(&at("tool_call_id"), "is required on tool messages"))?;
        let name = match object.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(invalid(&at("name"), "must be a string")),
        };
        let is_error = match object.get("is_error") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid(&at("is_error"), "must be a boolean")),
        };
        (Some(id.to_string()), name, is_error)
    } else {
        (None, None, false)
    };

    Ok(Message {
        role,
        content,
        tool_calls,
        tool_call_id,
        name,
        is_error,
    })
}

fn parse_history_call(message: usize, index: usize, value: &Value) -> Result<ToolCall, LlmError> {
    let at = |field: &str| format!("messages[{message}].tool_calls[{index}].{field}");
    let object = value.as_object().ok_or_else(|| {
        invalid(
            &format!("messages[{message}].tool_calls[{index}]"),
            "must be a map",
        )
    })?;
    let string = |field: &str| -> Result<String, LlmError> {
        object
            .get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| invalid(&at(field), "must be a non-empty string"))
    };
    let arguments = match object.get("arguments") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(Value::Object(map.clone())),
        Some(Value::String(text)) => serde_json::from_str::<Value>(text)
            .ok()
            .filter(Value::is_object),
        Some(_) => return Err(invalid(&at("arguments"), "must be a map")),
    };
    let signature = object
        .get("signature")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Ok(ToolCall {
        id: string("id")?,
        name: string("name")?,
        arguments,
        error: None,
        signature,
    })
}

fn parse_tool(index: usize, value: &Value) -> Result<Tool, LlmError> {
    let at = |field: &str| format!("tools[{index}].{field}");
    let object = value
        .as_object()
        .ok_or_else(|| invalid(&format!("tools[{index}]"), "must be a map"))?;
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .filter(|name| valid_tool_name(name))
        .ok_or_else(|| {
            invalid(
                &at("name"),
                "must be 1 to 64 letters, digits, underscores or hyphens",
            )
        })?;
    let description = match object.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid(&at("description"), "must be a string")),
    };
    let parameters = match object.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(Value::Object(map)) => Value::Object(map.clone()),
        Some(_) => return Err(invalid(&at("parameters"), "must be a JSON Schema map")),
    };
    Ok(Tool {
        name: name.to_string(),
        description,
        parameters,
    })
}

fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::fixtures::sample_request;

    #[test]
    fn parses_a_full_request() {
        let request = sample_request();
        assert_eq!(request.system.as_deref(), Some("You watch the BEAM."));
        assert_eq!(request.messages.len(), 4);
        assert_eq!(request.messages[1].tool_calls.len(), 2);
        assert_eq!(
            request.messages[1].tool_calls[1].arguments,
            Some(json!({"code": "return 1"}))
        );
        assert!(request.messages[3].is_error);
        assert_eq!(request.tools.len(), 2);
        assert_eq!(request.max_tokens, 512);
        assert_eq!(request.tool_choice, ToolChoice::Auto);
        assert_eq!(request.temperature, Some(0.2));
        assert!(request.has_tool_history());
    }

    #[test]
    fn rejects_bad_requests_naming_the_field() {
        let cases = [
            (json!({}), "request messages is required"),
            (
                json!({"messages": []}),
                "request messages must not be empty",
            ),
            (
                json!({"messages": [{"role": "system", "content": "x"}]}),
                "request messages[0].role must be :user, :assistant or :tool",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "request messages[0].tool_call_id is required on tool messages",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                "request max_tokens must be an integer from 1 to 1000000",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": ["tool", "nope"]}),
                "request tool_choice names \"nope\", which is not among the request's tools",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"name": "a b"}]}),
                "request tools[0].name must be 1 to 64 letters, digits, underscores or hyphens",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stream": true}),
                "request stream is not a known request key",
            ),
        ];
        for (input, expected) in cases {
            let error = ChatRequest::from_json(&input).unwrap_err();
            assert!(
                error.message.starts_with(expected),
                "{input}: got {:?}",
                error.message
            );
        }
    }
}
