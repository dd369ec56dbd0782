//! Finishing a provider's reply: every raw tool call checked against the
//! request's tools, kept with a readable error when it is bad.

use serde_json::{Map, Value};

use super::types::{
    ChatRequest, ChatResponse, ProviderKind, RawArguments, StopReason, ToolCall, Turn,
};

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::llm::fixtures::sample_request;
    use crate::llm::types::{RawToolCall, Usage};

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
}
