//! Writing VHD images, streaming: dynamic disks append each non-zero 2 MiB block (bitmap all
//! ones, then the data) as the extents pass it and write the footers, header and BAT at the end;
//! fixed disks write the data in place, leave holes for zeros, and add the footer at the end.

use std::path::Path;

use super::footer::{self, DiskType, FOOTER_LEN, Footer, MAX_GEOMETRY, MAX_SECTORS};
use super::header::{DEFAULT_BLOCK_SIZE, DynamicHeader, HEADER_LEN};
use crate::content_id::ContentId;
use crate::file::OutputFile;
use crate::{
    CreateOptions, DiskSummary, DiskWriter, Error, Extent, ExtentOrder, Format, Result, is_zero,
};

/// Where a dynamic disk's BAT starts: after the footer copy (512) and the header (1024).
const BAT_OFFSET: u64 = (FOOTER_LEN + HEADER_LEN) as u64;

/// Bytes of sector bitmap before each 2 MiB block (4096 sectors, one bit each, padded to 512).
const BITMAP_LEN: usize = 512;

/// The sector bitmap of every block written: all sectors present.
static ALL_ONES: [u8; BITMAP_LEN] = [0xff; BITMAP_LEN];

/// Appends block `idx` (`bitmap` then `data`) if its data is not all zeros, and records it in
/// the BAT.
fn store_block(
    out: &mut OutputFile,
    id: &mut ContentId,
    (bat, next_sector): (&mut [u32], &mut u64),
    idx: u64,
    bitmap: &[u8],
    data: &[u8],
) -> Result<()> {
    if is_zero(data) {
        return Ok(());
    }
    let sector = u32::try_from(*next_sector).map_err(|_| {
        Error::InvalidOption("vhd file would exceed 2 TiB, the limit of its BAT".into())
    })?;
    if let Some(e) = bat.get_mut(idx as usize) {
        *e = sector;
    }
    id.feed(idx * u64::from(DEFAULT_BLOCK_SIZE), data);
    out.append(bitmap)?;
    out.append(data)?;
    *next_sector += ((bitmap.len() + data.len()) / 512) as u64;
    Ok(())
}

/// The geometry, size and creator of a new disk, as qemu-img would make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Virtual size in bytes.
    pub size: u64,
    /// CHS geometry: cylinders, heads, sectors per track.
    pub geometry: (u16, u8, u8),
    /// Creator application: `qemu` (size from the geometry) or `qem2` (size from the footer).
    pub creator: [u8; 4],
}

/// Computes the layout of a VHD for `requested` bytes: like qemu, the size is rounded up to a
/// sector and, without `force_size`, up to the next CHS geometry. With `force_size` the size is
/// kept (the maximum geometry tells readers to use the footer's size); a fixed disk is then
/// rounded up to a whole MiB, as Azure requires.
pub fn layout(requested: u64, fixed: bool, force_size: bool) -> Result<Layout> {
    let too_big = || {
        Error::InvalidOption(format!(
            "a vhd disk holds at most 2040 GiB ({} bytes); {requested} bytes is too large",
            MAX_SECTORS * 512
        ))
    };
    let sectors_req = requested.div_ceil(512);
    let l = if force_size {
        let mut size = sectors_req.checked_mul(512).ok_or_else(too_big)?;
        if fixed {
            size = size.checked_next_multiple_of(1 << 20).ok_or_else(too_big)?;
        }
        Layout {
            size,
            geometry: (65535, 16, 255),
            creator: *b"qem2",
        }
    } else {
        let (sectors, c, h, s) = footer::rounded_geometry(requested);
        Layout {
            size: sectors.checked_mul(512).ok_or_else(too_big)?,
            geometry: (c, h, s),
            creator: *b"qemu",
        }
    };
    if l.size / 512 > MAX_SECTORS {
        return Err(too_big());
    }
    debug_assert!(
        force_size
            || u64::from(l.geometry.0) * u64::from(l.geometry.1) * u64::from(l.geometry.2)
                <= MAX_GEOMETRY
    );
    Ok(l)
}

/// The footer's timestamp: `SOURCE_DATE_EPOCH` in VHD time (seconds since 2000), else 0, so the
/// same input always gives the same bytes.
fn timestamp() -> u32 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|t| t.saturating_sub(footer::VHD_EPOCH).min(u64::from(u32::MAX)) as u32)
        .unwrap_or(0)
}

/// The state of a dynamic disk being written.
#[derive(Debug)]
struct DynamicState {
    /// The BAT, in memory until the end.
    bat: Vec<u32>,
    /// The block being filled: 512 bytes of bitmap (all ones) then the block's data.
    buf: Vec<u8>,
    /// Index of the block in `buf`, if any.
    cur: Option<u64>,
    /// Bytes of the block in `buf` that are valid (data or zeros); the rest is stale.
    filled: usize,
    /// Next free sector of the file (where the next block goes).
    next_sector: u64,
}

/// A VHD writer (fixed or dynamic).
#[derive(Debug)]
pub struct VhdWriter {
    out: OutputFile,
    order: ExtentOrder,
    layout: Layout,
    disk_type: DiskType,
    id: ContentId,
    data_bytes: u64,
    dynamic: Option<DynamicState>,
}

/// Creates a VHD at `path` for a disk of `size` bytes. Options: `subformat=dynamic` (default) or
/// `fixed`, and `force_size=on`.
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<VhdWriter> {
    opts.allow_only(Format::Vhd, &["subformat", "force_size"])?;
    let disk_type = match opts.subformat.as_deref() {
        None | Some("dynamic") => DiskType::Dynamic,
        Some("fixed") => DiskType::Fixed,
        Some(other) => {
            return Err(Error::InvalidOption(format!(
                "vhd subformat '{other}' is not supported: use subformat=dynamic (the default) or subformat=fixed"
            )));
        }
    };
    let fixed = disk_type == DiskType::Fixed;
    let layout = layout(size, fixed, opts.force_size)?;
    if layout.size != size.div_ceil(512) * 512 {
        tracing::info!(
            requested = size,
            written = layout.size,
            "vhd virtual size rounded up ({})",
            if opts.force_size {
                "fixed VHDs are whole MiB"
            } else {
                "to the CHS geometry, as qemu-img does; force_size=on keeps the exact size"
            }
        );
    }
    let mut out = OutputFile::create(path)?;
    let dynamic = if fixed {
        None
    } else {
        let entries = layout.size.div_ceil(u64::from(DEFAULT_BLOCK_SIZE));
        let bat_bytes = (entries * 4).div_ceil(512) * 512;
        let start = BAT_OFFSET + bat_bytes;
        out.seek(start)?;
        let mut buf = vec![0u8; BITMAP_LEN + DEFAULT_BLOCK_SIZE as usize];
        buf[..BITMAP_LEN].fill(0xff);
        Some(DynamicState {
            bat: vec![u32::MAX; entries as usize],
            buf,
            cur: None,
            filled: 0,
            next_sector: start / 512,
        })
    };
    Ok(VhdWriter {
        out,
        order: ExtentOrder::new(size),
        id: ContentId::new(if fixed { "vhd fixed" } else { "vhd dynamic" }, layout.size),
        layout,
        disk_type,
        data_bytes: 0,
        dynamic,
    })
}

impl VhdWriter {
    /// Writes the block in the buffer, if it holds any non-zero byte, and empties the buffer.
    fn flush_block(&mut self) -> Result<()> {
        let Some(d) = self.dynamic.as_mut() else {
            return Ok(());
        };
        let Some(idx) = d.cur.take() else {
            return Ok(());
        };
        d.buf[BITMAP_LEN + d.filled..].fill(0);
        let VhdWriter { out, id, .. } = self;
        let (bitmap, data) = d.buf.split_at(BITMAP_LEN);
        store_block(out, id, (&mut d.bat, &mut d.next_sector), idx, bitmap, data)
    }

    /// Adds `data` at `inb` of block `idx`: a whole block is written straight from `data`,
    /// a part is gathered in the block buffer.
    fn put(&mut self, idx: u64, inb: usize, data: &[u8]) -> Result<()> {
        let cur = self.dynamic.as_ref().and_then(|d| d.cur);
        if cur != Some(idx) {
            self.flush_block()?;
            if inb == 0 && data.len() == DEFAULT_BLOCK_SIZE as usize {
                let VhdWriter {
                    out, id, dynamic, ..
                } = self;
                if let Some(d) = dynamic.as_mut() {
                    store_block(
                        out,
                        id,
                        (&mut d.bat, &mut d.next_sector),
                        idx,
                        &ALL_ONES,
                        data,
                    )?;
                }
                return Ok(());
            }
        }
        if let Some(d) = self.dynamic.as_mut() {
            if d.cur != Some(idx) {
                d.cur = Some(idx);
                d.filled = 0;
            }
            // Only what was not written since the last flush is zeroed.
            if inb > d.filled {
                d.buf[BITMAP_LEN + d.filled..BITMAP_LEN + inb].fill(0);
            }
            d.buf[BITMAP_LEN + inb..BITMAP_LEN + inb + data.len()].copy_from_slice(data);
            d.filled = d.filled.max(inb + data.len());
        }
        Ok(())
    }

    /// The footer for this disk, with `uuid`.
    fn footer(&self, uuid: [u8; 16]) -> Footer {
        Footer {
            features: 2,
            version: 0x0001_0000,
            data_offset: if self.dynamic.is_some() {
                FOOTER_LEN as u64
            } else {
                u64::MAX
            },
            timestamp: timestamp(),
            creator_app: self.layout.creator,
            // Virtual PC 2007's version, as qemu writes.
            creator_version: 0x0005_0003,
            creator_os: *b"Wi2k",
            original_size: self.layout.size,
            current_size: self.layout.size,
            cylinders: self.layout.geometry.0,
            heads: self.layout.geometry.1,
            sectors: self.layout.geometry.2,
            disk_type: self.disk_type.code(),
            checksum: 0,
            uuid,
            saved_state: 0,
        }
    }
}

impl DiskWriter for VhdWriter {
    fn write_extent(&mut self, e: Extent) -> Result<()> {
        self.order.accept(&e)?;
        let Extent::Data { offset, bytes } = e else {
            return Ok(());
        };
        self.data_bytes += bytes.len() as u64;
        if self.dynamic.is_none() {
            self.out.write_all_at(&bytes, offset)?;
            self.id.feed(offset, &bytes);
            return Ok(());
        }
        let bs = u64::from(DEFAULT_BLOCK_SIZE);
        let mut done = 0usize;
        while done < bytes.len() {
            let pos = offset + done as u64;
            let inb = (pos % bs) as usize;
            let n = (bs as usize - inb).min(bytes.len() - done);
            self.put(pos / bs, inb, &bytes[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<DiskSummary> {
        self.flush_block()?;
        let id = std::mem::replace(&mut self.id, ContentId::new("", 0));
        let footer = self.footer(id.finish()).to_bytes();
        let file_size = match &self.dynamic {
            None => {
                self.out.set_len(self.layout.size)?;
                self.out.write_all_at(&footer, self.layout.size)?;
                self.layout.size + FOOTER_LEN as u64
            }
            Some(d) => {
                let end = d.next_sector * 512;
                self.out.write_all_at(&footer, end)?;
                self.out.write_all_at(&footer, 0)?;
                let header = DynamicHeader::dynamic_bytes(
                    BAT_OFFSET,
                    d.bat.len() as u32,
                    DEFAULT_BLOCK_SIZE,
                );
                self.out.write_all_at(&header, FOOTER_LEN as u64)?;
                let mut bat: Vec<u8> = d.bat.iter().flat_map(|e| e.to_be_bytes()).collect();
                bat.resize(bat.len().div_ceil(512) * 512, 0xff);
                self.out.write_all_at(&bat, BAT_OFFSET)?;
                end + FOOTER_LEN as u64
            }
        };
        let path = self.out.path().to_path_buf();
        let VhdWriter {
            out,
            layout,
            data_bytes,
            ..
        } = *self;
        out.commit()?;
        Ok(DiskSummary {
            path,
            format: Format::Vhd.name().into(),
            virtual_size: layout.size,
            file_size,
            data_bytes,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn layouts_follow_qemu() {
        let l = layout(10 << 20, false, false).unwrap();
        assert_eq!(l.size, 10_514_432);
        assert_eq!(&l.creator, b"qemu");
        let l = layout((10 << 20) + 1, false, true).unwrap();
        assert_eq!(l.size, (10 << 20) + 512);
        assert_eq!(l.geometry, (65535, 16, 255));
        let l = layout((10 << 20) + 1, true, true).unwrap();
        assert_eq!(l.size, 11 << 20);
        assert!(layout(3 << 40, false, false).is_err());
        assert!(layout(u64::MAX, true, true).is_err());
    }
}
