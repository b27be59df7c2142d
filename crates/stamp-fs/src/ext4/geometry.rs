//! The geometry: block size, groups, and where each group's metadata sits (no flex_bg: every
//! group holds its own bitmaps and inode table, after the superblock backup if it has one).

use crate::{Error, Result};

/// Size of an on-disk inode.
pub const INODE_SIZE: u64 = 256;
/// Size of a group descriptor (64bit).
pub const DESC_SIZE: u64 = 64;

/// Block and group arithmetic of one layout.
#[derive(Debug, Clone)]
pub struct Geometry {
    /// Block size in bytes.
    pub bs: u64,
    /// Blocks in the filesystem.
    pub blocks: u64,
    /// 1 with 1 KiB blocks, else 0.
    pub first_data_block: u64,
    /// Blocks per group.
    pub bpg: u64,
    /// Number of groups.
    pub ngroups: u64,
    /// Inodes per group.
    pub ipg: u64,
    /// Blocks of inode table per group.
    pub itb: u64,
    /// Blocks of group descriptor table.
    pub gdt_blocks: u64,
}

impl Geometry {
    /// The geometry of `blocks` blocks of `bs` bytes with at least `inodes` inodes (rounded up to
    /// fill groups). Drops a last group too small for its own metadata.
    pub fn new(bs: u64, mut blocks: u64, inodes: u64) -> Result<Self> {
        let first_data_block = u64::from(bs == 1024);
        let bpg = bs * 8;
        loop {
            if blocks <= first_data_block + 16 {
                return Err(Error::NoSpace {
                    what: "ext4 metadata".into(),
                    needed: (first_data_block + 16) * bs,
                    available: blocks * bs,
                });
            }
            let ngroups = (blocks - first_data_block).div_ceil(bpg);
            let per_block = bs / INODE_SIZE;
            let align = per_block.max(8);
            let ipg = inodes.div_ceil(ngroups).div_ceil(align) * align;
            let ipg = ipg.clamp(align, bs * 8);
            let itb = ipg * INODE_SIZE / bs;
            let gdt_blocks = (ngroups * DESC_SIZE).div_ceil(bs);
            let g = Geometry {
                bs,
                blocks,
                first_data_block,
                bpg,
                ngroups,
                ipg,
                itb,
                gdt_blocks,
            };
            let last = ngroups - 1;
            if g.group_len(last) < g.overhead(last) + 1 {
                if ngroups == 1 {
                    return Err(Error::NoSpace {
                        what: "ext4 metadata".into(),
                        needed: (g.overhead(0) + 1 + first_data_block) * bs,
                        available: blocks * bs,
                    });
                }
                blocks = g.group_start(last);
                continue;
            }
            if ipg * ngroups > u64::from(u32::MAX) {
                return Err(Error::InvalidOption("too many inodes for ext4".into()));
            }
            return Ok(g);
        }
    }

    /// First block of group `g`.
    pub fn group_start(&self, g: u64) -> u64 {
        self.first_data_block + g * self.bpg
    }

    /// Blocks in group `g`.
    pub fn group_len(&self, g: u64) -> u64 {
        (self.blocks - self.group_start(g)).min(self.bpg)
    }

    /// Whether group `g` holds a superblock backup (sparse_super: 0, 1 and powers of 3, 5, 7).
    pub fn has_super(&self, g: u64) -> bool {
        if g <= 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&b| {
            let mut p = b;
            while p < g {
                p *= b;
            }
            p == g
        })
    }

    /// Blocks of superblock and descriptor table at the start of group `g`.
    pub fn super_blocks(&self, g: u64) -> u64 {
        if self.has_super(g) {
            1 + self.gdt_blocks
        } else {
            0
        }
    }

    /// Metadata blocks of group `g`.
    pub fn overhead(&self, g: u64) -> u64 {
        self.super_blocks(g) + 2 + self.itb
    }

    /// The block bitmap of group `g`.
    pub fn block_bitmap(&self, g: u64) -> u64 {
        self.group_start(g) + self.super_blocks(g)
    }

    /// The inode bitmap of group `g`.
    pub fn inode_bitmap(&self, g: u64) -> u64 {
        self.block_bitmap(g) + 1
    }

    /// The inode table of group `g`.
    pub fn inode_table(&self, g: u64) -> u64 {
        self.block_bitmap(g) + 2
    }

    /// The first data block of group `g`.
    pub fn data_start(&self, g: u64) -> u64 {
        self.group_start(g) + self.overhead(g)
    }

    /// Total inodes.
    pub fn inodes(&self) -> u64 {
        self.ipg * self.ngroups
    }
}

/// Hands out data blocks in ascending order, group after group.
#[derive(Debug)]
pub struct Alloc<'g> {
    geo: &'g Geometry,
    group: u64,
    next: u64,
}

impl<'g> Alloc<'g> {
    /// An allocator at the first data block of group 0.
    pub fn new(geo: &'g Geometry) -> Self {
        Alloc {
            geo,
            group: 0,
            next: geo.data_start(0),
        }
    }

    /// A run of up to `want` (> 0) contiguous blocks: (first block, count).
    pub fn run(&mut self, want: u64) -> Option<(u64, u64)> {
        while self.group < self.geo.ngroups {
            let end = self.geo.group_start(self.group) + self.geo.group_len(self.group);
            if self.next < end {
                let got = want.min(end - self.next);
                let p = self.next;
                self.next += got;
                return Some((p, got));
            }
            self.group += 1;
            if self.group < self.geo.ngroups {
                self.next = self.geo.data_start(self.group);
            }
        }
        None
    }

    /// Data blocks used in group `g`.
    pub fn used_in(&self, g: u64) -> u64 {
        let start = self.geo.data_start(g);
        let end = self.geo.group_start(g) + self.geo.group_len(g);
        if g < self.group {
            end - start
        } else if g == self.group {
            self.next.min(end) - start
        } else {
            0
        }
    }
}
