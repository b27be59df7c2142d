//! Test support: a real `moto_server` on loopback, one per test process, and configurations
//! that point at it with dummy keys.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use stamp_aws::config::{AwsConfig, ConfigOptions};

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
