//! The HTTP side of the registry client: connections, TLS, authentication, retries, errors and
//! manifests. Blob transfers are in `transfer.rs`.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use ureq::http::{self, Response};
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use super::auth::{self, Challenge, Credentials};
use super::{BlobSource, MAX_MANIFEST_SIZE, Manifest, RegistryOptions};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::media;
use crate::reference::Reference;

/// How long connecting may take before it counts as a connection failure (and is retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the registry may take to start answering a request. Blob bodies have no overall
/// limit (they can be gigabytes), only this one per response head.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest error body or token answer read.
const MAX_SMALL_BODY: u64 = 1024 * 1024;
/// The longest backoff, whatever the attempt number.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest `Retry-After` obeyed; a registry asking for more gets the usual backoff only
/// and the transfer fails sooner rather than hanging.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A request body.
pub(super) enum ReqBody<'a> {
    /// No body.
    Empty,
    /// A small body in memory (a manifest).
    Bytes(&'a [u8]),
    /// A blob streamed from its source (re-opened on each attempt), its size and a progress
    /// callback given the bytes sent so far.
    Source(&'a dyn BlobSource, &'a Digest, u64, &'a dyn Fn(u64)),
}

/// What a request is for: the registry and the token scopes it needs.
pub(super) struct Target<'a> {
    pub(super) registry: &'a str,
    pub(super) scopes: Vec<String>,
}

impl Target<'_> {
    fn scope_key(&self) -> String {
        self.scopes.join(" ")
    }
}

/// A registry client. Make one per process and share it: it keeps connections alive and caches
/// bearer tokens per registry and scope, and which registries speak plain HTTP.
pub struct Client {
    pub(super) opts: RegistryOptions,
    agent: ureq::Agent,
    /// `Authorization` values by (registry, scope key); scope key "" holds Basic credentials,
    /// good for every scope.
    tokens: Mutex<HashMap<(String, String), String>>,
    /// `https://host` or `http://host` by registry.
    bases: Mutex<HashMap<String, String>>,
    /// Credentials found per registry (None: there are none).
    creds: Mutex<HashMap<String, Option<Credentials>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("opts", &self.opts).finish()
    }
}

/// Whether `host` (with its port, if any) is this machine, where plain HTTP is allowed.
fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.split(':').next().unwrap_or(host)
    };
    name == "localhost" || name == "::1" || name.starts_with("127.")
}

/// Percent-encodes a query parameter value.
pub(super) fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Returns true if and only if a transport error may go away on retry (not a TLS verification
/// failure, a bad URL or a protocol violation that will happen again).
fn transport_retryable(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::BodyStalled => !is_tls_verification_error(e),
        _ => false,
    }
}

/// Returns true if and only if the error is a certificate the client refused.
fn is_tls_verification_error(e: &ureq::Error) -> bool {
    let s = e.to_string().to_ascii_lowercase();
    s.contains("certificate") || s.contains("unknownissuer")
}

impl Client {
    /// A client with `opts`. Fails when the certificate directory cannot be read.
    pub fn new(opts: RegistryOptions) -> Result<Client> {
        let mut tls = TlsConfig::builder().disable_verification(!opts.tls_verify);
        if let Some(dir) = &opts.cert_dir {
            let mut roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect();
            let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read", dir, e))?;
            for entry in entries {
                let path = entry.map_err(|e| Error::io("read", dir, e))?.path();
                if path.extension().and_then(|x| x.to_str()) != Some("crt") {
                    continue;
                }
                let pem = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
                let before = roots.len();
                for cert in ureq::tls::parse_pem(&pem) {
                    match cert {
                        Ok(ureq::tls::PemItem::Certificate(c)) => roots.push(c),
                        Ok(_) => {}
                        Err(e) => {
                            return Err(Error::malformed(
                                path.display().to_string(),
                                "certificate",
                                e.to_string(),
                            ));
                        }
                    }
                }
                if roots.len() == before {
                    return Err(Error::malformed(
                        path.display().to_string(),
                        "certificate",
                        "no PEM certificate in the file",
                    ));
                }
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&roots));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls.build())
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .user_agent(concat!("stamp/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            opts,
            agent: ureq::Agent::new_with_config(config),
            tokens: Mutex::new(HashMap::new()),
            bases: Mutex::new(HashMap::new()),
            creds: Mutex::new(HashMap::new()),
        })
    }

    /// `https://host` or `http://host` for `registry`. Plain HTTP is tried only for loopback
    /// registries and with `tls_verify == false`, and only when HTTPS fails for another reason
    /// than a refused certificate (the way Docker treats insecure registries).
    pub(super) fn base_url(&self, registry: &str) -> Result<String> {
        let host = if registry == crate::reference::DEFAULT_REGISTRY {
            "registry-1.docker.io"
        } else {
            registry
        };
        if let Ok(bases) = self.bases.lock() {
            if let Some(b) = bases.get(registry) {
                return Ok(b.clone());
            }
        }
        let https = format!("https://{host}");
        let base = if self.opts.tls_verify && !is_loopback(host) {
            https
        } else {
            let probe = format!("{https}/v2/");
            match self.agent.get(&probe).call() {
                Ok(_) => https,
                Err(e) if self.opts.tls_verify && is_tls_verification_error(&e) => {
                    return Err(Error::Registry {
                        method: "GET",
                        url: probe,
                        status: 0,
                        detail: format!(
                            "{e} (trust the registry's CA with a certificate directory, or turn TLS verification off)"
                        ),
                    });
                }
                Err(e) => {
                    let http = format!("http://{host}");
                    if self.agent.get(&format!("{http}/v2/")).call().is_err() {
                        // Neither answers (yet): decide on the next request, not now.
                        tracing::debug!("{probe}: {e}; plain HTTP does not answer either");
                        return Ok(http);
                    }
                    tracing::debug!("{probe}: {e}; using plain HTTP");
                    http
                }
            }
        };
        if let Ok(mut bases) = self.bases.lock() {
            bases.insert(registry.to_string(), base.clone());
        }
        Ok(base)
    }

    fn credentials(&self, registry: &str) -> Result<Option<Credentials>> {
        if let Some((u, p)) = &self.opts.creds {
            return Ok(Some(Credentials {
                user: u.clone(),
                secret: p.clone(),
            }));
        }
        if let Ok(cache) = self.creds.lock() {
            if let Some(c) = cache.get(registry) {
                return Ok(c.clone());
            }
        }
        let found = auth::lookup(registry, self.opts.auth_file.as_deref())?;
        if let Ok(mut cache) = self.creds.lock() {
            cache.insert(registry.to_string(), found.clone());
        }
        Ok(found)
    }

    fn cached_auth(&self, t: &Target<'_>) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        tokens
            .get(&(t.registry.to_string(), t.scope_key()))
            .or_else(|| tokens.get(&(t.registry.to_string(), String::new())))
            .cloned()
    }

    /// Answers a 401's challenges: fetches a bearer token for the target's scopes, or sets up
    /// Basic credentials.
    fn authenticate(&self, t: &Target<'_>, challenges: &[Challenge], detail: &str) -> Result<()> {
        let creds = self.credentials(t.registry)?;
        let auth_err = |d: String| Error::Auth {
            registry: t.registry.to_string(),
            detail: d,
        };
        if let Some(Challenge::Bearer {
            realm,
            service,
            scope,
        }) = challenges
            .iter()
            .find(|c| matches!(c, Challenge::Bearer { .. }))
        {
            let mut url = realm.clone();
            let mut sep = if url.contains('?') { '&' } else { '?' };
            if let Some(s) = service {
                url.push_str(&format!("{sep}service={}", encode_query(s)));
                sep = '&';
            }
            let scopes: Vec<&str> = if t.scopes.is_empty() {
                scope.iter().map(String::as_str).collect()
            } else {
                t.scopes.iter().map(String::as_str).collect()
            };
            for s in scopes {
                url.push_str(&format!("{sep}scope={}", encode_query(s)));
                sep = '&';
            }
            let mut req = self.agent.get(&url);
            if let Some(c) = &creds {
                req = req.header("Authorization", c.basic_header());
            }
            let mut resp = req.call().map_err(|e| Error::Registry {
                method: "GET",
                url: url.clone(),
                status: 0,
                detail: e.to_string(),
            })?;
            let status = resp.status().as_u16();
            if status == 401 || status == 403 {
                let msg = error_detail(&mut resp);
                return Err(auth_err(if creds.is_some() {
                    format!("the token service refused the credentials: {msg}")
                } else {
                    format!("the token service requires credentials: {msg}")
                }));
            }
            if !resp.status().is_success() {
                return Err(Error::Registry {
                    method: "GET",
                    url,
                    status,
                    detail: error_detail(&mut resp),
                });
            }
            let body = read_limited(&mut resp, MAX_SMALL_BODY).map_err(|e| Error::Registry {
                method: "GET",
                url: url.clone(),
                status,
                detail: e,
            })?;
            #[derive(serde::Deserialize)]
            struct TokenAnswer {
                token: Option<String>,
                access_token: Option<String>,
            }
            let a: TokenAnswer = serde_json::from_slice(&body)
                .map_err(|e| Error::malformed(url.clone(), "token answer", e.to_string()))?;
            let token = a
                .token
                .or(a.access_token)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| Error::malformed(url.clone(), "token answer", "no token"))?;
            if let Ok(mut tokens) = self.tokens.lock() {
                tokens.insert(
                    (t.registry.to_string(), t.scope_key()),
                    format!("Bearer {token}"),
                );
            }
            return Ok(());
        }
        if challenges.iter().any(|c| matches!(c, Challenge::Basic)) {
            let Some(c) = creds else {
                return Err(auth_err(format!(
                    "the registry requires credentials and none were found: {detail}"
                )));
            };
            if let Ok(mut tokens) = self.tokens.lock() {
                tokens.insert((t.registry.to_string(), String::new()), c.basic_header());
            }
            return Ok(());
        }
        Err(auth_err(format!(
            "the registry asks for an authentication scheme stamp does not speak: {detail}"
        )))
    }

    /// Sleeps before retry number `attempt` (0-based).
    pub(super) fn backoff(&self, attempt: u32) {
        let base = self
            .opts
            .backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(MAX_BACKOFF);
        // Jitter from the clock's nanoseconds: enough to spread parallel transfers.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = base.mul_f64(f64::from(nanos % 1000) / 1000.0);
        std::thread::sleep(base + jitter);
    }

    /// One request, without retries or authentication.
    fn run_once(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, String)],
        auth: Option<&str>,
        body: &ReqBody<'_>,
    ) -> std::result::Result<Response<ureq::Body>, RunError> {
        let mut b = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        if let Some(a) = auth {
            b = b.header("Authorization", a);
        }
        // A POST or PUT without a body still says so (Content-Length: 0), not chunked.
        let empty = ReqBody::Bytes(&[]);
        let body = match body {
            ReqBody::Empty if !matches!(method, "GET" | "HEAD" | "DELETE") => &empty,
            b => b,
        };
        let r = match body {
            ReqBody::Empty => {
                let req = b.body(()).map_err(|e| RunError::Fatal(e.to_string()))?;
                self.agent.run(req)
            }
            ReqBody::Bytes(bytes) => {
                let req = b
                    .header("Content-Length", bytes.len().to_string())
                    .body(*bytes)
                    .map_err(|e| RunError::Fatal(e.to_string()))?;
                self.agent.run(req)
            }
            ReqBody::Source(src, digest, size, progress) => {
                let reader = src.open().map_err(|e| {
                    RunError::Source(Error::BlobIo {
                        op: "open",
                        digest: **digest,
                        source: e,
                    })
                })?;
                let mut counting = ProgressReader {
                    inner: reader,
                    done: 0,
                    progress: *progress,
                };
                let req = b
                    .header("Content-Length", size.to_string())
                    .header("Content-Type", "application/octet-stream")
                    .body(ureq::SendBody::from_reader(&mut counting))
                    .map_err(|e| RunError::Fatal(e.to_string()))?;
                self.agent.run(req)
            }
        };
        r.map_err(RunError::Transport)
    }

    /// Sends a request, answering authentication challenges and (if `retry`) retrying 5xx, 429
    /// and connection failures with backoff. Returns every other response, whatever its status.
    pub(super) fn send(
        &self,
        t: &Target<'_>,
        method: &'static str,
        url: &str,
        headers: &[(&str, String)],
        body: &ReqBody<'_>,
        retry: bool,
    ) -> Result<Response<ureq::Body>> {
        let mut attempt = 0;
        let mut authenticated = false;
        loop {
            let auth = self.cached_auth(t);
            let result = self.run_once(method, url, headers, auth.as_deref(), body);
            let mut resp = match result {
                Ok(r) => r,
                Err(RunError::Source(e)) => return Err(e),
                Err(RunError::Fatal(d)) => {
                    return Err(Error::Registry {
                        method,
                        url: url.to_string(),
                        status: 0,
                        detail: d,
                    });
                }
                Err(RunError::Transport(e)) => {
                    if retry && attempt < self.opts.retries && transport_retryable(&e) {
                        tracing::debug!("{method} {url}: {e}; retrying");
                        self.backoff(attempt);
                        attempt += 1;
                        continue;
                    }
                    return Err(Error::Registry {
                        method,
                        url: url.to_string(),
                        status: 0,
                        detail: e.to_string(),
                    });
                }
            };
            let status = resp.status().as_u16();
            if status == 401 {
                let challenges: Vec<Challenge> = resp
                    .headers()
                    .get_all("www-authenticate")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(auth::parse_challenges)
                    .collect();
                let detail = error_detail(&mut resp);
                if authenticated || challenges.is_empty() {
                    return Err(Error::Auth {
                        registry: t.registry.to_string(),
                        detail: if self.credentials(t.registry)?.is_some() {
                            format!("credentials refused: {detail}")
                        } else {
                            format!("access denied and no credentials found: {detail}")
                        },
                    });
                }
                self.authenticate(t, &challenges, &detail)?;
                authenticated = true;
                continue;
            }
            if status == 403 {
                return Err(Error::Auth {
                    registry: t.registry.to_string(),
                    detail: format!("{method} {url}: denied: {}", error_detail(&mut resp)),
                });
            }
            if (status >= 500 || status == 429) && retry && attempt < self.opts.retries {
                tracing::debug!("{method} {url}: {status}; retrying");
                // A registry that says how long to wait is believed, within reason.
                if let Some(secs) = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    std::thread::sleep(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
                }
                self.backoff(attempt);
                attempt += 1;
                continue;
            }
            return Ok(resp);
        }
    }

    /// The manifest (or index) `r` names.
    ///
    /// Accepts OCI and Docker manifests and indexes, at most [`MAX_MANIFEST_SIZE`] bytes. The
    /// media type comes from the body's `mediaType`, else from `Content-Type`. The digest is
    /// verified against the reference's digest when pulled by digest, and against
    /// `Docker-Content-Digest` when the registry sends one.
    pub fn get_manifest(&self, r: &Reference) -> Result<Manifest> {
        let base = self.base_url(&r.registry)?;
        let url = format!(
            "{base}/v2/{}/manifests/{}",
            r.repository,
            r.manifest_selector()
        );
        let t = Target {
            registry: &r.registry,
            scopes: vec![format!("repository:{}:pull", r.repository)],
        };
        let accept = [
            media::OCI_MANIFEST,
            media::OCI_INDEX,
            media::DOCKER_MANIFEST,
            media::DOCKER_MANIFEST_LIST,
        ]
        .join(", ");
        let mut resp = self.send(
            &t,
            "GET",
            &url,
            &[("Accept", accept)],
            &ReqBody::Empty,
            true,
        )?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Err(Error::NotFound(r.to_string()));
        }
        if status != 200 {
            return Err(registry_error("GET", &url, &mut resp));
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type");
        let sent_digest = header("docker-content-digest");
        if let Some(len) = header("content-length").and_then(|l| l.parse::<u64>().ok()) {
            if len > MAX_MANIFEST_SIZE {
                return Err(Error::malformed(
                    url,
                    "manifest",
                    format!("{len} bytes, more than the {MAX_MANIFEST_SIZE} allowed"),
                ));
            }
        }
        let bytes = read_limited(&mut resp, MAX_MANIFEST_SIZE).map_err(|d| {
            if d.contains("limit") {
                Error::malformed(
                    url.clone(),
                    "manifest",
                    format!("more than the {MAX_MANIFEST_SIZE} bytes allowed"),
                )
            } else {
                Error::Registry {
                    method: "GET",
                    url: url.clone(),
                    status,
                    detail: d,
                }
            }
        })?;
        let digest = Digest::of(&bytes);
        if let Some(expected) = r.digest {
            if expected != digest {
                return Err(Error::DigestMismatch {
                    source_name: url,
                    expected,
                    actual: digest,
                    size: bytes.len() as u64,
                });
            }
        }
        if let Some(sent) = sent_digest.and_then(|s| s.parse::<Digest>().ok()) {
            if sent != digest {
                return Err(Error::DigestMismatch {
                    source_name: url,
                    expected: sent,
                    actual: digest,
                    size: bytes.len() as u64,
                });
            }
        }
        let media_type = manifest_media_type(&url, &bytes, content_type.as_deref())?;
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Uploads a manifest or index under `r`'s tag (or digest, when it has no tag) and returns
    /// its digest. The bytes are checked to be a manifest of `media_type` first.
    pub fn put_manifest(&self, r: &Reference, bytes: &[u8], media_type: &str) -> Result<Digest> {
        let base = self.base_url(&r.registry)?;
        let digest = Digest::of(bytes);
        let selector = match (&r.tag, &r.digest) {
            (Some(t), _) => t.clone(),
            (None, Some(d)) => {
                if *d != digest {
                    return Err(Error::DigestMismatch {
                        source_name: format!("manifest for {r}"),
                        expected: *d,
                        actual: digest,
                        size: bytes.len() as u64,
                    });
                }
                d.to_string()
            }
            (None, None) => digest.to_string(),
        };
        let url = format!("{base}/v2/{}/manifests/{selector}", r.repository);
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(Error::malformed(
                url,
                "manifest",
                format!(
                    "{} bytes, more than the {MAX_MANIFEST_SIZE} allowed",
                    bytes.len()
                ),
            ));
        }
        let found = manifest_media_type(&url, bytes, Some(media_type))?;
        if found != media_type {
            return Err(Error::malformed(
                url,
                "manifest",
                format!("its mediaType is {found}, not {media_type}"),
            ));
        }
        let t = Target {
            registry: &r.registry,
            scopes: vec![format!("repository:{}:pull,push", r.repository)],
        };
        let mut resp = self.send(
            &t,
            "PUT",
            &url,
            &[("Content-Type", media_type.to_string())],
            &ReqBody::Bytes(bytes),
            true,
        )?;
        if resp.status().as_u16() != 201 {
            return Err(registry_error("PUT", &url, &mut resp));
        }
        if let Some(sent) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok())
        {
            if sent != digest {
                return Err(Error::DigestMismatch {
                    source_name: url,
                    expected: digest,
                    actual: sent,
                    size: bytes.len() as u64,
                });
            }
        }
        Ok(digest)
    }
}

/// Why one request failed before there was a response.
enum RunError {
    /// The connection or the protocol failed.
    Transport(ureq::Error),
    /// The blob source could not be opened.
    Source(Error),
    /// The request could not be built (a bad URL or header): retrying will not help.
    Fatal(String),
}

/// Counts bytes read from a push source and reports them.
struct ProgressReader<'a> {
    inner: Box<dyn Read + 'a>,
    done: u64,
    progress: &'a dyn Fn(u64),
}

impl Read for ProgressReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.progress)(self.done);
        Ok(n)
    }
}

/// Checks that `bytes` is a JSON manifest or index and returns its media type (the body's
/// `mediaType`, else `content_type`).
pub(super) fn manifest_media_type(
    source: &str,
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::malformed(source, "manifest", format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::malformed(source, "manifest", "not a JSON object"))?;
    let from_body = match obj.get("mediaType") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(Error::malformed(
                source,
                "manifest",
                "mediaType is not a string",
            ));
        }
    };
    let from_header = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim().to_string())
        .filter(|c| !c.is_empty());
    let media_type = from_body
        .or(from_header)
        .ok_or_else(|| Error::malformed(source, "manifest", "no mediaType and no Content-Type"))?;
    if !(media::is_manifest(&media_type) || media::is_index(&media_type)) {
        return Err(Error::UnsupportedMediaType {
            source_name: source.to_string(),
            media_type,
        });
    }
    match obj.get("schemaVersion").and_then(|s| s.as_u64()) {
        Some(2) => Ok(media_type),
        other => Err(Error::malformed(
            source,
            "manifest",
            format!("schemaVersion is {other:?}, not 2"),
        )),
    }
}

/// Reads a small body, failing past `limit` bytes.
pub(super) fn read_limited(
    resp: &mut Response<ureq::Body>,
    limit: u64,
) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > limit {
        return Err(format!("body larger than the limit of {limit} bytes"));
    }
    Ok(out)
}

/// The registry's error message from a response body: `CODE: message` from
/// `{"errors":[{"code","message"}]}`, else the start of the body.
pub(super) fn error_detail(resp: &mut Response<ureq::Body>) -> String {
    let reason = resp.status().canonical_reason().unwrap_or("").to_string();
    let body = match read_limited(resp, MAX_SMALL_BODY) {
        Ok(b) => b,
        Err(e) => return format!("{reason} ({e})"),
    };
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<OneError>,
    }
    #[derive(serde::Deserialize)]
    struct OneError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(&body) {
        if !e.errors.is_empty() {
            return e
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
        }
    }
    let text: String = String::from_utf8_lossy(&body)
        .chars()
        .take(200)
        .collect::<String>()
        .trim()
        .to_string();
    if text.is_empty() {
        reason
    } else {
        format!("{reason}: {text}")
    }
}

/// An [`Error::Registry`] for an unexpected response.
pub(super) fn registry_error(
    method: &'static str,
    url: &str,
    resp: &mut Response<ureq::Body>,
) -> Error {
    let status = resp.status().as_u16();
    Error::Registry {
        method,
        url: url.to_string(),
        status,
        detail: error_detail(resp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "localhost:5000", "127.0.0.1:1", "[::1]:5000"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1:5000", "localhost.example"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn manifest_media_types() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        assert_eq!(
            manifest_media_type("u", m, None).ok().as_deref(),
            Some(media::OCI_MANIFEST)
        );
        let m = br#"{"schemaVersion":2}"#;
        assert_eq!(
            manifest_media_type("u", m, Some("application/vnd.oci.image.index.v1+json; x=y"))
                .ok()
                .as_deref(),
            Some(media::OCI_INDEX)
        );
        assert!(matches!(
            manifest_media_type(
                "u",
                br#"{"schemaVersion":2,"mediaType":"text/plain"}"#,
                None
            ),
            Err(Error::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            manifest_media_type("u", b"{not json", None),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            manifest_media_type("u", br#"{"schemaVersion":1}"#, Some(media::DOCKER_MANIFEST)),
            Err(Error::Malformed { .. })
        ));
        assert!(manifest_media_type("u", b"[]", None).is_err());
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            encode_query("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
