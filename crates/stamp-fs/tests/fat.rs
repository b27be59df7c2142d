//! FAT volumes checked with the real tools: fsck.fat, mtools (mdir, mcopy) and fatlabel.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use stamp_disk::{CreateOptions, Format};
use stamp_fs::fat::{FatOptions, fat};
use stamp_fs::{Content, Entry, Error, Kind, Timestamp, Tree};

const T: i64 = 1_700_000_000; // 2023-11-14 22:13:20 UTC

fn file(data: impl Into<Bytes>) -> Entry {
    Entry::new(
        Kind::File(Content::Bytes(data.into())),
        0o644,
        Timestamp::from_secs(T),
    )
}

fn dir() -> Entry {
    Entry::new(Kind::Dir, 0o755, Timestamp::from_secs(T))
}

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A tree with every case the writer must handle, and the files it holds (path, content).
fn sample() -> (Tree, Vec<(String, Vec<u8>)>) {
    let mut t = Tree::new(dir());
    let mut files = Vec::new();
    let mut add = |t: &mut Tree, p: &str, data: Vec<u8>| {
        t.insert(p.as_bytes(), file(data.clone())).unwrap();
        files.push((p.to_string(), data));
    };
    add(&mut t, "EFI/BOOT/BOOTX64.EFI", noise(70_000, 1));
    add(&mut t, "EFI/debian/grubx64.efi", noise(5000, 2));
    add(&mut t, "a/b/c/deep file.txt", b"deep\n".to_vec());
    add(
        &mut t,
        "Long File Name With Spaces.txt",
        b"spaces\n".to_vec(),
    );
    add(&mut t, "Ünïcødé ✓名前.txt", b"unicode\n".to_vec());
    add(&mut t, "collide one.txt", b"1\n".to_vec());
    add(&mut t, "collide two.txt", b"2\n".to_vec());
    add(&mut t, "collide three.txt", b"3\n".to_vec());
    add(&mut t, "empty", Vec::new());
    add(&mut t, "big.bin", noise(3 << 20, 3));
    add(&mut t, "exactly-thirteen", b"13".to_vec());
    for i in 0..500 {
        add(
            &mut t,
            &format!("many/file number {i:03}.dat"),
            format!("{i}\n").into_bytes(),
        );
    }
    t.insert(b"empty dir", dir()).unwrap();
    // A hard link becomes a second copy (FAT has no links; shared clusters would be cross-links).
    t.link(b"EFI/BOOT/grub.efi", b"EFI/debian/grubx64.efi")
        .unwrap();
    files.push(("EFI/BOOT/grub.efi".into(), noise(5000, 2)));
    (t, files)
}

fn write_raw(tree: &Tree, opts: &FatOptions, path: &Path) -> u64 {
    let img = fat(tree, opts).unwrap();
    let size = img.size;
    let w = stamp_disk::create(path, Format::Raw, size, &CreateOptions::default()).unwrap();
    img.write_to(vec![w]).unwrap();
    size
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

/// fsck.fat -n exits 0 and says nothing but its banner and the summary line.
pub fn assert_fsck_clean(img: &Path) {
    let (ok, out) = run("fsck.fat", &["-n", "-V", img.to_str().unwrap()]);
    assert!(ok, "fsck.fat failed:\n{out}");
    let noise: Vec<&str> = out
        .lines()
        .filter(|l| {
            !l.starts_with("fsck.fat ")
                && !l.contains("files,")
                && !l.starts_with("Checking we can access the last sector")
                && !l.starts_with("Starting check/repair pass")
                && !l.starts_with("Starting verification pass")
                && !l.trim().is_empty()
        })
        .collect();
    assert!(noise.is_empty(), "fsck.fat complained:\n{out}");
}

fn check_contents(img: &Path, files: &[(String, Vec<u8>)]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (ok, msg) = run(
        "mcopy",
        &[
            "-s",
            "-n",
            "-i",
            img.to_str().unwrap(),
            "::/",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "mcopy failed: {msg}");
    for (p, data) in files {
        let got = std::fs::read(out.join(p)).unwrap_or_else(|e| panic!("{p}: {e}\n{msg}"));
        assert!(got == *data, "{p}: content differs");
    }
    let mut n = 0;
    count(&out, &mut n);
    assert_eq!(n, files.len(), "mcopy extracted other files");
}

fn count(d: &Path, n: &mut usize) {
    for e in std::fs::read_dir(d).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            count(&e.path(), n);
        } else {
            *n += 1;
        }
    }
}

fn img_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn fat32_esp_is_clean_and_mtools_reads_every_file() {
    let (tree, files) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let img = img_path(&tmp, "esp.img");
    let opts = FatOptions {
        size: Some(256 << 20),
        label: Some("ESP".into()),
        ..Default::default()
    };
    write_raw(&tree, &opts, &img);
    assert_fsck_clean(&img);
    check_contents(&img, &files);
    let (ok, label) = run("fatlabel", &[img.to_str().unwrap()]);
    assert!(ok);
    assert_eq!(label.trim(), "ESP");
    let (_, file_s) = run("file", &["-s", img.to_str().unwrap()]);
    assert!(file_s.contains("FAT (32 bit)"), "{file_s}");
    // 8.3 names as Windows makes them, long names shown beside them.
    let (ok, list) = run("mdir", &["-i", img.to_str().unwrap(), "::/"]);
    assert!(ok, "{list}");
    assert!(list.contains("Volume in drive : is ESP"), "{list}");
    for short in [
        "COLLID~1 TXT",
        "COLLID~2 TXT",
        "COLLID~3 TXT",
        "LONGFI~1 TXT",
    ] {
        assert!(list.contains(short), "{short} missing:\n{list}");
    }
    assert!(list.contains("Long File Name With Spaces.txt"), "{list}");
    let (ok, list) = run("mdir", &["-i", img.to_str().unwrap(), "::/EFI/BOOT"]);
    assert!(ok && list.contains("BOOTX64  EFI     70000"), "{list}");
    assert!(list.contains("2023-11-14  22:13"), "{list}");
}

#[test]
fn fat32_with_4k_clusters_is_clean_and_keeps_read_only_files() {
    let (mut tree, mut files) = sample();
    let ro = Entry::new(
        Kind::File(Content::Bytes(Bytes::from_static(b"ro\n"))),
        0o444,
        Timestamp::from_secs(T),
    );
    tree.insert(b"EFI/readonly.txt", ro).unwrap();
    files.push(("EFI/readonly.txt".into(), b"ro\n".to_vec()));
    let tmp = tempfile::tempdir().unwrap();
    let img = img_path(&tmp, "big.img");
    let opts = FatOptions {
        size: Some(600 << 20),
        label: Some("BIG ESP".into()),
        ..Default::default()
    };
    write_raw(&tree, &opts, &img);
    let (ok, out) = run("fsck.fat", &["-n", "-v", img.to_str().unwrap()]);
    assert!(ok && out.contains("4096 bytes per cluster"), "{out}");
    assert_fsck_clean(&img);
    check_contents(&img, &files);
    let (ok, attrs) = run(
        "mattrib",
        &["-i", img.to_str().unwrap(), "::/EFI/readonly.txt"],
    );
    assert!(ok, "{attrs}");
    let flags: Vec<&str> = attrs.split_whitespace().collect();
    assert_eq!(flags, ["A", "R", "::/EFI/readonly.txt"], "{attrs}");
    let (_, label) = run("fatlabel", &[img.to_str().unwrap()]);
    assert_eq!(label.trim(), "BIG ESP");
}

#[test]
fn fat16_and_fat12_small_volumes_are_clean() {
    let mut tree = Tree::new(dir());
    let mut files = Vec::new();
    for i in 0..40 {
        let p = format!("d{}/Some File {i}.txt", i % 3);
        let data = noise(1000 + i * 300, i as u64);
        tree.insert(p.as_bytes(), file(data.clone())).unwrap();
        files.push((p, data));
    }
    let tmp = tempfile::tempdir().unwrap();
    for (size, kind) in [(16u64 << 20, "FAT (16 bit)"), (2 << 20, "FAT (12 bit)")] {
        let img = img_path(&tmp, &format!("{size}.img"));
        let opts = FatOptions {
            size: Some(size),
            label: Some("small".into()),
            ..Default::default()
        };
        write_raw(&tree, &opts, &img);
        assert_fsck_clean(&img);
        check_contents(&img, &files);
        let (_, file_s) = run("file", &["-s", img.to_str().unwrap()]);
        assert!(file_s.contains(kind), "{file_s}");
        assert!(file_s.contains("SMALL"), "{file_s}");
    }
}

#[test]
fn automatic_size_fits_the_content() {
    let (tree, files) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let img = img_path(&tmp, "auto.img");
    let size = write_raw(&tree, &FatOptions::default(), &img);
    assert!(size % (1 << 20) == 0, "size {size}");
    assert_fsck_clean(&img);
    // Headroom: at least 9% of the clusters free, and not much more than needed.
    let (_, out) = run("fsck.fat", &["-n", img.to_str().unwrap()]);
    let counts = out
        .split_whitespace()
        .find(|w| w.contains('/') && w.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap();
    let (used, total) = counts.split_once('/').unwrap();
    let (used, total): (u64, u64) = (used.parse().unwrap(), total.parse().unwrap());
    assert!(used * 100 <= total * 91, "{out}");
    assert!(total * 512 <= used * 512 * 3 / 2 + (1 << 20), "{out}");
    check_contents(&img, &files);
}

#[test]
fn two_builds_are_identical_and_the_volume_id_follows_the_content() {
    let (tree, _) = sample();
    let opts = FatOptions {
        size: Some(100 << 20),
        ..Default::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        img_path(&tmp, "a"),
        img_path(&tmp, "b"),
        img_path(&tmp, "c"),
    );
    write_raw(&tree, &opts, &a);
    write_raw(&tree, &opts, &b);
    let (da, db) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(da == db);
    let mut other = tree.clone();
    other.insert(b"extra", file(b"x".to_vec())).unwrap();
    write_raw(&other, &opts, &c);
    let dc = std::fs::read(&c).unwrap();
    // FAT32: the volume id is at 67.
    assert_ne!(da[67..71], dc[67..71]);
    let fixed = FatOptions {
        volume_id: Some(0x1234_5678),
        ..opts
    };
    write_raw(&tree, &fixed, &c);
    let (_, out) = run("file", &["-s", c.to_str().unwrap()]);
    assert!(out.contains("0x12345678"), "{out}");
}

#[test]
fn timestamps_clamp_to_source_date_epoch_and_floor_at_1980() {
    let mut tree = Tree::new(dir());
    tree.insert(
        b"OLD.TXT",
        Entry::new(
            Kind::File(Content::Bytes(Bytes::from_static(b"o"))),
            0o644,
            Timestamp::from_secs(0),
        ),
    )
    .unwrap();
    tree.insert(b"NEW.TXT", file(b"n".to_vec())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let img = img_path(&tmp, "t.img");
    let opts = FatOptions {
        size: Some(8 << 20),
        source_date_epoch: Some(1_000_000_000), // 2001-09-09 01:46:40
        ..Default::default()
    };
    write_raw(&tree, &opts, &img);
    assert_fsck_clean(&img);
    let (ok, list) = run("mdir", &["-i", img.to_str().unwrap(), "::/"]);
    assert!(ok, "{list}");
    let line = |n: &str| {
        list.lines()
            .find(|l| l.starts_with(n))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("OLD").contains("1980-01-01"), "{list}");
    assert!(line("NEW").contains("2001-09-09   1:46"), "{list}");
}

#[test]
fn bad_input_gives_clear_errors() {
    let mut t = Tree::new(dir());
    t.insert(
        b"link",
        Entry::new(Kind::Symlink(b"x".to_vec()), 0o777, Timestamp::default()),
    )
    .unwrap();
    assert!(matches!(
        fat(&t, &FatOptions::default()),
        Err(Error::BadPath { .. })
    ));

    let mut t = Tree::new(dir());
    t.insert(b"Readme", file(b"a".to_vec())).unwrap();
    t.insert(b"README", file(b"b".to_vec())).unwrap();
    assert!(matches!(
        fat(&t, &FatOptions::default()),
        Err(Error::BadPath { .. })
    ));

    let mut t = Tree::new(dir());
    t.insert(b"a:b", file(b"a".to_vec())).unwrap();
    assert!(matches!(
        fat(&t, &FatOptions::default()),
        Err(Error::BadPath { .. })
    ));

    let mut t = Tree::new(dir());
    t.insert(b"big", file(noise(3 << 20, 9))).unwrap();
    let small = FatOptions {
        size: Some(2 << 20),
        ..Default::default()
    };
    assert!(matches!(fat(&t, &small), Err(Error::NoSpace { .. })));

    let bad_label = FatOptions {
        label: Some("much too long label".into()),
        ..Default::default()
    };
    assert!(matches!(
        fat(&Tree::new(dir()), &bad_label),
        Err(Error::InvalidOption(_))
    ));
}

#[test]
fn file_contents_stream_from_a_host_file_region() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host.bin");
    let data = noise(5 << 20, 11);
    std::fs::write(&host, &data).unwrap();
    let host = std::sync::Arc::new(host);
    let mut tree = Tree::new(dir());
    let (off, len) = (12_345u64, 3_000_000u64);
    let region = Content::File {
        path: host.clone(),
        offset: off,
        len,
    };
    tree.insert(
        b"vmlinuz",
        Entry::new(Kind::File(region), 0o644, Timestamp::from_secs(T)),
    )
    .unwrap();
    // Zeros inside a file are left as a gap and still read back as zeros.
    let mut sparse = vec![0u8; 3 << 20];
    sparse[(2 << 20) + 7] = 1;
    tree.insert(b"sparse.bin", file(sparse.clone())).unwrap();
    let img = img_path(&tmp, "s.img");
    write_raw(&tree, &FatOptions::default(), &img);
    assert_fsck_clean(&img);
    let want = data[off as usize..(off + len) as usize].to_vec();
    check_contents(
        &img,
        &[("vmlinuz".into(), want), ("sparse.bin".into(), sparse)],
    );
    // An empty tree still makes a valid volume.
    let empty = img_path(&tmp, "empty.img");
    write_raw(&Tree::new(dir()), &FatOptions::default(), &empty);
    assert_fsck_clean(&empty);
}

#[test]
fn fat16_root_with_more_than_512_entries_grows_its_root_region() {
    let mut tree = Tree::new(dir());
    let mut files = Vec::new();
    for i in 0..300 {
        let p = format!("root file {i}.txt");
        tree.insert(p.as_bytes(), file(p.clone().into_bytes()))
            .unwrap();
        files.push((p.clone(), p.into_bytes()));
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = img_path(&tmp, "root.img");
    let opts = FatOptions {
        size: Some(20 << 20),
        ..Default::default()
    };
    write_raw(&tree, &opts, &img);
    let (_, out) = run("file", &["-s", img.to_str().unwrap()]);
    // 300 names of 3 entries each (2 long-name parts and the short entry), in whole sectors.
    assert!(
        out.contains("FAT (16 bit)") && out.contains("root entries 912"),
        "{out}"
    );
    assert_fsck_clean(&img);
    check_contents(&img, &files);
}

mod random {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Any tree and size gives a clear error or an image whose extents are in order and
        /// within its size, never a panic; a few of them go through fsck.fat.
        #[test]
        fn random_trees_give_ordered_images_or_errors(
            entries in proptest::collection::vec(
                ("[a-zA-Z0-9 ._~ü名-]{0,23}[a-zA-Z0-9ü名]", 0usize..4, 0usize..6000, any::<bool>()),
                0..40,
            ),
            size in proptest::option::of(0u64..(70 << 20)),
            label in proptest::option::of("[a-z0-9 ]{0,12}"),
        ) {
            let mut t = Tree::new(dir());
            for (name, depth, len, is_dir) in &entries {
                let mut p = String::new();
                for d in 0..*depth {
                    p.push_str(&format!("dir{d}/"));
                }
                p.push_str(name);
                let e = if *is_dir { dir() } else { file(noise(*len, *len as u64)) };
                let _ = t.insert(p.as_bytes(), e);
            }
            let opts = FatOptions { size, label, ..Default::default() };
            let img = match fat(&t, &opts) {
                Ok(img) => img,
                Err(e) => {
                    prop_assert!(
                        matches!(e, Error::NoSpace { .. } | Error::InvalidOption(_) | Error::BadPath { .. }),
                        "{e}"
                    );
                    return Ok(());
                }
            };
            let mut next = 0;
            let size = img.size;
            let mut bytes = Vec::new();
            for e in img.extents {
                let e = e.unwrap();
                prop_assert!(e.offset() >= next && e.end() <= size);
                next = e.end();
                bytes.push(e);
            }
            if size <= 8 << 20 {
                let tmp = tempfile::tempdir().unwrap();
                let p = tmp.path().join("r.img");
                let w = stamp_disk::create(&p, Format::Raw, size, &CreateOptions::default()).unwrap();
                stamp_fs::Image { size, extents: Box::new(bytes.into_iter().map(Ok)) }
                    .write_to(vec![w])
                    .unwrap();
                assert_fsck_clean(&p);
            }
        }
    }
}
