//! The Firecracker driver: a kernel, an optional initrd and a raw root filesystem booted by
//! `firecracker`, configured through its API socket ([`api`] over [`http`]).
//!
//! Firecracker needs KVM and has no user-mode network; where no `firecracker` binary exists,
//! [`Firecracker::available`] says so and where to get it. The machine's root disk is a copy
//! of the image's (Firecracker writes to it; the image must not change), sharing blocks where
//! the filesystem can (`copy_file_range`) and keeping holes.

pub mod api;
pub mod http;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::driver::{Driver, Launch, which};
use crate::spec::{MachineSpec, Source};
use crate::status::Process;
use crate::store::MachineDir;
use crate::{Error, Result};
use api::{ActionType, ApiRequest, VmState};

/// Where Firecracker's releases are.
pub const RELEASES: &str = "https://github.com/firecracker-microvm/firecracker/releases";

/// The machine's copy of the root disk, in its directory.
pub const ROOT_DISK: &str = "rootfs.img";

/// The vsock device's host socket, in the machine's directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";

/// Firecracker's own log (its messages, not the guest's console), in the machine's directory.
pub const VMM_LOG: &str = "vmm.log";

/// How long `started` waits for Firecracker to open its API socket (it does so at once; the
/// margin is for a loaded host).
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one API read or write may take. InstanceStart loads the kernel and initrd before
/// it answers, which takes well under a second; the margin is for a loaded host.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

/// Firecracker's instance ids: 1 to 64 letters, digits and '-'.
const MAX_ID: usize = 64;

/// The Firecracker driver.
#[derive(Debug, Clone)]
pub struct Firecracker {
    program: OsString,
}

impl Default for Firecracker {
    fn default() -> Firecracker {
        Firecracker::new()
    }
}

impl Firecracker {
    /// The driver running `firecracker` from `PATH`.
    pub fn new() -> Firecracker {
        Firecracker::with_program("firecracker")
    }

    /// The driver running `program` (a name looked up on `PATH`, or a path).
    pub fn with_program(program: impl Into<OsString>) -> Firecracker {
        Firecracker {
            program: program.into(),
        }
    }

    /// The binary, if it is there.
    fn binary(&self) -> Option<PathBuf> {
        let p = Path::new(&self.program);
        if p.components().count() > 1 {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .then(|| p.to_path_buf())
        } else {
            which(&p.to_string_lossy())
        }
    }

    /// The requests that configure and boot the machine in `dir`.
    pub fn start_sequence(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<Vec<ApiRequest>> {
        let root_disk = dir.path().join(ROOT_DISK);
        let vsock = socket_arg(&dir.path().join(VSOCK_SOCKET));
        api::start_sequence(
            spec,
            &api::Paths {
                root_disk: &root_disk,
                vsock: &vsock,
            },
        )
    }

    /// Sends `req` to the machine's API and checks that it succeeded.
    pub fn call(&self, dir: &MachineDir, req: &ApiRequest) -> Result<()> {
        call(&dir.api_socket(), req)
    }
}

/// Sends `req` to the API at `socket`; a failure (Firecracker's `fault_message`) becomes an
/// error naming the request.
pub fn call(socket: &Path, req: &ApiRequest) -> Result<()> {
    let body = (!req.body.is_null()).then(|| serde_json::to_vec(&req.body).unwrap_or_default());
    let resp = http::request(
        socket,
        req.method.as_str(),
        &req.path,
        body.as_deref(),
        API_TIMEOUT,
    )
    .map_err(|e| {
        Error::Driver(format!(
            "firecracker API {} at {}: {e}",
            req.describe(),
            socket.display()
        ))
    })?;
    if (200..300).contains(&resp.status) {
        return Ok(());
    }
    let fault = serde_json::from_slice::<api::Fault>(&resp.body)
        .map(|f| f.fault_message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&resp.body).trim().to_string());
    let fault = if fault.is_empty() {
        "no reason given".to_string()
    } else {
        fault
    };
    Err(Error::Driver(format!(
        "firecracker rejected {} (HTTP {}): {fault}",
        req.describe(),
        resp.status
    )))
}

/// `path` as given to Firecracker, which binds it: itself when `sockaddr_un` holds it, else its
/// name alone (Firecracker runs in the machine's directory).
fn socket_arg(path: &Path) -> PathBuf {
    if path.as_os_str().len() <= http::MAX_SOCKET_PATH {
        path.to_path_buf()
    } else {
        path.file_name()
            .map_or_else(|| path.to_path_buf(), PathBuf::from)
    }
}

/// The instance id for machine `name`: Firecracker allows letters, digits and '-' only.
pub fn instance_id(name: &str) -> String {
    let id: String = name
        .chars()
        .take(MAX_ID)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if id.is_empty() { "stamp".into() } else { id }
}

/// The kernel, initrd and root disk of a Firecracker machine.
fn kernel_source(spec: &MachineSpec) -> Result<(&Path, Option<&Path>, Option<&Path>)> {
    match &spec.source {
        Source::Kernel {
            kernel,
            initrd,
            root,
            ..
        } => Ok((kernel, initrd.as_deref(), root.as_deref())),
        _ => Err(api::not_a_kernel(spec)),
    }
}

/// Checks that `path` is a readable regular file.
fn check_file(path: &Path, what: &str) -> Result<std::fs::File> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::Invalid(format!("cannot open the {what} {}: {e}", path.display())))?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(Error::Invalid(format!(
            "the {what} {} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

/// Checks that the kernel is a format Firecracker loads: an ELF vmlinux on x86_64 (not a
/// compressed bzImage), a PE Image on aarch64.
fn check_kernel(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let file = check_file(path, "kernel")?;
    let mut head = [0u8; 0x210];
    let mut n = 0;
    while n < head.len() {
        match file.read_at(&mut head[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    let head = &head[..n];
    if cfg!(target_arch = "x86_64") && !head.starts_with(b"\x7fELF") {
        let what = if head.get(0x202..0x206) == Some(b"HdrS") {
            "a compressed bzImage"
        } else {
            "not an ELF file"
        };
        return Err(Error::Invalid(format!(
            "the kernel {} is {what}: Firecracker on x86_64 boots an uncompressed ELF vmlinux (the kernel tree's scripts/extract-vmlinux gets one from a bzImage), or use --platform qemu",
            path.display()
        )));
    }
    Ok(())
}

/// Copies the root disk into the machine's directory, grown to `size` if asked.
fn copy_root(root: &Path, dst: &Path, size: Option<u64>) -> Result<()> {
    check_file(root, "root disk")?;
    let format = stamp_disk::detect_path(root)?;
    if format != stamp_disk::Format::Raw {
        return Err(Error::Invalid(format!(
            "the root disk {} is a {} image; Firecracker takes a raw filesystem image (convert it with `stamp convert -O raw {} ROOT.img`)",
            root.display(),
            format.name(),
            root.display()
        )));
    }
    stamp_disk::file::copy_sparse(root, dst)?;
    if let Some(size) = size {
        let file = std::fs::File::options()
            .write(true)
            .open(dst)
            .map_err(|e| Error::io("open", dst, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", dst, e))?
            .len();
        if size < len {
            return Err(Error::Invalid(format!(
                "--disk-size {} is smaller than the root disk {} ({}); disks only grow",
                crate::spec::human(size),
                root.display(),
                crate::spec::human(len)
            )));
        }
        file.set_len(size).map_err(|e| Error::io("grow", dst, e))?;
    }
    Ok(())
}

/// Removes a stale socket left by an earlier run (Firecracker refuses to bind over one).
fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("remove the stale socket", path, e))
        }
        _ => Ok(()),
    }
}

impl Driver for Firecracker {
    fn available(&self) -> Result<()> {
        if self.binary().is_some() {
            return Ok(());
        }
        Err(Error::Driver(format!(
            "firecracker is not installed (no `{}` on PATH): download a release from {RELEASES} (it also needs /dev/kvm), or run the machine with --platform qemu, which works here",
            self.program.to_string_lossy()
        )))
    }

    fn prepare(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<()> {
        let (kernel, initrd, root) = kernel_source(spec)?;
        check_kernel(kernel)?;
        if let Some(initrd) = initrd {
            check_file(initrd, "initrd")?;
        }
        if root.is_none() && initrd.is_none() {
            return Err(Error::Invalid(format!(
                "{}: a Firecracker machine needs a root disk or an initrd to boot into",
                spec.image
            )));
        }
        // Refuse what cannot run (ports, too many vCPUs, a bad -e) before copying anything.
        self.start_sequence(spec, dir)?;
        if let Some(root) = root {
            copy_root(root, &dir.path().join(ROOT_DISK), spec.disk_size)?;
        }
        Ok(())
    }

    fn launch(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<Launch> {
        let program = self.binary().ok_or_else(|| match self.available() {
            Err(e) => e,
            Ok(()) => Error::Driver("firecracker vanished".into()),
        })?;
        let api_socket = dir.api_socket();
        remove_stale(&api_socket)?;
        remove_stale(&dir.path().join(VSOCK_SOCKET))?;
        // Firecracker appends to its log file but does not create it.
        let log = dir.path().join(VMM_LOG);
        std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io("create", &log, e))?;
        let mut command = Command::new(program);
        command
            .current_dir(dir.path())
            .arg("--api-sock")
            .arg(socket_arg(&api_socket))
            .arg("--id")
            .arg(instance_id(&spec.name))
            .arg("--log-path")
            .arg(&log)
            .args(["--level", "Warning"]);
        Ok(Launch {
            command,
            accel: Some("kvm".into()),
            warning: None,
            // The serial console is Firecracker's stdout.
            output_is_console: true,
            workload_exit: false,
            clean_exit: "the guest shut down (Firecracker exits when the guest reboots or powers off)",
        })
    }

    fn started(&self, spec: &MachineSpec, dir: &MachineDir, pid: u32) -> Result<()> {
        let sequence = self.start_sequence(spec, dir)?;
        let socket = dir.api_socket();
        let end = Instant::now() + SOCKET_TIMEOUT;
        loop {
            match http::connect(&socket) {
                Ok(_) => break,
                Err(e) => {
                    if Process::of(pid).is_none() {
                        return Err(Error::Driver(format!(
                            "firecracker (pid {pid}) exited before it opened its API socket {}",
                            socket.display()
                        )));
                    }
                    if Instant::now() >= end {
                        return Err(Error::Driver(format!(
                            "firecracker (pid {pid}) did not open its API socket {} within {}s: {e}",
                            socket.display(),
                            SOCKET_TIMEOUT.as_secs()
                        )));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for req in &sequence {
            tracing::debug!(machine = %spec.name, "firecracker API {}", req.describe());
            call(&socket, req)?;
        }
        Ok(())
    }

    fn pause(&self, _spec: &MachineSpec, dir: &MachineDir) -> Result<()> {
        self.call(dir, &api::vm_state(VmState::Paused))
    }

    fn resume(&self, _spec: &MachineSpec, dir: &MachineDir) -> Result<()> {
        self.call(dir, &api::vm_state(VmState::Resumed))
    }

    fn shutdown(&self, _spec: &MachineSpec, dir: &MachineDir) -> Result<()> {
        // With reboot=k the guest's Ctrl-Alt-Del handling reboots it, and Firecracker exits.
        self.call(dir, &api::action(ActionType::SendCtrlAltDel))
    }

    fn kill(&self, _spec: &MachineSpec, _dir: &MachineDir) -> Result<()> {
        // Firecracker's API has no "quit": the runtime's SIGKILL ends it.
        Ok(())
    }

    fn cleanup(&self, _spec: &MachineSpec, _dir: &MachineDir) -> Result<()> {
        // Everything Firecracker uses is in the machine's directory.
        Ok(())
    }
}

#[cfg(test)]
mod tests;
