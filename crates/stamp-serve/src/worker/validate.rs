//! Validation of an imported disk, as VM Import does it: a partition table (GPT or MBR), a
//! filesystem in a partition, and a bootloader (an EFI System Partition holding
//! `\EFI\BOOT\BOOT*.EFI`, or boot code in the MBR or a BIOS boot partition).
//!
//! Everything read from the disk is bounded by the disk's size and by fixed limits; a disk
//! that does not make sense is reported as having no partitions, never a panic.

use serde::{Deserialize, Serialize};
use stamp_disk::DiskReader;

use crate::{Error, Result};

/// Bytes per sector.
const SECTOR: u64 = 512;
/// Most GPT entries read.
const MAX_GPT_ENTRIES: u64 = 1024;
/// Most logical partitions followed in an MBR extended partition.
const MAX_LOGICAL: usize = 128;
/// Most clusters of a FAT directory read.
const MAX_DIR_CLUSTERS: usize = 1024;
/// Most bytes of a FAT directory read.
const MAX_DIR_BYTES: u64 = 4 << 20;

/// AWS's message for a disk without a usable partition.
pub const NO_VALID_PARTITIONS: &str = "ClientError: No valid partitions. Not a valid volume.";
/// AWS's message for a disk without a bootloader it recognises.
pub const UNSUPPORTED_BOOTLOADER: &str = "ClientError: Unsupported bootloader";

/// One partition found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// 1-based number, as Linux names it.
    pub number: u32,
    /// First byte.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Its type: `esp`, `bios-boot`, `linux`, `microsoft-basic-data`, `extended`, a GPT type
    /// GUID or an MBR type byte (`0x83`).
    pub kind: String,
    /// The filesystem found at its start (`ext4`, `xfs`, `btrfs`, `ntfs`, `fat`, `swap`, `lvm`).
    pub filesystem: Option<String>,
}

/// What validation found, reported in the task's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validation {
    /// The source format (`vmdk`, `vhd`, ...): the disk was readable.
    pub format: String,
    /// The disk's virtual size.
    pub size: u64,
    /// `gpt`, `mbr`, or none.
    pub partition_table: Option<String>,
    /// The partitions.
    pub partitions: Vec<PartitionInfo>,
    /// What boots it (`\EFI\BOOT\BOOTX64.EFI`, `mbr boot code`, `bios boot partition`).
    pub bootloader: Option<String>,
    /// `uefi` or `legacy-bios`.
    pub boot_mode: Option<String>,
    /// `x86_64` or `arm64` when the bootloader says (UEFI fallback names).
    pub architecture: Option<String>,
    /// `Windows` if an NTFS partition is there, else `Linux`.
    pub platform: Option<String>,
}

impl Validation {
    /// Whether the disk can boot: `Ok`, or [`Error::Invalid`] with AWS's message.
    pub fn require_bootable(&self) -> Result<()> {
        let fs = self
            .partitions
            .iter()
            .any(|p| p.filesystem.as_deref().is_some_and(|f| f != "swap"));
        if self.partition_table.is_none() || self.partitions.is_empty() || !fs {
            return Err(Error::Invalid(NO_VALID_PARTITIONS.into()));
        }
        if self.bootloader.is_none() {
            return Err(Error::Invalid(format!(
                "{UNSUPPORTED_BOOTLOADER}: no EFI System Partition with \\EFI\\BOOT\\BOOT*.EFI, no MBR boot code and no BIOS boot partition"
            )));
        }
        Ok(())
    }
}

/// Reads `len` bytes at `offset`, or `None` if that is past the disk's end.
fn read(disk: &dyn DiskReader, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
    match offset.checked_add(len) {
        Some(end) if end <= disk.virtual_size() => {
            let mut buf = vec![0u8; len as usize];
            disk.read_at(&mut buf, offset)?;
            Ok(Some(buf))
        }
        _ => Ok(None),
    }
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]) as u64)
        .unwrap_or(0)
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as u64)
        .unwrap_or(0)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        v.copy_from_slice(s);
    }
    u64::from_le_bytes(v)
}

/// A GPT type GUID from its on-disk bytes, as text (upper case).
fn guid_text(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        u32_at(b, 0),
        u16_at(b, 4),
        u16_at(b, 6),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

fn gpt_kind(guid: &str) -> String {
    match guid {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "esp".into(),
        "21686148-6449-6E6F-744E-656564454649" => "bios-boot".into(),
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "microsoft-basic-data".into(),
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        | "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
        | "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
        | "8484680C-9521-48C6-9C11-B0720656F69E"
        | "B0E01050-EE5F-4390-949A-9101B17104E9" => "linux".into(),
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "linux-swap".into(),
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "linux-lvm".into(),
        other => other.to_string(),
    }
}

fn mbr_kind(t: u8) -> String {
    match t {
        0xEF => "esp".into(),
        0x83 => "linux".into(),
        0x82 => "linux-swap".into(),
        0x8E => "linux-lvm".into(),
        0x07 => "microsoft-basic-data".into(),
        0x05 | 0x0F | 0x85 => "extended".into(),
        t => format!("{t:#04x}"),
    }
}

/// The partitions of a GPT whose header is `hdr`; empty if the header makes no sense.
fn gpt_partitions(disk: &dyn DiskReader, hdr: &[u8]) -> Result<Vec<PartitionInfo>> {
    let size = disk.virtual_size();
    let start = u64_at(hdr, 72).saturating_mul(SECTOR);
    let count = u32_at(hdr, 80).min(MAX_GPT_ENTRIES);
    let entry = u32_at(hdr, 84);
    if !(128..=4096).contains(&entry) || start >= size {
        return Ok(Vec::new());
    }
    let len = (count * entry).min(size - start);
    let Some(array) = read(disk, start, len)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, e) in array.chunks_exact(entry as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let first = u64_at(e, 32);
        let last = u64_at(e, 40);
        let (Some(s), Some(end)) = (
            first.checked_mul(SECTOR),
            last.checked_add(1).and_then(|l| l.checked_mul(SECTOR)),
        ) else {
            continue;
        };
        if end <= s || end > size {
            continue;
        }
        out.push(PartitionInfo {
            number: i as u32 + 1,
            start: s,
            size: end - s,
            kind: gpt_kind(&guid_text(&e[..16])),
            filesystem: None,
        });
    }
    Ok(out)
}

/// The partitions of an MBR (primary, and logical ones in an extended partition).
fn mbr_partitions(disk: &dyn DiskReader, mbr: &[u8]) -> Result<Vec<PartitionInfo>> {
    let size = disk.virtual_size();
    let mut out = Vec::new();
    let entry = |b: &[u8], i: usize| {
        let e = &b[446 + 16 * i..446 + 16 * (i + 1)];
        (e[4], u32_at(e, 8) * SECTOR, u32_at(e, 12) * SECTOR)
    };
    let mut extended = None;
    for i in 0..4 {
        let (t, s, len) = entry(mbr, i);
        if t == 0 || len == 0 || s == 0 || s.saturating_add(len) > size {
            continue;
        }
        let kind = mbr_kind(t);
        if kind == "extended" {
            extended.get_or_insert(s);
        }
        out.push(PartitionInfo {
            number: i as u32 + 1,
            start: s,
            size: len,
            kind,
            filesystem: None,
        });
    }
    if let Some(ext) = extended {
        let mut ebr_at = ext;
        let mut number = 5;
        for _ in 0..MAX_LOGICAL {
            let Some(ebr) = read(disk, ebr_at, SECTOR)? else {
                break;
            };
            if ebr[510..512] != [0x55, 0xAA] {
                break;
            }
            let (t, s, len) = entry(&ebr, 0);
            let s = ebr_at.saturating_add(s);
            if t != 0 && len != 0 && s.saturating_add(len) <= size {
                out.push(PartitionInfo {
                    number,
                    start: s,
                    size: len,
                    kind: mbr_kind(t),
                    filesystem: None,
                });
                number += 1;
            }
            let (t2, next, _) = entry(&ebr, 1);
            if t2 == 0 || next == 0 {
                break;
            }
            let n = ext.saturating_add(next);
            if n <= ebr_at {
                break;
            }
            ebr_at = n;
        }
    }
    Ok(out)
}

/// The filesystem at the start of a partition, by its magic numbers.
fn filesystem(disk: &dyn DiskReader, start: u64, size: u64) -> Result<Option<String>> {
    let len = size
        .min(0x10100)
        .min(disk.virtual_size().saturating_sub(start));
    let Some(b) = read(disk, start, len)? else {
        return Ok(None);
    };
    let at = |o: usize, m: &[u8]| b.get(o..o + m.len()) == Some(m);
    Ok(if at(0x438, &[0x53, 0xEF]) {
        Some("ext4".into())
    } else if at(0, b"XFSB") {
        Some("xfs".into())
    } else if at(0x10040, b"_BHRfS_M") {
        Some("btrfs".into())
    } else if at(3, b"NTFS    ") {
        Some("ntfs".into())
    } else if at(510, &[0x55, 0xAA]) && (at(54, b"FAT") || at(82, b"FAT32")) {
        Some("fat".into())
    } else if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        Some("swap".into())
    } else if at(512, b"LABELONE") {
        Some("lvm".into())
    } else {
        None
    })
}

/// Validates `disk` (opened from an image of `format`).
pub fn validate(disk: &dyn DiskReader, format: &str) -> Result<Validation> {
    let mut v = Validation {
        format: format.to_string(),
        size: disk.virtual_size(),
        ..Default::default()
    };
    let Some(mbr) = read(disk, 0, SECTOR)? else {
        return Ok(v);
    };
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok(v);
    }
    let boot_code = mbr[..440].iter().any(|&b| b != 0);
    let gpt_hdr = read(disk, SECTOR, SECTOR)?.filter(|h| &h[..8] == b"EFI PART");
    let protective = (0..4).any(|i| mbr[446 + 16 * i + 4] == 0xEE);
    if let Some(hdr) = gpt_hdr.filter(|_| protective) {
        v.partition_table = Some("gpt".into());
        v.partitions = gpt_partitions(disk, &hdr)?;
    } else {
        v.partition_table = Some("mbr".into());
        v.partitions = mbr_partitions(disk, &mbr)?;
    }
    for p in &mut v.partitions {
        if p.kind != "extended" {
            p.filesystem = filesystem(disk, p.start, p.size)?;
        }
    }
    for p in v.partitions.iter().filter(|p| p.kind == "esp") {
        if p.filesystem.as_deref() != Some("fat") {
            continue;
        }
        if let Some(name) = fat::find_boot_efi(disk, p.start, p.size)? {
            let upper = name.to_ascii_uppercase();
            v.architecture = if upper.contains("X64") {
                Some("x86_64".into())
            } else if upper.contains("AA64") {
                Some("arm64".into())
            } else {
                None
            };
            v.bootloader = Some(format!("\\EFI\\BOOT\\{name}"));
            v.boot_mode = Some("uefi".into());
            break;
        }
    }
    if v.bootloader.is_none() {
        if v.partitions.iter().any(|p| p.kind == "bios-boot") {
            v.bootloader = Some("bios boot partition".into());
            v.boot_mode = Some("legacy-bios".into());
        } else if boot_code {
            v.bootloader = Some("mbr boot code".into());
            v.boot_mode = Some("legacy-bios".into());
        }
    }
    if !v.partitions.is_empty() {
        v.platform = Some(
            if v.partitions
                .iter()
                .any(|p| p.filesystem.as_deref() == Some("ntfs"))
            {
                "Windows"
            } else {
                "Linux"
            }
            .into(),
        );
    }
    Ok(v)
}

/// Just enough FAT to find `\EFI\BOOT\BOOT*.EFI` in an ESP.
mod fat {
    use super::{MAX_DIR_BYTES, MAX_DIR_CLUSTERS, read, u16_at, u32_at};
    use crate::Result;
    use stamp_disk::DiskReader;

    struct Fs<'a> {
        disk: &'a dyn DiskReader,
        start: u64,
        bps: u64,
        cluster: u64,
        fat_at: u64,
        data_at: u64,
        root_at: u64,
        root_len: u64,
        root_cluster: u64,
        clusters: u64,
        bits: u8,
    }

    impl Fs<'_> {
        fn next(&self, c: u64) -> Result<Option<u64>> {
            let (off, len) = match self.bits {
                12 => (c + c / 2, 2),
                16 => (c * 2, 2),
                _ => (c * 4, 4),
            };
            let Some(b) = read(self.disk, self.start + self.fat_at + off, len)? else {
                return Ok(None);
            };
            let v = match self.bits {
                12 => {
                    let v = u16_at(&b, 0);
                    if c % 2 == 1 { v >> 4 } else { v & 0xFFF }
                }
                16 => u16_at(&b, 0),
                _ => u32_at(&b, 0) & 0x0FFF_FFFF,
            };
            Ok((v >= 2 && v < self.clusters + 2).then_some(v))
        }

        /// The bytes of the directory starting at cluster `c` (0: the FAT12/16 root).
        fn dir(&self, c: u64) -> Result<Vec<u8>> {
            if c == 0 && self.bits != 32 {
                let len = self.root_len.min(MAX_DIR_BYTES);
                return Ok(read(self.disk, self.start + self.root_at, len)?.unwrap_or_default());
            }
            let c = if c == 0 { self.root_cluster } else { c };
            let mut out = Vec::new();
            let mut cur = Some(c);
            let mut seen = 0;
            while let Some(c) = cur {
                if c < 2 || c >= self.clusters + 2 || seen >= MAX_DIR_CLUSTERS {
                    break;
                }
                if out.len() as u64 + self.cluster > MAX_DIR_BYTES {
                    break;
                }
                let at = self.start + self.data_at + (c - 2) * self.cluster;
                match read(self.disk, at, self.cluster)? {
                    Some(b) => out.extend_from_slice(&b),
                    None => break,
                }
                seen += 1;
                cur = self.next(c)?;
            }
            Ok(out)
        }
    }

    /// Entries of a directory: (8.3 name as `NAME.EXT`, is a directory, first cluster).
    fn entries(dir: &[u8]) -> Vec<(String, bool, u64)> {
        let mut out = Vec::new();
        for e in dir.chunks_exact(32) {
            if e[0] == 0 {
                break;
            }
            if e[0] == 0xE5 || e[11] == 0x0F || e[11] & 0x08 != 0 {
                continue;
            }
            let base = String::from_utf8_lossy(&e[..8]).trim_end().to_string();
            let ext = String::from_utf8_lossy(&e[8..11]).trim_end().to_string();
            let name = if ext.is_empty() {
                base
            } else {
                format!("{base}.{ext}")
            };
            let cluster = (u16_at(e, 20) << 16) | u16_at(e, 26);
            out.push((name, e[11] & 0x10 != 0, cluster));
        }
        out
    }

    /// The name of the fallback bootloader (`BOOTX64.EFI`) in the FAT at `start`, if any.
    pub fn find_boot_efi(disk: &dyn DiskReader, start: u64, size: u64) -> Result<Option<String>> {
        let Some(b) = read(disk, start, 512)? else {
            return Ok(None);
        };
        let bps = u16_at(&b, 11);
        let spc = b[13] as u64;
        let rsvd = u16_at(&b, 14);
        let nfats = b[16] as u64;
        let root_ent = u16_at(&b, 17);
        let tot = if u16_at(&b, 19) != 0 {
            u16_at(&b, 19)
        } else {
            u32_at(&b, 32)
        };
        let fatsz = if u16_at(&b, 22) != 0 {
            u16_at(&b, 22)
        } else {
            u32_at(&b, 36)
        };
        if ![512, 1024, 2048, 4096].contains(&bps)
            || spc == 0
            || !spc.is_power_of_two()
            || rsvd == 0
            || nfats == 0
            || fatsz == 0
            || tot.saturating_mul(bps) > size
        {
            return Ok(None);
        }
        let root_sectors = (root_ent * 32).div_ceil(bps);
        let first_data = rsvd + nfats * fatsz + root_sectors;
        if first_data >= tot {
            return Ok(None);
        }
        let clusters = (tot - first_data) / spc;
        let bits = if clusters < 4085 {
            12
        } else if clusters < 65525 {
            16
        } else {
            32
        };
        let fs = Fs {
            disk,
            start,
            bps,
            cluster: spc * bps,
            fat_at: rsvd * bps,
            data_at: first_data * bps,
            root_at: (rsvd + nfats * fatsz) * bps,
            root_len: root_sectors * bps,
            root_cluster: u32_at(&b, 44),
            clusters,
            bits,
        };
        let _ = fs.bps;
        let find_dir = |entries: &[(String, bool, u64)], name: &str| {
            entries
                .iter()
                .find(|(n, d, c)| *d && n.eq_ignore_ascii_case(name) && *c >= 2)
                .map(|e| e.2)
        };
        let Some(efi) = find_dir(&entries(&fs.dir(0)?), "EFI") else {
            return Ok(None);
        };
        let Some(boot) = find_dir(&entries(&fs.dir(efi)?), "BOOT") else {
            return Ok(None);
        };
        Ok(entries(&fs.dir(boot)?)
            .into_iter()
            .find(|(n, d, _)| {
                let u = n.to_ascii_uppercase();
                !d && u.starts_with("BOOT") && u.ends_with(".EFI")
            })
            .map(|e| e.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn disk(bytes: &[u8]) -> (tempfile::TempDir, Box<dyn DiskReader>) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.raw");
        std::fs::write(&p, bytes).unwrap();
        let r = stamp_disk::open(&p, Some(stamp_disk::Format::Raw)).unwrap();
        (d, r)
    }

    fn mbr_entry(b: &mut [u8], at: usize, t: u8, start: u32, len: u32) {
        b[at + 4] = t;
        b[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
        b[at + 12..at + 16].copy_from_slice(&len.to_le_bytes());
    }

    #[test]
    fn logical_partitions_are_followed_and_loops_end() {
        let mut b = vec![0u8; 4 << 20];
        b[510] = 0x55;
        b[511] = 0xAA;
        // An extended partition at sector 2048; one logical partition inside, whose EBR's
        // next link points back at itself.
        mbr_entry(&mut b, 446, 0x05, 2048, 6000);
        let ebr = 2048 * 512;
        b[ebr + 510] = 0x55;
        b[ebr + 511] = 0xAA;
        mbr_entry(&mut b, ebr + 446, 0x83, 63, 1000);
        mbr_entry(&mut b, ebr + 462, 0x05, 0, 100);
        // ext4 magic in the logical partition.
        let fs = ebr + 63 * 512;
        b[fs + 0x438] = 0x53;
        b[fs + 0x439] = 0xEF;
        let (_d, r) = disk(&b);
        let v = validate(r.as_ref(), "raw").unwrap();
        assert_eq!(v.partition_table.as_deref(), Some("mbr"));
        let got: Vec<_> = v
            .partitions
            .iter()
            .map(|p| (p.number, p.kind.as_str(), p.filesystem.as_deref()))
            .collect();
        assert_eq!(got, [(1, "extended", None), (5, "linux", Some("ext4"))]);
        assert!(v.bootloader.is_none());
        assert!(
            matches!(v.require_bootable(), Err(Error::Invalid(m)) if m.starts_with(UNSUPPORTED_BOOTLOADER))
        );
    }

    #[test]
    fn partitions_past_the_end_of_the_disk_are_ignored() {
        let mut b = vec![0u8; 1 << 20];
        b[510] = 0x55;
        b[511] = 0xAA;
        b[0] = 0xEB;
        mbr_entry(&mut b, 446, 0x83, 2048, u32::MAX);
        let (_d, r) = disk(&b);
        let v = validate(r.as_ref(), "raw").unwrap();
        assert!(v.partitions.is_empty());
        assert!(matches!(v.require_bootable(), Err(Error::Invalid(m)) if m == NO_VALID_PARTITIONS));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_tables_never_panic(
            seed in proptest::collection::vec(any::<u8>(), 1024),
            gpt in any::<bool>(),
            esp_at in 0u32..120,
        ) {
            let mut b = vec![0u8; 64 << 10];
            b[..1024].copy_from_slice(&seed);
            b[510] = 0x55;
            b[511] = 0xAA;
            if gpt {
                b[446 + 4] = 0xEE;
                b[512..520].copy_from_slice(b"EFI PART");
                // Entries at LBA 2, 128 bytes each; an ESP whose start is random.
                b[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
                b[512 + 80..512 + 84].copy_from_slice(&4u32.to_le_bytes());
                b[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
                let e = 1024;
                b[e..e + 16].copy_from_slice(&[
                    0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9,
                    0x3E, 0xC9, 0x3B,
                ]);
                b[e + 32..e + 40].copy_from_slice(&u64::from(esp_at).to_le_bytes());
                b[e + 40..e + 48].copy_from_slice(&127u64.to_le_bytes());
                // Make it look like FAT with random BPB fields from the seed.
                let s = esp_at as usize * 512;
                if s >= 2048 && s + 512 <= b.len() {
                    b[s..s + 512].copy_from_slice(&seed[512..]);
                    b[s + 11..s + 13].copy_from_slice(&512u16.to_le_bytes());
                    b[s + 13] = 1 << (seed[0] % 8);
                    b[s + 54..s + 57].copy_from_slice(b"FAT");
                    b[s + 510] = 0x55;
                    b[s + 511] = 0xAA;
                }
            }
            let (_d, r) = disk(&b);
            let _ = validate(r.as_ref(), "raw").unwrap();
        }
    }
}
