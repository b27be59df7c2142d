//! The HTTP edge: `/` takes EC2 Query API requests (POST forms or GET queries), `/healthz`
//! answers `ok`, `/metrics` gives Prometheus text. Requests are handled on blocking threads
//! ([`Service::handle`]); tokio only moves bytes.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use crate::api::{HttpRequest, MAX_BODY, Service};
use crate::{Error, Result};

/// What `/metrics` prints (Prometheus text exposition).
pub type Metrics = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct AppState {
    service: Arc<Service>,
    metrics: Metrics,
}

async fn ec2(
    State(s): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = HttpRequest {
        method: method.as_str().to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    let service = s.service.clone();
    let answer = tokio::task::spawn_blocking(move || service.handle(&req, SystemTime::now())).await;
    match answer {
        Ok(r) => (
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
            r.body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("a request handler failed: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(s): State<AppState>) -> Response {
    let f = s.metrics.clone();
    match tokio::task::spawn_blocking(move || f()).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "metrics failed").into_response(),
    }
}

/// The routes.
pub fn router(service: Arc<Service>, metrics_text: Metrics) -> Router {
    Router::new()
        .route("/", any(ec2))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY + 1))
        .with_state(AppState {
            service,
            metrics: metrics_text,
        })
}

/// Serves on `listener` until `shutdown` completes.
pub async fn serve(
    listener: std::net::TcpListener,
    service: Arc<Service>,
    metrics_text: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Config(format!("cannot use the listening socket: {e}")))?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| Error::Config(format!("cannot use the listening socket: {e}")))?;
    axum::serve(listener, router(service, metrics_text))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Config(format!("the HTTP server failed: {e}")))
}
