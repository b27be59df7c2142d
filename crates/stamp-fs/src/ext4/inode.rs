//! On-disk inodes: 256 bytes with extra fields, nanosecond timestamps and a crc32c checksum.

use super::{csum, put16, put32};
use crate::Timestamp;

/// `i_flags`: the inode uses extents.
pub const EXTENTS_FL: u32 = 0x80000;

/// Everything an inode records.
#[derive(Debug, Clone)]
pub struct Inode {
    /// `st_mode`.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub links: u16,
    /// Size in bytes.
    pub size: u64,
    /// Access time.
    pub atime: Timestamp,
    /// Change time.
    pub ctime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Creation time.
    pub crtime: Timestamp,
    /// `i_flags`.
    pub flags: u32,
    /// `i_block`: extent root, fast symlink target or device number.
    pub iblock: [u8; 60],
    /// Blocks used, in 512-byte units.
    pub sectors: u64,
    /// The xattr block, 0 if none.
    pub file_acl: u64,
    /// The in-inode xattr area (from offset 160), empty if none.
    pub inline_xattrs: Vec<u8>,
}

impl Default for Inode {
    fn default() -> Self {
        Inode {
            mode: 0,
            uid: 0,
            gid: 0,
            links: 0,
            size: 0,
            atime: Timestamp::default(),
            ctime: Timestamp::default(),
            mtime: Timestamp::default(),
            crtime: Timestamp::default(),
            flags: 0,
            iblock: [0; 60],
            sectors: 0,
            file_acl: 0,
            inline_xattrs: Vec::new(),
        }
    }
}

/// The low 32 bits of the seconds and the `_extra` field (epoch bits and nanoseconds).
fn time(t: Timestamp) -> (u32, u32) {
    let lo = t.sec as i32;
    let epoch = ((t.sec - i64::from(lo)) >> 32) & 3;
    (lo as u32, (t.nsec.min(999_999_999) << 2) | epoch as u32)
}

/// The checksum seed of inode `ino` (generation 0): also seeds its directory and extent blocks.
pub fn seed(fs_seed: u32, ino: u32) -> u32 {
    csum(csum(fs_seed, &ino.to_le_bytes()), &0u32.to_le_bytes())
}

impl Inode {
    /// The 256 on-disk bytes of this inode as number `ino`, checksummed with `fs_seed`.
    pub fn encode(&self, fs_seed: u32, ino: u32) -> [u8; 256] {
        let mut b = [0u8; 256];
        put16(&mut b, 0x0, self.mode);
        put16(&mut b, 0x2, self.uid as u16);
        put32(&mut b, 0x4, self.size as u32);
        let (a, ax) = time(self.atime);
        let (c, cx) = time(self.ctime);
        let (m, mx) = time(self.mtime);
        let (cr, crx) = time(self.crtime);
        put32(&mut b, 0x8, a);
        put32(&mut b, 0xC, c);
        put32(&mut b, 0x10, m);
        put16(&mut b, 0x18, self.gid as u16);
        put16(&mut b, 0x1A, self.links);
        put32(&mut b, 0x1C, self.sectors as u32);
        put32(&mut b, 0x20, self.flags);
        b[0x28..0x64].copy_from_slice(&self.iblock);
        put32(&mut b, 0x68, self.file_acl as u32);
        put32(&mut b, 0x6C, (self.size >> 32) as u32);
        put16(&mut b, 0x74, (self.sectors >> 32) as u16);
        put16(&mut b, 0x76, (self.file_acl >> 32) as u16);
        put16(&mut b, 0x78, (self.uid >> 16) as u16);
        put16(&mut b, 0x7A, (self.gid >> 16) as u16);
        put16(&mut b, 0x80, 32);
        put32(&mut b, 0x84, cx);
        put32(&mut b, 0x88, mx);
        put32(&mut b, 0x8C, ax);
        put32(&mut b, 0x90, cr);
        put32(&mut b, 0x94, crx);
        let n = self.inline_xattrs.len().min(256 - 160);
        b[160..160 + n].copy_from_slice(&self.inline_xattrs[..n]);
        let c = csum(seed(fs_seed, ino), &b);
        put16(&mut b, 0x7C, c as u16);
        put16(&mut b, 0x82, (c >> 16) as u16);
        b
    }
}
