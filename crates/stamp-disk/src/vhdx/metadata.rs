//! The metadata region: a table of items by GUID (file parameters, virtual disk size, sector
//! sizes, page 83 identifier, parent locator) and the items themselves.

use crate::{Ctx, Result};

use super::header::Region;
use super::layout::*;
use super::log::View;

/// The metadata a reader needs, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Payload block size (power of two, 1 MiB to 256 MiB).
    pub block_size: u64,
    /// Blocks stay allocated: a fixed disk.
    pub leave_blocks_allocated: bool,
    /// A differencing disk.
    pub has_parent: bool,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Logical sector size (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size (512 or 4096).
    pub physical_sector_size: u32,
    /// SCSI page 83 identifier.
    pub page83: [u8; 16],
}

/// Where an item is, relative to the region, with its flags.
#[derive(Debug, Clone, Copy)]
struct Item {
    offset: u32,
    length: u32,
    entry_off: u64,
}

/// Reads an item's bytes, checking that it lies in the region and has at least `min` bytes.
fn item_bytes(
    view: &View,
    ctx: &Ctx,
    region: &Region,
    item: &Item,
    name: &str,
    min: u32,
) -> Result<Vec<u8>> {
    if item.length < min {
        return Err(ctx.corrupt(
            "metadata table",
            item.entry_off,
            format!("{name} item is {} bytes, needs {min}", item.length),
        ));
    }
    let end = u64::from(item.offset) + u64::from(item.length);
    if item.offset < METADATA_TABLE_SIZE as u32 || end > u64::from(region.length) {
        return Err(ctx.corrupt(
            "metadata table",
            item.entry_off,
            format!(
                "{name} item at {:#x}+{} lies outside the metadata region (64 KiB..{} bytes)",
                item.offset, item.length, region.length
            ),
        ));
    }
    let mut b = vec![0u8; min as usize];
    view.read_exact_at(
        &mut b,
        region.offset + u64::from(item.offset),
        "VHDX metadata item",
    )?;
    Ok(b)
}

/// Reads and checks the metadata region.
pub fn read_metadata(view: &View, ctx: &Ctx, region: &Region) -> Result<Metadata> {
    let off = region.offset;
    if u64::from(region.length) < METADATA_TABLE_SIZE as u64 {
        return Err(ctx.corrupt(
            "region table",
            REGION_TABLE1_OFFSET,
            format!(
                "metadata region is {} bytes, smaller than its 64 KiB table",
                region.length
            ),
        ));
    }
    let mut t = vec![0u8; METADATA_TABLE_SIZE];
    view.read_exact_at(&mut t, off, "VHDX metadata table")?;
    if &t[..8] != METADATA_SIGNATURE {
        return Err(ctx.corrupt("metadata table", off, "signature is not \"metadata\""));
    }
    let count = le16(&t, 10);
    if count > MAX_METADATA_ENTRIES {
        return Err(ctx.corrupt(
            "metadata table",
            off + 10,
            format!("{count} entries, over the limit of {MAX_METADATA_ENTRIES}"),
        ));
    }
    let known: [(&[u8; 16], &str); 6] = [
        (&FILE_PARAMS_GUID, "file parameters"),
        (&VIRTUAL_SIZE_GUID, "virtual disk size"),
        (&PAGE83_GUID, "page 83 data"),
        (&LOGICAL_SECTOR_GUID, "logical sector size"),
        (&PHYSICAL_SECTOR_GUID, "physical sector size"),
        (&PARENT_LOCATOR_GUID, "parent locator"),
    ];
    let mut found: [Option<Item>; 6] = [None; 6];
    for i in 0..count as usize {
        let e = 32 + i * 32;
        let entry_off = off + e as u64;
        let id = guid_at(&t, e);
        let item = Item {
            offset: le32(&t, e + 16),
            length: le32(&t, e + 20),
            entry_off,
        };
        let flags = le32(&t, e + 24);
        if item.length > MAX_METADATA_ITEM {
            return Err(ctx.corrupt(
                "metadata table",
                entry_off,
                format!(
                    "entry {i} is {} bytes, over the limit of {MAX_METADATA_ITEM}",
                    item.length
                ),
            ));
        }
        match known.iter().position(|(g, _)| **g == id) {
            Some(k) => {
                if found[k].is_some() {
                    return Err(ctx.corrupt(
                        "metadata table",
                        entry_off,
                        format!("entry {i}: a second {} item", known[k].1),
                    ));
                }
                found[k] = Some(item);
            }
            None if flags & META_IS_REQUIRED != 0 => {
                return Err(ctx.unsupported(format!(
                    "required metadata item {} (metadata table entry {i} at {entry_off:#x}) is unknown",
                    uuid::Uuid::from_bytes_le(id)
                )));
            }
            None => {}
        }
    }
    let need = |k: usize| {
        found[k].ok_or_else(|| {
            ctx.corrupt(
                "metadata table",
                off,
                format!("required {} item is missing", known[k].1),
            )
        })
    };
    let params = item_bytes(view, ctx, region, &need(0)?, "file parameters", 8)?;
    let block_size = u64::from(le32(&params, 0));
    let flags = le32(&params, 4);
    let has_parent = flags & PARAM_HAS_PARENT != 0;
    let params_off = region.offset + u64::from(need(0)?.offset);
    if has_parent {
        if found[5].is_none() {
            return Err(ctx.corrupt(
                "file parameters",
                params_off,
                "the disk has a parent but no parent locator",
            ));
        }
        return Err(ctx.unsupported(
            "differencing VHDX (the disk has a parent); merge it into its parent with Hyper-V \
             (Edit Disk > Merge) or convert the chain with a tool that reads it first",
        ));
    }
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(ctx.corrupt(
            "file parameters",
            params_off,
            format!("block size {block_size} is not a power of two from 1 MiB to 256 MiB"),
        ));
    }
    let size_item = need(1)?;
    let size = le64(
        &item_bytes(view, ctx, region, &size_item, "virtual disk size", 8)?,
        0,
    );
    let page83 = guid_at(
        &item_bytes(view, ctx, region, &need(2)?, "page 83 data", 16)?,
        0,
    );
    let lss_item = need(3)?;
    let lss = le32(
        &item_bytes(view, ctx, region, &lss_item, "logical sector size", 4)?,
        0,
    );
    let pss_item = need(4)?;
    let pss = le32(
        &item_bytes(view, ctx, region, &pss_item, "physical sector size", 4)?,
        0,
    );
    if lss != 512 && lss != 4096 {
        return Err(ctx.corrupt(
            "logical sector size",
            region.offset + u64::from(lss_item.offset),
            format!("{lss} is neither 512 nor 4096"),
        ));
    }
    if pss != 512 && pss != 4096 {
        return Err(ctx.corrupt(
            "physical sector size",
            region.offset + u64::from(pss_item.offset),
            format!("{pss} is neither 512 nor 4096"),
        ));
    }
    let size_off = region.offset + u64::from(size_item.offset);
    if size > MAX_VIRTUAL_SIZE {
        return Err(ctx.corrupt(
            "virtual disk size",
            size_off,
            format!("{size} bytes is over the 64 TiB limit"),
        ));
    }
    if size % u64::from(lss) != 0 {
        return Err(ctx.corrupt(
            "virtual disk size",
            size_off,
            format!("{size} bytes is not a multiple of the logical sector size {lss}"),
        ));
    }
    Ok(Metadata {
        block_size,
        leave_blocks_allocated: flags & PARAM_LEAVE_BLOCKS_ALLOCATED != 0,
        has_parent,
        virtual_size: size,
        logical_sector_size: lss,
        physical_sector_size: pss,
        page83,
    })
}

/// The first bytes of a metadata region holding `m`: the 64 KiB table then the five items, laid
/// out as qemu lays them (the rest of the region is zeros).
pub fn metadata_bytes(m: &Metadata) -> Vec<u8> {
    let mut b = vec![0u8; METADATA_TABLE_SIZE + 64];
    put(&mut b, 0, METADATA_SIGNATURE);
    put(&mut b, 10, &5u16.to_le_bytes());
    let vd = META_IS_REQUIRED | META_IS_VIRTUAL_DISK;
    let items: [(&[u8; 16], u32, u32); 5] = [
        (&FILE_PARAMS_GUID, 8, META_IS_REQUIRED),
        (&VIRTUAL_SIZE_GUID, 8, vd),
        (&PAGE83_GUID, 16, vd),
        (&LOGICAL_SECTOR_GUID, 4, vd),
        (&PHYSICAL_SECTOR_GUID, 4, vd),
    ];
    let mut at = METADATA_TABLE_SIZE as u32;
    for (i, (id, len, flags)) in items.iter().enumerate() {
        let e = 32 + i * 32;
        put(&mut b, e, *id);
        put(&mut b, e + 16, &at.to_le_bytes());
        put(&mut b, e + 20, &len.to_le_bytes());
        put(&mut b, e + 24, &flags.to_le_bytes());
        at += len;
    }
    let d = METADATA_TABLE_SIZE;
    let mut flags = 0u32;
    if m.leave_blocks_allocated {
        flags |= PARAM_LEAVE_BLOCKS_ALLOCATED;
    }
    if m.has_parent {
        flags |= PARAM_HAS_PARENT;
    }
    put(&mut b, d, &(m.block_size as u32).to_le_bytes());
    put(&mut b, d + 4, &flags.to_le_bytes());
    put(&mut b, d + 8, &m.virtual_size.to_le_bytes());
    put(&mut b, d + 16, &m.page83);
    put(&mut b, d + 32, &m.logical_sector_size.to_le_bytes());
    put(&mut b, d + 36, &m.physical_sector_size.to_le_bytes());
    b
}
