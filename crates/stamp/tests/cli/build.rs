//! `stamp build` end to end: the Debian image (systemd-stub UKI), a GRUB variant and an
//! application image boot under QEMU (TCG + OVMF); every output format of one build is checked
//! by the format's own tools; builds are byte-reproducible, identical when run as an
//! unprivileged user, and served from the build cache the second time; bad input fails clean.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::{debian_tar, s, sha256, stamp};
use crate::qemu::{self, BootOpts, assert_booted};

/// The SOURCE_DATE_EPOCH every build here uses.
const SDE: &str = "1700000000";

/// The recipe of the Debian builds: a user with a key and sudo, a hostname, and a unit that
/// prints what the boot test checks on the serial console.
const RECIPE: &str = r#"
[system]
hostname = "stamp-test"

[[users]]
name = "alice"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMbqXWX0bVrPbnUuNVLyVYn0qBq0P0TcUpbtR1hSgLhN alice@test"]
sudo = true

[[files]]
path = "/etc/systemd/system/stamp-marker.service"
mode = "0644"
content = """
[Unit]
Description=Print the stamp test marker
After=local-fs.target

[Service]
Type=oneshot
StandardOutput=tty
TTYPath=/dev/ttyS0
ExecStart=/bin/sh -c 'echo "STAMP-MARKER root=$$(findmnt -no OPTIONS /) cmdline=$$(cat /proc/cmdline) user=$$(id -u alice) key=$$(cut -d" " -f3 /home/alice/.ssh/authorized_keys) host=$$(hostname) END"'

[Install]
WantedBy=multi-user.target
"""

# A service reachable through a port forward (crates/stamp/tests/cli/machine.rs): systemd
# answers connections to port 7777 with a greeting, no extra packages needed.
[[files]]
path = "/etc/systemd/system/stamp-hello.socket"
mode = "0644"
content = """
[Socket]
ListenStream=7777
Accept=yes

[Install]
WantedBy=sockets.target
"""

[[files]]
path = "/etc/systemd/system/stamp-hello@.service"
mode = "0644"
content = """
[Service]
ExecStart=/bin/echo STAMP-HELLO-FROM-GUEST
StandardInput=socket
StandardOutput=socket
"""

# DHCP on the first network interface, so that the port forward reaches the guest.
[[files]]
path = "/etc/systemd/network/10-dhcp.network"
mode = "0644"
content = """
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""

[units]
enable = ["stamp-marker.service", "stamp-hello.socket", "systemd-networkd.service"]
"#;

/// Outputs of one build, by file name; the format follows the extension.
const OUTPUTS: [&str; 7] = [
    "disk.qcow2",
    "disk.vmdk",
    "disk.vhd",
    "disk.raw",
    "disk.vhdx",
    "disk.ova",
    "disk.tar.gz",
];

/// A build of the Debian image shared by the tests below (and machine.rs).
pub(crate) struct Debian {
    dir: PathBuf,
    /// The outputs (`disk.qcow2`, ...).
    pub(crate) out: PathBuf,
    stdout: String,
}

/// A scratch directory under target/ that outlives the test threads (static builds are
/// shared), emptied at the start of each run.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `stamp build` with the common flags; panics with its stderr unless it succeeds.
fn build_ok(args: &[&str]) -> String {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    let r = stamp_env(&all);
    assert_eq!(r.code, 0, "stamp {all:?}: {}{}", r.stdout, r.stderr);
    r.stdout
}

/// Runs stamp with SOURCE_DATE_EPOCH set.
fn stamp_env(args: &[&str]) -> crate::common::Run {
    Command::new(env!("CARGO_BIN_EXE_stamp"))
        .args(args)
        .env("SOURCE_DATE_EPOCH", SDE)
        .output()
        .expect("run stamp")
        .into()
}

/// The output arguments for `OUTPUTS` in `dir`.
fn output_args(dir: &Path) -> Vec<String> {
    OUTPUTS
        .iter()
        .flat_map(|o| ["-o".to_string(), dir.join(o).display().to_string()])
        .collect()
}

/// The tests that share the Debian build; the last to finish removes it (its outputs, stores
/// and caches take gigabytes). A run of only some of them leaves it for the next run's
/// [`scratch`] to remove.
static DEBIAN_USERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(5);

/// Called at the end of each test that uses [`debian`].
pub(crate) fn done_with_debian(d: &Debian) {
    if DEBIAN_USERS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
        let _ = std::fs::remove_dir_all(&d.dir);
    }
}

/// The Debian build (made once): `stamp build rootfs:debian.tar -f recipe -o …` into every format.
pub(crate) fn debian() -> Option<&'static Debian> {
    static BUILT: OnceLock<Option<Debian>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let tar = debian_tar()?;
            let dir = scratch("build-debian");
            // World-readable inputs, so that the unprivileged build can read them too.
            let input = dir.join("debian.tar");
            if std::fs::hard_link(&tar, &input).is_err() {
                std::fs::copy(&tar, &input).unwrap();
            }
            std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::write(dir.join("stamp.toml"), RECIPE).unwrap();
            let out = dir.join("root");
            std::fs::create_dir(&out).unwrap();
            let store = dir.join("store");
            let mut args: Vec<String> = vec![
                "--store".into(),
                s(&store).into(),
                format!("rootfs:{}", s(&input)),
                "-f".into(),
                s(&dir.join("stamp.toml")).into(),
            ];
            args.extend(output_args(&out));
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let stdout = build_ok(&refs);
            Some(Debian { dir, out, stdout })
        })
        .as_ref()
}

/// Partition `n` (1-based) of a raw GPT disk copied to its own file.
fn partition(raw: &Path, n: usize, to: &Path) {
    let out = Command::new("sfdisk")
        .args(["-J", s(raw)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["partitiontable"]["partitions"][n - 1];
    let start = p["start"].as_u64().unwrap();
    let size = p["size"].as_u64().unwrap();
    let st = Command::new("dd")
        .args([
            &format!("if={}", s(raw)),
            &format!("of={}", s(to)),
            "bs=512",
            &format!("skip={start}"),
            &format!("count={size}"),
            "conv=sparse",
            "status=none",
        ])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn debian_build_is_clean_for_fsck_sgdisk_and_qemu_img() {
    let Some(d) = debian() else { return };
    assert!(d.stdout.contains("Boots with uki"), "{}", d.stdout);
    let raw = d.out.join("disk.raw");
    let r = Command::new("sgdisk")
        .args(["-v", s(&raw)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success() && text.contains("No problems found"),
        "{text}"
    );
    let esp = d.dir.join("esp.img");
    let root = d.dir.join("root.img");
    partition(&raw, 1, &esp);
    partition(&raw, 2, &root);
    let r = Command::new("fsck.fat")
        .args(["-n", s(&esp)])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stdout));
    let r = Command::new("e2fsck")
        .args(["-fn", s(&root)])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stdout));
    // The UKI is where the firmware looks for it.
    let r = Command::new("mdir")
        .args(["-i", s(&esp), "::/EFI/BOOT"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("BOOTX64"),
        "{r:?}"
    );
    // Ownership inside the image is root's, the recipe's user owns its home.
    let stat = |p: &str| {
        let r = Command::new("debugfs")
            .args(["-R", &format!("stat {p}"), s(&root)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&r.stdout).into_owned()
    };
    assert!(
        stat("/etc/shadow").contains("User:     0   Group:    42"),
        "{}",
        stat("/etc/shadow")
    );
    assert!(
        stat("/usr/bin/sudo").contains("User:     0")
            || stat("/usr/bin/passwd").contains("User:     0")
    );
    assert!(stat("/home/alice/.ssh/authorized_keys").contains("User:  1000"));
    // Every other format holds the same disk.
    for (o, format) in [
        ("disk.qcow2", "qcow2"),
        ("disk.vmdk", "vmdk"),
        ("disk.vhd", "vpc"),
        ("disk.vhdx", "vhdx"),
    ] {
        let disk = d.out.join(o);
        let r = crate::common::qemu_img(&["compare", "-f", "raw", "-F", format, s(&raw), s(&disk)]);
        assert_eq!(r.code, 0, "{o}: {}{}", r.stdout, r.stderr);
        if format != "vpc" {
            let r = crate::common::qemu_img(&["check", "-f", format, s(&disk)]);
            assert_eq!(r.code, 0, "{o}: {}{}", r.stdout, r.stderr);
        }
    }
    // The OVA's disk, as stamp reads it from inside the package.
    let r = crate::common::stamp(&["compare", s(&raw), s(&d.out.join("disk.ova"))]);
    assert_eq!(r.code, 0, "disk.ova: {}{}", r.stdout, r.stderr);
    // Azure's rules for the VHD: fixed, virtual size a whole number of MiB.
    let info = crate::common::stamp(&["info", "--json", s(&d.out.join("disk.vhd"))]);
    let v: serde_json::Value = serde_json::from_str(&info.stdout).unwrap();
    assert_eq!(
        v["virtual_size"].as_u64().unwrap() % (1 << 20),
        0,
        "{}",
        info.stdout
    );
    assert!(info.stdout.contains("fixed"), "{}", info.stdout);
    // The GCE tarball holds disk.raw, the same disk, sized to whole GiB.
    let gce = d.dir.join("gce");
    std::fs::create_dir(&gce).unwrap();
    let st = Command::new("tar")
        .args(["-xzf", s(&d.out.join("disk.tar.gz")), "-C", s(&gce)])
        .status()
        .unwrap();
    assert!(st.success());
    let r = crate::common::qemu_img(&["compare", s(&raw), s(&gce.join("disk.raw"))]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::metadata(gce.join("disk.raw")).unwrap().len() % (1 << 30),
        0
    );
    for scratch in [&esp, &root, &gce] {
        let _ = std::fs::remove_dir_all(scratch);
        let _ = std::fs::remove_file(scratch);
    }
    done_with_debian(d);
}

#[test]
fn debian_build_is_reproducible_rootless_and_cached() {
    let Some(d) = debian() else { return };
    // The same build as nobody, in its own store: byte-identical outputs.
    let nobody = d.dir.join("nobody");
    let store = d.dir.join("store-nobody");
    for p in [&nobody, &store] {
        std::fs::create_dir(p).unwrap();
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    let mut args: Vec<String> = vec![
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        env!("CARGO_BIN_EXE_stamp").into(),
        "build".into(),
        "--no-cache".into(),
        "--store".into(),
        s(&store).into(),
        format!("rootfs:{}", s(&d.dir.join("debian.tar"))),
        "-f".into(),
        s(&d.dir.join("stamp.toml")).into(),
    ];
    args.extend(output_args(&nobody));
    let r = Command::new("setpriv")
        .args(&args)
        .env("SOURCE_DATE_EPOCH", SDE)
        .env("HOME", s(&nobody))
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for o in OUTPUTS {
        assert_eq!(
            sha256(&d.out.join(o)),
            sha256(&nobody.join(o)),
            "{o} differs between the root and the unprivileged build"
        );
    }
    let _ = std::fs::remove_dir_all(&nobody);
    let _ = std::fs::remove_dir_all(&store);
    // The same build again in the first store: from the cache, the same bytes.
    let again = d.dir.join("again");
    std::fs::create_dir(&again).unwrap();
    let mut args: Vec<String> = vec![
        "--store".into(),
        s(&d.dir.join("store")).into(),
        format!("rootfs:{}", s(&d.dir.join("debian.tar"))),
        "-f".into(),
        s(&d.dir.join("stamp.toml")).into(),
    ];
    args.extend(output_args(&again));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut tagged = refs.clone();
    tagged.extend(["--tag", "localhost/debian-disk:1"]);
    let stdout = build_ok(&tagged);
    assert!(stdout.contains("build cache"), "{stdout}");
    for o in OUTPUTS {
        assert_eq!(sha256(&d.out.join(o)), sha256(&again.join(o)), "{o}");
    }
    // --tag recorded the disk in the store as a disk image, whose disk is the qcow2.
    let store = d.dir.join("store");
    let r = stamp(&["images", "--store", s(&store), "--json"]);
    assert!(r.stdout.contains("localhost/debian-disk:1"), "{}", r.stdout);
    let exported = again.join("exported.qcow2");
    let r = stamp(&[
        "export",
        "--store",
        s(&store),
        "--disk",
        "localhost/debian-disk:1",
        "-o",
        s(&exported),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(sha256(&exported), sha256(&d.out.join("disk.qcow2")));
    done_with_debian(d);
}

/// `opts` with the guest's writes kept in a temporary overlay (`-snapshot`): the outputs are
/// shared by the tests (the reproducibility test hashes them), and QEMU writes only to
/// monolithic VMDKs, not to streamOptimized ones.
fn snapshot(opts: BootOpts) -> BootOpts {
    BootOpts {
        extra_args: vec!["-snapshot".into()],
        ..opts
    }
}

/// The console line the marker unit prints, checked for what the recipe asked.
fn check_marker(console: &str) {
    let line = console
        .lines()
        .find(|l| l.contains("STAMP-MARKER root="))
        .expect("marker line");
    assert!(line.contains("root=rw"), "{line}");
    assert!(line.contains("root=PARTUUID="), "{line}");
    assert!(line.contains("user=1000"), "{line}");
    assert!(line.contains("key=alice@test"), "{line}");
    assert!(line.contains("host=stamp-test"), "{line}");
}

#[test]
fn debian_qcow2_boots_to_login_with_the_recipe_applied() {
    let Some(d) = debian() else { return };
    if !qemu::available() {
        return;
    }
    let log = qemu::boot(
        &d.out.join("disk.qcow2"),
        "qcow2",
        &snapshot(BootOpts::expecting(&["STAMP-MARKER root=", "login:"])),
    );
    assert_booted(&log);
    check_marker(&log.console);
    done_with_debian(d);
}

#[test]
fn debian_vmdk_and_vhd_boot_the_same_way() {
    let Some(d) = debian() else { return };
    if !qemu::available() {
        return;
    }
    for (file, format) in [("disk.vmdk", "vmdk"), ("disk.vhd", "vpc")] {
        let log = qemu::boot(
            &d.out.join(file),
            format,
            &snapshot(BootOpts::expecting(&["STAMP-MARKER root="])),
        );
        assert_booted(&log);
        check_marker(&log.console);
    }
    done_with_debian(d);
}

#[test]
fn grub_image_boots() {
    let Some(tar) = qemu::debian_grub_tar() else {
        eprintln!("skipped: no GRUB rootfs (scripts/debian-image.sh --grub)");
        return;
    };
    if !qemu::available() {
        return;
    }
    let dir = scratch("build-grub");
    let out = dir.join("grub.qcow2");
    let stdout = build_ok(&[
        "--store",
        s(&dir.join("store")),
        &format!("rootfs:{}", s(&tar)),
        "-o",
        s(&out),
    ]);
    assert!(stdout.contains("Boots with grub"), "{stdout}");
    let log = qemu::boot(&out, "qcow2", &BootOpts::default());
    assert_booted(&log);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn application_image_boots_its_entrypoint_with_a_separate_kernel() {
    let (Some(app), Some(kernel)) = (qemu::app_oci(), debian_tar()) else {
        eprintln!("skipped: no application image (scripts/debian-image.sh --app) or Debian tar");
        return;
    };
    if !qemu::available() {
        return;
    }
    let dir = scratch("build-app");
    let out = dir.join("app.qcow2");
    let stdout = build_ok(&[
        "--store",
        s(&dir.join("store")),
        &format!("oci-archive:{}", s(&app)),
        "--kernel",
        &format!("rootfs:{}", s(&kernel)),
        "-o",
        s(&out),
    ]);
    assert!(stdout.contains("Boots with uki"), "{stdout}");
    let opts = BootOpts {
        network: true,
        wait_exit: true,
        ..BootOpts::expecting(&["STAMP-APP-MARKER", "exited with status 3"])
    };
    let log = qemu::boot(&out, "qcow2", &opts);
    assert_booted(&log);
    // The entrypoint ran with CMD as its argument, the image's ENV, WorkingDir and User, and
    // the init's DHCP gave it QEMU's address and a default route (via 10.0.2.2 = 0202000A).
    let c = &log.console;
    for want in [
        "args=arg1",
        "GREETING=hello-from-stamp",
        "pwd=/srv",
        "uid=1000 gid=1000",
        "10.0.2.15",
        "00000000\t0202000A",
    ] {
        assert!(c.contains(want), "no {want:?} in:\n{}", log.tail(40));
    }
    assert_eq!(
        log.exit_code(),
        Some(0),
        "QEMU should exit by itself after the power-off"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tiny root filesystem tar with an init but no kernel.
fn no_kernel_tar(dir: &Path) -> PathBuf {
    let root = dir.join("nokernel");
    std::fs::create_dir_all(root.join("sbin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("sbin/init"), "#!/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/os-release"), "ID=test\n").unwrap();
    let tar = dir.join("nokernel.tar");
    let st = Command::new("tar")
        .args(["-cf", s(&tar), "-C", s(&root), "."])
        .status()
        .unwrap();
    assert!(st.success());
    tar
}

/// Asserts that `dir` holds no file whose name starts with `prefix` (no partial outputs).
fn assert_no_outputs(dir: &Path, prefix: &str) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(prefix) && !name.starts_with(&format!(".{prefix}")),
            "left behind: {name}"
        );
    }
}

#[test]
fn bad_inputs_fail_clean_with_what_to_do() {
    let t = crate::common::tmp();
    let store = t.path().join("store");
    let out = t.path().join("out.qcow2");
    let base = ["build", "--store", s(&store)];
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        stamp(&a)
    };
    // Unknown source.
    let r = run(&["oci-archive:/nonexistent/x.tar", "-o", s(&out)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("/nonexistent/x.tar"), "{}", r.stderr);
    // No kernel.
    let tar = no_kernel_tar(t.path());
    let r = run(&[&format!("rootfs:{}", s(&tar)), "-o", s(&out)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("linux-image-cloud-amd64"), "{}", r.stderr);
    assert!(r.stderr.contains("--kernel"), "{}", r.stderr);
    // An invalid recipe names the line and the key.
    let recipe = t.path().join("bad.toml");
    std::fs::write(&recipe, "[system]\nhostname = \"x\"\nfrobnicate = 1\n").unwrap();
    let r = run(&[
        &format!("rootfs:{}", s(&tar)),
        "-f",
        s(&recipe),
        "-o",
        s(&out),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("bad.toml:3"), "{}", r.stderr);
    assert!(r.stderr.contains("frobnicate"), "{}", r.stderr);
    // Unknown output format.
    let r = run(&[
        &format!("rootfs:{}", s(&tar)),
        "-o",
        s(&t.path().join("x.iso")),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("-O"), "{}", r.stderr);
    // BIOS is not there yet, and says so.
    let r = run(&[
        &format!("rootfs:{}", s(&tar)),
        "--boot",
        "bios",
        "-o",
        s(&out),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("uefi"), "{}", r.stderr);
    assert_no_outputs(t.path(), "out");
    let Some(debian) = debian_tar() else { return };
    // A disk too small for the content; an unwritable output.
    let r = run(&[
        &format!("rootfs:{}", s(&debian)),
        "--size",
        "300M",
        "-o",
        s(&out),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("--size"), "{}", r.stderr);
    assert_no_outputs(t.path(), "out");
    let r = run(&[
        &format!("rootfs:{}", s(&debian)),
        "-o",
        "/proc/stamp-test.qcow2",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("/proc/stamp-test.qcow2"), "{}", r.stderr);
}

#[test]
fn dockerfile_is_built_with_podman_then_stamped() {
    let Some(kernel) = debian_tar() else { return };
    if Command::new("podman").arg("--version").output().is_err()
        || !Path::new("/bin/busybox").is_file()
    {
        eprintln!("skipped: podman or /bin/busybox missing (scripts/install-test-deps.sh)");
        return;
    }
    let dir = scratch("build-dockerfile");
    let ctx = dir.join("ctx");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/data/app");
    let st = Command::new("cp")
        .args(["-a", &format!("{}/.", s(&data)), s(&ctx)])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    // podman on these machines: runc (crun refuses hybrid cgroups), no default rlimits.
    let conf = dir.join("containers.conf");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\n",
    )
    .unwrap();
    let raw = dir.join("app.raw");
    let r: crate::common::Run = Command::new(env!("CARGO_BIN_EXE_stamp"))
        .args([
            "build",
            "--store",
            s(&dir.join("store")),
            "--dockerfile",
            s(&ctx.join("Dockerfile")),
            "--kernel",
            &format!("rootfs:{}", s(&kernel)),
            "-o",
            s(&raw),
        ])
        .env("CONTAINERS_CONF", &conf)
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("Boots with uki"), "{}", r.stdout);
    // The root filesystem holds the Dockerfile's files and the config stamp's init runs.
    let root = dir.join("root.img");
    partition(&raw, 2, &root);
    let cat = |p: &str| {
        let r = Command::new("debugfs")
            .args(["-R", &format!("cat {p}"), s(&root)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&r.stdout).into_owned()
    };
    assert!(cat("/entrypoint.sh").contains("STAMP-APP-MARKER"));
    let config = cat("/.stamp/app.json");
    for want in [
        "/entrypoint.sh",
        "arg1",
        "GREETING=hello-from-stamp",
        "/srv",
        "1000:1000",
    ] {
        assert!(config.contains(want), "no {want} in {config}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kernel_from_another_image_goes_into_a_system_image_without_one() {
    let Some(debian) = debian_tar() else { return };
    let t = crate::common::tmp();
    let tar = no_kernel_tar(t.path());
    let raw = t.path().join("sys.raw");
    let r = stamp(&[
        "build",
        "--store",
        s(&t.path().join("store")),
        &format!("rootfs:{}", s(&tar)),
        "--kernel",
        &format!("rootfs:{}", s(&debian)),
        "--json",
        "-o",
        s(&raw),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    // The image's own init boots: no stamp init, no init= on the command line.
    let cmdline = report["cmdline"].as_str().unwrap();
    assert!(!cmdline.contains("init="), "{cmdline}");
    assert_eq!(report["boot_method"], "uki");
    let root = t.path().join("root.img");
    partition(&raw, 2, &root);
    let ls = |p: &str| {
        let r = Command::new("debugfs")
            .args(["-R", &format!("ls -l {p}"), s(&root)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&r.stdout).into_owned()
    };
    assert!(ls("/boot").contains("vmlinuz-"), "{}", ls("/boot"));
    assert!(
        ls("/usr/lib/modules").contains("cloud-amd64"),
        "{}",
        ls("/usr/lib/modules")
    );
    assert!(!ls("/").contains(".stamp"), "{}", ls("/"));
}

#[test]
fn a_registry_reference_is_pulled_and_built() {
    let (Some(app), Some(kernel)) = (qemu::app_oci(), debian_tar()) else {
        eprintln!("skipped: no application image (scripts/debian-image.sh --app) or Debian tar");
        return;
    };
    let reg = &crate::support::start(crate::support::Flavour::Plain);
    let t = crate::common::tmp();
    let first = t.path().join("first");
    let r = stamp(&[
        "pull",
        "--store",
        s(&first),
        &format!("oci-archive:{}", s(&app)),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let name = r
        .stdout
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("Pulled ")
        .to_string();
    let remote = format!(
        "{}/{}:1",
        reg.host,
        crate::support::unique_repo("build-app")
    );
    let r = stamp(&[
        "push",
        "--store",
        s(&first),
        "--tls-verify=false",
        &name,
        &remote,
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A fresh store: the build pulls the image from the registry.
    let raw = t.path().join("app.raw");
    let r = stamp(&[
        "build",
        "--store",
        s(&t.path().join("second")),
        "--tls-verify=false",
        &remote,
        "--kernel",
        &format!("rootfs:{}", s(&kernel)),
        "-o",
        s(&raw),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Boots with uki"), "{}", r.stdout);
    let r = stamp(&["images", "--store", s(&t.path().join("second"))]);
    let repo = remote.rsplit_once(':').unwrap().0;
    assert!(r.stdout.contains(repo), "{}", r.stdout);
}
