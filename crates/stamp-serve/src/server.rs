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

/// Serves on `listener` (with TLS when `tls` names a certificate and key) until `shutdown`
/// completes.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Option<(&std::path::Path, &std::path::Path)>,
    service: Arc<Service>,
    metrics_text: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let bad = |e: std::io::Error| Error::Config(format!("cannot use the listening socket: {e}"));
    listener.set_nonblocking(true).map_err(bad)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(bad)?;
    let app = router(service, metrics_text);
    let failed = |e: std::io::Error| Error::Config(format!("the HTTP server failed: {e}"));
    match tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(failed),
        Some((cert, key)) => axum::serve(TlsListener::new(listener, cert, key)?, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(failed),
    }
}

/// A TLS listener for axum: TCP connections whose rustls handshakes run concurrently, each
/// bounded in time, so that clients that never finish theirs hold up neither the accept loop
/// nor each other; at most [`MAX_HANDSHAKES`] are in progress at once.
pub struct TlsListener {
    local: std::net::SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(Tls, std::net::SocketAddr)>,
    accepting: tokio::task::JoinHandle<()>,
}

type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Longest wait for a client's TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Most TLS handshakes in progress at once (further connections wait in the backlog).
pub const MAX_HANDSHAKES: usize = 256;

impl TlsListener {
    /// A listener on `tcp` with the certificate chain and private key of the PEM files; its
    /// accept loop runs on the current tokio runtime until the listener is dropped.
    pub fn new(
        tcp: tokio::net::TcpListener,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<TlsListener> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<std::result::Result<_, _>>())
            .map_err(|e| {
                Error::Config(format!(
                    "{}: not a PEM certificate chain: {e}",
                    cert.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(Error::Config(format!("{}: no certificate", cert.display())));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| Error::Config(format!("{}: not a PEM private key: {e}", key.display())))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| Error::Config(format!("TLS certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let local = tcp
            .local_addr()
            .map_err(|e| Error::Config(format!("cannot use the listening socket: {e}")))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let (tx, ready) = tokio::sync::mpsc::channel(MAX_HANDSHAKES);
        let accepting = tokio::spawn(accept_loop(tcp, acceptor, tx));
        Ok(TlsListener {
            local,
            ready,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Accepts TCP connections on `tcp` and hands each to its own handshake task, which sends the
/// TLS stream to `tx` once the handshake is done.
async fn accept_loop(
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: tokio::sync::mpsc::Sender<(Tls, std::net::SocketAddr)>,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, addr) = match tcp.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            match handshake {
                // The slot is held until axum takes the stream: at most MAX_HANDSHAKES tasks.
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, addr)).await;
                }
                Ok(Err(e)) => tracing::info!(%addr, "TLS handshake failed: {e}"),
                Err(_) => tracing::info!(%addr, "TLS handshake timed out"),
            }
            drop(slot);
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Tls;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop is gone (it holds a sender until then): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;

    /// A self-signed certificate for 127.0.0.1 (openssl) in `dir`: (cert, key).
    fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let st = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                // (webpki refuses a CA certificate as the server's own)
                "-addext",
                "basicConstraints=critical,CA:FALSE",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        (cert, key)
    }

    /// Connections that never send their ClientHello do not hold up another client's
    /// handshake: its stream is accepted while theirs are still pending (the old one-at-a-time
    /// loop only got to it after timing each of them out and closing them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handshake_is_not_held_up_by_idle_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate(dir.path());
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = TlsListener::new(tcp, &cert, &key).unwrap();
        assert_eq!(axum::serve::Listener::local_addr(&listener).unwrap(), addr);
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&cert).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let client = tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
            let mut tls = connector.connect(name, tcp).await.unwrap();
            tls.write_all(b"hello").await.unwrap();
            tls.flush().await.unwrap();
            tls
        });
        // Both sides at once (a listener may drive its handshakes from accept()); a failed
        // client ends the test rather than leaving accept() waiting.
        let accept = axum::serve::Listener::accept(&mut listener);
        tokio::pin!(accept);
        let mut client = client;
        let mut tls = None;
        let (mut io, _) = loop {
            tokio::select! {
                conn = &mut accept => break conn,
                r = &mut client, if tls.is_none() => tls = Some(r.unwrap()),
            }
        };
        let tls = match tls {
            Some(t) => t,
            None => client.await.unwrap(),
        };
        let mut got = [0u8; 5];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // The idle connections are still open, waiting for their handshakes.
        for s in &idle {
            let mut buf = [0u8; 16];
            match s.try_read(&mut buf) {
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
                Ok(n) => panic!("an idle connection was answered or closed ({n} bytes)"),
            }
        }
        drop(tls);
    }
}
