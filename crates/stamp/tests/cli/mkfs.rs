//! `stamp mkfs` and `stamp mkdisk` through the binary, checked by the filesystem tools:
//! e2fsck/debugfs for ext4, fsck.fat for FAT, sfdisk for GPT, qemu-img for the disk formats.

use std::path::Path;
use std::process::Command;

use super::common::*;

/// Runs a tool; returns its exit code, stdout and stderr.
fn tool(cmd: &str, args: &[&str]) -> Run {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"))
        .into()
}

/// A small root filesystem as a root-owned PAX tar with a setuid file and a hard link.
fn rootfs_tar(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("rootfs");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::create_dir_all(src.join("usr/bin")).unwrap();
    std::fs::write(src.join("etc/hostname"), b"stamp\n").unwrap();
    std::fs::write(src.join("usr/bin/tool"), vec![0x5a; 50_000]).unwrap();
    std::fs::hard_link(src.join("usr/bin/tool"), src.join("usr/bin/tool2")).unwrap();
    std::os::unix::fs::symlink("usr/bin", src.join("bin")).unwrap();
    let tar = dir.join("rootfs.tar.gz");
    let r = tool(
        "tar",
        &[
            "--format=pax",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--sort=name",
            "--mtime=@1700000000",
            "-czf",
            s(&tar),
            "-C",
            s(&src),
            ".",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    tar
}

/// An ESP tree.
fn esp_dir(dir: &Path) -> std::path::PathBuf {
    let esp = dir.join("esp");
    std::fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    std::fs::write(esp.join("EFI/BOOT/BOOTX64.EFI"), vec![0xeb; 70_000]).unwrap();
    std::fs::write(esp.join("loader.conf"), b"timeout 3\n").unwrap();
    esp
}

#[test]
fn mkfs_ext4_from_a_tar_is_clean_and_shows_the_files() {
    let d = tmp();
    let tar = rootfs_tar(d.path());
    let img = d.path().join("root.ext4");
    let r = stamp(&["mkfs", "ext4", "--from", s(&tar), "-o", s(&img)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let fsck = tool("e2fsck", &["-fn", s(&img)]);
    assert_eq!(fsck.code, 0, "e2fsck: {}{}", fsck.stdout, fsck.stderr);
    let cat = tool("debugfs", &["-R", "cat /etc/hostname", s(&img)]);
    assert_eq!(cat.stdout, "stamp\n", "{}", cat.stderr);
    let st = tool("debugfs", &["-R", "stat /usr/bin/tool2", s(&img)]);
    assert!(st.stdout.contains("Links: 2"), "{}", st.stdout);
    assert!(st.stdout.contains("User:     0"), "{}", st.stdout);
    // Same input, same bytes.
    let again = d.path().join("again.ext4");
    assert_eq!(
        stamp(&["mkfs", "ext4", "--from", s(&tar), "-o", s(&again)]).code,
        0
    );
    assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn mkfs_ext4_reads_a_tar_on_stdin_into_qcow2() {
    let d = tmp();
    let tar = rootfs_tar(d.path());
    let img = d.path().join("root.qcow2");
    let out = Command::new(env!("CARGO_BIN_EXE_stamp"))
        .args(["mkfs", "ext4", "--from", "-", "-o", s(&img), "-O", "qcow2"])
        .stdin(std::fs::File::open(&tar).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    qemu_ok(&["check", "-f", "qcow2", s(&img)]);
    let raw = d.path().join("root.raw");
    qemu_ok(&["convert", "-O", "raw", s(&img), s(&raw)]);
    let fsck = tool("e2fsck", &["-fn", s(&raw)]);
    assert_eq!(fsck.code, 0, "e2fsck: {}{}", fsck.stdout, fsck.stderr);
}

#[test]
fn mkfs_fat_is_clean() {
    let d = tmp();
    let esp = esp_dir(d.path());
    let img = d.path().join("esp.img");
    let r = stamp(&[
        "mkfs",
        "fat",
        "--from",
        s(&esp),
        "-o",
        s(&img),
        "--label",
        "ESP",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let fsck = tool("fsck.fat", &["-n", "-l", s(&img)]);
    assert_eq!(fsck.code, 0, "fsck.fat: {}{}", fsck.stdout, fsck.stderr);
    for f in ["/EFI/BOOT/BOOTX64.EFI", "/loader.conf"] {
        // A short-name alias may follow the long name.
        assert!(
            fsck.stdout.contains(&format!("Checking file {f}")),
            "{}",
            fsck.stdout
        );
    }
    // The same tree as a zstd tar on stdin gives the same volume.
    let tar = d.path().join("esp.tar");
    let r = tool(
        "tar",
        &[
            "--zstd",
            "--owner=0",
            "--group=0",
            "-cf",
            s(&tar),
            "-C",
            s(&esp),
            ".",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let from_stdin = d.path().join("esp2.img");
    let out = Command::new(env!("CARGO_BIN_EXE_stamp"))
        .args([
            "mkfs",
            "fat",
            "--from",
            "-",
            "--label",
            "ESP",
            "-o",
            s(&from_stdin),
        ])
        .stdin(std::fs::File::open(&tar).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fsck = tool("fsck.fat", &["-n", "-l", s(&from_stdin)]);
    assert_eq!(fsck.code, 0, "fsck.fat: {}{}", fsck.stdout, fsck.stderr);
    assert!(
        fsck.stdout.contains("/EFI/BOOT/BOOTX64.EFI"),
        "{}",
        fsck.stdout
    );
}

#[test]
fn mkdisk_gpt_verifies_and_converts() {
    let d = tmp();
    let esp = esp_dir(d.path());
    let disk = d.path().join("disk.img");
    let r = stamp(&[
        "mkdisk",
        "-o",
        s(&disk),
        "--part",
        &format!("esp:40M:{}", s(&esp)),
        "--part",
        "swap:8M",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = tool("sfdisk", &["--verify", s(&disk)]);
    assert_eq!(v.code, 0, "sfdisk: {}{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("No errors detected"), "{}", v.stdout);
    let sg = tool("sgdisk", &["-v", s(&disk)]);
    assert_eq!(sg.code, 0, "sgdisk: {}{}", sg.stdout, sg.stderr);
    assert!(sg.stdout.contains("No problems found"), "{}", sg.stdout);
    let dump = tool("sfdisk", &["-d", s(&disk)]);
    assert!(
        dump.stdout
            .contains("size=       81920, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        "{}",
        dump.stdout
    );
    assert!(
        dump.stdout
            .contains("type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"),
        "{}",
        dump.stdout
    );
    // The swap partition has the header mkswap writes (same UUID given to mkswap).
    let swap = d.path().join("swap-part.img");
    extract(&disk, &swap, 41 << 20, 8 << 20);
    let label = tool("swaplabel", &[s(&swap)]);
    assert_eq!(label.code, 0, "swaplabel: {}", label.stderr);
    let uuid = label
        .stdout
        .trim()
        .strip_prefix("UUID:")
        .unwrap()
        .trim()
        .to_string();
    let reference = d.path().join("mkswap.img");
    std::fs::File::create(&reference)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let mk = tool("mkswap", &["-q", "-U", &uuid, s(&reference)]);
    assert_eq!(mk.code, 0, "mkswap: {}", mk.stderr);
    assert!(std::fs::read(&swap).unwrap() == std::fs::read(&reference).unwrap());
    // The ESP inside is a clean FAT.
    let esp_img = d.path().join("esp-part.img");
    extract(&disk, &esp_img, 1 << 20, 40 << 20);
    let fsck = tool("fsck.fat", &["-n", s(&esp_img)]);
    assert_eq!(fsck.code, 0, "fsck.fat: {}{}", fsck.stdout, fsck.stderr);
    // Straight into qcow2.
    let q = d.path().join("disk.qcow2");
    let r = stamp(&[
        "mkdisk",
        "-O",
        "qcow2",
        "-o",
        s(&q),
        "--part",
        &format!("esp:40M:{}", s(&esp)),
        "--part",
        "swap:8M",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    qemu_ok(&["check", "-f", "qcow2", s(&q)]);
    qemu_ok(&["compare", "-f", "raw", "-F", "qcow2", s(&disk), s(&q)]);
}

#[test]
fn mkdisk_with_an_ext4_root_from_a_tar() {
    let d = tmp();
    let esp = esp_dir(d.path());
    let tar = rootfs_tar(d.path());
    let disk = d.path().join("disk.img");
    let r = stamp(&[
        "mkdisk",
        "-o",
        s(&disk),
        "--part",
        &format!("esp:40M:{}", s(&esp)),
        "--part",
        &format!("root-x86-64:auto:{}", s(&tar)),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = tool("sfdisk", &["--verify", s(&disk)]);
    assert_eq!(v.code, 0, "sfdisk: {}{}", v.stdout, v.stderr);
    let dump = tool("sfdisk", &["--json", s(&disk)]);
    let j: serde_json::Value = serde_json::from_str(&dump.stdout).unwrap();
    let root = &j["partitiontable"]["partitions"][1];
    assert_eq!(root["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    let (start, size) = (
        root["start"].as_u64().unwrap(),
        root["size"].as_u64().unwrap(),
    );
    let part = d.path().join("root.img");
    extract(&disk, &part, start * 512, size * 512);
    let fsck = tool("e2fsck", &["-fn", s(&part)]);
    assert_eq!(fsck.code, 0, "e2fsck: {}{}", fsck.stdout, fsck.stderr);
}

#[test]
fn a_bad_tar_fails_naming_the_entry_and_writes_nothing() {
    let d = tmp();
    let tar = d.path().join("evil.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tar).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        let name = b"../escape";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        b.finish().unwrap();
    }
    let img = d.path().join("out.img");
    for fs in ["ext4", "fat"] {
        let r = stamp(&["mkfs", fs, "--from", s(&tar), "-o", s(&img)]);
        assert_eq!(r.code, 1, "{fs}: {}", r.stderr);
        assert!(
            r.stderr.contains("../escape") && r.stderr.contains("evil.tar"),
            "{fs}: {}",
            r.stderr
        );
        assert!(!img.exists());
    }
    let esp = format!("esp:40M:{}", s(&tar));
    let r = stamp(&["mkdisk", "-o", s(&img), "--part", &esp]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("../escape"), "{}", r.stderr);
    assert!(!img.exists());
    assert!(temp_leftovers(d.path()).is_empty());
}

#[test]
fn bad_mkdisk_parts_are_usage_errors() {
    let d = tmp();
    let out = d.path().join("x.img");
    for part in ["nope:1M:x", "esp", "swap:1M:src", "swap:auto"] {
        let r = stamp(&["mkdisk", "-o", s(&out), "--part", part]);
        assert_eq!(r.code, 1, "{part}: {}", r.stderr);
        assert!(r.stderr.contains(part), "{part}: {}", r.stderr);
    }
}

/// Copies `len` bytes at `offset` of `disk` into a new file `out` (a partition, for its own checker).
fn extract(disk: &std::path::Path, out: &std::path::Path, offset: u64, len: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(disk).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).unwrap();
    std::fs::write(out, buf).unwrap();
}
