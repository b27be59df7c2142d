//! The vm engine: the app image made bootable with a kernel image (`stamp build IMAGE --kernel
//! KREF`, cached by its inputs), booted under QEMU with `-snapshot`, its stamp-init in agent
//! mode talking to this launcher over a virtio-serial port (see [`crate::wire`]): the command
//! goes in, stdin goes in as it comes, signals are forwarded, stdout and stderr come back as
//! two streams, and the app's exit status ends the call. Kernel and init messages go to a
//! console log file, never into the app's output. QEMU is killed and its temporary directory
//! removed at the end in every case.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::Flake;
use crate::wire;
use crate::{Error, Result};

/// The firmware (code, variables template).
const OVMF: [(&str, &str); 2] = [
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
];

/// How long the guest may take to connect and ask for the command (a TCG boot is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// `$XDG_CACHE_HOME/stamp` (or `~/.cache/stamp`).
fn cache_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or_else(|| Error::Engine("no cache directory: set XDG_CACHE_HOME or HOME".into()))?;
    Ok(base.join("stamp"))
}

/// What identifies an image reference's content cheaply: the reference, for a file
/// reference (`oci-archive:PATH`, `rootfs:PATH`, a path) the file's size and time, and for a
/// name in stamp's store the digest it names now (a re-imported image makes a new disk).
fn ref_key(r: &str) -> String {
    let path = r.split_once(':').map_or(r, |(_, p)| p);
    match std::fs::metadata(path) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            format!("{r}\0{}\0{}\0{}", m.len(), m.mtime(), m.mtime_nsec())
        }
        Err(_) => match Some(stamp_oci::Store::default_root())
            .filter(|root| root.join("oci-layout").is_file())
            .and_then(|root| stamp_oci::Store::open(&root).ok())
            .and_then(|s| s.resolve(r).ok())
        {
            Some(d) => format!("{r}\0{}", d.digest()),
            None => r.to_string(),
        },
    }
}

/// The cache key of the disk for `image` booted by `kernel`, with this stamp binary (its
/// stamp-init is in the disk).
pub fn disk_key(image: &str, kernel: &str, exe: &Path) -> String {
    let mut h = Sha256::new();
    h.update(ref_key(image));
    h.update([0u8]);
    h.update(ref_key(kernel));
    h.update([0u8]);
    h.update(ref_key(&exe.display().to_string()));
    hex::encode(&h.finalize()[..16])
}

/// The bootable disk of `flake`, built once per inputs.
fn disk(flake: &Flake, kernel: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Engine(format!("cannot find the stamp binary: {e}")))?;
    let dir = cache_dir()?.join("app-vm");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let key = disk_key(&flake.image, kernel, &exe);
    let out = dir.join(format!("{key}.qcow2"));
    if out.is_file() {
        return Ok(out);
    }
    let tmp = dir.join(format!(".{key}.{}.qcow2", std::process::id()));
    let mut c = Command::new(&exe);
    c.arg("build")
        .arg(&flake.image)
        .arg("--kernel")
        .arg(kernel)
        .arg("-o")
        .arg(&tmp)
        .stdin(Stdio::null());
    if crate::launch::debug() {
        eprintln!("stamp: {}: building the disk: {c:?}", flake.file.display());
    }
    let res = c
        .output()
        .map_err(|e| Error::Engine(format!("cannot run {}: {e}", exe.display())))?;
    if !res.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Engine(format!(
            "{}: cannot make the disk of {} with kernel {kernel}: {}",
            flake.file.display(),
            flake.image,
            String::from_utf8_lossy(&res.stderr).trim()
        )));
    }
    std::fs::rename(&tmp, &out).map_err(|e| Error::io("rename", &tmp, e))?;
    Ok(out)
}

/// Kills QEMU when dropped.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The QEMU command line of a call.
pub fn qemu_command(
    flake: &Flake,
    disk: &Path,
    dir: &Path,
    accel: &str,
    ovmf_code: &Path,
) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    let memory = flake.runtime.memory.as_deref().unwrap_or("1G");
    let cpus = flake.runtime.cpus.unwrap_or(1).max(1);
    c.args(["-accel", accel, "-machine", "q35", "-m"])
        .arg(memory.trim_end_matches(['B', 'b']))
        .arg("-smp")
        .arg(cpus.to_string())
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            ovmf_code.display()
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,file={}",
            dir.join("vars.fd").display()
        ))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=qcow2,snapshot=on",
            disk.display()
        ))
        .args(["-device", "virtio-serial-pci,id=vser0", "-chardev"])
        .arg(format!(
            "socket,id=agent,path={},server=on,wait=off",
            dir.join("agent.sock").display()
        ))
        .arg("-device")
        .arg(format!(
            "virtserialport,bus=vser0.0,chardev=agent,name={}",
            wire::PORT_NAME
        ));
    if flake.runtime.no_net == Some(true) {
        c.args(["-nic", "none"]);
    } else {
        c.args(["-nic", "user,model=virtio-net-pci"]);
    }
    // Its own process group: the terminal's Ctrl-C is the app's (forwarded), not QEMU's.
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    // QEMU's own messages go to a file (quoted in errors), never into the app's stderr.
    c.stdin(Stdio::null()).stdout(Stdio::null());
    if let Ok(f) = std::fs::File::create(dir.join("qemu.err")) {
        c.stderr(f);
    } else {
        c.stderr(Stdio::null());
    }
    c
}

/// The last `n` lines of QEMU's messages and of the console log.
fn console_tail(dir: &Path, n: usize) -> String {
    let tail = |name: &str| {
        let mut text = Vec::new();
        if let Ok(f) = std::fs::File::open(dir.join(name)) {
            // The end is what matters; a runaway log is not read whole.
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let mut f = std::io::BufReader::new(f);
            let _ = std::io::Seek::seek(
                &mut f,
                std::io::SeekFrom::Start(len.saturating_sub(64 * 1024)),
            );
            let _ = f.take(64 * 1024).read_to_end(&mut text);
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    };
    format!("{}\n{}", tail("qemu.err"), tail("console.log"))
        .trim()
        .to_string()
}

/// Runs `flake`'s app for `args` in a microVM; returns the app's exit status (128+N for a
/// signal).
pub fn run(flake: &Flake, args: &[std::ffi::OsString]) -> Result<i32> {
    let kernel = flake.kernel.as_deref().ok_or_else(|| Error::Config {
        path: flake.file.clone(),
        message: "`vm.kernel` is missing: the image whose kernel boots the app".into(),
    })?;
    let (code, vars) = OVMF
        .iter()
        .map(|(c, v)| (Path::new(c), Path::new(v)))
        .find(|(c, v)| c.is_file() && v.is_file())
        .ok_or_else(|| {
            Error::Engine(
                "no UEFI firmware /usr/share/OVMF/OVMF_CODE.fd (apt-get install ovmf)".into(),
            )
        })?;
    let disk = disk(flake, kernel)?;
    let dir = tempfile::Builder::new()
        .prefix("stamp-app-vm.")
        .tempdir()
        .map_err(|e| Error::Engine(format!("cannot make a temporary directory: {e}")))?;
    std::fs::copy(vars, dir.path().join("vars.fd")).map_err(|e| Error::io("copy", vars, e))?;
    let cache = cache_dir()?;
    let _ = std::fs::create_dir_all(&cache);
    let (accel, _) = stamp_machine::accel::choose(Path::new("qemu-system-x86_64"), &cache);
    let mut c = qemu_command(flake, &disk, dir.path(), accel.as_str(), code);
    if crate::launch::debug() {
        eprintln!("stamp: {}: {c:?}", flake.file.display());
    }
    // Signals are blocked before any thread starts, and taken by a thread of ours.
    let signals = sig::block_signals();
    sig::die_with_parent(&mut c);
    let qemu = Qemu(c.spawn().map_err(|e| {
        Error::Engine(format!(
            "cannot run qemu-system-x86_64: {e} (apt-get install qemu-system-x86)"
        ))
    })?);
    let result = call(flake, args, dir.path(), qemu, signals);
    result.map_err(|e| {
        Error::Engine(format!(
            "{}: {e}; QEMU and the guest console said:\n{}",
            flake.file.display(),
            console_tail(dir.path(), 20)
        ))
    })
}

/// Signal masks (the only unsafe code of the crate: libc calls on plain data).
mod sig {
    #![allow(unsafe_code)]

    /// The signals forwarded to the app.
    const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGWINCH];

    fn signal_set() -> libc::sigset_t {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t.
        unsafe {
            libc::sigemptyset(&mut set);
            for s in FORWARDED {
                libc::sigaddset(&mut set, s);
            }
        }
        set
    }

    /// Blocks the forwarded signals in this thread (and the threads it starts); the set.
    pub fn block_signals() -> libc::sigset_t {
        let set = signal_set();
        // SAFETY: `set` is initialised; the old mask is not wanted.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        set
    }

    /// Makes the command's process get SIGKILL when this process dies (QEMU never outlives
    /// the launcher, even one killed with SIGKILL).
    pub fn die_with_parent(c: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nothing is allocated in the child.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }

    /// The window size (rows, columns) of terminal `fd`.
    pub fn winsize(fd: libc::c_int) -> Option<(u16, u16)> {
        // SAFETY: winsize is plain data, filled by the ioctl.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: `ws` is a valid winsize for TIOCGWINSZ.
        (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0)
            .then_some((ws.ws_row, ws.ws_col))
    }

    /// Puts terminal `fd` in raw mode; its settings before, to restore.
    pub fn raw(fd: libc::c_int) -> Option<libc::termios> {
        // SAFETY: termios is plain data, filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid termios.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return None;
        }
        let before = t;
        // SAFETY: `t` is a valid termios.
        unsafe {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
        Some(before)
    }

    /// Restores terminal settings.
    pub fn restore(fd: libc::c_int, t: &libc::termios) {
        // SAFETY: `t` is a valid termios.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) };
    }

    /// Waits for one of the blocked signals; None on error.
    pub fn wait(set: &libc::sigset_t) -> Option<libc::c_int> {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` and `sig` are valid.
        (unsafe { libc::sigwait(set, &mut sig) } == 0).then_some(sig)
    }
}

/// Connects to the agent socket, retrying while QEMU starts.
fn connect(sock: &Path, qemu: &mut Qemu) -> std::result::Result<UnixStream, String> {
    let start = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(sock) {
            return Ok(s);
        }
        if let Ok(Some(st)) = qemu.0.try_wait() {
            return Err(format!("QEMU ended ({st})"));
        }
        if start.elapsed() > BOOT_TIMEOUT {
            return Err(format!(
                "no agent socket {} after {BOOT_TIMEOUT:?}",
                sock.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The caller's terminal in raw mode while the app has it; restored when dropped.
struct RawTerminal(Option<libc::termios>);

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            sig::restore(0, t);
        }
    }
}

/// One call: connect, send the command, pump the streams, return the status.
fn call(
    flake: &Flake,
    args: &[std::ffi::OsString],
    dir: &Path,
    mut qemu: Qemu,
    signals: libc::sigset_t,
) -> std::result::Result<i32, String> {
    let stream = connect(&dir.join("agent.sock"), &mut qemu)?;
    let writer = Arc::new(Mutex::new(
        stream
            .try_clone()
            .map_err(|e| format!("agent socket: {e}"))?,
    ));
    let mut argv = vec![flake.target.clone()];
    argv.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));
    let cmd = wire::Command {
        argv,
        env: Vec::new(),
        cwd: String::new(),
        user: flake
            .runas
            .as_deref()
            .map(|u| u.trim_start_matches('#').to_string())
            .unwrap_or_default(),
        // A terminal for the app when the caller is on one (as the podman engine's -t).
        tty: crate::launch::Terminal::detect()
            .stdin
            .then(|| sig::winsize(1))
            .flatten()
            .filter(|_| crate::launch::Terminal::detect().stdout),
    };
    let _raw = RawTerminal(if cmd.tty.is_some() { sig::raw(0) } else { None });
    {
        let mut w = writer.lock().map_err(|_| "agent socket lock".to_string())?;
        wire::write_frame(&mut *w, wire::COMMAND, &wire::encode_command(&cmd))
            .map_err(|e| format!("sending the command: {e}"))?;
    }
    // stdin → the app, then its end.
    let w = writer.clone();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let Ok(mut w) = w.lock() else { return };
                    if wire::write_frame(&mut *w, wire::STDIN, &buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        if let Ok(mut w) = w.lock() {
            let _ = wire::write_frame(&mut *w, wire::STDIN_EOF, &[]);
        }
    });
    // Signals → the app.
    let w = writer.clone();
    std::thread::spawn(move || {
        loop {
            let Some(sig) = sig::wait(&signals) else {
                return;
            };
            let frame = if sig == libc::SIGWINCH {
                match sig::winsize(1) {
                    Some((rows, cols)) => (wire::WINSIZE, wire::encode_winsize(rows, cols)),
                    None => continue,
                }
            } else {
                (wire::SIGNAL, sig.to_be_bytes())
            };
            let Ok(mut w) = w.lock() else { return };
            if wire::write_frame(&mut *w, frame.0, &frame.1).is_err() {
                return;
            }
        }
    });
    let mut reader = stream;
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    loop {
        match wire::read_frame(&mut reader) {
            Ok(Some((wire::STDOUT, p))) => {
                let _ = stdout.write_all(&p);
                let _ = stdout.flush();
            }
            Ok(Some((wire::STDERR, p))) => {
                let _ = stderr.write_all(&p);
                let _ = stderr.flush();
            }
            Ok(Some((wire::EXIT, p))) => {
                let (kind, value) = match p.as_slice() {
                    [k, a, b, c, d] => (*k, i32::from_be_bytes([*a, *b, *c, *d])),
                    _ => return Err(format!("exit frame of {} bytes, not 5", p.len())),
                };
                drop(qemu);
                return Ok(if kind == 1 { 128 + value } else { value });
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err("the guest closed the agent port before the app's exit status".into());
            }
            Err(e) => return Err(format!("reading from the guest: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FlakeFile, Runtime, Section, resolve};

    #[test]
    fn qemu_line_has_the_snapshot_the_agent_port_and_no_net() {
        let file = FlakeFile {
            vm: Some(Section {
                name: Some("app".into()),
                host_app_path: Some("/usr/bin/app".into()),
                kernel: Some("debian".into()),
                runtime: Some(Runtime {
                    memory: Some("512M".into()),
                    cpus: Some(2),
                    no_net: Some(true),
                    ..Runtime::default()
                }),
                ..Section::default()
            }),
            ..FlakeFile::default()
        };
        let f = resolve("app", Path::new("/f/app.yaml"), file).unwrap();
        assert_eq!(f.kernel.as_deref(), Some("debian"));
        let c = qemu_command(
            &f,
            Path::new("/c/d.qcow2"),
            Path::new("/t"),
            "tcg",
            Path::new("/o"),
        );
        let a: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = a.join(" ");
        for want in [
            "-accel tcg",
            "-m 512M",
            "-smp 2",
            "file=/c/d.qcow2,if=virtio,format=qcow2,snapshot=on",
            "socket,id=agent,path=/t/agent.sock,server=on,wait=off",
            "name=stamp.agent",
            "-serial file:/t/console.log",
            "-nic none",
        ] {
            assert!(line.contains(want), "no {want:?} in {line}");
        }
        assert_ne!(
            disk_key("a", "k", Path::new("/x")),
            disk_key("a", "k2", Path::new("/x"))
        );
    }
}
