//! `stamp run/ps/logs/pause/unpause/stop/rm` with real QEMU (TCG here): a stamp-built Debian
//! disk boots to its login prompt and serves a port through a forward; a killed QEMU is
//! reported as failed, never as running; bad input is refused with nothing half-created.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// A private machines and cache directory for one test (short: sockets live under it).
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("m")
            .tempdir_in("/tmp")
            .unwrap();
        // podman on these hosts: runc, and no rlimits it may not set (TESTING.md).
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .unwrap();
        Env { dir }
    }

    fn stamp(&self, args: &[&str]) -> Run {
        self.stamp_with(args, &[])
    }

    fn stamp_with(&self, args: &[&str], vars: &[(&str, &std::ffi::OsStr)]) -> Run {
        Command::new(env!("CARGO_BIN_EXE_stamp"))
            .args(args)
            .envs(vars.iter().copied())
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env("STAMP_PODMAN_RUNTIME", "runc")
            .env_remove("NOTIFY_SOCKET")
            .output()
            .expect("run stamp")
            .into()
    }

    fn ok(&self, args: &[&str]) -> String {
        let r = self.stamp(args);
        assert_eq!(r.code, 0, "stamp {args:?}: {}{}", r.stdout, r.stderr);
        r.stdout
    }

    /// `ps -a --json`, by name.
    fn ps(&self) -> Vec<Value> {
        serde_json::from_str(&self.ok(&["ps", "-a", "--json"])).unwrap()
    }

    fn machine(&self, name: &str) -> Value {
        self.ps()
            .into_iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no machine {name} in ps -a"))
    }

    fn machines_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("state/stamp/machines")
    }

    /// Stops and removes everything left (a failed test must not leave QEMUs running).
    fn clean(&self) {
        for m in self.ps() {
            let _ = self.stamp(&["rm", "-f", m["name"].as_str().unwrap()]);
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.clean();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `f` gives `Some`, polling; panics with `what` after `limit`.
fn wait<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn debian_machine_boots_serves_a_port_pauses_stops_gracefully_and_is_removed() {
    let Some(debian) = crate::build::debian() else {
        eprintln!("skipped: no Debian rootfs tar; run scripts/debian-image.sh --tar");
        return;
    };
    if !crate::qemu::available() {
        eprintln!("skipped: qemu-system-x86_64 or OVMF missing");
        crate::build::done_with_debian(debian);
        return;
    }
    let disk = debian.out.join("disk.qcow2");
    let digest = sha256(&disk);
    let env = Env::new();
    let port = free_port();
    let forward = format!("127.0.0.1:{port}:7777");
    let started = Instant::now();
    let out = env.ok(&[
        "run",
        "-d",
        "--name",
        "deb",
        "--memory",
        "1G",
        "-p",
        &forward,
        s(&disk),
    ]);
    assert_eq!(out.trim(), "deb");
    let m = env.machine("deb");
    assert_eq!(m["state"], "running", "{m}");
    assert_eq!(m["platform"], "qemu");
    let pid = m["pid"].as_u64().expect("a pid") as u32;
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(m["ports"][0], format!("{forward}/tcp"));

    // The console reaches the login prompt.
    let logs = wait(
        Duration::from_secs(400),
        "the login prompt in `stamp logs`",
        || {
            let l = env.ok(&["logs", "deb"]);
            l.contains("login:").then_some(l)
        },
    );
    eprintln!("login prompt after {:?}", started.elapsed());
    assert!(logs.contains("STAMP-MARKER"), "the image's own service ran");

    // The forward reaches the guest's socket-activated service.
    let greeting = wait(
        Duration::from_secs(60),
        "the guest's service on the forwarded port",
        || {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            let mut text = String::new();
            let _ = c.read_to_string(&mut text);
            text.contains("STAMP-HELLO-FROM-GUEST").then_some(text)
        },
    );
    assert!(greeting.contains("STAMP-HELLO"));

    env.ok(&["pause", "deb"]);
    assert_eq!(env.machine("deb")["state"], "paused");
    // A paused guest does not answer: the connection is accepted by QEMU's slirp but no
    // greeting comes.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        !matches!(c.read(&mut buf), Ok(n) if n > 0),
        "a paused guest answered"
    );
    env.ok(&["unpause", "deb"]);
    assert_eq!(env.machine("deb")["state"], "running");

    // Graceful stop: the guest powers itself off on the ACPI power button.
    env.ok(&["stop", "-t", "180", "deb"]);
    let m = env.machine("deb");
    assert_eq!(m["state"], "stopped", "{m}");
    assert_eq!(m["exit_code"], 0, "{m}");
    assert_eq!(m["pid"], Value::Null);
    let logs = env.ok(&["logs", "deb"]);
    // The guest shut down by itself (its kernel's last words), not killed: this image has no
    // logind for the power button, so Ctrl-Alt-Del (a reboot, ended by QEMU) did it.
    assert!(
        logs.contains("reboot: Power down") || logs.contains("reboot: Restarting system"),
        "the guest did not shut itself down: {}",
        &logs[logs.len().saturating_sub(2000)..]
    );
    // Only live machines without -a.
    let live: Vec<Value> = serde_json::from_str(&env.ok(&["ps", "--json"])).unwrap();
    assert!(live.is_empty(), "{live:?}");

    env.ok(&["rm", "deb"]);
    assert!(env.ps().is_empty());
    assert!(!env.machines_dir().join("deb").exists());
    assert_eq!(sha256(&disk), digest, "the image itself was written to");
    crate::build::done_with_debian(debian);
}

#[test]
fn a_killed_qemu_or_monitor_is_reported_never_running() {
    if !crate::qemu::available() {
        eprintln!("skipped: qemu-system-x86_64 or OVMF missing");
        return;
    }
    let env = Env::new();
    let disk = env.dir.path().join("blank.qcow2");
    env.ok(&["create", "-f", "qcow2", s(&disk), "64M"]);
    env.ok(&["run", "-d", "--name", "k", "--memory", "256M", s(&disk)]);
    let pid = env.machine("k")["pid"].as_u64().unwrap().to_string();
    Command::new("kill").args(["-9", &pid]).status().unwrap();
    let m = wait(Duration::from_secs(10), "the kill to be seen", || {
        let m = env.machine("k");
        (m["state"] != "running").then_some(m)
    });
    assert_eq!(m["state"], "failed", "{m}");
    assert!(
        m["reason"].as_str().unwrap().contains("killed by signal 9"),
        "{m}"
    );
    assert_eq!(m["pid"], Value::Null);

    // Only the monitor killed: QEMU runs on, `ps` says so, and `stop` still ends it (QMP).
    env.ok(&["start", "k"]);
    let status = |env: &Env| -> Value {
        serde_json::from_slice(&std::fs::read(env.machines_dir().join("k/status.json")).unwrap())
            .unwrap()
    };
    let s1 = status(&env);
    let monitor = s1["monitor"]["pid"].as_u64().unwrap().to_string();
    let qemu = s1["vmm"]["pid"].as_u64().unwrap();
    Command::new("kill")
        .args(["-9", &monitor])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let m = env.machine("k");
    assert_eq!(m["state"], "running", "{m}");
    assert_eq!(m["pid"], qemu);
    env.ok(&["stop", "-t", "1", "k"]);
    assert_eq!(env.machine("k")["state"], "stopped");
    let stat = std::fs::read_to_string(format!("/proc/{qemu}/stat")).unwrap_or_default();
    let zombie_or_gone = stat.is_empty()
        || stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'));
    assert!(zombie_or_gone, "qemu {qemu} survived stop: {stat}");

    // Monitor and QEMU both killed (as a host crash would): the dead pids are noticed.
    env.ok(&["start", "k"]);
    let status: Value =
        serde_json::from_slice(&std::fs::read(env.machines_dir().join("k/status.json")).unwrap())
            .unwrap();
    for p in ["monitor", "vmm"] {
        let pid = status[p]["pid"].as_u64().unwrap().to_string();
        Command::new("kill").args(["-9", &pid]).status().unwrap();
    }
    let m = wait(Duration::from_secs(10), "the deaths to be seen", || {
        let m = env.machine("k");
        (m["state"] != "running").then_some(m)
    });
    assert_eq!(m["state"], "failed", "{m}");
    env.ok(&["rm", "k"]);
}

#[test]
fn bad_input_is_refused_and_nothing_is_half_created() {
    let env = Env::new();
    let disk = env.dir.path().join("blank.qcow2");
    env.ok(&["create", "-f", "qcow2", s(&disk), "64M"]);
    let cases: [(&[&str], &str); 6] = [
        (
            &["run", "-d", "nonexistent.qcow2"],
            "unknown image nonexistent.qcow2",
        ),
        (
            &["run", "-d", "-p", "80", s(&disk)],
            "invalid port spec '80'",
        ),
        (
            &["run", "-d", "-p", "8080:99999", s(&disk)],
            "invalid port spec",
        ),
        (
            &["run", "-d", "--memory", "64T", s(&disk)],
            "more than this host has",
        ),
        (&["run", "-d", "--cpus", "0", s(&disk)], "--cpus 0"),
        (
            &["run", "-d", "--platform", "vmware", s(&disk)],
            "unknown platform 'vmware'",
        ),
    ];
    for (args, want) in cases {
        let r = env.stamp(args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        assert!(env.ps().is_empty(), "{args:?} left a machine");
    }
    let r = env.stamp(&["run", "-d", "--name", "bad/name", s(&disk)]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("invalid machine name"), "{}", r.stderr);

    // A name in use: the second run fails and the first machine is untouched.
    if crate::qemu::available() {
        env.ok(&["run", "-d", "--name", "dup", "--memory", "256M", s(&disk)]);
        let r = env.stamp(&["run", "-d", "--name", "dup", s(&disk)]);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("already in use"), "{}", r.stderr);
        assert_eq!(env.machine("dup")["state"], "running");
        // A running machine is removed only with -f.
        let r = env.stamp(&["rm", "dup"]);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("rm -f dup"), "{}", r.stderr);
        env.ok(&["rm", "-f", "dup"]);
        assert!(env.ps().is_empty());
    }
    for verb in ["stop", "start", "pause", "logs", "rm"] {
        let r = env.stamp(&[verb, "ghost"]);
        assert_eq!(r.code, 1, "{verb}");
        assert!(
            r.stderr.contains("no machine named ghost"),
            "{verb}: {}",
            r.stderr
        );
    }
}

#[test]
fn a_container_runs_with_podman_with_its_exit_code_and_logs() {
    if !crate::busybox::podman_ready() {
        return;
    }
    let env = Env::new();
    let image = crate::busybox::IMAGE;
    // In the foreground: the container's output on stdout, its exit status as stamp's.
    let r = env.stamp(&[
        "run",
        "--platform",
        "podman",
        "--name",
        "c1",
        "-e",
        "WHO=stamp",
        image,
        "sh",
        "-c",
        "echo out-$WHO; echo err-line >&2; exit 3",
    ]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("out-stamp"), "{}", r.stdout);
    let m = env.machine("c1");
    assert_eq!(m["state"], "stopped", "{m}");
    assert_eq!(m["exit_code"], 3);
    assert_eq!(m["platform"], "podman");
    let logs = env.ok(&["logs", "c1"]);
    assert!(
        logs.contains("out-stamp") && logs.contains("err-line"),
        "{logs}"
    );

    // In the background: running, paused, running, stopped gracefully, removed.
    env.ok(&[
        "run",
        "-d",
        "--platform",
        "podman",
        "--name",
        "c2",
        image,
        "sleep",
        "1000",
    ]);
    assert_eq!(env.machine("c2")["state"], "running");
    env.ok(&["pause", "c2"]);
    assert_eq!(env.machine("c2")["state"], "paused");
    env.ok(&["unpause", "c2"]);
    env.ok(&["stop", "-t", "2", "c2"]);
    let m = env.machine("c2");
    assert_eq!(m["state"], "stopped", "{m}");
    env.ok(&["rm", "c1", "c2"]);
    assert!(env.ps().is_empty());
    let left = Command::new("podman")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains("stamp-c1") && !left.contains("stamp-c2"),
        "{left}"
    );
}

#[test]
fn a_container_image_becomes_firecrackers_kernel_and_ext4_root() {
    // No firecracker and no usable KVM here: a fake firecracker (the API as Firecracker
    // serves it) checks what stamp makes of a container image and sends it.
    let env = Env::new();
    let Some(_) = crate::fake_firecracker::fake_firecracker(env.dir.path()) else {
        eprintln!("skipped: no python3 for the fake firecracker");
        return;
    };
    let root = env.dir.path().join("rootfs");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    // Firecracker boots an ELF vmlinux: any ELF file stands in for it.
    std::fs::copy("/bin/true", root.join("boot/vmlinuz-6.1.0-test")).unwrap();
    std::fs::write(root.join("boot/initrd.img-6.1.0-test"), b"initrd bytes").unwrap();
    std::fs::write(root.join("etc/hello"), b"hello from the image\n").unwrap();
    let tar = env.dir.path().join("rootfs.tar");
    tar_dir(&root, &tar);
    env.ok(&["import", "--name", "localhost/fc-test:1", s(&tar)]);
    let path = format!(
        "{}:{}",
        env.dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let path = std::ffi::OsString::from(path);
    let vars = [("PATH", path.as_os_str())];
    let r = env.stamp_with(
        &[
            "run",
            "-d",
            "--platform",
            "firecracker",
            "--name",
            "f1",
            "--memory",
            "256M",
            "localhost/fc-test:1",
        ],
        &vars,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(env.machine("f1")["state"], "running");
    let logs = env.ok(&["logs", "f1"]);
    assert!(logs.contains("fake login:"), "{logs}");

    let dir = env.machines_dir().join("f1");
    let requests: Vec<Value> = std::fs::read_to_string(dir.join("requests.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let body = |path: &str| {
        requests
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no {path} in {requests:?}"))["body"]
            .clone()
    };
    let boot = body("/boot-source");
    let kernel = boot["kernel_image_path"].as_str().unwrap();
    assert_eq!(
        std::fs::read(kernel).unwrap(),
        std::fs::read("/bin/true").unwrap()
    );
    let initrd = boot["initrd_path"].as_str().unwrap();
    assert_eq!(std::fs::read(initrd).unwrap(), b"initrd bytes");
    assert!(
        boot["boot_args"]
            .as_str()
            .unwrap()
            .contains("root=/dev/vda"),
        "{boot}"
    );
    let drive = body("/drives/rootfs");
    assert_eq!(drive["is_root_device"], true);
    let disk = drive["path_on_host"].as_str().unwrap().to_string();
    // The root is a clean ext4 with the image's files.
    let fsck = Command::new("e2fsck")
        .args(["-fn", &disk])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let cat = Command::new("debugfs")
        .args(["-R", "cat /etc/hello", &disk])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "hello from the image\n"
    );

    env.stamp_with(&["stop", "f1"], &vars);
    let m = env.machine("f1");
    assert_eq!(m["state"], "stopped", "{m}");
    env.ok(&["rm", "f1"]);
}

#[test]
fn a_container_image_runs_under_qemu_as_a_disk_built_on_the_fly() {
    let Some(tar) = debian_tar() else {
        eprintln!("skipped: no Debian rootfs tar; run scripts/debian-image.sh --tar");
        return;
    };
    if !crate::qemu::available() {
        eprintln!("skipped: qemu-system-x86_64 or OVMF missing");
        return;
    }
    let env = Env::new();
    env.ok(&["import", "--name", "localhost/debian:12", s(&tar)]);
    // A container image defaults to podman; --platform qemu builds a disk (cached) and boots it.
    env.ok(&[
        "run",
        "-d",
        "--platform",
        "qemu",
        "--name",
        "d1",
        "localhost/debian:12",
    ]);
    let m = env.machine("d1");
    assert_eq!(m["state"], "running", "{m}");
    assert_eq!(m["platform"], "qemu");
    wait(Duration::from_secs(400), "the login prompt", || {
        env.ok(&["logs", "d1"]).contains("login:").then_some(())
    });
    env.ok(&["rm", "-f", "d1"]);
    let cached: Vec<_> = std::fs::read_dir(env.dir.path().join("cache/stamp/machines"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "qcow2"))
        .collect();
    assert_eq!(cached.len(), 1, "one cached disk for the image");
}

#[test]
fn store_images_run_a_disk_under_qemu_and_a_container_under_podman() {
    let env = Env::new();
    // A disk image in the store (a disk artifact) runs under qemu from its reassembled file.
    if crate::qemu::available() {
        let disk = env.dir.path().join("blank.qcow2");
        env.ok(&["create", "-f", "qcow2", s(&disk), "64M"]);
        env.ok(&["import", "--name", "localhost/blank-disk:1", s(&disk)]);
        std::fs::remove_file(&disk).unwrap();
        env.ok(&[
            "run",
            "-d",
            "--name",
            "sd",
            "--memory",
            "256M",
            "localhost/blank-disk:1",
        ]);
        let m = env.machine("sd");
        assert_eq!(
            (m["state"].as_str(), m["platform"].as_str()),
            (Some("running"), Some("qemu")),
            "{m}"
        );
        env.ok(&["rm", "-f", "sd"]);
    }
    // A container image in the store runs under podman (exported once as an OCI archive).
    if crate::busybox::podman_ready() {
        let root = env.dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
        let tar = env.dir.path().join("rootfs.tar");
        tar_dir(&root, &tar);
        env.ok(&["import", "--name", "localhost/store-busybox:1", s(&tar)]);
        let r = env.stamp(&[
            "run",
            "--name",
            "sc",
            "localhost/store-busybox:1",
            "sh",
            "-c",
            "echo from-the-store; exit 4",
        ]);
        assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("from-the-store"), "{}", r.stdout);
        assert_eq!(env.machine("sc")["platform"], "podman");
        env.ok(&["rm", "sc"]);
    }
}
