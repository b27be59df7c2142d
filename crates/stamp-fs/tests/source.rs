//! Tree sources against GNU tar: archives made by the system `tar` (and odd ones made with the
//! `tar` crate) read into a Tree, checked against what `tar tvf` and the headers say.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use stamp_fs::source::{SourceOptions, from_dir, from_tar, load};
use stamp_fs::{Content, Error, Kind, Timestamp, Tree};

const MTIME: i64 = 1_700_000_000;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A host directory with a bit of everything an unprivileged user can make.
fn sample_dir(root: &Path) -> PathBuf {
    let d = root.join("src");
    std::fs::create_dir_all(d.join("etc/sub")).unwrap();
    std::fs::create_dir_all(d.join("empty")).unwrap();
    std::fs::write(d.join("etc/hostname"), b"stamp\n").unwrap();
    std::fs::write(d.join("etc/sub/big"), vec![7u8; 100_000]).unwrap();
    // Longer than ustar's 100-byte name: a PAX `path` record.
    std::fs::write(d.join("etc/sub").join("n".repeat(200)), b"long").unwrap();
    std::fs::write(d.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(d.join("run.sh"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(d.join("empty"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::hard_link(d.join("etc/hostname"), d.join("hostname-link")).unwrap();
    symlink("etc/hostname", d.join("link")).unwrap();
    run(Command::new("mkfifo").arg(d.join("fifo")));
    xattr::set(d.join("etc/hostname"), "user.stamp", b"value").unwrap();
    d
}

fn gnu_tar(dir: &Path, out: &Path, extra: &[&str]) {
    run(Command::new("tar")
        .args([
            "--format=pax",
            "--xattrs",
            "--xattrs-include=*",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--sort=name",
            &format!("--mtime=@{MTIME}"),
        ])
        .args(extra)
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg("."));
}

fn content(tree: &Tree, path: &str) -> Vec<u8> {
    let id = tree
        .get(path.as_bytes())
        .unwrap_or_else(|| panic!("{path} missing"));
    let Kind::File(c) = &tree.entry(id).kind else {
        panic!("{path} is not a file")
    };
    let mut buf = vec![0; c.len() as usize];
    c.read_at(&mut buf, 0).unwrap();
    buf
}

/// Splits a `tar tvf` line into its five leading fields and the rest (the name, and ` -> target`
/// or ` link to target`), which may hold spaces.
fn tvf_fields(line: &str) -> (Vec<&str>, &str) {
    let mut fields = Vec::new();
    let mut rest = line;
    while fields.len() < 5 {
        rest = rest.trim_start();
        let end = rest.find(' ').unwrap_or(rest.len());
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    (fields, rest.strip_prefix(' ').unwrap_or(rest))
}

/// Checks every line of `tar tvf --numeric-owner` against the tree.
fn check_against_tvf(tree: &Tree, tar: &Path) {
    let out = run(Command::new("tar")
        .args(["--numeric-owner", "--quoting-style=literal", "-tvf"])
        .arg(tar));
    let text = String::from_utf8(out).unwrap();
    let mut lines = 0;
    for line in text.lines() {
        // Devices show `major,minor` (GNU tar) or `major, minor` where the size would be.
        let joined = line.replacen(", ", ",", 1);
        let (f, rest) = tvf_fields(&joined);
        let (mode, owner, size) = (f[0], f[1], f[2]);
        let (name, target) = if let Some((n, t)) = rest.split_once(" link to ") {
            (n, Some(t))
        } else if mode.starts_with('l') {
            let (n, t) = rest.split_once(" -> ").unwrap();
            (n, Some(t))
        } else {
            (rest, None)
        };
        let id = tree
            .get(name.as_bytes())
            .unwrap_or_else(|| panic!("{name} not in the tree"));
        let e = tree.entry(id);
        let ty = match &e.kind {
            Kind::File(_) => '-',
            Kind::Dir => 'd',
            Kind::Symlink(_) => 'l',
            Kind::CharDevice { .. } => 'c',
            Kind::BlockDevice { .. } => 'b',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
        };
        // A hard link is listed as `h`: same node as its target.
        if mode.starts_with('h') {
            assert_eq!(tree.get(target.unwrap().as_bytes()), Some(id), "{line}");
        } else {
            assert_eq!(mode.chars().next(), Some(ty), "{line}");
        }
        assert_eq!(&mode[1..], perm_string(e.mode), "{line}");
        assert_eq!(owner, format!("{}/{}", e.uid, e.gid), "{line}");
        match &e.kind {
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                assert_eq!(size, format!("{major},{minor}"), "{line}");
            }
            Kind::File(_) if !mode.starts_with('h') => {
                assert_eq!(size, e.size().to_string(), "{line}")
            }
            Kind::Symlink(t) => assert_eq!(target.unwrap().as_bytes(), t.as_slice(), "{line}"),
            _ => {}
        }
        lines += 1;
    }
    assert!(lines > 0);
}

fn perm_string(mode: u32) -> String {
    let mut s: Vec<char> = "rwxrwxrwx".chars().collect();
    for (i, c) in s.iter_mut().enumerate() {
        if mode & (1 << (8 - i)) == 0 {
            *c = '-';
        }
    }
    let special = |s: &mut Vec<char>, bit: u32, at: usize, set: char, unset: char| {
        if mode & bit != 0 {
            s[at] = if s[at] == '-' { unset } else { set };
        }
    };
    special(&mut s, 0o4000, 2, 's', 'S');
    special(&mut s, 0o2000, 5, 's', 'S');
    special(&mut s, 0o1000, 8, 't', 'T');
    s.into_iter().collect()
}

#[test]
fn gnu_pax_tar_keeps_metadata_links_and_xattrs() {
    let t = tempfile::tempdir().unwrap();
    let dir = sample_dir(t.path());
    let tar = t.path().join("a.tar");
    gnu_tar(&dir, &tar, &[]);
    let loaded = from_tar(&tar, &SourceOptions::default()).unwrap();
    assert!(loaded.spool().is_none(), "a plain tar is read in place");
    let tree = &loaded.tree;
    check_against_tvf(tree, &tar);
    assert_eq!(content(tree, "etc/hostname"), b"stamp\n");
    assert_eq!(content(tree, "etc/sub/big"), vec![7u8; 100_000]);
    assert_eq!(
        content(tree, &format!("etc/sub/{}", "n".repeat(200))),
        b"long"
    );
    // Contents refer into the tar, not copies.
    let id = tree.get(b"etc/sub/big").unwrap();
    let Kind::File(Content::File { path, offset, .. }) = &tree.entry(id).kind else {
        panic!("not in place")
    };
    assert_eq!(path.as_path(), tar.as_path());
    assert_eq!(offset % 512, 0);
    let h = tree.get(b"etc/hostname").unwrap();
    assert_eq!(tree.get(b"hostname-link"), Some(h));
    assert_eq!(tree.names(h), 2);
    let e = tree.entry(h);
    assert_eq!(
        e.xattrs.get("user.stamp").map(Vec::as_slice),
        Some(&b"value"[..])
    );
    assert_eq!(e.mtime, Timestamp::from_secs(MTIME));
    assert_eq!((e.uid, e.gid), (0, 0));
    let run_sh = tree.entry(tree.get(b"run.sh").unwrap());
    assert_eq!(run_sh.mode, 0o4755);
    assert_eq!(tree.entry(tree.get(b"empty").unwrap()).mode, 0o1777);
    assert!(matches!(
        tree.entry(tree.get(b"fifo").unwrap()).kind,
        Kind::Fifo
    ));
    assert!(
        matches!(&tree.entry(tree.get(b"link").unwrap()).kind, Kind::Symlink(t) if t == b"etc/hostname")
    );
}

#[test]
fn compressed_tars_are_detected_by_magic_and_spooled() {
    let t = tempfile::tempdir().unwrap();
    let dir = sample_dir(t.path());
    let plain = t.path().join("a.tar");
    gnu_tar(&dir, &plain, &[]);
    let reference = from_tar(&plain, &SourceOptions::default()).unwrap();
    let reference_paths: Vec<_> = reference.tree.walk().into_iter().map(|(p, _)| p).collect();
    for (tool, flag) in [("gzip", "-c"), ("zstd", "-qc"), ("xz", "-c")] {
        // A misleading name: detection is by content.
        let out = t.path().join(format!("{tool}.tar"));
        let data = run(Command::new(tool).arg(flag).arg(&plain));
        std::fs::write(&out, data).unwrap();
        let loaded = load(out.to_str().unwrap(), &SourceOptions::default()).unwrap();
        let spool = loaded
            .spool()
            .expect("a compressed tar is spooled")
            .to_path_buf();
        assert!(spool.exists());
        let paths: Vec<_> = loaded.tree.walk().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, reference_paths, "{tool}");
        assert_eq!(content(&loaded.tree, "etc/sub/big"), vec![7u8; 100_000]);
        check_against_tvf(&loaded.tree, &out);
        drop(loaded);
        assert!(!spool.exists(), "the spool is removed with the Loaded");
    }
    // bzip2 is refused clearly rather than read as garbage.
    let bz = t.path().join("b.tar");
    std::fs::write(&bz, b"BZh91AY&SY....").unwrap();
    let err = from_tar(&bz, &SourceOptions::default()).unwrap_err();
    assert!(err.to_string().contains("bzip2"), "{err}");
}

#[test]
fn a_tar_from_a_pipe_is_spooled() {
    let t = tempfile::tempdir().unwrap();
    let dir = sample_dir(t.path());
    let plain = t.path().join("a.tar");
    gnu_tar(&dir, &plain, &[]);
    let fifo = t.path().join("pipe");
    run(Command::new("mkfifo").arg(&fifo));
    let (f2, p2) = (fifo.clone(), plain.clone());
    let writer = std::thread::spawn(move || {
        let data = std::fs::read(p2).unwrap();
        std::fs::write(f2, data).unwrap();
    });
    let loaded = load(fifo.to_str().unwrap(), &SourceOptions::default()).unwrap();
    writer.join().unwrap();
    assert!(loaded.spool().is_some());
    assert_eq!(content(&loaded.tree, "etc/sub/big"), vec![7u8; 100_000]);
    check_against_tvf(&loaded.tree, &plain);
}

#[test]
fn directory_source_matches_its_tar() {
    let t = tempfile::tempdir().unwrap();
    let dir = sample_dir(t.path());
    let tar = t.path().join("a.tar");
    gnu_tar(&dir, &tar, &[]);
    let from_tar = from_tar(&tar, &SourceOptions::default()).unwrap();
    let from_dir = from_dir(&dir, &SourceOptions::default()).unwrap();
    let a: Vec<_> = from_tar.tree.walk();
    let b: Vec<_> = from_dir.walk();
    assert_eq!(
        a.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        b.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for ((p, ia), (_, ib)) in a.iter().zip(&b) {
        let (ea, eb) = (from_tar.tree.entry(*ia), from_dir.entry(*ib));
        let path = String::from_utf8_lossy(p);
        assert_eq!(ea.st_mode(), eb.st_mode(), "{path}");
        assert_eq!(ea.size(), eb.size(), "{path}");
        assert_eq!(from_tar.tree.names(*ia), from_dir.names(*ib), "{path}");
        if let Kind::File(_) = ea.kind {
            assert_eq!(content(&from_tar.tree, &path), content(&from_dir, &path));
        }
    }
    let h = from_dir.get(b"etc/hostname").unwrap();
    assert_eq!(from_dir.get(b"hostname-link"), Some(h));
    let e = from_dir.entry(h);
    assert_eq!(
        e.xattrs.get("user.stamp").map(Vec::as_slice),
        Some(&b"value"[..])
    );
    // Host ownership.
    let meta = std::fs::metadata(dir.join("etc/hostname")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((e.uid, e.gid), (meta.uid(), meta.gid()));
    // A symlink is not followed.
    assert!(matches!(
        from_dir.entry(from_dir.get(b"link").unwrap()).kind,
        Kind::Symlink(_)
    ));
}

#[test]
fn source_date_epoch_clamps_every_time() {
    let t = tempfile::tempdir().unwrap();
    let dir = sample_dir(t.path());
    let opts = SourceOptions {
        source_date_epoch: Some(1_000),
    };
    let tree = from_dir(&dir, &opts).unwrap();
    for (_, id) in tree.walk() {
        let e = tree.entry(id);
        for ts in [e.mtime, e.atime, e.ctime] {
            assert_eq!(ts, Timestamp::from_secs(1_000));
        }
    }
    let tar = t.path().join("a.tar");
    gnu_tar(&dir, &tar, &[]);
    let loaded = from_tar(&tar, &opts).unwrap();
    for (_, id) in loaded.tree.walk() {
        assert!(loaded.tree.entry(id).mtime <= Timestamp::from_secs(1_000));
    }
}

#[test]
fn gnu_sparse_members_are_refused_by_name() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("s");
    std::fs::create_dir(&d).unwrap();
    let f = std::fs::File::create(d.join("holey")).unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    for format in ["--format=gnu", "--format=pax"] {
        let tar = t.path().join("s.tar");
        run(Command::new("tar")
            .args([format, "--sparse", "-C"])
            .arg(&d)
            .arg("-cf")
            .arg(&tar)
            .arg("holey"));
        let err = from_tar(&tar, &SourceOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sparse") && msg.contains("holey"), "{msg}");
    }
}

// Odd archives written with the tar crate.

fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(MTIME as u64);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writes `name` into the header's name field as is (the crate's setters refuse `..`).
fn raw_name(h: &mut tar::Header, name: &[u8]) {
    let n = &mut h.as_old_mut().name;
    n.fill(0);
    n[..name.len()].copy_from_slice(name);
}

fn write_tar(path: &Path, f: impl FnOnce(&mut tar::Builder<std::fs::File>)) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    f(&mut b);
    b.finish().unwrap();
}

fn append(b: &mut tar::Builder<std::fs::File>, name: &[u8], mut h: tar::Header, data: &[u8]) {
    raw_name(&mut h, name);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

#[test]
fn escaping_paths_are_refused_naming_the_tar_and_the_entry() {
    let t = tempfile::tempdir().unwrap();
    for bad in [&b"../etc/passwd"[..], b"a/../../x"] {
        let tar = t.path().join("evil.tar");
        write_tar(&tar, |b| {
            append(b, b"ok", header(tar::EntryType::Regular, 2), b"ok");
            append(b, bad, header(tar::EntryType::Regular, 1), b"x");
        });
        let err = from_tar(&tar, &SourceOptions::default()).unwrap_err();
        match &err {
            Error::BadPath {
                source_name, path, ..
            } => {
                assert_eq!(source_name, &tar.display().to_string());
                assert_eq!(path.as_bytes(), bad);
            }
            e => panic!("expected BadPath, got {e}"),
        }
    }
}

#[test]
fn hard_links_before_their_target_and_duplicates() {
    let t = tempfile::tempdir().unwrap();
    let tar = t.path().join("odd.tar");
    write_tar(&tar, |b| {
        let mut l = header(tar::EntryType::Link, 0);
        l.set_link_name("bin/real").unwrap();
        append(b, b"bin/early", l, b"");
        append(b, b"bin/real", header(tar::EntryType::Regular, 3), b"one");
        // A later entry replaces an earlier one with the same path.
        append(b, b"dup", header(tar::EntryType::Regular, 5), b"first");
        append(b, b"dup", header(tar::EntryType::Regular, 6), b"second");
    });
    let loaded = from_tar(&tar, &SourceOptions::default()).unwrap();
    let tree = &loaded.tree;
    let real = tree.get(b"bin/real").unwrap();
    assert_eq!(tree.get(b"bin/early"), Some(real));
    assert_eq!(tree.names(real), 2);
    assert_eq!(content(tree, "bin/early"), b"one");
    assert_eq!(content(tree, "dup"), b"second");

    let missing = t.path().join("missing.tar");
    write_tar(&missing, |b| {
        let mut l = header(tar::EntryType::Link, 0);
        l.set_link_name("nowhere").unwrap();
        append(b, b"dangling", l, b"");
    });
    let err = from_tar(&missing, &SourceOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::MissingLinkTarget { link, target } if link == "dangling" && target == "nowhere"),
        "{err}"
    );
}

#[test]
fn long_names_big_ids_devices_pax_times_and_xattrs() {
    let t = tempfile::tempdir().unwrap();
    let tar = t.path().join("pax.tar");
    let long = format!("{}/{}", "d".repeat(150), "f".repeat(150));
    write_tar(&tar, |b| {
        // A 301-byte path: a GNU long-name entry.
        let mut h = header(tar::EntryType::Regular, 4);
        b.append_data(&mut h, &long, &b"long"[..]).unwrap();
        // uid 100000 and fractional times in PAX records, xattrs both ways.
        b.append_pax_extensions([
            ("uid", &b"100000"[..]),
            ("gid", b"3000000"),
            ("mtime", b"1700000000.123456789"),
            ("atime", b"1600000000.5"),
            (
                "SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00",
            ),
            ("LIBARCHIVE.xattr.user.a%3Db", b"aGVsbG8="),
        ])
        .unwrap();
        append(b, b"pax", header(tar::EntryType::Regular, 1), b"p");
        let mut c = header(tar::EntryType::Char, 0);
        c.set_device_major(1).unwrap();
        c.set_device_minor(3).unwrap();
        append(b, b"dev/null", c, b"");
        let mut d = header(tar::EntryType::Block, 0);
        d.set_device_major(259).unwrap();
        d.set_device_minor(70000).unwrap();
        append(b, b"dev/big", d, b"");
    });
    let loaded = from_tar(&tar, &SourceOptions::default()).unwrap();
    let tree = &loaded.tree;
    assert_eq!(content(tree, &long), b"long");
    let e = tree.entry(tree.get(b"pax").unwrap());
    assert_eq!((e.uid, e.gid), (100_000, 3_000_000));
    assert_eq!(
        e.mtime,
        Timestamp {
            sec: 1_700_000_000,
            nsec: 123_456_789
        }
    );
    assert_eq!(
        e.atime,
        Timestamp {
            sec: 1_600_000_000,
            nsec: 500_000_000
        }
    );
    assert_eq!(e.ctime, e.mtime);
    assert_eq!(
        e.xattrs.get("security.capability").map(Vec::as_slice),
        Some(&b"\x01\x00\x00\x02\x00\x20\x00\x00"[..])
    );
    assert_eq!(
        e.xattrs.get("user.a=b").map(Vec::as_slice),
        Some(&b"hello"[..])
    );
    assert!(matches!(
        tree.entry(tree.get(b"dev/null").unwrap()).kind,
        Kind::CharDevice { major: 1, minor: 3 }
    ));
    assert!(matches!(
        tree.entry(tree.get(b"dev/big").unwrap()).kind,
        Kind::BlockDevice {
            major: 259,
            minor: 70000
        }
    ));
    // The crate's headers agree (GNU tar reads the same archive).
    check_against_tvf(tree, &tar);
}

#[test]
fn load_rejects_what_is_not_there() {
    let err = load("/nonexistent/stamp/src", &SourceOptions::default()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/stamp/src"), "{err}");
}

/// The real Debian root filesystem (scripts/debian-image.sh), when it has been made: every entry
/// of `tar tvf` agrees with the tree. Skipped (with a message) when the cached tar is absent.
#[test]
fn debian_rootfs_tar_matches_tar_tvf() {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap();
    let tar = cache.join("stamp-dev/debian-rootfs.tar");
    if !tar.exists() {
        eprintln!("skipped: no {}", tar.display());
        return;
    }
    let loaded = from_tar(&tar, &SourceOptions::default()).unwrap();
    assert!(loaded.tree.len() > 5_000);
    check_against_tvf(&loaded.tree, &tar);
}
