//! Small helpers shared by the provider modules.

use serde_json::{json, Value};

use super::config::ProviderConfig;
use super::error::{clip, redact, LlmError};
use super::http::{HttpRequest, Sensitive};
use super::types::{ChatRequest, Message, Role, StopReason, ToolCall};

/// Longest provider message quoted in an error.
const MAX_DETAIL: usize = 300;

/// Decodes a reply body, reporting a cut-off or garbled body clearly.
pub fn json_body(body: &[u8]) -> Result<Value, LlmError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_eof() {
            "the reply ends in the middle of its JSON"
        } else {
            "the reply is not valid JSON"
        };
        LlmError::malformed(format!("{what} ({e}, {} bytes)", body.len()))
    })
}

pub fn string(value: &Value, key: &str) -> Option<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The body as text, for error bodies that are not JSON.
pub fn text_excerpt(body: &[u8]) -> String {
    clip(&String::from_utf8_lossy(body), MAX_DETAIL)
}

/// A provider message made safe to show: secrets removed, length capped,
/// on one line.
pub fn clean(detail: &str, secrets: &[&str]) -> String {
    let one_line: String = detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    clip(&redact(&one_line, secrets), MAX_DETAIL)
}

pub fn with_extra_headers(mut http: HttpRequest, config: &ProviderConfig) -> HttpRequest {
    for (name, value) in &config.headers {
        http.headers.retain(|(n, _, _)| n != name);
        http = http.header(name, value.expose(), Sensitive::Yes);
    }
    http
}

/// Percent-encodes one URL path segment (RFC 3986 unreserved characters
/// pass through).
pub fn path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Messages grouped into alternating turns, the way Anthropic, Bedrock and
/// Gemini want them: consecutive messages of the same side are merged, and
/// tool results travel on the user side.
#[derive(Debug)]
pub enum Side {
    User,
    Assistant,
}

impl Side {
    /// The role of a turn on this side, as Anthropic and Bedrock name it.
    pub fn role(&self) -> &'static str {
        match self {
            Side::User => "user",
            Side::Assistant => "assistant",
        }
    }
}

/// Groups `messages` into runs of the same side (tool results count as user).
pub fn group_by_side(messages: &[Message]) -> Vec<(Side, Vec<&Message>)> {
    let mut groups: Vec<(Side, Vec<&Message>)> = Vec::new();
    for message in messages {
        let assistant = message.role == Role::Assistant;
        match groups.last_mut() {
            Some((Side::Assistant, group)) if assistant => group.push(message),
            Some((Side::User, group)) if !assistant => group.push(message),
            _ => groups.push((
                if assistant {
                    Side::Assistant
                } else {
                    Side::User
                },
                vec![message],
            )),
        }
    }
    groups
}

/// A stop reason as Anthropic names it (Bedrock's Converse uses the same
/// names).
pub fn stop_reason(name: Option<&str>) -> StopReason {
    match name {
        Some("end_turn") => StopReason::EndTurn,
        Some("tool_use") => StopReason::ToolUse,
        Some("max_tokens") => StopReason::MaxTokens,
        Some("stop_sequence") => StopReason::StopSequence,
        _ => StopReason::Other,
    }
}

/// The token count under `key` of a usage object; 0 when it is missing.
pub fn count(usage: Option<&Value>, key: &str) -> u64 {
    usage
        .and_then(|u| u.get(key))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// The conversation in Chat Completions form (OpenAI and Ollama): the system
/// prompt first, user and plain assistant messages as they are, and an
/// assistant message with tool calls (`calls`) and a tool result (`result`)
/// in the provider's own shape.
pub fn chat_messages(
    request: &ChatRequest,
    calls: impl Fn(&Message) -> Value,
    result: impl Fn(&Message) -> Value,
) -> Vec<Value> {
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
            Role::Assistant => calls(message),
            Role::Tool => result(message),
        });
    }
    out
}

/// How a provider that wants alternating turns (Anthropic, Bedrock, Gemini)
/// writes each piece of a turn.
pub struct TurnShape<T, C, R, W> {
    /// A message's text, when it has any.
    pub text: T,
    /// The `index`th tool call of an assistant message.
    pub call: C,
    /// A tool result.
    pub result: R,
    /// A whole turn from its side and its blocks.
    pub turn: W,
}

/// The conversation as alternating turns ([`group_by_side`]): each turn
/// holds its messages' blocks in order (the text when there is any, then
/// one block per tool call; a tool result is one block); empty turns are
/// left out.
pub fn side_turns<T, C, R, W>(messages: &[Message], shape: TurnShape<T, C, R, W>) -> Vec<Value>
where
    T: Fn(&str) -> Value,
    C: Fn(usize, &ToolCall) -> Value,
    R: Fn(&Message) -> Value,
    W: Fn(Side, Vec<Value>) -> Value,
{
    let mut turns = Vec::new();
    for (side, group) in group_by_side(messages) {
        let mut blocks = Vec::new();
        for message in group {
            match message.role {
                Role::User | Role::Assistant => {
                    if !message.content.is_empty() {
                        blocks.push((shape.text)(&message.content));
                    }
                    for (index, call) in message.tool_calls.iter().enumerate() {
                        blocks.push((shape.call)(index, call));
                    }
                }
                Role::Tool => blocks.push((shape.result)(message)),
            }
        }
        if !blocks.is_empty() {
            turns.push((shape.turn)(side, blocks));
        }
    }
    turns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::fixtures::sample_request;

    #[test]
    fn truncated_and_garbled_bodies_are_told_apart() {
        let cut = json_body(b"{\"content\": [").unwrap_err();
        assert!(
            cut.message
                .starts_with("the reply ends in the middle of its JSON"),
            "{}",
            cut.message
        );
        let garbled = json_body(b"<html>502</html>").unwrap_err();
        assert!(
            garbled.message.starts_with("the reply is not valid JSON"),
            "{}",
            garbled.message
        );
    }

    #[test]
    fn clean_strips_secrets_and_newlines() {
        assert_eq!(
            clean("bad key sk-secret-123456\nline two", &["sk-secret-123456"]),
            "bad key [REDACTED] line two"
        );
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(
            path_segment("anthropic.claude-3-5-sonnet-20240620-v1:0"),
            "anthropic.claude-3-5-sonnet-20240620-v1%3A0"
        );
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }
    #[test]
    fn groups_messages_into_alternating_sides() {
        let request = sample_request();
        let groups = group_by_side(&request.messages);
        let shape: Vec<(bool, usize)> = groups
            .iter()
            .map(|(side, group)| (matches!(side, Side::User), group.len()))
            .collect();
        assert_eq!(shape, vec![(true, 1), (false, 1), (true, 2)]);
    }
}
