//! Helpers shared by the format tests: qemu-img as the reference reader and writer, random sparse
//! disks, and mutation fuzzing through the public `open` path.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{Rng, SeedableRng, rngs::StdRng};
use stamp_disk::{CreateOptions, DiskReader, Format, NoProgress};

/// A fresh temporary directory for one test.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// The real-world fixtures directory (tests/fixtures/disk-images in the repository).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/disk-images")
}

/// Runs qemu-img with `args`, panicking with its stderr if it fails; returns stdout.
pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs qemu-img with `args` and returns (exit code, stdout+stderr) without asserting.
pub fn qemu_img_status(args: &[&str]) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// `qemu-img info --output=json` of `path` as JSON.
pub fn qemu_info(path: &Path) -> serde_json::Value {
    let s = qemu_img(&["info", "--output=json", path.to_str().unwrap()]);
    serde_json::from_str(&s).expect("qemu-img info json")
}

/// The disk contents of `path` as qemu-img reads them (`qemu-img convert -O raw`).
pub fn qemu_read(path: &Path, fmt: Option<&str>) -> Vec<u8> {
    let dir = tmp();
    let out = dir.path().join("qemu.raw");
    let mut args = vec!["convert"];
    if let Some(f) = fmt {
        args.extend(["-f", f]);
    }
    args.extend(["-O", "raw", path.to_str().unwrap(), out.to_str().unwrap()]);
    qemu_img(&args);
    std::fs::read(&out).expect("read qemu output")
}

/// The disk contents of `path` as stamp reads them, through `read_at` of the whole disk.
pub fn stamp_read(path: &Path) -> Vec<u8> {
    let r = stamp_disk::open(path, None)
        .unwrap_or_else(|e| panic!("stamp open {}: {e}", path.display()));
    read_all(r.as_ref())
}

/// Reads a whole disk through `read_at` in uneven pieces (to exercise boundaries), and checks that
/// everything outside `allocation()` is zero.
pub fn read_all(r: &dyn DiskReader) -> Vec<u8> {
    let size = r.virtual_size() as usize;
    let mut buf = vec![0u8; size];
    let mut pos = 0usize;
    let mut step = 1usize << 20;
    while pos < size {
        let n = step.min(size - pos);
        r.read_at(&mut buf[pos..pos + n], pos as u64)
            .unwrap_or_else(|e| panic!("read_at {pos:#x}+{n}: {e}"));
        pos += n;
        step = if step == 1 << 20 {
            (1 << 20) + 4097
        } else {
            1 << 20
        };
    }
    let alloc = r.allocation().expect("allocation");
    let mut last = 0u64;
    for a in &alloc {
        assert!(a.start >= last, "allocation not sorted: {alloc:?}");
        assert!(
            buf[last as usize..(a.start as usize).min(size)]
                .iter()
                .all(|b| *b == 0),
            "data outside allocation between {last:#x} and {:#x}",
            a.start
        );
        last = a.end;
    }
    if (last as usize) < size {
        assert!(
            buf[last as usize..].iter().all(|b| *b == 0),
            "data after last allocation {last:#x}"
        );
    }
    buf
}

/// Asserts that stamp reads `path` exactly as qemu-img does; returns the contents.
pub fn assert_reads_like_qemu(path: &Path) -> Vec<u8> {
    let q = qemu_read(path, None);
    let s = stamp_read(path);
    assert_eq!(q.len(), s.len(), "virtual size of {}", path.display());
    if let Some(i) = q.iter().zip(&s).position(|(a, b)| a != b) {
        panic!(
            "{}: stamp and qemu-img differ first at byte {i:#x}",
            path.display()
        );
    }
    s
}

/// Writes a raw file of `size` bytes with random data in random places (`runs` runs), leaving
/// the rest as holes. Deterministic for a seed.
pub fn random_sparse_raw(path: &Path, size: u64, runs: usize, seed: u64) {
    use std::os::unix::fs::FileExt;
    let mut rng = StdRng::seed_from_u64(seed);
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for _ in 0..runs {
        let len = rng.random_range(1..=(256 * 1024).min(size));
        let off = rng.random_range(0..=size - len);
        let mut data = vec![0u8; len as usize];
        rng.fill(&mut data[..]);
        // Some runs compress well, as real disks do.
        if rng.random_bool(0.5) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (i / 64) as u8;
            }
        }
        f.write_all_at(&data, off).unwrap();
    }
}

/// Converts `src` with qemu-img to `fmt` with `-o opts` (may be empty) into `dir/name`.
pub fn qemu_convert(src: &Path, dst: &Path, fmt: &str, opts: &str, compress: bool) {
    let mut args = vec!["convert", "-O", fmt];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    if compress {
        args.push("-c");
    }
    args.extend([src.to_str().unwrap(), dst.to_str().unwrap()]);
    qemu_img(&args);
}

/// Converts `src` with stamp (library path the CLI uses) to `fmt` with `opts` at `dst`.
pub fn stamp_convert(src: &Path, dst: &Path, fmt: Format, opts: &str, compress: bool) {
    let r = stamp_disk::open(src, None).unwrap_or_else(|e| panic!("open {}: {e}", src.display()));
    let mut o = CreateOptions::parse(opts).unwrap();
    o.compress = compress;
    let w = stamp_disk::create(dst, fmt, r.virtual_size(), &o)
        .unwrap_or_else(|e| panic!("create {}: {e}", dst.display()));
    stamp_disk::convert::convert(r.as_ref(), vec![w], &NoProgress)
        .unwrap_or_else(|e| panic!("convert to {}: {e}", dst.display()));
}

/// Asserts `qemu-img check` passes on `path` (formats qemu-img can check).
pub fn assert_qemu_check_clean(path: &Path) {
    let (code, text) = qemu_img_status(&["check", path.to_str().unwrap()]);
    // Exit 0 is clean; formats without check support print "This image format does not support checks" (exit 63).
    assert!(
        code == 0 || text.contains("does not support checks"),
        "qemu-img check {}: exit {code}: {text}",
        path.display()
    );
}

/// Asserts `qemu-img compare` says `a` and `b` are identical.
pub fn assert_qemu_identical(a: &Path, b: &Path) {
    let (code, text) = qemu_img_status(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(
        code,
        0,
        "qemu-img compare {} {}: {text}",
        a.display(),
        b.display()
    );
}

/// Opens `data` (written to a file in `dir`) through the public path and, if it opens, reads all
/// of it, asks for its allocation, info and check. Errors are fine; panics are not.
pub fn exercise(dir: &Path, name: &str, data: &[u8]) {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    if let Ok(r) = stamp_disk::open(&p, None) {
        let _ = r.info();
        let _ = r.check();
        let _ = r.allocation();
        let size = r.virtual_size().min(64 << 20);
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0;
        while pos < size {
            let n = (1u64 << 20).min(size - pos) as usize;
            if r.read_at(&mut buf[..n], pos).is_err() {
                break;
            }
            pos += n as u64;
        }
    }
}

/// Mutation fuzzing: `cases` variants of `seed_image` with random bytes changed in the first
/// `span` bytes (where the metadata is), plus truncations, fed through [`exercise`].
pub fn fuzz_mutations(seed_image: &Path, cases: usize, span: usize, seed: u64) {
    let orig = std::fs::read(seed_image).unwrap();
    let dir = tmp();
    let name = seed_image.file_name().unwrap().to_str().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    for case in 0..cases {
        let mut data = orig.clone();
        match case % 4 {
            0 => data.truncate(rng.random_range(0..data.len().max(1))),
            _ => {
                let flips = rng.random_range(1..16);
                for _ in 0..flips {
                    let i = rng.random_range(0..span.min(data.len()).max(1));
                    if i < data.len() {
                        data[i] = match rng.random_range(0..4) {
                            0 => 0xff,
                            1 => 0,
                            _ => rng.random(),
                        };
                    }
                }
            }
        }
        exercise(dir.path(), name, &data);
    }
}

/// A writable copy of the fixtures tree in a temporary directory with every `.gz` file
/// decompressed beside its original name (split VMDK extents next to their descriptors).
pub fn fixtures_unpacked() -> tempfile::TempDir {
    let dir = tmp();
    copy_unpack(&fixtures(), dir.path());
    dir
}

fn copy_unpack(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let name = e.file_name().into_string().unwrap();
        if p.is_dir() {
            copy_unpack(&p, &to.join(&name));
        } else if let Some(stem) = name.strip_suffix(".gz") {
            let mut d = flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap());
            let mut out = std::fs::File::create(to.join(stem)).unwrap();
            std::io::copy(&mut d, &mut out).unwrap();
        } else {
            std::fs::copy(&p, to.join(&name)).unwrap();
        }
    }
}
