//! The EC2 Query API: a request is authenticated (SigV4 against [`Keys`]), decoded into a
//! typed [`Request`], handled against the [`TaskStore`] for the caller's tenant, and answered
//! with AWS's XML (or AWS's error XML). [`Service::handle`] is plain blocking code; the HTTP
//! server calls it from a blocking thread.

mod actions;
mod keys;
mod views;

use std::sync::Arc;
use std::time::SystemTime;

use stamp_aws::ec2::{self, ApiError, ErrorResponse, Request};
use stamp_aws::sigv4;

pub use keys::{Key, Keys};
pub use views::request_of;

use crate::db::TaskStore;

/// Largest request body read (the Query API's forms are small).
pub const MAX_BODY: usize = 1 << 20;

/// A request as it arrived.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// The path, as sent.
    pub path: String,
    /// The query string, as sent (no `?`).
    pub query: String,
    /// Every header.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body (XML).
    pub body: String,
}

/// The API over a task store and a set of keys.
pub struct Service {
    store: Arc<dyn TaskStore>,
    keys: Keys,
    /// Called after a task is created or cancelled (wakes idle workers).
    notify: Box<dyn Fn() + Send + Sync>,
    /// Requests per second each tenant may make (with a burst of twice that); `None`: no limit.
    rate: Option<f64>,
    /// Per tenant: tokens left and when they were counted.
    buckets: std::sync::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
}

/// A handler's failure: AWS's error code and message, and the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// HTTP status.
    pub status: u16,
    /// The error.
    pub error: ApiError,
}

impl Failure {
    /// A client error (400) with `code`.
    pub fn client(code: &str, message: impl Into<String>) -> Failure {
        Failure {
            status: 400,
            error: ApiError::new(code, message),
        }
    }

    /// `InvalidParameterValue`.
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure::client("InvalidParameterValue", message)
    }

    /// `MissingParameter` for `name`.
    pub fn missing(name: &str) -> Failure {
        Failure::client(
            "MissingParameter",
            format!("The request must contain the parameter {name}"),
        )
    }

    /// A server error (500): the store failed.
    pub fn internal(e: crate::Error) -> Failure {
        tracing::error!("internal error: {e}");
        Failure {
            status: 500,
            error: ApiError::new("InternalError", "An internal error has occurred; try again"),
        }
    }
}

impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Self {
        match e {
            // The store refused what the caller sent (a next token not of ours): their error.
            crate::Error::Invalid(m) => Failure::invalid(m),
            e => Failure::internal(e),
        }
    }
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure { status: 400, error }
    }
}

/// A fresh request id (a UUID, as AWS's).
fn request_id() -> String {
    let n: u128 = rand::random();
    let h = format!("{n:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

impl Service {
    /// A service over `store`, accepting `keys`.
    pub fn new(store: Arc<dyn TaskStore>, keys: Keys) -> Service {
        Service {
            store,
            keys,
            notify: Box::new(|| {}),
            rate: None,
            buckets: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Limits each tenant to `per_second` requests a second (bursts of twice that); beyond it
    /// requests get `RequestLimitExceeded`, as EC2 throttles.
    pub fn rate_limit(mut self, per_second: f64) -> Service {
        self.rate = (per_second > 0.0).then_some(per_second);
        self
    }

    /// Takes one token from `tenant`'s bucket; false if it is empty.
    fn admit(&self, tenant: &str) -> bool {
        let Some(rate) = self.rate else { return true };
        let burst = (2.0 * rate).max(1.0);
        let now = std::time::Instant::now();
        let Ok(mut b) = self.buckets.lock() else {
            return true;
        };
        let (tokens, last) = b.entry(tenant.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Calls `f` whenever a task is created or cancelled.
    pub fn on_change(mut self, f: impl Fn() + Send + Sync + 'static) -> Service {
        self.notify = Box::new(f);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn TaskStore> {
        &self.store
    }

    /// Answers one request.
    pub fn handle(&self, req: &HttpRequest, now: SystemTime) -> HttpResponse {
        let id = request_id();
        match self.answer(req, now, &id) {
            Ok(body) => HttpResponse { status: 200, body },
            Err(f) => {
                if f.status >= 500 && f.error.code != "RequestLimitExceeded" {
                    tracing::warn!(request_id = %id, code = %f.error.code, "{}", f.error.message);
                } else {
                    tracing::info!(request_id = %id, code = %f.error.code, "{}", f.error.message);
                }
                HttpResponse {
                    status: f.status,
                    body: ErrorResponse {
                        errors: vec![f.error],
                        request_id: id,
                    }
                    .to_xml(),
                }
            }
        }
    }

    fn answer(&self, req: &HttpRequest, now: SystemTime, id: &str) -> Result<String, Failure> {
        if req.body.len() > MAX_BODY {
            return Err(Failure::invalid(format!(
                "the request body is larger than {MAX_BODY} bytes"
            )));
        }
        let received = sigv4::Received {
            method: &req.method,
            path: &req.path,
            query: &req.query,
            headers: &req.headers,
            body: &req.body,
        };
        let caller = sigv4::verify(
            &received,
            &|k| self.keys.get(k).map(|key| key.secret.clone()),
            now,
        )
        .map_err(|e| Failure {
            status: if e.code == "RequestExpired" { 400 } else { 401 },
            error: ApiError::new(e.code, e.message),
        })?;
        let tenant = self
            .keys
            .get(&caller.access_key_id)
            .map(|k| k.tenant.clone())
            .unwrap_or_default();
        if !self.admit(&tenant) {
            return Err(Failure {
                status: 503,
                error: ApiError::new("RequestLimitExceeded", "Request limit exceeded."),
            });
        }
        let mut params = ec2::form_decode(&req.query)?;
        if req.method.eq_ignore_ascii_case("POST") {
            let body = std::str::from_utf8(&req.body)
                .map_err(|_| Failure::invalid("the request body is not UTF-8"))?;
            params.extend(ec2::form_decode(body)?);
        }
        let request = Request::decode(&params)?;
        let _span = tracing::info_span!("request", request_id = id, tenant = %tenant, action = request.action()).entered();
        actions::dispatch(self, &tenant, request, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_over_their_rate_are_refused_and_others_are_not() {
        let store = crate::db::SqliteStore::open_in_memory().unwrap();
        let keys = Keys::parse("A s alice\nB s bob\n", "k").unwrap();
        let svc = Service::new(Arc::new(store), keys).rate_limit(5.0);
        // A burst of twice the rate passes, then the bucket is empty.
        let passed = (0..20).filter(|_| svc.admit("alice")).count();
        assert_eq!(passed, 10);
        assert!(svc.admit("bob"));
        std::thread::sleep(std::time::Duration::from_millis(450));
        assert!(svc.admit("alice"), "tokens come back at the rate");
        let unlimited = Service::new(
            Arc::new(crate::db::SqliteStore::open_in_memory().unwrap()),
            Keys::parse("A s alice\n", "k").unwrap(),
        );
        assert!((0..1000).all(|_| unlimited.admit("alice")));
    }
}
