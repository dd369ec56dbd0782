//! Amazon Bedrock Converse API (`POST /model/{modelId}/converse`), signed
//! with AWS Signature Version 4 by the `aws-sigv4` crate.
//!
//! Tool calls are `toolUse` content blocks, tool results `toolResult` blocks
//! in a user message, tools go in `toolConfig`. Bedrock reports the error
//! kind in the `x-amzn-ErrorType` header (e.g. `ThrottlingException`).

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use reqwest::header::HeaderMap;
use serde_json::{json, Map, Value};

use super::config::{AwsCredentials, ProviderConfig};
use super::error::{LlmError, Reason};
use super::http::{kind_error, status_error, HttpRequest, Sensitive};
use super::types::{
    group_by_side, ChatRequest, RawArguments, RawToolCall, Role, Side, StopReason, ToolChoice,
    Turn, Usage,
};
use super::wire;

pub const SERVICE: &str = "bedrock";

pub fn build(
    config: &ProviderConfig,
    request: &ChatRequest,
    now: SystemTime,
) -> Result<HttpRequest, LlmError> {
    let mut messages = Vec::new();
    for (side, group) in group_by_side(&request.messages) {
        let mut content = Vec::new();
        for message in group {
            match message.role {
                Role::User | Role::Assistant => {
                    if !message.content.is_empty() {
                        content.push(json!({"text": message.content}));
                    }
                    for call in &message.tool_calls {
                        content.push(json!({"toolUse": {
                            "toolUseId": call.id,
                            "name": call.name,
                            "input": call.arguments.clone().unwrap_or_else(|| json!({})),
                        }}));
                    }
                }
                Role::Tool => content.push(json!({"toolResult": {
                    "toolUseId": message.tool_call_id,
                    "content": [{"text": message.content}],
                    "status": if message.is_error { "error" } else { "success" },
                }})),
            }
        }
        let role = match side {
            Side::User => "user",
            Side::Assistant => "assistant",
        };
        if !content.is_empty() {
            messages.push(json!({"role": role, "content": content}));
        }
    }

    let mut body = Map::new();
    body.insert("messages".into(), Value::Array(messages));
    if let Some(system) = &request.system {
        body.insert("system".into(), json!([{"text": system}]));
    }
    let mut inference = Map::new();
    inference.insert("maxTokens".into(), json!(request.max_tokens));
    // Claude models on Bedrock follow Anthropic's rules (Opus 4.7 and later
    // reject a temperature); other models take it as given.
    let temperature = if config.model.to_ascii_lowercase().contains("claude") {
        super::anthropic::claude_temperature(&config.model, request.temperature)
    } else {
        request.temperature
    };
    if let Some(temperature) = temperature {
        inference.insert("temperature".into(), json!(temperature));
    }
    body.insert("inferenceConfig".into(), Value::Object(inference));
    // Bedrock has no "none" tool choice, and insists on the tool definitions
    // whenever the history holds tool blocks: with :none the tools are left
    // out unless the history needs them.
    let send_tools = !request.tools.is_empty()
        && (request.tool_choice != ToolChoice::None || request.has_tool_history());
    if send_tools {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                json!({"toolSpec": {
                    "name": tool.name,
                    "description": tool.description,
                    "inputSchema": {"json": tool.parameters},
                }})
            })
            .collect();
        let mut tool_config = Map::new();
        tool_config.insert("tools".into(), Value::Array(tools));
        // `auto` is Converse's default, and some models (Llama, Mistral...)
        // reject any toolChoice: it is only sent when it asks for more.
        match &request.tool_choice {
            ToolChoice::Auto | ToolChoice::None => {}
            ToolChoice::Required => {
                tool_config.insert("toolChoice".into(), json!({"any": {}}));
            }
            ToolChoice::Tool(name) => {
                tool_config.insert("toolChoice".into(), json!({"tool": {"name": name}}));
            }
        }
        body.insert("toolConfig".into(), Value::Object(tool_config));
    }

    let url = format!(
        "{}/model/{}/converse",
        config.base_url,
        wire::path_segment(&config.model)
    );
    let http = HttpRequest::post_json(url, &Value::Object(body));
    let aws = config
        .aws
        .as_ref()
        .ok_or_else(|| LlmError::config("bedrock needs AWS credentials"))?;
    let mut http = wire::with_extra_headers(http, config);
    sign_request(&mut http, "POST", aws, SERVICE, now)?;
    Ok(http)
}

/// Signs `http` for `service` with SigV4: adds `x-amz-date`,
/// `x-amz-security-token` (with temporary credentials) and `authorization`.
/// Every header already on the request is signed.
pub fn sign_request(
    http: &mut HttpRequest,
    method: &str,
    aws: &AwsCredentials,
    service: &str,
    now: SystemTime,
) -> Result<(), LlmError> {
    let identity = Credentials::new(
        aws.access_key_id.expose(),
        aws.secret_access_key.expose(),
        aws.session_token.as_ref().map(|t| t.expose().to_string()),
        None,
        "beamlens",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&aws.region)
        .name(service)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| LlmError::config(format!("could not sign the Bedrock request: {e}")))?
        .into();
    let headers: Vec<(&str, &str)> = http
        .headers
        .iter()
        .map(|(name, value, _)| (name.as_str(), value.as_str()))
        .collect();
    let signable = SignableRequest::new(
        method,
        http.url.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(&http.body),
    )
    .map_err(|e| LlmError::config(format!("could not sign the Bedrock request: {e}")))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| LlmError::config(format!("could not sign the Bedrock request: {e}")))?
        .into_parts();
    let (signed_headers, _params) = instructions.into_parts();
    for header in signed_headers {
        let sensitive = if header.sensitive() || header.name() == "authorization" {
            Sensitive::Yes
        } else {
            Sensitive::No
        };
        http.headers.retain(|(n, _, _)| n != header.name());
        http.headers.push((
            header.name().to_string(),
            header.value().to_string(),
            sensitive,
        ));
    }
    Ok(())
}

pub fn parse(body: &[u8]) -> Result<Turn, LlmError> {
    let value = wire::json_body(body)?;
    let content = value
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| LlmError::malformed("the reply has no output.message.content"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in content {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(tool_use) = block.get("toolUse") {
            tool_calls.push(RawToolCall {
                id: wire::string(tool_use, "toolUseId"),
                name: wire::string(tool_use, "name")
                    .ok_or_else(|| LlmError::malformed("a toolUse block has no name"))?,
                arguments: RawArguments::Json(
                    tool_use.get("input").cloned().unwrap_or(Value::Null),
                ),
                signature: None,
            });
        }
        // reasoningContent and other blocks are not for us.
    }
    let stop_reason = match value.get("stopReason").and_then(Value::as_str) {
        Some("end_turn") => StopReason::EndTurn,
        Some("tool_use") => StopReason::ToolUse,
        Some("max_tokens") => StopReason::MaxTokens,
        Some("stop_sequence") => StopReason::StopSequence,
        _ => StopReason::Other,
    };
    let count = |key: &str| {
        value
            .get("usage")
            .and_then(|u| u.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok(Turn {
        text,
        tool_calls,
        stop_reason,
        usage: Usage {
            input_tokens: count("inputTokens"),
            output_tokens: count("outputTokens"),
            cache_read_tokens: count("cacheReadInputTokens"),
            cache_write_tokens: count("cacheWriteInputTokens"),
        },
        model: None,
    })
}

/// `x-amzn-ErrorType: ThrottlingException:http://...` with
/// `{"message": "..."}` (or `"Message"`).
pub fn error(status: u16, headers: &HeaderMap, body: &[u8], secrets: &[&str]) -> LlmError {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let detail = value
        .get("message")
        .or_else(|| value.get("Message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| wire::text_excerpt(body));
    let kind = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .or_else(|| value.get("__type").and_then(Value::as_str))
        .map(|k| {
            k.split([':', '#'])
                .find(|p| p.ends_with("Exception"))
                .unwrap_or(k)
                .to_string()
        });
    let detail = wire::clean(&detail, secrets);
    let (reason, retryable, what) = match kind.as_deref() {
        Some("ThrottlingException" | "TooManyRequestsException") => {
            (Reason::RateLimited, true, "rate limited")
        }
        Some("ServiceUnavailableException") => {
            (Reason::Overloaded, true, "the provider is overloaded")
        }
        // Sent with a 429, but the model is still being loaded: no quota
        // was hit, and waiting helps.
        Some("ModelNotReadyException") => (
            Reason::Overloaded,
            true,
            "the model is not ready to serve requests yet",
        ),
        Some("ModelTimeoutException") => (Reason::Timeout, true, "the model timed out"),
        Some("InternalServerException") => (Reason::ServerError, true, "the provider failed"),
        Some(
            "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "IncompleteSignatureException",
        ) => (
            Reason::Unauthorized,
            false,
            "the provider rejected the credentials",
        ),
        Some("ExpiredTokenException") => {
            (Reason::Unauthorized, false, "the credentials have expired")
        }
        Some("AccessDeniedException") => {
            (Reason::Unauthorized, false, "the provider refused access")
        }
        Some("ResourceNotFoundException") => (
            Reason::NotFound,
            false,
            "not found (check the model name and base_url)",
        ),
        _ => return status_error(status, &detail),
    };
    kind_error(status, reason, retryable, what, &detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::config::Secret;
    use crate::llm::types::tests::sample_request;
    use crate::llm::types::ProviderKind;
    use std::time::{Duration, UNIX_EPOCH};

    /// 2015-08-30T12:36:00Z, the time of AWS's published examples.
    fn example_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn example_credentials(region: &str, token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: Secret::new("AKIDEXAMPLE"),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: token.map(Secret::new),
            region: region.into(),
        }
    }

    fn signed_get(url: &str, headers: &[(&str, &str)], service: &str, region: &str) -> HttpRequest {
        let mut http = HttpRequest {
            url: url.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string(), Sensitive::No))
                .collect(),
            body: Vec::new(),
        };
        let aws = example_credentials(region, None);
        sign_request(&mut http, "GET", &aws, service, example_time()).unwrap();
        http
    }

    /// AWS SigV4 test suite, "get-vanilla" and
    /// "get-vanilla-query-order-key-case".
    #[test]
    fn matches_the_aws_sigv4_test_suite() {
        let http = signed_get(
            "https://example.amazonaws.com/",
            &[],
            "service",
            "us-east-1",
        );
        assert_eq!(http.header_value("x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(
            http.header_value("authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        );

        let http = signed_get(
            "https://example.amazonaws.com/?Param2=value2&Param1=value1",
            &[],
            "service",
            "us-east-1",
        );
        assert!(http.header_value("authorization").unwrap().ends_with(
            "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        ));
    }

    /// The IAM `ListUsers` example of the AWS General Reference ("Create a
    /// signed AWS API request").
    #[test]
    fn matches_the_documented_iam_example() {
        let http = signed_get(
            "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
            &[(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )],
            "iam",
            "us-east-1",
        );
        assert_eq!(
            http.header_value("authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date, \
                 Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
            )
        );
    }

    fn config(token: Option<&str>) -> ProviderConfig {
        let mut config = ProviderConfig::new(
            ProviderKind::Bedrock,
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
        );
        config.aws = Some(example_credentials("us-west-2", token));
        config.base_url = "https://bedrock-runtime.us-west-2.amazonaws.com".into();
        config
    }

    #[test]
    fn builds_a_signed_converse_request() {
        let http = build(
            &config(Some("session-token-example")),
            &sample_request(),
            example_time(),
        )
        .unwrap();
        assert_eq!(
            http.url,
            "https://bedrock-runtime.us-west-2.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
        );
        assert_eq!(http.header_value("x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(
            http.header_value("x-amz-security-token"),
            Some("session-token-example")
        );
        let authorization = http.header_value("authorization").unwrap();
        assert!(
            authorization.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/bedrock/aws4_request, \
                 SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token, Signature="
            ),
            "{authorization}"
        );
        // Signing is deterministic for a fixed clock and body.
        let again = build(
            &config(Some("session-token-example")),
            &sample_request(),
            example_time(),
        )
        .unwrap();
        assert_eq!(again.header_value("authorization"), Some(authorization));
        assert!(!format!("{:?}", config(None)).contains("wJalrXUtnFEMI"));

        assert_eq!(
            http.json(),
            json!({
                "messages": [
                    {"role": "user", "content": [{"text": "Memory is growing."}]},
                    {"role": "assistant", "content": [
                        {"text": "Let me look."},
                        {"toolUse": {"toolUseId": "call_1", "name": "take_snapshot", "input": {}}},
                        {"toolUse": {"toolUseId": "call_2", "name": "execute_lua", "input": {"code": "return 1"}}}
                    ]},
                    {"role": "user", "content": [
                        {"toolResult": {"toolUseId": "call_1", "content": [{"text": "{\"memory\": 10}"}], "status": "success"}},
                        {"toolResult": {"toolUseId": "call_2", "content": [{"text": "syntax error"}], "status": "error"}}
                    ]}
                ],
                "system": [{"text": "You watch the BEAM."}],
                "inferenceConfig": {"maxTokens": 512, "temperature": 0.2},
                "toolConfig": {
                    "tools": [
                        {"toolSpec": {"name": "take_snapshot", "description": "Takes a snapshot.",
                            "inputSchema": {"json": {"type": "object", "properties": {}}}}},
                        {"toolSpec": {"name": "execute_lua", "description": "Runs Lua.",
                            "inputSchema": {"json": {"type": "object", "properties": {"code": {"type": "string"}},
                                                     "required": ["code"], "additionalProperties": false}}}}
                    ]
                }
            })
        );
    }

    #[test]
    fn tool_choice_auto_is_left_out() {
        let body_for = |choice: ToolChoice| {
            let mut request = sample_request();
            request.tool_choice = choice;
            build(&config(None), &request, example_time())
                .unwrap()
                .json()
        };
        let auto = body_for(ToolChoice::Auto);
        assert_eq!(auto["toolConfig"].as_object().unwrap().len(), 1);
        assert!(auto["toolConfig"].get("toolChoice").is_none());
        // :none with tool history: the tools must be there, auto is implied.
        assert!(body_for(ToolChoice::None)["toolConfig"]
            .get("toolChoice")
            .is_none());
        assert_eq!(
            body_for(ToolChoice::Required)["toolConfig"]["toolChoice"],
            json!({"any": {}})
        );
        assert_eq!(
            body_for(ToolChoice::Tool("execute_lua".into()))["toolConfig"]["toolChoice"],
            json!({"tool": {"name": "execute_lua"}})
        );
    }

    #[test]
    fn temperature_follows_the_model() {
        let inference = |model: &str| {
            let mut config = config(None);
            config.model = model.into();
            build(&config, &sample_request(), example_time())
                .unwrap()
                .json()["inferenceConfig"]
                .clone()
        };
        for model in [
            "anthropic.claude-opus-4-7",
            "global.anthropic.claude-opus-4-8-v1:0",
            "us.anthropic.claude-sonnet-5-v1:0",
        ] {
            assert_eq!(inference(model), json!({"maxTokens": 512}), "{model}");
        }
        for model in [
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "meta.llama3-1-70b-instruct-v1:0",
            "amazon.nova-pro-v1:0",
        ] {
            assert_eq!(
                inference(model),
                json!({"maxTokens": 512, "temperature": 0.2}),
                "{model}"
            );
        }
    }

    #[test]
    fn messages_match_the_error_kind() {
        let with_type = |kind: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-amzn-errortype", kind.parse().unwrap());
            headers
        };
        // Bedrock's documented 429 while a model is being loaded.
        let error = super::error(
            429,
            &with_type(
                "ModelNotReadyException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            ),
            br#"{"message":"Model is not ready for inference. Wait and try your request again."}"#,
            &[],
        );
        assert_eq!((error.reason, error.retryable), (Reason::Overloaded, true));
        assert_eq!(
            error.message,
            "the model is not ready to serve requests yet (HTTP 429): \
             Model is not ready for inference. Wait and try your request again."
        );
        assert!(!error.message.contains("rate limited"));

        let expired = super::error(
            403,
            &with_type("ExpiredTokenException"),
            br#"{"message":"The security token included in the request is expired"}"#,
            &[],
        );
        assert_eq!(expired.reason, Reason::Unauthorized);
        assert!(expired
            .message
            .starts_with("the credentials have expired (HTTP 403)"));
    }

    #[test]
    fn parses_tool_use_and_usage() {
        let body = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"text": "Looking."},
                {"toolUse": {"toolUseId": "tooluse_1", "name": "take_snapshot", "input": {}}},
                {"toolUse": {"toolUseId": "tooluse_2", "name": "execute_lua", "input": {"code": "return 5"}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 30, "outputTokens": 9, "totalTokens": 39,
                      "cacheReadInputTokens": 4, "cacheWriteInputTokens": 2},
            "metrics": {"latencyMs": 500}
        });
        let turn = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(turn.text, "Looking.");
        assert_eq!(turn.stop_reason, StopReason::ToolUse);
        assert_eq!(turn.tool_calls[1].id.as_deref(), Some("tooluse_2"));
        assert_eq!(
            turn.usage,
            Usage {
                input_tokens: 30,
                output_tokens: 9,
                cache_read_tokens: 4,
                cache_write_tokens: 2
            }
        );
        assert_eq!(
            parse(b"{\"output\": {}}").unwrap_err().reason,
            Reason::MalformedResponse
        );
    }

    #[test]
    fn error_types_come_from_the_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amzn-errortype",
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
                .parse()
                .unwrap(),
        );
        let error = error(
            429,
            &headers,
            br#"{"message":"Too many requests, please wait before trying again."}"#,
            &[],
        );
        assert_eq!((error.reason, error.retryable), (Reason::RateLimited, true));
        assert!(error
            .message
            .ends_with("Too many requests, please wait before trying again."));

        headers.insert(
            "x-amzn-errortype",
            "UnrecognizedClientException".parse().unwrap(),
        );
        let error = super::error(
            403,
            &headers,
            br#"{"message":"The security token included in the request is invalid."}"#,
            &[],
        );
        assert_eq!(error.reason, Reason::Unauthorized);

        headers.insert("x-amzn-errortype", "ValidationException".parse().unwrap());
        assert_eq!(
            super::error(400, &headers, br#"{"message":"bad"}"#, &[]).reason,
            Reason::BadRequest
        );
    }
}
