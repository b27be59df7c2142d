//! Test support: a real `moto_server` on loopback, one per test process, and configurations
//! that point at it with dummy keys.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use stamp_aws::config::{AwsConfig, ConfigOptions};

pub mod fake_ec2;

/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// A running moto_server. It dies with the test process: it runs under a shell that kills it
/// when its stdin (held by this process) closes.
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Mutex<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

/// The shared moto_server, started on first use.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(start)
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn start() -> Moto {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..5 {
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            // Closing stdin (drop, or this process exiting) stops the server.
            .arg(
                r#"moto_server -H 127.0.0.1 -p "$1" & pid=$!; read _ignored; kill $pid; wait $pid"#,
            )
            .arg("sh")
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("sh");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut up = false;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                up = true;
                break;
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if up {
            return Moto {
                url: format!("http://127.0.0.1:{port}"),
                child: Mutex::new(child),
                _dir: dir,
            };
        }
        drop(child.stdin.take());
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!(
        "moto_server did not start (run scripts/install-test-deps.sh): {}",
        std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default()
    );
}

/// Runs `code` under python3 with boto3's `s3` client pointed at moto; returns stdout.
pub fn boto(code: &str) -> String {
    let script = format!(
        "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', region_name='{}', \
         aws_access_key_id='AKIDTESTTESTTESTTEST', aws_secret_access_key='x')\n{code}",
        moto().url,
        REGION
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 failed:\n{code}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A configuration with dummy keys pointing every service at moto.
pub fn config() -> AwsConfig {
    let opts = ConfigOptions {
        region: Some(REGION.into()),
        access_key: Some("AKIDTESTTESTTESTTEST".into()),
        secret_key: Some("dummy-secret".into()),
        endpoint_url: Some(moto().url.clone()),
        ..Default::default()
    };
    AwsConfig::load_with(&opts, &|_| None).unwrap()
}

/// A client for [`config`].
pub fn client() -> stamp_aws::http::Client {
    stamp_aws::http::Client::new(&config())
}

/// A canned answer the [`Proxy`] gives instead of forwarding.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Requests whose `METHOD path` or form body contains this (`Action=RegisterImage`) get it.
    pub matching: String,
    /// How many of them.
    pub times: usize,
    /// Status of the answer.
    pub status: u16,
    /// Extra headers of the answer.
    pub headers: Vec<(String, String)>,
    /// Body of the answer.
    pub body: String,
}

/// One request as the [`Proxy`] saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `METHOD path`.
    pub line: String,
    /// The body, if it is a form (EC2 Query API requests), else empty.
    pub form: String,
    /// The `Credential=` of the Authorization header: `KEY/DATE/REGION/SERVICE/aws4_request`.
    pub credential: String,
}

impl Recorded {
    /// The EC2 `Action` of a form request, if any.
    pub fn action(&self) -> Option<&str> {
        self.form
            .split('&')
            .find_map(|kv| kv.strip_prefix("Action="))
    }
}

/// A one-request-per-connection HTTP proxy in front of moto that answers some requests with
/// [`Fault`]s (matched on `METHOD path` or on the form body), delays some, and records every
/// request ([`Recorded`]).
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    faults: std::sync::Arc<Mutex<Vec<Fault>>>,
    log: std::sync::Arc<Mutex<Vec<Recorded>>>,
}

impl Proxy {
    /// A proxy to moto with `faults`.
    pub fn start(faults: Vec<Fault>) -> Proxy {
        Self::start_with(faults, Vec::new())
    }

    /// A proxy to moto with `faults` that holds requests matching a `delays` entry (on
    /// `METHOD path`) for its duration before forwarding them.
    pub fn start_with(faults: Vec<Fault>, delays: Vec<(String, Duration)>) -> Proxy {
        use std::io::{BufRead, BufReader, Read, Write};
        let upstream = moto().url.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let faults = std::sync::Arc::new(Mutex::new(faults));
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (f, l) = (faults.clone(), log.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (f, l, upstream) = (f.clone(), l.clone(), upstream.clone());
                let delays = delays.clone();
                std::thread::spawn(move || -> std::io::Result<()> {
                    let mut reader = BufReader::new(conn.try_clone()?);
                    let mut head = String::new();
                    let mut len = 0usize;
                    let mut form = false;
                    let mut credential = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line)? == 0 {
                            return Ok(());
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                            if k.eq_ignore_ascii_case("connection") {
                                continue;
                            }
                            if k.eq_ignore_ascii_case("content-type") {
                                form = v.contains("x-www-form-urlencoded");
                            }
                            if k.eq_ignore_ascii_case("authorization")
                                && let Some(c) = v.split("Credential=").nth(1)
                            {
                                credential = c.split(',').next().unwrap_or("").to_string();
                            }
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let mut body = vec![0u8; len];
                    reader.read_exact(&mut body)?;
                    let request_line = head.lines().next().unwrap_or("").to_string();
                    let what = request_line
                        .rsplit_once(' ')
                        .map_or(request_line.clone(), |(a, _)| a.to_string());
                    let form = if form {
                        String::from_utf8_lossy(&body).into_owned()
                    } else {
                        String::new()
                    };
                    l.lock().unwrap().push(Recorded {
                        line: what.clone(),
                        form: form.clone(),
                        credential,
                    });
                    if let Some((_, d)) = delays.iter().find(|(m, _)| what.contains(m.as_str())) {
                        std::thread::sleep(*d);
                    }
                    let fault = {
                        let mut faults = f.lock().unwrap();
                        faults
                            .iter_mut()
                            .find(|x| {
                                x.times > 0
                                    && (what.contains(&x.matching)
                                        || (!form.is_empty() && form.contains(&x.matching)))
                            })
                            .map(|x| {
                                x.times -= 1;
                                x.clone()
                            })
                    };
                    if let Some(x) = fault {
                        let mut resp = format!(
                            "HTTP/1.1 {} Injected\r\nContent-Length: {}\r\nConnection: close\r\n",
                            x.status,
                            x.body.len()
                        );
                        for (k, v) in &x.headers {
                            resp.push_str(&format!("{k}: {v}\r\n"));
                        }
                        resp.push_str("\r\n");
                        resp.push_str(&x.body);
                        conn.write_all(resp.as_bytes())?;
                        return Ok(());
                    }
                    let mut up = TcpStream::connect(&upstream)?;
                    up.write_all(head.as_bytes())?;
                    up.write_all(b"Connection: close\r\n\r\n")?;
                    up.write_all(&body)?;
                    let mut resp = Vec::new();
                    up.read_to_end(&mut resp)?;
                    conn.write_all(&resp)?;
                    Ok(())
                });
            }
        });
        Proxy { url, faults, log }
    }

    /// `METHOD path` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.line.clone())
            .collect()
    }

    /// Every request so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// The form bodies of the EC2 requests of `action` so far.
    pub fn forms(&self, action: &str) -> Vec<String> {
        self.recorded()
            .into_iter()
            .filter(|r| r.action() == Some(action))
            .map(|r| r.form)
            .collect()
    }

    /// Faults not used up.
    pub fn unused_faults(&self) -> usize {
        self.faults.lock().unwrap().iter().map(|f| f.times).sum()
    }

    /// A client that goes through this proxy.
    pub fn client(&self) -> stamp_aws::http::Client {
        stamp_aws::http::Client::new(&config().with_endpoint(&self.url))
    }
}
