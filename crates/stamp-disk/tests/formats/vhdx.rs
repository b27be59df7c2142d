//! vhdx tests: qemu-img is the reference. What qemu-img writes (dynamic and fixed, 1 MiB and
//! 32 MiB blocks, sizes that are not a multiple of the block size), stamp reads byte for byte;
//! what stamp writes, qemu-img checks clean and reads identically.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::common::*;
use proptest::prelude::*;
use stamp_disk::vhdx::header::Header;
use stamp_disk::vhdx::layout::{BAT_OFFSET_MASK, HEADER1_OFFSET, HEADER2_OFFSET, MIB};
use stamp_disk::vhdx::log::build_entry;
use stamp_disk::{DiskReader, Error, Format};

/// The BAT of every image stamp writes starts at 2 MiB (after the header section and the log).
const STAMP_BAT: u64 = 2 * MIB;

fn patch(path: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn read_u64(path: &Path, off: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off).unwrap();
    u64::from_le_bytes(b)
}

fn open_err(path: &Path) -> Error {
    match stamp_disk::open(path, None) {
        Ok(_) => panic!("{} opened but should be refused", path.display()),
        Err(e) => e,
    }
}

#[test]
fn vhdx_reads_qemu_images_like_qemu() {
    let d = tmp();
    let cases = [
        ("block_size=1M", 5 * MIB + 512, "dynamic", MIB),
        ("block_size=32M", 34 * MIB + 512, "dynamic", 32 * MIB),
        ("", 20 * MIB + 4096, "dynamic", 8 * MIB),
        (
            "subformat=fixed,block_size=1M",
            3 * MIB + 1024,
            "fixed",
            MIB,
        ),
        (
            "subformat=fixed,block_state_zero=off,block_size=1M",
            7 * MIB + 512,
            "fixed",
            MIB,
        ),
        (
            "subformat=fixed,block_state_zero=off,block_size=32M",
            33 * MIB,
            "fixed",
            32 * MIB,
        ),
    ];
    for (i, (opts, size, sub, bs)) in cases.into_iter().enumerate() {
        let raw = d.path().join(format!("src{i}.raw"));
        random_sparse_raw(&raw, size, 12, i as u64);
        let img = d.path().join(format!("q{i}.vhdx"));
        qemu_convert(&raw, &img, "vhdx", opts, false);
        let got = assert_reads_like_qemu(&img);
        assert_eq!(got, std::fs::read(&raw).unwrap(), "{opts} {size}");
        let r = stamp_disk::open(&img, None).unwrap();
        let info = r.info();
        assert_eq!(info.format, "vhdx");
        assert_eq!(info.subformat.as_deref(), Some(sub), "{opts}");
        assert_eq!(info.cluster_size, Some(bs), "{opts}");
        assert_eq!(
            info.cluster_size,
            qemu_info(&img)["cluster-size"].as_u64(),
            "{opts}"
        );
        assert_eq!(
            info.virtual_size,
            qemu_info(&img)["virtual-size"].as_u64().unwrap()
        );
        let check = r.check().unwrap();
        assert!(check.corruptions.is_empty(), "{opts}: {check:?}");
    }
}

#[test]
fn vhdx_reads_an_empty_qemu_image_as_zeros_with_no_allocation() {
    let d = tmp();
    for opts in ["block_size=1M", "subformat=dynamic"] {
        let img = d.path().join("empty.vhdx");
        let _ = std::fs::remove_file(&img);
        qemu_img(&[
            "create",
            "-f",
            "vhdx",
            "-o",
            opts,
            img.to_str().unwrap(),
            "9M",
        ]);
        let r = stamp_disk::open(&img, None).unwrap();
        assert!(r.allocation().unwrap().is_empty());
        assert_reads_like_qemu(&img);
    }
}

#[test]
fn vhdx_stamp_output_checks_clean_and_compares_identical_in_qemu() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    // Not a multiple of any block size, with data near the end.
    let size = 33 * MIB + 3 * 512;
    random_sparse_raw(&raw, size, 20, 7);
    let cases = [
        ("", "dynamic", 8 * MIB),
        ("subformat=dynamic,block_size=1M", "dynamic", MIB),
        ("block_size=32M", "dynamic", 32 * MIB),
        ("subformat=fixed", "fixed", 8 * MIB),
        ("subformat=fixed,block_size=1M", "fixed", MIB),
        ("subformat=fixed,block_size=32M", "fixed", 32 * MIB),
    ];
    for (opts, sub, bs) in cases {
        let img = d.path().join("out.vhdx");
        let _ = std::fs::remove_file(&img);
        stamp_convert(&raw, &img, Format::Vhdx, opts, false);
        assert_qemu_check_clean(&img);
        assert_qemu_identical(&raw, &img);
        let qi = qemu_info(&img);
        assert_eq!(qi["format"], "vhdx", "{opts}");
        assert_eq!(qi["cluster-size"].as_u64(), Some(bs), "{opts}");
        assert_eq!(qi["virtual-size"].as_u64(), Some(size), "{opts}");
        let r = stamp_disk::open(&img, None).unwrap();
        assert_eq!(r.info().subformat.as_deref(), Some(sub));
        if sub == "dynamic" {
            // Only blocks holding data are stored: the file is far smaller than the disk.
            let len = std::fs::metadata(&img).unwrap().len();
            let blocks = r.check().unwrap().allocated_clusters;
            if bs == MIB {
                assert!(blocks < size.div_ceil(bs), "{opts}: {blocks} blocks");
            }
            assert!(len <= 4 * MIB + blocks * bs, "{opts}: file is {len} bytes");
        }
    }
}

#[test]
fn vhdx_sizes_round_up_to_sectors_like_qemu() {
    let d = tmp();
    let raw = d.path().join("odd.raw");
    std::fs::write(&raw, vec![0x5au8; 1000]).unwrap();
    let img = d.path().join("odd.vhdx");
    stamp_convert(&raw, &img, Format::Vhdx, "block_size=1M", false);
    let q = d.path().join("q.vhdx");
    qemu_convert(&raw, &q, "vhdx", "block_size=1M", false);
    assert_eq!(
        qemu_info(&img)["virtual-size"],
        qemu_info(&q)["virtual-size"]
    );
    assert_eq!(qemu_read(&img, None), qemu_read(&q, None));
    assert_qemu_check_clean(&img);
}

#[test]
fn vhdx_output_is_deterministic() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    random_sparse_raw(&raw, 9 * MIB, 10, 3);
    for opts in ["block_size=1M", "subformat=fixed,block_size=1M"] {
        let a = d.path().join("a.vhdx");
        let b = d.path().join("b.vhdx");
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
        stamp_convert(&raw, &a, Format::Vhdx, opts, false);
        stamp_convert(&raw, &b, Format::Vhdx, opts, false);
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{opts}: two conversions differ"
        );
    }
}

#[test]
fn vhdx_refuses_bad_options() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    std::fs::write(&raw, vec![1u8; 4096]).unwrap();
    for opts in [
        "subformat=streamOptimized",
        "block_size=3M",
        "block_size=512M",
        "compat=1.1",
    ] {
        let o = stamp_disk::CreateOptions::parse(opts).unwrap();
        let e = stamp_disk::create(&d.path().join("x.vhdx"), Format::Vhdx, 4096, &o)
            .err()
            .unwrap_or_else(|| panic!("{opts} accepted"));
        assert!(matches!(e, Error::InvalidOption(_)), "{opts}: {e}");
    }
    assert!(!d.path().join("x.vhdx").exists());
}

#[test]
fn vhdx_refuses_headers_with_bad_checksums_and_uses_the_other_like_qemu() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    random_sparse_raw(&raw, 4 * MIB, 6, 11);
    let img = d.path().join("h.vhdx");
    stamp_convert(&raw, &img, Format::Vhdx, "block_size=1M", false);
    // Spoil the current header (the second, with the higher sequence number): both qemu and
    // stamp fall back to the first.
    patch(&img, HEADER2_OFFSET + 200, &[0xee]);
    assert_eq!(assert_reads_like_qemu(&img), std::fs::read(&raw).unwrap());
    // Spoil the first too: both refuse.
    patch(&img, HEADER1_OFFSET + 300, &[0xee]);
    let (code, _) = qemu_img_status(&["info", img.to_str().unwrap()]);
    assert_ne!(code, 0, "qemu-img opened an image with no valid header");
    let e = open_err(&img);
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Corrupt { ref structure, offset, .. } if structure == "header" && offset == HEADER1_OFFSET),
        "{msg}"
    );
    assert!(msg.contains("checksum mismatch"), "{msg}");
}

#[test]
fn vhdx_refuses_a_bat_entry_past_the_end_of_the_file() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    random_sparse_raw(&raw, 4 * MIB, 6, 12);
    let img = d.path().join("b.vhdx");
    stamp_convert(&raw, &img, Format::Vhdx, "block_size=1M", false);
    let entry = read_u64(&img, STAMP_BAT + 8);
    assert_eq!(entry & 7, 6, "block 1 should be present");
    patch(&img, STAMP_BAT + 8, &((1000 * MIB) | 6).to_le_bytes());
    // qemu refuses to open it, and its check counts a corruption.
    let (code, _) = qemu_img_status(&["info", img.to_str().unwrap()]);
    assert_ne!(code, 0);
    let (code, text) = qemu_img_status(&["check", img.to_str().unwrap()]);
    assert_eq!(code, 2, "qemu-img check: {text}");
    let e = open_err(&img);
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Corrupt { ref structure, offset, .. } if structure == "BAT" && offset == STAMP_BAT + 8),
        "{msg}"
    );
    assert!(msg.contains("past the end of the file"), "{msg}");
    // The lenient open used for checking reports it as a corruption, as qemu-img check does.
    let r =
        stamp_disk::vhdx::VhdxReader::open_for_check(stamp_disk::ImageFile::open(&img).unwrap())
            .unwrap();
    let report = r.check().unwrap();
    assert_eq!(report.corruptions.len(), 1, "{report:?}");
    assert_eq!(report.exit_code(), 2);
}

#[test]
fn vhdx_check_reports_blocks_overlapping_metadata_and_each_other() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    random_sparse_raw(&raw, 4 * MIB, 30, 13);
    let img = d.path().join("o.vhdx");
    stamp_convert(&raw, &img, Format::Vhdx, "block_size=1M", false);
    let e0 = read_u64(&img, STAMP_BAT);
    let e1 = read_u64(&img, STAMP_BAT + 8);
    assert_eq!((e0 & 7, e1 & 7), (6, 6));
    // Block 1 onto block 0, block 2 onto the BAT.
    patch(&img, STAMP_BAT + 8, &e0.to_le_bytes());
    patch(&img, STAMP_BAT + 16, &(STAMP_BAT | 6).to_le_bytes());
    let e = open_err(&img);
    assert!(e.to_string().contains("overlaps the BAT"), "{e}");
    let r =
        stamp_disk::vhdx::VhdxReader::open_for_check(stamp_disk::ImageFile::open(&img).unwrap())
            .unwrap();
    let report = r.check().unwrap();
    assert_eq!(report.corruptions.len(), 2, "{report:?}");
    assert!(e0 & BAT_OFFSET_MASK >= 4 * MIB);
}

/// Makes `img` (written by stamp with 1 MiB blocks, block 1 present) carry a pending log entry
/// that restores block 1's BAT entry, after clearing that entry in place.
fn add_pending_log(img: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(img).unwrap();
    let mut page = vec![0u8; 4096];
    f.read_exact_at(&mut page, STAMP_BAT).unwrap();
    let len = f.metadata().unwrap().len();
    patch(img, STAMP_BAT + 8, &0u64.to_le_bytes());
    let guid = [0x42u8; 16];
    let entry = build_entry(&guid, 1, 0, len, &[(STAMP_BAT, Some(page))]);
    patch(img, MIB, &entry);
    for off in [HEADER1_OFFSET, HEADER2_OFFSET] {
        let mut h = vec![0u8; 4096];
        f.read_exact_at(&mut h, off).unwrap();
        let mut h = Header::parse(&h).unwrap();
        h.log_guid = guid;
        patch(img, off, &h.to_bytes());
    }
}

#[test]
fn vhdx_replays_a_pending_log_in_memory_as_qemu_replays_it() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    random_sparse_raw(&raw, 4 * MIB, 30, 14);
    let img = d.path().join("log.vhdx");
    stamp_convert(&raw, &img, Format::Vhdx, "block_size=1M", false);
    assert_eq!(read_u64(&img, STAMP_BAT + 8) & 7, 6);
    add_pending_log(&img);
    // qemu will not open it read-only: the log must be replayed first.
    let (code, text) = qemu_img_status(&["info", img.to_str().unwrap()]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("log"), "{text}");
    // stamp reads it as it is after the replay, without touching the file.
    let before = std::fs::read(&img).unwrap();
    let r = stamp_disk::open(&img, None).unwrap();
    assert!(
        r.info().details["log"].contains("replayed"),
        "{:?}",
        r.info()
    );
    let got = read_all(r.as_ref());
    assert_eq!(got, std::fs::read(&raw).unwrap());
    assert!(
        std::fs::read(&img).unwrap() == before,
        "the image was modified"
    );
    // qemu replays it into a copy, which then reads the same.
    let copy = d.path().join("copy.vhdx");
    std::fs::copy(&img, &copy).unwrap();
    qemu_img_status(&["check", "-r", "all", copy.to_str().unwrap()]);
    assert_eq!(qemu_read(&copy, None), got);
}

#[test]
fn vhdx_ignores_a_log_without_valid_entries_like_qemu() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    random_sparse_raw(&raw, 4 * MIB, 30, 15);
    let img = d.path().join("stale.vhdx");
    stamp_convert(&raw, &img, Format::Vhdx, "block_size=1M", false);
    add_pending_log(&img);
    // Break the entry's checksum: nothing to replay, and the cleared entry stays cleared.
    patch(&img, MIB + 100, &[0x99]);
    let s = assert_reads_like_qemu(&img);
    assert!(s[MIB as usize..2 * MIB as usize].iter().all(|b| *b == 0));
}

#[test]
fn vhdx_survives_mutations() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    random_sparse_raw(&raw, 2 * MIB, 8, 16);
    let img = d.path().join("fuzz.vhdx");
    stamp_convert(&raw, &img, Format::Vhdx, "block_size=1M", false);
    // The header section (headers and region tables)...
    fuzz_mutations(&img, 150, 0x50000, 1);
    // ...and the BAT and metadata table, which no checksum protects.
    let orig = std::fs::read(&img).unwrap();
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let windows = [(STAMP_BAT, 64u64), (3 * MIB, 256), (3 * MIB + 0x10000, 48)];
    for case in 0..150 {
        let mut data = orig.clone();
        for _ in 0..rng.random_range(1..6) {
            let (s, n) = windows[rng.random_range(0..windows.len())];
            let i = (s + rng.random_range(0..n)) as usize;
            data[i] = match case % 3 {
                0 => rng.random(),
                1 => 0xff,
                _ => data[i] ^ (1 << rng.random_range(0..8)),
            };
        }
        exercise(d.path(), "m.vhdx", &data);
    }
}

#[test]
fn vhdx_survives_mutated_log_entries_with_valid_checksums() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    random_sparse_raw(&raw, 2 * MIB, 8, 18);
    let img = d.path().join("log.vhdx");
    stamp_convert(&raw, &img, Format::Vhdx, "block_size=1M", false);
    add_pending_log(&img);
    let orig = std::fs::read(&img).unwrap();
    // The entry is one descriptor sector and one data sector at the start of the log.
    let entry = MIB as usize..MIB as usize + 8192;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for case in 0..200 {
        let mut data = orig.clone();
        for _ in 0..rng.random_range(1..4) {
            // Mostly the header and descriptor fields, sometimes the data sector's.
            let i = if case % 4 == 0 {
                entry.start + 4096 + [0, 4, 4092][rng.random_range(0..3)]
            } else {
                entry.start + rng.random_range(8..96)
            };
            data[i] = match rng.random_range(0..3) {
                0 => rng.random(),
                1 => 0xff,
                _ => 0,
            };
        }
        // Re-seal the checksum so the parser looks past it.
        stamp_disk::vhdx::layout::seal(&mut data[entry.clone()], 4);
        exercise(d.path(), "mlog.vhdx", &data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20, ..ProptestConfig::default() })]

    #[test]
    fn vhdx_round_trips_random_disks(
        size_kib in 1u64..6144,
        writes in proptest::collection::vec((0u64..6144, 1u64..1536, any::<u8>()), 0..6),
        fixed in any::<bool>(),
    ) {
        let d = tmp();
        let size = size_kib * 1024;
        let mut disk = vec![0u8; size as usize];
        for (off_kib, len_kib, v) in writes {
            let off = (off_kib * 1024).min(size);
            let end = (off + len_kib * 1024).min(size);
            disk[off as usize..end as usize].fill(v);
        }
        let raw = d.path().join("p.raw");
        std::fs::write(&raw, &disk).unwrap();
        let img = d.path().join("p.vhdx");
        let opts = if fixed { "subformat=fixed,block_size=1M" } else { "block_size=1M" };
        stamp_convert(&raw, &img, Format::Vhdx, opts, false);
        prop_assert!(stamp_read(&img) == disk);
        prop_assert!(qemu_read(&img, None) == disk);
    }
}

/// Reads `len` bytes at `off` of a plain file.
fn read_file_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, off)
        .unwrap();
    b
}

#[test]
fn vhdx_skips_sector_bitmap_entries_past_the_first_chunk() {
    // With 1 MiB blocks and 512-byte sectors a chunk is 4096 blocks: block 4096 and later have
    // a sector bitmap entry before them in the BAT.
    use std::os::unix::fs::FileExt;
    let d = tmp();
    let raw = d.path().join("big.raw");
    let size = 4 * 1024 * MIB + 8 * MIB;
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    let marks = [
        0u64,
        4095 * MIB + 7,
        4096 * MIB,
        4097 * MIB + 512,
        size - 4096,
    ];
    for (i, m) in marks.iter().enumerate() {
        f.write_all_at(&[i as u8 + 1; 4096][..(size - m).min(4096) as usize], *m)
            .unwrap();
    }
    drop(f);
    let check = |img: &Path| {
        let r = stamp_disk::open(img, None).unwrap();
        assert_eq!(r.virtual_size(), size);
        let alloc = r.allocation().unwrap();
        let total: u64 = alloc.iter().map(|a| a.end - a.start).sum();
        assert!(total <= 8 * MIB, "{alloc:?}");
        for m in marks {
            let start = m / MIB * MIB;
            let len = MIB.min(size - start) as usize;
            let mut got = vec![0u8; len];
            r.read_at(&mut got, start).unwrap();
            assert!(got == read_file_at(&raw, start, len), "block at {start:#x}");
        }
    };
    let q = d.path().join("q.vhdx");
    qemu_convert(&raw, &q, "vhdx", "block_size=1M", false);
    check(&q);
    let s = d.path().join("s.vhdx");
    stamp_convert(&raw, &s, Format::Vhdx, "block_size=1M", false);
    assert_qemu_check_clean(&s);
    check(&s);
    // qemu reads stamp's image the same (converted back to a sparse raw).
    let back = d.path().join("back.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        s.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    for m in marks {
        let start = m / MIB * MIB;
        let len = MIB.min(size - start) as usize;
        assert!(read_file_at(&back, start, len) == read_file_at(&raw, start, len));
    }
}

#[test]
fn vhdx_reads_4k_logical_sectors_which_qemu_refuses() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    random_sparse_raw(&raw, 6 * MIB, 10, 17);
    let img = d.path().join("4k.vhdx");
    qemu_convert(&raw, &img, "vhdx", "block_size=1M", false);
    let want = qemu_read(&img, None);
    // The logical sector size item of qemu's layout: metadata region at 3 MiB, items at 64 KiB.
    let item = 3 * MIB + 0x10000 + 32;
    assert_eq!(read_u64(&img, item) & 0xffff_ffff, 512);
    patch(&img, item, &4096u32.to_le_bytes());
    let (code, _) = qemu_img_status(&["info", img.to_str().unwrap()]);
    assert_ne!(code, 0, "qemu 10 refuses 4 KiB logical sectors");
    let r = stamp_disk::open(&img, None).unwrap();
    assert_eq!(r.info().details["logical_sector_size"], "4096");
    assert!(read_all(r.as_ref()) == want);
}

#[test]
fn vhdx_writes_a_large_sparse_disk_whose_bat_spans_several_chunks() {
    // 160 GiB in 1 MiB blocks: 163840 blocks, a BAT written in several pieces.
    let d = tmp();
    let img = d.path().join("large.vhdx");
    let size = 160u64 << 30;
    let o = stamp_disk::CreateOptions::parse("block_size=1M").unwrap();
    let mut w = stamp_disk::create(&img, Format::Vhdx, size, &o).unwrap();
    let blocks = [3u64, 131_071, 131_073, 150_000, 163_839];
    for b in blocks {
        w.write_extent(stamp_disk::Extent::Data {
            offset: b * MIB + 4096,
            bytes: vec![(b % 251) as u8 + 1; 8192].into(),
        })
        .unwrap();
    }
    w.finish().unwrap();
    assert_qemu_check_clean(&img);
    let r = stamp_disk::open(&img, None).unwrap();
    let alloc = r.allocation().unwrap();
    assert_eq!(alloc.len(), blocks.len(), "{alloc:?}");
    for b in blocks {
        // qemu-img dd reads one block out of the image (its count counts from the start).
        let out = d.path().join("blk.raw");
        let _ = std::fs::remove_file(&out);
        qemu_img(&[
            "dd",
            "-f",
            "vhdx",
            "-O",
            "raw",
            "bs=1M",
            &format!("skip={b}"),
            &format!("count={}", b + 1),
            &format!("if={}", img.display()),
            &format!("of={}", out.display()),
        ]);
        let q = std::fs::read(&out).unwrap();
        let mut s = vec![0u8; MIB as usize];
        r.read_at(&mut s, b * MIB).unwrap();
        assert!(q == s, "block {b}");
        assert_eq!(s[4096], (b % 251) as u8 + 1);
        assert_eq!(s[4095], 0);
    }
}
