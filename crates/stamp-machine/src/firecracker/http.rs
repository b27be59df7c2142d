//! A minimal HTTP/1.1 client over a Unix socket, enough for Firecracker's API: one request per
//! connection, `Content-Length` bodies, bounded reads and timeouts on every read and write.
//! Firecracker's server (micro_http) never sends chunked bodies, and stamp never asks for them.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest status line plus headers accepted (Firecracker's are under 200 bytes).
pub const MAX_HEAD: usize = 16 << 10;

/// Largest response body accepted (Firecracker's largest, GET /vm/config, is a few KiB).
pub const MAX_BODY: usize = 1 << 20;

/// Longest path `sockaddr_un` holds (108 bytes with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A response: its status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (204 for Firecracker's successful PUTs and PATCHes).
    pub status: u16,
    /// The body (empty when there is none).
    pub body: Vec<u8>,
}

/// Connects to the Unix socket at `path`. A path longer than `sockaddr_un` holds is reached
/// through its directory opened with `O_PATH` (`/proc/self/fd/N/NAME`).
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return UnixStream::connect(path);
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path has no directory",
        ));
    };
    let dir = rustix::fs::open(
        parent,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    use std::os::fd::AsRawFd;
    let short = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    UnixStream::connect(short)
}

/// Sends one request on a new connection to `socket` and reads the response. `timeout` bounds
/// each read and write (not the whole exchange).
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Response> {
    let mut stream = connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&message)?;
    stream.flush()?;
    read_response(&mut stream, method == "HEAD")
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Reads a response from `r`: the head up to `MAX_HEAD` bytes, then a body of `Content-Length`
/// bytes (at most `MAX_BODY`), or up to the end of the stream when there is no length.
pub fn read_response(r: &mut impl Read, head_only: bool) -> io::Result<Response> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid(format!(
                "response head longer than {MAX_HEAD} bytes"
            )));
        }
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed without a response",
                )
            } else {
                invalid(format!(
                    "the connection closed after {} bytes, within the response head",
                    buf.len()
                ))
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > MAX_HEAD {
        return Err(invalid(format!(
            "response head longer than {MAX_HEAD} bytes"
        )));
    }
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status(status_line)?;
    let mut length: Option<usize> = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("malformed header line '{line}'")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| invalid(format!("bad Content-Length '{value}'")))?;
            if n > MAX_BODY {
                return Err(invalid(format!(
                    "response body of {n} bytes is larger than the {MAX_BODY} accepted"
                )));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(invalid(format!("unsupported Transfer-Encoding '{value}'")));
        }
    }
    let mut body = buf.split_off(head_end + 4);
    let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
        body.clear();
        return Ok(Response { status, body });
    }
    match length {
        Some(n) => {
            if body.len() > n {
                body.truncate(n);
            }
            let have = body.len();
            body.resize(n, 0);
            r.read_exact(&mut body[have..])?;
        }
        None => {
            // No length: the body runs to the end of the connection.
            loop {
                if body.len() > MAX_BODY {
                    return Err(invalid(format!(
                        "response body larger than the {MAX_BODY} bytes accepted"
                    )));
                }
                let n = r.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
    }
    Ok(Response { status, body })
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status(line: &str) -> io::Result<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(invalid(format!("not an HTTP/1.x status line: '{line}'")));
    }
    code.parse::<u16>()
        .ok()
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| invalid(format!("bad status code in '{line}'")))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::os::unix::net::UnixListener;

    fn parse(bytes: &[u8]) -> io::Result<Response> {
        read_response(&mut Cursor::new(bytes.to_vec()), false)
    }

    #[test]
    fn no_content_and_length_bodies() {
        let r =
            parse(b"HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n")
                .unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
        let r = parse(
            b"HTTP/1.1 400 \r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"fault_message\":\"no\"}",
        )
        .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.body, b"{\"fault_message\":\"no\"}");
        // Without a length the body runs to the end.
        let r = parse(b"HTTP/1.0 200 OK\r\n\r\nabc").unwrap();
        assert_eq!(r.body, b"abc");
    }

    #[test]
    fn bad_responses_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"HTTP/1.1 204",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 99 x\r\n\r\n",
            b"HTTP/1.1 2000 x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn reads_are_bounded() {
        // A head that never ends stops at the limit instead of growing without end.
        let endless = vec![b'a'; MAX_HEAD * 4];
        let e = parse(&endless).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        let mut big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        big.resize(MAX_BODY * 2, b'x');
        let e = parse(&big).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("s.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            // Hold the connection open without answering until the client gives up.
            let _ = s.read(&mut buf);
        });
        let e = request(&sock, "GET", "/", None, Duration::from_millis(200)).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn long_socket_paths_are_reached_through_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let mut dir = d.path().to_path_buf();
        while dir.as_os_str().len() <= MAX_SOCKET_PATH {
            dir = dir.join("a-long-directory-name");
        }
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        // Bind through the directory, as a path this long cannot be bound directly.
        let listener = {
            let f = rustix::fs::open(
                &dir,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap();
            use std::os::fd::AsRawFd;
            UnixListener::bind(format!("/proc/self/fd/{}/api.sock", f.as_raw_fd())).unwrap()
        };
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 204 \r\n\r\n").unwrap();
        });
        let r = request(&sock, "GET", "/", None, Duration::from_secs(30)).unwrap();
        assert_eq!(r.status, 204);
        server.join().unwrap();
    }
}
