//! The VDI header: 512 little-endian bytes at offset 0 (a text banner, the signature 0xbeda107f,
//! version 1.1, then the image type, the block map and data offsets, the disk size, the block
//! size and counts, and the UUIDs).

/// Length of the header as stamp reads and writes it (the header proper and its padding).
pub const HEADER_LEN: usize = 512;

/// The signature at offset 0x40.
pub const SIGNATURE: u32 = 0xbeda_107f;

/// Format version 1.1, the only one in use.
pub const VERSION_1_1: u32 = 0x0001_0001;

/// Block size of every VirtualBox and qemu image (1 MiB); qemu reads no other.
pub const BLOCK_SIZE: u32 = 1 << 20;

/// Block map entry of a block never written: reads as zeros.
pub const UNALLOCATED: u32 = 0xffff_ffff;

/// Block map entry of a discarded block: reads as zeros.
pub const DISCARDED: u32 = 0xffff_fffe;

/// Most blocks an image may have: qemu's `VDI_BLOCKS_IN_IMAGE_MAX`, so that the block map
/// (4 bytes a block, rounded up to a sector) stays under 2 GiB.
pub const MAX_BLOCKS: u32 = ((i32::MAX as u32) + 1 - 512) / 4;

/// Largest disk: [`MAX_BLOCKS`] blocks of 1 MiB, as qemu.
pub const MAX_DISK_SIZE: u64 = MAX_BLOCKS as u64 * BLOCK_SIZE as u64;

/// Banner written at the start of new images (the one VirtualBox writes).
pub const TEXT: &str = "<<< Oracle VM VirtualBox Disk Image >>>\n";

/// Field offsets inside the header.
pub mod off {
    /// Signature.
    pub const SIGNATURE: usize = 0x40;
    /// Version.
    pub const VERSION: usize = 0x44;
    /// Size of the header proper (after the pre-header).
    pub const HEADER_SIZE: usize = 0x48;
    /// Image type.
    pub const IMAGE_TYPE: usize = 0x4c;
    /// Image flags.
    pub const IMAGE_FLAGS: usize = 0x50;
    /// Description text (256 bytes).
    pub const DESCRIPTION: usize = 0x54;
    /// Offset of the block map.
    pub const OFFSET_BMAP: usize = 0x154;
    /// Offset of the data blocks.
    pub const OFFSET_DATA: usize = 0x158;
    /// Sector size.
    pub const SECTOR_SIZE: usize = 0x168;
    /// Disk size in bytes.
    pub const DISK_SIZE: usize = 0x170;
    /// Block size.
    pub const BLOCK_SIZE: usize = 0x178;
    /// Extra bytes before each block.
    pub const BLOCK_EXTRA: usize = 0x17c;
    /// Blocks in the image.
    pub const BLOCKS_IN_IMAGE: usize = 0x180;
    /// Blocks allocated.
    pub const BLOCKS_ALLOCATED: usize = 0x184;
    /// Image UUID.
    pub const UUID_IMAGE: usize = 0x188;
    /// UUID of the last snapshot.
    pub const UUID_LAST_SNAP: usize = 0x198;
    /// Link UUID (snapshots).
    pub const UUID_LINK: usize = 0x1a8;
    /// Parent UUID (differencing images).
    pub const UUID_PARENT: usize = 0x1b8;
}

/// Image type: blocks allocated as written.
pub const TYPE_DYNAMIC: u32 = 1;
/// Image type: every block preallocated.
pub const TYPE_STATIC: u32 = 2;

/// Reads a little-endian u32 at `at` (0 if out of range, which the fixed layout never is).
fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// Reads a little-endian u64 at `at` (0 if out of range).
fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Reads 16 bytes at `at`.
fn bytes16(b: &[u8], at: usize) -> [u8; 16] {
    b.get(at..at + 16)
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; 16])
}

/// Writes `v` at `at` if it fits.
fn put(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(dst) = b.get_mut(at..at + v.len()) {
        dst.copy_from_slice(v);
    }
}

/// A parsed VDI header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The banner text (up to the first NUL or newline).
    pub text: String,
    /// Signature (must be [`SIGNATURE`]).
    pub signature: u32,
    /// Version (must be [`VERSION_1_1`]).
    pub version: u32,
    /// Size of the header proper.
    pub header_size: u32,
    /// [`TYPE_DYNAMIC`] or [`TYPE_STATIC`] (VirtualBox also has undo and differencing types).
    pub image_type: u32,
    /// Image flags.
    pub image_flags: u32,
    /// Free-form description.
    pub description: String,
    /// Offset of the block map.
    pub offset_bmap: u32,
    /// Offset of block 0 of the data.
    pub offset_data: u32,
    /// Sector size (512).
    pub sector_size: u32,
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Extra bytes stored before each block.
    pub block_extra: u32,
    /// Entries in the block map.
    pub blocks_in_image: u32,
    /// Blocks stored in the file.
    pub blocks_allocated: u32,
    /// The image's UUID (as stored: little-endian GUID).
    pub uuid_image: [u8; 16],
    /// UUID of the last snapshot.
    pub uuid_last_snap: [u8; 16],
    /// Link UUID (snapshots).
    pub uuid_link: [u8; 16],
    /// Parent UUID (differencing images).
    pub uuid_parent: [u8; 16],
}

/// Decodes NUL-terminated text.
fn text(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(b.get(..end).unwrap_or(&[]))
        .trim()
        .to_string()
}

impl Header {
    /// Parses the header in `b` (512 bytes; shorter input leaves fields zero).
    pub fn parse(b: &[u8]) -> Header {
        Header {
            text: text(b.get(..0x40).unwrap_or(&[])),
            signature: le32(b, off::SIGNATURE),
            version: le32(b, off::VERSION),
            header_size: le32(b, off::HEADER_SIZE),
            image_type: le32(b, off::IMAGE_TYPE),
            image_flags: le32(b, off::IMAGE_FLAGS),
            description: text(
                b.get(off::DESCRIPTION..off::DESCRIPTION + 256)
                    .unwrap_or(&[]),
            ),
            offset_bmap: le32(b, off::OFFSET_BMAP),
            offset_data: le32(b, off::OFFSET_DATA),
            sector_size: le32(b, off::SECTOR_SIZE),
            disk_size: le64(b, off::DISK_SIZE),
            block_size: le32(b, off::BLOCK_SIZE),
            block_extra: le32(b, off::BLOCK_EXTRA),
            blocks_in_image: le32(b, off::BLOCKS_IN_IMAGE),
            blocks_allocated: le32(b, off::BLOCKS_ALLOCATED),
            uuid_image: bytes16(b, off::UUID_IMAGE),
            uuid_last_snap: bytes16(b, off::UUID_LAST_SNAP),
            uuid_link: bytes16(b, off::UUID_LINK),
            uuid_parent: bytes16(b, off::UUID_PARENT),
        }
    }

    /// The 512 bytes of this header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        let t = self.text.as_bytes();
        put(&mut b, 0, t.get(..t.len().min(0x3f)).unwrap_or(&[]));
        put(&mut b, off::SIGNATURE, &self.signature.to_le_bytes());
        put(&mut b, off::VERSION, &self.version.to_le_bytes());
        put(&mut b, off::HEADER_SIZE, &self.header_size.to_le_bytes());
        put(&mut b, off::IMAGE_TYPE, &self.image_type.to_le_bytes());
        put(&mut b, off::IMAGE_FLAGS, &self.image_flags.to_le_bytes());
        let d = self.description.as_bytes();
        put(
            &mut b,
            off::DESCRIPTION,
            d.get(..d.len().min(255)).unwrap_or(&[]),
        );
        put(&mut b, off::OFFSET_BMAP, &self.offset_bmap.to_le_bytes());
        put(&mut b, off::OFFSET_DATA, &self.offset_data.to_le_bytes());
        put(&mut b, off::SECTOR_SIZE, &self.sector_size.to_le_bytes());
        put(&mut b, off::DISK_SIZE, &self.disk_size.to_le_bytes());
        put(&mut b, off::BLOCK_SIZE, &self.block_size.to_le_bytes());
        put(&mut b, off::BLOCK_EXTRA, &self.block_extra.to_le_bytes());
        put(
            &mut b,
            off::BLOCKS_IN_IMAGE,
            &self.blocks_in_image.to_le_bytes(),
        );
        put(
            &mut b,
            off::BLOCKS_ALLOCATED,
            &self.blocks_allocated.to_le_bytes(),
        );
        put(&mut b, off::UUID_IMAGE, &self.uuid_image);
        put(&mut b, off::UUID_LAST_SNAP, &self.uuid_last_snap);
        put(&mut b, off::UUID_LINK, &self.uuid_link);
        put(&mut b, off::UUID_PARENT, &self.uuid_parent);
        b
    }

    /// Formats a stored UUID (VirtualBox stores them as little-endian GUIDs).
    pub fn uuid_text(raw: &[u8; 16]) -> String {
        uuid::Uuid::from_bytes_le(*raw).to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            text: TEXT.trim().into(),
            signature: SIGNATURE,
            version: VERSION_1_1,
            header_size: 0x180,
            image_type: TYPE_DYNAMIC,
            image_flags: 0,
            description: String::new(),
            offset_bmap: 0x200,
            offset_data: 0x400,
            sector_size: 512,
            disk_size: 5 << 20,
            block_size: BLOCK_SIZE,
            block_extra: 0,
            blocks_in_image: 5,
            blocks_allocated: 2,
            uuid_image: [1; 16],
            uuid_last_snap: [2; 16],
            uuid_link: [0; 16],
            uuid_parent: [0; 16],
        };
        let b = h.to_bytes();
        assert_eq!(&b[0x40..0x44], &[0x7f, 0x10, 0xda, 0xbe]);
        assert_eq!(Header::parse(&b), h);
        assert_eq!(MAX_BLOCKS, 536_870_784);
    }
}
