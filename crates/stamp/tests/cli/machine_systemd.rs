//! `--systemd` end to end, with a real systemd as PID 1: systemd runs in a podman container
//! whose root is the host's own root through an overlay (`--rootfs /:O`), so systemd,
//! qemu-system-x86, OVMF and qemu-img are the host's and nothing is downloaded; the stamp
//! binary is bind-mounted at /usr/local/bin/stamp. The machine is a blank disk: it need not
//! boot an OS, QMP reporting "running" is what makes it ready (OVMF then waits in its shell).
//!
//! Run alone with `cargo test -p stamp --test cli machine_systemd`. Skipped (with a message)
//! without podman, runc or systemd; fails when `STAMP_REQUIRE_SYSTEMD=1` (CI).
//!
//! [`SystemdContainer`] is the reusable part: it boots the container (about a second: the
//! container boots to basic.target so that the host's own services are not started in it),
//! runs commands in it, and removes it when dropped, also when a test fails.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Run, tmp};

/// Where the stamp binary is inside the container (the units' ExecStart=).
const STAMP: &str = "/usr/local/bin/stamp";

/// The state directory of the machines inside the container (on its /tmp, a tmpfs), so that
/// the host's own machines under /root/.local/state never show up.
const STATE: &str = "/tmp/stamp-state";

/// A running container with systemd as PID 1, removed when dropped.
pub struct SystemdContainer {
    name: String,
    dir: tempfile::TempDir,
}

impl SystemdContainer {
    /// Boots the container with `binds` (host path, container path) mounted read-only, and
    /// waits until `systemctl is-system-running` says running or degraded. `None` (after
    /// saying why) when podman, runc or systemd is missing.
    pub fn start(binds: &[(&Path, &str)]) -> Option<SystemdContainer> {
        let required = std::env::var_os("STAMP_REQUIRE_SYSTEMD").is_some_and(|v| v == "1");
        for tool in ["podman", "runc"] {
            let found = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                assert!(
                    !required,
                    "{tool} is not installed (STAMP_REQUIRE_SYSTEMD=1)"
                );
                eprintln!("skipped: {tool} is not installed (scripts/install-test-deps.sh)");
                return None;
            }
        }
        if !Path::new("/lib/systemd/systemd").exists() {
            assert!(
                !required,
                "systemd is not installed (STAMP_REQUIRE_SYSTEMD=1)"
            );
            eprintln!("skipped: /lib/systemd/systemd is not installed");
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "stamp-systemd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tmp();
        // podman on these machines: runc (crun refuses hybrid cgroups), no default rlimits.
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .unwrap();
        let c = SystemdContainer { name, dir };
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &c.name,
            "--systemd=always",
            // The host's /tmp and /run hold sockets that podman's copy-up cannot copy.
            "--tmpfs",
            "/tmp:rw,notmpcopyup",
            "--tmpfs",
            "/run:rw,notmpcopyup",
            "--tmpfs",
            "/run/lock:rw,notmpcopyup",
        ]
        .map(String::from)
        .to_vec();
        for (host, inside) in binds {
            args.push("-v".into());
            args.push(format!("{}:{inside}:ro", host.display()));
        }
        // --rootfs takes the next argument as the root; what follows is the command.
        args.extend(
            [
                "--rootfs",
                "/:O",
                "/lib/systemd/systemd",
                "systemd.unit=basic.target",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = c.podman(&args);
        assert_eq!(r.code, 0, "podman {args:?}: {}\n{}", r.stderr, r.stdout);
        let r = c.exec(&["timeout", "120", "systemctl", "is-system-running", "--wait"]);
        let state = r.stdout.trim();
        assert!(
            state == "running" || state == "degraded",
            "systemd in the container is {state:?}: {}",
            r.stderr
        );
        Some(c)
    }

    /// Runs `podman ARGS` with this container's configuration.
    fn podman(&self, args: &[&str]) -> Run {
        let d = self.dir.path();
        Command::new("podman")
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--runtime", "runc"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    }

    /// Runs `cmd` in the container (as root, with the machines' state directory set).
    pub fn exec(&self, cmd: &[&str]) -> Run {
        let env = format!("XDG_STATE_HOME={STATE}");
        let mut args = vec!["exec", "-e", env.as_str(), self.name.as_str()];
        args.extend_from_slice(cmd);
        self.podman(&args)
    }

    /// Runs `cmd` in the container and returns its stdout; panics (with the unit's journal)
    /// unless it succeeds.
    pub fn ok(&self, cmd: &[&str]) -> String {
        let r = self.exec(cmd);
        assert_eq!(
            r.code,
            0,
            "{cmd:?} in the container: {}\n{}\n{}",
            r.stderr,
            r.stdout,
            self.diagnostics()
        );
        r.stdout
    }

    /// Runs a shell script in the container.
    pub fn sh(&self, script: &str) -> Run {
        self.exec(&["sh", "-c", script])
    }

    /// `systemctl show -p PROP UNIT`'s value.
    pub fn show(&self, unit: &str, prop: &str) -> String {
        let out = self.ok(&["systemctl", "show", "-p", prop, "--value", unit]);
        out.trim().to_string()
    }

    /// What went on, for failure messages: every stamp unit's state and journal.
    pub fn diagnostics(&self) -> String {
        let r = self.sh(&format!(
            "systemctl --no-pager status 'stamp-*' 2>&1 | head -40; \
             journalctl --no-pager -o short-precise -u 'stamp-*' 2>&1 | tail -60; \
             for f in {STATE}/stamp/machines/*/*.log; do echo \"== $f\"; tail -c 2000 \"$f\"; done"
        ));
        format!("--- in the container:\n{}{}", r.stdout, r.stderr)
    }
}

impl Drop for SystemdContainer {
    fn drop(&mut self) {
        let r = self.podman(&["rm", "-f", "-t", "0", &self.name]);
        if r.code != 0 {
            eprintln!("cannot remove container {}: {}", self.name, r.stderr);
        }
        // Unmounts and removes what podman made, so the temporary directory can go.
        let _ = self.podman(&["system", "reset", "-f"]);
    }
}

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

/// The harness itself, without stamp: systemd in the container starts a Type=notify unit
/// once it notifies READY=1, and the container is gone after the drop.
#[test]
fn machine_systemd_container_runs_a_notify_unit() {
    let Some(c) = SystemdContainer::start(&[]) else {
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
    let storage = c.dir.path().to_path_buf();
    drop(c);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(storage.to_str().unwrap()),
        "podman left mounts under {}",
        storage.display()
    );
    assert!(!storage.exists(), "{} is left", storage.display());
}

#[test]
fn machine_systemd_run_restart_recover_stop_rm() {
    let bin = Path::new(env!("CARGO_BIN_EXE_stamp"));
    let Some(c) = SystemdContainer::start(&[(bin, STAMP)]) else {
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
