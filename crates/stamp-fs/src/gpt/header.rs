//! The on-disk structures: protective MBR, GPT header and partition entries.

use super::SECTOR;
use super::guid::to_disk;

/// Partition entries in each array.
pub(crate) const ENTRIES: usize = 128;

/// Bytes per partition entry.
pub(crate) const ENTRY_SIZE: usize = 128;

/// Sectors of one entry array.
pub(crate) const ARRAY_SECTORS: u64 = (ENTRIES * ENTRY_SIZE) as u64 / SECTOR;

/// One partition entry's fields.
pub(crate) struct EntryFields<'n> {
    pub type_guid: [u8; 16],
    pub unique_guid: [u8; 16],
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: &'n [u16],
}

/// The protective MBR of a disk of `sectors` sectors.
pub(crate) fn protective_mbr(sectors: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    let p = &mut b[446..462];
    p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    p[4] = 0xEE;
    p[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    p[8..12].copy_from_slice(&1u32.to_le_bytes());
    let n = (sectors - 1).min(u64::from(u32::MAX)) as u32;
    p[12..16].copy_from_slice(&n.to_le_bytes());
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

/// The partition entry array.
pub(crate) fn entry_array(entries: &[EntryFields]) -> Vec<u8> {
    let mut a = vec![0u8; ENTRIES * ENTRY_SIZE];
    for (e, out) in entries.iter().zip(a.chunks_exact_mut(ENTRY_SIZE)) {
        out[0..16].copy_from_slice(&to_disk(e.type_guid));
        out[16..32].copy_from_slice(&to_disk(e.unique_guid));
        out[32..40].copy_from_slice(&e.first_lba.to_le_bytes());
        out[40..48].copy_from_slice(&e.last_lba.to_le_bytes());
        out[48..56].copy_from_slice(&e.attributes.to_le_bytes());
        for (i, u) in e.name.iter().enumerate() {
            out[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
    }
    a
}

/// Where a header sits and what it points to.
pub(crate) struct HeaderFields {
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    pub disk_guid: [u8; 16],
    pub entries_lba: u64,
    pub entries_crc: u32,
}

/// A GPT header sector.
pub(crate) fn header(h: &HeaderFields) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..8].copy_from_slice(b"EFI PART");
    b[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    b[12..16].copy_from_slice(&92u32.to_le_bytes());
    b[24..32].copy_from_slice(&h.my_lba.to_le_bytes());
    b[32..40].copy_from_slice(&h.alternate_lba.to_le_bytes());
    b[40..48].copy_from_slice(&h.first_usable.to_le_bytes());
    b[48..56].copy_from_slice(&h.last_usable.to_le_bytes());
    b[56..72].copy_from_slice(&to_disk(h.disk_guid));
    b[72..80].copy_from_slice(&h.entries_lba.to_le_bytes());
    b[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    b[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    b[88..92].copy_from_slice(&h.entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&b[..92]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}
