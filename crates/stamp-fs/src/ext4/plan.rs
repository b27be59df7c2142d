//! Planning: the inodes from the tree, then the smallest layout that fits (or the given size).

use super::Ext4Options;
use super::geometry::{Geometry, MAX_BLOCKS};
use super::inodes::prepare;
use super::layout::{Chunk, layout};
use crate::{Error, Result, Tree};

/// A laid-out filesystem ready to stream.
#[derive(Debug)]
pub struct Plan {
    /// Bytes in the image.
    pub image_size: u64,
    /// Block size.
    pub bs: u64,
    /// Everything to write, sorted by offset.
    pub chunks: Vec<Chunk>,
}

impl Plan {
    /// Plans `tree` with `opts`.
    pub fn new(tree: &Tree, opts: &Ext4Options) -> Result<Self> {
        let bs = u64::from(opts.block_size);
        if !matches!(bs, 1024 | 2048 | 4096) {
            return Err(Error::InvalidOption(format!(
                "ext4 block size {bs} is not 1024, 2048 or 4096"
            )));
        }
        if opts.inodes.is_some_and(|n| n > u64::from(u32::MAX)) {
            return Err(Error::InvalidOption(
                "ext4 holds at most 2^32 - 1 inodes".into(),
            ));
        }
        let prep = prepare(tree, opts)?;
        let needed_inodes = u64::from(prep.last_ino);
        let inodes_for = |blocks: u64, extra: u64| {
            opts.inodes.unwrap_or(
                (blocks * bs / 16384).max(needed_inodes.saturating_mul(100 + extra) / 100 + 16),
            )
        };
        if let Some(size) = opts.size {
            let blocks = size / bs;
            let geo = Geometry::new(bs, blocks, inodes_for(blocks, 0))?;
            let chunks = layout(&prep, &geo).map_err(|e| match e {
                Error::NoSpace { what, .. } => Error::NoSpace {
                    what,
                    needed: prep.data_blocks * bs,
                    available: size,
                },
                e => e,
            })?;
            return Ok(Plan {
                image_size: size,
                bs,
                chunks,
            });
        }
        let extra = u64::from(opts.extra_space_percent);
        let fits = |blocks: u64, extra: u64| -> Result<Option<Plan>> {
            let geo = match Geometry::new(bs, blocks, inodes_for(blocks, extra)) {
                Ok(g) => g,
                Err(Error::NoSpace { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            match layout(&prep, &geo) {
                Ok(chunks) => Ok(Some(Plan {
                    image_size: geo.blocks * bs,
                    bs,
                    chunks,
                })),
                Err(Error::NoSpace { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        // The smallest size that fits (growing, then bisecting), then the extra space on top.
        let mut lo = 0u64;
        let mut hi = prep.data_blocks + prep.data_blocks / 50 + 64;
        let mut blocks = hi;
        for _ in 0..200 {
            if hi > MAX_BLOCKS {
                break;
            }
            if fits(hi, extra)?.is_some() {
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if fits(mid, extra)?.is_some() {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                blocks = (hi.saturating_mul(100 + extra) / 100)
                    .saturating_add(opts.extra_space_bytes.div_ceil(bs));
                for _ in 0..200 {
                    if blocks > MAX_BLOCKS {
                        break;
                    }
                    if let Some(p) = fits(blocks, extra)? {
                        return Ok(p);
                    }
                    blocks += (blocks / 64).max(16);
                }
                break;
            }
            lo = hi;
            hi += (hi / 8).max(16);
            blocks = hi;
        }
        Err(Error::NoSpace {
            what: "ext4 content".into(),
            needed: prep.data_blocks * bs,
            available: blocks * bs,
        })
    }
}
