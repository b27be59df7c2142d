//! qcow2 tests: qemu-img makes the inputs stamp reads, and judges the images stamp writes.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::common::*;
use bytes::Bytes;
use stamp_disk::{CreateOptions, Extent, Format};

/// Runs qemu-io `cmd` on `img` (a qcow2 image), panicking on failure.
fn qemu_io(img: &Path, cmd: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd, img.to_str().unwrap()])
        .output()
        .expect("run qemu-io");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io {cmd}: {text}"
    );
}

/// `qemu-img create -f qcow2 -b BACKING -F FMT name SIZE` in `dir`, backing name as given.
fn overlay(dir: &Path, name: &str, backing: &str, fmt: &str, size: Option<&str>) -> PathBuf {
    let p = dir.join(name);
    let mut args = vec!["create", "-f", "qcow2", "-b", backing, "-F", fmt];
    args.push(p.to_str().unwrap());
    if let Some(s) = size {
        args.push(s);
    }
    qemu_img(&args);
    p
}

/// A random sparse raw source of `size` bytes in `dir`.
fn source(dir: &Path, size: u64, seed: u64) -> PathBuf {
    let p = dir.join(format!("src-{seed}.raw"));
    random_sparse_raw(&p, size, 24, seed);
    p
}

/// The `format-specific.data` of qemu-img info.
fn qemu_specific(path: &Path) -> serde_json::Value {
    qemu_info(path)["format-specific"]["data"].clone()
}

/// qemu-img check's exit code for `path`.
fn qemu_check_code(path: &Path) -> i32 {
    qemu_img_status(&["check", path.to_str().unwrap()]).0
}

/// Compares stamp's reading of a large (mostly sparse) image with qemu-img's in pieces, without
/// holding either in memory.
fn assert_reads_like_qemu_chunked(path: &Path) {
    let d = tmp();
    let raw = d.path().join("qemu.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        path.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let q = std::fs::File::open(&raw).unwrap();
    let r = stamp_disk::open(path, None).unwrap();
    let size = r.virtual_size();
    assert_eq!(size, q.metadata().unwrap().len());
    let alloc = r.allocation().unwrap();
    let chunk = 8u64 << 20;
    let (mut a, mut b) = (vec![0u8; chunk as usize], vec![0u8; chunk as usize]);
    let zeros = vec![0u8; chunk as usize];
    let mut pos = 0;
    while pos < size {
        let n = chunk.min(size - pos) as usize;
        r.read_at(&mut a[..n], pos).unwrap();
        q.read_exact_at(&mut b[..n], pos).unwrap();
        assert!(
            a[..n] == b[..n],
            "{}: differs in {pos:#x}+{n}",
            path.display()
        );
        // Data only inside the allocation (checked per chunk: memcmp is fast in debug builds).
        if a[..n] != zeros[..n] {
            assert!(
                alloc
                    .iter()
                    .any(|r| r.start < pos + n as u64 && r.end > pos),
                "data in {pos:#x}+{n} outside allocation"
            );
        }
        pos += n as u64;
    }
}

#[test]
fn fixtures_read_like_qemu() {
    let f = fixtures().join("qcow2");
    let small = f.join("qcow2-v2-compressed.qcow2");
    assert_reads_like_qemu(&small);
    let i = stamp_disk::info(&small, None).unwrap();
    assert_eq!(i.subformat.as_deref(), Some("v2"));
    assert_eq!(i.compression.as_deref(), Some("zlib"));
    assert_eq!(i.cluster_size, Some(65536));
    let r = stamp_disk::open(&small, None).unwrap();
    assert_eq!(r.check().unwrap().exit_code(), qemu_check_code(&small));
    let vss = f.join("qcow2-v2-compressed-ntfs-vss.qcow2");
    assert_reads_like_qemu_chunked(&vss);
    let r = stamp_disk::open(&vss, None).unwrap();
    assert_eq!(r.check().unwrap().exit_code(), qemu_check_code(&vss));
}

#[test]
fn qemu_made_images_read_like_qemu() {
    let d = tmp();
    let src = source(d.path(), 6 << 20, 7);
    let want = std::fs::read(&src).unwrap();
    let cases: &[(&str, bool, &str, u64)] = &[
        ("compat=0.10", false, "", 65536),
        ("compat=1.1", false, "", 65536),
        ("compat=0.10", true, "zlib", 65536),
        ("compat=1.1,compression_type=zlib", true, "zlib", 65536),
        ("compat=1.1,compression_type=zstd", true, "zstd", 65536),
        ("extended_l2=on,cluster_size=16K", false, "", 16384),
        ("extended_l2=on,cluster_size=64K", false, "", 65536),
        ("extended_l2=on,cluster_size=64K", true, "zlib", 65536),
        ("cluster_size=512", false, "", 512),
        ("cluster_size=512", true, "zlib", 512),
        ("cluster_size=4K", false, "", 4096),
        ("cluster_size=4K,refcount_bits=1", false, "", 4096),
        ("refcount_bits=64", true, "zlib", 65536),
        ("cluster_size=2M", false, "", 2 << 20),
        (
            "cluster_size=2M,compression_type=zstd",
            true,
            "zstd",
            2 << 20,
        ),
    ];
    for (i, &(opts, compress, ctype, cs)) in cases.iter().enumerate() {
        let img = d.path().join(format!("q{i}.qcow2"));
        qemu_convert(&src, &img, "qcow2", opts, compress);
        let got = assert_reads_like_qemu(&img);
        assert!(got == want, "{opts}: contents differ from the source");
        let info = stamp_disk::info(&img, None).unwrap();
        assert_eq!(info.cluster_size, Some(cs), "{opts}");
        let q = qemu_specific(&img);
        assert_eq!(
            info.details["compat"],
            q["compat"].as_str().unwrap(),
            "{opts}"
        );
        if compress {
            assert_eq!(info.compression.as_deref(), Some(ctype), "{opts}");
        }
        let ext = q["extended-l2"].as_bool().unwrap_or(false);
        assert_eq!(info.details["extended_l2"], ext.to_string(), "{opts}");
        let r = stamp_disk::open(&img, None).unwrap();
        let rep = r.check().unwrap();
        assert_eq!(rep.exit_code(), 0, "{opts}: {rep:?}");
        assert_eq!(qemu_check_code(&img), 0);
    }
}

#[test]
fn zero_clusters_and_subclusters_read_like_qemu() {
    let d = tmp();
    let src = source(d.path(), 8 << 20, 11);
    for opts in ["compat=1.1", "extended_l2=on,cluster_size=32K"] {
        let img = d.path().join("z.qcow2");
        qemu_convert(&src, &img, "qcow2", opts, false);
        // Zero whole clusters, part of a cluster (subclusters with extended L2), and write data
        // into a subcluster of an unallocated cluster.
        qemu_io(&img, "write -z 0 1M");
        qemu_io(&img, "write -z 2M 8K");
        qemu_io(&img, "write -P 0x33 7M 3K");
        qemu_io(&img, "write -P 0x44 5000 100");
        assert_reads_like_qemu(&img);
        let r = stamp_disk::open(&img, None).unwrap();
        assert_eq!(
            r.check().unwrap().exit_code(),
            qemu_check_code(&img),
            "{opts}"
        );
        std::fs::remove_file(&img).unwrap();
    }
    // Preallocated metadata: allocated clusters that were never written.
    let img = d.path().join("pre.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata",
        img.to_str().unwrap(),
        "8M",
    ]);
    qemu_io(&img, "write -P 0x19 1M 100K");
    qemu_io(&img, "write -z 4M 64K");
    assert_reads_like_qemu(&img);
    let r = stamp_disk::open(&img, None).unwrap();
    assert_eq!(r.check().unwrap().exit_code(), qemu_check_code(&img));
}

#[test]
fn three_deep_backing_chain_reads_like_qemu() {
    let d = tmp();
    let src = source(d.path(), 8 << 20, 3);
    let base = d.path().join("base.qcow2");
    qemu_convert(&src, &base, "qcow2", "", false);
    let mid = overlay(d.path(), "mid.qcow2", "base.qcow2", "qcow2", None);
    qemu_io(&mid, "write -P 0x5a 1M 64K");
    qemu_io(&mid, "write -P 0x5b 3000 70000");
    let top = overlay(d.path(), "top.qcow2", "mid.qcow2", "qcow2", None);
    qemu_io(&top, "write -P 0xa5 4M 100K");
    qemu_io(&top, "write -z 1M 64K");
    qemu_io(&top, "write -z 6M 1M");
    let top2 = overlay(d.path(), "top2.qcow2", "top.qcow2", "qcow2", None);
    qemu_io(&top2, "write -P 0x77 7M 4K");
    for img in [&top, &top2] {
        assert_reads_like_qemu(img);
    }
    let info = stamp_disk::info(&top2, None).unwrap();
    assert_eq!(info.backing_file.as_deref(), Some("top.qcow2"));
    assert_eq!(info.backing_chain.len(), 3);
    assert_eq!(info.backing_chain[2].backing_file, None);
    // The allocation is tight: base data hidden by zero clusters is not listed.
    let r = stamp_disk::open(&top, None).unwrap();
    let alloc = r.allocation().unwrap();
    assert!(!alloc.iter().any(|a| a.contains(&(1 << 20))), "{alloc:?}");
    // Opening from another working directory still finds the relative backing files.
    assert!(stamp_disk::open(&top2, None).is_ok());
}

#[test]
fn short_backing_file_reads_zeros_past_its_end() {
    let d = tmp();
    let src = source(d.path(), 1 << 20, 5);
    let base = d.path().join("short.qcow2");
    qemu_convert(&src, &base, "qcow2", "", false);
    let top = overlay(d.path(), "long.qcow2", "short.qcow2", "qcow2", Some("4M"));
    qemu_io(&top, "write -P 0x11 3M 4K");
    let got = assert_reads_like_qemu(&top);
    assert_eq!(got.len(), 4 << 20);
    // Also over a raw backing file whose size is not a multiple of the cluster size.
    let raw = d.path().join("short.raw");
    std::fs::write(&raw, vec![0x42u8; 100_000]).unwrap();
    let top = overlay(d.path(), "long2.qcow2", "short.raw", "raw", Some("1M"));
    assert_reads_like_qemu(&top);
}

#[test]
fn external_data_file_reads_like_qemu() {
    let d = tmp();
    let src = source(d.path(), 8 << 20, 9);
    for (i, raw) in ["", ",data_file_raw=on"].iter().enumerate() {
        let img = d.path().join(format!("ext{i}.qcow2"));
        // qemu-img opens a relative data file name from its working directory (stamp: from
        // the image's directory), so the name is absolute here.
        let data = d.path().join(format!("data{i}.raw"));
        let opts = format!("data_file={}{raw}", data.display());
        qemu_convert(&src, &img, "qcow2", &opts, false);
        let got = assert_reads_like_qemu(&img);
        assert!(got == std::fs::read(&src).unwrap());
        let info = stamp_disk::info(&img, None).unwrap();
        assert_eq!(info.details["data_file"], data.display().to_string());
        let r = stamp_disk::open(&img, None).unwrap();
        assert_eq!(r.check().unwrap().exit_code(), qemu_check_code(&img));
    }
}

#[test]
fn encrypted_images_are_refused() {
    let d = tmp();
    let img = d.path().join("enc.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "--object",
        "secret,id=s0,data=pw",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0",
        img.to_str().unwrap(),
        "1M",
    ]);
    let Err(e) = stamp_disk::open(&img, None) else {
        panic!("an encrypted image opened");
    };
    assert!(e.to_string().contains("encrypted"), "{e}");
    assert!(e.is_bad_input());
}

/// Reads big-endian u64 at `at` of `b`.
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn truncated_and_mangled_images_are_refused_naming_the_structure() {
    let d = tmp();
    let src = source(d.path(), 4 << 20, 13);
    let img = d.path().join("good.qcow2");
    qemu_convert(&src, &img, "qcow2", "cluster_size=4K", false);
    let good = std::fs::read(&img).unwrap();
    let l1 = be64(&good, 40) as usize;
    let open_and_read = |bytes: &[u8], name: &str| -> String {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        match stamp_disk::open(&p, None) {
            Err(e) => e.to_string(),
            Ok(r) => {
                let mut buf = vec![0u8; r.virtual_size() as usize];
                r.read_at(&mut buf, 0).unwrap_err().to_string()
            }
        }
    };
    // Truncated in the middle of the L1 table: qemu refuses it too.
    let e = open_and_read(&good[..l1 + 4], "trunc.qcow2");
    assert!(e.contains("L1 table"), "{e}");
    // Truncated before the header ends.
    let e = open_and_read(&good[..60], "trunc2.qcow2");
    assert!(e.contains("header"), "{e}");
    // An L1 entry pointing at an unaligned L2 table.
    let mut m = good.clone();
    let e0 = be64(&m, l1);
    m[l1..l1 + 8].copy_from_slice(&(e0 + 512).to_be_bytes());
    let e = open_and_read(&m, "mangled.qcow2");
    assert!(e.contains("L1 table") && e.contains("aligned"), "{e}");
    // An L2 entry pointing past the end of the file.
    let mut m = good.clone();
    let l2 = (e0 & 0x00ff_ffff_ffff_fe00) as usize;
    let first = (0..512)
        .find(|i| be64(&m, l2 + i * 8) != 0)
        .expect("an allocated cluster");
    let bad = (1u64 << 63) | (1 << 40);
    m[l2 + first * 8..l2 + first * 8 + 8].copy_from_slice(&bad.to_be_bytes());
    let e = open_and_read(&m, "mangled2.qcow2");
    assert!(e.contains("L2 table") && e.contains("past the end"), "{e}");
    // Unknown incompatible feature bits are named.
    let mut m = good.clone();
    m[72..80].copy_from_slice(&(1u64 << 17).to_be_bytes());
    let e = open_and_read(&m, "feature.qcow2");
    assert!(e.contains("bit 17"), "{e}");
    assert_ne!(
        qemu_img_status(&["info", d.path().join("feature.qcow2").to_str().unwrap()]).0,
        0
    );
}

/// The option combinations of stamp's writer: (-o options, -c, compat, cluster size,
/// compression type qemu-img reports).
const WRITER_CASES: &[(&str, bool, &str, u64, &str)] = &[
    ("", false, "1.1", 65536, "zlib"),
    ("compat=0.10", false, "0.10", 65536, ""),
    ("cluster_size=512", false, "1.1", 512, "zlib"),
    ("cluster_size=4K", false, "1.1", 4096, "zlib"),
    ("cluster_size=2M", false, "1.1", 2 << 20, "zlib"),
    ("", true, "1.1", 65536, "zlib"),
    ("compression_type=zlib,compat=v2", true, "0.10", 65536, ""),
    ("compression_type=zstd", true, "1.1", 65536, "zstd"),
    (
        "compression_type=zstd,cluster_size=512",
        true,
        "1.1",
        512,
        "zstd",
    ),
    ("cluster_size=2M", true, "1.1", 2 << 20, "zlib"),
];

#[test]
fn stamp_written_images_pass_qemu_check_and_compare() {
    let d = tmp();
    let src = source(d.path(), 12 << 20, 21);
    for (i, &(opts, compress, compat, cs, ctype)) in WRITER_CASES.iter().enumerate() {
        let out = d.path().join(format!("w{i}.qcow2"));
        stamp_convert(&src, &out, Format::Qcow2, opts, compress);
        assert_qemu_check_clean(&out);
        assert_qemu_identical(&src, &out);
        let q = qemu_info(&out);
        assert_eq!(q["cluster-size"].as_u64(), Some(cs), "{opts}");
        let s = &q["format-specific"]["data"];
        assert_eq!(s["compat"].as_str(), Some(compat), "{opts}");
        if !ctype.is_empty() {
            assert_eq!(s["compression-type"].as_str(), Some(ctype), "{opts}");
        }
        // stamp reads its own output back, and its check agrees with qemu-img's.
        let r = stamp_disk::open(&out, None).unwrap();
        assert_eq!(r.check().unwrap().exit_code(), 0, "{opts}");
        if compress {
            // qemu-img check counts compressed clusters (7.2 and 10.x alike; `map` shows a
            // "compressed" flag only from 8.0).
            let c = qemu_img(&["check", "--output=json", out.to_str().unwrap()]);
            let c: serde_json::Value = serde_json::from_str(&c).unwrap();
            assert!(
                c["compressed-clusters"].as_u64().unwrap_or(0) > 0,
                "{opts}: nothing compressed: {c}"
            );
            // As small as what qemu-img -c makes, give or take.
            let q = d.path().join("q.qcow2");
            qemu_convert(&src, &q, "qcow2", opts, true);
            let (ours, theirs) = (
                std::fs::metadata(&out).unwrap().len(),
                std::fs::metadata(&q).unwrap().len(),
            );
            assert!(
                ours <= theirs + theirs / 10,
                "{opts}: {ours} vs qemu's {theirs}"
            );
        }
    }
}

#[test]
fn same_input_gives_identical_bytes() {
    let d = tmp();
    let src = source(d.path(), 8 << 20, 31);
    for (opts, compress) in [("", false), ("", true), ("compression_type=zstd", true)] {
        let a = d.path().join("a.qcow2");
        let b = d.path().join("b.qcow2");
        stamp_convert(&src, &a, Format::Qcow2, opts, compress);
        stamp_convert(&src, &b, Format::Qcow2, opts, compress);
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{opts} {compress}"
        );
    }
}

#[test]
fn stamp_overlays_read_through_to_their_backing_file() {
    let d = tmp();
    let src = source(d.path(), 4 << 20, 41);
    let base = d.path().join("base.qcow2");
    qemu_convert(&src, &base, "qcow2", "", false);
    // An empty overlay, size taken from the backing file.
    let top = d.path().join("top.qcow2");
    let o = CreateOptions::parse("backing_file=base.qcow2,backing_fmt=qcow2").unwrap();
    stamp_disk::create(&top, Format::Qcow2, 0, &o)
        .unwrap()
        .finish()
        .unwrap();
    assert_qemu_check_clean(&top);
    assert_qemu_identical(&base, &top);
    let q = qemu_info(&top);
    assert_eq!(q["backing-filename"].as_str(), Some("base.qcow2"));
    assert_eq!(q["backing-filename-format"].as_str(), Some("qcow2"));
    assert_eq!(q["virtual-size"].as_u64(), Some(4 << 20));
    // An overlay with partial clusters and explicit zeros over the base (v3 and v2).
    let mut want = std::fs::read(&src).unwrap();
    for opts in [
        "backing_file=base.qcow2",
        "backing_file=base.qcow2,compat=0.10",
    ] {
        let top = d.path().join("top2.qcow2");
        let mut w =
            stamp_disk::create(&top, Format::Qcow2, 0, &CreateOptions::parse(opts).unwrap())
                .unwrap();
        let data = vec![0xabu8; 5000];
        w.write_extent(Extent::Data {
            offset: 1000,
            bytes: Bytes::from(data.clone()),
        })
        .unwrap();
        w.write_extent(Extent::Zero {
            offset: 70_000,
            len: 200_000,
        })
        .unwrap();
        w.write_extent(Extent::Data {
            offset: 3 << 20,
            bytes: Bytes::from(vec![0xcd; 65536]),
        })
        .unwrap();
        w.finish().unwrap();
        want[1000..6000].copy_from_slice(&data);
        want[70_000..270_000].fill(0);
        want[3 << 20..(3 << 20) + 65536].fill(0xcd);
        assert_qemu_check_clean(&top);
        assert!(qemu_read(&top, None) == want, "{opts}");
        assert!(stamp_read(&top) == want, "{opts}");
    }
}

#[test]
fn bad_create_options_are_refused() {
    let d = tmp();
    let p = d.path().join("x.qcow2");
    for opts in [
        "cluster_size=1000",
        "cluster_size=4M",
        "compat=2.0",
        "compat=0.10,compression_type=zstd",
        "subformat=fixed",
    ] {
        let o = CreateOptions::parse(opts).unwrap();
        let Err(e) = stamp_disk::create(&p, Format::Qcow2, 1 << 20, &o) else {
            panic!("{opts} accepted");
        };
        assert!(
            matches!(e, stamp_disk::Error::InvalidOption(_)),
            "{opts}: {e}"
        );
    }
    assert!(!p.exists());
}

/// Writes `value` as the 16-bit refcount of host cluster `cluster` of a stamp-written image.
fn set_refcount(img: &Path, cluster: u64, value: u16) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut h = [0u8; 72];
    f.read_exact_at(&mut h, 0).unwrap();
    let cs = 1u64 << u32::from_be_bytes(h[20..24].try_into().unwrap());
    let rt = be64(&h, 48);
    let per_block = cs / 2;
    let mut e = [0u8; 8];
    f.read_exact_at(&mut e, rt + (cluster / per_block) * 8)
        .unwrap();
    let block = u64::from_be_bytes(e);
    f.write_all_at(&value.to_be_bytes(), block + (cluster % per_block) * 2)
        .unwrap();
}

#[test]
fn check_finds_corruptions_and_leaks_as_qemu_does() {
    let d = tmp();
    let src = source(d.path(), 4 << 20, 51);
    let img = d.path().join("c.qcow2");
    stamp_convert(&src, &img, Format::Qcow2, "", false);
    let good = std::fs::read(&img).unwrap();
    let stamp_code = |p: &Path| {
        stamp_disk::open(p, None)
            .unwrap()
            .check()
            .unwrap()
            .exit_code()
    };
    assert_eq!(stamp_code(&img), 0);
    // A data cluster whose refcount is dropped to 0: corruption.
    set_refcount(&img, 1, 0);
    assert_eq!(qemu_check_code(&img), 2);
    assert_eq!(stamp_code(&img), 2);
    // An L2 entry pointing into the L1 table: metadata and data overlap.
    std::fs::write(&img, &good).unwrap();
    let l1 = be64(&good, 40);
    let l2 = be64(&good, l1 as usize) & 0x00ff_ffff_ffff_fe00;
    let mut m = good.clone();
    let e = l1 | (1 << 63);
    m[l2 as usize..l2 as usize + 8].copy_from_slice(&e.to_be_bytes());
    std::fs::write(&img, &m).unwrap();
    assert_eq!(qemu_check_code(&img), 2);
    assert_eq!(stamp_code(&img), 2);
    // A cluster with a refcount that nothing refers to: a leak.
    std::fs::write(&img, &good).unwrap();
    let cs = 65536u64;
    let n = good.len() as u64 / cs;
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len((n + 1) * cs).unwrap();
    drop(f);
    set_refcount(&img, n, 1);
    assert_eq!(qemu_check_code(&img), 3);
    let rep = stamp_disk::open(&img, None).unwrap().check().unwrap();
    assert_eq!(rep.exit_code(), 3, "{rep:?}");
    assert_eq!(rep.leaks.len(), 1);
    // A compressed image with a bumped refcount on a shared cluster: a leak too.
    let img = d.path().join("cc.qcow2");
    stamp_convert(&src, &img, Format::Qcow2, "cluster_size=4K", true);
    set_refcount(&img, 1, 200);
    assert_eq!(qemu_check_code(&img), 3);
    assert_eq!(stamp_code(&img), 3);
}

#[test]
fn fuzzed_images_never_panic() {
    let d = tmp();
    let src = source(d.path(), 1 << 20, 61);
    let img = d.path().join("fuzz.qcow2");
    qemu_convert(&src, &img, "qcow2", "cluster_size=4K", false);
    fuzz_mutations(&img, 300, 8 * 4096, 1);
    let img = d.path().join("fuzzc.qcow2");
    qemu_convert(&src, &img, "qcow2", "cluster_size=16K,extended_l2=on", true);
    fuzz_mutations(&img, 100, 8 * 16384, 2);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20, ..ProptestConfig::default() })]
        #[test]
        fn random_sparse_disks_round_trip(
            runs in proptest::collection::vec((0u64..(6 << 20), 1usize..200_000, any::<u8>()), 0..12),
            cs_bits in prop_oneof![Just(9u32), Just(12u32), Just(16u32), Just(21u32)],
            compress in any::<bool>(),
            size_extra in 0u64..70_000,
        ) {
            let size = (6u64 << 20) + size_extra;
            let mut disk = vec![0u8; size as usize];
            for (off, len, v) in &runs {
                let end = (*off as usize + len).min(size as usize);
                for (i, b) in disk[*off as usize..end].iter_mut().enumerate() {
                    *b = v.wrapping_add((i / 7) as u8);
                }
            }
            let d = tmp();
            let p = d.path().join("p.qcow2");
            let mut o = CreateOptions::parse(&format!("cluster_size={}", 1u64 << cs_bits)).unwrap();
            o.compress = compress;
            let mut w = stamp_disk::create(&p, Format::Qcow2, size, &o).unwrap();
            // Feed non-zero runs as extents of uneven sizes.
            let mut pos = 0usize;
            while pos < disk.len() {
                if disk[pos] == 0 { pos += 1; continue; }
                let mut end = pos;
                while end < disk.len() && disk[end] != 0 && end - pos < 300_000 { end += 1; }
                w.write_extent(Extent::Data { offset: pos as u64, bytes: Bytes::copy_from_slice(&disk[pos..end]) }).unwrap();
                pos = end;
            }
            w.finish().unwrap();
            let r = stamp_disk::open(&p, None).unwrap();
            let got = read_all(r.as_ref());
            // The virtual size is rounded up to whole sectors, as qemu does.
            prop_assert_eq!(got.len() as u64, size.div_ceil(512) * 512);
            prop_assert!(got[..disk.len()] == disk[..]);
            prop_assert!(got[disk.len()..].iter().all(|b| *b == 0));
            prop_assert_eq!(r.check().unwrap().exit_code(), 0);
        }
    }
}

#[test]
fn snapshots_and_bitmaps_are_counted_by_check() {
    let d = tmp();
    let img = d.path().join("snap.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "8M"]);
    qemu_io(&img, "write -P 1 0 1M");
    qemu_img(&["snapshot", "-c", "s1", img.to_str().unwrap()]);
    qemu_io(&img, "write -P 2 512K 1M");
    qemu_img(&["bitmap", "--add", img.to_str().unwrap(), "b0"]);
    qemu_io(&img, "write -P 3 4M 64K");
    assert_reads_like_qemu(&img);
    let r = stamp_disk::open(&img, None).unwrap();
    let rep = r.check().unwrap();
    assert_eq!(rep.exit_code(), qemu_check_code(&img), "{rep:?}");
    assert_eq!(rep.exit_code(), 0, "{rep:?}");
}

#[test]
fn backing_loops_are_refused() {
    let d = tmp();
    let x = d.path().join("x.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", x.to_str().unwrap(), "1M"]);
    let z = d.path().join("z.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", z.to_str().unwrap(), "1M"]);
    let y = overlay(d.path(), "y.qcow2", "z.qcow2", "qcow2", Some("1M"));
    std::fs::remove_file(&z).unwrap();
    let Err(e) = stamp_disk::open(&y, None) else {
        panic!("a missing backing file opened");
    };
    assert!(e.to_string().contains("z.qcow2"), "{e}");
    qemu_img(&[
        "rebase",
        "-u",
        "-b",
        "x.qcow2",
        "-F",
        "qcow2",
        x.to_str().unwrap(),
    ]);
    let Err(e) = stamp_disk::open(&x, None) else {
        panic!("a backing loop opened");
    };
    assert!(e.to_string().contains("loop"), "{e}");
}

#[test]
fn odd_sizes_round_up_to_sectors_like_qemu() {
    let d = tmp();
    let src = d.path().join("odd.raw");
    random_sparse_raw(&src, 1_000_001, 5, 71);
    let ours = d.path().join("ours.qcow2");
    let theirs = d.path().join("theirs.qcow2");
    stamp_convert(&src, &ours, Format::Qcow2, "", false);
    qemu_convert(&src, &theirs, "qcow2", "", false);
    assert_eq!(
        qemu_info(&ours)["virtual-size"],
        qemu_info(&theirs)["virtual-size"]
    );
    assert_qemu_check_clean(&ours);
    assert_qemu_identical(&ours, &theirs);
    assert_reads_like_qemu(&ours);
}

/// stamp's check exit code for `path`, with qemu-img's 1 for an image that cannot be checked.
fn stamp_check_code(path: &Path) -> i32 {
    match stamp_disk::open(path, None).map(|r| r.check()) {
        Ok(Ok(rep)) => rep.exit_code(),
        _ => 1,
    }
}

#[test]
fn check_agrees_with_qemu_on_mutated_metadata() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let d = tmp();
    let src = source(d.path(), 4 << 20, 81);
    let theirs = d.path().join("theirs.qcow2");
    qemu_convert(&src, &theirs, "qcow2", "cluster_size=4K", false);
    let ours = d.path().join("ours.qcow2");
    stamp_convert(&src, &ours, Format::Qcow2, "cluster_size=4K", true);
    let mut rng = StdRng::seed_from_u64(5);
    // qemu-img puts its metadata after the header, stamp at the end of the file.
    for (img, at_end) in [(&theirs, false), (&ours, true)] {
        let orig = std::fs::read(img).unwrap();
        let len = orig.len();
        let (lo, hi) = if at_end {
            (len.saturating_sub(3 * 4096), len)
        } else {
            (4096, 10 * 4096)
        };
        let mut seen = std::collections::BTreeMap::new();
        for case in 0..40 {
            let mut m = orig.clone();
            for _ in 0..rng.random_range(1..=3) {
                let i = rng.random_range(lo..hi);
                m[i] = match rng.random_range(0..4) {
                    0 => 0,
                    1 => 0xff,
                    2 => m[i] ^ 1,
                    _ => rng.random(),
                };
            }
            let p = d.path().join("m.qcow2");
            std::fs::write(&p, &m).unwrap();
            let q = qemu_check_code(&p);
            assert_eq!(stamp_check_code(&p), q, "case {case} of {}", img.display());
            *seen.entry(q).or_insert(0) += 1;
        }
        // The mutations found both clean and corrupt images.
        assert!(seen.contains_key(&0) && seen.contains_key(&2), "{seen:?}");
    }
}
