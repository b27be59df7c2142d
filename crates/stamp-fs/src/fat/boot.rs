//! The boot sector (BPB) and the FAT32 FSInfo sector.

use super::layout::{FatType, Layout, SECTOR};

/// The boot sector of a volume with `layout`, volume id `id` and label `label`.
pub(crate) fn boot_sector(l: &Layout, id: u32, label: &[u8; 11]) -> [u8; 512] {
    let mut b = [0u8; 512];
    let fat32 = l.kind == FatType::Fat32;
    // A jump over the BPB to a loop that halts (the volume is not bootable by itself).
    b[0..3].copy_from_slice(if fat32 {
        &[0xEB, 0x58, 0x90]
    } else {
        &[0xEB, 0x3C, 0x90]
    });
    b[3..11].copy_from_slice(b"MSWIN4.1");
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = l.sectors_per_cluster as u8;
    b[14..16].copy_from_slice(&(l.reserved as u16).to_le_bytes());
    b[16] = 2;
    b[17..19].copy_from_slice(&(l.root_entries as u16).to_le_bytes());
    if l.sectors < 0x10000 && !fat32 {
        b[19..21].copy_from_slice(&(l.sectors as u16).to_le_bytes());
    } else {
        b[32..36].copy_from_slice(&(l.sectors as u32).to_le_bytes());
    }
    b[21] = 0xF8;
    if !fat32 {
        b[22..24].copy_from_slice(&(l.fat_sectors as u16).to_le_bytes());
    }
    b[24..26].copy_from_slice(&32u16.to_le_bytes());
    b[26..28].copy_from_slice(&64u16.to_le_bytes());
    let ext = if fat32 {
        b[36..40].copy_from_slice(&(l.fat_sectors as u32).to_le_bytes());
        b[44..48].copy_from_slice(&2u32.to_le_bytes());
        b[48..50].copy_from_slice(&1u16.to_le_bytes());
        b[50..52].copy_from_slice(&6u16.to_le_bytes());
        64
    } else {
        36
    };
    b[ext] = 0x80;
    b[ext + 2] = 0x29;
    b[ext + 3..ext + 7].copy_from_slice(&id.to_le_bytes());
    b[ext + 7..ext + 18].copy_from_slice(label);
    b[ext + 18..ext + 26].copy_from_slice(match l.kind {
        FatType::Fat12 => b"FAT12   ",
        FatType::Fat16 => b"FAT16   ",
        FatType::Fat32 => b"FAT32   ",
    });
    // Boot code: cli; hlt; jmp back.
    let code = ext + 26;
    b[code..code + 4].copy_from_slice(&[0xFA, 0xF4, 0xEB, 0xFD]);
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

/// The FSInfo sector: `free` clusters, the next free one `next` (`0xFFFFFFFF` when unknown).
pub(crate) fn fsinfo(free: u32, next: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    b[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    b[488..492].copy_from_slice(&free.to_le_bytes());
    b[492..496].copy_from_slice(&next.to_le_bytes());
    b[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    b
}
