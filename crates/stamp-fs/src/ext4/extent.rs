//! Extent trees: up to four extents in the inode, else one level of leaf blocks.

use super::{csum, put16, put32};
use crate::{Error, Result};

/// The longest initialized extent, in blocks.
pub const MAX_LEN: u64 = 32768;

/// One extent: `len` blocks from logical block `lblk` at physical block `pblk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext {
    /// First logical block.
    pub lblk: u64,
    /// Number of blocks.
    pub len: u64,
    /// First physical block.
    pub pblk: u64,
}

fn header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
    put16(b, 0, 0xF30A);
    put16(b, 2, entries as u16);
    put16(b, 4, max as u16);
    put16(b, 6, depth);
}

fn leaf_entry(b: &mut [u8], e: &Ext) {
    put32(b, 0, e.lblk as u32);
    put16(b, 4, e.len as u16);
    put16(b, 6, (e.pblk >> 32) as u16);
    put32(b, 8, e.pblk as u32);
}

/// How many leaf blocks `n` extents need beyond the inode (0 if they fit in it).
pub fn leaves_needed(n: usize, bs: u64) -> Result<usize> {
    if n <= 4 {
        return Ok(0);
    }
    let per = ((bs - 12) / 12) as usize;
    let leaves = n.div_ceil(per);
    if leaves > 4 {
        return Err(Error::InvalidOption(format!(
            "a file of {n} extents is too fragmented for a depth-1 extent tree"
        )));
    }
    Ok(leaves)
}

/// The inode's `i_block` and the leaf blocks (at `leaf_blocks`) for `exts`; `iseed` is the
/// inode's checksum seed.
pub fn build(exts: &[Ext], leaf_blocks: &[u64], bs: u64, iseed: u32) -> ([u8; 60], Vec<Vec<u8>>) {
    let mut root = [0u8; 60];
    if leaf_blocks.is_empty() {
        header(&mut root, exts.len(), 4, 0);
        for (i, e) in exts.iter().enumerate() {
            leaf_entry(&mut root[12 + 12 * i..], e);
        }
        return (root, Vec::new());
    }
    let per = ((bs - 12) / 12) as usize;
    header(&mut root, leaf_blocks.len(), 4, 1);
    let mut leaves = Vec::new();
    for (i, (chunk, &pb)) in exts.chunks(per).zip(leaf_blocks).enumerate() {
        let r = &mut root[12 + 12 * i..];
        put32(r, 0, chunk[0].lblk as u32);
        put32(r, 4, pb as u32);
        put16(r, 8, (pb >> 32) as u16);
        let mut b = vec![0u8; bs as usize];
        header(&mut b, chunk.len(), per, 0);
        for (j, e) in chunk.iter().enumerate() {
            leaf_entry(&mut b[12 + 12 * j..], e);
        }
        let tail = 12 + 12 * per;
        let c = csum(iseed, &b[..tail]);
        put32(&mut b, tail, c);
        leaves.push(b);
    }
    (root, leaves)
}
