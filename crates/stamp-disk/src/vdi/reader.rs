//! Reading VDI images (static and dynamic): a block map of little-endian u32 entries, one per
//! 1 MiB block, giving each block's index in the data area; unallocated and discarded blocks
//! read as zeros.

use std::ops::Range;

use super::header::{
    BLOCK_SIZE, DISCARDED, HEADER_LEN, Header, MAX_BLOCKS, MAX_DISK_SIZE, SIGNATURE, TYPE_DYNAMIC,
    TYPE_STATIC, VERSION_1_1, off,
};
use crate::convert::merge_ranges;
use crate::file::ImageFile;
use crate::mapping::FileData;
use crate::{CheckReport, Ctx, DiskReader, Format, ImageInfo, Result};

/// A VDI image opened for reading.
#[derive(Debug)]
pub struct VdiReader {
    file: ImageFile,
    ctx: Ctx,
    header: Header,
    /// Virtual size: the header's disk size rounded up to a sector, as qemu does.
    size: u64,
    bmap: Vec<u32>,
}

impl VdiReader {
    /// Opens a VDI image, checking its header against the same limits as qemu.
    pub fn open(file: ImageFile) -> Result<Self> {
        let ctx = Ctx::new(file.path(), Format::Vdi);
        let len = file.len();
        if len < HEADER_LEN as u64 {
            return Err(ctx.corrupt(
                "header",
                0,
                format!("file is {len} bytes, too small for a VDI header ({HEADER_LEN} bytes)"),
            ));
        }
        let mut raw = [0u8; HEADER_LEN];
        file.read_exact_at(&mut raw, 0, "VDI header")?;
        let h = Header::parse(&raw);
        let at = |o: usize| o as u64;
        if h.signature != SIGNATURE {
            return Err(ctx.corrupt(
                "header",
                at(off::SIGNATURE),
                format!(
                    "bad signature {:#010x} (expected {SIGNATURE:#010x})",
                    h.signature
                ),
            ));
        }
        if h.version != VERSION_1_1 {
            return Err(ctx.unsupported(format!(
                "VDI version {}.{} (only 1.1 is read)",
                h.version >> 16,
                h.version & 0xffff
            )));
        }
        if h.image_type != TYPE_DYNAMIC && h.image_type != TYPE_STATIC {
            return Err(ctx.unsupported(format!(
                "VDI image type {} (only dynamic (1) and static (2) images are read)",
                h.image_type
            )));
        }
        if h.uuid_link != [0; 16] || h.uuid_parent != [0; 16] {
            return Err(ctx.unsupported(
                "differencing or snapshot VDI (link or parent UUID set); convert it with VirtualBox first",
            ));
        }
        if h.disk_size > MAX_DISK_SIZE {
            return Err(ctx.unsupported(format!(
                "VDI disk of {} bytes (the limit, as qemu's, is {MAX_DISK_SIZE})",
                h.disk_size
            )));
        }
        if h.offset_bmap % 512 != 0 || h.offset_data % 512 != 0 {
            return Err(ctx.unsupported(format!(
                "block map at {:#x} or data at {:#x} not on a sector boundary",
                h.offset_bmap, h.offset_data
            )));
        }
        if h.sector_size != 512 {
            return Err(ctx.corrupt(
                "header",
                at(off::SECTOR_SIZE),
                format!("sector size {} is not 512", h.sector_size),
            ));
        }
        if h.block_size != BLOCK_SIZE {
            return Err(ctx.unsupported(format!(
                "block size {} (only {BLOCK_SIZE} is read, as by qemu)",
                h.block_size
            )));
        }
        if h.block_extra != 0 {
            return Err(ctx.unsupported(format!("{} extra bytes per block", h.block_extra)));
        }
        if h.blocks_in_image > MAX_BLOCKS {
            return Err(ctx.corrupt(
                "header",
                at(off::BLOCKS_IN_IMAGE),
                format!(
                    "{} blocks is over the limit of {MAX_BLOCKS}",
                    h.blocks_in_image
                ),
            ));
        }
        let bs = u64::from(h.block_size);
        if h.disk_size > u64::from(h.blocks_in_image) * bs {
            return Err(ctx.corrupt(
                "header",
                at(off::BLOCKS_IN_IMAGE),
                format!(
                    "disk size {} needs more than the {} blocks of the block map",
                    h.disk_size, h.blocks_in_image
                ),
            ));
        }
        let size = h.disk_size.div_ceil(512) * 512;
        let boff = u64::from(h.offset_bmap);
        let blen = u64::from(h.blocks_in_image) * 4;
        if boff.checked_add(blen).is_none_or(|e| e > len) {
            return Err(ctx.corrupt(
                "block map",
                boff,
                format!(
                    "{} entries end past the end of the file ({len} bytes)",
                    h.blocks_in_image
                ),
            ));
        }
        let raw_map = file.read_vec(boff, blen, u64::from(MAX_BLOCKS) * 4, "block map")?;
        let bmap = raw_map
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(VdiReader {
            file,
            ctx,
            header: h,
            size,
            bmap,
        })
    }

    /// The block map entry for block `idx`, if the block is stored.
    fn entry(&self, idx: u64) -> Result<Option<u32>> {
        let Some(e) = usize::try_from(idx).ok().and_then(|i| self.bmap.get(i)) else {
            return Ok(None);
        };
        if *e >= DISCARDED {
            return Ok(None);
        }
        if *e >= self.header.blocks_in_image {
            return Err(self.ctx.corrupt(
                "block map",
                u64::from(self.header.offset_bmap) + 4 * idx,
                format!(
                    "entry {idx} points to block {e}, past the {} blocks of the image",
                    self.header.blocks_in_image
                ),
            ));
        }
        Ok(Some(*e))
    }

    /// File offset of stored block `e`.
    fn block_offset(&self, e: u32) -> u64 {
        u64::from(self.header.offset_data) + u64::from(e) * u64::from(self.header.block_size)
    }
}

impl DiskReader for VdiReader {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::error::check_read(self.file.path(), offset, buf.len(), self.size)?;
        let bs = u64::from(self.header.block_size);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let inb = pos % bs;
            let mut n = ((bs - inb) as usize).min(buf.len() - done);
            let entry = self.entry(pos / bs)?;
            // Blocks stored one after the other are read (or zeroed) in one go.
            while done + n < buf.len() {
                let next = self.entry((pos + n as u64) / bs)?;
                let follows = match (entry, next) {
                    (None, None) => true,
                    (Some(a), Some(b)) => u64::from(b) == u64::from(a) + (inb + n as u64) / bs,
                    _ => false,
                };
                if !follows {
                    break;
                }
                n += (bs as usize).min(buf.len() - done - n);
            }
            let chunk = &mut buf[done..done + n];
            match entry {
                None => chunk.fill(0),
                // Like qemu, what lies past the end of a truncated file reads as zeros.
                Some(e) => self
                    .file
                    .read_at_zero_fill(chunk, self.block_offset(e) + inb)?,
            }
            done += n;
        }
        Ok(())
    }

    fn allocation(&self) -> Result<Vec<Range<u64>>> {
        let data = FileData::of(&self.file);
        let bs = u64::from(self.header.block_size);
        let mut out = Vec::new();
        for idx in 0..self.bmap.len() as u64 {
            let v = idx * bs;
            if v >= self.size {
                break;
            }
            if let Some(e) = self.entry(idx)? {
                data.map(v, self.block_offset(e), bs.min(self.size - v), &mut out);
            }
        }
        Ok(merge_ranges(out))
    }

    fn info(&self) -> ImageInfo {
        let h = &self.header;
        let mut i = ImageInfo::new(self.file.path(), Format::Vdi, self.size)
            .detail("text", &h.text)
            .detail(
                "version",
                format!("{}.{}", h.version >> 16, h.version & 0xffff),
            )
            .detail("image_type", h.image_type)
            .detail("uuid", Header::uuid_text(&h.uuid_image))
            .detail("uuid_last_snapshot", Header::uuid_text(&h.uuid_last_snap))
            .detail("blocks_in_image", h.blocks_in_image)
            .detail("blocks_allocated", h.blocks_allocated)
            .detail("offset_bmap", h.offset_bmap)
            .detail("offset_data", h.offset_data)
            .detail("disk_size", h.disk_size);
        if !h.description.is_empty() {
            i = i.detail("description", &h.description);
        }
        i.subformat = Some(
            if h.image_type == TYPE_STATIC {
                "static"
            } else {
                "dynamic"
            }
            .into(),
        );
        i.actual_size = self.file.allocated_bytes();
        i.cluster_size = Some(u64::from(h.block_size));
        i
    }

    fn check(&self) -> Result<CheckReport> {
        let h = &self.header;
        let mut rep = CheckReport {
            total_clusters: u64::from(h.blocks_in_image),
            ..Default::default()
        };
        let len = self.file.len();
        let bs = u64::from(h.block_size);
        let map_end = u64::from(h.offset_bmap) + 4 * u64::from(h.blocks_in_image);
        if u64::from(h.offset_data) < map_end && h.blocks_allocated > 0 {
            rep.corruptions.push(format!(
                "data area at {:#x} overlaps the block map, which ends at {map_end:#x}",
                h.offset_data
            ));
        }
        // Which entry first claimed each stored block, as qemu's check.
        let mut owner: Vec<u32> = vec![u32::MAX; self.bmap.len()];
        for (i, e) in self.bmap.iter().enumerate() {
            if *e >= DISCARDED {
                continue;
            }
            match owner.get_mut(*e as usize) {
                None => rep.corruptions.push(format!(
                    "block map entry {i} points to block {e}, past the {} blocks of the image",
                    h.blocks_in_image
                )),
                Some(o) => {
                    rep.allocated_clusters += 1;
                    if *o != u32::MAX {
                        rep.corruptions.push(format!(
                            "block map entries {o} and {i} both point to block {e}"
                        ));
                    } else {
                        *o = i as u32;
                    }
                    let end = self.block_offset(*e) + bs;
                    if end > len {
                        rep.corruptions.push(format!(
                            "block {e} (entry {i}) ends at {end:#x}, past the end of the file ({len} bytes)"
                        ));
                    }
                }
            }
        }
        if rep.allocated_clusters != u64::from(h.blocks_allocated) {
            rep.corruptions.push(format!(
                "header says {} blocks are allocated, the block map has {}",
                h.blocks_allocated, rep.allocated_clusters
            ));
        }
        Ok(rep)
    }
}
