//! The geometry: block size, groups, and where each group's metadata sits. With flex_bg, the
//! bitmaps and inode tables of 16 groups are packed together at the start of the first group of
//! the 16 (after its superblock backup, skipping any backup they would run into).

use crate::{Error, Result};

/// Size of an on-disk inode.
pub const INODE_SIZE: u64 = 256;
/// Size of a group descriptor (64bit).
pub const DESC_SIZE: u64 = 64;
/// The most blocks a filesystem may have (16 TiB of 4 KiB blocks).
pub const MAX_BLOCKS: u64 = 1 << 32;
/// log2 of the groups per flex group.
pub const LOG_FLEX: u32 = 4;

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
    /// Per group: block bitmap, inode bitmap, inode table.
    locs: Vec<[u64; 3]>,
    /// Metadata ranges (start, end), sorted and disjoint.
    reserved: Vec<(u64, u64)>,
}

impl Geometry {
    /// The geometry of `blocks` blocks of `bs` bytes with at least `inodes` inodes (rounded up to
    /// fill groups). Drops a last group too small for its own metadata.
    pub fn new(bs: u64, mut blocks: u64, inodes: u64) -> Result<Self> {
        if blocks > MAX_BLOCKS {
            return Err(Error::InvalidOption(format!(
                "an ext4 filesystem of {blocks} blocks is larger than this writer supports ({MAX_BLOCKS})"
            )));
        }
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
            if inodes.div_ceil(ngroups) > bs * 8 {
                return Err(Error::NoSpace {
                    what: format!("{inodes} ext4 inodes"),
                    needed: inodes,
                    available: ngroups * bs * 8,
                });
            }
            let ipg = inodes.div_ceil(ngroups).div_ceil(align) * align;
            let ipg = ipg.clamp(align, bs * 8);
            let itb = ipg * INODE_SIZE / bs;
            let gdt_blocks = (ngroups * DESC_SIZE).div_ceil(bs);
            let mut g = Geometry {
                bs,
                blocks,
                first_data_block,
                bpg,
                ngroups,
                ipg,
                itb,
                gdt_blocks,
                locs: Vec::new(),
                reserved: Vec::new(),
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
            g.place()?;
            return Ok(g);
        }
    }

    /// Places every group's bitmaps and inode table, flex group by flex group.
    fn place(&mut self) -> Result<()> {
        let supers: Vec<(u64, u64)> = (0..self.ngroups)
            .filter(|g| self.has_super(*g))
            .map(|g| {
                (
                    self.group_start(g),
                    self.group_start(g) + 1 + self.gdt_blocks,
                )
            })
            .collect();
        let mut reserved = supers.clone();
        let mut locs = vec![[0u64; 3]; self.ngroups as usize];
        let flex = 1u64 << LOG_FLEX;
        for f in 0..self.ngroups.div_ceil(flex) {
            let groups = f * flex..(f * flex + flex).min(self.ngroups);
            let mut cur = self.group_start(f * flex);
            let mut place = |len: u64| -> u64 {
                while let Some(&(_, e)) = supers.iter().find(|(s, e)| *s < cur + len && *e > cur) {
                    cur = e;
                }
                let at = cur;
                cur += len;
                reserved.push((at, cur));
                at
            };
            for g in groups.clone() {
                locs[g as usize][0] = place(1);
            }
            for g in groups.clone() {
                locs[g as usize][1] = place(1);
            }
            for g in groups {
                locs[g as usize][2] = place(self.itb);
            }
            if cur > self.blocks {
                return Err(Error::NoSpace {
                    what: "ext4 metadata".into(),
                    needed: cur * self.bs,
                    available: self.blocks * self.bs,
                });
            }
        }
        reserved.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in reserved {
            match merged.last_mut() {
                Some(last) if last.1 >= s => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.locs = locs;
        self.reserved = merged;
        Ok(())
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
        self.locs[g as usize][0]
    }

    /// The inode bitmap of group `g`.
    pub fn inode_bitmap(&self, g: u64) -> u64 {
        self.locs[g as usize][1]
    }

    /// The inode table of group `g`.
    pub fn inode_table(&self, g: u64) -> u64 {
        self.locs[g as usize][2]
    }

    /// Total inodes.
    pub fn inodes(&self) -> u64 {
        self.ipg * self.ngroups
    }
}

/// Hands out data blocks in ascending order, skipping metadata.
#[derive(Debug)]
pub struct Alloc<'g> {
    geo: &'g Geometry,
    /// Every free block before it is allocated.
    pos: u64,
    /// Index of the first reserved range that ends after `pos`.
    ri: usize,
}

impl<'g> Alloc<'g> {
    /// An allocator at the first free block.
    pub fn new(geo: &'g Geometry) -> Self {
        Alloc {
            geo,
            pos: geo.first_data_block,
            ri: 0,
        }
    }

    /// A run of up to `want` (> 0) contiguous blocks: (first block, count).
    pub fn run(&mut self, want: u64) -> Option<(u64, u64)> {
        let r = &self.geo.reserved;
        loop {
            while self.ri < r.len() && r[self.ri].1 <= self.pos {
                self.ri += 1;
            }
            if self.ri < r.len() && r[self.ri].0 <= self.pos {
                self.pos = r[self.ri].1;
                continue;
            }
            if self.pos >= self.geo.blocks {
                return None;
            }
            let limit = r.get(self.ri).map_or(self.geo.blocks, |x| x.0);
            let got = want.min(limit - self.pos);
            let p = self.pos;
            self.pos += got;
            return Some((p, got));
        }
    }

    /// The block bitmap of group `g` (padding bits set) and its count of used blocks.
    pub fn bitmap(&self, g: u64) -> (Vec<u8>, u64) {
        let geo = self.geo;
        let start = geo.group_start(g);
        let len = geo.group_len(g);
        let end = start + len;
        let mut bb = vec![0u8; geo.bs as usize];
        set_bits(&mut bb, 0, self.pos.clamp(start, end) - start);
        for &(s, e) in &geo.reserved {
            if s < end && e > start {
                set_bits(&mut bb, s.max(start) - start, e.min(end) - start);
            }
        }
        set_bits(&mut bb, len, geo.bpg);
        let used = bb.iter().map(|x| u64::from(x.count_ones())).sum::<u64>() - (geo.bpg - len);
        (bb, used)
    }
}

/// Sets bits `from..to` of `b`.
fn set_bits(b: &mut [u8], from: u64, to: u64) {
    let mut i = from;
    while i < to {
        if i % 8 == 0 && to - i >= 8 {
            let n = (to - i) / 8;
            b[(i / 8) as usize..(i / 8 + n) as usize].fill(0xFF);
            i += n * 8;
        } else {
            b[(i / 8) as usize] |= 1 << (i % 8);
            i += 1;
        }
    }
}
