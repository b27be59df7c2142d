//! vmdk tests: real-world fixtures and qemu-img-made images read byte for byte as qemu-img reads
//! them; stamp's monolithicSparse and streamOptimized output checked, compared and described by
//! qemu-img.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use super::common::*;
use stamp_disk::{Error, Format};

/// Fixtures (relative to the unpacked fixtures tree) that qemu-img reads.
const GOOD_FIXTURES: &[&str] = &[
    "vmdk/vmware-ws-streamOptimized.vmdk",
    "vmdk/open-vmdk-streamOptimized-markers.vmdk",
    "vmdk/vmware-ws-monolithicSparse.vmdk",
    "vmdk/vmware-ws-twoGbMaxExtentSparse/twoGbMaxExtentSparse.vmdk",
    "vmdk/esxi-vmfs/vmfs_thick.vmdk",
    "ovf/virtualbox-ovf2/ubuntu.2.0-disk1.vmdk",
    "vmdk/stream-generated-stream.vmdk",
    "vmdk/qemu-monolithicSparse-ext2.vmdk",
];

fn open_err(path: &Path) -> Error {
    match stamp_disk::open(path, Some(Format::Vmdk)) {
        Ok(_) => panic!("{} opened but must be refused", path.display()),
        Err(e) => e,
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Asserts that stamp reads `path` as qemu-img does, for disks too big to hold in memory: stamp
/// converts it to a sparse raw file (reading only allocated grains) and `qemu-img compare`
/// checks it against qemu-img's own reading; small disks are also read whole.
fn assert_big_reads_like_qemu(path: &Path) {
    let r = stamp_disk::open(path, None).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if r.virtual_size() <= 16 << 20 {
        assert_reads_like_qemu(path);
        return;
    }
    let d = tmp();
    let raw = d.path().join("stamp.raw");
    stamp_convert(path, &raw, Format::Raw, "", false);
    let (code, text) = qemu_img_status(&["compare", "-f", "vmdk", "-F", "raw", p(path), p(&raw)]);
    assert_eq!(code, 0, "{}: {text}", path.display());
}

#[test]
fn vmdk_fixtures_read_like_qemu() {
    let fx = fixtures_unpacked();
    for f in GOOD_FIXTURES {
        let path = fx.path().join(f);
        assert_big_reads_like_qemu(&path);
        let r = stamp_disk::open(&path, None).unwrap();
        let report = r.check().unwrap();
        assert!(report.corruptions.is_empty(), "{f}: {report:?}");
        let q = qemu_info(&path);
        let info = r.info();
        assert_eq!(
            info.virtual_size,
            q["virtual-size"].as_u64().unwrap(),
            "{f}"
        );
        if let Some(cs) = q["cluster-size"].as_u64() {
            assert_eq!(info.cluster_size, Some(cs), "{f}");
        }
    }
}

#[test]
fn vmdk_fixture_info_names_subformat_and_details() {
    let fx = fixtures_unpacked();
    let cases = [
        (
            "vmdk/vmware-ws-streamOptimized.vmdk",
            "streamOptimized",
            Some("deflate"),
        ),
        (
            "vmdk/vmware-ws-monolithicSparse.vmdk",
            "monolithicSparse",
            None,
        ),
        (
            "vmdk/vmware-ws-twoGbMaxExtentSparse/twoGbMaxExtentSparse.vmdk",
            "twoGbMaxExtentSparse",
            None,
        ),
        ("vmdk/esxi-vmfs/vmfs_thick.vmdk", "vmfs", None),
        (
            "ovf/virtualbox-ovf2/ubuntu.2.0-disk1.vmdk",
            "streamOptimized",
            Some("deflate"),
        ),
    ];
    for (f, sub, comp) in cases {
        let i = stamp_disk::info(&fx.path().join(f), None).unwrap();
        assert_eq!(i.format, "vmdk");
        assert_eq!(i.subformat.as_deref(), Some(sub), "{f}");
        assert_eq!(i.compression.as_deref(), comp, "{f}");
        assert!(i.details.contains_key("cid"), "{f}: {:?}", i.details);
        assert!(i.details.contains_key("extent.0"), "{f}: {:?}", i.details);
        assert!(i.actual_size > 0, "{f}");
    }
    let i = stamp_disk::info(&fx.path().join("vmdk/esxi-vmfs/vmfs_thick.vmdk"), None).unwrap();
    assert_eq!(i.details["adapter_type"], "lsilogic");
    assert_eq!(i.details["hw_version"], "14");
    assert_eq!(i.details["extent.0"], "VMFS vmfs_thick-flat.vmdk");
    // The descriptor and the 2 MiB flat extent both count.
    assert!(i.actual_size >= 2 << 20, "{}", i.actual_size);
}

#[test]
fn vmdk_bad_fixtures_are_refused_with_clear_errors() {
    let fx = fixtures_unpacked();
    let e = open_err(
        &fx.path()
            .join("vmdk/BAD-missing-extent/monolithicFlat.vmdk"),
    );
    assert!(matches!(e, Error::Missing { .. }), "{e}");
    assert!(e.to_string().contains("monolithicFlat-flat.vmdk"), "{e}");

    let e = open_err(&fx.path().join("vmdk/esxi-vmfs/vmfs_thick-000001.vmdk"));
    assert!(matches!(e, Error::Missing { .. }), "{e}");
    assert!(
        e.to_string().contains("vmfs_thick-000001-delta.vmdk"),
        "{e}"
    );

    let bad = fx.path().join("vmdk/BAD-qemu-streamOptimized-invalid.img");
    let e = open_err(&bad);
    assert!(e.is_bad_input(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("BAD-qemu-streamOptimized-invalid.img") && msg.contains("truncated"),
        "{msg}"
    );
    let (code, _) = qemu_img_status(&["info", p(&bad)]);
    assert_ne!(code, 0);

    // The vmdk inside the forklift OVA went through a UTF-8 round trip.
    let d = tmp();
    let ova =
        std::fs::File::open(fx.path().join("ova/BAD-forklift-utf8-mangled-vmdk.ova")).unwrap();
    tar::Archive::new(ova).unpack(d.path()).unwrap();
    let vmdk = d.path().join("2nd_disk.vmdk");
    let (code, text) = qemu_img_status(&["info", p(&vmdk)]);
    assert!(
        code != 0 && text.contains("L2 table size too big"),
        "{text}"
    );
    let e = open_err(&vmdk);
    let msg = e.to_string();
    assert!(e.is_bad_input(), "{msg}");
    assert!(
        msg.contains("2nd_disk.vmdk") && msg.contains("L2 table size too big"),
        "{msg}"
    );
}

#[test]
fn vmdk_broken_descriptors_are_refused() {
    let d = tmp();
    let write = |name: &str, text: &[u8]| -> PathBuf {
        let path = d.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    std::fs::write(d.path().join("data.bin"), vec![7u8; 4096]).unwrap();
    let head = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n";
    let e = open_err(&write(
        "unknown.vmdk",
        format!("{head}createType=\"bogusType\"\nRW 8 FLAT \"data.bin\" 0\n").as_bytes(),
    ));
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("bogusType"), "{e}");
    let e = open_err(&write(
        "nocreate.vmdk",
        format!("{head}RW 8 FLAT \"data.bin\" 0\n").as_bytes(),
    ));
    assert!(e.to_string().contains("createType"), "{e}");
    let e = open_err(&write(
        "badline.vmdk",
        format!("{head}createType=\"monolithicFlat\"\nRW 8 FLAT \"data.bin\"\n").as_bytes(),
    ));
    assert!(e.to_string().contains("line 6"), "{e}");
    let mut binary = format!("{head}createType=\"monolithicFlat\"\n").into_bytes();
    binary.extend_from_slice(&[1, 2, 3, 0xff, b'\n']);
    let e = open_err(&write("binary.vmdk", &binary));
    assert!(e.to_string().contains("not text"), "{e}");

    // A sparse extent whose header disagrees with the descriptor's size.
    let raw = d.path().join("src.raw");
    random_sparse_raw(&raw, 1 << 20, 4, 3);
    let two = d.path().join("two.vmdk");
    qemu_convert(&raw, &two, "vmdk", "subformat=twoGbMaxExtentSparse", false);
    let text = std::fs::read_to_string(&two).unwrap();
    std::fs::write(&two, text.replace("RW 2048 SPARSE", "RW 4096 SPARSE")).unwrap();
    let e = open_err(&two);
    assert!(e.to_string().contains("do not add up"), "{e}");

    // A multi-extent descriptor with a ZERO extent between flat ones.
    let z = write(
        "zero.vmdk",
        format!(
            "{head}createType=\"monolithicFlat\"\nRW 4 FLAT \"data.bin\" 2\nRW 8 ZERO\nRDONLY 2 FLAT \"data.bin\" 0\n"
        )
        .as_bytes(),
    );
    let r = stamp_disk::open(&z, None).unwrap();
    assert_eq!(r.virtual_size(), 14 * 512);
    let all = read_all(r.as_ref());
    assert!(all[..2048].iter().all(|b| *b == 7));
    assert!(all[2048..6144].iter().all(|b| *b == 0));
    assert!(all[6144..].iter().all(|b| *b == 7));
}

/// Writes a `COWD` (ESX vmfsSparse) delta of `sectors` sectors with 4 KiB grains, holding
/// `grains` (grain index, fill byte) and one zeroed-by-parent hole elsewhere.
fn write_cowd(path: &Path, sectors: u32, grains: &[(u32, u8)]) {
    let gran = 8u32;
    let per_gt = 4096u32;
    let gd_entries = sectors.div_ceil(gran * per_gt);
    let gd_sector = 1u32;
    let gt_sector = 2u32;
    let gt_sectors = gd_entries * per_gt * 4 / 512;
    let mut next = gt_sector + gt_sectors;
    let mut f = vec![0u8; (next * 512) as usize];
    f[0..4].copy_from_slice(b"COWD");
    for (i, v) in [1u32, 3, sectors, gran, gd_sector, gd_entries, 0]
        .iter()
        .enumerate()
    {
        f[4 + i * 4..8 + i * 4].copy_from_slice(&v.to_le_bytes());
    }
    for t in 0..gd_entries {
        let at = (gd_sector * 512 + t * 4) as usize;
        f[at..at + 4].copy_from_slice(&(gt_sector + t * per_gt * 4 / 512).to_le_bytes());
    }
    for &(g, fill) in grains {
        let at = (gt_sector * 512 + g * 4) as usize;
        f[at..at + 4].copy_from_slice(&next.to_le_bytes());
        f.extend(std::iter::repeat_n(fill, (gran * 512) as usize));
        next += gran;
    }
    let fs = next;
    f[28..32].copy_from_slice(&fs.to_le_bytes());
    std::fs::write(path, f).unwrap();
}

#[test]
fn vmdk_vmfs_sparse_snapshot_reads_like_qemu() {
    let d = tmp();
    let flat = d.path().join("base-flat.vmdk");
    let base: Vec<u8> = (0..4u32 << 20).map(|i| (i / 4096) as u8 | 1).collect();
    std::fs::write(&flat, &base).unwrap();
    std::fs::write(
        d.path().join("base.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=0172e8a4\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\n\
         RW 8192 VMFS \"base-flat.vmdk\"\n\nddb.adapterType = \"lsilogic\"\n",
    )
    .unwrap();
    write_cowd(
        &d.path().join("snap-delta.vmdk"),
        8192,
        &[(0, 0xa1), (5, 0xb2), (1023, 0xc3)],
    );
    let snap = d.path().join("snap.vmdk");
    std::fs::write(
        &snap,
        "# Disk DescriptorFile\nversion=1\nCID=8f67ca74\nparentCID=0172e8a4\n\
         createType=\"vmfsSparse\"\nparentFileNameHint=\"base.vmdk\"\n\
         RW 8192 VMFSSPARSE \"snap-delta.vmdk\"\n",
    )
    .unwrap();
    let s = assert_reads_like_qemu(&snap);
    assert!(s[..4096].iter().all(|b| *b == 0xa1));
    assert_eq!(s[4096..8192], base[4096..8192]);
    assert!(s[5 * 4096..6 * 4096].iter().all(|b| *b == 0xb2));
    let i = stamp_disk::info(&snap, None).unwrap();
    assert_eq!(i.subformat.as_deref(), Some("vmfsSparse"));
    assert_eq!(i.backing_file.as_deref(), Some("base.vmdk"));
    assert_eq!(i.details["extent.0"], "VMFSSPARSE snap-delta.vmdk");
    // The delta alone (qemu-img refuses it: no embedded descriptor with a CID) reads its grains
    // over zeros.
    let delta = stamp_read(&d.path().join("snap-delta.vmdk"));
    assert_eq!(
        delta[..8192],
        s[..8192]
            .iter()
            .map(|b| if *b == 0xa1 { 0xa1 } else { 0 })
            .collect::<Vec<_>>()[..]
    );
    assert!(delta[1023 * 4096..1024 * 4096].iter().all(|b| *b == 0xc3));
    fuzz_mutations(&d.path().join("snap-delta.vmdk"), 100, 1024, 7);
}

/// A random sparse raw disk of `size` in `dir`.
fn sample_raw(dir: &Path, size: u64, seed: u64) -> PathBuf {
    let raw = dir.join("src.raw");
    random_sparse_raw(&raw, size, 24, seed);
    raw
}

#[test]
fn vmdk_qemu_subformats_read_like_qemu() {
    let d = tmp();
    let raw = sample_raw(d.path(), 24 << 20, 11);
    let src = std::fs::read(&raw).unwrap();
    for (name, opts, sub) in [
        ("ms.vmdk", "subformat=monolithicSparse", "monolithicSparse"),
        ("mf.vmdk", "subformat=monolithicFlat", "monolithicFlat"),
        (
            "ts.vmdk",
            "subformat=twoGbMaxExtentSparse",
            "twoGbMaxExtentSparse",
        ),
        (
            "tf.vmdk",
            "subformat=twoGbMaxExtentFlat",
            "twoGbMaxExtentFlat",
        ),
        ("so.vmdk", "subformat=streamOptimized", "streamOptimized"),
        ("lsi.vmdk", "adapter_type=lsilogic", "monolithicSparse"),
    ] {
        let path = d.path().join(name);
        qemu_convert(&raw, &path, "vmdk", opts, false);
        let s = assert_reads_like_qemu(&path);
        assert!(s == src, "{name}: contents differ from the source");
        let r = stamp_disk::open(&path, None).unwrap();
        assert_eq!(r.info().subformat.as_deref(), Some(sub), "{name}");
        assert!(r.check().unwrap().corruptions.is_empty(), "{name}");
        // Allocation is tight: only written grains (64 KiB each) are listed.
        let alloc: u64 = r
            .allocation()
            .unwrap()
            .iter()
            .map(|r| r.end - r.start)
            .sum();
        if sub != "monolithicFlat" && sub != "twoGbMaxExtentFlat" {
            assert!(alloc < 12 << 20, "{name}: allocation {alloc}");
        }
    }
    let i = stamp_disk::info(&d.path().join("lsi.vmdk"), None).unwrap();
    assert_eq!(i.details["adapter_type"], "lsilogic");
}

#[test]
fn vmdk_parent_chain_reads_like_qemu() {
    let d = tmp();
    let raw = sample_raw(d.path(), 8 << 20, 5);
    let parent = d.path().join("parent.vmdk");
    qemu_convert(&raw, &parent, "vmdk", "", false);
    // (Before the child exists: qemu refuses a child whose parent's CID has changed.)
    let out = Command::new("qemu-io")
        .args(["-f", "vmdk", "-c", "write -P 0x77 3M 128K", p(&parent)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let child = d.path().join("child.vmdk");
    // Zeroed grains (grain table entry 1) in the child hide the parent's data.
    qemu_img(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        "-b",
        "parent.vmdk",
        "-F",
        "vmdk",
        p(&child),
    ]);
    for cmd in [
        "write -P 0x5a 1M 100K",
        "write -P 0x33 7M 4K",
        "write -z 3M 64K",
    ] {
        let out = Command::new("qemu-io")
            .args(["-f", "vmdk", "-c", cmd, p(&child)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = assert_reads_like_qemu(&child);
    assert!(
        s[(1 << 20)..(1 << 20) + 100 * 1024]
            .iter()
            .all(|b| *b == 0x5a)
    );
    assert!(s[3 << 20..(3 << 20) + 65536].iter().all(|b| *b == 0));
    assert!(
        s[(3 << 20) + 65536..(3 << 20) + 131072]
            .iter()
            .all(|b| *b == 0x77)
    );
    let i = stamp_disk::info(&child, None).unwrap();
    assert_eq!(i.backing_file.as_deref(), Some("parent.vmdk"));
    assert_eq!(i.backing_chain.len(), 1);
    // A parent modified after the child was made is refused, as qemu-img does.
    let moved = d.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    std::fs::copy(&parent, moved.join("parent.vmdk")).unwrap();
    std::fs::copy(&child, moved.join("child.vmdk")).unwrap();
    let out = Command::new("qemu-io")
        .args(["-f", "vmdk", "-c", "write -P 1 0 4K"])
        .arg(moved.join("parent.vmdk"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let (code, _) = qemu_img_status(&[
        "convert",
        "-O",
        "raw",
        p(&moved.join("child.vmdk")),
        p(&moved.join("x.raw")),
    ]);
    assert_ne!(code, 0);
    let e = open_err(&moved.join("child.vmdk"));
    assert!(e.to_string().contains("parentCID"), "{e}");
    // A disk that is its own parent is refused, not followed forever.
    let looped = d.path().join("loop00.vmdk");
    let mut bytes = std::fs::read(&child).unwrap();
    let at = bytes.windows(11).position(|w| w == b"parent.vmdk").unwrap();
    bytes[at..at + 11].copy_from_slice(b"loop00.vmdk");
    std::fs::write(&looped, bytes).unwrap();
    let e = open_err(&looped);
    assert!(e.to_string().contains("chain deeper"), "{e}");
    // A child whose parent is missing names it.
    std::fs::remove_file(&parent).unwrap();
    let e = open_err(&child);
    assert!(
        matches!(e, Error::Missing { .. }) && e.to_string().contains("parent.vmdk"),
        "{e}"
    );
}

#[test]
fn vmdk_stamp_writers_pass_qemu_check_and_compare() {
    let d = tmp();
    let raw = sample_raw(d.path(), 40 << 20 | 3 << 9, 21);
    let src = std::fs::read(&raw).unwrap();
    for (sub, compress, adapter) in [
        ("monolithicSparse", false, "ide"),
        ("streamOptimized", false, "lsilogic"),
        ("streamOptimized", true, "buslogic"),
    ] {
        let out = d.path().join(format!("{sub}-{compress}.vmdk"));
        stamp_convert(
            &raw,
            &out,
            Format::Vmdk,
            &format!("subformat={sub},adapter_type={adapter}"),
            compress,
        );
        assert_qemu_check_clean(&out);
        assert_qemu_identical(&raw, &out);
        let q = qemu_info(&out);
        assert_eq!(q["format-specific"]["data"]["create-type"], sub, "{q}");
        assert_eq!(q["virtual-size"].as_u64().unwrap(), src.len() as u64);
        assert_eq!(stamp_read(&out), src, "{sub}");
        let r = stamp_disk::open(&out, None).unwrap();
        let rep = r.check().unwrap();
        assert!(rep.corruptions.is_empty(), "{rep:?}");
        assert!(rep.allocated_clusters > 0);
        let i = r.info();
        assert_eq!(i.subformat.as_deref(), Some(sub));
        assert_eq!(i.details["adapter_type"], adapter);
        assert_eq!(i.details["hw_version"], "4");
    }
}

#[test]
fn vmdk_stream_output_is_about_as_small_as_qemu() {
    let d = tmp();
    let raw = sample_raw(d.path(), 32 << 20, 8);
    let ours = d.path().join("ours.vmdk");
    let theirs = d.path().join("theirs.vmdk");
    stamp_convert(
        &raw,
        &ours,
        Format::Vmdk,
        "subformat=streamOptimized",
        false,
    );
    qemu_convert(&raw, &theirs, "vmdk", "subformat=streamOptimized", false);
    let a = std::fs::metadata(&ours).unwrap().len();
    let b = std::fs::metadata(&theirs).unwrap().len();
    assert!(a * 100 <= b * 105, "stamp {a} bytes, qemu-img {b} bytes");
}

#[test]
fn vmdk_odd_sizes_and_empty_disks_round_like_qemu() {
    let d = tmp();
    for (size, sub) in [(1000u64, "monolithicSparse"), (1000, "streamOptimized")] {
        let raw = d.path().join("odd.raw");
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(size).unwrap();
        if size > 0 {
            use std::os::unix::fs::FileExt;
            f.write_all_at(&[9u8; 100], 500).unwrap();
        }
        let ours = d.path().join(format!("ours-{sub}.vmdk"));
        let theirs = d.path().join(format!("theirs-{sub}.vmdk"));
        stamp_convert(
            &raw,
            &ours,
            Format::Vmdk,
            &format!("subformat={sub}"),
            false,
        );
        qemu_convert(&raw, &theirs, "vmdk", &format!("subformat={sub}"), false);
        assert_eq!(
            qemu_info(&ours)["virtual-size"],
            qemu_info(&theirs)["virtual-size"]
        );
        assert_qemu_check_clean(&ours);
        assert_qemu_identical(&ours, &theirs);
        assert_reads_like_qemu(&ours);
    }
    // An empty 8 GiB stream is a few sectors, like VirtualBox's.
    let out = d.path().join("empty.vmdk");
    let w = stamp_disk::create(
        &out,
        Format::Vmdk,
        8 << 30,
        &stamp_disk::CreateOptions::parse("subformat=streamOptimized").unwrap(),
    )
    .unwrap();
    w.finish().unwrap();
    assert!(std::fs::metadata(&out).unwrap().len() < 80 << 10);
    assert_qemu_check_clean(&out);
    assert_eq!(qemu_info(&out)["virtual-size"].as_u64(), Some(8 << 30));
}

#[test]
fn vmdk_large_sparse_disks_stay_small() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let d = tmp();
    let raw = d.path().join("big.raw");
    let size = 3u64 << 40;
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&[0x11; 70000], 12345 * 512).unwrap();
    f.write_all_at(&[0x22; 4096], size - 4096).unwrap();
    drop(f);
    for sub in ["monolithicSparse", "streamOptimized"] {
        let out = d.path().join(format!("{sub}.vmdk"));
        stamp_convert(&raw, &out, Format::Vmdk, &format!("subformat={sub}"), false);
        assert_qemu_check_clean(&out);
        // qemu-img compare walks all 3 TiB cluster by cluster (a minute); qemu-io reads the data
        // and the zeros around it instead.
        let data_at = (12345 * 512).to_string();
        let tail_at = (size - 4096).to_string();
        let zero_at = (size - 8192).to_string();
        let q = Command::new("qemu-io")
            .args(["-f", "vmdk", "-c", &format!("read -P 0x11 {data_at} 70000")])
            .args(["-c", &format!("read -P 0x22 {tail_at} 4096")])
            .args(["-c", &format!("read -P 0 {zero_at} 4096")])
            .args(["-c", "read -P 0 0 6320640"])
            .arg(&out)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&q.stdout);
        assert!(
            q.status.success() && !text.contains("fail"),
            "{sub}: {text}"
        );
        assert_eq!(text.matches("read ").count(), 4, "{text}");
        let blocks = std::fs::metadata(&out).unwrap().blocks() * 512;
        assert!(blocks < 16 << 20, "{sub}: {blocks} bytes allocated");
        let r = stamp_disk::open(&out, None).unwrap();
        assert_eq!(r.virtual_size(), size);
        let mut tail = vec![0u8; 8192];
        r.read_at(&mut tail, size - 8192).unwrap();
        assert!(tail[..4096].iter().all(|b| *b == 0) && tail[4096..].iter().all(|b| *b == 0x22));
    }
}

#[test]
fn vmdk_output_is_deterministic() {
    let d = tmp();
    let raw = sample_raw(d.path(), 16 << 20, 2);
    for sub in ["monolithicSparse", "streamOptimized"] {
        let mut outs = Vec::new();
        for run in 0..2 {
            let dir = d.path().join(format!("{sub}{run}"));
            std::fs::create_dir(&dir).unwrap();
            let out = dir.join("disk.vmdk");
            stamp_convert(&raw, &out, Format::Vmdk, &format!("subformat={sub}"), false);
            outs.push(std::fs::read(&out).unwrap());
        }
        assert!(outs[0] == outs[1], "{sub}: two conversions differ");
    }
}

#[test]
fn vmdk_options_are_validated() {
    let d = tmp();
    let out = d.path().join("x.vmdk");
    let try_opts = |o: &str, c: bool| {
        let mut opts = stamp_disk::CreateOptions::parse(o).unwrap();
        opts.compress = c;
        stamp_disk::create(&out, Format::Vmdk, 1 << 20, &opts).map(|_| ())
    };
    let e = try_opts("", true).unwrap_err();
    assert!(
        matches!(e, Error::InvalidOption(_)) && e.to_string().contains("streamOptimized"),
        "{e}"
    );
    let e = try_opts("subformat=twoGbMaxExtentFlat", false).unwrap_err();
    assert!(
        e.to_string()
            .contains("monolithicSparse or streamOptimized"),
        "{e}"
    );
    let e = try_opts("adapter_type=virtio", false).unwrap_err();
    assert!(e.to_string().contains("lsilogic"), "{e}");
    let e = try_opts("cluster_size=128K", false).unwrap_err();
    assert!(e.to_string().contains("cluster_size"), "{e}");
    try_opts("subformat=streamOptimized,adapter_type=legacyESX", true).unwrap();
    assert!(!out.exists(), "a writer dropped unfinished left a file");
}

#[test]
fn vmdk_check_reports_grains_past_the_end() {
    let d = tmp();
    let raw = sample_raw(d.path(), 4 << 20, 9);
    let img = d.path().join("ms.vmdk");
    qemu_convert(&raw, &img, "vmdk", "", false);
    // Point the first used grain table entry of the primary grain tables far past the end.
    let mut data = std::fs::read(&img).unwrap();
    let gd = u64::from_le_bytes(data[56..64].try_into().unwrap()) as usize * 512;
    let gt = u32::from_le_bytes(data[gd..gd + 4].try_into().unwrap()) as usize * 512;
    let slot = (0..512)
        .find(|i| data[gt + i * 4..gt + i * 4 + 4] != [0; 4])
        .unwrap();
    data[gt + slot * 4..gt + slot * 4 + 4].copy_from_slice(&0x00ff_0000u32.to_le_bytes());
    std::fs::write(&img, &data).unwrap();
    let (code, _) = qemu_img_status(&["check", p(&img)]);
    assert_ne!(code, 0);
    let r = stamp_disk::open(&img, None).unwrap();
    let rep = r.check().unwrap();
    assert_eq!(rep.exit_code(), 2, "{rep:?}");
    assert!(rep.corruptions[0].contains("past the end"), "{rep:?}");
    let mut buf = vec![0u8; 4 << 20];
    let e = r.read_at(&mut buf, 0).unwrap_err();
    assert!(e.to_string().contains("grain table"), "{e}");
}

#[test]
fn vmdk_bad_tables_and_grains_are_refused_like_qemu() {
    let d = tmp();
    let raw = sample_raw(d.path(), 4 << 20, 12);
    let so = d.path().join("so.vmdk");
    stamp_convert(&raw, &so, Format::Vmdk, "subformat=streamOptimized", false);
    let orig = std::fs::read(&so).unwrap();
    // The first grain's marker says its compressed data is shorter than it is.
    let mut data = orig.clone();
    let size = u32::from_le_bytes(data[65536 + 8..65536 + 12].try_into().unwrap());
    data[65536 + 8..65536 + 12].copy_from_slice(&(size / 2).to_le_bytes());
    let bad = d.path().join("short-grain.vmdk");
    std::fs::write(&bad, &data).unwrap();
    let (code, _) = qemu_img_status(&["convert", "-O", "raw", p(&bad), p(&d.path().join("q.raw"))]);
    assert_ne!(code, 0, "qemu-img reads a truncated grain");
    let r = stamp_disk::open(&bad, None).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let e = r.read_at(&mut buf, 0).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("short-grain.vmdk") && msg.contains("compressed grain"),
        "{msg}"
    );
    // The footer's grain directory points past the end of the file (qemu-img reads the zeros
    // past the end as an empty directory and returns an empty disk; stamp refuses).
    let mut data = orig.clone();
    let n = data.len();
    data[n - 1024 + 56..n - 1024 + 64].copy_from_slice(&0xffff_fff0u64.to_le_bytes());
    let bad = d.path().join("bad-gd.vmdk");
    std::fs::write(&bad, &data).unwrap();
    let e = open_err(&bad);
    assert!(e.to_string().contains("grain directory"), "{e}");
    // No footer at all where the header says the directory is at the end.
    let bad = d.path().join("no-footer.vmdk");
    std::fs::write(&bad, &orig[..n - 1536]).unwrap();
    let e = open_err(&bad);
    assert!(e.to_string().contains("invalid footer"), "{e}");
}

#[test]
fn vmdk_mutation_fuzz_does_not_panic() {
    let d = tmp();
    let raw = sample_raw(d.path(), 2 << 20, 4);
    let ms = d.path().join("ms.vmdk");
    stamp_convert(&raw, &ms, Format::Vmdk, "", false);
    fuzz_mutations(&ms, 300, 96 << 10, 1);
    let so = d.path().join("so.vmdk");
    stamp_convert(&raw, &so, Format::Vmdk, "subformat=streamOptimized", false);
    // The stream's metadata is at both ends: mutate anywhere.
    let len = std::fs::metadata(&so).unwrap().len() as usize;
    fuzz_mutations(&so, 300, len, 2);
    let fx = fixtures_unpacked();
    fuzz_mutations(
        &fx.path().join("ovf/virtualbox-ovf2/ubuntu.2.0-disk1.vmdk"),
        150,
        70 << 10,
        3,
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20, ..ProptestConfig::default() })]
        #[test]
        fn vmdk_random_sparse_disks_round_trip(
            size_sectors in 1u64..=16384,
            runs in 0usize..12,
            seed in any::<u64>(),
        ) {
            let d = tmp();
            let raw = d.path().join("src.raw");
            let size = size_sectors * 512;
            random_sparse_raw(&raw, size, runs, seed);
            let src = std::fs::read(&raw).unwrap();
            for sub in ["monolithicSparse", "streamOptimized"] {
                let out = d.path().join(format!("{sub}.vmdk"));
                stamp_convert(&raw, &out, Format::Vmdk, &format!("subformat={sub}"), false);
                let back = stamp_read(&out);
                prop_assert!(back == src, "{} differs", sub);
            }
        }
    }
}

/// A sink that can only append (no Seek), recording the size of every write.
struct AppendOnly {
    file: std::fs::File,
    writes: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
}

impl std::io::Write for AppendOnly {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writes.lock().unwrap().push(buf.len());
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[test]
fn stream_optimized_written_to_a_plain_sink_checks_and_compares_clean() {
    let d = tmp();
    let raw = d.path().join("src.raw");
    random_sparse_raw(&raw, 40 << 20, 30, 7);
    let out = d.path().join("sink.vmdk");
    let writes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = AppendOnly {
        file: std::fs::File::create(&out).unwrap(),
        writes: writes.clone(),
    };
    let r = stamp_disk::open(&raw, None).unwrap();
    let w = stamp_disk::vmdk::create_stream(
        Box::new(sink),
        "disk.vmdk",
        r.virtual_size(),
        &stamp_disk::CreateOptions::default(),
    )
    .unwrap();
    let summary = stamp_disk::convert::convert(r.as_ref(), vec![w], &stamp_disk::NoProgress)
        .unwrap()
        .remove(0);
    let len = std::fs::metadata(&out).unwrap().len();
    assert_eq!(summary.file_size, len);
    assert_eq!(summary.path, Path::new("disk.vmdk"));
    assert_eq!(writes.lock().unwrap().iter().sum::<usize>() as u64, len);
    assert_qemu_check_clean(&out);
    assert_qemu_identical(&raw, &out);
    let i = stamp_disk::info(&out, None).unwrap();
    assert_eq!(i.subformat.as_deref(), Some("streamOptimized"));

    // The same bytes as the file writer's output but for the content ID in the descriptor.
    let file_out = d.path().join("disk.vmdk");
    stamp_convert(
        &raw,
        &file_out,
        Format::Vmdk,
        "subformat=streamOptimized",
        false,
    );
    let (a, b) = (
        std::fs::read(&out).unwrap(),
        std::fs::read(&file_out).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    let differing: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert!(
        differing.iter().all(|&i| (512..1024).contains(&i)),
        "{differing:?}"
    );

    // Other subformats cannot be streamed.
    let o = stamp_disk::CreateOptions::parse("subformat=monolithicSparse").unwrap();
    let sink = Box::new(std::io::sink());
    assert!(stamp_disk::vmdk::create_stream(sink, "x.vmdk", 1 << 20, &o).is_err());
}
