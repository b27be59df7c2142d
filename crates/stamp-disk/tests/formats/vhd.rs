//! VHD tests against qemu-img (`vpc`): what qemu-img writes (fixed and dynamic, with and without
//! force_size, CHS-aligned or not) stamp reads byte for byte; what stamp writes qemu-img reads
//! identically with the size qemu itself would give; real-world fixtures; differencing disks
//! built by hand over a qemu-made parent; check; mutation fuzzing.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::common::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use stamp_disk::{CreateOptions, DiskReader, Error, Extent, Format};

/// The disk as qemu-img reads it as vpc (qemu probes fixed VHDs as raw, so the format is forced).
fn qemu_read_vpc(path: &Path) -> Vec<u8> {
    qemu_read(path, Some("vpc"))
}

/// qemu-img's virtual size of a VHD.
fn qemu_vsize(path: &Path) -> u64 {
    let s = qemu_img(&["info", "--output=json", "-f", "vpc", path.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// Asserts stamp reads `path` as qemu-img does (format forced to vpc).
fn assert_reads_like_qemu_vpc(path: &Path) -> Vec<u8> {
    let q = qemu_read_vpc(path);
    let s = stamp_read(path);
    assert_eq!(q.len(), s.len(), "virtual size of {}", path.display());
    if let Some(i) = q.iter().zip(&s).position(|(a, b)| a != b) {
        panic!(
            "{}: stamp and qemu-img differ at byte {i:#x}",
            path.display()
        );
    }
    s
}

/// Asserts `qemu-img compare` finds the raw `raw` and the VHD `vhd` identical.
fn assert_qemu_identical_vpc(raw: &Path, vhd: &Path) {
    let (code, text) = qemu_img_status(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "vpc",
        raw.to_str().unwrap(),
        vhd.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "qemu-img compare {}: {text}", vhd.display());
}

fn open_err(path: &Path) -> Error {
    match stamp_disk::open(path, None) {
        Ok(_) => panic!("{} opened but should not", path.display()),
        Err(e) => e,
    }
}

#[test]
fn vhd_fixture_qemu_dynamic_reads_like_qemu() {
    let fx = fixtures_unpacked();
    let p = fx.path().join("vhd/qemu-dynamic-ext2.vhd");
    let data = assert_reads_like_qemu(&p);
    assert_eq!(data.len(), 4_212_736);
    let r = stamp_disk::open(&p, None).unwrap();
    let i = r.info();
    assert_eq!(i.format, "vhd");
    assert_eq!(i.subformat.as_deref(), Some("dynamic"));
    assert_eq!(i.cluster_size, Some(2 << 20));
    assert_eq!(i.details["creator_app"], "qemu");
    assert_eq!(
        i.virtual_size,
        qemu_info(&p)["virtual-size"].as_u64().unwrap()
    );
    let c = r.check().unwrap();
    assert!(c.corruptions.is_empty(), "{c:?}");
}

#[test]
fn vhd_fixture_bad_checksum_is_refused_like_qemu() {
    let fx = fixtures_unpacked();
    let p = fx
        .path()
        .join("vhd/BAD-qemu-dynamic-bad-footer-checksum.vhd");
    let (code, text) = qemu_img_status(&["info", p.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(text.contains("Incorrect header checksum"), "{text}");
    match open_err(&p) {
        Error::Corrupt {
            structure,
            offset,
            detail,
            ..
        } => {
            assert_eq!(structure, "footer");
            assert_eq!(offset, 64);
            assert!(detail.contains("checksum"), "{detail}");
        }
        e => panic!("unexpected error {e}"),
    }
}

#[test]
fn vhd_fixture_differencing_without_parent_describes_but_refuses_reads() {
    let fx = fixtures_unpacked();
    let p = fx.path().join("vhd/win10-differencing-fat.vhd");
    let r = stamp_disk::open(&p, None).unwrap();
    let i = stamp_disk::info(&p, None).unwrap();
    assert_eq!(i.subformat.as_deref(), Some("differencing"));
    assert_eq!(
        i.virtual_size,
        qemu_info(&p)["virtual-size"].as_u64().unwrap()
    );
    assert_eq!(i.cluster_size, Some(2 << 20));
    let parent = i.backing_file.clone().unwrap();
    assert!(parent.ends_with("fat-parent.vhd"), "{parent}");
    assert_eq!(i.details["creator_app"], "win");
    let mut buf = vec![0u8; 4096];
    // Sector 0 of an unallocated or bitmap-clear region comes from the parent.
    match r.read_at(&mut buf, 0) {
        Err(Error::Missing { what, missing, .. }) => {
            assert_eq!(what, "parent disk");
            assert!(missing.ends_with("fat-parent.vhd"), "{}", missing.display());
        }
        other => panic!("expected a missing parent, got {other:?}"),
    }
    assert!(matches!(r.allocation(), Err(Error::Missing { .. })));
}

/// The Windows-made differencing fixture over a parent made here with the UUID it expects:
/// sectors whose bitmap bit is set read as the child (as qemu reads the child's blocks), the
/// others as the parent.
#[test]
fn vhd_fixture_differencing_reads_over_its_parent() {
    let fx = fixtures_unpacked();
    let child = fx.path().join("vhd/win10-differencing-fat.vhd");
    let cb = std::fs::read(&child).unwrap();
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let puuid: [u8; 16] = cb[512 + 40..512 + 56].try_into().unwrap();
    // The parent: 4 MiB of random data as a dynamic VHD, its UUID set to the one the child wants.
    let raw = fx.path().join("vhd/parent.raw");
    random_sparse_raw(&raw, 4 << 20, 30, 12);
    let parent = fx.path().join("vhd/fat-parent.vhd");
    stamp_convert(&raw, &parent, Format::Vhd, "force_size=on", false);
    let mut pb = std::fs::read(&parent).unwrap();
    let n = pb.len();
    for at in [0, n - 512] {
        pb[at + 68..at + 84].copy_from_slice(&puuid);
        let sum = vhd_checksum(&pb[at..at + 512], 64);
        pb[at + 64..at + 68].copy_from_slice(&sum.to_be_bytes());
    }
    std::fs::write(&parent, &pb).unwrap();
    let from_parent = qemu_read_vpc(&parent);
    let child_alone = qemu_read_vpc(&child);
    let got = stamp_read(&child);
    assert_eq!(got.len(), 4 << 20);
    let bat_off = be64(&cb, 512 + 16) as usize;
    let mut set = 0;
    for s in 0..(4usize << 20) / 512 {
        let entry = be32(&cb, bat_off + 4 * (s / 4096));
        let bit = entry != u32::MAX && {
            let bm = entry as usize * 512;
            cb[bm + (s % 4096) / 8] & (0x80 >> (s % 8)) != 0
        };
        set += bit as usize;
        let r = s * 512..(s + 1) * 512;
        let want = if bit {
            &child_alone[r.clone()]
        } else {
            &from_parent[r.clone()]
        };
        assert!(got[r] == *want, "sector {s} (bit {bit})");
    }
    assert!(set > 0);
    let i = stamp_disk::info(&child, None).unwrap();
    assert_eq!(i.backing_chain.len(), 1);
}

/// qemu-img-made VHDs of every kind stamp reads byte for byte.
#[test]
fn vhd_qemu_made_images_read_identically() {
    let d = tmp();
    // 10 MiB is not a CHS size; 4212736 is (qemu's size for 4 MiB); 5 MiB + 1 sector is odd.
    for (i, size) in [10u64 << 20, 4_212_736, (5 << 20) + 512]
        .into_iter()
        .enumerate()
    {
        let raw = d.path().join(format!("src{i}.raw"));
        random_sparse_raw(&raw, size, 12, 100 + i as u64);
        for opts in [
            "subformat=dynamic",
            "subformat=fixed",
            "subformat=dynamic,force_size=on",
            "subformat=fixed,force_size=on",
        ] {
            let vhd = d
                .path()
                .join(format!("q{i}-{}.vhd", opts.replace([',', '='], "_")));
            qemu_convert(&raw, &vhd, "vpc", opts, false);
            let s = assert_reads_like_qemu_vpc(&vhd);
            let src = std::fs::read(&raw).unwrap();
            assert!(s.len() as u64 >= size);
            assert_eq!(&s[..size as usize], &src[..], "{opts}");
            let info = stamp_disk::info(&vhd, None).unwrap();
            let want = if opts.contains("fixed") {
                "fixed"
            } else {
                "dynamic"
            };
            assert_eq!(info.subformat.as_deref(), Some(want));
        }
    }
}

/// What stamp writes, qemu-img reads identically, with the virtual size qemu gives its own
/// output for the same options (except fixed+force_size, rounded up to whole MiB for Azure).
#[test]
fn vhd_stamp_output_matches_qemu() {
    let d = tmp();
    for (i, size) in [10u64 << 20, 4_212_736, (5 << 20) + 512]
        .into_iter()
        .enumerate()
    {
        let raw = d.path().join(format!("src{i}.raw"));
        random_sparse_raw(&raw, size, 12, 200 + i as u64);
        for opts in [
            "",
            "subformat=fixed",
            "subformat=dynamic,force_size=on",
            "subformat=fixed,force_size=on",
        ] {
            let tag = format!("{i}-{}", opts.replace([',', '='], "_"));
            let ours = d.path().join(format!("s{tag}.vhd"));
            let theirs = d.path().join(format!("q{tag}.vhd"));
            stamp_convert(&raw, &ours, Format::Vhd, opts, false);
            qemu_convert(&raw, &theirs, "vpc", opts, false);
            let size_ours = qemu_vsize(&ours);
            let size_qemu = qemu_vsize(&theirs);
            if opts == "subformat=fixed,force_size=on" {
                assert_eq!(size_ours, size.div_ceil(1 << 20) << 20, "{opts}");
            } else {
                assert_eq!(size_ours, size_qemu, "{opts}");
            }
            assert_qemu_identical_vpc(&raw, &ours);
            assert_qemu_check_clean(&ours);
            let back = assert_reads_like_qemu_vpc(&ours);
            assert_eq!(back.len() as u64, size_ours);
            let info = stamp_disk::info(&ours, None).unwrap();
            let fixed = opts.contains("fixed");
            assert_eq!(
                info.subformat.as_deref(),
                Some(if fixed { "fixed" } else { "dynamic" })
            );
            let r = stamp_disk::open(&ours, None).unwrap();
            assert!(r.check().unwrap().corruptions.is_empty());
            // Deterministic: the same input gives the same bytes.
            let again = d.path().join(format!("s{tag}-again.vhd"));
            stamp_convert(&raw, &again, Format::Vhd, opts, false);
            assert_eq!(
                std::fs::read(&ours).unwrap(),
                std::fs::read(&again).unwrap()
            );
            if !fixed {
                // Sparse: only blocks with data are stored (12 runs of at most 256 KiB).
                let len = std::fs::metadata(&ours).unwrap().len();
                assert!(len <= 12 * (2 << 20) + (64 << 10), "{len}");
                assert_eq!(
                    qemu_info(&ours)["cluster-size"].as_u64(),
                    Some(2 << 20),
                    "{opts}"
                );
            }
        }
    }
}

#[test]
fn vhd_empty_and_tiny_disks_round_trip() {
    let d = tmp();
    for size in [0u64, 512, 1000, 3 << 20] {
        let raw = d.path().join(format!("t{size}.raw"));
        std::fs::write(&raw, vec![0x5a; size as usize]).unwrap();
        for opts in ["", "subformat=fixed", "force_size=on"] {
            let vhd = d
                .path()
                .join(format!("t{size}-{}.vhd", opts.replace([',', '='], "_")));
            stamp_convert(&raw, &vhd, Format::Vhd, opts, false);
            if size == 0 && opts.contains("fixed") {
                // The file is only a footer, which qemu takes for a dynamic disk's first copy.
                assert_eq!(stamp_read(&vhd).len(), 0);
                continue;
            }
            let s = assert_reads_like_qemu_vpc(&vhd);
            assert!(s[..size as usize].iter().all(|b| *b == 0x5a));
            assert!(s[size as usize..].iter().all(|b| *b == 0));
        }
    }
}

#[test]
fn vhd_writer_refuses_unknown_options() {
    let d = tmp();
    let p = d.path().join("x.vhd");
    for opts in [
        "subformat=streamOptimized",
        "cluster_size=64K",
        "compat=1.1",
    ] {
        let o = CreateOptions::parse(opts).unwrap();
        let e = stamp_disk::create(&p, Format::Vhd, 1 << 20, &o)
            .err()
            .unwrap();
        assert!(matches!(e, Error::InvalidOption(_)), "{opts}: {e}");
    }
    let o = CreateOptions {
        compress: true,
        ..Default::default()
    };
    assert!(stamp_disk::create(&p, Format::Vhd, 1 << 20, &o).is_err());
    let e = stamp_disk::create(&p, Format::Vhd, 3 << 40, &CreateOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("2040 GiB"), "{e}");
    assert!(!p.exists());
}

/// An old Virtual PC fixed disk whose footer is 511 bytes reads like the same disk with a
/// 512-byte footer.
#[test]
fn vhd_511_byte_footer_is_read() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    random_sparse_raw(&raw, 4 << 20, 8, 7);
    let vhd = d.path().join("f.vhd");
    qemu_convert(&raw, &vhd, "vpc", "subformat=fixed", false);
    let want = qemu_read_vpc(&vhd);
    let mut bytes = std::fs::read(&vhd).unwrap();
    assert_eq!(bytes.pop(), Some(0));
    let old = d.path().join("old.vhd");
    std::fs::write(&old, &bytes).unwrap();
    assert_eq!(stamp_read(&old), want);
    let i = stamp_disk::info(&old, None).unwrap();
    assert_eq!(i.subformat.as_deref(), Some("fixed"));
}

/// A fixed disk whose data starts like a dynamic VHD (a VHD stored in a VHD) is read as the
/// fixed disk it is, from its footer at the end.
#[test]
fn vhd_fixed_disk_holding_a_vhd_is_read_as_fixed() {
    let d = tmp();
    let inner_raw = d.path().join("inner.raw");
    random_sparse_raw(&inner_raw, 2 << 20, 4, 8);
    let inner = d.path().join("inner.vhd");
    stamp_convert(&inner_raw, &inner, Format::Vhd, "force_size=on", false);
    let mut outer_data = std::fs::read(&inner).unwrap();
    outer_data.resize(6 << 20, 0);
    let outer = d.path().join("outer.vhd");
    let r = write_direct(
        &outer,
        6 << 20,
        &[(0, outer_data.clone())],
        "subformat=fixed,force_size=on",
    );
    assert!(read_all(r.as_ref()) == outer_data);
    let i = stamp_disk::info(&outer, None).unwrap();
    assert_eq!(i.subformat.as_deref(), Some("fixed"));
}

/// Big-endian field helpers for building VHDs by hand.
fn put_be(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

fn vhd_checksum(b: &[u8], at: usize) -> u32 {
    !b.iter()
        .enumerate()
        .filter(|(i, _)| !(at..at + 4).contains(i))
        .fold(0u32, |a, (_, x)| a.wrapping_add(*x as u32))
}

/// Builds a differencing VHD over `parent` (a dynamic VHD) by hand: `blocks` lists the child
/// blocks to allocate, each with a random bitmap and random data. Returns the child's path and
/// the sectors whose bit is set.
fn build_child(
    dir: &Path,
    name: &str,
    parent: &Path,
    parent_uuid: [u8; 16],
    blocks: &[usize],
    locator: &str,
    seed: u64,
) -> (std::path::PathBuf, Vec<bool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let pbytes = std::fs::read(parent).unwrap();
    let size = u64::from_be_bytes(pbytes[48..56].try_into().unwrap());
    let bs = 2usize << 20;
    let entries = (size as usize).div_ceil(bs);
    let mut footer = pbytes[..512].to_vec();
    put_be(&mut footer, 28, b"win ");
    put_be(&mut footer, 60, &4u32.to_be_bytes());
    put_be(&mut footer, 68, &[0xc1; 16]);
    let bat_off = 1536usize;
    let bat_len = (entries * 4).div_ceil(512) * 512;
    let loc_off = bat_off + bat_len;
    let loc: Vec<u8> = locator
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let mut header = vec![0u8; 1024];
    put_be(&mut header, 0, b"cxsparse");
    put_be(&mut header, 8, &u64::MAX.to_be_bytes());
    put_be(&mut header, 16, &(bat_off as u64).to_be_bytes());
    put_be(&mut header, 24, &0x0001_0000u32.to_be_bytes());
    put_be(&mut header, 28, &(entries as u32).to_be_bytes());
    put_be(&mut header, 32, &(bs as u32).to_be_bytes());
    put_be(&mut header, 40, &parent_uuid);
    let pname: Vec<u8> = "parent.vhd"
        .encode_utf16()
        .flat_map(|u| u.to_be_bytes())
        .collect();
    put_be(&mut header, 64, &pname);
    put_be(&mut header, 576, b"W2ru");
    put_be(&mut header, 580, &512u32.to_be_bytes());
    put_be(&mut header, 584, &(loc.len() as u32).to_be_bytes());
    put_be(&mut header, 592, &(loc_off as u64).to_be_bytes());
    let sum = vhd_checksum(&header, 36);
    put_be(&mut header, 36, &sum.to_be_bytes());
    let mut file = vec![0u8; loc_off + 512];
    file[1536..1536 + bat_len].fill(0xff);
    put_be(&mut file, loc_off, &loc);
    let mut bits = vec![false; size as usize / 512];
    for &b in blocks {
        let at = file.len();
        put_be(
            &mut file,
            bat_off + 4 * b,
            &((at / 512) as u32).to_be_bytes(),
        );
        let mut bitmap = vec![0u8; 512];
        for s in 0..bs / 512 {
            let set = match (s / 64) % 4 {
                0 => true,
                1 => false,
                _ => rng.random_bool(0.5),
            };
            if set {
                bitmap[s / 8] |= 0x80 >> (s % 8);
                if let Some(x) = bits.get_mut(b * (bs / 512) + s) {
                    *x = true;
                }
            }
        }
        file.extend_from_slice(&bitmap);
        let mut data = vec![0u8; bs];
        rng.fill(&mut data[..]);
        file.extend_from_slice(&data);
    }
    let fsum = vhd_checksum(&footer, 64);
    put_be(&mut footer, 64, &fsum.to_be_bytes());
    put_be(&mut file, 0, &footer);
    put_be(&mut file, 512, &header);
    file.extend_from_slice(&footer);
    let child = dir.join(name);
    std::fs::write(&child, &file).unwrap();
    (child, bits)
}

/// A differencing disk built by hand over a qemu-made parent: sectors whose bitmap bit is set
/// read as the child's data (as qemu, which ignores parents and bitmaps, reads the child's
/// blocks), the others as the parent (as qemu reads the parent).
#[test]
fn vhd_differencing_reads_child_then_parent() {
    let d = tmp();
    let raw = d.path().join("parent.raw");
    random_sparse_raw(&raw, 6 << 20, 40, 11);
    let parent = d.path().join("parent.vhd");
    qemu_convert(&raw, &parent, "vpc", "force_size=on", false);
    let puuid: [u8; 16] = std::fs::read(&parent).unwrap()[68..84].try_into().unwrap();
    let (child, bits) = build_child(
        d.path(),
        "child.vhd",
        &parent,
        puuid,
        &[0, 2],
        ".\\parent.vhd",
        3,
    );
    let from_parent = qemu_read_vpc(&parent);
    let child_alone = qemu_read_vpc(&child);
    let got = stamp_read(&child);
    assert_eq!(got.len(), from_parent.len());
    for (s, set) in bits.iter().enumerate() {
        let r = s * 512..(s + 1) * 512;
        let want = if *set {
            &child_alone[r.clone()]
        } else {
            &from_parent[r.clone()]
        };
        assert_eq!(&got[r], want, "sector {s} (bit {set})");
    }
    let i = stamp_disk::info(&child, None).unwrap();
    assert_eq!(i.subformat.as_deref(), Some("differencing"));
    assert_eq!(i.backing_file.as_deref(), Some(".\\parent.vhd"));
    assert_eq!(i.backing_chain.len(), 1);
    assert_eq!(i.backing_chain[0].subformat.as_deref(), Some("dynamic"));
    // Converting the child flattens the chain.
    let flat = d.path().join("flat.vhd");
    stamp_convert(&child, &flat, Format::Vhd, "force_size=on", false);
    assert_eq!(qemu_read_vpc(&flat), got);

    // The same child over a parent with another UUID is refused, naming the parent.
    let (wrong, _) = build_child(
        d.path(),
        "wrong.vhd",
        &parent,
        [7; 16],
        &[1],
        ".\\parent.vhd",
        4,
    );
    let r = stamp_disk::open(&wrong, None).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let e = r.read_at(&mut buf, 0).unwrap_err();
    assert!(e.to_string().contains("UUID"), "{e}");

    // With the parent gone, info still works and reads fail naming it.
    let (orphan, _) = build_child(
        d.path(),
        "orphan.vhd",
        &parent,
        puuid,
        &[0],
        ".\\parent.vhd",
        5,
    );
    std::fs::remove_file(&parent).unwrap();
    let r = stamp_disk::open(&orphan, None).unwrap();
    assert_eq!(r.info().backing_file.as_deref(), Some(".\\parent.vhd"));
    match r.read_at(&mut buf, 0) {
        Err(Error::Missing { missing, .. }) => assert!(missing.ends_with("parent.vhd")),
        other => panic!("{other:?}"),
    }
}

/// check() finds blocks that overlap each other or the metadata.
#[test]
fn vhd_check_reports_overlapping_blocks() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    let data: Vec<u8> = (0..(6u32 << 20)).map(|i| (i % 253) as u8 + 1).collect();
    std::fs::write(&raw, &data).unwrap();
    let vhd = d.path().join("x.vhd");
    stamp_convert(&raw, &vhd, Format::Vhd, "force_size=on", false);
    let r = stamp_disk::open(&vhd, None).unwrap();
    let c = r.check().unwrap();
    assert!(c.corruptions.is_empty(), "{c:?}");
    assert_eq!((c.allocated_clusters, c.total_clusters), (3, 3));
    // Point BAT entry 1 at block 0.
    let mut b = std::fs::read(&vhd).unwrap();
    let e0: [u8; 4] = b[1536..1540].try_into().unwrap();
    b[1540..1544].copy_from_slice(&e0);
    std::fs::write(&vhd, &b).unwrap();
    let c = stamp_disk::open(&vhd, None).unwrap().check().unwrap();
    assert_eq!(c.exit_code(), 2, "{c:?}");
    assert!(c.corruptions[0].contains("overlaps"), "{c:?}");
    // A BAT entry past the end of the file is refused at open (qemu: image truncated).
    b[1540..1544].copy_from_slice(&0x00ff_ffffu32.to_be_bytes());
    std::fs::write(&vhd, &b).unwrap();
    match open_err(&vhd) {
        Error::Corrupt {
            structure, offset, ..
        } => assert_eq!((structure.as_str(), offset), ("BAT", 1540)),
        e => panic!("{e}"),
    }
}

#[test]
fn vhd_mutation_fuzz_does_not_panic() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    random_sparse_raw(&raw, 4 << 20, 6, 9);
    let vhd = d.path().join("seed.vhd");
    stamp_convert(&raw, &vhd, Format::Vhd, "force_size=on", false);
    fuzz_mutations(&vhd, 300, 2048, 1);
    let fixed = d.path().join("fixed.vhd");
    stamp_convert(&raw, &fixed, Format::Vhd, "subformat=fixed", false);
    // Mutate the footer at the end: fuzz a copy whose footer is also at the start.
    let bytes = std::fs::read(&fixed).unwrap();
    let mut rotated = bytes[bytes.len() - 512..].to_vec();
    rotated.extend_from_slice(&bytes[..bytes.len() - 512]);
    let rot = d.path().join("rot.vhd");
    std::fs::write(&rot, &rotated).unwrap();
    fuzz_mutations(&rot, 100, 512, 2);
    let fx = fixtures_unpacked();
    fuzz_mutations(
        &fx.path().join("vhd/win10-differencing-fat.vhd"),
        100,
        1 << 14,
        3,
    );
}

/// Writes `runs` through the writer API directly and reads the image back.
fn write_direct(
    path: &Path,
    size: u64,
    runs: &[(u64, Vec<u8>)],
    opts: &str,
) -> Box<dyn DiskReader> {
    let o = CreateOptions::parse(opts).unwrap();
    let mut w = stamp_disk::create(path, Format::Vhd, size, &o).unwrap();
    for (off, data) in runs {
        w.write_extent(Extent::Data {
            offset: *off,
            bytes: data.clone().into(),
        })
        .unwrap();
    }
    w.finish().unwrap();
    stamp_disk::open(path, None).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20, ..ProptestConfig::default() })]

    /// Any sparse disk written through the writer reads back the same, in every subformat.
    #[test]
    fn vhd_round_trip(size in 1u64..(9 << 20), seed in any::<u64>(), sub in 0usize..4) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut runs = Vec::new();
        let mut pos = 0u64;
        while pos < size && runs.len() < 8 {
            let gap = rng.random_range(0..(3u64 << 20));
            let start = pos + gap;
            if start >= size { break; }
            let len = rng.random_range(1..=(size - start).min(3 << 20));
            let mut data = vec![0u8; len as usize];
            rng.fill(&mut data[..]);
            runs.push((start, data));
            pos = start + len;
        }
        let opts = ["", "subformat=fixed", "force_size=on", "subformat=fixed,force_size=on"][sub];
        let d = tmp();
        let p = d.path().join("p.vhd");
        let r = write_direct(&p, size, &runs, opts);
        prop_assert!(r.virtual_size() >= size);
        let back = read_all(r.as_ref());
        let mut want = vec![0u8; r.virtual_size() as usize];
        for (off, data) in &runs {
            want[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        prop_assert!(back == want);
    }
}

/// Speed against qemu-img (run by hand: `cargo test --release -p stamp-disk --test formats
/// vhd_speed -- --ignored --nocapture`): raw to vhd dynamic and fixed, and to vdi.
#[test]
#[ignore]
fn vhd_speed_against_qemu() {
    use std::io::Write;
    use std::time::Instant;
    let d = tmp();
    let raw = d.path().join("big.raw");
    let size: u64 = std::env::var("STAMP_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024)
        << 20;
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&raw).unwrap());
        let mut rng = StdRng::seed_from_u64(1);
        let mut chunk = vec![0u8; 1 << 20];
        for i in 0..size >> 20 {
            if i % 3 == 2 {
                f.flush().unwrap();
                f.get_mut().set_len((i + 1) << 20).unwrap();
                use std::io::Seek;
                f.seek(std::io::SeekFrom::Start((i + 1) << 20)).unwrap();
                continue;
            }
            rng.fill(&mut chunk[..]);
            f.write_all(&chunk).unwrap();
        }
        f.flush().unwrap();
        f.get_mut().set_len(size).unwrap();
    }
    for (fmt, qfmt, opts) in [
        (Format::Vhd, "vpc", ""),
        (Format::Vhd, "vpc", "subformat=fixed"),
        (Format::Vdi, "vdi", ""),
    ] {
        let ours = d.path().join("ours.img");
        let theirs = d.path().join("theirs.img");
        // Best of three, alternating, each after a sync: the disk is shared and noisy.
        let (mut ts, mut tq) = (std::time::Duration::MAX, std::time::Duration::MAX);
        for _ in 0..3 {
            let _ = std::process::Command::new("sync").status();
            let t = Instant::now();
            stamp_convert(&raw, &ours, fmt, opts, false);
            ts = ts.min(t.elapsed());
            let _ = std::process::Command::new("sync").status();
            let t = Instant::now();
            qemu_convert(&raw, &theirs, qfmt, opts, false);
            // stamp's output is fsynced before it is renamed into place; qemu-img's is not.
            let _ = std::process::Command::new("sync").arg(&theirs).status();
            tq = tq.min(t.elapsed());
            std::fs::remove_file(&theirs).unwrap();
        }
        eprintln!("{qfmt} {opts}: stamp {ts:?}, qemu-img + sync {tq:?}");
        std::fs::remove_file(&ours).unwrap();
    }
}
