//! The vm engine: the app image made bootable with a kernel image (`stamp build IMAGE --kernel
//! KREF`, cached by its inputs), booted under QEMU with `-snapshot`, its stamp-init in agent
//! mode talking to this launcher over a virtio-serial port, or over vsock through
//! vhost-device-vsock with Firecracker's handshake (see [`crate::wire`]): the command
//! goes in, stdin goes in as it comes, signals are forwarded, stdout and stderr come back as
//! two streams, and the app's exit status ends the call. Kernel and init messages go to a
//! console log file, never into the app's output. QEMU (and the vsock device) is killed and its
//! temporary directory removed at the end in every case.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::{Flake, Transport};
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

/// The agent's socket in a machine's directory: QEMU's end of the virtio-serial port, or
/// vhost-device-vsock's end of the vsock device (Firecracker's hybrid vsock protocol).
const AGENT_SOCKET: &str = "agent.sock";

/// vhost-device-vsock's vhost-user socket, which QEMU connects to.
const VHOST_SOCKET: &str = "vhost.sock";

/// The device process of the vsock transport.
const VSOCK_DEVICE: &str = "vhost-device-vsock";

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

/// The cache key of the disk for `image` booted by `kernel`, `size` bytes or more, with this
/// stamp binary (its stamp-init is in the disk).
pub fn disk_key(image: &str, kernel: &str, size: Option<&str>, exe: &Path) -> String {
    let mut h = Sha256::new();
    h.update(ref_key(image));
    h.update([0u8]);
    h.update(ref_key(kernel));
    h.update([0u8]);
    h.update(size.unwrap_or(""));
    h.update([0u8]);
    h.update(ref_key(&exe.display().to_string()));
    hex::encode(&h.finalize()[..16])
}

/// Where the disks of app `name` are kept (`$XDG_CACHE_HOME/stamp/app-vm/NAME`);
/// `stamp app remove` removes it.
pub fn disk_dir(name: &str) -> Result<PathBuf> {
    Ok(cache_dir()?
        .join("app-vm")
        .join(crate::config::clean_name(name)))
}

/// The bootable disk of `flake` made from `image` (its own, or the one composed for it),
/// built once per inputs.
fn disk(flake: &Flake, image: &str, kernel: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Engine(format!("cannot find the stamp binary: {e}")))?;
    let dir = disk_dir(&flake.name)?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let size = flake.overlay_size();
    let key = disk_key(image, kernel, size.as_deref(), &exe);
    let out = dir.join(format!("{key}.qcow2"));
    if out.is_file() {
        return Ok(out);
    }
    let tmp = dir.join(format!(".{key}.{}.qcow2", std::process::id()));
    let mut c = Command::new(&exe);
    c.arg("build")
        .arg(image)
        .arg("--kernel")
        .arg(kernel)
        .arg("-o")
        .arg(&tmp)
        .stdin(Stdio::null());
    if let Some(size) = &size {
        c.arg("--size").arg(size);
    }
    if crate::launch::debug() {
        eprintln!("stamp: {}: building the disk: {c:?}", flake.file.display());
    }
    let res = c
        .output()
        .map_err(|e| Error::Engine(format!("cannot run {}: {e}", exe.display())))?;
    if !res.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Engine(format!(
            "{}: cannot make the disk of {image} with kernel {kernel}: {}",
            flake.file.display(),
            String::from_utf8_lossy(&res.stderr).trim()
        )));
    }
    std::fs::rename(&tmp, &out).map_err(|e| Error::io("rename", &tmp, e))?;
    Ok(out)
}

/// A child process (QEMU, its vsock device) killed and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
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
    let memory = flake.memory().unwrap_or_else(|| "1G".into());
    let cpus = flake.cpus().unwrap_or(1).max(1);
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
        ));
    if flake.transport() == Transport::Vsock {
        // vhost-user needs the guest's memory shared with the device process.
        c.arg("-object")
            .arg(format!(
                "memory-backend-memfd,id=mem,size={},share=on",
                memory.trim_end_matches(['B', 'b'])
            ))
            .args(["-machine", "memory-backend=mem", "-chardev"])
            .arg(format!(
                "socket,id=vsock,path={}",
                dir.join(VHOST_SOCKET).display()
            ))
            .args(["-device", "vhost-user-vsock-pci,chardev=vsock", "-fw_cfg"])
            .arg(format!("name={},string=vsock", wire::FW_CFG_AGENT));
    } else {
        c.args(["-device", "virtio-serial-pci,id=vser0", "-chardev"])
            .arg(format!(
                "socket,id=agent,path={},server=on,wait=off",
                dir.join(AGENT_SOCKET).display()
            ))
            .arg("-device")
            .arg(format!(
                "virtserialport,bus=vser0.0,chardev=agent,name={}",
                wire::PORT_NAME
            ));
    }
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

/// The UEFI firmware: code and variables template.
fn firmware() -> Result<(&'static Path, &'static Path)> {
    OVMF.iter()
        .map(|(c, v)| (Path::new(*c), Path::new(*v)))
        .find(|(c, v)| c.is_file() && v.is_file())
        .ok_or_else(|| {
            Error::Engine(
                "no UEFI firmware /usr/share/OVMF/OVMF_CODE.fd (apt-get install ovmf)".into(),
            )
        })
}

/// What a call needs to start a machine.
struct Machine<'a> {
    flake: &'a Flake,
    disk: PathBuf,
    code: &'static Path,
    vars: &'static Path,
}

impl Machine<'_> {
    /// The QEMU command of a machine whose files are in `dir` (the variables copied there).
    fn command(&self, dir: &Path) -> Result<Command> {
        std::fs::copy(self.vars, dir.join("vars.fd"))
            .map_err(|e| Error::io("copy", self.vars, e))?;
        let cache = cache_dir()?;
        let _ = std::fs::create_dir_all(&cache);
        let (accel, _) = stamp_machine::accel::choose(Path::new("qemu-system-x86_64"), &cache);
        let mut c = qemu_command(self.flake, &self.disk, dir, accel.as_str(), self.code);
        sig::unblock_in_child(&mut c);
        if crate::launch::debug() {
            eprintln!("stamp: {}: {c:?}", self.flake.file.display());
        }
        Ok(c)
    }

    /// Starts the vsock device process of a machine whose files are in `dir`, when its
    /// transport is vsock, once its vhost-user socket is there for QEMU. With `tied`, it dies
    /// with this process.
    fn vsock_device(&self, dir: &Path, tied: bool) -> Result<Option<Child>> {
        if self.flake.transport() != Transport::Vsock {
            return Ok(None);
        }
        let vhost = dir.join(VHOST_SOCKET);
        let mut c = Command::new(VSOCK_DEVICE);
        c.arg("--socket")
            .arg(&vhost)
            .arg("--uds-path")
            .arg(dir.join(AGENT_SOCKET))
            .args(["--guest-cid", "3"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c.stderr(match std::fs::File::create(dir.join("vsock.err")) {
            Ok(f) => Stdio::from(f),
            Err(_) => Stdio::null(),
        });
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        sig::unblock_in_child(&mut c);
        if tied {
            sig::die_with_parent(&mut c);
        }
        if crate::launch::debug() {
            eprintln!("stamp: {}: {c:?}", self.flake.file.display());
        }
        let mut child = c.spawn().map_err(|e| {
            Error::Engine(format!(
                "{}: `runtime.transport: vsock` needs {VSOCK_DEVICE}: {e} (cargo install {VSOCK_DEVICE})",
                self.flake.file.display()
            ))
        })?;
        let start = Instant::now();
        while !vhost.exists() {
            if !matches!(child.try_wait(), Ok(None)) || start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Engine(format!(
                    "{VSOCK_DEVICE} did not make {}: {}",
                    vhost.display(),
                    std::fs::read_to_string(dir.join("vsock.err"))
                        .unwrap_or_default()
                        .trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Some(child))
    }
}

/// Runs `flake`'s app for `call` in a microVM; returns the app's exit status (128+N for a
/// signal). A flake with a base, layers or includes boots the image composed for it. A
/// resume or attach flake's machine is an instance that outlives the call (named by
/// `@INSTANCE`); otherwise each call boots its own machine, removed at the end.
pub fn run(flake: &Flake, call: &crate::launch::Call) -> Result<i32> {
    let kernel = flake.kernel.as_deref().ok_or_else(|| Error::Config {
        path: flake.file.clone(),
        message: "`vm.kernel` is missing: the image whose kernel boots the app".into(),
    })?;
    let (code, vars) = firmware()?;
    let image = if crate::provision::needed(flake) {
        crate::provision::compose(flake, &stamp_oci::Store::default_root())?
    } else {
        flake.image.clone()
    };
    let machine = Machine {
        flake,
        disk: disk(flake, &image, kernel)?,
        code,
        vars,
    };
    let mode = if flake.attach {
        wire::Mode::Attach
    } else if flake.resume {
        wire::Mode::Resume
    } else {
        wire::Mode::Once
    };
    // Signals are blocked before any thread starts, and taken by a thread of ours.
    let signals = sig::block_signals();
    if mode != wire::Mode::Once {
        return instance::call(&machine, call, mode, signals);
    }
    let dir = tempfile::Builder::new()
        .prefix("stamp-app-vm.")
        .tempdir()
        .map_err(|e| Error::Engine(format!("cannot make a temporary directory: {e}")))?;
    let device = machine.vsock_device(dir.path(), true)?.map(Killed);
    let mut c = machine.command(dir.path())?;
    sig::die_with_parent(&mut c);
    let mut qemu = Killed(c.spawn().map_err(spawn_error)?);
    let result = connect(dir.path(), flake.transport(), signals, || {
        !matches!(qemu.0.try_wait(), Ok(Some(_)))
    })
    .and_then(|c| c.talk(flake, &call.args, mode, false, signals));
    drop(qemu);
    drop(device);
    result.map_err(|e| failed(flake, dir.path(), &e))
}

/// The error of a call that failed, with what QEMU and the guest console said last.
fn failed(flake: &Flake, dir: &Path, e: &str) -> Error {
    Error::Engine(format!(
        "{}: {e}; QEMU and the guest console said:\n{}",
        flake.file.display(),
        console_tail(dir, 20)
    ))
}

fn spawn_error(e: std::io::Error) -> Error {
    Error::Engine(format!(
        "cannot run qemu-system-x86_64: {e} (apt-get install qemu-system-x86)"
    ))
}

/// Persistent machines: a resume or attach flake's instance boots once and stays; each call
/// connects to its agent socket. Calls to one instance are served one at a time (a lock in
/// its directory); `%remove`, `stamp app remove` or the app's end (attach) stop it.
pub mod instance {
    use super::*;
    use serde::{Deserialize, Serialize};
    use stamp_machine::status::Process;

    /// What is recorded of an instance (`instance.json` in its directory).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Record {
        /// The app's name.
        pub app: String,
        /// `@INSTANCE`, if named.
        pub instance: Option<String>,
        /// The QEMU process.
        pub qemu: Process,
        /// The vsock device process (vsock transport).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub vsock: Option<Process>,
    }

    /// Where instances live: `$XDG_RUNTIME_DIR/stamp/app-vm` (or the cache's `app-vm/run`).
    fn root() -> Result<PathBuf> {
        Ok(
            match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
                Some(r) if r.is_absolute() && r.is_dir() => r.join("stamp").join("app-vm"),
                _ => cache_dir()?.join("app-vm").join("run"),
            },
        )
    }

    /// The record of the instance in `dir`, whether its QEMU runs or not.
    fn record(dir: &Path) -> Option<Record> {
        let text = std::fs::read(dir.join("instance.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The live record of the instance in `dir`, if its QEMU runs.
    fn live(dir: &Path) -> Option<Record> {
        record(dir).filter(|r| r.qemu.alive())
    }

    /// Ends `p` if it runs: SIGTERM, SIGKILL after 5 s.
    fn end(p: &Process) {
        if !p.alive() {
            return;
        }
        sig::kill(p.pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if p.alive() {
            sig::kill(p.pid, libc::SIGKILL);
        }
    }

    /// Stops the instance in `dir` (QEMU, then its vsock device) and removes its files.
    fn stop(dir: &Path) {
        if let Some(r) = record(dir) {
            end(&r.qemu);
            r.vsock.iter().for_each(end);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// One call in `flake`'s instance for `call`, started first when it does not run.
    pub(super) fn call(
        machine: &Machine<'_>,
        call: &crate::launch::Call,
        mode: wire::Mode,
        signals: libc::sigset_t,
    ) -> Result<i32> {
        let flake = machine.flake;
        let dir = root()?.join(crate::launch::instance_name(flake, call));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let mut lock = Some(sig::lock(&dir.join("lock")).map_err(|e| Error::io("lock", &dir, e))?);
        let recorded = record(&dir);
        let running = recorded.as_ref().filter(|r| r.qemu.alive());
        let started_now = running.is_none();
        let join = running.is_some() && mode == wire::Mode::Attach;
        let qemu = match running {
            Some(r) => r.qemu,
            None => {
                // What a machine that ended left (its device process too).
                if let Some(old) = &recorded {
                    old.vsock.iter().for_each(end);
                }
                for f in [
                    AGENT_SOCKET,
                    VHOST_SOCKET,
                    "instance.json",
                    "console.log",
                    "qemu.err",
                    "vsock.err",
                ] {
                    let _ = std::fs::remove_file(dir.join(f));
                }
                let device = machine.vsock_device(&dir, false)?;
                let vsock = device.as_ref().and_then(|d| Process::of(d.id()));
                let started = machine.command(&dir).and_then(|mut c| {
                    let child = c.spawn().map_err(spawn_error)?;
                    Process::of(child.id()).ok_or_else(|| {
                        Error::Engine(format!("QEMU ended at once: {}", console_tail(&dir, 20)))
                    })
                });
                // A machine that did not start leaves no device process behind.
                let qemu = started.inspect_err(|_| vsock.iter().for_each(end))?;
                let record = Record {
                    app: flake.name.clone(),
                    instance: call.instance.clone(),
                    qemu,
                    vsock,
                };
                let json = serde_json::to_vec_pretty(&record)
                    .map_err(|e| Error::Engine(format!("instance record: {e}")))?;
                let path = dir.join("instance.json");
                std::fs::write(&path, json).map_err(|e| Error::io("write", &path, e))?;
                qemu
            }
        };
        let result = connect(&dir, flake.transport(), signals, || qemu.alive()).and_then(|c| {
            // An attach instance's app outlives its callers: the next one need not wait
            // for this call to end (it is let in when this caller leaves).
            if mode == wire::Mode::Attach {
                lock.take();
            }
            c.talk(flake, &call.args, mode, join, signals)
        });
        let result = result.map_err(|e| failed(flake, &dir, &e));
        // An attach instance ends with its app (the guest powers off); a machine this call
        // started and could not use is not left behind.
        let ended = mode == wire::Mode::Attach && result.is_ok();
        if call.remove || ended || (started_now && result.is_err()) {
            if ended && !call.remove {
                let deadline = Instant::now() + Duration::from_secs(10);
                while qemu.alive() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            stop(&dir);
        }
        result
    }

    /// The live instances of app `name` (their directories' names).
    pub fn list(name: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(root()?) else {
            return Ok(out);
        };
        for e in entries.filter_map(|e| e.ok()) {
            if live(&e.path()).is_some_and(|r| r.app == name) {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Stops and removes every instance of app `name`.
    pub fn remove_all(name: &str) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(root()?) else {
            return Ok(());
        };
        for e in entries.filter_map(|e| e.ok()) {
            if record(&e.path()).is_some_and(|r| r.app == name) {
                stop(&e.path());
            }
        }
        Ok(())
    }
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

    /// Gives the command's process an empty signal mask (the launcher blocks the signals it
    /// forwards, and a mask is inherited across exec: QEMU would ignore SIGTERM).
    pub fn unblock_in_child(c: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: sigemptyset and pthread_sigmask are async-signal-safe; `set` is on the
        // child's stack.
        unsafe {
            c.pre_exec(|| {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
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

    /// Sends `sig` to `pid` (errors ignored: it may be gone).
    pub fn kill(pid: u32, sig: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: no pointers.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Takes an exclusive lock on file `path` (made if missing), waiting for it; held until
    /// the file is dropped.
    pub fn lock(path: &std::path::Path) -> std::io::Result<std::fs::File> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        loop {
            // SAFETY: a valid descriptor, no pointers.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(f);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Takes one of the blocked signals if one is pending, without waiting.
    pub fn take(set: &libc::sigset_t) -> Option<libc::c_int> {
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `set` and `zero` are valid; the siginfo is not wanted.
        let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &zero) };
        (sig > 0).then_some(sig)
    }

    /// Waits for one of the blocked signals; None on error.
    pub fn wait(set: &libc::sigset_t) -> Option<libc::c_int> {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` and `sig` are valid.
        (unsafe { libc::sigwait(set, &mut sig) } == 0).then_some(sig)
    }
}

/// A connection attempt's outcome.
enum Connected {
    /// The stream to the guest agent.
    Stream(UnixStream),
    /// A signal that would end the app came first (Ctrl-C while the machine boots).
    Interrupted(libc::c_int),
}

impl Connected {
    /// The call over this connection (see [`talk`]); 128+N when signal N came first.
    fn talk(
        self,
        flake: &Flake,
        args: &[std::ffi::OsString],
        mode: wire::Mode,
        join: bool,
        signals: libc::sigset_t,
    ) -> std::result::Result<i32, String> {
        match self {
            Connected::Stream(s) => talk(flake, args, s, mode, join, signals),
            Connected::Interrupted(sig) => Ok(128 + sig),
        }
    }
}

/// Connects to the agent socket in `dir`, retrying while the machine starts (as long as
/// `alive` says it runs). Over vsock, each attempt is Firecracker's hybrid vsock handshake
/// (`CONNECT PORT\n`, answered `OK N\n` once the guest listens).
fn connect(
    dir: &Path,
    transport: Transport,
    signals: libc::sigset_t,
    mut alive: impl FnMut() -> bool,
) -> std::result::Result<Connected, String> {
    let sock = dir.join(AGENT_SOCKET);
    let start = Instant::now();
    loop {
        if let Some(sig) = sig::take(&signals).filter(|s| *s != libc::SIGWINCH) {
            return Ok(Connected::Interrupted(sig));
        }
        if let Ok(s) = UnixStream::connect(&sock) {
            match transport {
                Transport::Serial => return Ok(Connected::Stream(s)),
                Transport::Vsock => {
                    if hybrid_handshake(&s, wire::VSOCK_PORT) {
                        return Ok(Connected::Stream(s));
                    }
                }
            }
        }
        if !alive() {
            return Err("QEMU ended".into());
        }
        if start.elapsed() > BOOT_TIMEOUT {
            return Err(format!(
                "no agent at {} after {BOOT_TIMEOUT:?}",
                sock.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Firecracker's hybrid vsock handshake on `s`: asks for guest port `port`; true once the
/// guest accepted (`OK N`), false when it did not (yet).
fn hybrid_handshake(mut s: &UnixStream, port: u32) -> bool {
    if s.write_all(format!("CONNECT {port}\n").as_bytes()).is_err() {
        return false;
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            _ => return false,
        }
    }
    let _ = s.set_read_timeout(None);
    line.starts_with(b"OK ")
}

/// A session's nonce: 16 random bytes.
fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut n))
        .is_err()
    {
        // Unique enough to tell this call's answer from an earlier connection's leftovers.
        let mut h = Sha256::new();
        h.update(format!("{:?}{}", Instant::now(), std::process::id()));
        n.copy_from_slice(&h.finalize()[..16]);
    }
    n
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

/// One call over the agent connection `stream`: a session, then the command (or, with
/// `join`, joining the instance's running app), the streams pumped both ways, signals
/// forwarded; the app's status.
fn talk(
    flake: &Flake,
    args: &[std::ffi::OsString],
    stream: UnixStream,
    mode: wire::Mode,
    join: bool,
    signals: libc::sigset_t,
) -> std::result::Result<i32, String> {
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
        mode,
    };
    let nonce = nonce();
    let mut reader = stream;
    {
        let mut w = writer.lock().map_err(|_| "agent socket lock".to_string())?;
        wire::write_frame(&mut *w, wire::SESSION, &nonce)
            .map_err(|e| format!("starting the session: {e}"))?;
    }
    // Signals → the app, once the session is the guest's; one that would end the app before
    // that (Ctrl-C while the machine boots) ends the call instead.
    let established = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let early = Arc::new(std::sync::atomic::AtomicI32::new(0));
    {
        let (w, established, early) = (writer.clone(), established.clone(), early.clone());
        let socket = reader
            .try_clone()
            .map_err(|e| format!("agent socket: {e}"))?;
        std::thread::spawn(move || {
            loop {
                let Some(sig) = sig::wait(&signals) else {
                    return;
                };
                if !established.load(std::sync::atomic::Ordering::SeqCst) {
                    if sig != libc::SIGWINCH {
                        early.store(sig, std::sync::atomic::Ordering::SeqCst);
                        let _ = socket.shutdown(std::net::Shutdown::Both);
                    }
                    continue;
                }
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
    }
    // The guest answers when it is up: a boot under TCG takes a while.
    let _ = reader.set_read_timeout(Some(BOOT_TIMEOUT));
    let answered = wire::await_session(&mut reader, &nonce, 64 << 20);
    let sig = early.load(std::sync::atomic::Ordering::SeqCst);
    if sig != 0 {
        return Ok(128 + sig);
    }
    answered.map_err(|e| format!("waiting for the guest's agent: {e}"))?;
    let _ = reader.set_read_timeout(None);
    let _raw = RawTerminal(if cmd.tty.is_some() { sig::raw(0) } else { None });
    {
        let mut w = writer.lock().map_err(|_| "agent socket lock".to_string())?;
        let sent = if join {
            wire::write_frame(&mut *w, wire::ATTACH, &[])
        } else {
            wire::write_frame(&mut *w, wire::COMMAND, &wire::encode_command(&cmd))
        };
        sent.map_err(|e| format!("sending the command: {e}"))?;
        established.store(true, std::sync::atomic::Ordering::SeqCst);
        if join {
            if let Some((rows, cols)) = cmd.tty {
                let _ =
                    wire::write_frame(&mut *w, wire::WINSIZE, &wire::encode_winsize(rows, cols));
            }
        }
    }
    // stdin → the app, within the credit the guest grants, then its end.
    let w = writer.clone();
    let credit = Arc::new((
        Mutex::new(u64::from(wire::STDIN_WINDOW)),
        std::sync::Condvar::new(),
    ));
    let granted = credit.clone();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let (lock, more) = &*granted;
                    let Ok(mut left) = lock.lock() else { return };
                    while *left < n as u64 {
                        let Ok(l) = more.wait(left) else { return };
                        left = l;
                    }
                    *left -= n as u64;
                    drop(left);
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
            Ok(Some((wire::CREDIT, p))) => {
                if let Ok(b) = <[u8; 4]>::try_from(p.as_slice()) {
                    let (lock, more) = &*credit;
                    if let Ok(mut left) = lock.lock() {
                        *left = left.saturating_add(u64::from(u32::from_be_bytes(b)));
                        more.notify_all();
                    }
                }
            }
            Ok(Some((wire::EXIT, p))) => {
                let (kind, value) = match p.as_slice() {
                    [k, a, b, c, d] => (*k, i32::from_be_bytes([*a, *b, *c, *d])),
                    _ => return Err(format!("exit frame of {} bytes, not 5", p.len())),
                };
                return Ok(if kind == 1 { 128 + value } else { value });
            }
            Ok(Some(_)) => {}
            // Interrupted while the command was on its way.
            Ok(None) | Err(_) if early.load(std::sync::atomic::Ordering::SeqCst) != 0 => {
                return Ok(128 + early.load(std::sync::atomic::Ordering::SeqCst));
            }
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
    fn the_hybrid_handshake_asks_for_the_port_and_needs_ok() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("v.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let mut asked = Vec::new();
            // The guest does not listen yet: the device closes the connection; then it does.
            for answer in [&b""[..], b"OK 1073741824\n"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut line = [0u8; 13];
                s.read_exact(&mut line).unwrap();
                asked.push(String::from_utf8(line.to_vec()).unwrap());
                s.write_all(answer).unwrap();
            }
            asked
        });
        let first = UnixStream::connect(&sock).unwrap();
        assert!(!hybrid_handshake(&first, 1024));
        let second = UnixStream::connect(&sock).unwrap();
        assert!(hybrid_handshake(&second, 1024));
        assert_eq!(server.join().unwrap(), ["CONNECT 1024\n", "CONNECT 1024\n"]);
    }

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
        let line = |f: &Flake| {
            qemu_command(
                f,
                Path::new("/c/d.qcow2"),
                Path::new("/t"),
                "tcg",
                Path::new("/o"),
            )
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
        };
        let serial = line(&f);
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
            assert!(serial.contains(want), "no {want:?} in {serial}");
        }
        assert!(!serial.contains("vhost-user-vsock"), "{serial}");
        let mut vsock = f.clone();
        vsock.runtime.transport = Some(Transport::Vsock);
        let line = line(&vsock);
        for want in [
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-machine memory-backend=mem",
            "socket,id=vsock,path=/t/vhost.sock",
            "-device vhost-user-vsock-pci,chardev=vsock",
            "-fw_cfg name=opt/org.stamp/agent,string=vsock",
        ] {
            assert!(line.contains(want), "no {want:?} in {line}");
        }
        assert!(!line.contains("virtserialport"), "{line}");
        assert_ne!(
            disk_key("a", "k", None, Path::new("/x")),
            disk_key("a", "k2", None, Path::new("/x"))
        );
        assert_ne!(
            disk_key("a", "k", None, Path::new("/x")),
            disk_key("a", "k", Some("2G"), Path::new("/x"))
        );
    }
}
