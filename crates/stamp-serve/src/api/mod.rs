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
                if f.status >= 500 {
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
