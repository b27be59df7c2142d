//! Verifying AWS Signature Version 4 on the server side (`stamp serve`): the canonical request
//! rebuilt from what arrived, the string to sign, the signing key from the caller's secret, and
//! a constant-time comparison. Only the `Authorization` header form is accepted (what the AWS
//! CLI and the SDKs send); the signing primitives are aws-sigv4's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// How far a request's `X-Amz-Date` may be from the server's clock (AWS: 15 minutes).
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// A request as the server received it.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub path: &'a str,
    /// The query string as sent (without `?`), possibly empty.
    pub query: &'a str,
    /// Every header (any case).
    pub headers: &'a [(String, String)],
    /// The body.
    pub body: &'a [u8],
}

/// Why a request is refused, with AWS's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AuthError {
    /// `AuthFailure`, `SignatureDoesNotMatch`, `RequestExpired`, `MissingAuthenticationToken`,
    /// `IncompleteSignature`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
}

fn fail(code: &'static str, message: impl Into<String>) -> AuthError {
    AuthError {
        code,
        message: message.into(),
    }
}

/// What a valid signature says about the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The access key id that signed.
    pub access_key_id: String,
    /// The region of the credential scope.
    pub region: String,
    /// The service of the credential scope.
    pub service: String,
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(v: &str) -> Result<Authorization<'_>, AuthError> {
    let rest = v
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or_else(|| fail("IncompleteSignature", "only AWS4-HMAC-SHA256 is supported"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(c) = part.strip_prefix("Credential=") {
            credential = Some(c);
        } else if let Some(s) = part.strip_prefix("SignedHeaders=") {
            signed = Some(s);
        } else if let Some(s) = part.strip_prefix("Signature=") {
            signature = Some(s);
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(fail(
            "IncompleteSignature",
            "Authorization needs Credential, SignedHeaders and Signature",
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key, date, region, service, "aws4_request"] = scope[..] else {
        return Err(fail(
            "IncompleteSignature",
            format!("Credential '{credential:.200}' is not KEY/DATE/REGION/SERVICE/aws4_request"),
        ));
    };
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail(
            "IncompleteSignature",
            "the credential date is not YYYYMMDD",
        ));
    }
    let signed_headers: Vec<&str> = signed.split(';').collect();
    if signed_headers.len() > 64 || !signed_headers.contains(&"host") {
        return Err(fail(
            "IncompleteSignature",
            "SignedHeaders must include host (and at most 64 headers)",
        ));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(fail(
            "IncompleteSignature",
            "the signature is not 64 hex digits",
        ));
    }
    Ok(Authorization {
        access_key_id: key,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// Percent-encodes as SigV4 wants: everything but `A-Z a-z 0-9 - _ . ~`.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` and, for query strings, `+` as a space.
fn decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(&decode(k, true)), encode(&decode(v, true)))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical URI: for S3 the path as sent; for other services each segment encoded again
/// (what the SDKs sign: the path is encoded twice).
fn canonical_uri(path: &str, service: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    if service == "s3" {
        return path.to_string();
    }
    path.split('/').map(encode).collect::<Vec<_>>().join("/")
}

/// The date `YYYYMMDD` at midnight UTC.
fn date_time(date: &str) -> Option<SystemTime> {
    let y: i64 = date.get(0..4)?.parse().ok()?;
    let m: i64 = date.get(4..6)?.parse().ok()?;
    let d: i64 = date.get(6..8)?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days.checked_mul(86_400)?).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// `YYYYMMDDTHHMMSSZ` as a time.
fn amz_date(v: &str) -> Option<SystemTime> {
    let (date, time) = v.split_once('T')?;
    let day = date_time(date)?;
    let time = time.strip_suffix('Z')?;
    if time.len() != 6 {
        return None;
    }
    let h: u64 = time[0..2].parse().ok()?;
    let m: u64 = time[2..4].parse().ok()?;
    let s: u64 = time[4..6].parse().ok()?;
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    day.checked_add(Duration::from_secs(h * 3600 + m * 60 + s))
}

/// Checks `req`'s signature. `secret_of` gives the secret of an access key id (`None`: unknown
/// key). On success says who signed.
pub fn verify(
    req: &Received,
    secret_of: &dyn Fn(&str) -> Option<String>,
    now: SystemTime,
) -> Result<Caller, AuthError> {
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let auth = header("authorization").ok_or_else(|| {
        fail(
            "MissingAuthenticationToken",
            "the request must be signed (AWS Signature Version 4)",
        )
    })?;
    let auth = parse_authorization(auth)?;
    let x_amz_date =
        header("x-amz-date").ok_or_else(|| fail("IncompleteSignature", "X-Amz-Date is missing"))?;
    let when = amz_date(x_amz_date)
        .ok_or_else(|| fail("IncompleteSignature", "X-Amz-Date is not YYYYMMDDTHHMMSSZ"))?;
    if !x_amz_date.starts_with(auth.date) {
        return Err(fail(
            "SignatureDoesNotMatch",
            "the credential date is not the date of X-Amz-Date",
        ));
    }
    let skew = now
        .duration_since(when)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    if skew > MAX_SKEW {
        return Err(fail(
            "RequestExpired",
            format!("X-Amz-Date {x_amz_date} is more than 15 minutes from the server's time"),
        ));
    }
    let secret = secret_of(auth.access_key_id).ok_or_else(|| {
        fail(
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
        )
    })?;
    let mut canonical_headers = String::new();
    for name in &auth.signed_headers {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(fail(
                "SignatureDoesNotMatch",
                format!("signed header {name:.64} is not in the request"),
            ));
        }
        canonical_headers.push_str(&format!("{}:{}\n", name, values.join(",")));
    }
    let payload = match header("x-amz-content-sha256") {
        Some(h) if auth.service == "s3" => h.to_string(),
        _ => hex::encode(Sha256::digest(req.body)),
    };
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.path, auth.service),
        canonical_query(req.query),
        canonical_headers,
        auth.signed_headers.join(";"),
        payload
    );
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{x_amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let day = date_time(auth.date)
        .ok_or_else(|| fail("IncompleteSignature", "the credential date is not a date"))?;
    let key = aws_sigv4::sign::v4::generate_signing_key(&secret, day, auth.region, auth.service);
    let expected = aws_sigv4::sign::v4::calculate_signature(key, string_to_sign.as_bytes());
    let matches = expected.len() == auth.signature.len()
        && expected
            .bytes()
            .zip(auth.signature.to_ascii_lowercase().bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !matches {
        return Err(fail(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided",
        ));
    }
    Ok(Caller {
        access_key_id: auth.access_key_id.to_string(),
        region: auth.region.to_string(),
        service: auth.service.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AwsConfig, Credentials};

    fn signed(body: &[u8], at: SystemTime, secret: &str) -> Vec<(String, String)> {
        let config = AwsConfig::new(
            "us-east-1",
            Credentials {
                access_key_id: "AKIDSERVE".into(),
                secret_access_key: secret.into(),
                session_token: None,
            },
        );
        let headers = [
            ("host", "127.0.0.1:8773".to_string()),
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8".to_string(),
            ),
        ];
        let added = crate::http::sign_request(
            &config,
            "ec2",
            "POST",
            "http://127.0.0.1:8773/",
            &headers,
            body,
            at,
        )
        .unwrap();
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .chain(added.into_iter().map(|(k, v)| (k.to_string(), v)))
            .collect()
    }

    fn received<'a>(headers: &'a [(String, String)], body: &'a [u8]) -> Received<'a> {
        Received {
            method: "POST",
            path: "/",
            query: "",
            headers,
            body,
        }
    }

    #[test]
    fn what_our_client_signs_verifies_and_any_change_does_not() {
        let now = SystemTime::now();
        let body = b"Action=DescribeImportSnapshotTasks&Version=2016-11-15";
        let h = signed(body, now, "s3cret");
        let secret = |k: &str| (k == "AKIDSERVE").then(|| "s3cret".to_string());
        let caller = verify(&received(&h, body), &secret, now).unwrap();
        assert_eq!(caller.access_key_id, "AKIDSERVE");
        assert_eq!(caller.region, "us-east-1");
        assert_eq!(caller.service, "ec2");

        let other = b"Action=CancelImportTask&Version=2016-11-15";
        let e = verify(&received(&h, other), &secret, now).unwrap_err();
        assert_eq!(e.code, "SignatureDoesNotMatch");
        let wrong = |_: &str| Some("other".to_string());
        assert_eq!(
            verify(&received(&h, body), &wrong, now).unwrap_err().code,
            "SignatureDoesNotMatch"
        );
        let unknown = |_: &str| None;
        assert_eq!(
            verify(&received(&h, body), &unknown, now).unwrap_err().code,
            "AuthFailure"
        );
        let later = now + Duration::from_secs(16 * 60);
        assert_eq!(
            verify(&received(&h, body), &secret, later)
                .unwrap_err()
                .code,
            "RequestExpired"
        );
        let mut moved = h.clone();
        for (k, v) in &mut moved {
            if k == "host" {
                *v = "evil:1".into();
            }
        }
        assert!(verify(&received(&moved, body), &secret, now).is_err());
        let none: Vec<(String, String)> = Vec::new();
        assert_eq!(
            verify(&received(&none, body), &secret, now)
                .unwrap_err()
                .code,
            "MissingAuthenticationToken"
        );
    }

    #[test]
    fn the_sigv4_test_suite_vectors_verify() {
        // AWS's SigV4 test suite: "get-vanilla-query-order-key-case" and
        // "post-x-www-form-urlencoded", signed by AWS, checked here.
        let secret = |k: &str| {
            (k == "AKIDEXAMPLE").then(|| "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string())
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let h = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
            [
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ]
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        };
        let get = h(&[(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        )]);
        let r = Received {
            method: "GET",
            path: "/",
            query: "Param2=value2&Param1=value1",
            headers: &get,
            body: b"",
        };
        assert_eq!(verify(&r, &secret, now).unwrap().service, "service");
        let post = h(&[
            ("content-type", "application/x-www-form-urlencoded"),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
            ),
        ]);
        let r = Received {
            method: "POST",
            path: "/",
            query: "",
            headers: &post,
            body: b"Param1=value1",
        };
        assert!(verify(&r, &secret, now).is_ok());
    }

    #[test]
    fn dates_and_encodings() {
        let t = amz_date("20261207T010203Z").unwrap();
        let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs, 1_796_605_323);
        assert!(amz_date("20261307T010203Z").is_none());
        assert!(amz_date("2026120T010203Z").is_none());
        assert_eq!(canonical_query("b=2&a=%20x+y&c"), "a=%20x%20y&b=2&c=");
        assert_eq!(canonical_uri("/a b/c", "ec2"), "/a%20b/c");
        assert_eq!(decode("%zz%41", false), "%zzA");
        assert_eq!(decode("%4", false), "%4");
    }

    #[test]
    fn malformed_authorization_headers_are_refused() {
        for bad in [
            "AWS4-HMAC-SHA256 Credential=a/b/c",
            "AWS4-HMAC-SHA256 Credential=K/2026/us/ec2/aws4_request, SignedHeaders=host, Signature=00",
            "Basic abc",
            "AWS4-HMAC-SHA256 Credential=K/20260101/us/ec2/aws4_request, SignedHeaders=x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(parse_authorization(bad).is_err(), "{bad}");
        }
    }
}
