//! One provider's configuration, validated in Elixir (`Beamlens.LLM.Config`)
//! and handed over once, when the configuration is built. Secrets live only
//! here, in Rust memory: the Elixir side holds an opaque resource.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::error::LlmError;
use super::types::ProviderKind;

/// A secret string. Its `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AwsCredentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    pub region: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub model: String,
    /// Without a trailing slash.
    pub base_url: String,
    pub api_key: Option<Secret>,
    /// Azure OpenAI: the deployment name and the `api-version` parameter.
    pub deployment: Option<String>,
    pub api_version: Option<String>,
    pub aws: Option<AwsCredentials>,
    /// Extra headers sent with every request (OpenRouter's `HTTP-Referer`,
    /// OpenAI's `OpenAI-Organization`, a proxy's token...). Treated as
    /// secrets.
    pub headers: Vec<(String, Secret)>,
    /// Limit for one HTTP attempt, from connecting to the last body byte.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: u32,
    /// First backoff; doubles per retry up to `max_backoff`, with jitter.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this is not waited for: the request fails
    /// (and the next provider in the chain is tried).
    pub max_retry_after: Duration,
    pub max_body_bytes: usize,
    /// Consecutive failed requests that open the circuit.
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
}

impl ProviderConfig {
    /// A configuration with BeamLens's defaults, for tests and as the base
    /// of [`ProviderConfig::from_json`].
    pub fn new(kind: ProviderKind, model: impl Into<String>) -> Self {
        ProviderConfig {
            kind,
            model: model.into(),
            base_url: default_base_url(kind, None).unwrap_or_default(),
            api_key: None,
            deployment: None,
            api_version: None,
            aws: None,
            headers: Vec::new(),
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_retries: 2,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(30),
            max_body_bytes: 8 * 1024 * 1024,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }

    /// The secrets of this configuration, for redaction.
    pub fn secrets(&self) -> Vec<&str> {
        let mut secrets: Vec<&str> = Vec::new();
        if let Some(key) = &self.api_key {
            secrets.push(key.expose());
        }
        if let Some(aws) = &self.aws {
            secrets.push(aws.secret_access_key.expose());
            secrets.push(aws.access_key_id.expose());
            if let Some(token) = &aws.session_token {
                secrets.push(token.expose());
            }
        }
        for (_, value) in &self.headers {
            secrets.push(value.expose());
        }
        secrets
    }

    /// Builds a configuration from the map `Beamlens.LLM.Config` validated.
    /// Elixir already checked types and names; this re-checks what Rust
    /// relies on and reports a `:config` error otherwise.
    pub fn from_json(value: &Value) -> Result<ProviderConfig, LlmError> {
        let object = value
            .as_object()
            .ok_or_else(|| LlmError::config("provider configuration must be a map"))?;
        let string = |key: &str| -> Option<String> {
            object
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let millis = |key: &str, default: Duration| -> Result<Duration, LlmError> {
            match object.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_u64().map(Duration::from_millis).ok_or_else(|| {
                    LlmError::config(format!("{key} must be a non-negative integer"))
                }),
            }
        };
        let integer = |key: &str, default: u64| -> Result<u64, LlmError> {
            match object.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_u64().ok_or_else(|| {
                    LlmError::config(format!("{key} must be a non-negative integer"))
                }),
            }
        };

        let kind = string("provider")
            .and_then(|name| ProviderKind::parse(&name))
            .ok_or_else(|| LlmError::config("provider is missing or unknown"))?;
        let model = string("model").unwrap_or_default();
        let mut config = ProviderConfig::new(kind, model);

        let region = string("region");
        config.base_url = match string("base_url") {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => default_base_url(kind, region.as_deref()).ok_or_else(|| {
                LlmError::config(format!("base_url is required for provider {kind}"))
            })?,
        };
        if !(config.base_url.starts_with("http://") || config.base_url.starts_with("https://")) {
            return Err(
                LlmError::config("base_url must start with http:// or https://").provider(kind),
            );
        }
        config.api_key = string("api_key").map(Secret::new);
        config.deployment = string("deployment");
        config.api_version = string("api_version");
        if let Some(Value::Array(headers)) = object.get("headers") {
            for header in headers {
                match header.as_array().map(Vec::as_slice) {
                    Some([Value::String(name), Value::String(value)]) => {
                        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                            return Err(LlmError::config(format!(
                                "headers: {name:?} is not a valid header name"
                            )));
                        }
                        if reqwest::header::HeaderValue::from_str(value).is_err() {
                            return Err(LlmError::config(format!(
                                "headers: the value of {name:?} is not a valid header value"
                            )));
                        }
                        config
                            .headers
                            .push((name.to_ascii_lowercase(), Secret::new(value.clone())))
                    }
                    _ => {
                        return Err(LlmError::config(
                            "headers must be a list of {name, value} strings",
                        ))
                    }
                }
            }
        }
        if kind == ProviderKind::Bedrock {
            let access_key_id = string("access_key_id")
                .ok_or_else(|| LlmError::config("access_key_id is required for bedrock"))?;
            let secret_access_key = string("secret_access_key")
                .ok_or_else(|| LlmError::config("secret_access_key is required for bedrock"))?;
            config.aws = Some(AwsCredentials {
                access_key_id: Secret::new(access_key_id),
                secret_access_key: Secret::new(secret_access_key),
                session_token: string("session_token").map(Secret::new),
                region: region.ok_or_else(|| LlmError::config("region is required for bedrock"))?,
            });
        }
        if config.model.is_empty() && kind != ProviderKind::AzureOpenAi {
            return Err(LlmError::config("model is required").provider(kind));
        }
        if kind == ProviderKind::AzureOpenAi {
            if config.deployment.is_none() {
                config.deployment = Some(config.model.clone()).filter(|m| !m.is_empty());
            }
            if config.deployment.is_none() {
                return Err(LlmError::config(
                    "deployment (or model) is required for azure_openai",
                ));
            }
            if config.api_version.is_none() {
                config.api_version = Some(super::openai::AZURE_API_VERSION.to_string());
            }
        }

        config.timeout = millis("timeout", config.timeout)?;
        config.connect_timeout = millis("connect_timeout", config.connect_timeout)?;
        config.max_retries = integer("max_retries", config.max_retries.into())?.min(10) as u32;
        config.base_backoff = millis("base_backoff", config.base_backoff)?;
        config.max_backoff = millis("max_backoff", config.max_backoff)?;
        config.max_retry_after = millis("max_retry_after", config.max_retry_after)?;
        config.max_body_bytes = integer("max_body_bytes", config.max_body_bytes as u64)? as usize;
        config.breaker_threshold = integer("breaker_threshold", config.breaker_threshold.into())?
            .min(u32::MAX.into()) as u32;
        config.breaker_cooldown = millis("breaker_cooldown", config.breaker_cooldown)?;
        if config.timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(
                LlmError::config("timeout and connect_timeout must be positive").provider(kind),
            );
        }
        Ok(config)
    }
}

/// Where each provider lives unless `base_url` says otherwise.
pub fn default_base_url(kind: ProviderKind, region: Option<&str>) -> Option<String> {
    match kind {
        ProviderKind::Anthropic => Some("https://api.anthropic.com".into()),
        ProviderKind::OpenAi => Some("https://api.openai.com/v1".into()),
        ProviderKind::Ollama => Some("http://127.0.0.1:11434".into()),
        ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta".into()),
        ProviderKind::Bedrock => {
            region.map(|r| format!("https://bedrock-runtime.{r}.amazonaws.com"))
        }
        ProviderKind::AzureOpenAi | ProviderKind::OpenAiCompatible => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = ProviderConfig::from_json(&json!({
            "provider": "anthropic", "model": "claude", "api_key": "sk-ant-very-secret",
            "headers": [["X-Proxy-Token", "proxy-secret"]]
        }))
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("sk-ant-very-secret"), "{debug}");
        assert!(!debug.contains("proxy-secret"), "{debug}");
        assert_eq!(config.secrets(), vec!["sk-ant-very-secret", "proxy-secret"]);
        assert_eq!(config.headers[0].0, "x-proxy-token");
    }

    #[test]
    fn defaults_and_required_fields() {
        let config =
            ProviderConfig::from_json(&json!({"provider": "ollama", "model": "llama3.1"})).unwrap();
        assert_eq!(config.base_url, "http://127.0.0.1:11434");
        assert_eq!(config.max_retries, 2);

        let bedrock = ProviderConfig::from_json(&json!({
            "provider": "bedrock", "model": "m", "region": "eu-west-1",
            "access_key_id": "AKID", "secret_access_key": "SECRET"
        }))
        .unwrap();
        assert_eq!(
            bedrock.base_url,
            "https://bedrock-runtime.eu-west-1.amazonaws.com"
        );

        let azure = ProviderConfig::from_json(&json!({
            "provider": "azure_openai", "model": "gpt-4o", "base_url": "https://x.openai.azure.com/"
        }))
        .unwrap();
        assert_eq!(azure.deployment.as_deref(), Some("gpt-4o"));
        assert_eq!(azure.base_url, "https://x.openai.azure.com");

        let missing =
            ProviderConfig::from_json(&json!({"provider": "openai_compatible", "model": "m"}));
        assert_eq!(
            missing.unwrap_err().message,
            "base_url is required for provider openai_compatible"
        );
    }
}
