//! gce tests: what stamp writes, GNU tar lists and extracts, gzip tests clean, Python's tarfile
//! reads as a GNU archive, and the extracted disk.raw is the source disk (by qemu-img compare),
//! padded with zeros to a whole GiB; the same disk gives the same bytes.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use super::common::*;
use stamp_disk::{CreateOptions, Extent, Format};

const GIB: u64 = 1 << 30;

/// Runs `cmd`, asserting success; returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Extracts the archive at `gz` with GNU tar into `dir/x` and returns the path of disk.raw.
fn gnu_extract(gz: &Path, dir: &Path) -> PathBuf {
    let x = dir.join("x");
    std::fs::create_dir_all(&x).unwrap();
    run(Command::new("tar").arg("-xzf").arg(gz).arg("-C").arg(&x));
    let names: Vec<_> = std::fs::read_dir(&x)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["disk.raw"]);
    x.join("disk.raw")
}

/// Checks the archive at `gz` with gzip, GNU tar and Python's tarfile: one GNU (oldgnu) member
/// `disk.raw` of `size` bytes (a whole number of GiB), mode 0644, owner 0:0, time `mtime`.
fn check_archive(gz: &Path, size: u64, mtime: u64) {
    assert_eq!(size % GIB, 0);
    run(Command::new("gzip").arg("-t").arg(gz));
    let list = run(Command::new("tar")
        .arg("--numeric-owner")
        .arg("-tvzf")
        .arg(gz)
        .env("TZ", "UTC"));
    let fields: Vec<_> = list.split_whitespace().collect();
    assert_eq!(fields.len(), 6, "{list}");
    assert_eq!(fields[0], "-rw-r--r--", "{list}");
    assert_eq!(fields[1], "0/0", "{list}");
    assert_eq!(fields[2], size.to_string(), "{list}");
    assert_eq!(fields[5], "disk.raw", "{list}");
    let py = r#"
import gzip, sys, tarfile
path, size, mtime = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with gzip.open(path, "rb") as f:
    head = f.read(512)
assert head[257:265] == tarfile.GNU_MAGIC, head[257:265]
with tarfile.open(path, "r:gz") as t:
    members = t.getmembers()
    assert [m.name for m in members] == ["disk.raw"], members
    m = members[0]
    assert m.isreg() and not m.issparse(), m.type
    assert m.size == size, (m.size, size)
    assert (m.mode, m.uid, m.gid, m.mtime) == (0o644, 0, 0, mtime), (m.mode, m.uid, m.gid, m.mtime)
print("ok")
"#;
    let out = run(Command::new("python3").args([
        "-c",
        py,
        gz.to_str().unwrap(),
        &size.to_string(),
        &mtime.to_string(),
    ]));
    assert_eq!(out.trim(), "ok");
}

/// Writes `src` (a raw file) as a gce image at `dst` through the public create path.
fn to_gce(src: &Path, dst: &Path) -> stamp_disk::DiskSummary {
    let r = stamp_disk::open(src, None).unwrap();
    let w = stamp_disk::create(
        dst,
        Format::Gce,
        r.virtual_size(),
        &CreateOptions::default(),
    )
    .unwrap();
    let mut sums = stamp_disk::convert::convert(r.as_ref(), vec![w], &stamp_disk::NoProgress)
        .unwrap_or_else(|e| panic!("convert to {}: {e}", dst.display()));
    sums.remove(0)
}

#[test]
fn gnu_tar_python_and_qemu_img_read_back_a_data_and_zero_mix() {
    let d = tmp();
    let src = d.path().join("src.raw");
    // Not a whole GiB, data in random places and in the very last bytes.
    let size = GIB - (3 << 20) - 512;
    random_sparse_raw(&src, size, 60, 7);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(&[0xee; 700], size - 700).unwrap();
    }
    let qcow = d.path().join("src.qcow2");
    qemu_convert(&src, &qcow, "qcow2", "", false);
    let gz = d.path().join("disk.tar.gz");
    let r = stamp_disk::open(&qcow, None).unwrap();
    let w = stamp_disk::create(&gz, Format::Gce, size, &CreateOptions::default()).unwrap();
    let sum = stamp_disk::convert::convert(r.as_ref(), vec![w], &stamp_disk::NoProgress)
        .unwrap()
        .remove(0);
    assert_eq!(sum.virtual_size, GIB);
    assert_eq!(sum.file_size, std::fs::metadata(&gz).unwrap().len());
    check_archive(&gz, GIB, 0);
    let raw = gnu_extract(&gz, d.path());
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), GIB);
    // The padding to a whole GiB is compared against zeros.
    assert_qemu_identical(&qcow, &raw);
    assert_eq!(
        stamp_disk::detect_path(&gz).unwrap(),
        Format::Gce,
        "not detected"
    );
    // Mostly zeros: the archive is small.
    assert!(sum.file_size < 20 << 20, "{}", sum.file_size);
}

#[test]
fn the_same_disk_gives_the_same_bytes() {
    let d = tmp();
    let src = d.path().join("src.raw");
    random_sparse_raw(&src, 40 << 20, 30, 3);
    let a = d.path().join("a.tar.gz");
    let b = d.path().join("b.tar.gz");
    to_gce(&src, &a);
    to_gce(&src, &b);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn an_empty_disk_is_a_gib_of_zeros_in_a_small_file() {
    let d = tmp();
    let src = d.path().join("empty.raw");
    std::fs::File::create(&src)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let gz = d.path().join("empty.tar.gz");
    let sum = to_gce(&src, &gz);
    assert_eq!(sum.data_bytes, 0);
    // Deflate stores zeros at best about 1:1000.
    assert!(sum.file_size < 2 << 20, "{}", sum.file_size);
    check_archive(&gz, GIB, 0);
    let raw = gnu_extract(&gz, d.path());
    assert_qemu_identical(&src, &raw);
}

#[test]
fn the_header_is_what_gnu_tar_writes() {
    let d = tmp();
    let raw = d.path().join("disk.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(9 * GIB)
        .unwrap();
    // GNU tar stops at the pipe's end after the header: it does not read 9 GiB.
    let out = Command::new("sh")
        .arg("-c")
        .arg("tar --format=oldgnu --numeric-owner --owner=0 --group=0 --mode=0644 --mtime=@0 -cf - disk.raw | head -c 512")
        .current_dir(d.path())
        .output()
        .unwrap();
    assert_eq!(out.stdout.len(), 512);
    assert_eq!(
        &stamp_disk::gce::oldgnu_header("disk.raw", 9 * GIB, 0)[..],
        &out.stdout[..]
    );
}

#[test]
fn info_says_reading_is_unsupported() {
    let d = tmp();
    let gz = d.path().join("d.tar.gz");
    let mut w = stamp_disk::create(&gz, Format::Gce, 1 << 20, &CreateOptions::default()).unwrap();
    w.write_extent(Extent::Data {
        offset: 0,
        bytes: bytes::Bytes::from_static(b"hello"),
    })
    .unwrap();
    w.finish().unwrap();
    let Err(e) = stamp_disk::open(&gz, None) else {
        panic!("a gce image opened");
    };
    let msg = e.to_string();
    assert!(msg.contains("gce") && msg.contains("tar -xzf"), "{msg}");
    // A plain gzip file is not taken for one.
    let other = d.path().join("o.gz");
    run(Command::new("sh").arg("-c").arg(format!(
        "head -c 4096 /dev/zero | gzip -n > {}",
        other.display()
    )));
    assert_eq!(stamp_disk::detect_path(&other).unwrap(), Format::Raw);
}

/// Writes a small gce image at `$STAMP_GCE_TEST_OUT` for the test below, which runs it in a
/// child process with `SOURCE_DATE_EPOCH` set (the environment of this process is not changed).
#[test]
#[ignore = "run by source_date_epoch_sets_the_member_time"]
fn write_for_source_date_epoch() {
    if let Ok(out) = std::env::var("STAMP_GCE_TEST_OUT") {
        stamp_disk::create(
            Path::new(&out),
            Format::Gce,
            4096,
            &CreateOptions::default(),
        )
        .unwrap()
        .finish()
        .unwrap();
    }
}

#[test]
fn source_date_epoch_sets_the_member_time() {
    let d = tmp();
    let gz = d.path().join("t.tar.gz");
    run(Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "gce::write_for_source_date_epoch"])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("STAMP_GCE_TEST_OUT", &gz));
    check_archive(&gz, GIB, 1_700_000_000);
}
