//! The block allocation table: one entry per payload block, with a sector bitmap entry after
//! every chunk ratio payload entries, each holding a block state and a file offset in MiB.

use crate::{Ctx, Result};

use super::header::Region;
use super::layout::*;
use super::log::View;

/// How the virtual disk maps onto BAT entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Payload block size in bytes.
    pub block_size: u64,
    /// Payload blocks per sector bitmap block: (2^23 × logical sector size) / block size.
    pub chunk_ratio: u64,
    /// Payload blocks covering the virtual disk.
    pub data_blocks: u64,
    /// BAT entries, payload and sector bitmap, of a disk without a parent.
    pub bat_entries: u64,
}

impl Geometry {
    /// The geometry of a disk of `virtual_size` bytes with `block_size` blocks and
    /// `logical_sector_size` sectors (callers have checked block size and sector size).
    pub fn new(virtual_size: u64, block_size: u64, logical_sector_size: u32) -> Self {
        let block_size = block_size.max(1);
        let chunk_ratio = (SECTORS_PER_CHUNK * u64::from(logical_sector_size) / block_size).max(1);
        let data_blocks = virtual_size.div_ceil(block_size);
        let bat_entries = if data_blocks == 0 {
            0
        } else {
            data_blocks + (data_blocks - 1) / chunk_ratio
        };
        Geometry {
            virtual_size,
            block_size,
            chunk_ratio,
            data_blocks,
            bat_entries,
        }
    }

    /// The BAT index of payload block `block`.
    pub fn bat_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    /// Bytes of payload block `block` that lie within the virtual disk.
    pub fn block_len(&self, block: u64) -> u64 {
        self.block_size
            .min(self.virtual_size.saturating_sub(block * self.block_size))
    }

    /// Bytes the BAT takes, rounded up to whole MiB as qemu reserves it.
    pub fn bat_region_len(&self) -> u64 {
        (self.bat_entries * 8).next_multiple_of(MIB).max(MIB)
    }
}

/// What a payload block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Reads as zeros (not present, undefined, zero, unmapped).
    Zero,
    /// Data at this file offset.
    Present(u64),
}

/// The payload entries of a BAT, decoded.
#[derive(Debug, Clone)]
pub struct Bat {
    /// One per payload block.
    pub blocks: Vec<Block>,
    /// File offset of each payload block's entry, for error messages.
    pub offset: u64,
    /// The geometry it was read with.
    pub geo: Geometry,
}

/// Reads the BAT at `region` for `geo` (no sector bitmaps: the disk has no parent).
pub fn read_bat(view: &View, ctx: &Ctx, region: &Region, geo: Geometry) -> Result<Bat> {
    let bytes = geo.bat_entries.saturating_mul(8);
    if bytes > u64::from(region.length) {
        return Err(ctx.corrupt(
            "BAT",
            region.offset,
            format!(
                "{} entries ({bytes} bytes) are needed for {} blocks of {} bytes, but the BAT \
                 region is {} bytes",
                geo.bat_entries, geo.data_blocks, geo.block_size, region.length
            ),
        ));
    }
    // The region lies within the file (checked with the region table), so this is bounded by
    // the file size.
    let mut raw = vec![0u8; bytes as usize];
    view.read_exact_at(&mut raw, region.offset, "VHDX BAT")?;
    let mut blocks = Vec::with_capacity(geo.data_blocks as usize);
    for b in 0..geo.data_blocks {
        let i = geo.bat_index(b);
        let e = le64(&raw, (i * 8) as usize);
        let eoff = region.offset + i * 8;
        let block = match e & BAT_STATE_MASK {
            PAYLOAD_NOT_PRESENT
            | PAYLOAD_UNDEFINED
            | PAYLOAD_ZERO
            | PAYLOAD_UNMAPPED
            | PAYLOAD_UNMAPPED_V095 => Block::Zero,
            PAYLOAD_FULLY_PRESENT => Block::Present(e & BAT_OFFSET_MASK),
            PAYLOAD_PARTIALLY_PRESENT => {
                return Err(ctx.corrupt(
                    "BAT",
                    eoff,
                    format!(
                        "entry {i} (block {b}) is partially present, which only a differencing disk may be"
                    ),
                ));
            }
            s => {
                return Err(ctx.corrupt(
                    "BAT",
                    eoff,
                    format!("entry {i} (block {b}) has the invalid state {s}"),
                ));
            }
        };
        blocks.push(block);
    }
    Ok(Bat {
        blocks,
        offset: region.offset,
        geo,
    })
}

impl Bat {
    /// File offset of the entry of payload block `block`.
    pub fn entry_offset(&self, block: u64) -> u64 {
        self.offset + self.geo.bat_index(block) * 8
    }

    /// Problems with present blocks, as (entry offset, message): past the end of a file of
    /// `file_len` bytes, or overlapping one of `regions` (start, end, name). With `overlaps`,
    /// blocks that overlap each other too.
    pub fn problems(
        &self,
        file_len: u64,
        regions: &[(u64, u64, String)],
        overlaps: bool,
    ) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut spans = Vec::new();
        for (b, blk) in self.blocks.iter().enumerate() {
            let Block::Present(off) = *blk else { continue };
            let b = b as u64;
            let i = self.geo.bat_index(b);
            let eoff = self.entry_offset(b);
            let len = self.geo.block_len(b);
            let end = off.saturating_add(len);
            if off >= file_len {
                out.push((
                    eoff,
                    format!(
                        "entry {i} (block {b}) points at {off:#x}, past the end of the file ({file_len} bytes)"
                    ),
                ));
                continue;
            }
            if end > file_len {
                out.push((
                    eoff,
                    format!(
                        "entry {i} (block {b}) at {off:#x} ends at {end:#x}, past the end of the file ({file_len} bytes)"
                    ),
                ));
                continue;
            }
            let full_end = off.saturating_add(self.geo.block_size);
            if let Some((s, e, name)) = regions.iter().find(|(s, e, _)| off < *e && full_end > *s) {
                out.push((
                    eoff,
                    format!(
                        "entry {i} (block {b}) at {off:#x}..{full_end:#x} overlaps the {name} at {s:#x}..{e:#x}"
                    ),
                ));
                continue;
            }
            spans.push((off, end, b, eoff));
        }
        if overlaps {
            spans.sort_unstable();
            for w in spans.windows(2) {
                let (a, b) = (w[0], w[1]);
                if b.0 < a.1 {
                    out.push((
                        b.3,
                        format!(
                            "block {} at {:#x} overlaps block {} at {:#x}..{:#x}",
                            b.2, b.0, a.2, a.0, a.1
                        ),
                    ));
                }
            }
        }
        out
    }
}

/// Encodes a BAT entry.
pub fn entry(state: u64, file_offset: u64) -> u64 {
    (file_offset & BAT_OFFSET_MASK) | (state & BAT_STATE_MASK)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn geometry_interleaves_sector_bitmaps() {
        // 512-byte sectors, 1 MiB blocks: 4096 payload blocks per chunk.
        let g = Geometry::new(8 << 30, MIB, 512);
        assert_eq!(g.chunk_ratio, 4096);
        assert_eq!(g.data_blocks, 8192);
        assert_eq!(g.bat_entries, 8193);
        assert_eq!(g.bat_index(4095), 4095);
        assert_eq!(g.bat_index(4096), 4097);
        let g = Geometry::new(3 * MIB + 512, 32 * MIB, 512);
        assert_eq!((g.chunk_ratio, g.data_blocks, g.bat_entries), (128, 1, 1));
        assert_eq!(g.block_len(0), 3 * MIB + 512);
        assert_eq!(Geometry::new(0, MIB, 512).bat_entries, 0);
        assert_eq!(Geometry::new(1 << 30, 256 * MIB, 4096).chunk_ratio, 128);
    }

    #[test]
    fn entries_keep_offset_and_state() {
        let e = entry(PAYLOAD_FULLY_PRESENT, 5 * MIB);
        assert_eq!(e & BAT_STATE_MASK, PAYLOAD_FULLY_PRESENT);
        assert_eq!(e & BAT_OFFSET_MASK, 5 * MIB);
    }
}
