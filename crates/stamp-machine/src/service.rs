//! [`MachineService`]: the one interface every command uses. [`crate::runtime::Local`] runs
//! machines itself; [`crate::systemd::Systemd`] delegates their lifetime to systemd.

use std::io::Write;
use std::time::Duration;

use crate::Result;
use crate::spec::MachineSpec;
use crate::status::Machine;

/// Default grace period between a graceful stop request and killing the machine.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Machines: create, control, list, read their logs.
pub trait MachineService {
    /// Creates a machine (state `created`); fails if the name is in use.
    fn create(&self, spec: &MachineSpec) -> Result<Machine>;

    /// Starts a created or stopped machine in the background and returns once it runs.
    fn start(&self, name: &str) -> Result<Machine>;

    /// Freezes a running machine.
    fn pause(&self, name: &str) -> Result<Machine>;

    /// Thaws a paused machine.
    fn resume(&self, name: &str) -> Result<Machine>;

    /// Stops a machine gracefully, killing it after `timeout`.
    fn stop(&self, name: &str, timeout: Duration) -> Result<Machine>;

    /// Stops (if it runs) and starts again.
    fn restart(&self, name: &str, timeout: Duration) -> Result<Machine> {
        if self.get(name)?.state().is_live() {
            self.stop(name, timeout)?;
        }
        self.start(name)
    }

    /// Removes a machine; a live one only with `force` (it is killed first).
    fn delete(&self, name: &str, force: bool) -> Result<()>;

    /// One machine, its status reconciled with its processes.
    fn get(&self, name: &str) -> Result<Machine>;

    /// All machines.
    fn list(&self) -> Result<Vec<Machine>>;

    /// Copies the machine's console log (or container output) to `out`; with `follow`, keeps
    /// copying what is appended until the machine is no longer live. `since` skips lines
    /// logged before that time where the log has timestamps (the journal).
    fn logs(
        &self,
        name: &str,
        follow: bool,
        since: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<()>;
}
