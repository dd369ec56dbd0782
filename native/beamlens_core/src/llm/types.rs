//! The provider-neutral chat model: what BeamLens asks a model and what it
//! gets back, whatever the wire format.
//!
//! Requests arrive from Elixir as JSON (see `crate::convert`: atoms are
//! strings, tuples are arrays) and are validated by [`ChatRequest::from_json`]
//! with messages that name the offending field. Responses are built by each
//! provider's parser as a [`Turn`] (the model's text and raw tool calls) and
//! finished by [`Turn::finish`], which checks every tool call against the
//! request's tools. A bad tool call never fails the whole response: it is
//! kept with `arguments: None` and a readable `error`, so the caller can tell
//! the model what to fix.

use serde_json::{json, Map, Value};

use super::error::LlmError;

/// The providers BeamLens speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    Anthropic,
    OpenAi,
    AzureOpenAi,
    OpenAiCompatible,
    Ollama,
    Bedrock,
    Gemini,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 7] = [
        ProviderKind::Anthropic,
        ProviderKind::OpenAi,
        ProviderKind::AzureOpenAi,
        ProviderKind::OpenAiCompatible,
        ProviderKind::Ollama,
        ProviderKind::Bedrock,
        ProviderKind::Gemini,
    ];

    /// The name used in Elixir (`:anthropic`, `:openai`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenAi => "openai",
            ProviderKind::AzureOpenAi => "azure_openai",
            ProviderKind::OpenAiCompatible => "openai_compatible",
            ProviderKind::Ollama => "ollama",
            ProviderKind::Bedrock => "bedrock",
            ProviderKind::Gemini => "gemini",
        }
    }

    pub fn parse(name: &str) -> Option<ProviderKind> {
        ProviderKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    Tool,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    /// Text of the message; may be empty for an assistant turn that only
    /// calls tools.
    pub content: String,
    /// Tool calls made by the assistant (assistant messages only).
    pub tool_calls: Vec<ToolCall>,
    /// The call this message answers (tool messages only).
    pub tool_call_id: Option<String>,
    /// The name of the tool that was called (tool messages only; Gemini
    /// matches results to calls by name).
    pub name: Option<String>,
    /// Whether the tool failed (tool messages only).
    pub is_error: bool,
}

/// A tool the model may call, described by a JSON Schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    Required,
    None,
    Tool(String),
}

/// A chat request, independent of the provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub max_tokens: u32,
    pub tool_choice: ToolChoice,
    pub temperature: Option<f64>,
}

/// A tool call made by the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON object; `None` when they could not be parsed.
    pub arguments: Option<Value>,
    /// Why the call is unusable (invalid JSON, unknown tool); `None` when it
    /// is fine.
    pub error: Option<String>,
    /// An opaque signature the provider wants back with the call in the next
    /// turn (Gemini's thought signatures).
    pub signature: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    ToolUse,
    MaxTokens,
    StopSequence,
    Other,
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::ToolUse => "tool_use",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopSequence => "stop_sequence",
            StopReason::Other => "other",
        }
    }
}

/// Token usage, normalised across providers: `input_tokens` counts input
/// that was *not* read from or written to the prompt cache, so the four
/// counters add up to everything the provider processed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_read_tokens)
            .saturating_add(self.cache_write_tokens)
    }

    pub fn add(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cache_read_tokens = self
            .cache_read_tokens
            .saturating_add(other.cache_read_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(other.cache_write_tokens);
    }

    pub fn to_json(&self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
        })
    }
}

/// The model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub stop_reason: StopReason,
    pub usage: Usage,
    pub provider: ProviderKind,
    pub model: String,
    /// HTTP attempts made for this request, over all providers tried.
    pub attempts: u32,
    /// Position in the fallback chain of the provider that answered.
    pub chain_index: usize,
}

impl ChatResponse {
    pub fn to_json(&self) -> Value {
        json!({
            "content": self.content,
            "tool_calls": self.tool_calls.iter().map(|call| json!({
                "id": call.id,
                "name": call.name,
                "arguments": call.arguments,
                "error": call.error,
                "signature": call.signature,
            })).collect::<Vec<_>>(),
            "stop_reason": self.stop_reason.name(),
            "usage": self.usage.to_json(),
            "provider": self.provider.name(),
            "model": self.model,
            "attempts": self.attempts,
            "chain_index": self.chain_index,
        })
    }
}

/// The arguments of a tool call as the provider sent them.
#[derive(Debug, Clone, PartialEq)]
pub enum RawArguments {
    /// A JSON document in a string (OpenAI and compatible servers).
    Text(String),
    /// Already-decoded JSON (Anthropic, Bedrock, Gemini, Ollama).
    Json(Value),
}

/// A tool call before it was checked against the request.
#[derive(Debug, Clone, PartialEq)]
pub struct RawToolCall {
    /// The provider's id; `None` when it gives none (Gemini, Ollama).
    pub id: Option<String>,
    pub name: String,
    pub arguments: RawArguments,
    pub signature: Option<String>,
}

/// A parsed provider reply before its tool calls were checked. For local
/// model servers, [`recover`](super::recover) runs between parsing and
/// [`Turn::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub text: String,
    pub tool_calls: Vec<RawToolCall>,
    pub stop_reason: StopReason,
    pub usage: Usage,
    /// The model the provider says answered, when it says.
    pub model: Option<String>,
}

/// Longest excerpt of bad arguments quoted back in a tool call's error.
const ARGUMENT_EXCERPT: usize = 200;

impl Turn {
    /// Checks the tool calls against the request and builds the response.
    pub fn finish(
        self,
        request: &ChatRequest,
        provider: ProviderKind,
        model: &str,
    ) -> ChatResponse {
        let mut seen_ids = std::collections::HashSet::new();
        let tool_calls: Vec<ToolCall> = self
            .tool_calls
            .into_iter()
            .enumerate()
            .map(|(index, raw)| {
                let mut id = raw
                    .id
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| format!("call_{index}"));
                if !seen_ids.insert(id.clone()) {
                    id = format!("{id}_{index}");
                }
                check_call(id, raw.name, raw.arguments, raw.signature, request)
            })
            .collect();

        // Several providers (Gemini, many OpenAI-compatible servers) report a
        // plain stop even when the turn consists of tool calls.
        let stop_reason = if !tool_calls.is_empty() && self.stop_reason == StopReason::EndTurn {
            StopReason::ToolUse
        } else {
            self.stop_reason
        };

        ChatResponse {
            content: self.text,
            tool_calls,
            stop_reason,
            usage: self.usage,
            provider,
            model: self.model.unwrap_or_else(|| model.to_string()),
            attempts: 1,
            chain_index: 0,
        }
    }
}

fn check_call(
    id: String,
    name: String,
    arguments: RawArguments,
    signature: Option<String>,
    request: &ChatRequest,
) -> ToolCall {
    let (arguments, mut error) = match arguments {
        RawArguments::Json(Value::Object(map)) => (Some(Value::Object(map)), None),
        RawArguments::Json(Value::Null) => (Some(Value::Object(Map::new())), None),
        RawArguments::Json(other) => (
            None,
            Some(format!(
                "arguments must be a JSON object, got {}",
                excerpt(&other.to_string())
            )),
        ),
        RawArguments::Text(text) if text.trim().is_empty() => {
            (Some(Value::Object(Map::new())), None)
        }
        RawArguments::Text(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => (Some(Value::Object(map)), None),
            Ok(_) => (
                None,
                Some(format!(
                    "arguments must be a JSON object, got {}",
                    excerpt(&text)
                )),
            ),
            Err(e) => (
                None,
                Some(format!(
                    "arguments are not valid JSON ({e}): {}",
                    excerpt(&text)
                )),
            ),
        },
    };

    if !request.tools.iter().any(|tool| tool.name == name) {
        let known: Vec<&str> = request.tools.iter().map(|t| t.name.as_str()).collect();
        let unknown = if known.is_empty() {
            format!("unknown tool {:?}: no tools were offered", excerpt(&name))
        } else {
            format!(
                "unknown tool {:?}; available tools: {}",
                excerpt(&name),
                known.join(", ")
            )
        };
        error = Some(match error {
            Some(previous) => format!("{unknown}; {previous}"),
            None => unknown,
        });
    }

    ToolCall {
        id,
        name,
        arguments,
        error,
        signature,
    }
}

fn excerpt(text: &str) -> String {
    if text.chars().count() <= ARGUMENT_EXCERPT {
        text.to_string()
    } else {
        let cut: String = text.chars().take(ARGUMENT_EXCERPT).collect();
        format!("{cut}...")
    }
}

// ---------------------------------------------------------------------------
// Request validation

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

/// Messages grouped into alternating turns, the way Anthropic, Bedrock and
/// Gemini want them: consecutive messages of the same side are merged, and
/// tool results travel on the user side.
#[derive(Debug)]
pub enum Side {
    User,
    Assistant,
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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

    #[test]
    fn finish_keeps_bad_tool_calls_with_a_readable_error() {
        let request = sample_request();
        let turn = Turn {
            text: String::new(),
            tool_calls: vec![
                RawToolCall {
                    id: Some("a".into()),
                    name: "execute_lua".into(),
                    arguments: RawArguments::Text("{\"code\": \"return 1\"}".into()),
                    signature: None,
                },
                RawToolCall {
                    id: Some("b".into()),
                    name: "execute_lua".into(),
                    arguments: RawArguments::Text("{\"code\": ".into()),
                    signature: None,
                },
                RawToolCall {
                    id: None,
                    name: "drop_table".into(),
                    arguments: RawArguments::Json(json!({})),
                    signature: None,
                },
                RawToolCall {
                    id: Some("a".into()),
                    name: "take_snapshot".into(),
                    arguments: RawArguments::Json(json!([1, 2])),
                    signature: None,
                },
            ],
            stop_reason: StopReason::EndTurn,
            usage: Usage::default(),
            model: None,
        };
        let response = turn.finish(&request, ProviderKind::OpenAi, "gpt-test");
        assert_eq!(response.stop_reason, StopReason::ToolUse);
        assert_eq!(response.model, "gpt-test");
        let calls = &response.tool_calls;
        assert_eq!(calls[0].arguments, Some(json!({"code": "return 1"})));
        assert_eq!(calls[0].error, None);

        assert_eq!(calls[1].arguments, None);
        let error = calls[1].error.as_deref().unwrap();
        assert!(
            error.starts_with("arguments are not valid JSON ("),
            "{error}"
        );
        assert!(error.ends_with("): {\"code\": "), "{error}");

        assert_eq!(calls[2].id, "call_2");
        assert_eq!(calls[2].arguments, Some(json!({})));
        assert_eq!(
            calls[2].error.as_deref(),
            Some("unknown tool \"drop_table\"; available tools: take_snapshot, execute_lua")
        );

        // A duplicate id is made unique so results can be matched.
        assert_eq!(calls[3].id, "a_3");
        assert_eq!(
            calls[3].error.as_deref(),
            Some("arguments must be a JSON object, got [1,2]")
        );
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
