//! Errors of the LLM client. Each has a reason from a fixed list (the atom
//! Elixir sees), the provider and HTTP status when there was one, a readable
//! message that never contains a secret, and whether retrying may help.

use std::time::Duration;

use super::types::ProviderKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Timeout,
    Connect,
    RateLimited,
    Overloaded,
    ServerError,
    Conflict,
    Unauthorized,
    NotFound,
    BadRequest,
    MalformedResponse,
    BodyTooLarge,
    CircuitOpen,
    BudgetExceeded,
    InvalidRequest,
    Config,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Connect => "connect",
            Reason::RateLimited => "rate_limited",
            Reason::Overloaded => "overloaded",
            Reason::ServerError => "server_error",
            Reason::Conflict => "conflict",
            Reason::Unauthorized => "unauthorized",
            Reason::NotFound => "not_found",
            Reason::BadRequest => "bad_request",
            Reason::MalformedResponse => "malformed_response",
            Reason::BodyTooLarge => "body_too_large",
            Reason::CircuitOpen => "circuit_open",
            Reason::BudgetExceeded => "budget_exceeded",
            Reason::InvalidRequest => "invalid_request",
            Reason::Config => "config",
        }
    }

    /// Whether the failure says something about the provider's health (and
    /// so counts towards its circuit breaker).
    pub fn is_health_failure(self) -> bool {
        matches!(
            self,
            Reason::Timeout
                | Reason::Connect
                | Reason::RateLimited
                | Reason::Overloaded
                | Reason::ServerError
                | Reason::MalformedResponse
        )
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct LlmError {
    pub reason: Reason,
    pub provider: Option<ProviderKind>,
    pub status: Option<u16>,
    pub message: String,
    pub retryable: bool,
    /// How long the provider asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// HTTP attempts made before giving up.
    pub attempts: u32,
    /// Extra machine-readable numbers (the budget and its use).
    pub details: Vec<(&'static str, u64)>,
}

impl LlmError {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        LlmError {
            reason,
            provider: None,
            status: None,
            message: message.into(),
            retryable: false,
            retry_after: None,
            attempts: 0,
            details: Vec::new(),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        LlmError::new(Reason::InvalidRequest, message)
    }

    pub fn config(message: impl Into<String>) -> Self {
        LlmError::new(Reason::Config, message)
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        LlmError::new(Reason::MalformedResponse, message)
    }

    pub fn provider(mut self, provider: ProviderKind) -> Self {
        self.provider = Some(provider);
        self
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }
}

/// Replaces every occurrence of a secret, and anything shaped like a key
/// that a provider may echo back (`sk-...`, `AIza...`, masked `sk-ab***yz`),
/// with `[REDACTED]`. Applied to every text taken from a provider reply.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        if secret.len() >= 4 {
            out = out.replace(secret, "[REDACTED]");
        }
    }
    out.split_inclusive(char::is_whitespace)
        .map(|word| {
            let token = word.trim_end();
            let trimmed = token.trim_matches(|c: char| "\"'`.,;:()[]{}".contains(c));
            if looks_like_key(trimmed) {
                word.replacen(trimmed, "[REDACTED]", 1)
            } else {
                word.to_string()
            }
        })
        .collect()
}

fn looks_like_key(token: &str) -> bool {
    (token.len() >= 12
        && ["sk-", "sk_", "AIza", "AKIA", "ASIA", "xai-", "gsk_"]
            .iter()
            .any(|prefix| token.starts_with(prefix)))
        || (token.len() >= 8 && token.contains("****"))
}

/// Shortens provider text quoted in an error message.
pub fn clip(text: &str, max_chars: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max_chars).collect();
        format!("{cut}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_removes_secrets_and_echoed_keys() {
        let key = "sk-live-0123456789abcdef";
        let text = format!(
            "Incorrect API key provided: sk-live-********cdef. You passed {key}, and AIzaSyA-1234567890abcdefghijk."
        );
        let redacted = redact(&text, &[key]);
        assert!(!redacted.contains(key));
        assert!(!redacted.contains("********cdef"));
        assert!(!redacted.contains("AIzaSyA"));
        assert_eq!(
            redacted,
            "Incorrect API key provided: [REDACTED]. You passed [REDACTED], and [REDACTED]."
        );
        assert_eq!(redact("plain words stay", &["x"]), "plain words stay");
    }

    #[test]
    fn clip_shortens_long_text() {
        assert_eq!(clip("  short  ", 10), "short");
        assert_eq!(clip("abcdefghij", 4), "abcd...");
    }
}
