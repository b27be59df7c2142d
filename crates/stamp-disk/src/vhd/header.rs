//! The dynamic disk header ("cxsparse", 1024 big-endian bytes) of dynamic and differencing VHDs:
//! where the block allocation table is, the block size, and for differencing disks the parent's
//! UUID, name and locators.

use super::footer::{be32, be64, checksum, put};

/// Length of the dynamic disk header.
pub const HEADER_LEN: usize = 1024;

/// The header's signature.
pub const COOKIE: &[u8; 8] = b"cxsparse";

/// Block size qemu, Hyper-V and Virtual PC use by default (2 MiB).
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;

/// Number of parent locator entries in the header.
pub const LOCATORS: usize = 8;

/// Field offsets inside the header.
mod off {
    pub const DATA_OFFSET: usize = 8;
    pub const TABLE_OFFSET: usize = 16;
    pub const VERSION: usize = 24;
    pub const MAX_TABLE_ENTRIES: usize = 28;
    pub const BLOCK_SIZE: usize = 32;
    pub const CHECKSUM: usize = 36;
    pub const PARENT_UUID: usize = 40;
    pub const PARENT_TIMESTAMP: usize = 56;
    pub const PARENT_NAME: usize = 64;
    pub const PARENT_NAME_LEN: usize = 512;
    pub const LOCATOR: usize = 576;
    pub const LOCATOR_LEN: usize = 24;
}

/// Checksum offset inside the header (for error messages).
pub const CHECKSUM_OFFSET: u64 = off::CHECKSUM as u64;

/// Offset of the max table entries field (for error messages).
pub const MAX_TABLE_ENTRIES_OFFSET: u64 = off::MAX_TABLE_ENTRIES as u64;

/// Offset of the block size field (for error messages).
pub const BLOCK_SIZE_OFFSET: u64 = off::BLOCK_SIZE as u64;

/// Offset of the parent UUID field (for error messages).
pub const PARENT_UUID_OFFSET: u64 = off::PARENT_UUID as u64;

/// One parent locator entry: where a platform-specific path to the parent is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locator {
    /// Platform code: `W2ku` (absolute, UTF-16LE), `W2ru` (relative, UTF-16LE), `MacX`, ...
    pub platform: [u8; 4],
    /// Space reserved for the locator (sectors per the spec, bytes for some writers).
    pub data_space: u32,
    /// Length of the locator data in bytes.
    pub data_length: u32,
    /// Absolute file offset of the locator data.
    pub data_offset: u64,
}

impl Locator {
    /// The platform code as text.
    pub fn platform_name(&self) -> String {
        String::from_utf8_lossy(&self.platform).into_owned()
    }
}

/// A parsed dynamic disk header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    /// Next structure (unused: all ones).
    pub data_offset: u64,
    /// Offset of the block allocation table.
    pub table_offset: u64,
    /// Header version (0x00010000).
    pub version: u32,
    /// Entries in the block allocation table.
    pub max_table_entries: u32,
    /// Bytes of disk data per block (a power of two, 2 MiB by default).
    pub block_size: u32,
    /// Checksum as stored.
    pub checksum: u32,
    /// UUID of the parent disk (differencing disks).
    pub parent_uuid: [u8; 16],
    /// Modification time of the parent (seconds since 2000).
    pub parent_timestamp: u32,
    /// Parent's file name, UTF-16BE, as stored (NULs trimmed when decoded).
    pub parent_name: String,
    /// The non-empty parent locators.
    pub locators: Vec<Locator>,
}

impl DynamicHeader {
    /// Parses a header from `buf` (1024 bytes). Returns `None` when the cookie is missing.
    pub fn parse(buf: &[u8]) -> Option<DynamicHeader> {
        if !buf.starts_with(COOKIE) {
            return None;
        }
        let name = buf
            .get(off::PARENT_NAME..off::PARENT_NAME + off::PARENT_NAME_LEN)
            .map(decode_utf16be)
            .unwrap_or_default();
        let locators = (0..LOCATORS)
            .filter_map(|i| {
                let at = off::LOCATOR + i * off::LOCATOR_LEN;
                let platform: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
                if platform == [0; 4] {
                    return None;
                }
                Some(Locator {
                    platform,
                    data_space: be32(buf, at + 4),
                    data_length: be32(buf, at + 8),
                    data_offset: be64(buf, at + 16),
                })
            })
            .collect();
        Some(DynamicHeader {
            data_offset: be64(buf, off::DATA_OFFSET),
            table_offset: be64(buf, off::TABLE_OFFSET),
            version: be32(buf, off::VERSION),
            max_table_entries: be32(buf, off::MAX_TABLE_ENTRIES),
            block_size: be32(buf, off::BLOCK_SIZE),
            checksum: be32(buf, off::CHECKSUM),
            parent_uuid: buf
                .get(off::PARENT_UUID..off::PARENT_UUID + 16)
                .and_then(|s| s.try_into().ok())
                .unwrap_or([0; 16]),
            parent_timestamp: be32(buf, off::PARENT_TIMESTAMP),
            parent_name: name,
            locators,
        })
    }

    /// Returns true if and only if the stored checksum matches the bytes of `buf`.
    pub fn checksum_ok(buf: &[u8]) -> bool {
        checksum(buf, off::CHECKSUM) == be32(buf, off::CHECKSUM)
    }

    /// The 1024 bytes of a header for a dynamic disk (no parent), with its checksum computed.
    pub fn dynamic_bytes(table_offset: u64, max_table_entries: u32, block_size: u32) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        put(&mut b, 0, COOKIE);
        // The spec says 0xFFFFFFFF but Microsoft's tools expect all 64 bits set (as qemu writes).
        put(&mut b, off::DATA_OFFSET, &u64::MAX.to_be_bytes());
        put(&mut b, off::TABLE_OFFSET, &table_offset.to_be_bytes());
        put(&mut b, off::VERSION, &0x0001_0000u32.to_be_bytes());
        put(
            &mut b,
            off::MAX_TABLE_ENTRIES,
            &max_table_entries.to_be_bytes(),
        );
        put(&mut b, off::BLOCK_SIZE, &block_size.to_be_bytes());
        let sum = checksum(&b, off::CHECKSUM);
        put(&mut b, off::CHECKSUM, &sum.to_be_bytes());
        b
    }
}

/// Decodes NUL-terminated UTF-16 big-endian text.
pub fn decode_utf16be(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// Decodes NUL-terminated UTF-16 little-endian text.
pub fn decode_utf16le(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_header_round_trips() {
        let b = DynamicHeader::dynamic_bytes(1536, 5, DEFAULT_BLOCK_SIZE);
        assert!(DynamicHeader::checksum_ok(&b));
        let h = DynamicHeader::parse(&b).unwrap();
        assert_eq!(h.table_offset, 1536);
        assert_eq!(h.max_table_entries, 5);
        assert_eq!(h.block_size, DEFAULT_BLOCK_SIZE);
        assert!(h.locators.is_empty());
        assert_eq!(h.parent_name, "");
        assert!(DynamicHeader::parse(&b[1..]).is_none());
    }

    #[test]
    fn utf16_decoding_stops_at_nul() {
        let be: Vec<u8> = "a\\b.vhd"
            .encode_utf16()
            .chain([0, 0x41])
            .flat_map(|u| u.to_be_bytes())
            .collect();
        assert_eq!(decode_utf16be(&be), "a\\b.vhd");
        let le: Vec<u8> = "x.vhd"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .chain([7])
            .collect();
        assert_eq!(decode_utf16le(&le), "x.vhd");
    }
}
