//! Agent mode (the vm engine of `stamp app`): when the machine has a virtio-serial port named
//! `stamp.agent` (QEMU), or the host asks for vsock (`stamp.agent=vsock` on the kernel command
//! line, as Firecracker's boot arguments can say, or QEMU's firmware configuration item
//! [`wire::FW_CFG_AGENT`] saying `vsock`, with a vsock device), the app's command comes from
//! the host over that port instead of `/.stamp/app.json`, and its stdin, stdout, stderr and
//! exit status travel over it as frames (see stamp-flake's wire.rs). Kernel and init messages
//! stay on the console.
//!
//! Every connection of the host starts a session (a nonce, answered); a resume flake's
//! instance serves one session after another and keeps running between them, an attach
//! flake's app outlives its caller and a later session joins it. Over virtio-serial a
//! connection is the host opening the port's socket; over vsock it is one accepted stream.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::AppConfig;
use crate::wire;
use crate::{modules, run, say, sys, user};

/// How long the port gets to appear after the modules are loaded.
const PORT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the output pipes may stay open after the app ended (held by its leftovers).
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The kernel command line's words.
fn cmdline() -> Vec<String> {
    std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// True if a virtio device of type `id` (`0x0003` console, `0x0013` vsock) is present.
fn has_device(id: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return false;
    };
    dir.filter_map(|e| e.ok())
        .take(256)
        .any(|e| std::fs::read_to_string(e.path().join("device")).is_ok_and(|d| d.trim() == id))
}

/// True if the host asks for the agent over vsock: on the kernel command line, or (with a
/// vsock device, so that a machine without one does not load modules for nothing) in QEMU's
/// firmware configuration.
fn vsock_wanted() -> bool {
    if cmdline().iter().any(|w| w == "stamp.agent=vsock") {
        return true;
    }
    if !has_device("0x0013") {
        return false;
    }
    let item = Path::new("/sys/firmware/qemu_fw_cfg/by_name")
        .join(wire::FW_CFG_AGENT)
        .join("raw");
    if !item.exists() {
        let _ = modules::load("qemu_fw_cfg");
    }
    crate::read_bounded(&item.to_string_lossy(), 64).is_ok_and(|v| v.trim_ascii() == b"vsock")
}

/// How the host reaches the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The virtio-serial port named [`wire::PORT_NAME`].
    Serial,
    /// A vsock stream on [`wire::VSOCK_PORT`].
    Vsock,
}

/// The transport the host asks for, if it wants agent mode: vsock when asked for (see
/// `vsock_wanted`), virtio-serial when the kernel command line says `stamp.agent` or a virtio
/// console device is present.
pub fn wanted() -> Option<Transport> {
    if vsock_wanted() {
        Some(Transport::Vsock)
    } else if cmdline().iter().any(|w| w == "stamp.agent") || has_device("0x0003") {
        Some(Transport::Serial)
    } else {
        None
    }
}

/// The device of the port named [`wire::PORT_NAME`] (`/dev/vportNpM`), if present.
fn find_port() -> Option<PathBuf> {
    let dir = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    for e in dir.filter_map(|e| e.ok()).take(256) {
        let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.trim() == wire::PORT_NAME {
            return Some(Path::new("/dev").join(e.file_name()));
        }
    }
    None
}

/// Where the host's connections come from.
pub enum Port {
    /// The virtio-serial port: one stream for the machine's life, which the host opens and
    /// closes.
    Serial(File),
    /// A vsock socket listening on [`wire::VSOCK_PORT`]: each connection is a stream.
    Vsock(File),
}

/// Opens the agent port of `transport`: the vsock listener, or the virtio-serial port (loading
/// virtio_console when needed).
pub fn open_port(transport: Transport) -> Result<Port, String> {
    if transport == Transport::Vsock {
        if let Err(e) = modules::load_for_devices() {
            say!("loading modules for the devices: {e}");
        }
        let _ = modules::load("vmw_vsock_virtio_transport");
        return sys::vsock_listen(wire::VSOCK_PORT)
            .map(Port::Vsock)
            .map_err(|e| format!("listening on vsock port {}: {e}", wire::VSOCK_PORT));
    }
    if find_port().is_none() {
        if let Err(e) = modules::load_for_devices() {
            say!("loading modules for the devices: {e}");
        }
        let _ = modules::load("virtio_console");
    }
    let start = std::time::Instant::now();
    loop {
        if let Some(p) = find_port() {
            return std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .map(Port::Serial)
                .map_err(|e| format!("{}: {e}", p.display()));
        }
        if start.elapsed() > PORT_WAIT {
            return Err(format!(
                "no virtio-serial port named {} in /sys/class/virtio-ports",
                wire::PORT_NAME
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The agent port. The stream is non-blocking: a write while no host listens (or after it
/// hung up) is dropped rather than left to block, and frames are sent only for the session
/// that listens now, so a caller never gets another call's output.
struct Link {
    port: Port,
    /// The stream of the host's connection (the port itself over virtio-serial).
    conn: RwLock<Arc<File>>,
    /// The session that listens (0: none).
    session: AtomicU64,
    /// Serialises frames.
    write: Mutex<()>,
}

impl Link {
    /// The link of `port`, once the host's first connection is there.
    fn new(port: Port) -> std::io::Result<Link> {
        let conn = match &port {
            Port::Serial(f) => {
                let conn = f.try_clone()?;
                sys::set_nonblocking(&conn)?;
                conn
            }
            Port::Vsock(listener) => sys::accept(listener)?,
        };
        Ok(Link {
            port,
            conn: RwLock::new(Arc::new(conn)),
            session: AtomicU64::new(0),
            write: Mutex::new(()),
        })
    }

    /// The current connection's stream.
    fn conn(&self) -> Arc<File> {
        match self.conn.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Writes all of `buf`, waiting while the port is full; an error when the host hangs up.
    fn write_all(&self, mut buf: &[u8]) -> std::io::Result<()> {
        let file = self.conn();
        while !buf.is_empty() {
            match (&*file).write(buf) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let ev = sys::poll(&*file, libc::POLLOUT, 200)?;
                    if ev & libc::POLLHUP != 0 && ev & libc::POLLOUT == 0 {
                        return Err(std::io::ErrorKind::BrokenPipe.into());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends a frame to `session` if it still listens; false when dropped.
    fn send(&self, session: u64, kind: u8, payload: &[u8]) -> bool {
        let Ok(_g) = self.write.lock() else {
            return false;
        };
        if session == 0 || self.session.load(Ordering::SeqCst) != session {
            return false;
        }
        let mut frame = Vec::with_capacity(5 + payload.len());
        if wire::write_frame(&mut frame, kind, payload).is_err() || self.write_all(&frame).is_err()
        {
            self.session.store(0, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Takes a new session: answers its nonce; its number.
    fn accept(&self, nonce: &[u8], next: u64) -> u64 {
        let Ok(_g) = self.write.lock() else {
            return 0;
        };
        let mut frame = Vec::new();
        let _ = wire::write_frame(&mut frame, wire::SESSION, nonce);
        if self.write_all(&frame).is_err() {
            self.session.store(0, Ordering::SeqCst);
            return 0;
        }
        self.session.store(next, Ordering::SeqCst);
        next
    }

    /// Waits until a host is connected again; the stream to read then.
    fn reconnect(&self) -> std::io::Result<Arc<File>> {
        match &self.port {
            Port::Serial(_) => {
                let file = self.conn();
                while sys::poll(&*file, libc::POLLIN, 0).is_ok_and(|ev| ev & libc::POLLHUP != 0) {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Ok(file)
            }
            Port::Vsock(listener) => {
                let conn = Arc::new(sys::accept(listener)?);
                match self.conn.write() {
                    Ok(mut c) => *c = conn.clone(),
                    Err(p) => *p.into_inner() = conn.clone(),
                }
                Ok(conn)
            }
        }
    }
}

/// Reads the non-blocking port, waiting for data; the end (0) when the host hangs up.
struct PortReader<'a>(&'a File);

impl Read for PortReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    sys::poll(self.0, libc::POLLIN, -1)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

/// The app that runs, as the port's reader reaches it.
struct Running {
    pid: i32,
    /// The session its output goes to (an attach joins a new one).
    session: Arc<AtomicU64>,
    /// To the app's stdin writer: bytes, or `None` for the end.
    stdin: Option<std::sync::mpsc::Sender<Option<Vec<u8>>>>,
    tty: Option<File>,
    mode: wire::Mode,
}

type Current = Arc<Mutex<Option<Running>>>;

/// Copies `from` to the port as frames of `kind` for the app's session until its end (what
/// nobody listens to is read and dropped, so the app never blocks on it).
fn pump(mut from: impl Read, link: Arc<Link>, session: Arc<AtomicU64>, kind: u8) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                link.send(session.load(Ordering::SeqCst), kind, &buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Writes what the host sends for the app's stdin, granting the host more as it goes (see
/// [`wire::CREDIT`]); ends at the input's end or when the app stops reading.
fn feed(
    mut to: Box<dyn Write + Send>,
    from: std::sync::mpsc::Receiver<Option<Vec<u8>>>,
    link: &Link,
    session: &AtomicU64,
) {
    while let Ok(Some(bytes)) = from.recv() {
        if to.write_all(&bytes).is_err() {
            return;
        }
        let n = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        link.send(
            session.load(Ordering::SeqCst),
            wire::CREDIT,
            &n.to_be_bytes(),
        );
    }
}

/// The exit frame's payload.
fn exit_payload(exit: sys::Exit) -> Vec<u8> {
    let (kind, v) = match exit {
        sys::Exit::Code(c) => (0u8, c),
        sys::Exit::Signal(s) => (1u8, s),
    };
    let mut p = vec![kind];
    p.extend_from_slice(&v.to_be_bytes());
    p
}

/// A command taken from a session.
struct Request {
    session: u64,
    command: wire::Command,
}

/// Reads the port for the machine's life: sessions, commands (to `requests`), and the
/// running app's stdin, window size and signals. A caller hanging up ends its app (SIGHUP,
/// then SIGKILL), unless the app is an attach flake's, which runs on for the next caller.
fn read_port(link: Arc<Link>, current: Current, requests: std::sync::mpsc::Sender<Request>) {
    let mut sessions = 0u64;
    let mut session = 0u64;
    let mut conn = link.conn();
    loop {
        let frame = wire::read_frame(&mut PortReader(&conn));
        let (kind, payload) = match frame {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => {
                link.session.store(0, Ordering::SeqCst);
                session = 0;
                hang_up(&current);
                match link.reconnect() {
                    Ok(c) => conn = c,
                    Err(e) => {
                        say!("agent: waiting for the host: {e}");
                        return;
                    }
                }
                continue;
            }
        };
        if kind == wire::SESSION {
            sessions += 1;
            session = link.accept(&payload, sessions);
            continue;
        }
        if session == 0 {
            continue;
        }
        let Ok(mut cur) = current.lock() else { return };
        match kind {
            wire::COMMAND => match wire::decode_command(&payload) {
                Ok(command) => {
                    if requests.send(Request { session, command }).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    say!("agent: {e}");
                    link.send(
                        session,
                        wire::STDERR,
                        format!("stamp-init: {e}\n").as_bytes(),
                    );
                    link.send(
                        session,
                        wire::EXIT,
                        &exit_payload(sys::Exit::Code(crate::NOT_STARTED)),
                    );
                }
            },
            wire::ATTACH => match cur.as_ref() {
                Some(app) => app.session.store(session, Ordering::SeqCst),
                None => {
                    link.send(
                        session,
                        wire::STDERR,
                        b"stamp-init: no app runs in this instance\n",
                    );
                    link.send(
                        session,
                        wire::EXIT,
                        &exit_payload(sys::Exit::Code(crate::NOT_STARTED)),
                    );
                }
            },
            _ => {
                if let Some(app) = cur
                    .as_mut()
                    .filter(|a| a.session.load(Ordering::SeqCst) == session)
                {
                    deliver(app, kind, &payload);
                }
            }
        }
    }
}

/// Applies a host frame to the running app.
fn deliver(app: &mut Running, kind: u8, payload: &[u8]) {
    match kind {
        wire::STDIN => {
            if let Some(s) = app.stdin.as_ref() {
                if s.send(Some(payload.to_vec())).is_err() {
                    app.stdin = None;
                }
            }
        }
        // A terminal has no end of input (its ^D is a byte the app reads).
        wire::STDIN_EOF if app.tty.is_none() => {
            if let Some(s) = app.stdin.take() {
                let _ = s.send(None);
            }
        }
        wire::WINSIZE => {
            if let (Some(t), Some((rows, cols))) = (app.tty.as_ref(), wire::decode_winsize(payload))
            {
                // The kernel sends SIGWINCH to the terminal's foreground group.
                let _ = sys::set_winsize(t, rows, cols);
            }
        }
        wire::SIGNAL => {
            if let Ok(b) = <[u8; 4]>::try_from(payload) {
                let sig = i32::from_be_bytes(b);
                if (1..65).contains(&sig) {
                    sys::kill(app.pid, sig);
                }
            }
        }
        _ => {}
    }
}

/// The caller of the running app hung up: unless it is an attach flake's app, it gets SIGHUP,
/// and SIGKILL if it is still there after [`DRAIN_WAIT`].
fn hang_up(current: &Current) {
    let Ok(cur) = current.lock() else { return };
    let Some(app) = cur.as_ref().filter(|a| a.mode != wire::Mode::Attach) else {
        return;
    };
    let pid = app.pid;
    sys::kill(pid, libc::SIGHUP);
    let current = current.clone();
    std::thread::spawn(move || {
        std::thread::sleep(DRAIN_WAIT);
        if current
            .lock()
            .is_ok_and(|c| c.as_ref().is_some_and(|a| a.pid == pid))
        {
            sys::kill(pid, libc::SIGKILL);
        }
    });
}

/// Serves the host's calls: each session's command runs with pipes (or a terminal), its
/// streams, signals and exit status relayed. Returns after a call whose mode is not
/// [`wire::Mode::Resume`] (the machine then powers off), with the app's argv[0] and how it
/// ended.
pub fn serve(port: Port, image: &AppConfig) -> (String, sys::Exit) {
    let link = match Link::new(port) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            say!("agent port: {e}");
            return ("app".into(), sys::Exit::Code(crate::NOT_STARTED));
        }
    };
    let current: Current = Arc::new(Mutex::new(None));
    let (tx, requests) = std::sync::mpsc::channel();
    {
        let (link, current) = (link.clone(), current.clone());
        std::thread::spawn(move || read_port(link, current, tx));
    }
    loop {
        let Ok(req) = requests.recv() else {
            return ("app".into(), sys::Exit::Code(crate::NOT_STARTED));
        };
        // A command whose caller hung up before it started is not run.
        if link.session.load(Ordering::SeqCst) != req.session {
            continue;
        }
        let mode = req.command.mode;
        let (name, exit) = call(&link, &current, image, req);
        if mode != wire::Mode::Resume {
            return (name, exit);
        }
    }
}

/// Runs one command: starts it, pumps its streams, waits for it and sends its exit status.
fn call(
    link: &Arc<Link>,
    current: &Current,
    image: &AppConfig,
    req: Request,
) -> (String, sys::Exit) {
    let cmd = req.command;
    let name = cmd.argv.first().cloned().unwrap_or_else(|| "app".into());
    let mut cfg = image.clone();
    if !cmd.argv.is_empty() {
        cfg.argv = cmd.argv.clone();
    }
    cfg.env.extend(cmd.env.iter().cloned());
    if !cmd.cwd.is_empty() {
        cfg.workdir = cmd.cwd.clone();
    }
    if !cmd.user.is_empty() {
        cfg.user = cmd.user.clone();
    }
    let pty = match cmd.tty.map(|(rows, cols)| sys::openpty(rows, cols)) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            say!("agent: no terminal for the app ({e}); it gets pipes");
            None
        }
    };
    let session = Arc::new(AtomicU64::new(req.session));
    // The current app is recorded before it starts, so that a hang-up in between reaches it.
    let mut cur = match current.lock() {
        Ok(c) => c,
        Err(_) => return (name, sys::Exit::Code(crate::NOT_STARTED)),
    };
    let started = start(&cfg, pty.as_ref().map(|(_, slave)| slave));
    // The app holds the slave now: the master reads its end when the app's side closes.
    let master = pty.map(|(master, _)| master);
    let mut child = match started {
        Ok(c) => c,
        Err(e) => {
            drop(cur);
            link.send(
                req.session,
                wire::STDERR,
                format!("stamp: {name}: {e}\n").as_bytes(),
            );
            say!("{e}");
            let exit = sys::Exit::Code(crate::NOT_STARTED);
            link.send(req.session, wire::EXIT, &exit_payload(exit));
            return (name, exit);
        }
    };
    let pid = child.id() as i32;
    let (done, pumps_done) = std::sync::mpsc::channel::<()>();
    let mut pumps = 0;
    let mut outputs: Vec<(Box<dyn Read + Send>, u8)> = Vec::new();
    let mut tty = None;
    if let Some(m) = master {
        match m.try_clone() {
            Ok(w) => tty = Some(w),
            Err(e) => say!("agent: the terminal: {e}"),
        }
        outputs.push((Box::new(m), wire::STDOUT));
    }
    if let Some(out) = child.stdout.take() {
        outputs.push((Box::new(out), wire::STDOUT));
    }
    if let Some(err) = child.stderr.take() {
        outputs.push((Box::new(err), wire::STDERR));
    }
    for (from, kind) in outputs {
        let (link, session, done) = (link.clone(), session.clone(), done.clone());
        pumps += 1;
        std::thread::spawn(move || {
            pump(from, link, session, kind);
            let _ = done.send(());
        });
    }
    let input: Option<Box<dyn Write + Send>> = match child.stdin.take() {
        Some(s) => Some(Box::new(s)),
        None => tty
            .as_ref()
            .and_then(|t| t.try_clone().ok())
            .map(|t| Box::new(t) as _),
    };
    let stdin = input.map(|to| {
        let (tx, rx) = std::sync::mpsc::channel();
        let (link, session) = (link.clone(), session.clone());
        std::thread::spawn(move || feed(to, rx, &link, &session));
        tx
    });
    *cur = Some(Running {
        pid,
        session: session.clone(),
        stdin,
        tty,
        mode: cmd.mode,
    });
    drop(cur);
    // The caller may have hung up while the app started.
    if link.session.load(Ordering::SeqCst) != req.session {
        hang_up(current);
    }
    // The child is reaped by the supervisor loop (PID 1 reaps everything).
    std::mem::forget(child);
    let exit = crate::supervise(pid);
    // The output written before the exit is sent first; a process the app left behind that
    // still holds the pipes open gets a moment, not forever.
    let deadline = std::time::Instant::now() + DRAIN_WAIT;
    for _ in 0..pumps {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if pumps_done.recv_timeout(left).is_err() {
            say!("agent: the app's output is still open after it ended; not waiting for it");
            break;
        }
    }
    if let Ok(mut c) = current.lock() {
        *c = None;
    }
    link.send(
        session.load(Ordering::SeqCst),
        wire::EXIT,
        &exit_payload(exit),
    );
    (name, exit)
}

/// Starts the app of `cfg` with piped stdin, stdout and stderr, or on the terminal `tty`.
fn start(cfg: &AppConfig, tty: Option<&File>) -> Result<std::process::Child, String> {
    let name = cfg.argv.first().cloned().unwrap_or_default();
    let etc = |f: &str| {
        crate::read_bounded(f, user::MAX_FILE)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let ids = user::resolve(&cfg.user, &etc("/etc/passwd"), &etc("/etc/group"))
        .map_err(|e| format!("user '{}': {e}", cfg.user))?;
    let env = run::environment(&cfg.env, &ids.home);
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(run::DEFAULT_PATH, |(_, v)| v.as_str());
    let program = run::find_program(&name, path, &cfg.workdir, Path::new("/"))?;
    run::spawn_piped(cfg, &program, &env, &ids, tty)
        .map_err(|e| format!("cannot start {}: {e}", program.display()))
}
