//! The superblock and the group descriptors.

use super::geometry::{DESC_SIZE, Geometry, INODE_SIZE, LOG_FLEX};
use super::{csum, put16, put32};

/// compat: has_journal.
pub const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_EXT_ATTR: u32 = 0x8;
const COMPAT_DIR_INDEX: u32 = 0x20;
const INCOMPAT: u32 = 0x2 | 0x40 | 0x80 | 0x200; // filetype, extents, 64bit, flex_bg
// sparse_super, large_file, huge_file, dir_nlink, extra_isize, metadata_csum
const RO_COMPAT: u32 = 0x1 | 0x2 | 0x8 | 0x20 | 0x40 | 0x400;

/// The fields of a superblock that are not geometry.
#[derive(Debug, Clone)]
pub struct Super {
    /// Free blocks.
    pub free_blocks: u64,
    /// Free inodes.
    pub free_inodes: u64,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// Volume label.
    pub label: [u8; 16],
    /// Directory hash seed.
    pub hash_seed: [u8; 16],
    /// mkfs/write/check time.
    pub time: i64,
    /// Extra compat features (has_journal).
    pub compat: u32,
    /// `s_jnl_blocks` (the journal inode's i_block, size high, size low), if a journal.
    pub jnl_blocks: Option<[u32; 17]>,
}

/// The superblock as the copy in group `g`.
pub fn superblock(geo: &Geometry, s: &Super, g: u64) -> [u8; 1024] {
    let mut b = [0u8; 1024];
    let t = s.time as u32;
    put32(&mut b, 0x0, geo.inodes() as u32);
    put32(&mut b, 0x4, geo.blocks as u32);
    put32(&mut b, 0xC, s.free_blocks as u32);
    put32(&mut b, 0x10, s.free_inodes as u32);
    put32(&mut b, 0x14, geo.first_data_block as u32);
    let log = geo.bs.trailing_zeros() - 10;
    put32(&mut b, 0x18, log);
    put32(&mut b, 0x1C, log);
    put32(&mut b, 0x20, geo.bpg as u32);
    put32(&mut b, 0x24, geo.bpg as u32);
    put32(&mut b, 0x28, geo.ipg as u32);
    put32(&mut b, 0x30, t);
    put16(&mut b, 0x36, 0xFFFF);
    put16(&mut b, 0x38, 0xEF53);
    put16(&mut b, 0x3A, 1);
    put16(&mut b, 0x3C, 1);
    put32(&mut b, 0x40, t);
    put32(&mut b, 0x4C, 1);
    put32(&mut b, 0x54, 11);
    put16(&mut b, 0x58, INODE_SIZE as u16);
    put16(&mut b, 0x5A, g as u16);
    put32(&mut b, 0x5C, COMPAT_EXT_ATTR | COMPAT_DIR_INDEX | s.compat);
    put32(&mut b, 0x60, INCOMPAT);
    put32(&mut b, 0x64, RO_COMPAT);
    b[0x68..0x78].copy_from_slice(&s.uuid);
    b[0x78..0x88].copy_from_slice(&s.label);
    if let Some(j) = s.jnl_blocks {
        put32(&mut b, 0xE0, 8);
        b[0xFD] = 1;
        for (i, w) in j.iter().enumerate() {
            put32(&mut b, 0x10C + 4 * i, *w);
        }
    }
    b[0xEC..0xFC].copy_from_slice(&s.hash_seed);
    b[0xFC] = 1; // half_md4
    put16(&mut b, 0xFE, DESC_SIZE as u16);
    put32(&mut b, 0x100, 0x0C); // user_xattr, acl
    put32(&mut b, 0x108, t);
    put32(&mut b, 0x150, (geo.blocks >> 32) as u32);
    put32(&mut b, 0x158, (s.free_blocks >> 32) as u32);
    put16(&mut b, 0x15C, 32);
    put16(&mut b, 0x15E, 32);
    put32(&mut b, 0x160, 1); // signed directory hash
    b[0x174] = LOG_FLEX as u8;
    b[0x175] = 1; // crc32c
    let c = csum(!0, &b[..0x3FC]);
    put32(&mut b, 0x3FC, c);
    b
}

/// The checksum seed of the filesystem.
pub fn fs_seed(uuid: &[u8; 16]) -> u32 {
    csum(!0, uuid)
}

/// Per-group counts for a descriptor.
#[derive(Debug, Clone, Default)]
pub struct GroupCounts {
    /// Free blocks.
    pub free_blocks: u64,
    /// Free inodes.
    pub free_inodes: u64,
    /// Directories.
    pub dirs: u64,
    /// Inodes never used at the end of the table.
    pub itable_unused: u64,
    /// Checksum of the block bitmap.
    pub bb_csum: u32,
    /// Checksum of the inode bitmap.
    pub ib_csum: u32,
}

/// The 64-byte descriptor of group `g`.
pub fn descriptor(geo: &Geometry, g: u64, c: &GroupCounts, seed: u32) -> [u8; 64] {
    let mut b = [0u8; 64];
    let bb = geo.block_bitmap(g);
    let ib = geo.inode_bitmap(g);
    let it = geo.inode_table(g);
    put32(&mut b, 0x0, bb as u32);
    put32(&mut b, 0x4, ib as u32);
    put32(&mut b, 0x8, it as u32);
    put16(&mut b, 0xC, c.free_blocks as u16);
    put16(&mut b, 0xE, c.free_inodes as u16);
    put16(&mut b, 0x10, c.dirs as u16);
    put16(&mut b, 0x12, 0x4); // inode table zeroed
    put16(&mut b, 0x18, c.bb_csum as u16);
    put16(&mut b, 0x1A, c.ib_csum as u16);
    put16(&mut b, 0x1C, c.itable_unused as u16);
    put32(&mut b, 0x20, (bb >> 32) as u32);
    put32(&mut b, 0x24, (ib >> 32) as u32);
    put32(&mut b, 0x28, (it >> 32) as u32);
    put16(&mut b, 0x2C, (c.free_blocks >> 16) as u16);
    put16(&mut b, 0x2E, (c.free_inodes >> 16) as u16);
    put16(&mut b, 0x30, (c.dirs >> 16) as u16);
    put16(&mut b, 0x32, (c.itable_unused >> 16) as u16);
    put16(&mut b, 0x38, (c.bb_csum >> 16) as u16);
    put16(&mut b, 0x3A, (c.ib_csum >> 16) as u16);
    let mut gn = [0u8; 4];
    put32(&mut gn, 0, g as u32);
    let c = csum(csum(seed, &gn), &b);
    put16(&mut b, 0x1E, c as u16);
    b
}
