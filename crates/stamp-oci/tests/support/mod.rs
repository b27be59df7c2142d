//! Test support for the registry client: real `docker-registry` instances on loopback (plain
//! HTTP, htpasswd Basic auth, TLS with a self-signed certificate), shared per flavour, and a
//! fault-injecting proxy that can also play a bearer-token registry.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// The user and password of the htpasswd flavour.
pub const USER: &str = "stamp";
/// The password of [`USER`].
pub const PASSWORD: &str = "s3cret-pw";

/// How a test registry is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Plain HTTP, no auth.
    Plain,
    /// Plain HTTP, htpasswd Basic auth with [`USER`] / [`PASSWORD`].
    Basic,
    /// HTTPS with a self-signed certificate for 127.0.0.1, no auth.
    Tls,
}

/// A running `docker-registry`. It dies with the test process: it runs under a shell that
/// kills it when its stdin (held by this process) closes.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// The address.
    pub addr: SocketAddr,
    /// For [`Flavour::Tls`], a directory holding the CA certificate as `ca.crt`.
    pub cert_dir: Option<PathBuf>,
    dir: tempfile::TempDir,
    child: Mutex<Child>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            // Closing its stdin makes the shell stop the registry; SIGKILL would orphan it.
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

/// The shared registry of `flavour`, started on first use.
pub fn registry(flavour: Flavour) -> &'static Registry {
    static PLAIN: OnceLock<Registry> = OnceLock::new();
    static BASIC: OnceLock<Registry> = OnceLock::new();
    static TLS: OnceLock<Registry> = OnceLock::new();
    let cell = match flavour {
        Flavour::Plain => &PLAIN,
        Flavour::Basic => &BASIC,
        Flavour::Tls => &TLS,
    };
    cell.get_or_init(|| start(flavour))
}

/// A repository name no other test uses.
pub fn unique_repo(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Starts a registry of `flavour` and waits until it answers.
pub fn start(flavour: Flavour) -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut extra = String::new();
    let mut cert_dir = None;
    match flavour {
        Flavour::Plain => {}
        Flavour::Basic => {
            let line = run(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
            std::fs::write(d.join("htpasswd"), line).unwrap();
            extra.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: stamp-test\n    path: {}\n",
                d.join("htpasswd").display()
            ));
        }
        Flavour::Tls => {
            run(Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=stamp-test"])
                .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
                // A server certificate, not a CA: rustls refuses a CA as an end entity.
                .args(["-addext", "basicConstraints=critical,CA:FALSE"])
                .arg("-keyout")
                .arg(d.join("key.pem"))
                .arg("-out")
                .arg(d.join("cert.pem"))
                .stderr(Stdio::null()));
            let certs = d.join("certs");
            std::fs::create_dir(&certs).unwrap();
            std::fs::copy(d.join("cert.pem"), certs.join("ca.crt")).unwrap();
            cert_dir = Some(certs);
        }
    }
    // The port may be taken between free_port and the registry's bind: try a few.
    for _ in 0..5 {
        let port = free_port();
        let tls = if flavour == Flavour::Tls {
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                d.join("cert.pem").display(),
                d.join("key.pem").display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: stamp-test-secret\n{tls}{extra}",
            d.join("data").display()
        );
        let cfg = d.join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(d.join("registry.log")).unwrap();
        let child = Command::new("sh")
            .arg("-c")
            // The shell stops the registry and deletes its data when its stdin closes: on
            // drop, and also when the test process exits (shared registries live in statics,
            // which are never dropped).
            .arg(r#"docker-registry serve "$1" & pid=$!; read _ignored; kill $pid; wait $pid; rm -rf "$2""#)
            .arg("sh")
            .arg(&cfg)
            .arg(d)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (run scripts/install-test-deps.sh)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut child = child;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut up = false;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                up = true;
                break;
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if up {
            return Registry {
                host: format!("127.0.0.1:{port}"),
                addr,
                cert_dir,
                dir,
                child: Mutex::new(child),
            };
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!(
        "docker-registry did not start: {}",
        std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
    );
}

/// What the proxy does to a request that a [`Rule`] matches.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answers with this status (and a registry-style JSON error) without forwarding.
    Status(u16),
    /// Forwards, but closes the connection after this many bytes of the response body.
    CutBody(usize),
    /// Forwards, with the last byte of the response body flipped.
    FlipByte,
    /// Answers 200 with this Content-Type and body without forwarding.
    Respond(String, Vec<u8>),
    /// Reads the request, then closes the connection without answering.
    Drop,
}

/// A fault for the next `times` requests whose method is `method` and whose path contains
/// `path_contains`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// HTTP method.
    pub method: &'static str,
    /// A substring of the request path.
    pub path_contains: String,
    /// What to do.
    pub fault: Fault,
    /// How many matching requests get it.
    pub times: usize,
}

impl Rule {
    /// A rule.
    pub fn new(method: &'static str, path_contains: &str, fault: Fault, times: usize) -> Rule {
        Rule {
            method,
            path_contains: path_contains.to_string(),
            fault,
            times,
        }
    }
}

struct ProxyState {
    upstream: SocketAddr,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<String>>,
    /// In bearer mode, the credentials the token endpoint wants (None: anonymous tokens).
    bearer: Option<Option<(String, String)>>,
    addr: SocketAddr,
}

/// A one-request-per-connection HTTP proxy in front of a plain registry that injects faults
/// and, in bearer mode, demands tokens from its own `/token` endpoint.
pub struct Proxy {
    /// `127.0.0.1:PORT`.
    pub host: String,
    state: Arc<ProxyState>,
}

impl Proxy {
    /// A proxy to `upstream` applying `rules`.
    pub fn start(upstream: SocketAddr, rules: Vec<Rule>) -> Proxy {
        Self::start_with(upstream, rules, None)
    }

    /// A proxy that requires bearer tokens, handed out by its `/token` endpoint to anyone
    /// (`creds == None`) or only for Basic `creds`.
    pub fn bearer(upstream: SocketAddr, creds: Option<(&str, &str)>) -> Proxy {
        Self::start_with(
            upstream,
            Vec::new(),
            Some(creds.map(|(u, p)| (u.to_string(), p.to_string()))),
        )
    }

    fn start_with(
        upstream: SocketAddr,
        rules: Vec<Rule>,
        bearer: Option<Option<(String, String)>>,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            upstream,
            rules: Mutex::new(rules),
            log: Mutex::new(Vec::new()),
            bearer,
            addr,
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = handle(&s, conn);
                });
            }
        });
        Proxy {
            host: addr.to_string(),
            state,
        }
    }

    /// `METHOD path` of every request received so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    /// Adds a rule.
    pub fn add_rule(&self, rule: Rule) {
        self.state.rules.lock().unwrap().push(rule);
    }
}

fn respond(conn: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status} Injected\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
    let _ = conn.flush();
}

fn handle(state: &ProxyState, mut conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    assert!(
        header("transfer-encoding").is_none(),
        "the test proxy does not do chunked requests"
    );
    let len: usize = header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    state.log.lock().unwrap().push(format!("{method} {path}"));

    if let Some(creds) = &state.bearer {
        if path.starts_with("/token") {
            if let Some((u, p)) = creds {
                let want = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                );
                if header("authorization").as_deref() != Some(want.as_str()) {
                    respond(&mut conn, 401, &[], br#"{"details":"bad credentials"}"#);
                    return Ok(());
                }
            }
            respond(
                &mut conn,
                200,
                &[("Content-Type", "application/json".into())],
                br#"{"access_token":"good-token","expires_in":300}"#,
            );
            return Ok(());
        }
        if header("authorization").as_deref() != Some("Bearer good-token") {
            let challenge = format!(
                r#"Bearer realm="http://{}/token",service="stamp-test",scope="repository:x:pull""#,
                state.addr
            );
            respond(
                &mut conn,
                401,
                &[("WWW-Authenticate", challenge)],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
            return Ok(());
        }
    }

    let fault = {
        let mut rules = state.rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|r| r.times > 0 && r.method == method && path.contains(&r.path_contains))
            .map(|r| {
                r.times -= 1;
                r.fault.clone()
            })
    };
    match &fault {
        Some(Fault::Status(s)) => {
            respond(
                &mut conn,
                *s,
                &[("Content-Type", "application/json".into())],
                br#"{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}"#,
            );
            return Ok(());
        }
        Some(Fault::Drop) => {
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
        Some(Fault::Respond(ct, b)) => {
            respond(&mut conn, 200, &[("Content-Type", ct.clone())], b);
            return Ok(());
        }
        _ => {}
    }

    let mut up = TcpStream::connect(state.upstream)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in &headers {
        if k.eq_ignore_ascii_case("connection") {
            continue;
        }
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    up.write_all(req.as_bytes())?;
    up.write_all(&body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(resp.len(), |p| p + 4);
    let (head, rbody) = resp.split_at(split);
    match fault {
        Some(Fault::CutBody(n)) => {
            conn.write_all(head)?;
            conn.write_all(&rbody[..n.min(rbody.len())])?;
            conn.flush()?;
            let _ = conn.shutdown(Shutdown::Both);
        }
        Some(Fault::FlipByte) => {
            let mut b = rbody.to_vec();
            if let Some(last) = b.last_mut() {
                *last ^= 0xff;
            }
            conn.write_all(head)?;
            conn.write_all(&b)?;
        }
        _ => {
            conn.write_all(&resp)?;
        }
    }
    conn.flush()?;
    Ok(())
}

/// Writes a podman-style auth.json for `host` into `dir` and returns its path.
pub fn write_auth_file(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join("auth.json");
    std::fs::write(
        &path,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    path
}
