//! Small helpers shared by the provider modules.

use serde_json::Value;

use super::config::ProviderConfig;
use super::error::{clip, redact, LlmError};
use super::http::{HttpRequest, Sensitive};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
