//! Agent mode (the vm engine of `stamp app`): when the machine has a virtio-serial port named
//! `stamp.agent`, the app's command comes from the host over that port instead of
//! `/.stamp/app.json`, and its stdin, stdout, stderr and exit status travel over it as frames
//! (see stamp-flake's wire.rs). Kernel and init messages stay on the console.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::AppConfig;
use crate::wire;
use crate::{modules, run, say, sys, user};

/// How long the port gets to appear after the modules are loaded.
const PORT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the output pipes may stay open after the app ended (held by its leftovers).
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// True if the kernel command line asks for agent mode or a virtio console device (id 3) is
/// present.
pub fn wanted() -> bool {
    if std::fs::read_to_string("/proc/cmdline")
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "stamp.agent"))
    {
        return true;
    }
    let Ok(dir) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return false;
    };
    dir.filter_map(|e| e.ok()).take(256).any(|e| {
        std::fs::read_to_string(e.path().join("device")).is_ok_and(|d| d.trim() == "0x0003")
    })
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

/// Opens the agent port, loading virtio_console when needed.
pub fn open_port() -> Result<File, String> {
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

/// Copies `from` to the port as frames of `kind` until its end.
fn pump(mut from: impl Read, port: Arc<Mutex<File>>, kind: u8) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let Ok(mut p) = port.lock() else { return };
                if wire::write_frame(&mut *p, kind, &buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Runs one call from the host: reads the command, starts it with pipes, pumps the streams,
/// forwards signals, and sends the exit status. Returns the app's argv[0] and how it ended.
pub fn serve(port: File, image: &AppConfig) -> (String, sys::Exit) {
    let mut reader = match port.try_clone() {
        Ok(r) => r,
        Err(e) => {
            say!("agent port: {e}");
            return ("app".into(), sys::Exit::Code(crate::NOT_STARTED));
        }
    };
    let port = Arc::new(Mutex::new(port));
    let send_exit = |exit: sys::Exit| {
        let (kind, v) = match exit {
            sys::Exit::Code(c) => (0u8, c),
            sys::Exit::Signal(s) => (1u8, s),
        };
        let mut p = vec![kind];
        p.extend_from_slice(&v.to_be_bytes());
        if let Ok(mut port) = port.lock() {
            let _ = wire::write_frame(&mut *port, wire::EXIT, &p);
        }
    };
    let cmd = match wire::read_frame(&mut reader) {
        Ok(Some((wire::COMMAND, p))) => wire::decode_command(&p),
        Ok(Some((k, _))) => Err(format!("expected the command, got a frame of kind {k}")),
        Ok(None) => Err("the host closed the port before sending the command".into()),
        Err(e) => Err(format!("reading the command: {e}")),
    };
    let cmd = match cmd {
        Ok(c) => c,
        Err(e) => {
            say!("agent: {e}");
            send_exit(sys::Exit::Code(crate::NOT_STARTED));
            return ("app".into(), sys::Exit::Code(crate::NOT_STARTED));
        }
    };
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
    let started = start(&cfg, pty.as_ref().map(|(_, slave)| slave));
    // The app holds the slave now: the master reads its end when the app's side closes.
    let master = pty.map(|(master, _)| master);
    let mut child = match started {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("stamp: {name}: {e}\n");
            if let Ok(mut p) = port.lock() {
                let _ = wire::write_frame(&mut *p, wire::STDERR, msg.as_bytes());
            }
            say!("{e}");
            send_exit(sys::Exit::Code(crate::NOT_STARTED));
            return (name, sys::Exit::Code(crate::NOT_STARTED));
        }
    };
    let pid = child.id() as i32;
    let (done, pumps_done) = std::sync::mpsc::channel::<()>();
    let mut pumps = 0;
    let mut tty_in = None;
    if let Some(m) = master {
        match m.try_clone() {
            Ok(w) => tty_in = Some(w),
            Err(e) => say!("agent: the terminal: {e}"),
        }
        let p = port.clone();
        let done = done.clone();
        pumps += 1;
        std::thread::spawn(move || {
            pump(m, p, wire::STDOUT);
            let _ = done.send(());
        });
    }
    if let Some(out) = child.stdout.take() {
        let p = port.clone();
        let done = done.clone();
        pumps += 1;
        std::thread::spawn(move || {
            pump(out, p, wire::STDOUT);
            let _ = done.send(());
        });
    }
    if let Some(err) = child.stderr.take() {
        let p = port.clone();
        let done = done.clone();
        pumps += 1;
        std::thread::spawn(move || {
            pump(err, p, wire::STDERR);
            let _ = done.send(());
        });
    }
    let mut stdin: Option<Box<dyn Write + Send>> = match child.stdin.take() {
        Some(s) => Some(Box::new(s)),
        None => tty_in
            .as_ref()
            .and_then(|t| t.try_clone().ok())
            .map(|t| Box::new(t) as _),
    };
    let is_tty = tty_in.is_some();
    std::thread::spawn(move || {
        while let Ok(Some((kind, payload))) = wire::read_frame(&mut reader) {
            match kind {
                wire::STDIN => {
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(&payload).is_err() {
                            stdin = None;
                        }
                    }
                }
                // A terminal has no end of input (its ^D is a byte the app reads).
                wire::STDIN_EOF if !is_tty => stdin = None,
                wire::WINSIZE => {
                    if let (Some(t), Some((rows, cols))) =
                        (tty_in.as_ref(), wire::decode_winsize(&payload))
                    {
                        // The kernel sends SIGWINCH to the terminal's foreground group.
                        let _ = sys::set_winsize(t, rows, cols);
                    }
                }
                wire::SIGNAL => {
                    if let Ok(b) = <[u8; 4]>::try_from(payload.as_slice()) {
                        let sig = i32::from_be_bytes(b);
                        if (1..65).contains(&sig) {
                            sys::kill(pid, sig);
                        }
                    }
                }
                _ => {}
            }
        }
    });
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
    send_exit(exit);
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
