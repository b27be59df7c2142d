//! [`Local`]: the runtime that runs machines itself. Each running machine has a monitor,
//! `stamp start --foreground NAME`, that owns the VMM process, records its status and exit
//! code, and stops it gracefully on SIGTERM; `stamp run -d` and `stamp start` start the
//! monitor in its own session and return once the machine runs, so the machine outlives
//! the command that started it. systemd runs the same monitor as a service's main process.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::driver::Driver;
use crate::service::{MachineService, STOP_TIMEOUT};
use crate::spec::{MachineSpec, Platform};
use crate::status::{Machine, Process, State, Status};
use crate::store::{MachineDir, MachineStore};
use crate::{Error, Result, now_rfc3339};

/// How long `start` waits for a machine to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The drivers, one per platform.
pub struct Drivers {
    pub qemu: Box<dyn Driver>,
    pub firecracker: Box<dyn Driver>,
    pub podman: Box<dyn Driver>,
}

/// The runtime that runs machines as processes of this host.
pub struct Local {
    store: MachineStore,
    drivers: Drivers,
    /// The monitor's command line without the machine name (`[stamp, start, --foreground,
    /// --setsid]`).
    monitor: Vec<std::ffi::OsString>,
}

impl Local {
    /// A runtime on `store` whose monitor is `monitor NAME`.
    pub fn new(store: MachineStore, drivers: Drivers, monitor: Vec<std::ffi::OsString>) -> Local {
        Local {
            store,
            drivers,
            monitor,
        }
    }

    /// The machine store.
    pub fn store(&self) -> &MachineStore {
        &self.store
    }

    /// The driver of `platform`.
    pub fn driver(&self, platform: Platform) -> &dyn Driver {
        match platform {
            Platform::Qemu => self.drivers.qemu.as_ref(),
            Platform::Firecracker => self.drivers.firecracker.as_ref(),
            Platform::Podman => self.drivers.podman.as_ref(),
        }
    }

    /// The monitor: runs machine `name` in the foreground until it ends, or until `stop` is
    /// set (then stops it gracefully). `ready` is called once the machine is up (systemd's
    /// READY=1). Returns the machine as it ended; a machine created with `--rm` is removed.
    pub fn run_foreground(
        &self,
        name: &str,
        stop: &AtomicBool,
        ready: &dyn Fn(&Machine),
    ) -> Result<Machine> {
        let dir = self.store.open(name)?;
        let spec = dir.spec()?;
        let driver = self.driver(spec.platform);
        driver.available()?;
        let me = Process::of(std::process::id())
            .ok_or_else(|| Error::Driver("cannot read this process's /proc entry".into()))?;
        // Claim the machine: only one monitor at a time.
        {
            let _lock = dir.lock()?;
            let current = dir.machine()?;
            if current.state().is_live() {
                return Err(Error::State {
                    name: name.to_string(),
                    state: current.state(),
                    hint: "it is already running (`stamp stop` it first)".into(),
                });
            }
            let log_start = std::fs::metadata(dir.console_log()).map_or(0, |m| m.len());
            dir.write_status(&Status {
                state: Some(current.state()),
                monitor: Some(me),
                started: Some(now_rfc3339()),
                log_offsets: with_start(&current.status.log_offsets, log_start),
                ..Status::default()
            })?;
        }
        let outcome = self.supervise(&spec, &dir, driver, stop, ready);
        let machine = match outcome {
            Ok(m) => m,
            Err(e) => {
                dir.update(|s| {
                    s.state = Some(State::Failed);
                    s.reason = Some(e.to_string());
                    s.finished = Some(now_rfc3339());
                    s.monitor = None;
                    s.vmm = None;
                })?;
                if spec.remove {
                    self.remove_dir(&spec, dir)?;
                }
                return Err(e);
            }
        };
        if spec.remove {
            self.remove_dir(&spec, dir)?;
        }
        Ok(machine)
    }

    /// Starts the VMM, waits for it to end (stopping it when asked), records the end.
    fn supervise(
        &self,
        spec: &MachineSpec,
        dir: &MachineDir,
        driver: &dyn Driver,
        stop: &AtomicBool,
        ready: &dyn Fn(&Machine),
    ) -> Result<Machine> {
        let launch = driver.launch(spec, dir)?;
        let mut command = launch.command;
        let log = |p: PathBuf| -> Result<File> {
            File::options()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| Error::io("open", &p, e))
        };
        let out = log(if launch.output_is_console {
            dir.console_log()
        } else {
            dir.path().join("vmm.log")
        })?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("open", dir.console_log(), e))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .spawn()
            .map_err(|e| Error::Driver(format!("cannot start {program}: {e}")))?;
        let vmm = Process::of(child.id());
        dir.update(|s| {
            s.state = Some(State::Running);
            s.vmm = vmm;
            s.accel = launch.accel.clone();
            s.warning = launch.warning.clone();
        })?;
        tracing::info!(machine = %spec.name, pid = child.id(), "started {program}");
        if let Err(e) = driver.started(spec, dir, child.id()) {
            let _ = child.kill();
            let _ = child.wait();
            let log = tail(&if launch.output_is_console {
                dir.console_log()
            } else {
                dir.path().join("vmm.log")
            });
            return Err(Error::Driver(format!("{e}{log}")));
        }
        dir.update(|s| s.ready = true)?;
        ready(&dir.machine()?);
        let status = self.wait(spec, dir, driver, &mut child, stop)?;
        let code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1);
        let asked = dir.status()?.stopping || stop.load(Ordering::SeqCst);
        let (state, reason) = if asked {
            (State::Stopped, "stopped on request".to_string())
        } else if let Some(sig) = status.signal() {
            (
                State::Failed,
                format!(
                    "{program} was killed by signal {sig} ({})",
                    signal_name(sig)
                ),
            )
        } else if code == 0 {
            (State::Stopped, launch.clean_exit.to_string())
        } else if launch.workload_exit && !(125..=127).contains(&code) {
            (State::Stopped, format!("exited with status {code}"))
        } else {
            let log = tail(&if launch.output_is_console {
                dir.console_log()
            } else {
                dir.path().join("vmm.log")
            });
            (
                State::Failed,
                format!("{program} exited with status {code}{log}"),
            )
        };
        tracing::info!(machine = %spec.name, %state, code, "{reason}");
        let status = dir.update(|s| {
            s.state = Some(state);
            s.exit_code = Some(code);
            s.reason = Some(reason);
            s.finished = Some(now_rfc3339());
            s.monitor = None;
            s.vmm = None;
            s.stopping = false;
        })?;
        Ok(Machine {
            spec: spec.clone(),
            status,
            unit: None,
        })
    }

    /// Waits for the VMM to exit; when `stop` is set or the status asks to stop, shuts the
    /// guest down, then kills it after the grace period.
    fn wait(
        &self,
        spec: &MachineSpec,
        dir: &MachineDir,
        driver: &dyn Driver,
        child: &mut Child,
        stop: &AtomicBool,
    ) -> Result<ExitStatus> {
        // When the stop began, and how long it may take (a later, shorter stop, such as
        // `rm -f` during a graceful stop, shortens it).
        let mut stopping: Option<(Instant, Duration)> = None;
        let mut killed = false;
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| Error::Driver(format!("cannot wait for the machine's process: {e}")))?
            {
                return Ok(status);
            }
            let recorded = dir.status().ok().filter(|s| s.stopping);
            let asked = stop.load(Ordering::SeqCst) || recorded.is_some();
            let timeout = recorded
                .and_then(|s| s.stop_timeout_ms)
                .map_or(STOP_TIMEOUT, Duration::from_millis);
            match stopping {
                None if asked => {
                    dir.update(|s| s.stopping = true)?;
                    tracing::info!(machine = %spec.name, "stopping (timeout {timeout:?})");
                    if timeout.is_zero() {
                        let _ = driver.kill(spec, dir);
                    } else if let Err(e) = driver.shutdown(spec, dir) {
                        tracing::warn!(machine = %spec.name, "graceful shutdown failed: {e}");
                        let _ = driver.kill(spec, dir);
                    }
                    stopping = Some((Instant::now(), timeout));
                }
                Some((began, current)) if timeout < current => {
                    stopping = Some((began, timeout));
                }
                _ => {}
            }
            if let Some((began, timeout)) = stopping {
                if !killed && began.elapsed() >= timeout {
                    tracing::info!(machine = %spec.name, "did not stop in time: killing it");
                    let _ = driver.kill(spec, dir);
                    std::thread::sleep(Duration::from_millis(500));
                    let _ = child.kill();
                    killed = true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Removes a machine that is not live: the driver's leftovers, then its directory.
    fn remove_dir(&self, spec: &MachineSpec, dir: MachineDir) -> Result<()> {
        self.driver(spec.platform).cleanup(spec, &dir)?;
        dir.remove()
    }

    /// Waits until `cond` holds for the machine or `timeout` passes.
    fn wait_for(
        &self,
        dir: &MachineDir,
        timeout: Duration,
        cond: impl Fn(&Machine) -> bool,
    ) -> Result<Option<Machine>> {
        let end = Instant::now() + timeout;
        loop {
            let m = dir.machine()?;
            if cond(&m) {
                return Ok(Some(m));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl MachineService for Local {
    fn create(&self, spec: &MachineSpec) -> Result<Machine> {
        let driver = self.driver(spec.platform);
        driver.available()?;
        let dir = self.store.create(spec, |d| driver.prepare(spec, d))?;
        dir.machine()
    }

    fn start(&self, name: &str) -> Result<Machine> {
        let dir = self.store.open(name)?;
        let m = dir.machine()?;
        if m.state().is_live() {
            return Err(Error::State {
                name: name.into(),
                state: m.state(),
                hint: "it is already running".into(),
            });
        }
        self.driver(m.spec.platform).available()?;
        let log_path = dir.path().join("monitor.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io("open", &log_path, e))?;
        let err = log
            .try_clone()
            .map_err(|e| Error::io("open", &log_path, e))?;
        let (program, args) = self
            .monitor
            .split_first()
            .ok_or_else(|| Error::Driver("no monitor command".into()))?;
        let mut child = Command::new(program)
            .args(args)
            .arg(name)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| {
                Error::Driver(format!(
                    "cannot start the monitor {}: {e}",
                    program.to_string_lossy()
                ))
            })?;
        let pid = child.id();
        let end = Instant::now() + START_TIMEOUT;
        loop {
            let m = dir.machine()?;
            let ours = m.status.monitor.is_some_and(|p| p.pid == pid);
            if ours && m.state() == State::Running {
                // Running is recorded when the VMM starts; wait for the driver's "up".
                if m.status.ready {
                    return Ok(m);
                }
            }
            if let Some(status) = child.try_wait().ok().flatten() {
                // The monitor exited: it failed, or the machine ended already.
                let m = match self.store.open(name) {
                    Ok(d) => d.machine()?,
                    Err(_) => {
                        return Err(Error::Driver(format!(
                            "machine {name} ended at once and was removed (--rm); its monitor exited with {status}"
                        )));
                    }
                };
                if m.state() == State::Failed || !status.success() {
                    let why = m.status.reason.clone().unwrap_or_else(|| {
                        format!("the monitor exited with {status}{}", tail(&log_path))
                    });
                    return Err(Error::Driver(format!(
                        "machine {name} failed to start: {why}"
                    )));
                }
                return Ok(m);
            }
            if Instant::now() >= end {
                return Err(Error::Driver(format!(
                    "machine {name} did not come up within {}s (see {})",
                    START_TIMEOUT.as_secs(),
                    log_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pause(&self, name: &str) -> Result<Machine> {
        let dir = self.store.open(name)?;
        let _lock = dir.lock()?;
        let m = dir.machine()?;
        if m.state() != State::Running {
            return Err(Error::State {
                name: name.into(),
                state: m.state(),
                hint: "only a running machine can be paused".into(),
            });
        }
        self.driver(m.spec.platform).pause(&m.spec, &dir)?;
        let mut s = dir.status()?;
        s.state = Some(State::Paused);
        dir.write_status(&s)?;
        dir.machine()
    }

    fn resume(&self, name: &str) -> Result<Machine> {
        let dir = self.store.open(name)?;
        let _lock = dir.lock()?;
        let m = dir.machine()?;
        if m.state() != State::Paused {
            return Err(Error::State {
                name: name.into(),
                state: m.state(),
                hint: "only a paused machine can be unpaused".into(),
            });
        }
        self.driver(m.spec.platform).resume(&m.spec, &dir)?;
        let mut s = dir.status()?;
        s.state = Some(State::Running);
        dir.write_status(&s)?;
        dir.machine()
    }

    fn stop(&self, name: &str, timeout: Duration) -> Result<Machine> {
        let dir = self.store.open(name)?;
        let m = dir.machine()?;
        if !m.state().is_live() {
            return Ok(m);
        }
        let driver = self.driver(m.spec.platform);
        if m.state() == State::Paused {
            // A frozen guest cannot see the power button.
            let _ = driver.resume(&m.spec, &dir);
        }
        let s = dir.update(|s| {
            s.stopping = true;
            s.stop_timeout_ms = Some(timeout.as_millis().try_into().unwrap_or(u64::MAX));
        })?;
        match s.monitor.filter(Process::alive) {
            Some(monitor) => {
                // The monitor sees `stopping` within 50 ms; SIGTERM wakes it the same way.
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(monitor.pid as i32)
                        .ok_or_else(|| Error::Driver("bad monitor pid".into()))?,
                    rustix::process::Signal::TERM,
                );
            }
            None => {
                // The monitor is gone but the VMM runs on: stop it directly.
                if timeout.is_zero() {
                    let _ = driver.kill(&m.spec, &dir);
                } else {
                    let _ = driver.shutdown(&m.spec, &dir);
                }
                let gone = self.wait_for(&dir, timeout, |m| !m.state().is_live())?;
                if gone.is_none() {
                    let _ = driver.kill(&m.spec, &dir);
                    if let Some(vmm) = s.vmm.filter(Process::alive) {
                        if let Some(pid) = rustix::process::Pid::from_raw(vmm.pid as i32) {
                            let _ =
                                rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                        }
                    }
                }
                let _ = self.wait_for(&dir, Duration::from_secs(5), |m| !m.state().is_live())?;
                dir.update(|s| {
                    if s.state().is_live() || s.state() == State::Failed {
                        s.state = Some(State::Stopped);
                        s.reason = Some("stopped on request".into());
                        s.finished = Some(now_rfc3339());
                        s.monitor = None;
                        s.vmm = None;
                        s.stopping = false;
                    }
                })?;
            }
        }
        let limit = timeout + Duration::from_secs(15);
        match self.wait_for(&dir, limit, |m| !m.state().is_live()) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(Error::Driver(format!(
                "machine {name} did not stop within {}s",
                limit.as_secs()
            ))),
            // A --rm machine is removed once it stops.
            Err(_) if self.store.open(name).is_err() => Ok(Machine {
                spec: m.spec,
                status: Status {
                    state: Some(State::Stopped),
                    reason: Some("stopped and removed (--rm)".into()),
                    ..Status::default()
                },
                unit: None,
            }),
            Err(e) => Err(e),
        }
    }

    fn delete(&self, name: &str, force: bool) -> Result<()> {
        let dir = self.store.open(name)?;
        let m = dir.machine()?;
        if m.state().is_live() {
            if !force {
                return Err(Error::State {
                    name: name.into(),
                    state: m.state(),
                    hint: format!(
                        "stop it first (`stamp stop {name}`) or use `stamp rm -f {name}`"
                    ),
                });
            }
            match self.stop(name, Duration::ZERO) {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        match self.store.open(name) {
            Ok(dir) => self.remove_dir(&m.spec, dir),
            Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn get(&self, name: &str) -> Result<Machine> {
        self.store.open(name)?.machine()
    }

    fn list(&self) -> Result<Vec<Machine>> {
        let mut out = Vec::new();
        for name in self.store.names()? {
            match self.store.open(&name).and_then(|d| d.machine()) {
                Ok(m) => out.push(m),
                // Removed meanwhile.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn logs(
        &self,
        name: &str,
        follow: bool,
        since: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<()> {
        let dir = self.store.open(name)?;
        let path = dir.console_log();
        let m = dir.machine()?;
        let mut from = 0;
        if let Some(t) = since {
            // The console log has no timestamps: start at the first run that began at or
            // after `t` (RFC 3339 strings in UTC compare as times).
            from = m
                .status
                .log_offsets
                .iter()
                .find(|(started, _)| started.as_str() >= t)
                .map_or(u64::MAX, |(_, off)| *off);
        }
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !follow => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = self.wait_for(&dir, Duration::from_secs(3600 * 24 * 365), |_| {
                    path.exists()
                })?;
                File::open(&path).map_err(|e| Error::io("open", &path, e))?
            }
            Err(e) => return Err(Error::io("open", &path, e)),
        };
        let len = file.metadata().map_or(0, |m| m.len());
        file.seek(SeekFrom::Start(from.min(len)))
            .map_err(|e| Error::io("read", &path, e))?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| Error::io("read", &path, e))?;
            if n > 0 {
                out.write_all(&buf[..n])
                    .and_then(|()| out.flush())
                    .map_err(|e| Error::io("write", "the output", e))?;
                continue;
            }
            if !follow {
                return Ok(());
            }
            let live = self
                .store
                .open(name)
                .and_then(|d| d.machine())
                .is_ok_and(|m| m.state().is_live());
            if !live {
                // Drain what was written before it ended.
                let n = file
                    .read(&mut buf)
                    .map_err(|e| Error::io("read", &path, e))?;
                if n == 0 {
                    return Ok(());
                }
                out.write_all(&buf[..n])
                    .map_err(|e| Error::io("write", "the output", e))?;
                continue;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `offsets` plus (now, `at`): where each run's console output starts.
fn with_start(offsets: &[(String, u64)], at: u64) -> Vec<(String, u64)> {
    let mut v = offsets.to_vec();
    v.push((now_rfc3339(), at));
    // Keep the record small.
    if v.len() > 100 {
        v.drain(..v.len() - 100);
    }
    v
}

/// The last lines of a log, as "\n  ..." for an error message (empty if there are none).
fn tail(path: &std::path::Path) -> String {
    let Ok(text) = std::fs::read(path) else {
        return String::new();
    };
    let start = text.len().saturating_sub(2048);
    let text = String::from_utf8_lossy(&text[start..]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = &lines[lines.len().saturating_sub(3)..];
    if last.is_empty() {
        String::new()
    } else {
        format!(": {}", last.join(" / "))
    }
}

/// The usual name of a signal.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => "a signal",
    }
}
