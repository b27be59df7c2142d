//! Fixed facts of the VHDX layout ([MS-VHDX] and qemu `block/vhdx.h`): offsets of the header
//! section, GUIDs of the known regions and metadata items, payload block states, limits, and the
//! little-endian and CRC-32C helpers every structure uses.

/// 1 MiB: the unit of every region, log and payload block offset.
pub const MIB: u64 = 1 << 20;

/// Size of each of the five 64 KiB blocks at the start of the header section.
pub const HEADER_BLOCK: u64 = 64 * 1024;
/// The file identifier ("vhdxfile" and a UTF-16 creator string).
pub const FILE_ID_OFFSET: u64 = 0;
/// First header.
pub const HEADER1_OFFSET: u64 = HEADER_BLOCK;
/// Second header.
pub const HEADER2_OFFSET: u64 = 2 * HEADER_BLOCK;
/// First region table (the one qemu reads).
pub const REGION_TABLE1_OFFSET: u64 = 3 * HEADER_BLOCK;
/// Second region table (a copy).
pub const REGION_TABLE2_OFFSET: u64 = 4 * HEADER_BLOCK;
/// The header section is the first MiB of the file.
pub const HEADER_SECTION_END: u64 = MIB;
/// The header checksum covers the first 4 KiB of its 64 KiB block.
pub const HEADER_SIZE: usize = 4096;
/// The region table checksum covers its whole 64 KiB block.
pub const REGION_TABLE_SIZE: usize = 64 * 1024;
/// The metadata table (header and entries) is the first 64 KiB of the metadata region.
pub const METADATA_TABLE_SIZE: usize = 64 * 1024;

/// "vhdxfile", the file signature.
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
/// "head", the header signature.
pub const HEADER_SIGNATURE: &[u8; 4] = b"head";
/// "regi", the region table signature.
pub const REGION_SIGNATURE: &[u8; 4] = b"regi";
/// "metadata", the metadata table signature.
pub const METADATA_SIGNATURE: &[u8; 8] = b"metadata";

/// Most region table entries the spec allows (and qemu accepts).
pub const MAX_REGION_ENTRIES: u32 = 2047;
/// Most metadata table entries the spec allows (and qemu accepts).
pub const MAX_METADATA_ENTRIES: u16 = 2047;
/// Largest metadata item the spec allows (1 MiB).
pub const MAX_METADATA_ITEM: u32 = 1 << 20;

/// Smallest payload block size (spec and qemu).
pub const MIN_BLOCK_SIZE: u64 = MIB;
/// Largest payload block size (spec and qemu).
pub const MAX_BLOCK_SIZE: u64 = 256 * MIB;
/// Largest virtual disk (spec and qemu: 64 TiB).
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Sectors covered by one sector bitmap block: 2^23 (so one chunk is 2^23 logical sectors).
pub const SECTORS_PER_CHUNK: u64 = 1 << 23;

/// Bit in the region table entry flags: the parser must understand the region.
pub const REGION_REQUIRED: u32 = 1;
/// Metadata entry flag: the item describes the virtual disk (not the file).
pub const META_IS_VIRTUAL_DISK: u32 = 2;
/// Metadata entry flag: the parser must understand the item.
pub const META_IS_REQUIRED: u32 = 4;
/// File parameters flag: blocks stay allocated (a fixed disk).
pub const PARAM_LEAVE_BLOCKS_ALLOCATED: u32 = 1;
/// File parameters flag: a differencing disk with a parent.
pub const PARAM_HAS_PARENT: u32 = 2;

/// Payload block state: not present (reads as zeros without a parent).
pub const PAYLOAD_NOT_PRESENT: u64 = 0;
/// Payload block state: undefined content (reads as zeros).
pub const PAYLOAD_UNDEFINED: u64 = 1;
/// Payload block state: zeros.
pub const PAYLOAD_ZERO: u64 = 2;
/// Payload block state: unmapped (trimmed; reads as zeros).
pub const PAYLOAD_UNMAPPED: u64 = 3;
/// Payload block state: unmapped, as the v0.95 draft numbered it (qemu still reads it as zeros).
pub const PAYLOAD_UNMAPPED_V095: u64 = 5;
/// Payload block state: all data is in the block at the entry's file offset.
pub const PAYLOAD_FULLY_PRESENT: u64 = 6;
/// Payload block state: some sectors are in the parent (differencing disks only).
pub const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;
/// Sector bitmap block state: present (differencing disks only).
pub const SB_PRESENT: u64 = 6;
/// Low bits of a BAT entry holding the state.
pub const BAT_STATE_MASK: u64 = 7;
/// High 44 bits of a BAT entry: the file offset in MiB, kept in place.
pub const BAT_OFFSET_MASK: u64 = !(MIB - 1);

/// Builds the on-disk (Microsoft, mixed-endian) byte order of a GUID written as one number.
pub const fn guid(v: u128) -> [u8; 16] {
    let b = v.to_be_bytes();
    [
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15],
    ]
}

/// Region: the block allocation table.
pub const BAT_GUID: [u8; 16] = guid(0x2dc27766_f623_4200_9d64_115e9bfd4a08);
/// Region: the metadata region.
pub const METADATA_GUID: [u8; 16] = guid(0x8b7ca206_4790_4b9a_b8fe_575f050f886e);
/// Metadata item: file parameters (block size, flags).
pub const FILE_PARAMS_GUID: [u8; 16] = guid(0xcaa16737_fa36_4d43_b3b6_33f0aa44e76b);
/// Metadata item: virtual disk size.
pub const VIRTUAL_SIZE_GUID: [u8; 16] = guid(0x2fa54224_cd1b_4876_b211_5dbed83bf4b8);
/// Metadata item: SCSI page 83 identifier.
pub const PAGE83_GUID: [u8; 16] = guid(0xbeca12ab_b2e6_4523_93ef_c309e000c746);
/// Metadata item: logical sector size.
pub const LOGICAL_SECTOR_GUID: [u8; 16] = guid(0x8141bf1d_a96f_4709_ba47_f233a8faab5f);
/// Metadata item: physical sector size.
pub const PHYSICAL_SECTOR_GUID: [u8; 16] = guid(0xcda348c7_445d_4471_9cc9_e9885251c556);
/// Metadata item: parent locator (differencing disks).
pub const PARENT_LOCATOR_GUID: [u8; 16] = guid(0xa8d35f2d_b30b_454d_abf7_d3d84834ab0c);

/// Reads a little-endian u16 at `off` of `b` (0 where `b` is too short; callers size-check first).
pub fn le16(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(off..off + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

/// Reads a little-endian u32 at `off` of `b` (0 where `b` is too short; callers size-check first).
pub fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

/// Reads a little-endian u64 at `off` of `b` (0 where `b` is too short; callers size-check first).
pub fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// The 16 bytes at `off` of `b` (zeros where `b` is too short).
pub fn guid_at(b: &[u8], off: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    if let Some(s) = b.get(off..off + 16) {
        a.copy_from_slice(s);
    }
    a
}

/// Writes `v` at `off` of `b` (which the caller sized).
pub fn put(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(d) = b.get_mut(off..off + v.len()) {
        d.copy_from_slice(v);
    }
}

/// CRC-32C of `buf` with the 4-byte checksum field at `at` taken as zero, as VHDX defines it.
pub fn checksum(buf: &[u8], at: usize) -> u32 {
    let (head, rest) = buf.split_at(at.min(buf.len()));
    let tail = rest.get(4..).unwrap_or(&[]);
    let c = crc32c::crc32c_append(crc32c::crc32c(head), &[0u8; 4][..rest.len().min(4)]);
    crc32c::crc32c_append(c, tail)
}

/// Stores the checksum of `buf` in its field at `at`.
pub fn seal(buf: &mut [u8], at: usize) {
    let c = checksum(buf, at);
    put(buf, at, &c.to_le_bytes());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_in_microsoft_byte_order() {
        assert_eq!(
            BAT_GUID,
            [
                0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd,
                0x4a, 0x08
            ]
        );
    }

    #[test]
    fn checksum_skips_its_own_field() {
        let mut b = vec![7u8; 64];
        seal(&mut b, 4);
        let stored = le32(&b, 4);
        assert_eq!(checksum(&b, 4), stored);
        let mut z = b.clone();
        put(&mut z, 4, &[0; 4]);
        assert_eq!(crc32c::crc32c(&z), stored);
    }
}
