//! `stamp mkfs` and `stamp mkdisk` through the binary, checked by the filesystem tools:
//! fsck.fat for FAT, sfdisk for GPT, qemu-img for the disk formats.

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

/// An ESP tree.
fn esp_dir(dir: &Path) -> std::path::PathBuf {
    let esp = dir.join("esp");
    std::fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    std::fs::write(esp.join("EFI/BOOT/BOOTX64.EFI"), vec![0xeb; 70_000]).unwrap();
    std::fs::write(esp.join("loader.conf"), b"timeout 3\n").unwrap();
    esp
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
    let dd = tool(
        "dd",
        &[
            &format!("if={}", s(&disk)),
            &format!("of={}", s(&swap)),
            "bs=1M",
            "skip=41",
            "count=8",
            "status=none",
        ],
    );
    assert_eq!(dd.code, 0, "{}", dd.stderr);
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
    let dd = tool(
        "dd",
        &[
            &format!("if={}", s(&disk)),
            &format!("of={}", s(&esp_img)),
            "bs=1M",
            "skip=1",
            "count=40",
            "status=none",
        ],
    );
    assert_eq!(dd.code, 0, "{}", dd.stderr);
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
    {
        let r = stamp(&["mkfs", "fat", "--from", s(&tar), "-o", s(&img)]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(
            r.stderr.contains("../escape") && r.stderr.contains("evil.tar"),
            "{}",
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
