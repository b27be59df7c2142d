//! End to end: an application image (busybox and a script, no init system) gets the Debian
//! cloud kernel and stamp's init with `app::install`, is laid out as a GPT disk (FAT ESP with a
//! UKI, ext4 root) in qcow2, and boots in qemu (TCG, OVMF) with user networking. The serial
//! console must show the script ran as its User in its WorkingDir with its ENV, that DHCP
//! configured the interface (10.0.2.15, default route via 10.0.2.2, resolv.conf), and the init's
//! report of exit status 3; qemu must end by itself (the init powered off).
//!
//! Needs the Debian root filesystem tar (`STAMP_DEBIAN_TAR`, or `scripts/debian-image.sh
//! --tar`'s cache), busybox-static, objcopy, qemu-system-x86 and ovmf; skipped without them.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use stamp_build::app::{self, AppConfig};
use stamp_fs::ext4::{Ext4Options, ext4};
use stamp_fs::fat::{FatOptions, fat};
use stamp_fs::gpt::{GptOptions, Partition, PartitionType, gpt_disk};
use stamp_fs::{Content, Entry, Kind, Timestamp, Tree};

/// The root partition's unique GUID, for `root=PARTUUID=`.
const ROOT_GUID: [u8; 16] = [
    0x6a, 0x1e, 0x50, 0x0c, 0x3b, 0x7d, 0x4e, 0x21, 0x9a, 0x55, 0x0f, 0x61, 0x7c, 0x2d, 0x88, 0x13,
];
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

fn read_content(tree: &Tree, path: &str) -> Vec<u8> {
    let (_, id) = app::resolve(tree, path.as_bytes()).unwrap_or_else(|| panic!("{path} missing"));
    let Kind::File(c) = &tree.entry(id).kind else {
        panic!("{path} is not a file")
    };
    let mut b = vec![0; c.len() as usize];
    c.read_at(&mut b, 0).unwrap();
    b
}

fn guid_text(g: [u8; 16]) -> String {
    let h: String = g.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A UKI from the stub, kernel, initrd, os-release and command line (objcopy, as systemd's
/// documentation shows), standing in for the pipeline's own UKI writer.
fn uki(dir: &Path, tree: &Tree, cmdline: &str) -> PathBuf {
    let (_, boot) = app::resolve(tree, b"/boot").unwrap();
    let mut vmlinuz = None;
    let mut initrd = None;
    for (name, _) in tree.children(boot) {
        let n = String::from_utf8_lossy(name).into_owned();
        if n.starts_with("vmlinuz-") {
            vmlinuz = Some(format!("/boot/{n}"));
        } else if n.starts_with("initrd.img-") {
            initrd = Some(format!("/boot/{n}"));
        }
    }
    let parts = [
        (".osrel", "/usr/lib/os-release".to_string(), "0x20000"),
        (".linux", vmlinuz.expect("kernel copied"), "0x2000000"),
        (".initrd", initrd.expect("initrd copied"), "0x3000000"),
    ];
    std::fs::write(dir.join("cmdline"), cmdline).unwrap();
    let mut cmd = Command::new("objcopy");
    cmd.arg("--add-section")
        .arg(format!(".cmdline={}", dir.join("cmdline").display()))
        .args(["--change-section-vma", ".cmdline=0x30000"]);
    for (section, path, vma) in parts {
        let host = dir.join(section.trim_start_matches('.'));
        std::fs::write(&host, read_content(tree, &path)).unwrap();
        cmd.arg("--add-section")
            .arg(format!("{section}={}", host.display()))
            .arg("--change-section-vma")
            .arg(format!("{section}={vma}"));
    }
    let stub = dir.join("stub.efi");
    std::fs::write(
        &stub,
        read_content(tree, "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"),
    )
    .unwrap();
    let out = dir.join("uki.efi");
    let st = cmd.arg(&stub).arg(&out).status().unwrap();
    assert!(st.success(), "objcopy failed");
    out
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
    for tool in ["qemu-system-x86_64", "objcopy"] {
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

    let cmdline = format!(
        "root=PARTUUID={} rw console=ttyS0,115200 {} {extra_cmdline}",
        guid_text(ROOT_GUID),
        args.join(" ")
    );
    let uki_path = uki(dir.path(), &app_tree, &cmdline);
    let mut esp = Tree::new(Entry::new(Kind::Dir, 0o755, t()));
    esp.insert(b"/EFI/BOOT/BOOTX64.EFI", host_entry(&uki_path, 0o644))
        .unwrap();

    let esp_img = fat(
        &esp,
        &FatOptions {
            size: Some(64 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    let root_img = ext4(&app_tree, &Ext4Options::default()).unwrap();
    let mut root = Partition::with_image("root", PartitionType::RootX86_64, root_img);
    root.unique_guid = Some(ROOT_GUID);
    let disk = gpt_disk(
        vec![
            Partition::with_image("esp", PartitionType::Esp, esp_img),
            root,
        ],
        &GptOptions::default(),
    )
    .unwrap();
    let qcow2 = dir.path().join("disk.qcow2");
    let w = stamp_disk::create(
        &qcow2,
        stamp_disk::Format::Qcow2,
        disk.size,
        &Default::default(),
    )
    .unwrap();
    disk.write_to(vec![w]).unwrap();

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
fn app_image_boots_runs_its_entrypoint_with_dhcp_and_powers_off_with_its_status() {
    let config = AppConfig {
        argv: vec!["/app/run.sh".into(), "hello".into()],
        env: vec!["FOO=bar".into(), "PATH=/bin".into()],
        workdir: "/app".into(),
        user: "app".into(),
    };
    let Some(log) = boot(app_tree(), &config, "") else {
        return;
    };
    let tail = tail(&log);
    assert!(
        log.contains(
            "STAMP-APP-MARKER uid=1000 gid=1000 pwd=/app foo=bar home=/home/app arg=hello"
        ),
        "the entrypoint did not run as expected; serial tail:\n{tail}"
    );
    assert!(log.contains("STAMP-APP-DONE"), "serial tail:\n{tail}");
    assert!(
        log.contains("inet 10.0.2.15/24"),
        "DHCP did not configure the address:\n{tail}"
    );
    // The default route via 10.0.2.2 (little-endian hex in /proc/net/route).
    assert!(
        log.lines().any(|l| l.contains("\t00000000\t0202000A\t")),
        "no default route via 10.0.2.2:\n{tail}"
    );
    assert!(
        log.contains("nameserver 10.0.2.3"),
        "resolv.conf not written:\n{tail}"
    );
    assert!(
        log.contains("stamp-init: /app/run.sh exited with status 3"),
        "the init did not report the status:\n{tail}"
    );
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
