//! The provider-neutral chat model: what BeamLens asks a model and what it
//! gets back, whatever the wire format.
//!
//! Requests arrive from Elixir as JSON (see `crate::convert`: atoms are
//! strings, tuples are arrays) and are validated by [`ChatRequest::from_json`]
//! (in [`request`](super::request)) with messages that name the offending
//! field. Responses are built by each provider's parser as a [`Turn`] (the
//! model's text and raw tool calls) and finished by [`Turn::finish`] (in
//! [`turn`](super::turn)), which checks every tool call against the
//! request's tools. A bad tool call never fails the whole response: it is
//! kept with `arguments: None` and a readable `error`, so the caller can tell
//! the model what to fix.

use serde_json::{json, Value};

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
