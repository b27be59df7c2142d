//! GPT disks checked with sfdisk, sgdisk, fsck.fat and qemu-img.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use stamp_disk::{CreateOptions, Extent, Format};
use stamp_fs::fat::{FatOptions, fat};
use stamp_fs::gpt::{GptOptions, Partition, PartitionType, gpt_disk};
use stamp_fs::{Content, Entry, Error, Image, Kind, Timestamp, Tree};

const MIB: u64 = 1 << 20;

fn esp_tree() -> Tree {
    let t0 = Timestamp::from_secs(1_700_000_000);
    let mut t = Tree::new(Entry::new(Kind::Dir, 0o755, t0));
    let efi: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    t.insert(
        b"EFI/BOOT/BOOTX64.EFI",
        Entry::new(Kind::File(Content::Bytes(efi.into())), 0o644, t0),
    )
    .unwrap();
    t.insert(
        b"loader/entries/debian.conf",
        Entry::new(
            Kind::File(Content::Bytes(Bytes::from_static(b"title Debian\n"))),
            0o644,
            t0,
        ),
    )
    .unwrap();
    t
}

/// Some bytes standing for a root filesystem: data at the start, in the middle and at the end.
fn root_image() -> Image<'static> {
    let size = 3 * MIB;
    let ext = vec![
        Extent::Data {
            offset: 0,
            bytes: Bytes::from_static(b"ROOT-START"),
        },
        Extent::Zero {
            offset: 10,
            len: MIB - 10,
        },
        Extent::Data {
            offset: MIB,
            bytes: Bytes::from(vec![0xA5; 4096]),
        },
        Extent::Data {
            offset: size - 8,
            bytes: Bytes::from_static(b"ROOT-END"),
        },
    ];
    Image {
        size,
        extents: Box::new(ext.into_iter().map(Ok)),
    }
}

fn parts(tree: &Tree) -> Vec<Partition<'_>> {
    let esp = fat(
        tree,
        &FatOptions {
            size: Some(64 * MIB),
            label: Some("ESP".into()),
            ..Default::default()
        },
    )
    .unwrap();
    vec![
        Partition::with_image("EFI System Partition", PartitionType::Esp, esp),
        Partition {
            name: "root-x86-64".into(),
            kind: PartitionType::RootX86_64,
            size: 10 * MIB,
            attributes: 1 << 59,
            unique_guid: None,
            image: Some(root_image()),
        },
    ]
}

fn write(img: Image<'_>, path: &Path, format: Format) {
    let w = stamp_disk::create(path, format, img.size, &CreateOptions::default()).unwrap();
    img.write_to(vec![w]).unwrap();
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

#[test]
fn esp_and_root_disk_is_clean_for_sfdisk_sgdisk_and_fsck() {
    let tree = esp_tree();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.raw");
    let img = gpt_disk(parts(&tree), &GptOptions::default()).unwrap();
    assert_eq!(img.size, 76 * MIB);
    write(img, &disk, Format::Raw);
    let d = disk.to_str().unwrap();

    let (ok, out) = run("sfdisk", &["--verify", d]);
    assert!(ok, "sfdisk --verify: {out}");
    assert!(out.contains("No errors detected."), "{out}");
    assert!(
        !out.contains("corrupt") && !out.contains("warning"),
        "{out}"
    );
    let (ok, out) = run("sgdisk", &["-v", d]);
    assert!(ok, "sgdisk -v: {out}");
    assert!(out.contains("No problems found"), "sgdisk -v: {out}");

    let (ok, dump) = run("sfdisk", &["--dump", d]);
    assert!(ok, "{dump}");
    assert!(dump.contains("label: gpt"), "{dump}");
    let line = |n: &str| {
        dump.lines()
            .find(|l| l.starts_with(&format!("{d}{n} :")))
            .unwrap_or_else(|| panic!("no partition {n}:\n{dump}"))
            .to_string()
    };
    let p1 = line("1");
    assert!(p1.contains("start=        2048, size=      131072"), "{p1}");
    assert!(
        p1.contains("type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        "{p1}"
    );
    assert!(p1.contains("name=\"EFI System Partition\""), "{p1}");
    let p2 = line("2");
    assert!(p2.contains("start=      133120, size=       20480"), "{p2}");
    assert!(
        p2.contains("type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
        "{p2}"
    );
    assert!(p2.contains("name=\"root-x86-64\""), "{p2}");
    assert!(p2.contains("attrs=\"GUID:59\""), "{p2}");

    // The partitions' bytes are the images' bytes.
    let bytes = std::fs::read(&disk).unwrap();
    let esp_at = (2048 * 512) as usize;
    let esp = &bytes[esp_at..esp_at + (64 * MIB) as usize];
    let mut want = vec![0u8; (64 * MIB) as usize];
    let fresh = fat(
        &tree,
        &FatOptions {
            size: Some(64 * MIB),
            label: Some("ESP".into()),
            ..Default::default()
        },
    )
    .unwrap();
    for e in fresh.extents {
        if let Extent::Data { offset, bytes } = e.unwrap() {
            want[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
        }
    }
    assert!(esp == want.as_slice(), "the ESP differs from the FAT image");
    let part = tmp.path().join("esp.img");
    std::fs::write(&part, esp).unwrap();
    let (ok, out) = run("fsck.fat", &["-n", part.to_str().unwrap()]);
    assert!(ok && out.lines().count() == 2, "fsck.fat: {out}");
    let root_at = (133_120 * 512) as usize;
    assert_eq!(&bytes[root_at..root_at + 10], b"ROOT-START");
    assert!(
        bytes[root_at + MIB as usize..][..4096]
            .iter()
            .all(|b| *b == 0xA5)
    );
    assert_eq!(&bytes[root_at + 3 * MIB as usize - 8..][..8], b"ROOT-END");
    assert!(
        bytes[root_at + 3 * MIB as usize..root_at + 10 * MIB as usize]
            .iter()
            .all(|b| *b == 0)
    );
}

#[test]
fn qcow2_disk_passes_qemu_img_check_and_matches_raw() {
    let tree = esp_tree();
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("disk.raw");
    let qcow = tmp.path().join("disk.qcow2");
    write(
        gpt_disk(parts(&tree), &GptOptions::default()).unwrap(),
        &raw,
        Format::Raw,
    );
    write(
        gpt_disk(parts(&tree), &GptOptions::default()).unwrap(),
        &qcow,
        Format::Qcow2,
    );
    let (ok, out) = run("qemu-img", &["check", qcow.to_str().unwrap()]);
    assert!(
        ok && out.contains("No errors were found"),
        "qemu-img check: {out}"
    );
    let (ok, out) = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            raw.to_str().unwrap(),
            qcow.to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("identical"), "qemu-img compare: {out}");
}

#[test]
fn guids_are_deterministic_and_follow_seed_and_options() {
    let tree = esp_tree();
    let tmp = tempfile::tempdir().unwrap();
    let guids = |opts: &GptOptions, name: &str| -> String {
        let p = tmp.path().join(name);
        write(gpt_disk(parts(&tree), opts).unwrap(), &p, Format::Raw);
        let (ok, out) = run("sfdisk", &["--dump", p.to_str().unwrap()]);
        assert!(ok, "{out}");
        out.lines()
            .filter(|l| l.starts_with("label-id") || l.contains("uuid="))
            .map(|l| {
                let l = l.strip_prefix("label-id: ").unwrap_or(l);
                l.split("uuid=")
                    .nth(1)
                    .unwrap_or(l)
                    .split(',')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let a = guids(&GptOptions::default(), "a");
    assert_eq!(a, guids(&GptOptions::default(), "b"));
    assert_eq!(
        a.split(' ').collect::<std::collections::HashSet<_>>().len(),
        3,
        "{a}"
    );
    let seeded = guids(
        &GptOptions {
            seed: Some(7),
            ..Default::default()
        },
        "c",
    );
    assert_ne!(a, seeded);
    let given = guids(
        &GptOptions {
            disk_guid: Some(*b"0123456789abcdef"),
            ..Default::default()
        },
        "d",
    );
    assert!(
        given.starts_with("30313233-3435-3637-3839-616263646566"),
        "{given}"
    );
    let (ra, rb) = (
        std::fs::read(tmp.path().join("a")).unwrap(),
        std::fs::read(tmp.path().join("b")).unwrap(),
    );
    assert!(ra == rb);
}

#[test]
fn fixed_disk_size_puts_the_backup_at_the_end() {
    let tree = esp_tree();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("big");
    let opts = GptOptions {
        size: Some(200 * MIB),
        ..Default::default()
    };
    write(gpt_disk(parts(&tree), &opts).unwrap(), &p, Format::Raw);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 200 * MIB);
    let (ok, out) = run("sgdisk", &["-v", p.to_str().unwrap()]);
    assert!(ok && out.contains("No problems found"), "{out}");
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(&bytes[(200 * MIB - 512) as usize..][..8], b"EFI PART");
}

#[test]
fn bad_partitions_give_clear_errors() {
    let tree = esp_tree();
    let mut ps = parts(&tree);
    ps[1].size = MIB; // the 3 MiB root image does not fit
    assert!(matches!(
        gpt_disk(ps, &GptOptions::default()),
        Err(Error::NoSpace { .. })
    ));

    let mut ps = parts(&tree);
    ps[0].name = "a name that is much too long for a GPT entry".into();
    assert!(matches!(
        gpt_disk(ps, &GptOptions::default()),
        Err(Error::InvalidOption(_))
    ));

    let small = GptOptions {
        size: Some(32 * MIB),
        ..Default::default()
    };
    assert!(matches!(
        gpt_disk(parts(&tree), &small),
        Err(Error::NoSpace { .. })
    ));

    let none = Partition {
        name: "x".into(),
        kind: PartitionType::LinuxData,
        size: 0,
        attributes: 0,
        unique_guid: None,
        image: None,
    };
    assert!(matches!(
        gpt_disk(vec![none], &GptOptions::default()),
        Err(Error::InvalidOption(_))
    ));

    // An image whose extents run past its declared size is caught while streaming.
    let liar = Image {
        size: 4096,
        extents: Box::new(std::iter::once(Ok(Extent::Data {
            offset: 4000,
            bytes: Bytes::from(vec![1; 200]),
        }))),
    };
    let mut img = gpt_disk(
        vec![Partition::with_image(
            "liar",
            PartitionType::LinuxData,
            liar,
        )],
        &GptOptions::default(),
    )
    .unwrap();
    assert!(img.extents.any(|e| e.is_err()));
}

#[test]
fn every_partition_type_is_named_by_sfdisk() {
    let kinds = [
        (PartitionType::Esp, "EFI System"),
        (PartitionType::RootX86_64, "Linux root (x86-64)"),
        (PartitionType::RootArm64, "Linux root (ARM-64)"),
        (PartitionType::UsrX86_64, "Linux /usr (x86-64)"),
        (PartitionType::UsrArm64, "Linux /usr (ARM-64)"),
        (PartitionType::Swap, "Linux swap"),
        (PartitionType::BiosBoot, "BIOS boot"),
        (PartitionType::LinuxData, "Linux filesystem"),
        // Microsoft basic data, given as a custom GUID.
        (
            PartitionType::Custom([
                0xEB, 0xD0, 0xA0, 0xA2, 0xB9, 0xE5, 0x44, 0x33, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26,
                0x99, 0xC7,
            ]),
            "Microsoft basic data",
        ),
    ];
    let ps = kinds
        .iter()
        .enumerate()
        .map(|(i, (k, _))| Partition {
            name: format!("p{i} ✓ раздел"),
            kind: *k,
            size: MIB + 512 * i as u64,
            attributes: 0,
            unique_guid: None,
            image: None,
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("types");
    write(
        gpt_disk(ps, &GptOptions::default()).unwrap(),
        &p,
        Format::Raw,
    );
    let d = p.to_str().unwrap();
    let (ok, out) = run("sgdisk", &["-v", d]);
    assert!(ok && out.contains("No problems found"), "{out}");
    let (ok, list) = run("sfdisk", &["--list", d]);
    assert!(ok, "{list}");
    for (i, (_, name)) in kinds.iter().enumerate() {
        let line = list
            .lines()
            .find(|l| l.starts_with(&format!("{d}{} ", i + 1)))
            .unwrap_or_else(|| panic!("partition {}:\n{list}", i + 1));
        assert!(line.ends_with(name), "{line} is not {name}");
        // Every partition starts on a 1 MiB boundary.
        let start: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(start % 2048, 0, "{line}");
    }
    let out = Command::new("sfdisk")
        .args(["--dump", d])
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    // sfdisk escapes the UTF-8 bytes of non-ASCII characters as \xNN.
    for i in 0..kinds.len() {
        let escaped: String = format!("p{i} ✓ раздел")
            .bytes()
            .map(|b| {
                if b.is_ascii() {
                    (b as char).to_string()
                } else {
                    format!("\\x{b:02x}")
                }
            })
            .collect();
        assert!(
            dump.contains(&format!("name=\"{escaped}\"")),
            "{escaped}\n{dump}"
        );
    }
}

#[test]
fn firmware_is_read_from_the_partition_table() {
    use stamp_fs::gpt::{Firmware, firmware};
    let tree = esp_tree();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.raw");
    write(
        gpt_disk(parts(&tree), &GptOptions::default()).unwrap(),
        &disk,
        Format::Raw,
    );
    let reader = stamp_disk::open(&disk, None).unwrap();
    assert_eq!(firmware(&*reader).unwrap(), Some(Firmware::Uefi));

    // A GPT with a BIOS boot partition and no ESP, made by sfdisk.
    let bios = tmp.path().join("bios.raw");
    std::fs::File::create(&bios)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("printf 'label: gpt\\nsize=1M, type=21686148-6449-6E6F-744E-656564454649\\ntype=linux\\n' | sfdisk -q \"$1\"")
        .arg("sh")
        .arg(&bios)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reader = stamp_disk::open(&bios, None).unwrap();
    assert_eq!(firmware(&*reader).unwrap(), Some(Firmware::Bios));

    // An MBR with boot code; then one with an 0xEF partition; then a blank disk.
    let mbr = tmp.path().join("mbr.raw");
    let mut bytes = vec![0u8; 4 * MIB as usize];
    bytes[0] = 0xEB;
    bytes[510] = 0x55;
    bytes[511] = 0xAA;
    bytes[446 + 4] = 0x83;
    std::fs::write(&mbr, &bytes).unwrap();
    let reader = stamp_disk::open(&mbr, Some(Format::Raw)).unwrap();
    assert_eq!(firmware(&*reader).unwrap(), Some(Firmware::Bios));
    bytes[446 + 16 + 4] = 0xEF;
    std::fs::write(&mbr, &bytes).unwrap();
    let reader = stamp_disk::open(&mbr, Some(Format::Raw)).unwrap();
    assert_eq!(firmware(&*reader).unwrap(), Some(Firmware::Uefi));
    std::fs::write(&mbr, vec![0u8; 4096]).unwrap();
    let reader = stamp_disk::open(&mbr, Some(Format::Raw)).unwrap();
    assert_eq!(firmware(&*reader).unwrap(), None);
}
