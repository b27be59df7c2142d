//! A QMP (QEMU Machine Protocol) client: JSON lines over the machine's Unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Error, Result};

/// Longest line QEMU sends that we read (events and answers are far smaller).
const MAX_LINE: usize = 1 << 20;

/// A connection in command mode (after `qmp_capabilities`).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    socket: String,
}

impl Qmp {
    /// Connects to `socket`, retrying until `timeout` while QEMU creates it, and enters
    /// command mode.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp> {
        let end = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() < end => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(Error::io("connect to QMP socket", socket, e)),
            }
        };
        let io = |e| Error::io("talk to QMP socket", socket, e);
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            socket: socket.display().to_string(),
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(qmp.protocol(format!("no QMP greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments`; its `return` value, or its `error` as an error.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| Error::io("write to QMP socket", &self.socket, e))?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let desc = e
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                return Err(Error::Driver(format!("QMP {command} failed: {desc}")));
            }
            return Err(self.protocol(format!("unexpected answer to {command}: {v}")));
        }
    }

    /// `query-status`'s `status` (`running`, `paused`, `prelaunch`, `shutdown`...).
    pub fn status(&mut self) -> Result<String> {
        let r = self.execute("query-status", None)?;
        r.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.protocol(format!("query-status without a status: {r}")))
    }

    /// Reads one JSON message.
    fn read(&mut self) -> Result<Value> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io("read from QMP socket", &self.socket, e))?;
        if n == 0 {
            return Err(self.protocol("QEMU closed the connection".into()));
        }
        serde_json::from_slice(&line).map_err(|e| {
            self.protocol(format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&line)
            ))
        })
    }

    fn protocol(&self, message: String) -> Error {
        Error::Driver(format!("QMP socket {}: {message}", self.socket))
    }
}

use std::io::Read;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU: greets, then answers each command from `answers` in turn, with an event
    /// before the first answer.
    fn fake(path: &Path, answers: Vec<&'static str>) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            let mut seen = Vec::new();
            for (i, a) in answers.into_iter().enumerate() {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                seen.push(line.trim().to_string());
                if i == 1 {
                    w.write_all(b"{\"event\": \"RESUME\", \"timestamp\": {}}\n")
                        .unwrap();
                }
                w.write_all(a.as_bytes()).unwrap();
                w.write_all(b"\n").unwrap();
            }
            seen
        })
    }

    #[test]
    fn talks_qmp() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qmp.sock");
        let server = fake(
            &sock,
            vec![
                r#"{"return": {}}"#,
                r#"{"return": {"status": "running", "running": true}}"#,
                r#"{"error": {"class": "GenericError", "desc": "no such thing"}}"#,
            ],
        );
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        assert_eq!(q.status().unwrap(), "running");
        let e = q
            .execute("bogus", Some(json!({"a": 1})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("QMP bogus failed: no such thing"), "{e}");
        let seen = server.join().unwrap();
        assert_eq!(seen[0], r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(seen[1], r#"{"execute":"query-status"}"#);
        assert_eq!(seen[2], r#"{"arguments":{"a":1},"execute":"bogus"}"#);
    }

    #[test]
    fn missing_socket_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let e = Qmp::connect(&d.path().join("none.sock"), Duration::from_millis(100))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("none.sock"), "{e}");
    }
}
