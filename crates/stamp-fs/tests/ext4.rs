//! The ext4 writer against e2fsprogs: e2fsck must find every image clean, and debugfs must read
//! back the tree's types, modes, owners, times, links, devices, xattrs and contents.

#![allow(clippy::unwrap_used)]

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
    Entry::new(
        Kind::File(Content::Bytes(Bytes::from(data))),
        mode,
        ts(1_700_000_000, 123_456_789),
    )
}

/// Writes `tree` as ext4 with `opts` to a raw file in `dir`; returns its path.
fn build(dir: &Path, name: &str, tree: &Tree, opts: &Ext4Options) -> PathBuf {
    let path = dir.join(name);
    let image = ext4(tree, opts).expect("ext4 layout");
    let w =
        stamp_disk::create(&path, Format::Raw, image.size, &Default::default()).expect("create");
    image.write_to(vec![w]).expect("write");
    path
}

/// Runs e2fsck -fn and asserts it exits 0.
fn fsck(img: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .expect("run e2fsck");
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
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(req)
        .arg(img)
        .output()
        .expect("run debugfs");
    assert!(
        out.status.success(),
        "debugfs {req}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let big: Vec<u8> = (0..(5u32 << 20) + 333)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    t.insert(b"big.bin", file(big, 0o644)).unwrap();
    t.link(b"dir/big-link", b"big.bin").unwrap();
    t.link(b"other/big-link2", b"big.bin").unwrap();
    let mut suid = file(b"#!/bin/sh\n".to_vec(), 0o4755);
    suid.gid = 70_000;
    t.insert(b"bin/suid", suid).unwrap();
    t.insert(b"bin/sgid", file(b"x".to_vec(), 0o2755)).unwrap();
    t.insert(b"tmp", Entry::new(Kind::Dir, 0o1777, ts(1, 0)))
        .unwrap();
    t.insert(
        b"dev/null",
        Entry::new(Kind::CharDevice { major: 1, minor: 3 }, 0o666, ts(1, 0)),
    )
    .unwrap();
    t.insert(
        b"dev/sda",
        Entry::new(Kind::BlockDevice { major: 8, minor: 0 }, 0o660, ts(1, 0)),
    )
    .unwrap();
    t.insert(
        b"dev/big",
        Entry::new(
            Kind::CharDevice {
                major: 300,
                minor: 70_000,
            },
            0o600,
            ts(1, 0),
        ),
    )
    .unwrap();
    t.insert(b"run/fifo", Entry::new(Kind::Fifo, 0o644, ts(1, 0)))
        .unwrap();
    t.insert(b"run/sock", Entry::new(Kind::Socket, 0o755, ts(1, 0)))
        .unwrap();
    t.insert(
        b"short",
        Entry::new(Kind::Symlink(b"dir/small.txt".to_vec()), 0o777, ts(1, 0)),
    )
    .unwrap();
    let long = format!("{}/target", "d".repeat(200));
    t.insert(
        b"long",
        Entry::new(Kind::Symlink(long.into_bytes()), 0o777, ts(1, 0)),
    )
    .unwrap();
    let name255 = "n".repeat(255);
    t.insert(
        format!("names/{name255}").as_bytes(),
        file(b"255".to_vec(), 0o644),
    )
    .unwrap();
    let mut xs = file(b"x".to_vec(), 0o755);
    xs.xattrs.insert("user.small".into(), b"v".to_vec());
    xs.xattrs.insert(
        "security.capability".into(),
        vec![
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    t.insert(b"xattr/inline", xs).unwrap();
    let mut xb = file(b"y".to_vec(), 0o644);
    xb.xattrs.insert("user.big".into(), vec![b'Z'; 900]);
    xb.xattrs.insert("user.a".into(), b"1".to_vec());
    t.insert(b"xattr/block", xb).unwrap();
    for i in 0..3000 {
        t.insert(
            format!("many/entry-{i:05}").as_bytes(),
            file(Vec::new(), 0o644),
        )
        .unwrap();
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
    let img = build(
        dir.path(),
        "full.img",
        &t,
        &Ext4Options {
            source_date_epoch: Some(1_700_000_000),
            ..Default::default()
        },
    );
    keep(&img);
    fsck(&img);
    check_full(&img, &t, 4096);
}

/// Asserts that debugfs reads back what `full_tree` holds.
fn check_full(img: &Path, t: &Tree, bs: usize) {
    let st = debugfs(img, "stat /dir/small.txt");
    assert!(st.contains("Type: regular    Mode:  0640"), "{st}");
    assert!(st.contains("User: 100000   Group: 200000"), "{st}");
    assert!(st.contains("Size: 12\n"), "{st}");
    assert!(st.contains("mtime: 0x499602d2:"), "{st}");
    // Nanoseconds: 987654321 << 2.
    assert!(st.contains(&format!("{:08x}", 987_654_321u32 << 2)), "{st}");
    assert_eq!(dump(img, "/dir/small.txt"), b"hello, ext4\n");

    let st = debugfs(img, "stat /big.bin");
    assert!(st.contains("Links: 3"), "{st}");
    let Kind::File(c) = &t.entry(t.get(b"big.bin").unwrap()).kind else {
        panic!()
    };
    let mut want = vec![0u8; c.len() as usize];
    c.read_at(&mut want, 0).unwrap();
    assert_eq!(dump(img, "/other/big-link2"), want);
    assert_eq!(
        debugfs(img, "stat /dir/big-link").lines().next(),
        st.lines().next()
    );

    // The sparse file keeps its hole: 2 + 3 blocks allocated, contents identical.
    let st = debugfs(img, "stat /dir/sparse");
    let Kind::File(c) = &t.entry(t.get(b"dir/sparse").unwrap()).kind else {
        panic!()
    };
    let mut want = vec![0u8; c.len() as usize];
    c.read_at(&mut want, 0).unwrap();
    let nonzero = want
        .chunks(bs)
        .filter(|b| b.iter().any(|x| *x != 0))
        .count();
    assert!(nonzero < want.len() / bs / 10);
    assert!(
        st.contains(&format!("Blockcount: {}\n", nonzero * bs / 512)),
        "{st}"
    );
    assert_eq!(dump(img, "/dir/sparse"), want);
    assert!(dump(img, "/empty").is_empty());

    let st = debugfs(img, "stat /bin/suid");
    assert!(
        st.contains("Mode:  04755") && st.contains("Group: 70000"),
        "{st}"
    );
    assert!(debugfs(img, "stat /bin/sgid").contains("Mode:  02755"));
    let st = debugfs(img, "stat /tmp");
    assert!(st.contains("Type: directory    Mode:  01777"), "{st}");
    let st = debugfs(img, "stat /dev/null");
    assert!(
        st.contains("character special") && st.contains("major/minor number: 01:03"),
        "{st}"
    );
    let st = debugfs(img, "stat /dev/sda");
    assert!(
        st.contains("block special") && st.contains("major/minor number: 08:00"),
        "{st}"
    );
    let st = debugfs(img, "stat /dev/big");
    assert!(st.contains("300:70000"), "{st}");
    assert!(debugfs(img, "stat /run/fifo").contains("Type: FIFO"));
    assert!(debugfs(img, "stat /run/sock").contains("Type: socket"));

    let st = debugfs(img, "stat /short");
    assert!(st.contains("Fast link dest: \"dir/small.txt\""), "{st}");
    let long = format!("{}/target", "d".repeat(200));
    let st = debugfs(img, "stat /long");
    assert!(
        st.contains("Type: symlink") && st.contains("Size: 207"),
        "{st}"
    );
    assert_eq!(dump(img, "/long"), long.as_bytes());

    let name255 = "n".repeat(255);
    assert_eq!(dump(img, &format!("/names/{name255}")), b"255");

    let ea = debugfs(img, "ea_list /xattr/inline");
    assert!(ea.contains("user.small (1) = \"v\""), "{ea}");
    assert!(
        ea.contains("security.capability (20) = 01 00 00 02 00 20"),
        "{ea}"
    );
    assert!(debugfs(img, "stat /xattr/inline").contains("File ACL: 0"));
    let ea = debugfs(img, "ea_list /xattr/block");
    assert!(ea.contains("user.a (1) = \"1\""), "{ea}");
    // user.a fits in the inode body; user.big goes to the block.
    let body = debugfs(img, "inode_dump -x /xattr/block");
    assert!(
        body.contains("name = a") && !body.contains("name = big"),
        "{body}"
    );
    let ea = debugfs(img, "ea_get /xattr/block user.big");
    assert!(ea.contains(&"Z".repeat(900)), "{ea}");
    let st = debugfs(img, "stat /xattr/block");
    assert!(!st.contains("File ACL: 0\n"), "{st}");

    let ls = debugfs(img, "ls -l /many");
    assert_eq!(ls.matches("entry-").count(), 3000);
    assert!(ls.contains("entry-02999"));
    // Hashed (dir_index): e2fsck has checked every hash against the superblock's seed.
    let st = debugfs(img, "stat /many");
    assert!(st.contains("Flags: 0x81000"), "{st}");
    let hd = debugfs(img, "htree_dump /many");
    assert!(hd.contains("Hash Version: 1"), "{hd}");
    let st = debugfs(img, "stat /");
    // ., .., and 10 subdirectories incl. lost+found.
    let subdirs = t
        .children(t.root())
        .filter(|(_, k)| t.entry(*k).is_dir())
        .count()
        + 1;
    assert!(st.contains(&format!("Links: {}", subdirs + 2)), "{st}");
    assert!(debugfs(img, "stat /lost+found").contains("Inode: 11 "));
}

#[test]
fn one_kib_blocks_with_journal_and_a_deep_extent_tree_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = full_tree();
    // 40 runs of data separated by holes: more extents than the inode holds.
    let mut frag = vec![0u8; 80 * 1024];
    for i in 0..40 {
        frag[i * 2048..i * 2048 + 1024].fill(i as u8 + 1);
    }
    t.insert(b"frag", file(frag.clone(), 0o644)).unwrap();
    // 400 runs: more than four leaves of 84 extents, so an index level below the inode.
    let mut frag2 = vec![0u8; 800 * 1024];
    for i in 0..400 {
        frag2[i * 2048 + 7] = (i % 255) as u8 + 1;
    }
    t.insert(b"frag2", file(frag2.clone(), 0o644)).unwrap();
    let opts = Ext4Options {
        block_size: 1024,
        size: Some(64 << 20),
        label: Some("stamp".into()),
        ..Default::default()
    };
    let img = build(dir.path(), "k1.img", &t, &opts);
    keep(&img);
    fsck(&img);
    check_full(&img, &t, 1024);
    assert_eq!(dump(&img, "/frag"), frag);
    let st = debugfs(&img, "stat /frag");
    assert!(st.contains("(ETB0)"), "{st}");
    let ex = debugfs(&img, "ex /frag");
    assert!(
        ex.contains(" 0/ 1   1/  1") && ex.contains(" 1/ 1  40/ 40"),
        "{ex}"
    );
    let h = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&img)
        .output()
        .unwrap();
    let h = String::from_utf8_lossy(&h.stdout);
    assert!(h.contains("has_journal"), "{h}");
    // mke2fs's default for 65536 blocks.
    assert!(h.contains("Total journal blocks:     4096"), "{h}");
    assert!(h.contains("Filesystem volume name:   stamp"), "{h}");
    assert!(h.contains("Block size:               1024"), "{h}");
}

#[test]
fn two_kib_blocks_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    let t = full_tree();
    let img = build(
        dir.path(),
        "k2.img",
        &t,
        &Ext4Options {
            block_size: 2048,
            ..Default::default()
        },
    );
    fsck(&img);
    check_full(&img, &t, 2048);
}

#[test]
fn builds_are_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Ext4Options {
        seed: Some(7),
        ..Default::default()
    };
    let a = build(dir.path(), "a.img", &full_tree(), &opts);
    let b = build(dir.path(), "b.img", &full_tree(), &opts);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let c = build(
        dir.path(),
        "c.img",
        &full_tree(),
        &Ext4Options {
            seed: Some(8),
            ..Default::default()
        },
    );
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
}

#[test]
fn too_much_content_for_a_fixed_size_is_no_space() {
    let mut t = Tree::default();
    t.insert(b"big", file(vec![1u8; 3 << 20], 0o644)).unwrap();
    let r = ext4(
        &t,
        &Ext4Options {
            size: Some(2 << 20),
            ..Default::default()
        },
    );
    assert!(matches!(r, Err(Error::NoSpace { .. })), "{r:?}");
    let mut t = Tree::default();
    for i in 0..200 {
        t.insert(format!("f{i}").as_bytes(), file(Vec::new(), 0o644))
            .unwrap();
    }
    let r = ext4(
        &t,
        &Ext4Options {
            size: Some(4 << 20),
            inodes: Some(64),
            ..Default::default()
        },
    );
    assert!(matches!(r, Err(Error::NoSpace { .. })), "{r:?}");
    let r = ext4(
        &t,
        &Ext4Options {
            block_size: 512,
            ..Default::default()
        },
    );
    assert!(matches!(r, Err(Error::InvalidOption(_))), "{r:?}");
}

#[test]
fn absurd_options_are_errors_not_panics() {
    let t = full_tree();
    for opts in [
        Ext4Options {
            size: Some(u64::MAX),
            ..Default::default()
        },
        Ext4Options {
            size: Some(0),
            ..Default::default()
        },
        Ext4Options {
            extra_space_percent: u32::MAX,
            ..Default::default()
        },
        Ext4Options {
            inodes: Some(u64::MAX),
            ..Default::default()
        },
        Ext4Options {
            label: Some("x".repeat(17)),
            ..Default::default()
        },
    ] {
        assert!(ext4(&t, &opts).is_err(), "{opts:?}");
    }
    let mut t = Tree::default();
    t.insert(
        b"dev",
        Entry::new(
            Kind::CharDevice {
                major: 5000,
                minor: 1,
            },
            0o600,
            ts(0, 0),
        ),
    )
    .unwrap();
    assert!(matches!(
        ext4(&t, &Ext4Options::default()),
        Err(Error::InvalidOption(_))
    ));
    let mut t = Tree::default();
    t.insert(b"l", Entry::new(Kind::Symlink(Vec::new()), 0o777, ts(0, 0)))
        .unwrap();
    assert!(matches!(
        ext4(&t, &Ext4Options::default()),
        Err(Error::InvalidOption(_))
    ));
}

#[test]
fn a_filesystem_filled_to_99_percent_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tree::default();
    for i in 0..20u32 {
        let data: Vec<u8> = (0..200_000u32).map(|j| (i + j % 251) as u8 | 1).collect();
        t.insert(format!("d{}/f{i}", i % 3).as_bytes(), file(data, 0o644))
            .unwrap();
    }
    let img = build(
        dir.path(),
        "full99.img",
        &t,
        &Ext4Options {
            extra_space_percent: 0,
            ..Default::default()
        },
    );
    fsck(&img);
    let h = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&img)
        .output()
        .unwrap();
    let h = String::from_utf8_lossy(&h.stdout);
    let field = |name: &str| -> u64 {
        h.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split(':')
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (blocks, free) = (field("Block count:"), field("Free blocks:"));
    assert!(free * 100 <= blocks, "{free} free of {blocks}");
    for i in [0u32, 19] {
        let got = dump(&img, &format!("/d{}/f{i}", i % 3));
        assert_eq!(got.len(), 200_000);
        assert_eq!(got[1000], (i + 1000 % 251) as u8 | 1);
    }
}

#[test]
fn times_are_clamped_to_source_date_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tree::default();
    let mut e = file(b"new".to_vec(), 0o644);
    e.mtime = ts(2_000_000_000, 5);
    e.xattrs = BTreeMap::new();
    t.insert(b"new", e).unwrap();
    let img = build(
        dir.path(),
        "sde.img",
        &t,
        &Ext4Options {
            source_date_epoch: Some(1_000_000_000),
            ..Default::default()
        },
    );
    fsck(&img);
    let st = debugfs(&img, "stat /new");
    assert!(st.contains("mtime: 0x3b9aca00:00000000"), "{st}");
    assert!(!st.contains("0x77359400"), "{st}");
}

#[test]
fn a_directory_needing_two_index_levels_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tree::default();
    // 1 KiB blocks hold 3 entries of 250-byte names: ~700 leaves, more than a dx root holds.
    for i in 0..2000 {
        let name = format!("{i:05}{}", "x".repeat(245));
        t.insert(format!("d/{name}").as_bytes(), file(vec![], 0o644))
            .unwrap();
    }
    let img = build(
        dir.path(),
        "deep.img",
        &t,
        &Ext4Options {
            block_size: 1024,
            ..Default::default()
        },
    );
    fsck(&img);
    let hd = debugfs(&img, "htree_dump /d");
    assert!(
        hd.contains("Indirect levels: 1"),
        "{}",
        &hd[..hd.len().min(2000)]
    );
    let ls = debugfs(&img, "ls /d");
    assert_eq!(ls.matches(&"x".repeat(245)).count(), 2000);
}

#[test]
fn a_fixed_size_filesystem_of_several_groups_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let t = full_tree();
    // 300 MiB of 4 KiB blocks: three groups, a backup superblock in group 1.
    let opts = Ext4Options {
        size: Some(300 << 20),
        uuid: Some([0x11; 16]),
        ..Default::default()
    };
    let image = ext4(&t, &opts).unwrap();
    assert_eq!(image.size, 300 << 20);
    let img = build(dir.path(), "groups.img", &t, &opts);
    fsck(&img);
    check_full(&img, &t, 4096);
    let out = Command::new("dumpe2fs").arg(&img).output().unwrap();
    let d = String::from_utf8_lossy(&out.stdout);
    assert!(d.contains("Group 2:"), "{d}");
    assert!(d.contains("Backup superblock at 32768"), "{d}");
    assert!(d.contains("Filesystem UUID:          11111111-1111-1111-1111-111111111111"));
    assert!(d.contains("Total journal blocks:     4096"), "{d}");
}

#[test]
fn flex_group_metadata_skips_backup_superblocks() {
    let dir = tempfile::tempdir().unwrap();
    let t = full_tree();
    // 1 KiB blocks, full inode tables: 16 groups' tables (2048 blocks each) run across the
    // backups in groups 1, 3, 5, 7 and 9.
    let opts = Ext4Options {
        block_size: 1024,
        size: Some(200 << 20),
        inodes: Some(25 * 8192),
        ..Default::default()
    };
    let img = build(dir.path(), "flex.img", &t, &opts);
    fsck(&img);
    check_full(&img, &t, 1024);
    let out = Command::new("dumpe2fs").arg(&img).output().unwrap();
    let d = String::from_utf8_lossy(&out.stdout);
    assert!(d.contains("flex_bg") && d.contains("Flex block group size:    16"));
    assert!(
        d.contains("Inode count:              204800"),
        "{}",
        &d[..3000]
    );
}

#[test]
fn contents_stream_from_a_host_file_region() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&host, &data).unwrap();
    let mut t = Tree::default();
    let region = Content::File {
        path: std::sync::Arc::new(host),
        offset: 1000,
        len: 200_000,
    };
    t.insert(
        b"from-host",
        Entry::new(Kind::File(region), 0o644, ts(5, 0)),
    )
    .unwrap();
    let img = build(dir.path(), "host.img", &t, &Ext4Options::default());
    fsck(&img);
    assert_eq!(dump(&img, "/from-host"), &data[1000..201_000]);
}

#[test]
fn a_lost_and_found_that_is_not_a_directory_is_refused() {
    let mut t = Tree::default();
    t.insert(b"lost+found", file(b"x".to_vec(), 0o644)).unwrap();
    let r = ext4(&t, &Ext4Options::default());
    assert!(matches!(r, Err(Error::InvalidOption(_))), "{r:?}");
    // A lost+found directory of the tree's own becomes inode 11.
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tree::default();
    t.insert(b"lost+found", Entry::new(Kind::Dir, 0o700, ts(5, 0)))
        .unwrap();
    t.insert(b"a", file(b"a".to_vec(), 0o644)).unwrap();
    let img = build(dir.path(), "lf.img", &t, &Ext4Options::default());
    fsck(&img);
    assert!(debugfs(&img, "stat /lost+found").contains("Inode: 11 "));
    assert!(debugfs(&img, "stat /a").contains("Inode: 12 "));
}

#[test]
fn replaced_entries_leave_no_orphan_inodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tree::default();
    t.insert(b"a", file(b"old".to_vec(), 0o644)).unwrap();
    t.insert(b"d/x", file(b"x".to_vec(), 0o644)).unwrap();
    t.insert(b"a", file(b"new".to_vec(), 0o600)).unwrap();
    t.insert(b"d", file(b"d is a file now".to_vec(), 0o644))
        .unwrap();
    let img = build(dir.path(), "replaced.img", &t, &Ext4Options::default());
    fsck(&img);
    assert_eq!(dump(&img, "/a"), b"new");
    assert_eq!(dump(&img, "/d"), b"d is a file now");
    let h = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&img)
        .output()
        .unwrap();
    let h = String::from_utf8_lossy(&h.stdout);
    // Inodes 1..=11 and the two files.
    let free: u64 = h.lines().find(|l| l.starts_with("Free inodes:")).unwrap()[12..]
        .trim()
        .parse()
        .unwrap();
    let count: u64 = h.lines().find(|l| l.starts_with("Inode count:")).unwrap()[12..]
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count - free, 13);
}
