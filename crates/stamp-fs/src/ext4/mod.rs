//! The ext4 writer: lays out a [`Tree`] as an ext4 filesystem (extents, 64bit, sparse_super,
//! metadata_csum, 256-byte inodes, an empty internal journal) and streams it as extents.
//!
//! The layout is planned up front from the tree's metadata; only file contents are read while
//! streaming, a bounded buffer at a time. Blocks of zeros in regular files become holes.

mod dir;
mod extent;
mod geometry;
mod htree;
mod inode;
mod inodes;
mod layout;
mod plan;
mod stream;
mod superblock;
mod xattr;

use crate::{Image, Result, Tree};

/// Options of the ext4 writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Options {
    /// Size of the filesystem in bytes; `None` sizes it from the content.
    pub size: Option<u64>,
    /// Free space added when sizing automatically, in percent of the content and metadata.
    pub extra_space_percent: u32,
    /// Free space added when sizing automatically, in bytes, on top of the percentage.
    pub extra_space_bytes: u64,
    /// Volume label (at most 16 bytes).
    pub label: Option<String>,
    /// Filesystem UUID; derived from the tree and `seed` when `None`.
    pub uuid: Option<[u8; 16]>,
    /// Number of inodes; derived from the size and the content when `None`.
    pub inodes: Option<u64>,
    /// Block size: 1024, 2048 or 4096.
    pub block_size: u32,
    /// Seed mixed into the derived UUID and directory hash seed.
    pub seed: Option<u64>,
    /// SOURCE_DATE_EPOCH: every timestamp is clamped to it, and filesystem times are set to it.
    pub source_date_epoch: Option<i64>,
}

impl Default for Ext4Options {
    fn default() -> Self {
        Ext4Options {
            size: None,
            extra_space_percent: 20,
            extra_space_bytes: 0,
            label: None,
            uuid: None,
            inodes: None,
            block_size: 4096,
            seed: None,
            source_date_epoch: None,
        }
    }
}

/// Lays out `tree` as an ext4 filesystem and returns it as an [`Image`] whose file contents are
/// read from the tree's sources while the image streams.
pub fn ext4<'a>(tree: &'a Tree, opts: &Ext4Options) -> Result<Image<'a>> {
    let plan = plan::Plan::new(tree, opts)?;
    let size = plan.image_size;
    Ok(Image {
        size,
        extents: Box::new(stream::Stream::new(tree, plan)),
    })
}

/// ext4's crc32c: the raw CRC without the final inversion, continuing from `seed`.
pub(crate) fn csum(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

pub(crate) fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
