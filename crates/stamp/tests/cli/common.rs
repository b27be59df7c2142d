//! Helpers: run the built `stamp` binary and qemu-img, and unpack the fixtures.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// A fresh temporary directory.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// The result of running a command.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs the stamp binary with `args`.
pub fn stamp(args: &[&str]) -> Run {
    Command::new(env!("CARGO_BIN_EXE_stamp"))
        .args(args)
        .output()
        .expect("run stamp")
        .into()
}

/// Runs qemu-img with `args`.
pub fn qemu_img(args: &[&str]) -> Run {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img")
        .into()
}

/// Runs qemu-img and panics unless it succeeds.
pub fn qemu_ok(args: &[&str]) -> String {
    let r = qemu_img(args);
    assert_eq!(r.code, 0, "qemu-img {args:?}: {}", r.stderr);
    r.stdout
}

/// `p` as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The fixtures in the repository.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/disk-images")
}

/// A copy of the fixtures with every `.gz` decompressed beside its original name.
pub fn fixtures_unpacked() -> tempfile::TempDir {
    let dir = tmp();
    let status = Command::new("cp")
        .args(["-r", &format!("{}/.", s(&fixtures())), s(dir.path())])
        .status()
        .expect("cp");
    assert!(status.success());
    let status = Command::new("sh")
        .args([
            "-c",
            "find . -name '*.gz' -exec gunzip -f {} +; chmod -R u+w .",
        ])
        .current_dir(dir.path())
        .status()
        .expect("gunzip");
    assert!(status.success());
    dir
}

/// Writes a raw file of `size` bytes with a deterministic pattern in `runs` places (holes elsewhere).
pub fn pattern_raw(path: &Path, size: u64, runs: u64, seed: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..runs {
        let len = (next() % (192 * 1024)).max(1).min(size);
        let off = next() % (size - len + 1);
        let data: Vec<u8> = (0..len).map(|i| (next() as u8) ^ (i as u8)).collect();
        f.write_all_at(&data, off).unwrap();
    }
}

/// Files left in `dir` whose names look like stamp's temporary outputs.
pub fn temp_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
        .collect()
}

/// The Debian rootfs tar: `$STAMP_DEBIAN_TAR`, which must exist when set, else
/// `${XDG_CACHE_HOME:-~/.cache}/stamp-dev/debian-rootfs.tar` if it exists.
pub fn debian_tar() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STAMP_DEBIAN_TAR") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "STAMP_DEBIAN_TAR={} does not exist",
            p.display()
        );
        return Some(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let p = cache.join("stamp-dev/debian-rootfs.tar");
    p.is_file().then_some(p)
}

/// The SHA-256 of a file, read in a stream.
pub fn sha256(path: &Path) -> [u8; 32] {
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut h).unwrap();
    h.finalize().into()
}

/// `tar -C dir -cf out .`: a root filesystem tar of the directory; panics unless it succeeds.
pub fn tar_dir(dir: &Path, out: &Path) {
    let ok = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(ok.success(), "tar of {} failed", dir.display());
}
