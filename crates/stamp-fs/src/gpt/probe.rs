//! What firmware a disk boots with, read from its partition table: a GPT with an EFI System
//! Partition (or an MBR partition of type 0xEF) boots with UEFI; a GPT with a BIOS boot
//! partition, or an MBR with boot code, with a legacy BIOS.

use stamp_disk::DiskReader;

use super::types::PartitionType;
use super::{SECTOR, guid};
use crate::Result;

/// Most GPT entries read (the usual array has 128).
const MAX_ENTRIES: u64 = 1024;

/// The firmware a disk is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// UEFI: an EFI System Partition.
    Uefi,
    /// Legacy BIOS: boot code in the MBR or a BIOS boot partition.
    Bios,
}

impl Firmware {
    /// The boot mode as EC2 names it (`uefi`, `legacy-bios`).
    pub fn ec2_boot_mode(self) -> &'static str {
        match self {
            Firmware::Uefi => "uefi",
            Firmware::Bios => "legacy-bios",
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v) as u64
}

/// Reads the partition table of `disk`; `None` if it has none that says.
pub fn firmware(disk: &dyn DiskReader) -> Result<Option<Firmware>> {
    let size = disk.virtual_size();
    if size < 2 * SECTOR {
        return Ok(None);
    }
    let mut mbr = [0u8; 512];
    disk.read_at(&mut mbr, 0)?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    let mut hdr = [0u8; 512];
    disk.read_at(&mut hdr, SECTOR)?;
    if &hdr[0..8] == b"EFI PART" {
        let mut lba = [0u8; 8];
        lba.copy_from_slice(&hdr[72..80]);
        let start = u64::from_le_bytes(lba).saturating_mul(SECTOR);
        let count = u32_at(&hdr, 80).min(MAX_ENTRIES);
        let entry = u32_at(&hdr, 84);
        if !(128..=4096).contains(&entry) || start >= size {
            return Ok(None);
        }
        let esp = guid::to_disk(PartitionType::Esp.guid());
        let bios = guid::to_disk(PartitionType::BiosBoot.guid());
        let len = (count * entry).min(size - start);
        let mut array = vec![0u8; len as usize];
        disk.read_at(&mut array, start)?;
        let types: Vec<&[u8]> = array
            .chunks_exact(entry as usize)
            .map(|e| &e[..16])
            .collect();
        return Ok(if types.contains(&&esp[..]) {
            Some(Firmware::Uefi)
        } else if types.contains(&&bios[..]) {
            Some(Firmware::Bios)
        } else {
            None
        });
    }
    // MBR: four entries of 16 bytes at 446; the type byte at 4.
    let types: Vec<u8> = (0..4).map(|i| mbr[446 + 16 * i + 4]).collect();
    Ok(if types.contains(&0xEF) {
        Some(Firmware::Uefi)
    } else if mbr[..440].iter().any(|&b| b != 0) {
        Some(Firmware::Bios)
    } else {
        None
    })
}
