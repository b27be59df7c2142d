//! Reading a VHDX: headers, log replay, region table, metadata and BAT at open; payload blocks by
//! position after.

use std::ops::Range;

use crate::convert::merge_ranges;
use crate::file::ImageFile;
use crate::{CheckReport, Ctx, DiskReader, Format, ImageInfo, Result};

use super::bat::{Bat, Block, Geometry, read_bat};
use super::header::{Header, read_current_header, read_file_identifier, read_region_table};
use super::layout::*;
use super::log::{View, replay};
use super::metadata::{Metadata, read_metadata};

/// A VHDX image opened for reading (dynamic or fixed; differencing disks are refused).
#[derive(Debug)]
pub struct VhdxReader {
    view: View,
    ctx: Ctx,
    header: Header,
    meta: Metadata,
    bat: Bat,
    /// Ranges no payload block may overlap: header section, log, BAT, metadata (start, end, name).
    regions: Vec<(u64, u64, String)>,
    creator: String,
}

impl VhdxReader {
    /// Opens `file`, refusing it (as qemu does) if a present block lies past the end of the file
    /// or over the header section, the log, the BAT or the metadata.
    pub fn open(file: ImageFile) -> Result<Self> {
        let r = Self::open_for_check(file)?;
        if let Some((off, msg)) = r
            .bat
            .problems(r.view.len(), &r.regions, false)
            .into_iter()
            .next()
        {
            return Err(r.ctx.corrupt("BAT", off, msg));
        }
        Ok(r)
    }

    /// Opens `file` without checking where present blocks point, so that [`DiskReader::check`]
    /// can report every bad entry (qemu-img check opens images the same way).
    pub fn open_for_check(file: ImageFile) -> Result<Self> {
        let ctx = Ctx::new(file.path(), Format::Vhdx);
        let creator = read_file_identifier(&file, &ctx)?;
        let (header, header_off) = read_current_header(&file, &ctx)?;
        let view = replay(&file, &ctx, &header, header_off)?;
        let mut regions = vec![(0, HEADER_SECTION_END, "header section".to_string())];
        if header.log_length > 0 {
            let end = header
                .log_offset
                .saturating_add(u64::from(header.log_length));
            regions.push((header.log_offset, end, "log".to_string()));
        }
        let rt = read_region_table(&view, &ctx, REGION_TABLE1_OFFSET, &mut regions)?;
        let meta = read_metadata(&view, &ctx, &rt.metadata)?;
        let geo = Geometry::new(meta.virtual_size, meta.block_size, meta.logical_sector_size);
        let bat = read_bat(&view, &ctx, &rt.bat, geo)?;
        Ok(VhdxReader {
            view,
            ctx,
            header,
            meta,
            bat,
            regions,
            creator,
        })
    }

    /// The checked metadata (block size, sector sizes, flags).
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The current header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn present_blocks(&self) -> u64 {
        self.bat
            .blocks
            .iter()
            .filter(|b| matches!(b, Block::Present(_)))
            .count() as u64
    }
}

impl DiskReader for VhdxReader {
    fn virtual_size(&self) -> u64 {
        self.meta.virtual_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let size = self.meta.virtual_size;
        crate::error::check_read(&self.ctx.path, offset, buf.len(), size)?;
        let bs = self.meta.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let b = pos / bs;
            let within = pos % bs;
            let n = ((bs - within) as usize).min(buf.len() - done);
            let dst = &mut buf[done..done + n];
            match self.bat.blocks.get(b as usize) {
                Some(Block::Present(off)) => {
                    self.view
                        .read_exact_at(dst, off + within, "VHDX payload block")?
                }
                Some(Block::Zero) => dst.fill(0),
                None => {
                    return Err(self.ctx.corrupt(
                        "BAT",
                        self.bat.offset,
                        format!("no entry for block {b}"),
                    ));
                }
            }
            done += n;
        }
        Ok(())
    }

    fn allocation(&self) -> Result<Vec<Range<u64>>> {
        let bs = self.meta.block_size;
        let ranges = self
            .bat
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| matches!(b, Block::Present(_)))
            .map(|(i, _)| {
                let start = i as u64 * bs;
                start..start + self.bat.geo.block_len(i as u64)
            })
            .collect();
        Ok(merge_ranges(ranges))
    }

    fn info(&self) -> ImageInfo {
        let mut i = ImageInfo::new(
            self.view.file().path(),
            Format::Vhdx,
            self.meta.virtual_size,
        );
        i.subformat = Some(
            if self.meta.leave_blocks_allocated {
                "fixed"
            } else {
                "dynamic"
            }
            .to_string(),
        );
        i.actual_size = self.view.file().allocated_bytes();
        i.cluster_size = Some(self.meta.block_size);
        let log = match self.view.replayed_entries() {
            0 if self.header.has_log() => "present, no valid entries".to_string(),
            0 => "none".to_string(),
            n => format!("replayed in memory ({n} entries)"),
        };
        let mut i = i
            .detail("logical_sector_size", self.meta.logical_sector_size)
            .detail("physical_sector_size", self.meta.physical_sector_size)
            .detail("log", log)
            .detail("allocated_blocks", self.present_blocks());
        if !self.creator.is_empty() {
            i = i.detail("creator", &self.creator);
        }
        i
    }

    fn check(&self) -> Result<CheckReport> {
        let corruptions = self
            .bat
            .problems(self.view.len(), &self.regions, true)
            .into_iter()
            .map(|(off, msg)| format!("BAT entry at {off:#x}: {msg}"))
            .collect();
        Ok(CheckReport {
            corruptions,
            leaks: Vec::new(),
            allocated_clusters: self.present_blocks(),
            total_clusters: self.bat.geo.data_blocks,
        })
    }
}
