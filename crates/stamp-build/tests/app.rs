//! The init's behaviour at the edges, end to end: an application image (busybox and a script, no
//! init system) gets the Debian cloud kernel and stamp's init with `app::install`, goes through
//! the build pipeline (UKI, FAT ESP, ext4 root, qcow2) and boots in qemu (TCG, OVMF) with user
//! networking. A missing entrypoint reports 127; orphans are reaped and SIGTERM reaches the app;
//! a NIC driver the initramfs did not load is loaded by the init. Qemu must end by itself (the
//! init powered off). The ordinary case (entrypoint, ENV, WorkingDir, User, DHCP, exit status)
//! is the CLI's `application_image_boots_its_entrypoint_with_a_separate_kernel`.
//!
//! Needs the Debian root filesystem tar (`STAMP_DEBIAN_TAR`, or `scripts/debian-image.sh
//! --tar`'s cache), busybox-static, qemu-system-x86 and ovmf; skipped without them.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use stamp_build::app::{self, AppConfig};
use stamp_build::boot::Arch;
use stamp_build::pipeline::{self, BuildOptions, Output};
use stamp_build::recipe::Recipe;
use stamp_fs::{Content, Entry, Kind, Timestamp, Tree};

/// A guard against a hung guest, not a performance assertion: TCG boots this in about a
/// minute on an idle machine.
const QEMU_GUARD: Duration = Duration::from_secs(900);

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

fn debian_tar() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STAMP_DEBIAN_TAR") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let p = cache.join("stamp-dev/debian-rootfs.tar");
    p.is_file().then_some(p)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn t() -> Timestamp {
    Timestamp::from_secs(1_700_000_000)
}

fn bytes_entry(data: &str, mode: u32) -> Entry {
    Entry::new(
        Kind::File(Content::Bytes(Bytes::from(data.to_string()))),
        mode,
        t(),
    )
}

fn host_entry(path: &Path, mode: u32) -> Entry {
    let len = std::fs::metadata(path).unwrap().len();
    Entry::new(
        Kind::File(Content::File {
            path: Arc::new(path.to_path_buf()),
            offset: 0,
            len,
        }),
        mode,
        t(),
    )
}

const SCRIPT: &str = r#"#!/bin/sh
echo "STAMP-APP-MARKER uid=$(busybox id -u) gid=$(busybox id -g) pwd=$(pwd) foo=$FOO home=$HOME arg=$1"
echo "--- /proc/net/route"
busybox cat /proc/net/route
echo "--- ip addr"
busybox ip -4 addr show
echo "--- resolv.conf"
busybox cat /etc/resolv.conf
echo "STAMP-APP-DONE"
exit 3
"#;

/// busybox, a script, passwd/group with user `app`; no init system.
fn app_tree() -> Tree {
    let mut app = Tree::new(Entry::new(Kind::Dir, 0o755, t()));
    app.insert(
        b"/bin/busybox",
        host_entry(Path::new("/bin/busybox"), 0o755),
    )
    .unwrap();
    app.insert(
        b"/bin/sh",
        Entry::new(Kind::Symlink(b"busybox".to_vec()), 0o777, t()),
    )
    .unwrap();
    app.insert(
        b"/etc/passwd",
        bytes_entry(
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            0o644,
        ),
    )
    .unwrap();
    app.insert(
        b"/etc/group",
        bytes_entry("root:x:0:\napp:x:1000:\n", 0o644),
    )
    .unwrap();
    let mut home = Entry::new(Kind::Dir, 0o755, t());
    (home.uid, home.gid) = (1000, 1000);
    app.insert(b"/home/app", home).unwrap();
    app.insert(b"/app/run.sh", bytes_entry(SCRIPT, 0o755))
        .unwrap();
    assert!(!app::has_init(&app));
    app
}

/// Installs the Debian kernel and the init into `app_tree`, builds the disk and boots it.
/// Returns the serial console's text, or None when a tool or the Debian tar is missing
/// (the test is then skipped). Panics if the guest does not power off.
fn boot(mut app_tree: Tree, config: &AppConfig, extra_cmdline: &str) -> Option<String> {
    let Some(tar) = debian_tar() else {
        eprintln!(
            "skipped: no Debian rootfs tar (STAMP_DEBIAN_TAR or scripts/debian-image.sh --tar)"
        );
        return None;
    };
    for tool in ["qemu-system-x86_64"] {
        if !have(tool) {
            eprintln!("skipped: {tool} is not installed");
            return None;
        }
    }
    if !Path::new(OVMF_CODE).is_file() || !Path::new("/bin/busybox").is_file() {
        eprintln!("skipped: ovmf or busybox-static is not installed");
        return None;
    }
    assert!(
        !app::INIT.is_empty(),
        "stamp-build was built without its init"
    );

    let dir = tempfile::tempdir().unwrap();
    let kernel = stamp_fs::source::load(tar.to_str().unwrap(), &Default::default()).unwrap();
    let args = app::install(&mut app_tree, &kernel.tree, config).unwrap();
    assert!(args.iter().any(|a| a == "init=/.stamp/init"), "{args:?}");

    // The disk exactly as `stamp build --kernel` makes it: the pipeline's UKI, ESP and root.
    let mut cmdline = args;
    cmdline.extend(extra_cmdline.split_whitespace().map(String::from));
    let opts = BuildOptions {
        recipe: Recipe::default(),
        cmdline,
        boot_method: None,
        arch: Arch::X86_64,
        esp_size: None,
        source_date_epoch: Some(1_700_000_000),
        seed: [7; 32],
    };
    let qcow2 = dir.path().join("disk.qcow2");
    let outputs = [Output::new(qcow2.clone(), stamp_disk::Format::Qcow2)];
    let report = pipeline::build(app_tree, &opts, &outputs, &stamp_disk::NoProgress, None).unwrap();
    assert_eq!(report.boot_method, "uki");

    let vars = dir.path().join("vars.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let serial = dir.path().join("serial.log");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "1024", "-nographic", "-no-reboot"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", qcow2.display()))
        .args(["-netdev", "user,id=n", "-device", "virtio-net-pci,netdev=n"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&serial).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = qemu.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > QEMU_GUARD {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut err = String::new();
    if let Some(mut e) = qemu.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let log = String::from_utf8_lossy(&std::fs::read(&serial).unwrap()).into_owned();
    eprintln!("{log}");
    let tail = tail(&log);
    assert!(
        status.is_some(),
        "the guest did not power off; serial tail:\n{tail}\nqemu: {err}"
    );
    Some(log)
}

fn tail(log: &str) -> String {
    let chars: Vec<char> = log.chars().collect();
    chars[chars.len().saturating_sub(6000)..].iter().collect()
}

#[test]
fn app_whose_entrypoint_is_missing_reports_127_and_powers_off() {
    let config = AppConfig {
        argv: vec!["not-there".into()],
        env: vec![],
        workdir: String::new(),
        user: String::new(),
    };
    let Some(log) = boot(app_tree(), &config, "") else {
        return;
    };
    let tail = tail(&log);
    assert!(
        log.contains("stamp-init: not-there was not found in PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "no clear error:\n{tail}"
    );
    assert!(
        log.contains("stamp-init: not-there exited with status 127"),
        "{tail}"
    );
    assert!(!log.contains("STAMP-APP-MARKER"), "{tail}");
}

const SIGNAL_SCRIPT: &str = r#"#!/bin/sh
trap 'echo STAMP-GOT-TERM; exit 7' TERM
( busybox sleep 0.1 & )
busybox sleep 2
echo "ZOMBIES:$(busybox grep -l ') Z ' /proc/[0-9]*/stat)END"
busybox kill -TERM 1
while true; do busybox sleep 0.1; done
"#;

#[test]
fn init_reaps_orphans_and_forwards_sigterm_to_the_app() {
    let mut tree = app_tree();
    tree.insert(b"/app/signal.sh", bytes_entry(SIGNAL_SCRIPT, 0o755))
        .unwrap();
    let config = AppConfig {
        argv: vec!["/app/signal.sh".into()],
        ..AppConfig::default()
    };
    let Some(log) = boot(tree, &config, "") else {
        return;
    };
    let tail = tail(&log);
    assert!(
        log.contains("ZOMBIES:END"),
        "an orphan was not reaped:\n{tail}"
    );
    assert!(
        log.contains("STAMP-GOT-TERM"),
        "SIGTERM to PID 1 did not reach the app:\n{tail}"
    );
    assert!(
        log.contains("stamp-init: /app/signal.sh exited with status 7"),
        "{tail}"
    );
}

/// With the NIC driver kept out of the initramfs's coldplug (`modprobe.blacklist`, which only
/// udev's modprobe reads), the init loads it itself from the device's modalias.
#[test]
fn init_loads_the_nic_driver_when_the_initramfs_did_not() {
    let config = AppConfig {
        argv: vec!["/app/run.sh".into()],
        ..AppConfig::default()
    };
    let Some(log) = boot(app_tree(), &config, "modprobe.blacklist=virtio_net") else {
        return;
    };
    let tail = tail(&log);
    let loaded = log
        .lines()
        .find(|l| l.contains("stamp-init: loaded modules for the devices:"))
        .unwrap_or_else(|| panic!("the init loaded no module:\n{tail}"));
    assert!(loaded.contains("virtio_net"), "{loaded}");
    assert!(
        log.contains("inet 10.0.2.15/24"),
        "no DHCP after loading the driver:\n{tail}"
    );
    assert!(
        log.contains("stamp-init: /app/run.sh exited with status 3"),
        "{tail}"
    );
}
