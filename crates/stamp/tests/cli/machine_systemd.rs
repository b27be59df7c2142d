//! `--systemd` end to end, with a real systemd as PID 1: systemd runs in a podman container
//! whose root is the host's own root through an overlay (`--rootfs /:O`), so systemd,
//! qemu-system-x86, OVMF and qemu-img are the host's and nothing is downloaded; the stamp
//! binary is bind-mounted at /usr/local/bin/stamp. The machine is a blank disk: it need not
//! boot an OS, QMP reporting "running" is what makes it ready (OVMF then waits in its shell).
//!
//! Run alone with `cargo test -p stamp --test cli machine_systemd`. Skipped (with a message)
//! without podman, runc or systemd; fails when `STAMP_REQUIRE_SYSTEMD=1` (CI).
//!
//! The container is stamp-machine's test support (`tests/support/container.rs`), which also
//! tests the systemd wrapper with a stand-in monitor.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::container_support::SystemdContainer;

/// Where the stamp binary is inside the container (the units' ExecStart=).
const STAMP: &str = "/usr/local/bin/stamp";

/// The state directory of the machines inside the container (on its /tmp, a tmpfs), so that
/// the host's own machines under /root/.local/state never show up.
const STATE: &str = "/tmp/stamp-state";

/// Polls `f` every 200 ms until it returns `Some` or `secs` pass.
fn wait_for<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `stamp inspect --json NAME` in the container.
fn inspect(c: &SystemdContainer, name: &str) -> serde_json::Value {
    let out = c.ok(&[STAMP, "inspect", "--json", name]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("inspect --json: {e}: {out}"))
}

/// The machine's VMM pid and its parent's, read in the container's /proc.
fn vmm(c: &SystemdContainer, name: &str) -> (u32, u32) {
    let m = inspect(c, name);
    let pid = m["pid"].as_u64().unwrap_or_else(|| panic!("no pid in {m}")) as u32;
    let status = c.ok(&["cat", &format!("/proc/{pid}/status")]);
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert!(
        field("Name:").starts_with("qemu-system"),
        "pid {pid} is not qemu: {status}"
    );
    (pid, field("PPid:").parse().unwrap())
}

#[test]
fn machine_systemd_run_restart_recover_stop_rm() {
    let bin = Path::new(env!("CARGO_BIN_EXE_stamp"));
    let Some(c) = SystemdContainer::start(&[(bin, STAMP)], &[&format!("XDG_STATE_HOME={STATE}")])
    else {
        return;
    };
    let unit = "stamp-m1.service";
    let unit_path = format!("/etc/systemd/system/{unit}");
    c.ok(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "/tmp/blank.qcow2",
        "64M",
    ]);

    // run --systemd: an active, enabled unit whose main process is the monitor, running qemu.
    let r = c.exec(&[
        STAMP,
        "run",
        "--systemd",
        "--enable",
        "--restart",
        "on-failure",
        "--name",
        "m1",
        "-d",
        "--memory",
        "256M",
        "/tmp/blank.qcow2",
    ]);
    assert_eq!(
        r.code,
        0,
        "stamp run --systemd: {}\n{}\n{}",
        r.stderr,
        r.stdout,
        c.diagnostics()
    );
    assert_eq!(c.show(unit, "ActiveState"), "active", "{}", c.diagnostics());
    assert_eq!(c.show(unit, "SubState"), "running");
    assert_eq!(c.show(unit, "UnitFileState"), "enabled");
    let text = c.ok(&["cat", &unit_path]);
    assert!(
        text.contains(&format!("ExecStart={STAMP} start --foreground m1")),
        "{text}"
    );
    assert!(text.contains("XDG_STATE_HOME=/tmp/stamp-state"), "{text}");
    let main: u32 = c.show(unit, "MainPID").parse().unwrap();
    let cmdline = c.ok(&["cat", &format!("/proc/{main}/cmdline")]);
    assert_eq!(
        cmdline.split('\0').collect::<Vec<_>>()[..4],
        [STAMP, "start", "--foreground", "m1"],
        "the unit's main process is the monitor"
    );
    let (qemu, parent) = vmm(&c, "m1");
    assert_eq!(parent, main, "qemu runs under the unit's monitor");
    let m = inspect(&c, "m1");
    assert_eq!(m["state"], "running", "{m}");

    // The generated unit passes systemd-analyze verify (with systemd's own view of it).
    let r = c.exec(&["systemd-analyze", "verify", &unit_path]);
    assert_eq!(r.code, 0, "systemd-analyze verify: {}", r.stderr);
    assert!(
        !r.stderr.contains("stamp-m1"),
        "systemd-analyze complains: {}",
        r.stderr
    );

    // ps --systemd shows the unit next to the machine.
    let ps: serde_json::Value =
        serde_json::from_str(&c.ok(&[STAMP, "ps", "-a", "--json", "--systemd"])).unwrap();
    let row = ps
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "m1")
        .unwrap_or_else(|| panic!("m1 not in {ps}"));
    assert_eq!(row["state"], "running", "{row}");
    assert_eq!(row["unit"]["active"], "active", "{row}");
    assert_eq!(row["unit"]["enabled"], "enabled", "{row}");

    // systemctl restart: a new monitor and a new qemu.
    c.ok(&["systemctl", "restart", unit]);
    assert_eq!(c.show(unit, "ActiveState"), "active", "{}", c.diagnostics());
    let main2: u32 = c.show(unit, "MainPID").parse().unwrap();
    assert_ne!(main2, main, "restart made a new main process");
    let (qemu2, parent2) = vmm(&c, "m1");
    assert_ne!(qemu2, qemu);
    assert_eq!(parent2, main2);
    assert_eq!(inspect(&c, "m1")["state"], "running");

    // kill -9 of qemu: the machine fails, the monitor exits non-zero, on-failure restarts it.
    c.ok(&["kill", "-9", &qemu2.to_string()]);
    let recovered = wait_for(120, || {
        let restarts: u32 = c.show(unit, "NRestarts").parse().unwrap_or(0);
        let active = c.show(unit, "ActiveState") == "active";
        let m = inspect(&c, "m1");
        let pid = m["pid"].as_u64().map(|p| p as u32);
        (restarts >= 1 && active && m["state"] == "running" && pid.is_some_and(|p| p != qemu2))
            .then_some(())
    });
    assert!(
        recovered.is_some(),
        "the unit did not restart the machine after qemu was killed:\n{}",
        c.diagnostics()
    );
    let main3: u32 = c.show(unit, "MainPID").parse().unwrap();
    assert_ne!(main3, main2);
    let (qemu3, parent3) = vmm(&c, "m1");
    assert_eq!(parent3, main3);

    // stop --systemd: the unit is inactive (not failed), the machine stopped, qemu gone.
    let r = c.exec(&[STAMP, "stop", "--systemd", "m1"]);
    assert_eq!(
        r.code,
        0,
        "stamp stop --systemd: {}\n{}",
        r.stderr,
        c.diagnostics()
    );
    assert_eq!(
        c.show(unit, "ActiveState"),
        "inactive",
        "{}",
        c.diagnostics()
    );
    let m = inspect(&c, "m1");
    assert_eq!(m["state"], "stopped", "{m}");
    assert!(m["pid"].is_null(), "{m}");
    let r = c.exec(&["test", "-e", &format!("/proc/{qemu3}")]);
    assert_ne!(r.code, 0, "qemu {qemu3} still runs after stop");

    // logs of a systemd machine read the unit's journal.
    let r = c.exec(&[STAMP, "logs", "m1"]);
    assert_eq!(r.code, 0, "stamp logs: {}", r.stderr);

    // rm --systemd: no unit file, no enablement link, no unit loaded, no machine directory.
    let r = c.exec(&[STAMP, "rm", "--systemd", "m1"]);
    assert_eq!(r.code, 0, "stamp rm --systemd: {}", r.stderr);
    let gone = |p: &str| c.exec(&["test", "-e", p]).code != 0;
    assert!(gone(&unit_path), "{unit_path} is left");
    assert!(
        gone(&format!(
            "/etc/systemd/system/multi-user.target.wants/{unit}"
        )),
        "the enablement link is left"
    );
    assert!(
        gone(&format!("{STATE}/stamp/machines/m1")),
        "the machine directory is left"
    );
    assert_eq!(c.show(unit, "LoadState"), "not-found");
    let ps = c.ok(&[STAMP, "ps", "-a", "--json"]);
    assert!(!ps.contains("\"m1\""), "{ps}");
}
