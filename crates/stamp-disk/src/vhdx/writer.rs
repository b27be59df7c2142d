//! Writing a VHDX, laid out as qemu lays it: the header section (file identifier, two headers,
//! two region tables) in the first MiB, an empty 1 MiB log, the BAT, the metadata region, then
//! payload blocks. Dynamic disks get a block only where data is not all zeros, appended in the
//! order data arrives; fixed disks get every block, contiguous. The BAT and the headers are
//! written at the end.

use std::path::Path;

use crate::file::OutputFile;
use crate::{
    CreateOptions, DiskSummary, DiskWriter, Error, Extent, ExtentOrder, Format, Result, is_zero,
};

use super::bat::{Geometry, entry};
use super::header::{Header, Region, RegionTable, file_identifier_bytes, region_table_bytes};
use super::layout::*;
use super::metadata::{Metadata, metadata_bytes};

/// Length of the (empty) log the writer reserves, as qemu's default.
const LOG_LENGTH: u64 = MIB;
/// Length of the metadata region, as qemu reserves it.
const METADATA_LENGTH: u64 = MIB;
/// Namespace of the UUIDs the writer derives (the disk's identity is a function of its shape
/// and of SOURCE_DATE_EPOCH, so the same input gives the same bytes).
const GUID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5d1b_7c2e_4a3f_4e8b_9c61_0a7e_3b2d_1f90);
/// BAT entries written at a time at finish (1 MiB of table).
const BAT_CHUNK_ENTRIES: u64 = 128 * 1024;
/// What the file identifier says made the file.
const CREATOR: &str = "stamp";

/// The block size qemu picks when none is given, by disk size (it keeps the BAT small).
pub fn default_block_size(size: u64) -> u64 {
    if size > 32 << 40 {
        64 * MIB
    } else if size > 100 << 30 {
        32 * MIB
    } else if size > 1 << 30 {
        16 * MIB
    } else {
        8 * MIB
    }
}

/// Writes a VHDX image from ascending extents.
#[derive(Debug)]
pub struct VhdxWriter {
    out: OutputFile,
    order: ExtentOrder,
    geo: Geometry,
    meta: Metadata,
    bat_region: Region,
    metadata_region: Region,
    payload_start: u64,
    /// End of the payload allocated so far.
    next_free: u64,
    /// File offset of each payload block; 0 while not allocated.
    blocks: Vec<u64>,
    fixed: bool,
    epoch: Option<String>,
    data_bytes: u64,
}

/// Creates a VHDX of `size` bytes at `path` (`subformat=dynamic|fixed`, `block_size=`). A size
/// that is not a multiple of 512 is rounded up, as qemu does.
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn DiskWriter>> {
    opts.allow_only(Format::Vhdx, &["subformat", "block_size"])?;
    let fixed = match opts.subformat.as_deref() {
        None | Some("dynamic") => false,
        Some("fixed") => true,
        Some(other) => {
            return Err(Error::InvalidOption(format!(
                "vhdx subformat '{other}' is not supported (use dynamic or fixed)"
            )));
        }
    };
    let virtual_size = size.next_multiple_of(512);
    if virtual_size > MAX_VIRTUAL_SIZE {
        return Err(Error::InvalidOption(format!(
            "vhdx disks are at most 64 TiB ({MAX_VIRTUAL_SIZE} bytes); {size} bytes asked"
        )));
    }
    let block_size = opts
        .block_size
        .unwrap_or_else(|| default_block_size(virtual_size));
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(Error::InvalidOption(format!(
            "vhdx block_size={block_size}: must be a power of two from 1M to 256M"
        )));
    }
    let geo = Geometry::new(virtual_size, block_size, 512);
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok();
    let page83 = derive_guid("page83", &geo, fixed, epoch.as_deref());
    let meta = Metadata {
        block_size,
        leave_blocks_allocated: fixed,
        has_parent: false,
        virtual_size,
        logical_sector_size: 512,
        physical_sector_size: 512,
        page83,
    };
    let bat_region = Region {
        offset: HEADER_SECTION_END + LOG_LENGTH,
        length: u32::try_from(geo.bat_region_len()).map_err(|_| {
            Error::InvalidOption(format!(
                "vhdx: a BAT for {virtual_size} bytes in {block_size}-byte blocks is too large; use a larger block_size"
            ))
        })?,
    };
    let metadata_region = Region {
        offset: bat_region.end(),
        length: METADATA_LENGTH as u32,
    };
    let payload_start = metadata_region.end();
    let blocks = if fixed {
        (0..geo.data_blocks)
            .map(|b| payload_start + b * block_size)
            .collect()
    } else {
        vec![0; geo.data_blocks as usize]
    };
    let out = OutputFile::create(path)?;
    Ok(Box::new(VhdxWriter {
        out,
        order: ExtentOrder::new(size),
        geo,
        meta,
        bat_region,
        metadata_region,
        payload_start,
        next_free: payload_start,
        blocks,
        fixed,
        epoch,
        data_bytes: 0,
    }))
}

/// A GUID for `what` derived from the disk's shape (and SOURCE_DATE_EPOCH when set), in on-disk
/// byte order.
fn derive_guid(what: &str, geo: &Geometry, fixed: bool, epoch: Option<&str>) -> [u8; 16] {
    let name = format!(
        "vhdx {what} size={} block={} fixed={fixed} epoch={}",
        geo.virtual_size,
        geo.block_size,
        epoch.unwrap_or("")
    );
    uuid::Uuid::new_v5(&GUID_NAMESPACE, name.as_bytes()).to_bytes_le()
}

impl VhdxWriter {
    /// Writes `data` at virtual offset `pos`, all within block `b`.
    fn write_in_block(&mut self, b: u64, pos: u64, data: &[u8]) -> Result<()> {
        if is_zero(data) {
            return Ok(());
        }
        let Some(slot) = self.blocks.get_mut(b as usize) else {
            return Err(Error::BadExtent {
                offset: pos,
                len: data.len() as u64,
                detail: format!("block {b} is past the end of the disk"),
            });
        };
        if *slot == 0 {
            *slot = self.next_free;
            self.next_free += self.geo.block_size;
        }
        let at = *slot + pos % self.geo.block_size;
        self.out.write_all_at(data, at)?;
        self.data_bytes += data.len() as u64;
        Ok(())
    }

    /// Writes the BAT in pieces of [`BAT_CHUNK_ENTRIES`] entries (sector bitmap entries stay
    /// zero: not present).
    fn write_bat(&self) -> Result<()> {
        let total = self.geo.bat_entries;
        let mut first = 0u64;
        while first < total {
            let n = BAT_CHUNK_ENTRIES.min(total - first);
            let mut buf = vec![0u8; (n * 8) as usize];
            // Payload blocks whose entries fall in [first, first + n).
            let b0 = first - first / (self.geo.chunk_ratio + 1);
            for b in b0..self.geo.data_blocks {
                let i = self.geo.bat_index(b);
                if i >= first + n {
                    break;
                }
                if i < first {
                    continue;
                }
                let off = self.blocks.get(b as usize).copied().unwrap_or(0);
                let e = if off == 0 {
                    entry(PAYLOAD_NOT_PRESENT, 0)
                } else {
                    entry(PAYLOAD_FULLY_PRESENT, off)
                };
                put(&mut buf, ((i - first) * 8) as usize, &e.to_le_bytes());
            }
            self.out
                .write_all_at(&buf, self.bat_region.offset + first * 8)?;
            first += n;
        }
        Ok(())
    }
}

impl DiskWriter for VhdxWriter {
    fn write_extent(&mut self, e: Extent) -> Result<()> {
        self.order.accept(&e)?;
        let Extent::Data { offset, bytes } = e else {
            return Ok(());
        };
        let bs = self.geo.block_size;
        let mut done = 0usize;
        while done < bytes.len() {
            let pos = offset + done as u64;
            let n = ((bs - pos % bs) as usize).min(bytes.len() - done);
            self.write_in_block(pos / bs, pos, &bytes[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<DiskSummary> {
        let w = *self;
        let file_size = if w.fixed {
            w.payload_start + w.geo.data_blocks * w.geo.block_size
        } else {
            w.next_free
        };
        w.out.set_len(file_size)?;
        w.out
            .write_all_at(&file_identifier_bytes(CREATOR), FILE_ID_OFFSET)?;
        let epoch = w.epoch.as_deref();
        let mut header = Header {
            sequence: 0,
            file_write_guid: derive_guid("file-write", &w.geo, w.fixed, epoch),
            data_write_guid: derive_guid("data-write", &w.geo, w.fixed, epoch),
            log_guid: [0; 16],
            log_version: 0,
            version: 1,
            log_length: LOG_LENGTH as u32,
            log_offset: HEADER_SECTION_END,
        };
        w.out.write_all_at(&header.to_bytes(), HEADER1_OFFSET)?;
        header.sequence = 1;
        w.out.write_all_at(&header.to_bytes(), HEADER2_OFFSET)?;
        let rt = region_table_bytes(&RegionTable {
            bat: w.bat_region,
            metadata: w.metadata_region,
        });
        w.out.write_all_at(&rt, REGION_TABLE1_OFFSET)?;
        w.out.write_all_at(&rt, REGION_TABLE2_OFFSET)?;
        w.write_bat()?;
        w.out
            .write_all_at(&metadata_bytes(&w.meta), w.metadata_region.offset)?;
        let path = w.out.path().to_path_buf();
        w.out.commit()?;
        Ok(DiskSummary {
            path,
            format: Format::Vhdx.name().into(),
            virtual_size: w.geo.virtual_size,
            file_size,
            data_bytes: w.data_bytes,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_block_size_follows_qemu() {
        assert_eq!(default_block_size(64 << 20), 8 * MIB);
        assert_eq!(default_block_size(2 << 30), 16 * MIB);
        assert_eq!(default_block_size(200 << 30), 32 * MIB);
        assert_eq!(default_block_size(40 << 40), 64 * MIB);
    }

    #[test]
    fn options_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.vhdx");
        for bad in [
            "subformat=differencing",
            "block_size=3M",
            "block_size=512K",
            "block_size=512M",
            "cluster_size=64K",
        ] {
            let o = CreateOptions::parse(bad).unwrap();
            assert!(
                matches!(create(&p, 1 << 20, &o), Err(Error::InvalidOption(_))),
                "{bad}"
            );
        }
        assert!(create(&p, (64 << 40) + 512, &CreateOptions::default()).is_err());
        assert!(!p.exists());
    }
}
