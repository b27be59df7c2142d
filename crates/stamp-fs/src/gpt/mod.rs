//! GPT partitioned disks: a protective MBR, the primary and backup headers and entry arrays, and
//! each partition's contents streamed from its [`Image`] at its offset.
//!
//! Sectors are 512 bytes; partitions start on 1 MiB boundaries in the order given; the entry
//! array has the usual 128 entries. GUIDs not given are derived (name-based UUIDs) from the seed
//! and the layout, so the same partitions and options always give the same bytes.

mod guid;
mod header;
mod probe;
mod types;

use bytes::Bytes;
use stamp_disk::Extent;

pub use probe::{Firmware, firmware};
pub use types::PartitionType;

use crate::{Error, Image, Result};
use header::{ARRAY_SECTORS, ENTRIES, EntryFields, HeaderFields};

/// Bytes per sector.
pub const SECTOR: u64 = 512;

/// Partition alignment (and the first partition's start).
pub const ALIGN: u64 = 1 << 20;

/// Largest partition or disk accepted (1 EiB), which keeps every offset computation in range.
pub const MAX_SIZE: u64 = 1 << 60;

/// Longest partition name, in UTF-16 code units.
pub const MAX_NAME: usize = 36;

/// One partition of a [`gpt_disk`].
#[derive(Debug)]
pub struct Partition<'a> {
    /// Its name (up to 36 UTF-16 code units), as `sfdisk` shows it as `name=`.
    pub name: String,
    /// Its type.
    pub kind: PartitionType,
    /// Size in bytes, rounded up to whole sectors; 0 means the image's size rounded up to 1 MiB.
    pub size: u64,
    /// The attribute bits (bit 0 required, bit 2 legacy BIOS bootable, 48-63 type-specific such
    /// as the Discoverable Partitions Specification's read-only and no-auto flags).
    pub attributes: u64,
    /// Its unique GUID (bytes in textual order); by default derived from the seed and layout.
    pub unique_guid: Option<[u8; 16]>,
    /// Its contents (a filesystem), which must not be larger than `size`; none leaves it zeroed.
    pub image: Option<Image<'a>>,
}

impl<'a> Partition<'a> {
    /// A partition of `kind` named `name` holding `image`, sized to fit it.
    pub fn with_image(name: &str, kind: PartitionType, image: Image<'a>) -> Self {
        Partition {
            name: name.into(),
            kind,
            size: 0,
            attributes: 0,
            unique_guid: None,
            image: Some(image),
        }
    }
}

/// How to build a GPT disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GptOptions {
    /// The disk GUID (bytes in textual order); by default derived from the seed and layout.
    pub disk_guid: Option<[u8; 16]>,
    /// The disk size in bytes (a multiple of 512); by default the partitions plus the backup
    /// table, rounded up to 1 MiB.
    pub size: Option<u64>,
    /// Mixed into every derived GUID, so that otherwise identical disks can differ.
    pub seed: Option<u64>,
}

/// Where a partition goes.
struct Placed<'a> {
    first_lba: u64,
    sectors: u64,
    image: Option<Image<'a>>,
}

/// Lays out a GPT disk holding `parts` in order.
///
/// Errors: [`Error::InvalidOption`] for more than 128 partitions, a name longer than 36 UTF-16
/// units, a partition with neither size nor image, or a size that is not a whole number of
/// sectors; [`Error::NoSpace`] when an image is larger than its partition or the partitions do not
/// fit the disk size.
pub fn gpt_disk<'a>(parts: Vec<Partition<'a>>, opts: &GptOptions) -> Result<Image<'a>> {
    if parts.len() > ENTRIES {
        return Err(Error::InvalidOption(format!(
            "{} partitions, more than the {ENTRIES} a GPT holds",
            parts.len()
        )));
    }
    let mut cursor = ALIGN;
    let mut placed = Vec::with_capacity(parts.len());
    let mut fields = Vec::with_capacity(parts.len());
    let mut names = Vec::with_capacity(parts.len());
    let mut layout = Vec::new(); // what derived GUIDs depend on
    layout.extend_from_slice(&opts.seed.unwrap_or(0).to_le_bytes());
    layout.push(u8::from(opts.seed.is_some()));
    for (i, p) in parts.into_iter().enumerate() {
        let name: Vec<u16> = p.name.encode_utf16().collect();
        if name.len() > MAX_NAME {
            return Err(Error::InvalidOption(format!(
                "partition name '{}' is longer than {MAX_NAME} UTF-16 units",
                p.name
            )));
        }
        let image_size = p.image.as_ref().map(|i| i.size);
        if p.size > MAX_SIZE || image_size.is_some_and(|s| s > MAX_SIZE) {
            return Err(Error::InvalidOption(format!(
                "partition {} ('{}') is larger than {MAX_SIZE} bytes",
                i + 1,
                p.name
            )));
        }
        let size = match (p.size, image_size) {
            (0, Some(s)) if s > 0 => s.next_multiple_of(ALIGN),
            (0, _) => {
                return Err(Error::InvalidOption(format!(
                    "partition {} ('{}') has neither a size nor an image",
                    i + 1,
                    p.name
                )));
            }
            (s, _) => s.next_multiple_of(SECTOR),
        };
        if let Some(is) = image_size
            && is > size
        {
            return Err(Error::NoSpace {
                what: format!("the image of partition {} ('{}')", i + 1, p.name),
                needed: is,
                available: size,
            });
        }
        let start = cursor.next_multiple_of(ALIGN);
        cursor = start + size;
        if cursor > MAX_SIZE {
            return Err(Error::InvalidOption(format!(
                "the partitions end past {MAX_SIZE} bytes"
            )));
        }
        let first_lba = start / SECTOR;
        let sectors = size / SECTOR;
        layout.extend_from_slice(&p.kind.guid());
        layout.extend_from_slice(&first_lba.to_le_bytes());
        layout.extend_from_slice(&sectors.to_le_bytes());
        layout.extend_from_slice(&p.attributes.to_le_bytes());
        layout.extend_from_slice(p.name.as_bytes());
        layout.push(0);
        fields.push((
            p.kind.guid(),
            p.unique_guid,
            first_lba,
            sectors,
            p.attributes,
        ));
        names.push(name);
        placed.push(Placed {
            first_lba,
            sectors,
            image: p.image,
        });
    }
    let backup_bytes = (ARRAY_SECTORS + 1) * SECTOR;
    let size = match opts.size {
        Some(s) if s % SECTOR != 0 || s > MAX_SIZE => {
            return Err(Error::InvalidOption(format!(
                "disk size {s} is not a multiple of {SECTOR} bytes or is larger than {MAX_SIZE}"
            )));
        }
        Some(s) => {
            let needed = cursor + backup_bytes;
            if needed > s {
                return Err(Error::NoSpace {
                    what: "the partitions".into(),
                    needed,
                    available: s,
                });
            }
            s
        }
        None => (cursor + backup_bytes).next_multiple_of(ALIGN),
    };
    layout.extend_from_slice(&size.to_le_bytes());
    let disk_guid = opts
        .disk_guid
        .unwrap_or_else(|| guid::derive(&[b"disk\0".as_slice(), &layout].concat()));
    let entries: Vec<EntryFields> = fields
        .iter()
        .zip(&names)
        .enumerate()
        .map(
            |(i, (&(type_guid, unique, first_lba, sectors, attributes), name))| {
                let unique_guid = unique.unwrap_or_else(|| {
                    let mut d = b"part\0".to_vec();
                    d.extend_from_slice(&(i as u64).to_le_bytes());
                    d.extend_from_slice(&layout);
                    guid::derive(&d)
                });
                EntryFields {
                    type_guid,
                    unique_guid,
                    first_lba,
                    last_lba: first_lba + sectors - 1,
                    attributes,
                    name,
                }
            },
        )
        .collect();
    let array = header::entry_array(&entries);
    let entries_crc = crc32fast::hash(&array);
    let last = size / SECTOR - 1;
    let mut primary = HeaderFields {
        my_lba: 1,
        alternate_lba: last,
        first_usable: 2 + ARRAY_SECTORS,
        last_usable: last - ARRAY_SECTORS - 1,
        disk_guid,
        entries_lba: 2,
        entries_crc,
    };
    let mut head = Vec::with_capacity(((2 + ARRAY_SECTORS) * SECTOR) as usize);
    head.extend_from_slice(&header::protective_mbr(size / SECTOR));
    head.extend_from_slice(&header::header(&primary));
    head.extend_from_slice(&array);
    primary.my_lba = last;
    primary.alternate_lba = 1;
    primary.entries_lba = last - ARRAY_SECTORS;
    let mut tail = array;
    tail.extend_from_slice(&header::header(&primary));
    let tail_offset = (last - ARRAY_SECTORS) * SECTOR;

    let head = std::iter::once(Ok(Extent::Data {
        offset: 0,
        bytes: Bytes::from(head),
    }));
    let tail = std::iter::once(Ok(Extent::Data {
        offset: tail_offset,
        bytes: Bytes::from(tail),
    }));
    let body = placed.into_iter().flat_map(|p| {
        let base = p.first_lba * SECTOR;
        let limit = p.sectors * SECTOR;
        p.image.map(|img| Shifted {
            inner: img.extents,
            base,
            size: img.size.min(limit),
            next: 0,
            failed: false,
        })
    });
    Ok(Image {
        size,
        extents: Box::new(head.chain(body.flatten()).chain(tail)),
    })
}

/// A partition's extents moved to its offset, checked to stay in order and within its image.
struct Shifted<'a> {
    inner: Box<dyn Iterator<Item = Result<Extent>> + Send + 'a>,
    base: u64,
    size: u64,
    next: u64,
    failed: bool,
}

impl Iterator for Shifted<'_> {
    type Item = Result<Extent>;

    fn next(&mut self) -> Option<Result<Extent>> {
        if self.failed {
            return None;
        }
        let e = match self.inner.next()? {
            Ok(e) => e,
            Err(err) => {
                self.failed = true;
                return Some(Err(err));
            }
        };
        if e.offset() < self.next || e.end() > self.size {
            self.failed = true;
            return Some(Err(Error::InvalidOption(format!(
                "a partition image gave an extent at {}+{} out of order or past its {} bytes",
                e.offset(),
                e.len(),
                self.size
            ))));
        }
        self.next = e.end();
        Some(Ok(match e {
            Extent::Data { offset, bytes } => Extent::Data {
                offset: self.base + offset,
                bytes,
            },
            Extent::Zero { offset, len } => Extent::Zero {
                offset: self.base + offset,
                len,
            },
        }))
    }
}
