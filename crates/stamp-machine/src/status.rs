//! What a machine is doing: [`State`], [`Status`] and the [`Machine`] that `ps` and `inspect`
//! print.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::MachineSpec;

/// A machine's state, as podman users know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Created, never started (or prepared to start).
    Created,
    /// Its process runs (the guest may still be booting).
    Running,
    /// Its vCPUs (or the container's processes) are frozen.
    Paused,
    /// It ended: asked to stop, or the guest powered off (`exit_code` says how).
    Stopped,
    /// It ended unexpectedly (`reason` says why).
    Failed,
}

impl State {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }

    /// Running or paused: a process exists.
    pub fn is_live(self) -> bool {
        matches!(self, State::Running | State::Paused)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A process the runtime watches: its pid and its start time (clock ticks after boot, field
/// 22 of /proc/PID/stat), so that a recycled pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub start: u64,
}

impl Process {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: u32) -> Option<Process> {
        Some(Process {
            pid,
            start: start_time(pid)?,
        })
    }

    /// Whether this very process still exists (not a zombie, not a later one with its pid).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// Field 22 (starttime) of /proc/PID/stat; `None` when the process is gone or a zombie.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state).
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

/// The mutable part of a machine, rewritten (atomically) as it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub state: Option<State>,
    /// The supervising process (`stamp start --foreground NAME`).
    #[serde(default)]
    pub monitor: Option<Process>,
    /// The VMM or container runtime process (qemu, firecracker, podman).
    #[serde(default)]
    pub vmm: Option<Process>,
    /// When it last started (RFC 3339).
    #[serde(default)]
    pub started: Option<String>,
    /// When it last ended (RFC 3339).
    #[serde(default)]
    pub finished: Option<String>,
    /// The exit status of the VMM or container (the guest's for podman).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why it failed, or how it stopped.
    #[serde(default)]
    pub reason: Option<String>,
    /// KVM or TCG, for qemu.
    #[serde(default)]
    pub accel: Option<String>,
    /// What the driver warned about when it started (e.g. TCG instead of KVM, and why).
    #[serde(default)]
    pub warning: Option<String>,
    /// The driver reported the machine up (QMP running, the container started).
    #[serde(default)]
    pub ready: bool,
    /// A stop was asked for: the end that follows is `stopped`, not `failed`.
    #[serde(default)]
    pub stopping: bool,
    /// The grace period of the stop asked for, in milliseconds.
    #[serde(default)]
    pub stop_timeout_ms: Option<u64>,
    /// Where each run's output starts in the console log: (start time, offset).
    #[serde(default)]
    pub log_offsets: Vec<(String, u64)>,
}

impl Status {
    /// The state (`created` when none was recorded yet).
    pub fn state(&self) -> State {
        self.state.unwrap_or(State::Created)
    }
}

/// A machine as listed: its spec and its status (and its unit, under systemd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub spec: MachineSpec,
    pub status: Status,
    pub unit: Option<UnitStatus>,
}

/// The systemd unit of a machine run with `--systemd`, as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStatus {
    /// `stamp-NAME.service`.
    pub name: String,
    /// `ActiveState` (active, inactive, failed, activating, deactivating...).
    pub active: String,
    /// `SubState` (running, dead, auto-restart...).
    pub sub: String,
    /// `UnitFileState` (enabled, disabled...).
    pub enabled: String,
}

impl Machine {
    /// The state.
    pub fn state(&self) -> State {
        self.status.state()
    }

    /// The pid users see: the VMM's, else the monitor's (while live).
    pub fn pid(&self) -> Option<u32> {
        if !self.state().is_live() {
            return None;
        }
        self.status.vmm.or(self.status.monitor).map(|p| p.pid)
    }

    /// The object `ps --json` prints for it.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.spec.name,
            "state": self.state(),
            "platform": self.spec.platform,
            "image": self.spec.image,
            "pid": self.pid(),
            "created": self.spec.created,
            "started": self.status.started,
            "finished": self.status.finished,
            "exit_code": self.status.exit_code,
            "reason": self.status.reason,
            "ports": self.spec.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "unit": self.unit,
        })
    }

    /// The object `inspect --json` prints: the summary plus the full spec and status.
    pub fn detail(&self) -> serde_json::Value {
        let mut v = self.summary();
        v["spec"] = serde_json::to_value(&self.spec).unwrap_or_default();
        v["status"] = serde_json::to_value(&self.status).unwrap_or_default();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_changed_start_is_not() {
        let me = Process::of(std::process::id()).unwrap();
        assert!(me.alive());
        let other = Process {
            start: me.start + 1,
            ..me
        };
        assert!(!other.alive());
        assert!(Process::of(u32::MAX).is_none());
    }

    #[test]
    fn a_reaped_child_is_dead() {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let p = Process::of(c.id());
        c.wait().unwrap();
        if let Some(p) = p {
            assert!(!p.alive());
        }
    }
}
