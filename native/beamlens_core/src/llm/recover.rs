//! Recovery of tool calls that small local models write as text.
//!
//! Small open models behind llama.cpp, Ollama or vLLM often answer a tool
//! request with the call in the *text*: Qwen's `<tool_call>{...}</tool_call>`
//! tags when the server's own parser gave up on them, a fenced ```` ```json ````
//! block, or bare JSON before or after some prose. Their JSON is often almost
//! right (a raw newline inside a Lua string, a trailing comma), and some
//! write the code in a fenced block and then call the tool with empty
//! arguments.
//!
//! [`recover`] runs between a provider's parser and
//! [`Turn::finish`](super::types::Turn::finish), for `:openai_compatible` and
//! `:ollama` only. It never decides anything for the model: what it recovers
//! is checked by `finish` like any other call, so an unknown tool or bad
//! arguments still come back as a tool-call `error` the caller feeds back as
//! a correction. Untagged JSON only counts as a call when it names one of the
//! offered tools, so data the model quotes in its prose stays prose.
//!
//! Work is bounded: at most [`MAX_SCAN`] bytes of text are scanned, at most
//! [`MAX_CALLS`] calls recovered, and unbalanced braces stop the scan after
//! [`MAX_FAILED_STARTS`] tries.

use serde_json::{Map, Value};

use super::types::{ChatRequest, RawArguments, RawToolCall, Tool, ToolChoice, Turn};

/// Longest prefix of the text searched for tool calls.
pub const MAX_SCAN: usize = 64 * 1024;
/// Most tool calls recovered from one reply.
pub const MAX_CALLS: usize = 8;
/// Unbalanced `{`/`[` tolerated before the scan gives up.
pub const MAX_FAILED_STARTS: usize = 64;

const OPEN_TAG: &str = "<tool_call>";
const CLOSE_TAG: &str = "</tool_call>";
const FENCE: &str = "```";

/// Repairs the arguments of the reply's tool calls and, when it has none,
/// recovers the calls written in its text (removing them from the text).
pub fn recover(turn: &mut Turn, request: &ChatRequest) {
    if request.tools.is_empty() || request.tool_choice == ToolChoice::None {
        return;
    }
    for call in &mut turn.tool_calls {
        repair_arguments(&mut call.arguments);
    }
    if turn.tool_calls.is_empty() {
        let (calls, rest) = extract(&turn.text, &request.tools);
        if !calls.is_empty() {
            turn.tool_calls = calls;
            turn.text = rest;
        }
    }
    fill_from_code_blocks(turn, &request.tools);
}

/// Arguments sent as a string that is almost JSON become JSON.
fn repair_arguments(arguments: &mut RawArguments) {
    if let RawArguments::Text(text) = arguments {
        if serde_json::from_str::<Value>(text).is_err() {
            if let Ok(value @ Value::Object(_)) = lenient_parse(text) {
                *arguments = RawArguments::Json(value);
            }
        }
    }
}

/// The tool calls written in `text`, in order, and the text without them.
fn extract(text: &str, tools: &[Tool]) -> (Vec<RawToolCall>, String) {
    let scan = &text[..floor_boundary(text, MAX_SCAN)];
    let mut calls = Vec::new();
    let mut consumed: Vec<(usize, usize)> = Vec::new();
    let mut failed_starts = 0;
    let mut next_tag = find_from(scan, OPEN_TAG, 0);
    let mut next_fence = find_from(scan, FENCE, 0);
    let mut i = 0;

    while i < scan.len() && calls.len() < MAX_CALLS {
        if next_tag.is_some_and(|at| at < i) {
            next_tag = find_from(scan, OPEN_TAG, i);
        }
        if next_fence.is_some_and(|at| at < i) {
            next_fence = find_from(scan, FENCE, i);
        }
        let next_json = scan[i..].find(['{', '[']).map(|at| at + i);
        let Some(start) = [next_tag, next_fence, next_json]
            .into_iter()
            .flatten()
            .min()
        else {
            break;
        };

        if Some(start) == next_tag {
            let body_start = start + OPEN_TAG.len();
            let (body_end, end) = match find_from(scan, CLOSE_TAG, body_start) {
                Some(close) => (close, close + CLOSE_TAG.len()),
                // No closing tag (cut off, or several calls in a row).
                None => {
                    let stop = find_from(scan, OPEN_TAG, body_start).unwrap_or(scan.len());
                    (stop, stop)
                }
            };
            let found = calls_from_text(&scan[body_start..body_end], true, tools);
            if !found.is_empty() {
                calls.extend(found);
                consumed.push((start, end));
            }
            i = end;
        } else if Some(start) == next_fence {
            let content_start = find_from(scan, "\n", start).map_or(scan.len(), |nl| nl + 1);
            let (content_end, end) = match find_from(scan, FENCE, content_start) {
                Some(close) => (close, close + FENCE.len()),
                None => (scan.len(), scan.len()),
            };
            let found = calls_from_text(&scan[content_start..content_end], false, tools);
            if !found.is_empty() {
                calls.extend(found);
                consumed.push((start, end));
            }
            // A fenced block that is not a call (Lua, Elixir) is skipped
            // whole, so the braces of its tables are not mistaken for JSON.
            i = end;
        } else {
            match balanced_end(scan, start) {
                Some(end) => {
                    let found = calls_from_text(&scan[start..end], false, tools);
                    if !found.is_empty() {
                        calls.extend(found);
                        consumed.push((start, end));
                    }
                    i = end;
                }
                None => {
                    failed_starts += 1;
                    if failed_starts > MAX_FAILED_STARTS {
                        break;
                    }
                    i = start + 1;
                }
            }
        }
    }
    calls.truncate(MAX_CALLS);

    let mut rest = String::with_capacity(text.len());
    let mut from = 0;
    for (start, end) in consumed {
        rest.push_str(&text[from..start]);
        from = end;
    }
    rest.push_str(&text[from..]);
    (calls, rest.trim().to_string())
}

/// Calls in one candidate piece of text. `tagged` pieces were marked as tool
/// calls by the model itself: any name counts (an unknown one becomes a
/// correction), and unparsable JSON with a recognisable name becomes a call
/// whose arguments `finish` reports as invalid.
fn calls_from_text(piece: &str, tagged: bool, tools: &[Tool]) -> Vec<RawToolCall> {
    let piece = piece.trim();
    if piece.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    match lenient_parse(piece) {
        Ok(value) => calls_from_value(value, tagged, tools, &mut out),
        Err(_) => {
            if let Some(name) = sniff_name(piece) {
                if tagged || is_tool(tools, &name) {
                    out.push(RawToolCall {
                        id: None,
                        name,
                        arguments: RawArguments::Text(piece.to_string()),
                        signature: None,
                    });
                }
            }
        }
    }
    out
}

/// The shapes models use for a call: `{"name", "arguments"}` (Qwen,
/// Hermes), `{"name", "parameters"}` (Llama), OpenAI's
/// `{"type": "function", "function": {...}}`, `{"tool_calls": [...]}`,
/// `{"execute_lua": {...}}`, flat `{"name": "done", ...args}`, and lists of
/// any of these.
fn calls_from_value(value: Value, tagged: bool, tools: &[Tool], out: &mut Vec<RawToolCall>) {
    if out.len() >= MAX_CALLS {
        return;
    }
    let mut map = match value {
        Value::Array(items) => {
            for item in items {
                calls_from_value(item, tagged, tools, out);
            }
            return;
        }
        Value::Object(map) => map,
        _ => return,
    };

    if let Some(Value::Array(_)) = map.get("tool_calls") {
        if let Some(list) = map.remove("tool_calls") {
            calls_from_value(list, tagged, tools, out);
        }
        return;
    }

    let id = map.get("id").and_then(Value::as_str).map(str::to_string);
    if let Some(Value::Object(function)) = map.remove("function") {
        let mut inner = function;
        if let Some(id) = id {
            inner.entry("id").or_insert(Value::String(id));
        }
        calls_from_value(Value::Object(inner), tagged, tools, out);
        return;
    }

    let name_key = ["name", "tool", "tool_name", "function"]
        .into_iter()
        .find(|key| map.get(*key).is_some_and(Value::is_string));
    let (name, arguments) = match name_key {
        Some(key) => {
            let name = match map.remove(key) {
                Some(Value::String(name)) => name,
                _ => return,
            };
            let args_key = ["arguments", "parameters", "args", "input"]
                .into_iter()
                .find(|key| map.contains_key(*key));
            let arguments = match args_key {
                Some(key) => map.remove(key).unwrap_or(Value::Null),
                // Flat: everything but the call's own fields is an argument.
                None => {
                    for key in ["id", "type"] {
                        map.remove(key);
                    }
                    Value::Object(map)
                }
            };
            (name, arguments)
        }
        // `{"execute_lua": {"code": "..."}}`
        None if map.len() == 1 => {
            let Some((name, arguments)) = map.into_iter().next() else {
                return;
            };
            if !is_tool(tools, &name) || !(arguments.is_object() || arguments.is_null()) {
                return;
            }
            (name, arguments)
        }
        None => return,
    };

    if name.is_empty() || !(tagged || is_tool(tools, &name)) {
        return;
    }
    let arguments = match arguments {
        Value::String(text) => match lenient_parse(&text) {
            Ok(value @ Value::Object(_)) => RawArguments::Json(value),
            _ => RawArguments::Text(text),
        },
        other => RawArguments::Json(other),
    };
    out.push(RawToolCall {
        id,
        name,
        arguments,
        signature: None,
    });
}

/// Calls with empty arguments to a tool that takes one string (like
/// `execute_lua`'s `code`) get it from the fenced code blocks of the text,
/// in order: models often write the script first and call the tool empty.
fn fill_from_code_blocks(turn: &mut Turn, tools: &[Tool]) {
    let mut blocks = None;
    for call in &mut turn.tool_calls {
        if !empty_arguments(&call.arguments) {
            continue;
        }
        let Some(key) = tools
            .iter()
            .find(|tool| tool.name == call.name)
            .and_then(single_string_parameter)
        else {
            continue;
        };
        let blocks = blocks.get_or_insert_with(|| code_blocks(&turn.text).into_iter());
        let Some(code) = blocks.next() else {
            return;
        };
        let mut arguments = Map::new();
        arguments.insert(key, Value::String(code));
        call.arguments = RawArguments::Json(Value::Object(arguments));
    }
}

fn empty_arguments(arguments: &RawArguments) -> bool {
    match arguments {
        RawArguments::Json(Value::Null) => true,
        RawArguments::Json(Value::Object(map)) => map.is_empty(),
        RawArguments::Text(text) => {
            let text = text.trim();
            text.is_empty() || text == "{}" || text == "null"
        }
        RawArguments::Json(_) => false,
    }
}

/// The name of a tool's only required parameter, when it is a string.
fn single_string_parameter(tool: &Tool) -> Option<String> {
    let required = tool.parameters.get("required")?.as_array()?;
    let [Value::String(key)] = required.as_slice() else {
        return None;
    };
    let kind = tool
        .parameters
        .pointer(&format!("/properties/{key}/type"))?;
    (kind == "string").then(|| key.clone())
}

/// The non-empty contents of the fenced blocks of `text` that are not JSON.
fn code_blocks(text: &str) -> Vec<String> {
    let scan = &text[..floor_boundary(text, MAX_SCAN)];
    let mut blocks = Vec::new();
    let mut i = 0;
    while let Some(start) = find_from(scan, FENCE, i) {
        let content_start = find_from(scan, "\n", start).map_or(scan.len(), |nl| nl + 1);
        let (content_end, end) = match find_from(scan, FENCE, content_start) {
            Some(close) => (close, close + FENCE.len()),
            None => (scan.len(), scan.len()),
        };
        let content = scan[content_start..content_end].trim();
        if !content.is_empty() && serde_json::from_str::<Value>(content).is_err() {
            blocks.push(content.to_string());
        }
        i = end;
    }
    blocks
}

fn is_tool(tools: &[Tool], name: &str) -> bool {
    tools.iter().any(|tool| tool.name == name)
}

/// `"name": "x"` in text that is not valid JSON.
fn sniff_name(text: &str) -> Option<String> {
    let at = text.find("\"name\"")? + "\"name\"".len();
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let name = &rest[..rest.find('"')?];
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    valid.then(|| name.to_string())
}

/// JSON as models write it: strict first, then with raw control characters
/// and stray backslashes inside strings escaped and trailing commas removed.
pub fn lenient_parse(text: &str) -> Result<Value, serde_json::Error> {
    let text = text.trim();
    serde_json::from_str(text).or_else(|error| {
        let repaired = repair(text);
        if repaired == text {
            Err(error)
        } else {
            serde_json::from_str(&repaired).map_err(|_| error)
        }
    })
}

fn repair(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            match c {
                '"' => {
                    in_string = false;
                    out.push(c);
                }
                '\\' => match chars.peek() {
                    Some('"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' | 'u') => {
                        out.push(c);
                        out.extend(chars.next());
                    }
                    // `\d` in a Lua pattern: keep the backslash as a character.
                    _ => out.push_str("\\\\"),
                },
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        } else {
            match c {
                '"' => {
                    in_string = true;
                    out.push(c);
                }
                ',' => {
                    let mut lookahead = chars.clone();
                    while lookahead.next_if(|c| c.is_whitespace()).is_some() {}
                    if !matches!(lookahead.peek(), Some('}' | ']')) {
                        out.push(c);
                    }
                }
                c => out.push(c),
            }
        }
    }
    out
}

/// The end (exclusive) of the JSON value starting with the `{` or `[` at
/// `start`, skipping brackets inside strings.
fn balanced_end(text: &str, start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, byte) in text.as_bytes()[start..].iter().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(start + offset + 1);
                }
            }
            _ => {}
        }
    }
    None
}

fn find_from(text: &str, needle: &str, from: usize) -> Option<usize> {
    text.get(from..)?.find(needle).map(|at| at + from)
}

fn floor_boundary(text: &str, max: usize) -> usize {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::types::{ProviderKind, StopReason, ToolCall, Usage};
    use crate::llm::{ollama, openai};
    use serde_json::json;

    /// The watcher's tools, as the watcher sends them.
    fn request() -> ChatRequest {
        ChatRequest::from_json(&json!({
            "messages": [{"role": "user", "content": "Check ets-12: ETS memory at 44 MiB."}],
            "tools": [
                {"name": "execute_lua", "description": "Run read-only Lua.",
                 "parameters": {"type": "object", "properties": {"code": {"type": "string"}},
                                "required": ["code"]}},
                {"name": "fire_alert", "description": "Report a problem.",
                 "parameters": {"type": "object", "properties": {
                     "severity": {"type": "string"}, "summary": {"type": "string"},
                     "observation": {"type": "string"}},
                     "required": ["severity", "summary", "observation"]}},
                {"name": "done", "description": "Finish.",
                 "parameters": {"type": "object", "properties": {}}},
                {"name": "take_snapshot", "description": "Snapshot.",
                 "parameters": {"type": "object", "properties": {}}}
            ],
            "max_tokens": 256,
            "tool_choice": "required"
        }))
        .unwrap()
    }

    /// A llama.cpp reply whose message holds only `content` (its tool-call
    /// parser gave up), run through the same path as a real reply.
    fn from_llama_cpp(content: &str) -> (String, Vec<ToolCall>) {
        let body = json!({
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "model": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "usage": {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940}
        });
        finish(openai::parse(body.to_string().as_bytes()).unwrap())
    }

    fn finish(mut turn: Turn) -> (String, Vec<ToolCall>) {
        let request = request();
        recover(&mut turn, &request);
        let response = turn.finish(&request, ProviderKind::OpenAiCompatible, "qwen");
        (response.content, response.tool_calls)
    }

    fn turn(text: &str, tool_calls: Vec<RawToolCall>) -> Turn {
        Turn {
            text: text.into(),
            tool_calls,
            stop_reason: StopReason::EndTurn,
            usage: Usage::default(),
            model: None,
        }
    }

    fn names(calls: &[ToolCall]) -> Vec<&str> {
        calls.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn qwen_tool_call_tags_in_the_text() {
        let (text, calls) = from_llama_cpp(
            "<tool_call>\n{\"name\": \"execute_lua\", \"arguments\": {\"code\": \"return ets.tables(5, \\\"memory\\\")\"}}\n</tool_call>",
        );
        assert_eq!(text, "");
        assert_eq!(names(&calls), ["execute_lua"]);
        assert_eq!(
            calls[0].arguments,
            Some(json!({"code": "return ets.tables(5, \"memory\")"}))
        );
        assert_eq!(calls[0].error, None);
        assert_eq!(calls[0].id, "call_0");
    }

    #[test]
    fn several_tagged_calls_with_prose_around_them() {
        let (text, calls) = from_llama_cpp(
            "The sessions table is growing.\n<tool_call>\n{\"name\": \"fire_alert\", \"arguments\": {\"severity\": \"critical\", \"summary\": \"sessions grows\", \"observation\": \"300000 rows\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"done\", \"arguments\": {}}\n</tool_call>\nThat is all.",
        );
        assert_eq!(names(&calls), ["fire_alert", "done"]);
        assert_eq!(calls[0].arguments.as_ref().unwrap()["severity"], "critical");
        assert_eq!(
            (calls[0].id.as_str(), calls[1].id.as_str()),
            ("call_0", "call_1")
        );
        assert_eq!(text, "The sessions table is growing.\n\n\nThat is all.");
    }

    #[test]
    fn an_unclosed_tag_runs_to_the_end_of_the_text() {
        let (text, calls) = from_llama_cpp("<tool_call>\n{\"name\": \"done\", \"arguments\": {}}");
        assert_eq!((text.as_str(), names(&calls)), ("", vec!["done"]));
    }

    #[test]
    fn a_fenced_json_block_between_prose() {
        let (text, calls) = from_llama_cpp(
            "To investigate the ETS growth I will run a script.\n\n```json\n{\n  \"name\": \"execute_lua\",\n  \"arguments\": {\n    \"code\": \"return ets.tables(5, 'memory')\"\n  }\n}\n```\n\nThis lists the largest tables.",
        );
        assert_eq!(names(&calls), ["execute_lua"]);
        assert_eq!(
            calls[0].arguments,
            Some(json!({"code": "return ets.tables(5, 'memory')"}))
        );
        assert_eq!(
            text,
            "To investigate the ETS growth I will run a script.\n\n\n\nThis lists the largest tables."
        );
    }

    #[test]
    fn bare_json_with_trailing_prose() {
        let (text, calls) = from_llama_cpp(
            "{\"name\": \"fire_alert\", \"arguments\": {\"severity\": \"warning\", \"summary\": \"ETS grows\", \"observation\": \"44 MiB\"}} I fired an alert because ETS memory is high.",
        );
        assert_eq!(names(&calls), ["fire_alert"]);
        assert_eq!(text, "I fired an alert because ETS memory is high.");
    }

    #[test]
    fn other_shapes_models_use() {
        // Llama 3 writes "parameters"; OpenAI-trained models echo the wire shape.
        let (_, calls) =
            from_llama_cpp("{\"name\": \"execute_lua\", \"parameters\": {\"code\": \"return 1\"}}");
        assert_eq!(calls[0].arguments, Some(json!({"code": "return 1"})));

        let (_, calls) = from_llama_cpp(
            "[{\"id\": \"call_9\", \"type\": \"function\", \"function\": {\"name\": \"execute_lua\", \"arguments\": \"{\\\"code\\\": \\\"return 2\\\"}\"}}, {\"name\": \"done\"}]",
        );
        assert_eq!(names(&calls), ["execute_lua", "done"]);
        assert_eq!(calls[0].id, "call_9");
        assert_eq!(calls[0].arguments, Some(json!({"code": "return 2"})));
        assert_eq!(calls[1].arguments, Some(json!({})));

        let (_, calls) =
            from_llama_cpp("{\"tool_calls\": [{\"name\": \"done\", \"arguments\": {}}]}");
        assert_eq!(names(&calls), ["done"]);

        let (_, calls) = from_llama_cpp("```\n{\"execute_lua\": {\"code\": \"return 3\"}}\n```");
        assert_eq!(calls[0].arguments, Some(json!({"code": "return 3"})));

        let (_, calls) = from_llama_cpp("{\"name\": \"execute_lua\", \"code\": \"return 4\"}");
        assert_eq!(calls[0].arguments, Some(json!({"code": "return 4"})));
    }

    #[test]
    fn almost_json_is_repaired() {
        // A multi-line Lua script with raw newlines, a Lua pattern with a
        // backslash, and a trailing comma.
        let (_, calls) = from_llama_cpp(
            "<tool_call>\n{\"name\": \"execute_lua\", \"arguments\": {\"code\": \"local t = ets.tables(3, \\\"memory\\\")\nreturn t[1].name:match(\\\"\\d+\\\")\",}}\n</tool_call>",
        );
        assert_eq!(calls[0].error, None, "{:?}", calls[0]);
        assert_eq!(
            calls[0].arguments,
            Some(
                json!({"code": "local t = ets.tables(3, \"memory\")\nreturn t[1].name:match(\"\\d+\")"})
            )
        );
    }

    #[test]
    fn invalid_json_in_tags_becomes_a_correction() {
        let (_, calls) = from_llama_cpp(
            "<tool_call>\n{\"name\": \"execute_lua\", \"arguments\": {\"code\": \"return ets.tables(5, \"memory\")\"}}\n</tool_call>",
        );
        assert_eq!(names(&calls), ["execute_lua"]);
        assert_eq!(calls[0].arguments, None);
        let error = calls[0].error.as_deref().unwrap();
        assert!(error.starts_with("arguments are not valid JSON"), "{error}");
    }

    #[test]
    fn an_unknown_tool_in_tags_is_kept_for_a_correction() {
        let (_, calls) = from_llama_cpp(
            "<tool_call>\n{\"name\": \"restart_vm\", \"arguments\": {}}\n</tool_call>",
        );
        assert_eq!(names(&calls), ["restart_vm"]);
        assert!(calls[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("unknown tool \"restart_vm\"; available tools: execute_lua"));
    }

    #[test]
    fn data_and_code_in_prose_are_not_calls() {
        let prose = "The largest table is {\"name\": \"sessions\", \"size\": 300000}; \
                     a tool named {\"name\": \"restart_vm\"} does not exist.\n\
                     ```lua\nlocal t = {}\nfor i, x in ipairs(ets.tables(3, \"memory\")) do t[i] = {name = x.name} end\nreturn t\n```\n\
                     Values were [1, 2, 3] and {broken.";
        let (text, calls) = from_llama_cpp(prose);
        assert!(calls.is_empty());
        assert_eq!(text, prose);
    }

    #[test]
    fn empty_arguments_are_filled_from_a_code_block() {
        // What the issue saw: prose, the code in a block, then an empty call.
        let native = RawToolCall {
            id: Some("abc".into()),
            name: "execute_lua".into(),
            arguments: RawArguments::Text("{}".into()),
            signature: None,
        };
        let (text, calls) = finish(turn(
            "I will list the largest tables:\n```lua\nreturn ets.tables(5, \"memory\")\n```",
            vec![native],
        ));
        assert_eq!(
            calls[0].arguments,
            Some(json!({"code": "return ets.tables(5, \"memory\")"}))
        );
        assert!(text.starts_with("I will list"));

        // Without a block the empty call stays empty, for the watcher to correct.
        let native = RawToolCall {
            id: None,
            name: "execute_lua".into(),
            arguments: RawArguments::Text(String::new()),
            signature: None,
        };
        let (_, calls) = finish(turn("Let me check.", vec![native]));
        assert_eq!(calls[0].arguments, Some(json!({})));
    }

    #[test]
    fn native_arguments_that_are_almost_json_are_repaired() {
        let body = json!({
            "choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "execute_lua",
                    "arguments": "{\"code\": \"local n = 0\nreturn n\"}"}}]}}]
        });
        let (_, calls) = finish(openai::parse(body.to_string().as_bytes()).unwrap());
        assert_eq!(
            calls[0].arguments,
            Some(json!({"code": "local n = 0\nreturn n"}))
        );
    }

    #[test]
    fn ollama_replies_are_recovered_too() {
        let body = json!({
            "model": "qwen2.5-coder:0.5b",
            "message": {"role": "assistant",
                        "content": "```json\n{\"name\": \"done\", \"arguments\": {}}\n```"},
            "done": true, "done_reason": "stop", "prompt_eval_count": 10, "eval_count": 5
        });
        let (text, calls) = finish(ollama::parse(body.to_string().as_bytes()).unwrap());
        assert_eq!((text.as_str(), names(&calls)), ("", vec!["done"]));
    }

    #[test]
    fn nothing_is_recovered_without_tools_or_with_tool_choice_none() {
        let mut request = request();
        request.tool_choice = ToolChoice::None;
        let text = "{\"name\": \"done\", \"arguments\": {}}";
        let mut reply = turn(text, vec![]);
        recover(&mut reply, &request);
        assert!(reply.tool_calls.is_empty());
        assert_eq!(reply.text, text);

        request.tool_choice = ToolChoice::Auto;
        request.tools.clear();
        recover(&mut reply, &request);
        assert!(reply.tool_calls.is_empty());
    }

    #[test]
    fn recovery_is_bounded() {
        let many = "<tool_call>{\"name\": \"done\"}</tool_call>".repeat(50);
        let (_, calls) = from_llama_cpp(&many);
        assert_eq!(calls.len(), MAX_CALLS);

        // Thousands of unbalanced braces, then a real call: the scan stops early.
        let hostile = format!("{}{}", "{".repeat(100_000), "{\"name\": \"done\"}");
        let started = std::time::Instant::now();
        let mut reply = turn(&hostile, vec![]);
        recover(&mut reply, &request());
        assert!(reply.tool_calls.is_empty());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn lenient_parse_keeps_strict_errors_when_repair_does_not_help() {
        assert_eq!(
            lenient_parse(" {\"a\": [1, 2,]} ").unwrap(),
            json!({"a": [1, 2]})
        );
        assert_eq!(
            lenient_parse("{\"a\": \"x,}\"}").unwrap(),
            json!({"a": "x,}"})
        );
        assert!(lenient_parse("{\"a\": ").unwrap_err().is_eof());
    }
}
