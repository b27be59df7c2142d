//! VDI tests against qemu-img: what qemu-img writes (static and dynamic) stamp reads byte for
//! byte; what stamp writes qemu-img checks clean and reads identically; check finds what qemu-img
//! check finds; mutation fuzzing.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::common::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use stamp_disk::{CreateOptions, Error, Extent, Format};

/// Number of errors `qemu-img check` reports (0 when clean).
fn qemu_check_errors(path: &Path) -> (i32, usize) {
    let (code, text) = qemu_img_status(&["check", path.to_str().unwrap()]);
    let n = text.lines().filter(|l| l.starts_with("ERROR")).count();
    (code, n)
}

#[test]
fn vdi_qemu_made_images_read_identically() {
    let d = tmp();
    for (i, size) in [10u64 << 20, (5 << 20) + 512].into_iter().enumerate() {
        let raw = d.path().join(format!("src{i}.raw"));
        random_sparse_raw(&raw, size, 12, 300 + i as u64);
        for opts in ["", "static=on"] {
            let vdi = d.path().join(format!(
                "q{i}{}.vdi",
                if opts.is_empty() { "" } else { "s" }
            ));
            qemu_convert(&raw, &vdi, "vdi", opts, false);
            let s = assert_reads_like_qemu(&vdi);
            assert_eq!(s, std::fs::read(&raw).unwrap());
            let r = stamp_disk::open(&vdi, None).unwrap();
            let info = r.info();
            assert_eq!(info.format, "vdi");
            assert_eq!(
                info.subformat.as_deref(),
                Some(if opts.is_empty() { "dynamic" } else { "static" })
            );
            assert_eq!(info.cluster_size, Some(1 << 20));
            assert_eq!(
                info.virtual_size,
                qemu_info(&vdi)["virtual-size"].as_u64().unwrap()
            );
            let c = r.check().unwrap();
            assert!(c.corruptions.is_empty(), "{c:?}");
            if !opts.is_empty() {
                // A static image's allocation follows the file's holes, not the whole disk.
                let alloc: u64 = r
                    .allocation()
                    .unwrap()
                    .iter()
                    .map(|r| r.end - r.start)
                    .sum();
                assert!(alloc < size / 2, "{alloc}");
            }
        }
    }
}

#[test]
fn vdi_stamp_output_matches_qemu() {
    let d = tmp();
    for (i, size) in [10u64 << 20, (5 << 20) + 512, 0].into_iter().enumerate() {
        let raw = d.path().join(format!("src{i}.raw"));
        random_sparse_raw(&raw, size.max(1), 12, 400 + i as u64);
        if size == 0 {
            std::fs::write(&raw, b"").unwrap();
        }
        let ours = d.path().join(format!("s{i}.vdi"));
        stamp_convert(&raw, &ours, Format::Vdi, "", false);
        assert_qemu_check_clean(&ours);
        assert_qemu_identical(&raw, &ours);
        let info = qemu_info(&ours);
        assert_eq!(info["format"], "vdi");
        assert_eq!(info["virtual-size"].as_u64(), Some(size));
        assert_eq!(info["cluster-size"].as_u64(), Some(1 << 20));
        assert_eq!(assert_reads_like_qemu(&ours), std::fs::read(&raw).unwrap());
        let again = d.path().join(format!("s{i}-again.vdi"));
        stamp_convert(&raw, &again, Format::Vdi, "subformat=dynamic", false);
        assert_eq!(
            std::fs::read(&ours).unwrap(),
            std::fs::read(&again).unwrap()
        );
        // Sparse: only blocks with data (12 runs of at most 256 KiB) are stored.
        let len = std::fs::metadata(&ours).unwrap().len();
        assert!(len <= 24 * (1 << 20) + 4096, "{len}");
        let r = stamp_disk::open(&ours, None).unwrap();
        assert!(r.check().unwrap().corruptions.is_empty());
        assert_eq!(r.info().subformat.as_deref(), Some("dynamic"));
    }
    // Different contents get different UUIDs (VirtualBox refuses two media with one UUID).
    let u = |p: &str| stamp_disk::info(&d.path().join(p), None).unwrap().details["uuid"].clone();
    assert_ne!(u("s0.vdi"), u("s1.vdi"));
}

#[test]
fn vdi_writer_refuses_static_and_unknown_options() {
    let d = tmp();
    let p = d.path().join("x.vdi");
    for opts in [
        "subformat=static",
        "subformat=fixed",
        "cluster_size=2M",
        "force_size=on",
    ] {
        let o = CreateOptions::parse(opts).unwrap();
        let e = stamp_disk::create(&p, Format::Vdi, 1 << 20, &o)
            .err()
            .unwrap();
        assert!(matches!(e, Error::InvalidOption(_)), "{opts}: {e}");
    }
    let e = stamp_disk::create(&p, Format::Vdi, 1 << 60, &CreateOptions::default())
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidOption(_)), "{e}");
    assert!(!p.exists());
}

/// check() reports what `qemu-img check` reports: entries past the image, two entries sharing a
/// block, and a wrong allocated count.
#[test]
fn vdi_check_agrees_with_qemu() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&raw, &data).unwrap();
    let vdi = d.path().join("x.vdi");
    stamp_convert(&raw, &vdi, Format::Vdi, "", false);
    let clean = std::fs::read(&vdi).unwrap();
    // (what, field offset, value): entry 1 -> block 0, entry 2 -> block 77, allocated count 9.
    for (what, at, val) in [
        ("duplicate", 0x204usize, 0u32),
        ("too large", 0x208, 77),
        ("count", 0x184, 9),
    ] {
        let mut b = clean.clone();
        b[at..at + 4].copy_from_slice(&val.to_le_bytes());
        let p = d.path().join(format!("bad-{}.vdi", what.replace(' ', "_")));
        std::fs::write(&p, &b).unwrap();
        let (code, n) = qemu_check_errors(&p);
        let rep = stamp_disk::open(&p, None).unwrap().check().unwrap();
        assert_eq!(code, 2, "{what}");
        assert_eq!(rep.exit_code(), 2, "{what}: {rep:?}");
        assert_eq!(rep.corruptions.len(), n, "{what}: {rep:?}");
    }
    // Reading a block whose entry points past the image is refused, naming the entry.
    let mut b = clean.clone();
    b[0x208..0x20c].copy_from_slice(&77u32.to_le_bytes());
    let p = d.path().join("bad-read.vdi");
    std::fs::write(&p, &b).unwrap();
    let r = stamp_disk::open(&p, None).unwrap();
    let mut buf = vec![0u8; 4096];
    match r.read_at(&mut buf, 2 << 20) {
        Err(Error::Corrupt {
            structure, offset, ..
        }) => assert_eq!((structure.as_str(), offset), ("block map", 0x208)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn vdi_unsupported_headers_are_refused_like_qemu() {
    let d = tmp();
    let vdi = d.path().join("x.vdi");
    qemu_img(&["create", "-f", "vdi", vdi.to_str().unwrap(), "4M"]);
    let clean = std::fs::read(&vdi).unwrap();
    for (what, at, val) in [
        ("version", 0x44usize, 0x0001_0000u32),
        ("parent", 0x1b8, 1),
        ("block size", 0x178, 4096),
        ("sector size", 0x168, 4096),
        ("blocks", 0x180, 2),
    ] {
        let mut b = clean.clone();
        b[at..at + 4].copy_from_slice(&val.to_le_bytes());
        let p = d.path().join("bad.vdi");
        std::fs::write(&p, &b).unwrap();
        let (code, _) = qemu_img_status(&["info", "-f", "vdi", p.to_str().unwrap()]);
        assert_ne!(code, 0, "{what}: qemu accepted it");
        let e = stamp_disk::open(&p, Some(Format::Vdi)).err().unwrap();
        assert!(e.is_bad_input(), "{what}: {e}");
    }
}

#[test]
fn vdi_mutation_fuzz_does_not_panic() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    random_sparse_raw(&raw, 6 << 20, 6, 21);
    let vdi = d.path().join("seed.vdi");
    stamp_convert(&raw, &vdi, Format::Vdi, "", false);
    fuzz_mutations(&vdi, 300, 1024, 5);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20, ..ProptestConfig::default() })]

    /// Any sparse disk written through the writer reads back the same.
    #[test]
    fn vdi_round_trip(size in 1u64..(7 << 20), seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut runs = Vec::new();
        let mut pos = 0u64;
        while pos < size && runs.len() < 8 {
            let start = pos + rng.random_range(0..(2u64 << 20));
            if start >= size { break; }
            let len = rng.random_range(1..=(size - start).min(2 << 20));
            let mut data = vec![0u8; len as usize];
            rng.fill(&mut data[..]);
            runs.push((start, data));
            pos = start + len;
        }
        let d = tmp();
        let p = d.path().join("p.vdi");
        let mut w = stamp_disk::create(&p, Format::Vdi, size, &CreateOptions::default()).unwrap();
        for (off, data) in &runs {
            w.write_extent(Extent::Data { offset: *off, bytes: data.clone().into() }).unwrap();
        }
        let sum = w.finish().unwrap();
        prop_assert_eq!(sum.virtual_size, size.div_ceil(512) * 512);
        let r = stamp_disk::open(&p, None).unwrap();
        let back = read_all(r.as_ref());
        let mut want = vec![0u8; r.virtual_size() as usize];
        for (off, data) in &runs {
            want[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        prop_assert!(back == want);
    }
}
