//! HTTP for the LLM client: one shared reqwest client (rustls with ring),
//! per-attempt deadlines, body size caps, `Retry-After` and backoff.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Client;

use super::error::{clip, LlmError, Reason};

/// A request as built by a provider, before it is sent.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub url: String,
    /// Header names are lower case. Values of sensitive headers are marked
    /// as such when sent (reqwest then hides them from its debug output).
    pub headers: Vec<(String, String, Sensitive)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensitive {
    Yes,
    No,
}

impl HttpRequest {
    pub fn post_json(url: String, body: &serde_json::Value) -> Self {
        HttpRequest {
            url,
            headers: vec![
                (
                    "content-type".into(),
                    "application/json".into(),
                    Sensitive::No,
                ),
                ("accept".into(), "application/json".into(), Sensitive::No),
            ],
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>, sensitive: Sensitive) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.into(), sensitive));
        self
    }

    /// The body as JSON, for tests.
    #[cfg(test)]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    #[cfg(test)]
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v.as_str())
    }
}

/// A received response with its body read (up to the cap).
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Error bodies are only quoted in messages; this much is plenty.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Clients by connect timeout (reqwest sets it per client). A handful of
/// distinct values exist in practice; the map is capped all the same.
static CLIENTS: LazyLock<Mutex<HashMap<u64, Client>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
const MAX_CLIENTS: usize = 16;

fn client(connect_timeout: Duration) -> Result<Client, LlmError> {
    let key = connect_timeout.as_millis() as u64;
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(client) = clients.get(&key) {
        return Ok(client.clone());
    }
    // reqwest is built without a crypto provider of its own; ring is
    // installed as the process default once (a second install is a no-op).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("beamlens/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| LlmError::config(format!("could not build the HTTP client: {e}")))?;
    if clients.len() >= MAX_CLIENTS {
        clients.clear();
    }
    clients.insert(key, client.clone());
    Ok(client)
}

/// Sends `request` and reads the response, all within `timeout`. Transport
/// failures become `:connect`, `:timeout` or `:malformed_response` (a body
/// cut short) errors, all retryable; a body over `max_body_bytes` is
/// `:body_too_large`.
pub async fn send(
    request: &HttpRequest,
    connect_timeout: Duration,
    timeout: Duration,
    max_body_bytes: usize,
) -> Result<HttpResponse, LlmError> {
    let client = client(connect_timeout)?;
    let mut headers = HeaderMap::new();
    for (name, value, sensitive) in &request.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| LlmError::config(format!("invalid header name {name:?}")))?;
        let mut value = HeaderValue::from_str(value).map_err(|_| {
            LlmError::config(format!(
                "the value of header {name} is not a valid header value"
            ))
        })?;
        value.set_sensitive(*sensitive == Sensitive::Yes);
        headers.insert(name, value);
    }
    let builder = client
        .post(&request.url)
        .headers(headers)
        .body(request.body.clone());

    let attempt = async {
        let response = builder.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let success = (200..300).contains(&status);
        let cap = if success {
            max_body_bytes
        } else {
            MAX_ERROR_BODY
        };
        if success {
            if let Some(length) = response.content_length() {
                if length > cap as u64 {
                    return Err(too_large(cap).status(status));
                }
            }
        }
        let body = read_capped(response, cap, success).await?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    };

    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(LlmError::new(
            Reason::Timeout,
            format!("no complete response within {} ms", timeout.as_millis()),
        )
        .retryable(true)),
    }
}

async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
    fail_when_over: bool,
) -> Result<Vec<u8>, LlmError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > cap {
                    if fail_when_over {
                        return Err(too_large(cap));
                    }
                    let room = cap - body.len();
                    body.extend_from_slice(&chunk[..room]);
                    return Ok(body);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(LlmError::malformed(format!(
                    "the response body was cut off after {} bytes ({})",
                    body.len(),
                    describe(e)
                ))
                .retryable(true))
            }
        }
    }
}

fn too_large(cap: usize) -> LlmError {
    LlmError::new(
        Reason::BodyTooLarge,
        format!("the response body is larger than the {cap}-byte limit (max_body_bytes)"),
    )
}

fn transport_error(error: reqwest::Error) -> LlmError {
    let reason = if error.is_timeout() {
        Reason::Timeout
    } else {
        Reason::Connect
    };
    let what = if error.is_connect() {
        "could not connect"
    } else {
        "the connection failed"
    };
    LlmError::new(reason, format!("{what}: {}", describe(error))).retryable(true)
}

/// The innermost cause of a reqwest error (such as "Connection refused"),
/// never the URL.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&error);
    while let Some(cause) = source {
        text = cause.to_string();
        source = cause.source();
    }
    clip(&text, 200)
}

/// Classifies a non-2xx status. `detail` is the provider's own message
/// (already redacted).
pub fn status_error(status: u16, detail: &str) -> LlmError {
    let (reason, retryable, what) = match status {
        401 => (
            Reason::Unauthorized,
            false,
            "the provider rejected the credentials",
        ),
        403 => (Reason::Unauthorized, false, "the provider refused access"),
        404 => (
            Reason::NotFound,
            false,
            "not found (check the model name and base_url)",
        ),
        408 => (Reason::Timeout, true, "the provider timed out"),
        409 => (Reason::Conflict, true, "conflict"),
        429 => (Reason::RateLimited, true, "rate limited"),
        503 | 529 => (Reason::Overloaded, true, "the provider is overloaded"),
        500..=599 => (Reason::ServerError, true, "the provider failed"),
        300..=399 => (
            Reason::BadRequest,
            false,
            "unexpected redirect (check base_url)",
        ),
        _ => (
            Reason::BadRequest,
            false,
            "the provider refused the request",
        ),
    };
    kind_error(status, reason, retryable, what, detail)
}

/// An error whose kind the provider named in its body or headers (Bedrock's
/// `ModelNotReadyException`, Gemini's `API_KEY_INVALID`...), which may say
/// something other than the status alone: `what` describes that kind, so
/// the message never contradicts the reason.
pub fn kind_error(
    status: u16,
    reason: Reason,
    retryable: bool,
    what: &str,
    detail: &str,
) -> LlmError {
    let message = if detail.is_empty() {
        format!("{what} (HTTP {status})")
    } else {
        format!("{what} (HTTP {status}): {detail}")
    };
    LlmError::new(reason, message)
        .status(status)
        .retryable(retryable)
}

/// What each reason means, for [`kind_error`] where the provider's own
/// error kind overrides the status.
pub fn reason_phrase(reason: Reason) -> &'static str {
    match reason {
        Reason::Unauthorized => "the provider rejected the credentials",
        Reason::RateLimited => "rate limited",
        Reason::Overloaded => "the provider is overloaded",
        Reason::Timeout => "the provider timed out",
        Reason::ServerError => "the provider failed",
        Reason::NotFound => "not found (check the model name and base_url)",
        Reason::Conflict => "conflict",
        _ => "the provider refused the request",
    }
}

/// The longest wait a provider can ask for: a longer `Retry-After` (or
/// Gemini `retryDelay`) counts as this much. Any such wait is far beyond
/// `max_retry_after` in practice, so the request fails over at once; the
/// ceiling only keeps a hostile value (`Retry-After: 1e300`, a date in
/// year 9999999) from overflowing the time arithmetic.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Reads `retry-after-ms` (OpenAI, Azure) or `retry-after` (seconds or an
/// HTTP date), clamped to [`MAX_RETRY_AFTER`]. Values that are not a
/// number or a date, negative or not finite, are ignored.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        if let Some(wait) = seconds_to_wait(ms / 1000.0) {
            return Some(wait);
        }
    }
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return seconds_to_wait(seconds);
    }
    let at = parse_http_date(value)?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// A wait given in (fractional) seconds, clamped to [`MAX_RETRY_AFTER`];
/// `None` when negative or not a number. Never panics, whatever the value.
pub fn seconds_to_wait(seconds: f64) -> Option<Duration> {
    if seconds.is_nan() || seconds < 0.0 {
        return None;
    }
    // Also catches +infinity, which from_secs_f64 would panic on.
    if seconds >= MAX_RETRY_AFTER.as_secs_f64() {
        return Some(MAX_RETRY_AFTER);
    }
    Duration::try_from_secs_f64(seconds).ok()
}

/// Parses a google.protobuf.Duration in its JSON form, such as `"12s"` or
/// `"0.250s"` (Gemini's `RetryInfo.retryDelay`), clamped like
/// [`retry_after`].
pub fn protobuf_duration(text: &str) -> Option<Duration> {
    let number = text.trim().strip_suffix('s')?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    seconds_to_wait(number.parse::<f64>().ok()?)
}

/// Parses an IMF-fixdate such as `Wed, 21 Oct 2015 07:28:00 GMT`. Years
/// outside 1970..=9999 are refused (HTTP dates have four digits), so the
/// arithmetic below cannot overflow.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u64
        + 1;
    let year: i64 = year.parse().ok()?;
    if !(1970..=9999).contains(&year) {
        return None;
    }
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day) || *h > 23 || *m > 59 || *s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let seconds = days
        .checked_mul(86_400)?
        .checked_add(h * 3600 + m * 60 + s)?;
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from(era * 146_097 + doe - 719_468).ok()
}

/// Backoff before retry number `retry` (0 for the first retry): exponential
/// from `base`, capped at `max`, with "equal jitter" (half fixed, half
/// random) so that many watchers do not retry in lockstep.
pub fn backoff(retry: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX));
    let capped = exp.min(max);
    let half = capped / 2;
    half + half.mul_f64(random_fraction())
}

fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_milliseconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 2015-10-21 07:27:50 GMT
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(2)));

        headers.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(10)));

        headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(
            retry_after(&headers, now),
            Some(Duration::from_millis(1500))
        );

        let mut bad = HeaderMap::new();
        bad.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&bad, now), None);
        bad.insert("retry-after", HeaderValue::from_static("-3"));
        assert_eq!(retry_after(&bad, now), None);
    }

    /// A hostile or garbled wait never panics and never exceeds the ceiling
    /// (`Duration::from_secs_f64(1e300)` used to panic the request, which
    /// stopped the fallback chain).
    #[test]
    fn hostile_retry_after_values_are_clamped_or_ignored() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_470);
        let wait = |name: &'static str, value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static(value));
            retry_after(&headers, now)
        };
        for huge in [
            "1e300",
            "inf",
            "+Infinity",
            "18446744073709551616",
            "99999999999999999999999999999999999999",
            "86401",
        ] {
            assert_eq!(wait("retry-after", huge), Some(MAX_RETRY_AFTER), "{huge}");
        }
        assert_eq!(wait("retry-after-ms", "1e300"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            wait("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(MAX_RETRY_AFTER)
        );
        for garbage in [
            "NaN",
            "-inf",
            "-1e300",
            "Fri, 31 Dec 99999999999 23:59:59 GMT",
            "Fri, 31 Dec -9223372036854775808 23:59:59 GMT",
            "Fri, 31 Dec 9223372036854775807 23:59:59 GMT",
            "Fri, 31 Dec 1969 23:59:59 GMT",
            "Fri, 31 Dec 2015 99:99:99 GMT",
        ] {
            assert_eq!(wait("retry-after", garbage), None, "{garbage}");
        }
        // A past date means "now".
        assert_eq!(
            wait("retry-after", "Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        // A bad retry-after-ms falls back to retry-after.
        let mut headers = HeaderMap::new();
        headers.insert("retry-after-ms", HeaderValue::from_static("NaN"));
        headers.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(3)));
    }

    #[test]
    fn protobuf_durations() {
        assert_eq!(protobuf_duration("12s"), Some(Duration::from_secs(12)));
        assert_eq!(
            protobuf_duration("0.250s"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(protobuf_duration("315576000000s"), Some(MAX_RETRY_AFTER));
        for bad in [
            "", "s", "12", "-1s", "1e3s", "NaNs", "infs", "1.2.3s", "12 s",
        ] {
            assert_eq!(protobuf_duration(bad), None, "{bad:?}");
        }
    }

    /// A one-connection HTTP server on 127.0.0.1 that answers with `head`,
    /// then `body` (once, or over and over until the client hangs up).
    async fn serve_once(head: Vec<u8>, body: Vec<u8>, endless: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 64 * 1024];
            let mut read = 0;
            // The request head and its small body.
            while !request[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut request[read..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read += n,
                }
            }
            if socket.write_all(&head).await.is_err() {
                return;
            }
            loop {
                if socket.write_all(&body).await.is_err() || !endless {
                    return;
                }
            }
        });
        url
    }

    async fn send_to(url: String, max_body_bytes: usize) -> Result<HttpResponse, LlmError> {
        let request = HttpRequest::post_json(url, &serde_json::json!({}));
        send(
            &request,
            Duration::from_secs(60),
            Duration::from_secs(600),
            max_body_bytes,
        )
        .await
    }

    // Hostile servers: each case ends in a bounded result well before the
    // (generous) timeout, whatever the server goes on sending.

    #[tokio::test]
    async fn an_endless_error_body_is_cut_at_the_error_cap() {
        let head = b"HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\n\r\n".to_vec();
        let url = serve_once(head, vec![b'x'; 16 * 1024], true).await;
        let response = send_to(url, 1024).await.unwrap();
        assert_eq!(response.status, 500);
        assert_eq!(response.body.len(), MAX_ERROR_BODY);
    }

    #[tokio::test]
    async fn an_endless_success_body_is_refused_at_max_body_bytes() {
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        let chunk = format!("4000\r\n{}\r\n", "y".repeat(0x4000)).into_bytes();
        let url = serve_once(head, chunk, true).await;
        let error = send_to(url, 100_000).await.unwrap_err();
        assert_eq!(error.reason, Reason::BodyTooLarge);
    }

    #[tokio::test]
    async fn a_huge_content_length_is_refused_or_read_as_far_as_it_goes() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999\r\n\r\n".to_vec();
        let url = serve_once(head, b"{}".to_vec(), true).await;
        assert_eq!(
            send_to(url, 1 << 20).await.unwrap_err().reason,
            Reason::BodyTooLarge
        );

        let head = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 99999999999999999\r\n\r\n"
            .to_vec();
        let url = serve_once(head, b"oops".to_vec(), false).await;
        let error = send_to(url, 1 << 20).await.unwrap_err();
        assert_eq!(
            (error.reason, error.retryable),
            (Reason::MalformedResponse, true)
        );
        assert!(
            error.message.contains("cut off after 4 bytes"),
            "{}",
            error.message
        );

        // Beyond u64: the head itself is refused.
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 1{}\r\n\r\n",
            "0".repeat(40)
        )
        .into_bytes();
        let url = serve_once(head, b"{}".to_vec(), false).await;
        assert!(send_to(url, 1 << 20).await.unwrap_err().retryable);
    }

    #[tokio::test]
    async fn an_oversized_response_head_is_a_retryable_error() {
        let mut head = b"HTTP/1.1 200 OK\r\nx-junk: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 2_000_000));
        head.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\n{}");
        let url = serve_once(head, Vec::new(), false).await;
        let error = send_to(url, 1 << 20).await.unwrap_err();
        assert_eq!((error.reason, error.retryable), (Reason::Connect, true));
    }

    #[tokio::test]
    async fn invalid_utf8_headers_are_ignored() {
        let mut head = b"HTTP/1.1 429 Too Many Requests\r\nretry-after: ".to_vec();
        head.extend_from_slice(&[0xff, 0xfe, 0x80]);
        head.extend_from_slice(b"\r\ncontent-length: 4\r\n\r\n");
        let url = serve_once(head, vec![0xff, 0xfe, 0xc3, 0x28], false).await;
        let response = send_to(url, 1 << 20).await.unwrap();
        assert_eq!(response.status, 429);
        assert_eq!(retry_after(&response.headers, SystemTime::now()), None);
        assert_eq!(response.body, vec![0xff, 0xfe, 0xc3, 0x28]);
    }

    #[test]
    fn http_dates_match_known_timestamps() {
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(UNIX_EPOCH)
        );
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 PST"), None);
    }

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        for _ in 0..100 {
            let first = backoff(0, base, max);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(2, base, max);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let capped = backoff(30, base, max);
            assert!(capped >= Duration::from_millis(500) && capped <= max);
        }
        // Extreme configurations saturate instead of overflowing.
        for retry in [0, 31, 63, u32::MAX] {
            assert!(backoff(retry, Duration::MAX, Duration::MAX) <= Duration::MAX);
            assert!(backoff(retry, Duration::from_millis(u64::MAX), max) <= max);
        }
        let samples: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff(3, base, max)).collect();
        assert!(samples.len() > 1, "backoff has no jitter");
    }

    #[test]
    fn statuses_are_classified() {
        let cases = [
            (401, Reason::Unauthorized, false),
            (403, Reason::Unauthorized, false),
            (404, Reason::NotFound, false),
            (400, Reason::BadRequest, false),
            (422, Reason::BadRequest, false),
            (408, Reason::Timeout, true),
            (409, Reason::Conflict, true),
            (429, Reason::RateLimited, true),
            (500, Reason::ServerError, true),
            (502, Reason::ServerError, true),
            (503, Reason::Overloaded, true),
            (529, Reason::Overloaded, true),
        ];
        for (status, reason, retryable) in cases {
            let error = status_error(status, "detail");
            assert_eq!(
                (error.reason, error.retryable),
                (reason, retryable),
                "{status}"
            );
            assert_eq!(error.status, Some(status));
            assert!(error.message.ends_with(&format!("(HTTP {status}): detail")));
        }
    }
}
