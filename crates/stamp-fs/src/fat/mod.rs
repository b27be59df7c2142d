//! FAT12/16/32 volumes written natively from a [`Tree`] (for EFI system partitions).
//!
//! The volume holds the tree's directories and regular files with VFAT long names and unique
//! 8.3 short names. Symlinks, devices, FIFOs and sockets are refused with [`Error::BadPath`]
//! (FAT cannot hold them); a file with several names (hard links) is stored once per name.
//! Each file and directory gets one contiguous run of clusters, allocated in [`Tree::walk`]
//! order, so file contents stream from their source in order.

mod boot;
mod dir;
mod layout;
mod name;
mod table;
mod time;

use bytes::Bytes;
use stamp_disk::{Extent, is_zero};

use layout::FatType;

use crate::{Content, Error, Image, Result, Tree};
use dir::{Plan, Run};
use layout::{Layout, SECTOR};

/// How to build a FAT volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FatOptions {
    /// Size in bytes (rounded down to whole sectors); by default the content plus headroom.
    pub size: Option<u64>,
    /// Volume label: up to 11 characters of `A-Z 0-9 $%'-_@~`!(){}^#&` and space (lower-case
    /// letters are upper-cased); by default none (`NO NAME`).
    pub label: Option<String>,
    /// Volume serial number; by default derived from the volume's metadata.
    pub volume_id: Option<u32>,
    /// Clamp every timestamp to this time (SOURCE_DATE_EPOCH, seconds since the epoch).
    pub source_date_epoch: Option<i64>,
}

/// Lays out `tree` as a FAT volume: FAT32 from 64 MiB, FAT16 from 4 MiB, FAT12 below.
///
/// Errors: [`Error::BadPath`] for entries FAT cannot hold (not UTF-8, reserved characters,
/// names that differ only in case, symlinks and special files, files of 4 GiB or more),
/// [`Error::NoSpace`] when the content does not fit `size`, [`Error::InvalidOption`] for a bad
/// label or size.
pub fn fat<'t>(tree: &'t Tree, opts: &FatOptions) -> Result<Image<'t>> {
    let label = label_bytes(opts.label.as_deref())?;
    let mut plan = Plan::new(tree, label.is_some())?;
    let layout = match opts.size {
        Some(size) => {
            let l = layout::choose(size, plan.root_entries())?;
            let needed = plan.clusters_needed(&l);
            if needed > l.clusters {
                return Err(Error::NoSpace {
                    what: "the FAT volume's content".into(),
                    needed: needed * l.cluster_bytes(),
                    available: l.clusters * l.cluster_bytes(),
                });
            }
            l
        }
        None => auto_layout(&plan)?,
    };
    let used = plan.allocate(&layout);
    let mut fat_entries = plan.fat_entries();
    fat_entries[0] = 0x0FFF_FF00 | 0xF8;
    fat_entries[1] = 0x0FFF_FFFF;
    let table = Bytes::from(table::table(layout.kind, &fat_entries));
    let runs = plan.runs(&layout, opts.source_date_epoch, label.as_ref());
    let volume_id = opts.volume_id.unwrap_or_else(|| {
        let mut h = crc32fast::Hasher::new();
        h.update(&layout.size().to_le_bytes());
        h.update(&table);
        for (_, r) in &runs {
            if let Run::Dir(d) = r {
                h.update(d);
            }
        }
        h.finalize()
    });
    let label = label.unwrap_or(*b"NO NAME    ");

    let mut reserved = vec![0u8; (layout.reserved * SECTOR) as usize];
    let bs = boot::boot_sector(&layout, volume_id, &label);
    reserved[..512].copy_from_slice(&bs);
    if layout.kind == FatType::Fat32 {
        let free = (layout.clusters + 2 - used) as u32;
        let next = if used < layout.clusters + 2 {
            used as u32
        } else {
            u32::MAX
        };
        let info = boot::fsinfo(free, next);
        reserved[512..1024].copy_from_slice(&info);
        reserved[6 * 512..7 * 512].copy_from_slice(&bs);
        reserved[7 * 512..8 * 512].copy_from_slice(&info);
    }
    let mut pieces = vec![
        Piece::Data(0, Bytes::from(reserved)),
        Piece::Data(layout.fat_offset(0), table.clone()),
        Piece::Data(layout.fat_offset(1), table),
    ];
    pieces.extend(runs.into_iter().map(|(o, r)| match r {
        Run::Dir(b) => Piece::Data(o, b),
        Run::File(c) => Piece::File(o, c),
    }));
    Ok(Image {
        size: layout.size(),
        extents: Box::new(pieces.into_iter().flat_map(Piece::extents)),
    })
}

/// A whole-MiB layout (at least 1 MiB) that holds the content with about 10% of free clusters:
/// starts from the content's size and grows until it fits.
fn auto_layout(plan: &Plan) -> Result<Layout> {
    const MIB: u64 = 1 << 20;
    let mut size = (plan.bytes_estimate() + plan.bytes_estimate() / 10 + MIB).next_multiple_of(MIB);
    for _ in 0..64 {
        let l = layout::choose(size, plan.root_entries())?;
        let needed = plan.clusters_needed(&l);
        let want = needed + needed / 10 + 1;
        if want <= l.clusters {
            return Ok(l);
        }
        size = (size + (want - l.clusters) * l.cluster_bytes() + size / 16).next_multiple_of(MIB);
    }
    Err(Error::InvalidOption(
        "no FAT volume size found for the content".into(),
    ))
}

/// The label as 11 space-padded bytes, upper-cased.
fn label_bytes(label: Option<&str>) -> Result<Option<[u8; 11]>> {
    let Some(label) = label else {
        return Ok(None);
    };
    let up = label.to_ascii_uppercase();
    let ok =
        |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b" $%'-_@~`!(){}^#&".contains(&b);
    if up.is_empty() || up.len() > 11 || !up.bytes().all(ok) || up.starts_with(' ') {
        return Err(Error::InvalidOption(format!(
            "FAT label '{label}': 1 to 11 characters of A-Z 0-9 space $%'-_@~`!(){{}}^#& \
             (not starting with a space)"
        )));
    }
    let mut out = [b' '; 11];
    out[..up.len()].copy_from_slice(up.as_bytes());
    Ok(Some(out))
}

/// A part of the image in ascending order: metadata in memory or a file's content.
enum Piece {
    Data(u64, Bytes),
    File(u64, Content),
}

/// Bytes read from a file per extent.
const CHUNK: u64 = 1 << 20;

impl Piece {
    fn extents(self) -> Box<dyn Iterator<Item = Result<Extent>> + Send> {
        match self {
            Piece::Data(offset, bytes) => {
                Box::new(std::iter::once(Ok(Extent::Data { offset, bytes })))
            }
            Piece::File(offset, content) => {
                let len = content.len();
                Box::new((0..len.div_ceil(CHUNK)).filter_map(move |i| {
                    let at = i * CHUNK;
                    let mut buf = vec![0u8; CHUNK.min(len - at) as usize];
                    match content.read_at(&mut buf, at) {
                        Err(e) => Some(Err(e)),
                        Ok(()) if is_zero(&buf) => None,
                        Ok(()) => Some(Ok(Extent::Data {
                            offset: offset + at,
                            bytes: Bytes::from(buf),
                        })),
                    }
                }))
            }
        }
    }
}
