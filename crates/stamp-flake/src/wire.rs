//! The framed protocol between the vm engine's launcher (host) and stamp-init's agent mode
//! (guest) over the virtio-serial port named [`PORT_NAME`], or over vsock port [`VSOCK_PORT`]
//! (Firecracker's transport; QEMU's with a vhost-user vsock device).
//!
//! A frame is one kind byte, a big-endian u32 payload length and the payload; a length above
//! [`MAX_FRAME`] is an error (never allocated). std only: stamp-init includes this file too.

use std::io::{self, Read, Write};

/// The virtio-serial port's name.
pub const PORT_NAME: &str = "stamp.agent";
/// The guest's vsock port.
pub const VSOCK_PORT: u32 = 1024;
/// QEMU's firmware configuration item that asks stamp-init to serve over vsock (value
/// `vsock`): a disk booted by UEFI has a fixed kernel command line.
pub const FW_CFG_AGENT: &str = "opt/org.stamp/agent";
/// Largest payload accepted.
pub const MAX_FRAME: u32 = 1 << 20;

/// Host → guest, first in every connection: a session's random nonce (16 bytes); the guest
/// answers with the same frame once the session is its own. Everything the host reads
/// before that answer is left over from an earlier connection and is skipped.
pub const SESSION: u8 = b'N';
/// Host → guest: the command (see [`encode_command`]).
pub const COMMAND: u8 = b'C';
/// Host → guest: join the app that runs in the instance (an attach flake's), instead of a
/// command.
pub const ATTACH: u8 = b'A';
/// Host → guest: stdin bytes.
pub const STDIN: u8 = b'I';
/// Host → guest: stdin is at its end.
pub const STDIN_EOF: u8 = b'i';
/// Host → guest: a signal for the app (4 bytes, big endian).
pub const SIGNAL: u8 = b'S';
/// Host → guest: the window size (rows, columns: two big-endian u16).
pub const WINSIZE: u8 = b'W';
/// Decodes a [`WINSIZE`] payload.
pub fn decode_winsize(p: &[u8]) -> Option<(u16, u16)> {
    match p {
        [a, b, c, d] => Some((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))),
        _ => None,
    }
}

/// Encodes a [`WINSIZE`] payload.
pub fn encode_winsize(rows: u16, cols: u16) -> [u8; 4] {
    let (r, c) = (rows.to_be_bytes(), cols.to_be_bytes());
    [r[0], r[1], c[0], c[1]]
}

/// Guest → host: stdout bytes.
pub const STDOUT: u8 = b'O';
/// Guest → host: stderr bytes.
pub const STDERR: u8 = b'E';
/// Guest → host: this many more stdin bytes may be sent (a big-endian u32), granted as the
/// app's stdin takes them. The host starts with [`STDIN_WINDOW`] and never has more in flight,
/// so the guest's port reader never waits on an app that does not read its input (a signal
/// behind it would wait too) and never holds more than the window.
pub const CREDIT: u8 = b'K';
/// The stdin bytes the host may send before the guest grants more.
pub const STDIN_WINDOW: u32 = 256 * 1024;
/// Guest → host: the app ended (kind 0 = exit code, 1 = signal; then a big-endian i32).
pub const EXIT: u8 = b'X';

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut buf = Vec::with_capacity(5 + payload.len());
    buf.push(kind);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame; `None` at a clean end of the stream (before a frame starts).
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the stream ended inside a frame header (at byte {got} of 5)"),
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "frame of kind {:?} claims {len} bytes, more than {MAX_FRAME}",
                head[0] as char
            ),
        ));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

/// What the guest runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// argv (argv[0] is the program).
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries added to the image's environment.
    pub env: Vec<String>,
    /// Working directory (the image's when empty).
    pub cwd: String,
    /// User (the image's when empty).
    pub user: String,
    /// A terminal for the app, of this size (rows, columns); pipes when `None`.
    pub tty: Option<(u16, u16)>,
    /// What the instance does after the call.
    pub mode: Mode,
}

/// What a guest does with its app's call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// One call, then the machine powers off; the caller hanging up ends the app.
    #[default]
    Once,
    /// The machine stays for the next call; the caller hanging up ends the app.
    Resume,
    /// The app outlives its caller (later calls attach to it); the machine powers off when
    /// the app ends.
    Attach,
}

impl Mode {
    fn byte(self) -> u8 {
        match self {
            Mode::Once => 0,
            Mode::Resume => 1,
            Mode::Attach => 2,
        }
    }
}

/// Reads until the guest's answer to session `nonce` (a [`SESSION`] frame with it), skipping
/// what an earlier connection left (at most `limit` bytes).
pub fn await_session(r: &mut impl Read, nonce: &[u8; 16], limit: u64) -> io::Result<()> {
    let mut want = vec![SESSION];
    want.extend_from_slice(&16u32.to_be_bytes());
    want.extend_from_slice(nonce);
    let mut window: Vec<u8> = Vec::with_capacity(want.len());
    let mut skipped = 0u64;
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the guest closed the agent port before taking the call",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if window.len() == want.len() {
            window.remove(0);
            skipped += 1;
            if skipped > limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("no answer to the session after {limit} bytes from the guest"),
                ));
            }
        }
        window.push(byte[0]);
        if window == want {
            return Ok(());
        }
    }
}

/// Encodes a command: fields of one tag byte (`a` arg, `e` env, `w` cwd, `u` user, `t` a
/// terminal: rows and columns as big-endian u16), a big-endian u32 length and the bytes.
pub fn encode_command(c: &Command) -> Vec<u8> {
    let mut out = Vec::new();
    let mut field = |tag: u8, s: &[u8]| {
        out.push(tag);
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s);
    };
    for a in &c.argv {
        field(b'a', a.as_bytes());
    }
    for e in &c.env {
        field(b'e', e.as_bytes());
    }
    field(b'w', c.cwd.as_bytes());
    field(b'u', c.user.as_bytes());
    if let Some((rows, cols)) = c.tty {
        let mut size = rows.to_be_bytes().to_vec();
        size.extend_from_slice(&cols.to_be_bytes());
        field(b't', &size);
    }
    field(b'm', &[c.mode.byte()]);
    out
}

/// Decodes [`encode_command`]'s output; errors name the offset.
pub fn decode_command(b: &[u8]) -> Result<Command, String> {
    let mut c = Command::default();
    let mut i = 0usize;
    while i < b.len() {
        let tag = b[i];
        let len_bytes = b
            .get(i + 1..i + 5)
            .ok_or_else(|| format!("command field at offset {i}: truncated length"))?;
        let len =
            u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        let data = b
            .get(i + 5..)
            .and_then(|rest| rest.get(..len))
            .ok_or_else(|| {
                format!(
                    "command field at offset {i}: {len} bytes past the end ({} bytes)",
                    b.len()
                )
            })?;
        let s = String::from_utf8_lossy(data).into_owned();
        match tag {
            b't' => match data {
                [a, b, c0, d] => {
                    c.tty = Some((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c0, *d])))
                }
                _ => {
                    return Err(format!(
                        "command field at offset {i}: a terminal size of {len} bytes, not 4"
                    ));
                }
            },
            b'm' => {
                c.mode = match data {
                    [0] => Mode::Once,
                    [1] => Mode::Resume,
                    [2] => Mode::Attach,
                    _ => return Err(format!("command field at offset {i}: unknown mode")),
                }
            }
            b'a' => c.argv.push(s),
            b'e' => c.env.push(s),
            b'w' => c.cwd = s,
            b'u' => c.user = s,
            t => return Err(format!("command field at offset {i}: unknown tag {t}")),
        }
        i += 5 + len;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_commands_round_trip_and_lengths_are_bounded() {
        let c = Command {
            argv: vec!["/bin/sh".into(), "-c".into(), "echo é".into()],
            env: vec!["A=1".into()],
            cwd: "/srv".into(),
            user: "1000".into(),
            tty: Some((24, 80)),
            mode: Mode::Resume,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, COMMAND, &encode_command(&c)).unwrap();
        write_frame(&mut buf, STDIN_EOF, &[]).unwrap();
        let mut r = &buf[..];
        let (k, p) = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(k, COMMAND);
        assert_eq!(decode_command(&p).unwrap(), c);
        assert_eq!(read_frame(&mut r).unwrap(), Some((STDIN_EOF, vec![])));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        // A huge claimed length is refused before allocating; a cut frame is an error.
        let mut r: &[u8] = &[b'O', 0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut r).is_err());
        let mut r: &[u8] = &[b'O', 0, 0];
        assert!(read_frame(&mut r).is_err());
        assert!(decode_command(&[b'a', 0, 0, 0, 9, b'x']).is_err());
        assert!(decode_command(&[b'z', 0, 0, 0, 0]).is_err());
        assert!(decode_command(&[b't', 0, 0, 0, 1, 7]).is_err());
        assert!(decode_command(&[b'm', 0, 0, 0, 1, 7]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_from_a_guest_are_frames_or_errors_never_a_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut r = &data[..];
            while let Ok(Some((_, p))) = read_frame(&mut r) {
                let _ = decode_command(&p);
            }
            let _ = decode_command(&data);
            let _ = await_session(&mut &data[..], &[1; 16], 256);
        }
    }

    #[test]
    fn the_session_answer_is_found_after_leftovers() {
        let nonce = [7u8; 16];
        let mut buf = b"leftover bytes of an earlier call".to_vec();
        write_frame(&mut buf, SESSION, &[6u8; 16]).unwrap();
        write_frame(&mut buf, SESSION, &nonce).unwrap();
        write_frame(&mut buf, STDOUT, b"hi").unwrap();
        let mut r = &buf[..];
        await_session(&mut r, &nonce, 1 << 20).unwrap();
        assert_eq!(read_frame(&mut r).unwrap(), Some((STDOUT, b"hi".to_vec())));
        let mut r = &buf[..];
        assert!(await_session(&mut r, &nonce, 10).is_err());
        let mut r: &[u8] = b"no answer";
        assert!(await_session(&mut r, &nonce, 1 << 20).is_err());
    }
}
