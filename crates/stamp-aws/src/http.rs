//! SigV4-signed HTTP requests to AWS with retries.
//!
//! [`Client::send`] signs a request for a service (`ec2`, `ebs`, `s3`) with the `aws-sigv4`
//! crate, sends it with `ureq`, and retries with exponential backoff and jitter on connection
//! errors, 5xx, 429 and throttling error codes. It returns every other response whatever its
//! status: JSON errors become [`crate::Error::Api`] through [`Response::json_error`], XML
//! errors (EC2, S3) are the caller's to parse from [`Response::body`].

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use sha2::{Digest, Sha256};

use crate::config::AwsConfig;
use crate::{Error, Result};

/// Attempts per request (the first and 7 retries). With the backoff below the last retry
/// comes about 13 s after the first failure (AWS SDKs use 3–5 in standard mode; EBS direct
/// throttles bursts of PutSnapshotBlock, so we wait longer than they do).
pub const MAX_ATTEMPTS: u32 = 8;
/// The first backoff; doubles each retry up to [`MAX_BACKOFF`], plus up to 100% jitter.
pub const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// The longest single backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Largest response body read: an EBS block is 512 KiB; EC2 Describe pages are well under this.
pub const MAX_RESPONSE_BODY: u64 = 32 << 20;
/// Time to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Time for a whole response (an EBS block upload on a slow link included).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

/// Error codes that mean "slow down" or "try again" whatever the status (S3 answers a part
/// upload that stalled with 400 `RequestTimeout`; the AWS SDKs retry it).
const THROTTLING_CODES: &[&str] = &[
    "RequestTimeout",
    "RequestTimeoutException",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
];

/// A response: status, headers (names lower-case) and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body (at most [`MAX_RESPONSE_BODY`] bytes).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Returns true if and only if the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The AWS error code of a JSON or XML error response, if one can be found: the
    /// `x-amzn-ErrorType` header, JSON `__type`/`code`/`Code`, or XML `<Code>`.
    pub fn error_code(&self) -> Option<String> {
        if let Some(t) = self.header("x-amzn-errortype") {
            // `ValidationException:http://internal.amazon.com/...`
            let code = t.split(':').next().unwrap_or(t).trim();
            if !code.is_empty() {
                return Some(code.to_string());
            }
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&self.body) {
            for k in ["__type", "code", "Code"] {
                if let Some(c) = v.get(k).and_then(|c| c.as_str()) {
                    let c = c.rsplit('#').next().unwrap_or(c);
                    return Some(c.to_string());
                }
            }
            return None;
        }
        xml_text(&self.body, "Code")
    }

    /// This (error) response as [`Error::Api`] for a JSON API: the code from
    /// `x-amzn-ErrorType` or the body, the message from `Message`/`message` and `Reason`.
    pub fn json_error(&self, service: &'static str, action: &str) -> Error {
        let v: Option<serde_json::Value> = serde_json::from_slice(&self.body).ok();
        let field = |k: &str| {
            v.as_ref()
                .and_then(|v| v.get(k))
                .and_then(|m| m.as_str())
                .map(str::to_string)
        };
        let code = self
            .error_code()
            .unwrap_or_else(|| format!("HTTP {}", self.status));
        let mut message = field("Message")
            .or_else(|| field("message"))
            .unwrap_or_else(|| snippet(&self.body));
        if let Some(r) = field("Reason") {
            message = format!("{message} (reason: {r})");
        }
        Error::Api {
            service,
            action: action.to_string(),
            code,
            message,
        }
    }

    /// Returns true if and only if retrying may help: 5xx, 429 or a throttling code.
    pub fn is_retryable(&self) -> bool {
        if self.status >= 500 || self.status == 429 {
            return true;
        }
        if self.status >= 400 {
            if let Some(code) = self.error_code() {
                return THROTTLING_CODES.contains(&code.as_str());
            }
        }
        false
    }
}

/// The start of a body for messages, lossily decoded and cut at 300 bytes.
pub fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(300)]);
    s.trim().to_string()
}

/// The text of the first `<tag>...</tag>` in an XML body (no entity decoding beyond the five
/// predefined ones). Enough for error codes and a few status fields.
pub fn xml_text(body: &[u8], tag: &str) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = s.find(&open)? + open.len();
    let len = s[start..].find(&close)?;
    Some(
        s[start..start + len]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// A signing HTTP client for one configuration. Cheap to share between threads.
#[derive(Debug, Clone)]
pub struct Client {
    config: AwsConfig,
    agent: ureq::Agent,
}

impl Client {
    /// A client with `config`'s credentials, region and endpoints.
    pub fn new(config: &AwsConfig) -> Client {
        let agent_config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .user_agent(concat!("stamp/", env!("CARGO_PKG_VERSION")))
            // Many blocks in flight reuse connections.
            .max_idle_connections(256)
            .max_idle_connections_per_host(256)
            .build();
        Client {
            config: config.clone(),
            agent: ureq::Agent::new_with_config(agent_config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AwsConfig {
        &self.config
    }

    /// Sends `method` to `service`'s endpoint + `path_and_query` (which starts with `/` and is
    /// already percent-encoded) with `headers` and `body`, signed. Retries retryable failures
    /// up to [`MAX_ATTEMPTS`] times; returns the last response whatever its status, or
    /// [`Error::Transport`] when the connection failed every time. `action` names the
    /// operation in errors.
    pub fn send(
        &self,
        service: &'static str,
        action: &str,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Response> {
        let url = format!("{}{path_and_query}", self.config.endpoint(service));
        self.send_url(service, action, method, &url, headers, body)
    }

    /// As [`Client::send`], to a whole URL (`https://BUCKET.s3.REGION.amazonaws.com/KEY`,
    /// already percent-encoded) instead of a path on the service's endpoint.
    pub fn send_url(
        &self,
        service: &'static str,
        action: &str,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Response> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.send_once(service, method, url, headers, body) {
                Ok(resp) if resp.is_retryable() && attempt < MAX_ATTEMPTS => {
                    tracing::debug!(
                        service,
                        action,
                        status = resp.status,
                        attempt,
                        "retrying after a retryable response"
                    );
                }
                Ok(resp) => return Ok(resp),
                Err(SendError::Fatal(e)) => return Err(e),
                Err(SendError::Transport(e)) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(service, action, attempt, error = %e, "retrying after a transport error");
                }
                Err(SendError::Transport(e)) => {
                    return Err(Error::Transport(format!(
                        "{service} {action}: {method} {url}: {e} (after {attempt} attempts)"
                    )));
                }
            }
            backoff(attempt);
        }
    }

    /// Sends a request to a JSON API and turns a non-2xx response into [`Error::Api`].
    pub fn send_json(
        &self,
        service: &'static str,
        action: &str,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Response> {
        let resp = self.send(service, action, method, path_and_query, headers, body)?;
        if resp.is_success() {
            Ok(resp)
        } else {
            Err(resp.json_error(service, action))
        }
    }

    fn send_once(
        &self,
        service: &str,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> std::result::Result<Response, SendError> {
        let fatal = |e: String| SendError::Fatal(Error::Transport(format!("{method} {url}: {e}")));
        let signed = sign_request(
            &self.config,
            service,
            method,
            url,
            headers,
            body,
            SystemTime::now(),
        )
        .map_err(fatal)?;
        let mut b = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        for (k, v) in &signed {
            b = b.header(*k, v.as_str());
        }
        let result = if body.is_empty() && matches!(method, "GET" | "HEAD" | "DELETE") {
            let req = b.body(()).map_err(|e| fatal(e.to_string()))?;
            self.agent.run(req)
        } else {
            let req = b
                .header("content-length", body.len().to_string())
                .body(body)
                .map_err(|e| fatal(e.to_string()))?;
            self.agent.run(req)
        };
        let mut resp = result.map_err(|e| {
            if transport_retryable(&e) {
                SendError::Transport(e.to_string())
            } else {
                fatal(e.to_string())
            }
        })?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BODY)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => fatal(format!(
                    "response body larger than {MAX_RESPONSE_BODY} bytes"
                )),
                e => SendError::Transport(format!("reading the response: {e}")),
            })?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// The headers SigV4 adds (`authorization`, `x-amz-date`, the session token and, for S3,
/// `x-amz-content-sha256`) to sign `method url` with `headers` and `body` at `time`.
pub fn sign_request(
    config: &AwsConfig,
    service: &str,
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
    time: SystemTime,
) -> std::result::Result<Vec<(&'static str, String)>, String> {
    let creds = &config.credentials;
    let identity = aws_credential_types::Credentials::new(
        &creds.access_key_id,
        &creds.secret_access_key,
        creds.session_token.clone(),
        None,
        "stamp",
    )
    .into();
    let mut settings = SigningSettings::default();
    if service == "s3" {
        // S3 signs the path as sent and wants the payload hash in a header.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&config.region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let payload_hash = hex::encode(Sha256::digest(body));
    let signable = SignableRequest::new(
        method,
        url,
        headers.iter().map(|(k, v)| (*k, v.as_str())),
        SignableBody::Precomputed(payload_hash),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let (out, _) = instructions.into_parts();
    Ok(out
        .into_iter()
        .map(|h| (h.name(), h.value().to_string()))
        .collect())
}

enum SendError {
    /// Worth retrying.
    Transport(String),
    /// Will fail again.
    Fatal(Error),
}

/// Returns true if and only if a transport error may go away on retry.
fn transport_retryable(e: &ureq::Error) -> bool {
    let retryable = matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::BodyStalled
    );
    let s = e.to_string().to_ascii_lowercase();
    retryable && !(s.contains("certificate") || s.contains("unknownissuer"))
}

/// Sleeps before retry `attempt` (1-based): `BASE_BACKOFF * 2^(attempt-1)` capped at
/// [`MAX_BACKOFF`], plus up to as much again of jitter.
pub fn backoff(attempt: u32) {
    std::thread::sleep(backoff_delay(attempt, jitter_fraction()));
}

/// The delay before retry `attempt` with jitter `fraction` in `[0, 1)`.
pub(crate) fn backoff_delay(attempt: u32, fraction: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(16);
    let base = BASE_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF);
    base + base.mul_f64(fraction.clamp(0.0, 1.0))
}

/// A pseudo-random fraction in `[0, 1)` from the clock and a counter (jitter needs no
/// cryptographic randomness).
fn jitter_fraction() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut x = COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ u64::from(nanos);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn ebs_json_errors_carry_code_message_and_reason() {
        let r = resp(
            400,
            &[("x-amzn-ErrorType", "ValidationException:http://internal")],
            r#"{"Message":"bad block","Reason":"INVALID_BLOCK"}"#,
        );
        match r.json_error("ebs", "PutSnapshotBlock") {
            Error::Api { code, message, .. } => {
                assert_eq!(code, "ValidationException");
                assert_eq!(message, "bad block (reason: INVALID_BLOCK)");
            }
            e => panic!("{e}"),
        }
        assert!(!r.is_retryable());
    }

    #[test]
    fn throttling_5xx_and_429_are_retryable() {
        assert!(resp(503, &[], "").is_retryable());
        assert!(resp(429, &[], "").is_retryable());
        assert!(resp(400, &[], "<Response><Errors><Error><Code>RequestLimitExceeded</Code></Error></Errors></Response>").is_retryable());
        assert!(resp(400, &[("x-amzn-ErrorType", "ThrottlingException")], "{}").is_retryable());
        assert!(resp(400, &[], "<Error><Code>RequestTimeout</Code></Error>").is_retryable());
        assert!(
            !resp(
                400,
                &[],
                "<Error><Code>InvalidParameterValue</Code></Error>"
            )
            .is_retryable()
        );
        assert!(!resp(404, &[], "").is_retryable());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_delay(1, 0.0), BASE_BACKOFF);
        assert_eq!(backoff_delay(3, 0.0), BASE_BACKOFF * 4);
        assert_eq!(backoff_delay(30, 0.0), MAX_BACKOFF);
        assert_eq!(backoff_delay(30, 0.99999), MAX_BACKOFF.mul_f64(1.99999));
        let f = jitter_fraction();
        assert!((0.0..1.0).contains(&f));
    }

    #[test]
    fn signing_matches_the_sigv4_test_suite() {
        // AWS's SigV4 test suite, "get-vanilla" and "post-x-www-form-urlencoded".
        let config = AwsConfig::new(
            "us-east-1",
            crate::config::Credentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
                session_token: None,
            },
        );
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let h = sign_request(
            &config,
            "service",
            "GET",
            "https://example.amazonaws.com/",
            &[],
            b"",
            time,
        )
        .unwrap();
        let auth = h.iter().find(|(k, _)| *k == "authorization").unwrap();
        assert_eq!(
            auth.1,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        let h = sign_request(
            &config,
            "service",
            "POST",
            "https://example.amazonaws.com/",
            &[("content-type", "application/x-www-form-urlencoded".into())],
            b"Param1=value1",
            time,
        )
        .unwrap();
        let auth = h.iter().find(|(k, _)| *k == "authorization").unwrap();
        assert!(
            auth.1.ends_with("SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
            "{}",
            auth.1
        );
    }

    #[test]
    fn xml_text_decodes_entities() {
        assert_eq!(
            xml_text(b"<a><Message>x &amp; &lt;y&gt;</Message></a>", "Message").as_deref(),
            Some("x & <y>")
        );
        assert_eq!(xml_text(b"<a>", "Message"), None);
    }
}
