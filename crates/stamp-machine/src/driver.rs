//! The interface between the runtime and a machine driver: a driver says how to start the
//! machine's process and how to control it while it runs; the runtime
//! ([`crate::runtime::Local`]) supervises the process and keeps the status.

use std::process::Command;

use crate::Result;
use crate::spec::MachineSpec;
use crate::store::MachineDir;

/// The process that runs a machine, and how it was set up.
#[derive(Debug)]
pub struct Launch {
    /// The VMM or container runtime, run in the foreground: its exit is the machine's end.
    /// The runtime sets its stdin to null and its stdout and stderr to the console log (or
    /// `vmm.log`, see `output_is_console`).
    pub command: Command,
    /// A note for the status, e.g. the accelerator (`kvm`, `tcg`).
    pub accel: Option<String>,
    /// Something the user should know (e.g. why TCG rather than KVM); shown by `run`/`start`.
    pub warning: Option<String>,
    /// The process's stdout and stderr are the machine's output (a container's), rather
    /// than the VMM's own messages (QEMU writes the serial console to the log itself).
    pub output_is_console: bool,
    /// A non-zero exit is the workload's own status (a container's command), which ends the
    /// machine as `stopped` with that code, not `failed`.
    pub workload_exit: bool,
    /// The reason recorded for exit status 0 ("the guest powered off").
    pub clean_exit: &'static str,
}

/// What one platform (qemu, firecracker, podman) does for the runtime.
pub trait Driver: Send + Sync {
    /// Checks that the driver can run machines here; the error says what to install.
    fn available(&self) -> Result<()>;

    /// Prepares a new machine's directory (an overlay disk, firmware variables). Runs before
    /// the machine exists under its name: a failure leaves nothing behind.
    fn prepare(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<()>;

    /// The process that runs the machine.
    fn launch(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<Launch>;

    /// Called once the process runs (its pid): configures it where that is done through an
    /// API (Firecracker) and returns when the machine is up (QEMU: QMP reports running).
    fn started(&self, spec: &MachineSpec, dir: &MachineDir, pid: u32) -> Result<()>;

    /// Freezes the machine.
    fn pause(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<()>;

    /// Thaws it.
    fn resume(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<()>;

    /// Asks the guest to shut down (ACPI power button, Ctrl-Alt-Del, `podman stop`); the
    /// process is expected to exit by itself within the grace period.
    fn shutdown(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<()>;

    /// Ends the machine now (QMP quit, `podman kill`); the runtime kills the process after
    /// this if it is still there.
    fn kill(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<()>;

    /// Removes what the driver created outside the machine's directory (a container).
    fn cleanup(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<()>;
}

/// Looks a program up on `PATH`.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
