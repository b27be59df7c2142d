//! Linear directories: blocks of entries, each ending with a checksum tail (metadata_csum).

use super::{csum, put16, put32};

/// One directory entry.
#[derive(Debug, Clone)]
pub struct Dirent {
    /// Inode number.
    pub ino: u32,
    /// File type code (1 regular .. 7 symlink).
    pub ftype: u8,
    /// Name bytes (1..=255).
    pub name: Vec<u8>,
}

fn rec_len(name_len: usize) -> usize {
    (8 + name_len).div_ceil(4) * 4
}

/// Packs `entries` (`.` and `..` first) into blocks of `bs` bytes, at least `min_blocks` of them.
/// Checksums need the inode's seed, so they are added by [`seal`].
pub fn pack(entries: &[Dirent], bs: usize, min_blocks: usize) -> Vec<Vec<u8>> {
    let cap = bs - 12;
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut cur = vec![0u8; bs];
    let mut used = 0usize;
    let mut last: Option<usize> = None;
    for e in entries {
        let rl = rec_len(e.name.len());
        if used + rl > cap {
            if let Some(l) = last {
                put16(&mut cur, l + 4, (cap - l) as u16);
            }
            blocks.push(std::mem::replace(&mut cur, vec![0u8; bs]));
            used = 0;
        }
        put32(&mut cur, used, e.ino);
        put16(&mut cur, used + 4, rl as u16);
        cur[used + 6] = e.name.len() as u8;
        cur[used + 7] = e.ftype;
        cur[used + 8..used + 8 + e.name.len()].copy_from_slice(&e.name);
        last = Some(used);
        used += rl;
    }
    match last {
        Some(l) => put16(&mut cur, l + 4, (cap - l) as u16),
        None => put16(&mut cur, 4, cap as u16),
    }
    blocks.push(cur);
    while blocks.len() < min_blocks {
        let mut b = vec![0u8; bs];
        put16(&mut b, 4, cap as u16);
        blocks.push(b);
    }
    blocks
}

/// Writes the checksum tail of every block with the directory inode's seed `iseed`.
pub fn seal(blocks: &mut [Vec<u8>], iseed: u32) {
    for b in blocks {
        let t = b.len() - 12;
        b[t..].fill(0);
        put16(b, t + 4, 12);
        b[t + 7] = 0xDE;
        let c = csum(iseed, &b[..t]);
        put32(b, t + 8, c);
    }
}
