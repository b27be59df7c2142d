//! Extent trees: up to four extents in the inode, else one level of leaf blocks.

use super::{csum, put16, put32};

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

fn index_entry(r: &mut [u8], lblk: u64, pb: u64) {
    put32(r, 0, lblk as u32);
    put32(r, 4, pb as u32);
    put16(r, 8, (pb >> 32) as u16);
}

/// How many tree blocks (leaves and index blocks) `n` extents need beyond the inode.
pub fn blocks_needed(n: usize, bs: u64) -> usize {
    let per = ((bs - 12) / 12) as usize;
    let mut count = n;
    let mut total = 0;
    while count > 4 {
        count = count.div_ceil(per);
        total += count;
    }
    total
}

/// The inode's `i_block` and the tree blocks (numbered from `tree_blocks`, as many as
/// [`blocks_needed`] says) for `exts`; `iseed` is the inode's checksum seed.
pub fn build(
    exts: &[Ext],
    tree_blocks: &[u64],
    bs: u64,
    iseed: u32,
) -> ([u8; 60], Vec<(u64, Vec<u8>)>) {
    let mut root = [0u8; 60];
    if exts.len() <= 4 {
        header(&mut root, exts.len(), 4, 0);
        for (i, e) in exts.iter().enumerate() {
            leaf_entry(&mut root[12 + 12 * i..], e);
        }
        return (root, Vec::new());
    }
    let per = ((bs - 12) / 12) as usize;
    let tail = 12 + 12 * per;
    let mut numbers = tree_blocks.iter().copied();
    let mut out = Vec::new();
    // (first logical block, physical block) of each node of the level below.
    let mut level: Vec<(u64, u64)> = Vec::new();
    for chunk in exts.chunks(per) {
        let pb = numbers.next().unwrap_or(0);
        let mut b = vec![0u8; bs as usize];
        header(&mut b, chunk.len(), per, 0);
        for (j, e) in chunk.iter().enumerate() {
            leaf_entry(&mut b[12 + 12 * j..], e);
        }
        let c = csum(iseed, &b[..tail]);
        put32(&mut b, tail, c);
        level.push((chunk[0].lblk, pb));
        out.push((pb, b));
    }
    let mut depth = 1u16;
    while level.len() > 4 {
        let mut up = Vec::new();
        for chunk in level.chunks(per) {
            let pb = numbers.next().unwrap_or(0);
            let mut b = vec![0u8; bs as usize];
            header(&mut b, chunk.len(), per, depth);
            for (j, (l, p)) in chunk.iter().enumerate() {
                index_entry(&mut b[12 + 12 * j..], *l, *p);
            }
            let c = csum(iseed, &b[..tail]);
            put32(&mut b, tail, c);
            up.push((chunk[0].0, pb));
            out.push((pb, b));
        }
        level = up;
        depth += 1;
    }
    header(&mut root, level.len(), 4, depth);
    for (i, (l, p)) in level.iter().enumerate() {
        index_entry(&mut root[12 + 12 * i..], *l, *p);
    }
    (root, out)
}
