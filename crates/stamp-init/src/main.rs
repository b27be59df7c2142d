//! stamp's init for application images (images without an init system).
//!
//! Runs as PID 1 in the app's root filesystem, started by the initramfs with
//! `init=/.stamp/init`: mounts the essential filesystems, sets the hostname, configures the
//! network by DHCP, reads `/.stamp/app.json` and runs the image's ENTRYPOINT + CMD with its
//! ENV, WorkingDir and User. It reaps orphans, forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR*
//! to the app and, when the app ends, prints `stamp-init: <argv0> exited with status N` (or
//! `killed by signal S`) on the console, syncs and powers the machine off. Any failure before
//! the app starts is printed and reported as status 127.
//!
//! Agent mode (`stamp app`'s vm engine): when the machine has a virtio-serial port named
//! `stamp.agent` (or the host asks for vsock), the command comes from the host over it, and
//! the app's stdin, stdout, stderr, signals and exit status travel over it as frames (see
//! `agent`).
//!
//! std and libc only, built as a static executable so it runs in any image.

mod agent;
mod config;
mod modules;
mod mounts;
mod net;
mod run;
mod sys;
mod user;
#[path = "../../stamp-flake/src/wire.rs"]
#[allow(dead_code)]
mod wire;

use std::path::Path;
use std::time::Duration;

/// Prints a line on the console (the init's stderr), prefixed with `stamp-init: `.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("stamp-init: {}\n", format_args!($($arg)*)));
    }};
}

/// Where stamp-build puts the app's config.
const CONFIG: &str = "/.stamp/app.json";
/// The status reported when the app cannot be started (as a shell's "command not found").
const NOT_STARTED: i32 = 127;
/// How long the other processes get between SIGTERM and SIGKILL at power-off.
const STOP_GRACE: Duration = Duration::from_secs(2);

fn main() {
    if std::process::id() != 1 {
        say!(
            "must run as PID 1 (the kernel's init=), not as process {}",
            std::process::id()
        );
        std::process::exit(2);
    }
    let warnings = mounts::mount_all();
    open_console();
    for w in warnings {
        say!("{w}");
    }
    sys::disable_cad();
    if let Err(e) = sys::block_signals() {
        say!("warning: cannot block signals: {e}");
    }
    let hostname = hostname();
    if let Err(e) = sys::sethostname(&hostname) {
        say!("warning: cannot set the hostname {hostname}: {e}");
    }
    let port = agent::wanted().and_then(|transport| {
        agent::open_port(transport)
            .map_err(|e| say!("agent: {e}; running the image's entrypoint on the console"))
            .ok()
    });
    if let Some(port) = port {
        let (name, exit) = agent_call(port, &hostname);
        match exit {
            sys::Exit::Code(c) => say!("{name} exited with status {c}"),
            sys::Exit::Signal(s) => say!("{name} killed by signal {s} (status {})", exit.status()),
        }
        power_off();
    }
    net::setup(&hostname);
    let (name, exit) = match start() {
        Ok((name, pid)) => (name.clone(), supervise(pid)),
        Err((name, e)) => {
            say!("{e}");
            (name, sys::Exit::Code(NOT_STARTED))
        }
    };
    match exit {
        sys::Exit::Code(c) => say!("{name} exited with status {c}"),
        sys::Exit::Signal(s) => say!("{name} killed by signal {s} (status {})", exit.status()),
    }
    power_off();
}

/// Agent mode: the network only when the machine has a NIC, then one call from the host.
fn agent_call(port: agent::Port, hostname: &str) -> (String, sys::Exit) {
    let _ = modules::load("virtio_net");
    let has_nic = std::fs::read_dir("/sys/class/net").is_ok_and(|d| {
        d.filter_map(|e| e.ok())
            .take(64)
            .any(|e| e.file_name() != "lo")
    });
    if has_nic {
        net::setup(hostname);
    }
    let image = read_bounded(CONFIG, config::MAX_CONFIG as u64)
        .ok()
        .and_then(|t| config::parse(&t).ok())
        .unwrap_or_default();
    agent::serve(port, &image)
}

/// Makes sure stdin, stdout and stderr are open, on `/dev/console`.
fn open_console() {
    if (0..3).all(sys::fd_is_open) {
        return;
    }
    if let Ok(c) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            if !sys::fd_is_open(fd) {
                let _ = sys::dup_to(&c, fd);
            }
        }
    }
}

/// The image's `/etc/hostname`, or `localhost`.
fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .and_then(|h| {
            let h = h.lines().next()?.trim().to_string();
            (!h.is_empty() && h.len() <= 64).then_some(h)
        })
        .unwrap_or_else(|| "localhost".into())
}

pub(crate) fn read_bounded(path: &str, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{path}: {e}"))?;
    if buf.len() as u64 > max {
        return Err(format!("{path}: larger than {max} bytes"));
    }
    Ok(buf)
}

/// Reads the config and starts the app: its argv[0] and pid, or its argv[0] (or `app`) and
/// why it could not start.
fn start() -> Result<(String, i32), (String, String)> {
    let text =
        read_bounded(CONFIG, config::MAX_CONFIG as u64).map_err(|e| ("app".to_string(), e))?;
    let cfg = config::parse(&text).map_err(|e| ("app".to_string(), format!("{CONFIG}: {e}")))?;
    let name = cfg.argv.first().cloned().unwrap_or_else(|| "app".into());
    let fail = |e: String| (name.clone(), e);
    if cfg.argv.is_empty() {
        return Err(fail(format!(
            "{CONFIG}: the image has no ENTRYPOINT or CMD"
        )));
    }
    let etc = |f: &str| {
        read_bounded(f, user::MAX_FILE)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let ids = user::resolve(&cfg.user, &etc("/etc/passwd"), &etc("/etc/group"))
        .map_err(|e| fail(format!("user '{}': {e}", cfg.user)))?;
    let env = run::environment(&cfg.env, &ids.home);
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(run::DEFAULT_PATH, |(_, v)| v.as_str());
    let program = run::find_program(&name, path, &cfg.workdir, Path::new("/")).map_err(fail)?;
    let child = run::spawn(&cfg, &program, &env, &ids)
        .map_err(|e| fail(format!("cannot start {}: {e}", program.display())))?;
    Ok((name.clone(), child.id() as i32))
}

/// Reaps every child, forwards signals to the app, and returns how the app ended.
pub(crate) fn supervise(app: i32) -> sys::Exit {
    loop {
        while let Some((pid, exit)) = sys::reap_one() {
            if pid == app {
                return exit;
            }
        }
        match sys::wait_signal(1) {
            None | Some(libc::SIGCHLD) => {}
            Some(sig) => sys::kill(app, sig),
        }
    }
}

/// Stops what is left, syncs, remounts the root read-only and powers off.
fn power_off() -> ! {
    sys::kill(-1, libc::SIGTERM);
    let deadline = std::time::Instant::now() + STOP_GRACE;
    while std::time::Instant::now() < deadline {
        while sys::reap_one().is_some() {}
        if !other_processes_left() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    sys::kill(-1, libc::SIGKILL);
    while sys::reap_one().is_some() {}
    sys::sync();
    if let Err(e) = sys::remount_root_ro() {
        say!("warning: remounting / read-only: {e}");
    }
    sys::sync();
    let e = sys::power_off();
    say!("power-off failed: {e}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Returns true if and only if some user process other than PID 1 runs (kernel threads, whose
/// parent is kthreadd (2), are not counted).
fn other_processes_left() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<u32>().ok())
        .filter(|pid| *pid > 2)
        .any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                // "pid (comm) state ppid ...": the ppid after the last ')'.
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    .is_some_and(|ppid| ppid != 2)
            })
        })
}
