//! `--systemd`: machines as systemd services. [`Systemd`] implements [`MachineService`] by
//! writing a unit `stamp-NAME.service` whose main process is the machine's monitor
//! (`stamp start --foreground NAME`) and asking systemd, through `systemctl`, to start,
//! stop and restart it; systemd then owns the machine's lifetime (restart on failure, start at
//! boot). The monitor tells systemd the machine is up with [`notify`] (`READY=1`).
//!
//! Everything the machine is (its spec, status, console log) still lives in the machine store:
//! [`Systemd`] wraps a [`Local`] runtime and adds the unit.
//!
//! What the CLI does for it:
//! - `stamp start --foreground NAME` (the unit's main process) runs
//!   [`Local::run_foreground`] with `ready` calling `notify("READY=1")`, sets the stop flag on
//!   SIGTERM, and exits non-zero when the machine ended `failed` (so that
//!   `Restart=on-failure` restarts it) and 0 when it stopped (on request, or powered off).
//! - `stamp stop NAME` (the unit's `ExecStop=`, `$MAINPID` set) stops the machine through
//!   [`Local`] when [`in_own_unit`] says so; otherwise, for a machine whose spec has
//!   `systemd` set, it must go through [`Systemd`] even without `--systemd`: a machine
//!   stopped behind systemd's back is restarted by `Restart=always`.
//! - Logs of a systemd machine are the unit's journal (the monitor's output); the serial
//!   console stays in the machine's `console.log`.

use std::io::{Read, Write};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::runtime::Local;
use crate::service::{MachineService, STOP_TIMEOUT};
use crate::spec::{MachineSpec, Restart, SystemdSpec};
use crate::status::{Machine, UnitStatus};
use crate::{Error, Result};

/// How long systemd waits for `READY=1` before it gives up on a start. Generous: the monitor
/// notifies when QEMU reports the machine running, which is quick, but a machine prepared
/// from a container image or a slow disk under TCG can take minutes.
pub const START_TIMEOUT: Duration = Duration::from_secs(300);

/// What systemd allows on top of the graceful stop's grace period (the monitor kills the VMM
/// when the grace period ends, then records the end) before it kills everything.
pub const STOP_MARGIN: Duration = Duration::from_secs(30);

/// Environment variables the service gets from the user who created it, so that the monitor
/// sees the same machines and the same tools' configuration.
/// (`PATH`: the same qemu, firecracker and podman as the command that created it.)
const PASSED_ENV: [&str; 2] = ["PATH", "CONTAINERS_CONF"];

/// The unit of machine `machine`: `stamp-NAME.service`.
pub fn unit_name(machine: &str) -> String {
    format!("stamp-{machine}.service")
}

/// The unit file that runs `spec` as a service, `stamp` being the stamp binary (an absolute
/// path). The service sees the state directory of the user running this
/// (`$XDG_STATE_HOME`, else `~/.local/state`).
pub fn unit_file(spec: &MachineSpec, stamp: &Path) -> String {
    render(spec, stamp, state_home().as_deref())
}

/// `$XDG_STATE_HOME`, else `$HOME/.local/state`.
fn state_home() -> Option<PathBuf> {
    let abs = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    std::env::var_os("XDG_STATE_HOME")
        .and_then(abs)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(abs)
                .map(|h| h.join(".local/state"))
        })
}

/// The systemd settings of `spec`, or the defaults (a system unit, `Restart=on-failure`).
fn systemd_spec(spec: &MachineSpec) -> SystemdSpec {
    spec.systemd.clone().unwrap_or(SystemdSpec {
        user: false,
        restart: Restart::OnFailure,
        enable: false,
    })
}

/// The unit file, with the state directory given.
fn render(spec: &MachineSpec, stamp: &Path, state_home: Option<&Path>) -> String {
    let sd = systemd_spec(spec);
    let name = &spec.name;
    let stamp_word = exec_path(&stamp.to_string_lossy());
    let name_word = exec_word(name);
    let mut u = String::new();
    u.push_str("# Written by stamp (`stamp run --systemd`); `stamp rm --systemd ");
    u.push_str(&one_line(name));
    u.push_str("` removes it.\n[Unit]\n");
    u.push_str(&format!(
        "Description=stamp machine {} ({})\n",
        text_value(name),
        text_value(&spec.image)
    ));
    if !sd.user {
        u.push_str("Wants=network-online.target\nAfter=network-online.target\n");
    }
    u.push_str("\n[Service]\nType=notify\nNotifyAccess=main\n");
    u.push_str(&format!(
        "ExecStart={stamp_word} start --foreground {name_word}\n"
    ));
    u.push_str(&exec_stop(stamp, name, STOP_TIMEOUT));
    u.push_str(&format!("Restart={}\nRestartSec=1\n", sd.restart.as_str()));
    u.push_str("KillMode=mixed\n");
    u.push_str(&format!("TimeoutStartSec={}\n", START_TIMEOUT.as_secs()));
    u.push_str(&timeout_stop(STOP_TIMEOUT));
    u.push_str(&format!(
        "SyslogIdentifier={}\n",
        text_value(&format!("stamp-{name}"))
    ));
    if let Some(dir) = state_home {
        u.push_str(&format!(
            "Environment={}\n",
            env_assignment("XDG_STATE_HOME", &dir.to_string_lossy())
        ));
    }
    for var in PASSED_ENV {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            u.push_str(&format!(
                "Environment={}\n",
                env_assignment(var, &v.to_string_lossy())
            ));
        }
    }
    u.push_str("\n[Install]\n");
    u.push_str(if sd.user {
        "WantedBy=default.target\n"
    } else {
        "WantedBy=multi-user.target\n"
    });
    u
}

/// Whole seconds, rounded up.
fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The `ExecStop=` line: stamp's graceful stop with grace period `timeout`.
fn exec_stop(stamp: &Path, name: &str, timeout: Duration) -> String {
    format!(
        "ExecStop={} stop -t {} {}\n",
        exec_path(&stamp.to_string_lossy()),
        secs(timeout),
        exec_word(name)
    )
}

/// The `TimeoutStopSec=` line for grace period `timeout`: systemd waits that long plus
/// [`STOP_MARGIN`] before it kills what is left.
fn timeout_stop(timeout: Duration) -> String {
    format!("TimeoutStopSec={}\n", secs(timeout) + STOP_MARGIN.as_secs())
}

/// `s` on one line: control characters become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A free-text value (Description=, SyslogIdentifier=): one line, `%` escaped (systemd expands
/// specifiers there), and no trailing backslash (it would continue the line).
fn text_value(s: &str) -> String {
    one_line(s)
        .replace('%', "%%")
        .trim_end_matches([' ', '\\'])
        .to_string()
}

/// C-style escapes of systemd's command lines and quoted values; `dollar` doubles `$` (which
/// introduces a variable in arguments but not in the executable's path).
fn escape(s: &str, dollar: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '%' => out.push_str("%%"),
            '$' if dollar => out.push_str("$$"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether a word must be quoted on a command line.
fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s == ";"
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'))
}

/// One argument of ExecStart=/ExecStop=, quoted when it must be.
fn exec_word(s: &str) -> String {
    if needs_quotes(s) {
        format!("\"{}\"", escape(s, true))
    } else {
        escape(s, true)
    }
}

/// The executable of ExecStart=/ExecStop=, quoted when it must be. systemd reads a leading
/// `@`, `-`, `:`, `+` or `!` as a flag: the path is absolute, so it starts with `/`.
fn exec_path(s: &str) -> String {
    if needs_quotes(s) {
        format!("\"{}\"", escape(s, false))
    } else {
        escape(s, false)
    }
}

/// One `Environment=` assignment, always quoted.
fn env_assignment(var: &str, value: &str) -> String {
    format!("\"{var}={}\"", escape(value, false))
}

/// Where unit files go: `/etc/systemd/system`, or `$XDG_CONFIG_HOME/systemd/user`
/// (`~/.config/systemd/user`) for user units. `$STAMP_SYSTEMD_UNIT_DIR` overrides both (tests).
pub fn unit_dir(user: bool) -> PathBuf {
    if let Some(dir) = std::env::var_os("STAMP_SYSTEMD_UNIT_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if !user {
        return PathBuf::from("/etc/systemd/system");
    }
    let abs = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    std::env::var_os("XDG_CONFIG_HOME")
        .and_then(abs)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(abs)
                .map(|h| h.join(".config"))
        })
        .unwrap_or_else(|| PathBuf::from("/root/.config"))
        .join("systemd/user")
}

/// Where runtime units and drop-ins go (gone at reboot): `/run/systemd/system`, or
/// `$XDG_RUNTIME_DIR/systemd/user` for user units.
fn runtime_unit_dir(user: bool) -> Result<PathBuf> {
    if !user {
        return Ok(PathBuf::from("/run/systemd/system"));
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .map(|p| p.join("systemd/user"))
        .ok_or_else(|| {
            Error::Invalid(
                "XDG_RUNTIME_DIR is not set: user units need a login session (or use the default stop timeout)"
                    .into(),
            )
        })
}

/// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=...`) to the service manager over
/// `$NOTIFY_SOCKET`, as sd_notify(3) does. Returns true if and only if it was sent; false when
/// not run by systemd (no socket, or one of a kind this does not speak, such as vsock).
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
        return Ok(false);
    };
    match addr_of(&socket)? {
        Some(addr) => send_to(&addr, state),
        None => {
            tracing::debug!(
                "NOTIFY_SOCKET {socket:?} is neither a path nor abstract: not notifying"
            );
            Ok(false)
        }
    }
}

/// The address `$NOTIFY_SOCKET` names: `@NAME` is abstract, `/PATH` a file; `None` for other
/// kinds (vsock).
fn addr_of(socket: impl AsRef<std::ffi::OsStr>) -> std::io::Result<Option<SocketAddr>> {
    let socket = socket.as_ref();
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(socket);
    match bytes.first() {
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..]).map(Some)
        }
        Some(b'/') => SocketAddr::from_pathname(Path::new(socket)).map(Some),
        _ => Ok(None),
    }
}

/// Sends one datagram `state` to `addr`.
fn send_to(addr: &SocketAddr, state: &str) -> std::io::Result<bool> {
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), addr)?;
    if sent != state.len() {
        return Err(std::io::Error::other(format!(
            "sent {sent} of the {} bytes of a notification",
            state.len()
        )));
    }
    Ok(true)
}

/// Returns true if and only if this process runs as a command of machine `m`'s own unit
/// while its monitor is the unit's main process (`$MAINPID`, which systemd sets for
/// `ExecStop=`): then `stamp stop` must stop the machine itself ([`Local`]), not ask systemd,
/// which is already stopping the unit.
pub fn in_own_unit(m: &Machine) -> bool {
    let main = std::env::var("MAINPID")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok());
    main.is_some() && m.status.monitor.map(|p| p.pid) == main
}

/// The runtime with systemd owning each machine's monitor (`--systemd`).
pub struct Systemd {
    local: Local,
    user: bool,
    stamp: PathBuf,
}

impl Systemd {
    /// Machines of `local` run as system units (user units with `user`) whose monitor is
    /// `stamp start --foreground NAME`, `stamp` being the absolute path of the stamp binary.
    pub fn new(local: Local, user: bool, stamp: PathBuf) -> Systemd {
        Systemd { local, user, stamp }
    }

    /// The runtime underneath.
    pub fn local(&self) -> &Local {
        &self.local
    }

    /// Whether new machines get user units.
    pub fn user(&self) -> bool {
        self.user
    }

    /// Whether machine `m`'s unit is a user unit (its spec says; else this service's mode).
    fn user_of(&self, spec: &MachineSpec) -> bool {
        spec.systemd.as_ref().map_or(self.user, |s| s.user)
    }

    /// The machine `name`, which must have been created with `--systemd`.
    fn systemd_machine(&self, name: &str) -> Result<Machine> {
        let m = self.local.get(name)?;
        if m.spec.systemd.is_none() {
            return Err(Error::Invalid(format!(
                "machine {name} was not created with --systemd: it has no unit (drop --systemd)"
            )));
        }
        Ok(m)
    }

    /// Runs `systemctl [--user] ARGS`; the error quotes systemctl's message and names `unit`.
    fn systemctl(&self, user: bool, args: &[&str], unit: &str) -> Result<String> {
        let mut cmd = Command::new("systemctl");
        if user {
            cmd.arg("--user");
        }
        cmd.args(args).stdin(Stdio::null());
        let shown = format!(
            "systemctl {}{}",
            if user { "--user " } else { "" },
            args.join(" ")
        );
        let out = cmd.output().map_err(|e| {
            Error::Driver(format!(
                "cannot run `{shown}` for {unit}: {e} (is systemd installed?)"
            ))
        })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err.trim();
            return Err(Error::Driver(format!(
                "`{shown}` failed for {unit} ({}): {}",
                out.status,
                if err.is_empty() { "no message" } else { err }
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The units' states as systemd reports them, in the order of `units`.
    fn unit_statuses(&self, user: bool, units: &[String]) -> Result<Vec<UnitStatus>> {
        if units.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![
            "show",
            "-p",
            "Id,LoadState,ActiveState,SubState,UnitFileState",
        ];
        args.push("--");
        args.extend(units.iter().map(String::as_str));
        let text = self.systemctl(user, &args, &units.join(", "))?;
        Ok(parse_show(&text, units))
    }

    /// Adds the unit's status to `m` (when it is a systemd machine).
    fn with_unit(&self, mut m: Machine) -> Result<Machine> {
        if m.spec.systemd.is_some() {
            let unit = unit_name(&m.spec.name);
            m.unit = self
                .unit_statuses(self.user_of(&m.spec), std::slice::from_ref(&unit))?
                .pop();
        }
        Ok(m)
    }

    /// Writes the unit file of `spec` (a temporary file, then a hard link to its name, which
    /// fails if one exists: the file appears complete or not at all, never over another).
    fn write_unit(&self, spec: &MachineSpec, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .ok_or_else(|| Error::Invalid(format!("bad unit path {}", path.display())))?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        // The store is STATE/stamp/machines: give the service the same STATE.
        let root = self.local.store().root();
        let state = (root.is_absolute() && root.ends_with("stamp/machines"))
            .then(|| root.parent().and_then(Path::parent))
            .flatten()
            .map(Path::to_path_buf);
        let text = render(spec, &self.stamp, state.or_else(state_home).as_deref());
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            unit_name(&spec.name),
            std::process::id()
        ));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io("write", &tmp, e));
        }
        // A hard link fails when the name exists: the check and the creation are one step.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::Invalid(format!(
                    "the unit {} exists already (left by another stamp or written by hand): remove it or choose another --name",
                    path.display()
                )))
            }
            Err(e) => Err(Error::io("create", path, e)),
        }
    }

    /// `systemctl stop|restart UNIT` with `timeout` as the graceful stop's grace period. The
    /// unit's own is [`STOP_TIMEOUT`]; another one is given by a runtime drop-in (in /run,
    /// gone at reboot) that replaces ExecStop= and TimeoutStopSec= for this one job.
    fn stop_job(&self, m: &Machine, action: &str, timeout: Duration) -> Result<()> {
        let user = self.user_of(&m.spec);
        let unit = unit_name(&m.spec.name);
        if secs(timeout) == secs(STOP_TIMEOUT) {
            return self
                .systemctl(user, &[action, "--", &unit], &unit)
                .map(drop);
        }
        let dir = runtime_unit_dir(user)?.join(format!("{unit}.d"));
        let path = dir.join("stamp-stop-timeout.conf");
        let text = format!(
            "# Written by stamp for one `{action}`, removed after it.\n[Service]\nExecStop=\n{}{}",
            exec_stop(&self.stamp, &m.spec.name, timeout),
            timeout_stop(timeout)
        );
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
        let result = self
            .systemctl(user, &["daemon-reload"], &unit)
            .and_then(|_| self.systemctl(user, &[action, "--", &unit], &unit));
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
        let reloaded = self.systemctl(user, &["daemon-reload"], &unit);
        result?;
        reloaded.map(drop)
    }

    /// Stops, disables and removes machine `name`'s unit, whatever state it is in.
    fn remove_unit(&self, name: &str, user: bool) -> Result<()> {
        let unit = unit_name(name);
        let path = unit_dir(user).join(&unit);
        let status = self.unit_statuses(user, std::slice::from_ref(&unit))?.pop();
        let loaded = status.as_ref().is_some_and(|u| u.enabled != "not-found");
        if loaded && status.as_ref().is_some_and(|u| u.active != "inactive") {
            self.systemctl(user, &["stop", "--", &unit], &unit)?;
        }
        if loaded {
            self.systemctl(user, &["disable", "--", &unit], &unit)?;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &path, e)),
        }
        self.systemctl(user, &["daemon-reload"], &unit)?;
        // A unit that failed stays listed as failed until this.
        let _ = self.systemctl(user, &["reset-failed", "--", &unit], &unit);
        Ok(())
    }

    /// The unit's error with where to look: the machine's recorded reason and the journal.
    fn start_error(&self, name: &str, user: bool, e: Error) -> Error {
        let unit = unit_name(name);
        let reason = self
            .local
            .get(name)
            .ok()
            .and_then(|m| m.status.reason)
            .map(|r| format!("; the machine says: {r}"))
            .unwrap_or_default();
        Error::Driver(format!(
            "{e}{reason} (`journalctl {} {unit}` has the details)",
            if user { "--user-unit" } else { "-u" }
        ))
    }
}

/// Parses `systemctl show -p Id,LoadState,ActiveState,SubState,UnitFileState U...`: blocks
/// separated by blank lines, one per unit in order.
fn parse_show(text: &str, units: &[String]) -> Vec<UnitStatus> {
    let mut blocks: Vec<Vec<(&str, &str)>> = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            if blocks.last().is_some_and(|b| !b.is_empty()) {
                blocks.push(Vec::new());
            }
            continue;
        }
        if let (Some(b), Some((k, v))) = (blocks.last_mut(), line.split_once('=')) {
            b.push((k, v));
        }
    }
    units
        .iter()
        .enumerate()
        .map(|(i, unit)| {
            let block = blocks
                .iter()
                .find(|b| b.iter().any(|&(k, v)| k == "Id" && v == unit))
                .or_else(|| blocks.get(i))
                .cloned()
                .unwrap_or_default();
            let get = |key: &str| {
                block
                    .iter()
                    .find(|&&(k, _)| k == key)
                    .map_or("", |&(_, v)| v)
                    .to_string()
            };
            let mut enabled = get("UnitFileState");
            if get("LoadState") == "not-found" {
                enabled = "not-found".into();
            }
            UnitStatus {
                name: unit.clone(),
                active: get("ActiveState"),
                sub: get("SubState"),
                enabled,
            }
        })
        .collect()
}

/// `--since` for journalctl: RFC 3339 (`2026-01-02T03:04:05Z`) as journalctl 252 reads it
/// (`2026-01-02 03:04:05 UTC`); a bare duration (`10m`) as relative to now (`-10m`).
fn journal_since(t: &str) -> String {
    let t = t.trim();
    let is_duration = !t.is_empty()
        && t.starts_with(|c: char| c.is_ascii_digit())
        && t.chars().all(|c| c.is_ascii_alphanumeric())
        && t.ends_with(|c: char| c.is_ascii_alphabetic());
    if is_duration {
        return format!("-{t}");
    }
    let b = t.as_bytes();
    if b.len() >= 19 && b[4] == b'-' && b[10] == b'T' {
        let mut s = format!("{} {}", &t[..10], &t[11..]);
        if s.ends_with('Z') || s.ends_with('z') {
            s.pop();
            s.push_str(" UTC");
        }
        return s;
    }
    t.to_string()
}

impl MachineService for Systemd {
    fn create(&self, spec: &MachineSpec) -> Result<Machine> {
        let mut spec = spec.clone();
        if spec.systemd.is_none() {
            spec.systemd = Some(SystemdSpec {
                user: self.user,
                ..systemd_spec(&spec)
            });
        }
        let sd = systemd_spec(&spec);
        let unit = unit_name(&spec.name);
        let path = unit_dir(sd.user).join(&unit);
        crate::spec::check_name(&spec.name)?;
        if spec.remove {
            return Err(Error::Invalid(
                "--rm cannot be used with --systemd: the unit restarts and outlives the machine (`stamp rm --systemd NAME` removes both)".into(),
            ));
        }
        if path.exists() {
            return Err(Error::Invalid(format!(
                "the unit {} exists already: `stamp rm --systemd {}` removes it with its machine, or choose another --name",
                path.display(),
                spec.name
            )));
        }
        self.local.create(&spec)?;
        let undo_machine = |e: Error| {
            if let Err(e2) = self.local.delete(&spec.name, true) {
                tracing::warn!(machine = %spec.name, "cannot remove the half-created machine: {e2}");
            }
            e
        };
        if let Err(e) = self.write_unit(&spec, &path) {
            return Err(undo_machine(e));
        }
        let undo_unit = |e: Error| {
            if sd.enable {
                let _ = self.systemctl(sd.user, &["disable", "--", &unit], &unit);
            }
            if let Err(e2) = std::fs::remove_file(&path) {
                tracing::warn!(unit = %unit, "cannot remove {}: {e2}", path.display());
            }
            let _ = self.systemctl(sd.user, &["daemon-reload"], &unit);
            undo_machine(e)
        };
        if let Err(e) = self.systemctl(sd.user, &["daemon-reload"], &unit) {
            return Err(undo_unit(e));
        }
        if sd.enable {
            if let Err(e) = self.systemctl(sd.user, &["enable", "--", &unit], &unit) {
                return Err(undo_unit(e));
            }
        }
        match self.local.get(&spec.name).and_then(|m| self.with_unit(m)) {
            Ok(m) => Ok(m),
            Err(e) => Err(undo_unit(e)),
        }
    }

    fn start(&self, name: &str) -> Result<Machine> {
        let m = self.systemd_machine(name)?;
        let user = self.user_of(&m.spec);
        let unit = unit_name(name);
        // Type=notify: this returns once the monitor sent READY=1 (the machine is up).
        self.systemctl(user, &["start", "--", &unit], &unit)
            .map_err(|e| self.start_error(name, user, e))?;
        self.with_unit(self.local.get(name)?)
    }

    fn pause(&self, name: &str) -> Result<Machine> {
        // systemd has nothing for freezing a VM's vCPUs: QMP does it.
        let m = self.local.pause(name)?;
        self.with_unit(m)
    }

    fn resume(&self, name: &str) -> Result<Machine> {
        let m = self.local.resume(name)?;
        self.with_unit(m)
    }

    fn stop(&self, name: &str, timeout: Duration) -> Result<Machine> {
        let m = self.systemd_machine(name)?;
        // ExecStop= stops the machine gracefully; systemd waits for the monitor to end.
        self.stop_job(&m, "stop", timeout)?;
        match self.local.get(name) {
            Ok(m) => self.with_unit(m),
            // --rm machines are removed when they stop.
            Err(Error::NotFound(_)) => Err(Error::NotFound(name.into())),
            Err(e) => Err(e),
        }
    }

    fn restart(&self, name: &str, timeout: Duration) -> Result<Machine> {
        let m = self.systemd_machine(name)?;
        let user = self.user_of(&m.spec);
        self.stop_job(&m, "restart", timeout)
            .map_err(|e| self.start_error(name, user, e))?;
        self.with_unit(self.local.get(name)?)
    }

    fn delete(&self, name: &str, force: bool) -> Result<()> {
        let m = match self.local.get(name) {
            Ok(m) => m,
            Err(Error::NotFound(_)) if unit_dir(self.user).join(unit_name(name)).exists() => {
                // A unit left without its machine (removed by hand): remove the unit.
                return self.remove_unit(name, self.user);
            }
            Err(e) => return Err(e),
        };
        let user = self.user_of(&m.spec);
        let unit = unit_name(name);
        let path = unit_dir(user).join(&unit);
        if m.spec.systemd.is_none() && !path.exists() {
            // Not a systemd machine: nothing of systemd's to remove.
            return self.local.delete(name, force);
        }
        let status = self.unit_statuses(user, std::slice::from_ref(&unit))?.pop();
        let active = status.as_ref().is_some_and(|u| {
            matches!(
                u.active.as_str(),
                "active" | "activating" | "reloading" | "deactivating"
            )
        });
        if (active || m.state().is_live()) && !force {
            return Err(Error::State {
                name: name.into(),
                state: m.state(),
                hint: format!(
                    "its unit {unit} is {}: stop it first (`stamp stop --systemd {name}`) or use `stamp rm -f --systemd {name}`",
                    status.map_or_else(|| "active".to_string(), |u| u.active)
                ),
            });
        }
        self.remove_unit(name, user)?;
        match self.local.delete(name, true) {
            Ok(()) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn get(&self, name: &str) -> Result<Machine> {
        self.with_unit(self.local.get(name)?)
    }

    fn list(&self) -> Result<Vec<Machine>> {
        let mut machines = self.local.list()?;
        for user in [false, true] {
            let idx: Vec<usize> = machines
                .iter()
                .enumerate()
                .filter(|(_, m)| m.spec.systemd.as_ref().is_some_and(|s| s.user == user))
                .map(|(i, _)| i)
                .collect();
            if idx.is_empty() {
                continue;
            }
            let units: Vec<String> = idx
                .iter()
                .map(|&i| unit_name(&machines[i].spec.name))
                .collect();
            let statuses = self.unit_statuses(user, &units)?;
            for (i, s) in idx.into_iter().zip(statuses) {
                machines[i].unit = Some(s);
            }
        }
        Ok(machines)
    }

    fn logs(
        &self,
        name: &str,
        follow: bool,
        since: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<()> {
        let m = self.local.get(name)?;
        if m.spec.systemd.is_none() {
            return self.local.logs(name, follow, since, out);
        }
        let user = self.user_of(&m.spec);
        let unit = unit_name(name);
        let mut cmd = Command::new("journalctl");
        // A user unit's messages are in the user's journal, or in the system journal for
        // root and users without one: `--user-unit` without `--user` reads every journal the
        // caller may read (`journalctl --user -u` finds nothing for root).
        cmd.arg(if user { "--user-unit" } else { "--unit" })
            .arg(&unit)
            .args(["-o", "cat", "--no-pager"]);
        if follow {
            cmd.arg("-f");
        }
        if let Some(t) = since {
            cmd.arg("--since").arg(journal_since(t));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Driver(format!("cannot run journalctl for {unit}: {e}")))?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Driver("journalctl has no output".into()))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| Error::Driver("journalctl has no error output".into()))?;
        let err_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = (&mut stderr).take(64 << 10).read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        });
        // The journal is read on a thread so that, following, this one can see the machine
        // end and stop journalctl (which would follow forever).
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut ended_at: Option<std::time::Instant> = None;
        let result = loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(chunk) => {
                    if let Err(e) = out.write_all(&chunk).and_then(|()| out.flush()) {
                        break Err(Error::io("write", "the output", e));
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if !follow {
                continue;
            }
            // Following: stop a moment after the machine is neither live nor being restarted.
            if let Some(t) = ended_at {
                if t.elapsed() >= Duration::from_secs(1) {
                    break Ok(());
                }
                continue;
            }
            let live = self.local.get(name).is_ok_and(|m| m.state().is_live());
            let unit_busy = self
                .unit_statuses(user, std::slice::from_ref(&unit))
                .ok()
                .and_then(|mut v| v.pop())
                .is_some_and(|u| {
                    matches!(
                        u.active.as_str(),
                        "active" | "activating" | "reloading" | "deactivating"
                    )
                });
            if !live && !unit_busy {
                ended_at = Some(std::time::Instant::now());
            }
        };
        let _ = child.kill();
        let status = child.wait();
        let _ = reader.join();
        let err = err_reader.join().unwrap_or_default();
        result?;
        match status {
            Ok(s) if s.success() || follow => Ok(()),
            Ok(s) => Err(Error::Driver(format!(
                "`journalctl -u {unit}` failed ({s}): {}",
                err.trim()
            ))),
            Err(e) => Err(Error::Driver(format!(
                "cannot wait for journalctl -u {unit}: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Platform, Source};

    fn spec(name: &str, image: &str, sd: Option<SystemdSpec>) -> MachineSpec {
        MachineSpec {
            memory: 256 << 20,
            systemd: sd,
            ..MachineSpec::new(
                name,
                image,
                Platform::Qemu,
                Source::Disk {
                    path: "/nonexistent".into(),
                    format: "qcow2".into(),
                },
            )
        }
    }

    fn sd(user: bool, restart: Restart, enable: bool) -> Option<SystemdSpec> {
        Some(SystemdSpec {
            user,
            restart,
            enable,
        })
    }

    /// The value of the only `key=` line of `section`.
    fn directive(unit: &str, section: &str, key: &str) -> Vec<String> {
        let mut current = "";
        let mut found = Vec::new();
        for line in unit.lines() {
            if line.starts_with('[') {
                current = line;
            } else if current == section {
                if let Some(v) = line.strip_prefix(&format!("{key}=")) {
                    found.push(v.to_string());
                }
            }
        }
        found
    }

    fn one(unit: &str, section: &str, key: &str) -> String {
        let v = directive(unit, section, key);
        assert_eq!(v.len(), 1, "{section} {key}= in\n{unit}");
        v[0].clone()
    }

    #[test]
    fn unit_name_is_stamp_dash_name() {
        assert_eq!(unit_name("web-1"), "stamp-web-1.service");
    }

    #[test]
    fn system_unit_has_every_directive() {
        let s = spec("web", "debian.qcow2", sd(false, Restart::OnFailure, true));
        let u = render(
            &s,
            Path::new("/usr/bin/stamp"),
            Some(Path::new("/root/.local/state")),
        );
        let d = one(&u, "[Unit]", "Description");
        assert!(d.contains("web") && d.contains("debian.qcow2"), "{d}");
        assert_eq!(one(&u, "[Unit]", "After"), "network-online.target");
        assert_eq!(one(&u, "[Unit]", "Wants"), "network-online.target");
        assert_eq!(one(&u, "[Service]", "Type"), "notify");
        assert_eq!(one(&u, "[Service]", "NotifyAccess"), "main");
        assert_eq!(
            one(&u, "[Service]", "ExecStart"),
            "/usr/bin/stamp start --foreground web"
        );
        assert_eq!(
            one(&u, "[Service]", "ExecStop"),
            "/usr/bin/stamp stop -t 10 web"
        );
        assert_eq!(one(&u, "[Service]", "Restart"), "on-failure");
        assert_eq!(one(&u, "[Service]", "RestartSec"), "1");
        assert_eq!(one(&u, "[Service]", "KillMode"), "mixed");
        let stop: u64 = one(&u, "[Service]", "TimeoutStopSec").parse().unwrap();
        assert!(stop > STOP_TIMEOUT.as_secs(), "{stop}");
        let start: u64 = one(&u, "[Service]", "TimeoutStartSec").parse().unwrap();
        assert!(start >= 120, "{start}");
        assert_eq!(one(&u, "[Service]", "SyslogIdentifier"), "stamp-web");
        assert!(
            directive(&u, "[Service]", "Environment")
                .contains(&"\"XDG_STATE_HOME=/root/.local/state\"".to_string()),
            "{u}"
        );
        assert_eq!(one(&u, "[Install]", "WantedBy"), "multi-user.target");
        // The creator's PATH: the service finds the same qemu.
        if let Ok(path) = std::env::var("PATH") {
            let want = env_assignment("PATH", &path);
            assert!(
                directive(&u, "[Service]", "Environment").contains(&want),
                "{u}"
            );
        }
    }

    #[test]
    fn user_unit_wants_default_target_and_no_network_online() {
        for restart in [Restart::Always, Restart::No] {
            let s = spec("u", "img", sd(true, restart, false));
            let u = render(&s, Path::new("/bin/stamp"), None);
            assert_eq!(one(&u, "[Install]", "WantedBy"), "default.target");
            assert!(directive(&u, "[Unit]", "After").is_empty(), "{u}");
            assert!(directive(&u, "[Unit]", "Wants").is_empty(), "{u}");
            assert_eq!(one(&u, "[Service]", "Restart"), restart.as_str());
        }
    }

    #[test]
    fn paths_and_text_are_quoted_as_systemd_requires() {
        let s = spec("m.1", "my image 100%\nx\\", sd(false, Restart::No, false));
        let u = render(
            &s,
            Path::new("/opt/my tools/st\"amp"),
            Some(Path::new("/home/a b/%state$")),
        );
        assert_eq!(
            one(&u, "[Service]", "ExecStart"),
            r#""/opt/my tools/st\"amp" start --foreground m.1"#
        );
        let d = one(&u, "[Unit]", "Description");
        assert_eq!(d, "stamp machine m.1 (my image 100%% x)");
        assert!(
            directive(&u, "[Service]", "Environment")
                .contains(&r#""XDG_STATE_HOME=/home/a b/%%state$""#.to_string()),
            "{u}"
        );
        assert_eq!(exec_word("a$b"), "a$$b");
        assert_eq!(exec_word(";"), "\";\"");
        assert_eq!(exec_word(""), "\"\"");
        assert_eq!(exec_word("tab\there"), "\"tab\\there\"");
        assert_eq!(exec_word("\u{1}"), "\"\\x01\"");
    }

    #[test]
    fn unit_dir_follows_the_override_and_xdg() {
        // The only test that reads these variables; it does not change them (set_var is
        // unsafe with threads): it checks what the current environment implies.
        let over = std::env::var_os("STAMP_SYSTEMD_UNIT_DIR").filter(|v| !v.is_empty());
        match over {
            Some(d) => assert_eq!(unit_dir(false), PathBuf::from(d)),
            None => {
                assert_eq!(unit_dir(false), PathBuf::from("/etc/systemd/system"));
                assert!(unit_dir(true).ends_with("systemd/user"));
                if let Some(c) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
                    assert_eq!(unit_dir(true), PathBuf::from(c).join("systemd/user"));
                }
            }
        }
    }

    #[test]
    fn systemd_analyze_verify_accepts_the_unit() {
        let Some(analyze) = crate::driver::which("systemd-analyze") else {
            eprintln!("skipped: systemd-analyze is not installed");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        // An existing executable in a directory with a space, as ExecStart= must name one.
        let bin = d.path().join("bin dir");
        std::fs::create_dir(&bin).unwrap();
        let stamp = bin.join("stamp");
        std::fs::copy("/bin/true", &stamp).unwrap();
        for (name, user) in [("verify-sys", false), ("verify-user", true)] {
            let s = spec(name, "a b%.qcow2", sd(user, Restart::OnFailure, true));
            let unit = d.path().join(unit_name(name));
            std::fs::write(&unit, render(&s, &stamp, Some(&d.path().join("st ate")))).unwrap();
            let mut cmd = Command::new(&analyze);
            cmd.arg("verify");
            if user {
                // A user manager needs a runtime directory.
                cmd.arg("--user").env("XDG_RUNTIME_DIR", d.path());
            }
            let out = cmd.arg(&unit).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{}: {err}", unit.display());
            let ours: Vec<&str> = err.lines().filter(|l| l.contains(name)).collect();
            assert!(ours.is_empty(), "systemd-analyze complains: {ours:?}");
        }
    }

    #[test]
    fn show_output_is_parsed_per_unit() {
        let text = "Id=stamp-a.service\nLoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n\n\
                    Id=stamp-b.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\n";
        let units = vec!["stamp-a.service".to_string(), "stamp-b.service".to_string()];
        let v = parse_show(text, &units);
        assert_eq!(
            v[0],
            UnitStatus {
                name: "stamp-a.service".into(),
                active: "active".into(),
                sub: "running".into(),
                enabled: "enabled".into()
            }
        );
        assert_eq!(v[1].active, "inactive");
        assert_eq!(v[1].enabled, "not-found");
        // Missing blocks give empty fields, not a panic.
        assert_eq!(parse_show("", &units)[1].active, "");
    }

    #[test]
    fn since_is_translated_for_journalctl() {
        assert_eq!(
            journal_since("2026-01-02T03:04:05Z"),
            "2026-01-02 03:04:05 UTC"
        );
        assert_eq!(journal_since("10m"), "-10m");
        assert_eq!(journal_since("yesterday"), "yesterday");
        assert_eq!(journal_since("2026-01-02"), "2026-01-02");
        // Short or odd input is passed through, never sliced out of bounds.
        assert_eq!(journal_since("ä"), "ä");
    }

    #[test]
    fn notify_sends_to_a_path_socket() {
        use std::os::unix::net::UnixDatagram;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let addr = std::os::unix::net::SocketAddr::from_pathname(&path).unwrap();
        assert!(send_to(&addr, "READY=1").unwrap());
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn notify_sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let name = format!("stamp-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let parsed = addr_of(format!("@{name}")).unwrap().unwrap();
        assert!(send_to(&parsed, "STATUS=up").unwrap());
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=up");
    }

    #[test]
    fn notify_without_systemd_is_false() {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            assert!(!notify("READY=1").unwrap());
        }
        assert!(addr_of("vsock:2:1234").unwrap().is_none());
        assert!(addr_of("").unwrap().is_none());
    }
}
