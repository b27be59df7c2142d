//! The layout of planned inodes on a geometry: block allocation, extent trees, the journal,
//! inode tables, bitmaps, group descriptors and superblocks, as chunks in ascending order.

use bytes::Bytes;

use super::extent::{self, Ext, MAX_LEN};
use super::geometry::{Alloc, Geometry, INODE_SIZE};
use super::inode::{self, EXTENTS_FL, Inode};
use super::inodes::{Payload, Prep};
use super::superblock::{self, COMPAT_HAS_JOURNAL, GroupCounts, Super};
use super::xattr;
use crate::{Error, NodeId, Result, Timestamp};

/// Something to write at a place in the image, in ascending order.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// Bytes at a byte offset.
    Mem {
        /// Byte offset.
        offset: u64,
        /// The bytes.
        bytes: Bytes,
    },
    /// `count` blocks of a regular file from its logical block `lblk`, at block `block`.
    File {
        /// First physical block.
        block: u64,
        /// Number of blocks.
        count: u64,
        /// The file's node.
        node: NodeId,
        /// First logical block.
        lblk: u64,
    },
}

impl Chunk {
    /// Where the chunk starts, in bytes.
    pub fn offset(&self, bs: u64) -> u64 {
        match self {
            Chunk::Mem { offset, .. } => *offset,
            Chunk::File { block, .. } => block * bs,
        }
    }
}

/// Blocks mke2fs gives the journal of a filesystem of `blocks` blocks (0: none).
fn journal_blocks(blocks: u64) -> u64 {
    match blocks {
        0..2048 => 0,
        2048..32768 => 1024,
        32768..262144 => 4096,
        262144..524288 => 8192,
        524288..4194304 => 16384,
        4194304..8388608 => 32768,
        8388608..16777216 => 65536,
        16777216..33554432 => 131072,
        _ => 262144,
    }
}

/// Allocates `n` blocks as extents from logical block `lblk`, appending to `exts`.
fn alloc_extents(alloc: &mut Alloc, mut lblk: u64, mut n: u64, exts: &mut Vec<Ext>) -> Result<()> {
    while n > 0 {
        let (p, got) = alloc.run(n.min(MAX_LEN)).ok_or_else(no_space)?;
        match exts.last_mut() {
            Some(e) if e.lblk + e.len == lblk && e.pblk + e.len == p && e.len + got <= MAX_LEN => {
                e.len += got
            }
            _ => exts.push(Ext {
                lblk,
                len: got,
                pblk: p,
            }),
        }
        lblk += got;
        n -= got;
    }
    Ok(())
}

fn no_space() -> Error {
    Error::NoSpace {
        what: "ext4 content".into(),
        needed: 0,
        available: 0,
    }
}

/// Finishes an inode's extent tree over `exts`, allocating leaves; returns its leaf chunks.
fn finish_extents(
    alloc: &mut Alloc,
    geo: &Geometry,
    inode: &mut Inode,
    exts: &[Ext],
    data: u64,
    iseed: u32,
) -> Result<Vec<Chunk>> {
    let nl = extent::blocks_needed(exts.len(), geo.bs);
    let mut tree_blocks = Vec::with_capacity(nl);
    for _ in 0..nl {
        tree_blocks.push(alloc.run(1).ok_or_else(no_space)?.0);
    }
    let (root, blocks) = extent::build(exts, &tree_blocks, geo.bs, iseed);
    inode.iblock = root;
    inode.flags |= EXTENTS_FL;
    inode.sectors += (data + nl as u64) * (geo.bs / 512);
    Ok(blocks
        .into_iter()
        .map(|(b, l)| Chunk::Mem {
            offset: b * geo.bs,
            bytes: Bytes::from(l),
        })
        .collect())
}

fn journal_super(bs: u64, len: u64, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; bs as usize];
    let be = |b: &mut [u8], off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_be_bytes());
    be(&mut b, 0x0, 0xC03B_3998);
    be(&mut b, 0x4, 4);
    be(&mut b, 0xC, bs as u32);
    be(&mut b, 0x10, len as u32);
    be(&mut b, 0x14, 1);
    be(&mut b, 0x18, 1);
    b[0x30..0x40].copy_from_slice(uuid);
    be(&mut b, 0x40, 1);
    b
}

/// Lays out `prep` on `geo`.
pub(super) fn layout(prep: &Prep, geo: &Geometry) -> Result<Vec<Chunk>> {
    let bs = geo.bs;
    if u64::from(prep.last_ino) > geo.inodes() {
        return Err(Error::NoSpace {
            what: "ext4 inodes".into(),
            needed: u64::from(prep.last_ino),
            available: geo.inodes(),
        });
    }
    let fs_seed = superblock::fs_seed(&prep.uuid);
    let mut alloc = Alloc::new(geo);
    let mut chunks = Vec::new();
    let mut inodes: Vec<(u32, Inode)> = Vec::new();

    let jblocks = journal_blocks(geo.blocks);
    let mut jnl = None;
    if jblocks > 0 {
        let mut exts = Vec::new();
        alloc_extents(&mut alloc, 0, jblocks, &mut exts)?;
        let t = Timestamp::from_secs(prep.time);
        let mut ji = Inode {
            mode: 0o100600,
            links: 1,
            size: jblocks * bs,
            atime: t,
            ctime: t,
            mtime: t,
            crtime: t,
            ..Inode::default()
        };
        chunks.push(Chunk::Mem {
            offset: exts[0].pblk * bs,
            bytes: Bytes::from(journal_super(bs, jblocks, &prep.uuid)),
        });
        chunks.extend(finish_extents(
            &mut alloc,
            geo,
            &mut ji,
            &exts,
            jblocks,
            inode::seed(fs_seed, 8),
        )?);
        let mut j = [0u32; 17];
        for (k, w) in ji.iblock.chunks_exact(4).enumerate() {
            j[k] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        }
        j[15] = (ji.size >> 32) as u32;
        j[16] = ji.size as u32;
        jnl = Some(j);
        inodes.push((8, ji));
    }

    for p in &prep.pending {
        let mut inode = p.inode.clone();
        let iseed = inode::seed(fs_seed, p.ino);
        if !p.block_attrs.is_empty() {
            let (b, _) = alloc.run(1).ok_or_else(no_space)?;
            chunks.push(Chunk::Mem {
                offset: b * bs,
                bytes: Bytes::from(xattr::block(&p.block_attrs, bs as usize, b, fs_seed)),
            });
            inode.file_acl = b;
            inode.sectors += bs / 512;
        }
        match &p.payload {
            Payload::None => {
                if matches!(inode.mode & 0o170000, 0o100000) {
                    inode.iblock = extent::build(&[], &[], bs, iseed).0;
                    inode.flags |= EXTENTS_FL;
                }
            }
            Payload::Runs(node, runs) => {
                let mut exts: Vec<Ext> = Vec::new();
                for &(l, n) in runs {
                    let mut piece = Vec::new();
                    alloc_extents(&mut alloc, l, n, &mut piece)?;
                    for e in &piece {
                        chunks.push(Chunk::File {
                            block: e.pblk,
                            count: e.len,
                            node: *node,
                            lblk: e.lblk,
                        });
                    }
                    for e in piece {
                        match exts.last_mut() {
                            Some(x)
                                if x.lblk + x.len == e.lblk
                                    && x.pblk + x.len == e.pblk
                                    && x.len + e.len <= MAX_LEN =>
                            {
                                x.len += e.len
                            }
                            _ => exts.push(e),
                        }
                    }
                }
                let data = runs.iter().map(|(_, n)| n).sum();
                chunks.extend(finish_extents(
                    &mut alloc, geo, &mut inode, &exts, data, iseed,
                )?);
            }
            Payload::Blocks(blocks) => {
                let mut exts = Vec::new();
                alloc_extents(&mut alloc, 0, blocks.len() as u64, &mut exts)?;
                for e in &exts {
                    let mut v = Vec::with_capacity((e.len * bs) as usize);
                    for b in &blocks[e.lblk as usize..(e.lblk + e.len) as usize] {
                        v.extend_from_slice(b);
                    }
                    chunks.push(Chunk::Mem {
                        offset: e.pblk * bs,
                        bytes: Bytes::from(v),
                    });
                }
                chunks.extend(finish_extents(
                    &mut alloc,
                    geo,
                    &mut inode,
                    &exts,
                    blocks.len() as u64,
                    iseed,
                )?);
            }
        }
        inodes.push((p.ino, inode));
    }
    inodes.sort_by_key(|(i, _)| *i);

    // Inode tables, bitmaps and descriptors, group by group.
    let last = u64::from(prep.last_ino);
    let mut counts = Vec::new();
    let mut next_inode = inodes.iter().peekable();
    let mut free_blocks = 0u64;
    let mut free_inodes = 0u64;
    for g in 0..geo.ngroups {
        let first = g * geo.ipg + 1;
        let used_inodes = last.saturating_sub(g * geo.ipg).min(geo.ipg);
        let mut table = Vec::with_capacity((used_inodes * INODE_SIZE) as usize);
        let mut dirs = 0u64;
        for n in first..first + used_inodes {
            let enc = match next_inode.peek() {
                Some((i, ino)) if u64::from(*i) == n => {
                    if ino.mode & 0o170000 == 0o040000 {
                        dirs += 1;
                    }
                    let e = ino.encode(fs_seed, *i);
                    next_inode.next();
                    e
                }
                _ => Inode::default().encode(fs_seed, n as u32),
            };
            table.extend_from_slice(&enc);
        }
        if !table.is_empty() {
            chunks.push(Chunk::Mem {
                offset: geo.inode_table(g) * bs,
                bytes: Bytes::from(table),
            });
        }
        let (bb, used_blocks) = alloc.bitmap(g);
        let mut ib = vec![0xFFu8; bs as usize];
        ib[..(geo.ipg / 8) as usize].fill(0);
        for bit in 0..used_inodes {
            ib[(bit / 8) as usize] |= 1 << (bit % 8);
        }
        let c = GroupCounts {
            free_blocks: geo.group_len(g) - used_blocks,
            free_inodes: geo.ipg - used_inodes,
            dirs,
            itable_unused: geo.ipg - used_inodes,
            bb_csum: super::csum(fs_seed, &bb[..(geo.bpg / 8) as usize]),
            ib_csum: super::csum(fs_seed, &ib[..(geo.ipg / 8) as usize]),
        };
        free_blocks += c.free_blocks;
        free_inodes += c.free_inodes;
        chunks.push(Chunk::Mem {
            offset: geo.block_bitmap(g) * bs,
            bytes: Bytes::from(bb),
        });
        chunks.push(Chunk::Mem {
            offset: geo.inode_bitmap(g) * bs,
            bytes: Bytes::from(ib),
        });
        counts.push(c);
    }
    let mut gdt = Vec::with_capacity((geo.gdt_blocks * bs) as usize);
    for (g, c) in counts.iter().enumerate() {
        gdt.extend_from_slice(&superblock::descriptor(geo, g as u64, c, fs_seed));
    }
    let gdt = Bytes::from(gdt);
    let s = Super {
        free_blocks,
        free_inodes,
        uuid: prep.uuid,
        label: prep.label,
        hash_seed: prep.hash_seed,
        time: prep.time,
        compat: if jnl.is_some() { COMPAT_HAS_JOURNAL } else { 0 },
        jnl_blocks: jnl,
    };
    for g in (0..geo.ngroups).filter(|g| geo.has_super(*g)) {
        let off = if g == 0 {
            1024
        } else {
            geo.group_start(g) * bs
        };
        chunks.push(Chunk::Mem {
            offset: off,
            bytes: Bytes::copy_from_slice(&superblock::superblock(geo, &s, g)),
        });
        chunks.push(Chunk::Mem {
            offset: (geo.group_start(g) + 1) * bs,
            bytes: gdt.clone(),
        });
    }
    chunks.sort_by_key(|c| c.offset(bs));
    Ok(chunks)
}
