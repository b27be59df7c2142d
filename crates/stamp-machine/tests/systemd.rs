//! The systemd wrapper ([`Systemd`]) against a real systemd as PID 1, in a podman container
//! over the host's root (tests/support/container.rs).
//!
//! The machine CLI (`stamp start --foreground`, `stamp stop`) lives in the stamp crate, so the
//! units here run a stand-in for it: this very test binary, bind-mounted into the container
//! and started by a two-line script at the `stamp` path the units name (in a directory with a
//! space, to exercise the quoting). In the role `monitor` it is the real monitor,
//! [`Local::run_foreground`], notifying READY=1 with [`systemd::notify`]; in the role `stop` it
//! is [`Local::stop`]. The machine's "VMM" is `sleep` (a stand-in driver): QEMU itself is
//! covered by stamp's `machine_systemd` test. The flow (`inner`) runs in the container too,
//! since it calls systemctl: create (unit written, enabled), start (active once READY=1),
//! list/get (unit state), restart (new monitor), kill -9 of the VMM (Restart=on-failure brings
//! it back), stop (inactive, machine stopped), logs (the journal), delete (no unit, no
//! machine), and a failing create that leaves nothing.
//!
//! Run alone with `cargo test -p stamp-machine --test systemd`.

// The stand-in monitor handles SIGTERM (systemd's and `stamp stop`'s) as stamp's CLI does:
// a handler that only sets an atomic.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)]

#[path = "support/container.rs"]
mod container;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use container::SystemdContainer;
use stamp_machine::driver::{Driver, Launch};
use stamp_machine::runtime::{Drivers, Local};
use stamp_machine::spec::{Restart, SystemdSpec};
use stamp_machine::store::{MachineDir, MachineStore};
use stamp_machine::systemd::{self, Systemd, unit_name};
use stamp_machine::{MachineService, MachineSpec, Platform, Result, Source, State};

/// This test binary inside the container.
const SELF: &str = "/usr/local/bin/stamp-machine-systemd-test";

/// The machines' state directory inside the container.
const STATE: &str = "/tmp/st";

/// The stand-in `stamp` the units run.
const STAMP: &str = "/tmp/st/bin dir/stamp";

/// The role this process plays (`inner`, `monitor`, `stop`), unset for the test run itself.
fn role() -> Option<String> {
    std::env::var("STAMP_TEST_ROLE").ok()
}

/// A driver whose VMM is `sleep`: started is running, shutdown is SIGTERM, kill is SIGKILL.
struct Sleep;

fn signal_vmm(dir: &MachineDir, sig: rustix::process::Signal) -> Result<()> {
    if let Some(vmm) = dir.status()?.vmm.filter(|p| p.alive()) {
        if let Some(pid) = rustix::process::Pid::from_raw(vmm.pid as i32) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }
    Ok(())
}

impl Driver for Sleep {
    fn available(&self) -> Result<()> {
        Ok(())
    }
    fn prepare(&self, _: &MachineSpec, _: &MachineDir) -> Result<()> {
        Ok(())
    }
    fn launch(&self, _: &MachineSpec, _: &MachineDir) -> Result<Launch> {
        let mut command = Command::new("sleep");
        command.arg("100000");
        Ok(Launch {
            command,
            accel: None,
            warning: None,
            output_is_console: false,
            workload_exit: false,
            clean_exit: "the guest powered off",
        })
    }
    fn started(&self, spec: &MachineSpec, _: &MachineDir, pid: u32) -> Result<()> {
        // Something for the journal: the monitor's output is the unit's.
        println!("machine {} is up (vmm pid {pid})", spec.name);
        Ok(())
    }
    fn pause(&self, _: &MachineSpec, dir: &MachineDir) -> Result<()> {
        signal_vmm(dir, rustix::process::Signal::STOP)
    }
    fn resume(&self, _: &MachineSpec, dir: &MachineDir) -> Result<()> {
        signal_vmm(dir, rustix::process::Signal::CONT)
    }
    fn shutdown(&self, _: &MachineSpec, dir: &MachineDir) -> Result<()> {
        signal_vmm(dir, rustix::process::Signal::TERM)
    }
    fn kill(&self, _: &MachineSpec, dir: &MachineDir) -> Result<()> {
        signal_vmm(dir, rustix::process::Signal::KILL)
    }
    fn cleanup(&self, _: &MachineSpec, _: &MachineDir) -> Result<()> {
        Ok(())
    }
}

fn local() -> Local {
    let monitor = [STAMP, "start", "--foreground"].map(Into::into).to_vec();
    Local::new(
        MachineStore::new(Path::new(STATE).join("stamp/machines")),
        Drivers {
            qemu: Box::new(Sleep),
            firecracker: Box::new(Sleep),
            podman: Box::new(Sleep),
        },
        monitor,
    )
}

fn spec(name: &str, restart: Restart, enable: bool) -> MachineSpec {
    MachineSpec {
        memory: 64 << 20,
        systemd: Some(SystemdSpec {
            user: false,
            restart,
            enable,
        }),
        ..MachineSpec::new(
            name,
            "blank 100%.qcow2",
            Platform::Qemu,
            Source::Disk {
                path: "/nonexistent".into(),
                format: "qcow2".into(),
            },
        )
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The roles this binary plays inside the container; a no-op in the test run itself.
#[test]
fn role_entry() {
    let Some(role) = role() else { return };
    let name = std::env::var("STAMP_TEST_MACHINE").unwrap_or_default();
    match role.as_str() {
        "monitor" => {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe {
                libc::signal(
                    libc::SIGTERM,
                    on_term as extern "C" fn(libc::c_int) as libc::sighandler_t,
                );
            }
            let ended = local().run_foreground(&name, &STOP, &|_| {
                systemd::notify("READY=1").unwrap();
            });
            eprintln!("monitor: {ended:?}");
            // Restart=on-failure needs a failed machine to fail the unit.
            let code = match ended {
                Ok(m) if m.state() != State::Failed => 0,
                _ => 1,
            };
            std::process::exit(code);
        }
        "stop" => {
            // ExecStop=: the local stop (the monitor is the unit's main process).
            let l = local();
            let own = l.get(&name).is_ok_and(|m| systemd::in_own_unit(&m));
            eprintln!("stop: in its own unit: {own}");
            let r = l.stop(&name, Duration::from_secs(10));
            eprintln!("stop: {r:?}");
            std::process::exit(i32::from(r.is_err()));
        }
        "inner" => inner(),
        other => panic!("unknown role {other}"),
    }
}

/// Polls `f` every 200 ms until it holds or `secs` pass.
fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    f()
}

fn show(unit: &str, prop: &str) -> String {
    let out = Command::new("systemctl")
        .args(["show", "-p", prop, "--value", unit])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The flow, run inside the container.
fn inner() {
    let bin = PathBuf::from(STAMP);
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\n\
             echo \"stand-in stamp $*\" >&2\n\
             case \"$1\" in\n\
             start) STAMP_TEST_ROLE=monitor STAMP_TEST_MACHINE=\"$3\" exec {SELF} --exact role_entry --nocapture --test-threads=1 ;;\n\
             stop) STAMP_TEST_ROLE=stop STAMP_TEST_MACHINE=\"$4\" exec {SELF} --exact role_entry --nocapture --test-threads=1 ;;\n\
             esac\nexit 2\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    let sd = Systemd::new(local(), false, bin);
    let unit = unit_name("m1");
    let path = Path::new("/etc/systemd/system").join(&unit);

    // create: the machine, the unit (enabled), nothing started.
    let m = sd.create(&spec("m1", Restart::OnFailure, true)).unwrap();
    assert_eq!(m.state(), State::Created);
    let u = m.unit.clone().unwrap();
    assert_eq!(
        (u.active.as_str(), u.enabled.as_str()),
        ("inactive", "enabled")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"XDG_STATE_HOME=/tmp/st\""), "{text}");
    assert!(text.contains("Environment=\"PATH=/"), "{text}");
    let r = Command::new("systemd-analyze")
        .args(["verify"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        r.status.success() && !err.contains("stamp-m1"),
        "verify: {err}"
    );
    // The same name again: refused, and the first machine and its unit are untouched.
    let e = sd
        .create(&spec("m1", Restart::OnFailure, true))
        .unwrap_err()
        .to_string();
    assert!(e.contains("exists already"), "{e}");
    assert!(path.exists());

    // start: returns once READY=1 arrived; the unit's main process is the monitor.
    let m = sd.start("m1").unwrap();
    assert_eq!(m.state(), State::Running, "{m:?}");
    assert!(m.status.ready);
    assert_eq!(m.unit.as_ref().unwrap().active, "active");
    let main: u32 = show(&unit, "MainPID").parse().unwrap();
    assert_eq!(m.status.monitor.unwrap().pid, main);
    let vmm = m.status.vmm.unwrap().pid;

    // list and get carry the unit's state.
    let all = sd.list().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].unit.as_ref().unwrap().sub, "running");

    // pause/resume go to the driver; systemd keeps the unit active.
    assert_eq!(sd.pause("m1").unwrap().state(), State::Paused);
    assert_eq!(sd.resume("m1").unwrap().state(), State::Running);

    // restart: a new monitor and VMM.
    let m = sd.restart("m1", Duration::from_secs(10)).unwrap();
    assert_eq!(m.state(), State::Running);
    let main2 = m.status.monitor.unwrap().pid;
    assert_ne!(main2, main);
    let vmm2 = m.status.vmm.unwrap().pid;
    assert_ne!(vmm2, vmm);

    // kill -9 of the VMM: the monitor records the failure and exits 1; systemd restarts it.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(vmm2 as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let back = wait_until(60, || {
        let m = sd.get("m1").unwrap();
        m.state() == State::Running
            && m.status.ready
            && m.status.vmm.is_some_and(|p| p.pid != vmm2)
            && show(&unit, "NRestarts") == "1"
            && show(&unit, "ActiveState") == "active"
    });
    assert!(back, "not restarted: {:?}", sd.get("m1").unwrap());

    // stop: ExecStop= stops the machine gracefully; the unit is inactive, not failed. A
    // grace period other than the unit's goes through a runtime drop-in, removed after.
    let m = sd.stop("m1", Duration::from_secs(3)).unwrap();
    assert_eq!(m.state(), State::Stopped, "{m:?}");
    assert_eq!(m.status.reason.as_deref(), Some("stopped on request"));
    assert_eq!(m.unit.as_ref().unwrap().active, "inactive");

    // logs: the journal has the monitor's output of every run.
    let mut out = Vec::new();
    sd.logs("m1", false, None, &mut out).unwrap();
    let logs = String::from_utf8_lossy(&out);
    assert!(
        logs.matches("machine m1 is up").count() >= 3,
        "journal: {logs}"
    );
    assert!(
        logs.contains("stand-in stamp stop -t 3 m1"),
        "journal: {logs}"
    );
    assert!(
        logs.contains("stop: in its own unit: true"),
        "journal: {logs}"
    );
    assert!(
        !Path::new("/run/systemd/system")
            .join(format!("{unit}.d"))
            .exists()
    );
    // Following a stopped machine ends by itself.
    let mut out = Vec::new();
    sd.logs("m1", true, Some("2000-01-01T00:00:00Z"), &mut out)
        .unwrap();
    assert!(String::from_utf8_lossy(&out).contains("machine m1 is up"));

    // delete: no unit file, no enablement link, no machine.
    sd.delete("m1", false).unwrap();
    assert!(!path.exists());
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants")
            .join(&unit)
            .exists()
    );
    assert_eq!(show(&unit, "LoadState"), "not-found");
    assert!(sd.list().unwrap().is_empty());

    // A running machine is deleted only with force.
    sd.create(&spec("m2", Restart::Always, false)).unwrap();
    sd.start("m2").unwrap();
    let e = sd.delete("m2", false).unwrap_err().to_string();
    assert!(e.contains("stop it first"), "{e}");
    sd.delete("m2", true).unwrap();
    assert!(sd.list().unwrap().is_empty());
    assert_eq!(show(&unit_name("m2"), "LoadState"), "not-found");

    // A unit whose machine is gone (removed by hand) is removed by delete.
    sd.create(&spec("m4", Restart::No, true)).unwrap();
    sd.local().delete("m4", true).unwrap();
    sd.delete("m4", false).unwrap();
    assert!(
        !Path::new("/etc/systemd/system")
            .join(unit_name("m4"))
            .exists()
    );
    assert_eq!(show(&unit_name("m4"), "LoadState"), "not-found");

    // --rm and --systemd do not mix (the unit would outlive its machine).
    let mut s5 = spec("m5", Restart::No, false);
    s5.remove = true;
    let e = sd.create(&s5).unwrap_err().to_string();
    assert!(e.contains("--rm"), "{e}");
    assert!(sd.list().unwrap().is_empty());

    // A failing create (systemctl enable fails: the .wants directory is a file) leaves no
    // machine and no unit behind.
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants");
    // (The container's root is an overlay: its directories can be removed, not renamed.)
    let _ = std::fs::remove_dir_all(wants);
    std::fs::write(wants, "not a directory").unwrap();
    let e = sd
        .create(&spec("m3", Restart::No, true))
        .unwrap_err()
        .to_string();
    std::fs::remove_file(wants).unwrap();
    std::fs::create_dir(wants).unwrap();
    assert!(
        e.contains("systemctl enable") && e.contains("stamp-m3"),
        "{e}"
    );
    assert!(sd.list().unwrap().is_empty());
    assert!(
        !Path::new("/etc/systemd/system")
            .join(unit_name("m3"))
            .exists()
    );
    assert!(!Path::new(STATE).join("stamp/machines/m3").exists());
    user_units();
    println!("inner flow passed");
}

/// The same with a user unit (`--user`), in root's user manager.
fn user_units() {
    let sd = Systemd::new(local(), true, PathBuf::from(STAMP));
    let unit = unit_name("u1");
    let path = Path::new("/root/.config/systemd/user").join(&unit);
    let user_show = |prop: &str| {
        let out = Command::new("systemctl")
            .args(["--user", "show", "-p", prop, "--value", &unit])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mut s = spec("u1", Restart::OnFailure, true);
    s.systemd.as_mut().unwrap().user = true;
    let m = sd.create(&s).unwrap();
    assert!(m.spec.systemd.as_ref().unwrap().user);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("WantedBy=default.target"), "{text}");
    assert_eq!(user_show("UnitFileState"), "enabled");
    let m = sd.start("u1").unwrap();
    assert_eq!(m.state(), State::Running);
    assert_eq!(m.unit.as_ref().unwrap().active, "active");
    assert_eq!(
        user_show("MainPID"),
        m.status.monitor.unwrap().pid.to_string()
    );
    // A system service of the same name does not exist: the machine's spec picks the manager.
    assert_eq!(show(&unit, "LoadState"), "not-found");
    let m = sd.stop("u1", Duration::from_secs(2)).unwrap();
    assert_eq!(m.state(), State::Stopped);
    assert_eq!(user_show("ActiveState"), "inactive");
    let mut out = Vec::new();
    sd.logs("u1", false, None, &mut out).unwrap();
    let logs = String::from_utf8_lossy(&out);
    assert!(logs.contains("machine u1 is up"), "user journal: {logs}");
    sd.delete("u1", false).unwrap();
    assert!(!path.exists());
    assert_eq!(user_show("LoadState"), "not-found");
    assert!(sd.list().unwrap().is_empty());
}

/// The test run: boots the container and runs the flow in it.
#[test]
fn systemd_wrapper_end_to_end() {
    if role().is_some() {
        return;
    }
    let me = std::env::current_exe().unwrap();
    let Some(c) = SystemdContainer::start(&[(&me, SELF)], &[&format!("XDG_STATE_HOME={STATE}")])
    else {
        return;
    };
    // Root's user manager, for the user units.
    c.ok(&["systemctl", "start", "user@0.service"]);
    let r = c.exec(&[
        "env",
        "STAMP_TEST_ROLE=inner",
        "XDG_RUNTIME_DIR=/run/user/0",
        SELF,
        "--exact",
        "role_entry",
        "--nocapture",
        "--test-threads=1",
    ]);
    assert!(
        r.code == 0 && r.stdout.contains("inner flow passed"),
        "the flow in the container failed ({}):\n{}\n{}\n{}",
        r.code,
        r.stdout,
        r.stderr,
        c.diagnostics()
    );
}

/// The harness itself: systemd in the container starts a Type=notify unit once it notifies
/// READY=1, and nothing of the container is left after the drop.
#[test]
fn container_runs_a_notify_unit() {
    if role().is_some() {
        return;
    }
    let Some(c) = SystemdContainer::start(&[], &[]) else {
        return;
    };
    c.ok(&[
        "sh",
        "-c",
        "printf '[Service]\\nType=notify\\nNotifyAccess=all\\n\
         ExecStart=/bin/sh -c \"sleep 1; systemd-notify --ready; exec sleep 1000\"\\n' \
         > /etc/systemd/system/notify-test.service",
    ]);
    c.ok(&["systemctl", "daemon-reload"]);
    c.ok(&["systemctl", "start", "notify-test.service"]);
    assert_eq!(c.show("notify-test.service", "ActiveState"), "active");
    assert_eq!(c.show("notify-test.service", "SubState"), "running");
    let storage = c.storage().to_path_buf();
    drop(c);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(storage.to_str().unwrap()),
        "podman left mounts under {}",
        storage.display()
    );
    assert!(!storage.exists(), "{} is left", storage.display());
}
