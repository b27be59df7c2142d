//! The header section: the file identifier, the two headers (the valid one with the higher
//! sequence number is current) and the region table that locates the BAT and the metadata.

use crate::file::ImageFile;
use crate::{Ctx, Result};

use super::layout::*;
use super::log::View;

/// One of the two VHDX headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Sequence number: the valid header with the higher one is current.
    pub sequence: u64,
    /// Changes before the first write to the file.
    pub file_write_guid: [u8; 16],
    /// Changes before the first write of guest-visible data.
    pub data_write_guid: [u8; 16],
    /// Non-zero when the log may hold entries to replay.
    pub log_guid: [u8; 16],
    /// Log format version (only 0 exists).
    pub log_version: u16,
    /// File format version (only 1 exists).
    pub version: u16,
    /// Length of the log in bytes (a multiple of 1 MiB).
    pub log_length: u32,
    /// File offset of the log (a multiple of 1 MiB).
    pub log_offset: u64,
}

impl Header {
    /// Parses a 4 KiB header block, or says why it is not a valid header.
    pub fn parse(buf: &[u8]) -> std::result::Result<Header, String> {
        if buf.len() < HEADER_SIZE {
            return Err("header block is short".into());
        }
        if &buf[..4] != HEADER_SIGNATURE {
            return Err(format!("signature is {:02x?}, not \"head\"", &buf[..4]));
        }
        let stored = le32(buf, 4);
        let computed = checksum(&buf[..HEADER_SIZE], 4);
        if stored != computed {
            return Err(format!(
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ));
        }
        let h = Header {
            sequence: le64(buf, 8),
            file_write_guid: guid_at(buf, 16),
            data_write_guid: guid_at(buf, 32),
            log_guid: guid_at(buf, 48),
            log_version: le16(buf, 64),
            version: le16(buf, 66),
            log_length: le32(buf, 68),
            log_offset: le64(buf, 72),
        };
        if h.version != 1 {
            return Err(format!("version is {}, only 1 exists", h.version));
        }
        Ok(h)
    }

    /// The header as its 4 KiB on-disk block, checksum included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        put(&mut b, 0, HEADER_SIGNATURE);
        put(&mut b, 8, &self.sequence.to_le_bytes());
        put(&mut b, 16, &self.file_write_guid);
        put(&mut b, 32, &self.data_write_guid);
        put(&mut b, 48, &self.log_guid);
        put(&mut b, 64, &self.log_version.to_le_bytes());
        put(&mut b, 66, &self.version.to_le_bytes());
        put(&mut b, 68, &self.log_length.to_le_bytes());
        put(&mut b, 72, &self.log_offset.to_le_bytes());
        seal(&mut b, 4);
        b
    }

    /// Returns true if and only if the header names a log that may hold entries.
    pub fn has_log(&self) -> bool {
        self.log_guid != [0; 16] && self.log_length != 0
    }
}

/// Checks the file signature at offset 0 and returns the creator string (diagnostic only).
pub fn read_file_identifier(file: &ImageFile, ctx: &Ctx) -> Result<String> {
    let mut b = vec![0u8; 8 + 512];
    file.read_exact_at(&mut b, FILE_ID_OFFSET, "VHDX file identifier")?;
    if &b[..8] != FILE_SIGNATURE {
        return Err(ctx.corrupt(
            "file identifier",
            FILE_ID_OFFSET,
            "signature is not \"vhdxfile\"",
        ));
    }
    let units: Vec<u16> = b[8..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    Ok(String::from_utf16_lossy(&units))
}

/// The file identifier block's first bytes: signature and `creator` in UTF-16.
pub fn file_identifier_bytes(creator: &str) -> Vec<u8> {
    let mut b = FILE_SIGNATURE.to_vec();
    for u in creator.encode_utf16().take(255) {
        b.extend_from_slice(&u.to_le_bytes());
    }
    b
}

/// Reads both headers and returns the current one with its offset, as qemu chooses: the only
/// valid one, or the valid one with the higher sequence number (equal numbers only if the two are
/// identical, as Disk2VHD writes them).
pub fn read_current_header(file: &ImageFile, ctx: &Ctx) -> Result<(Header, u64)> {
    let mut parsed = Vec::with_capacity(2);
    for off in [HEADER1_OFFSET, HEADER2_OFFSET] {
        let mut b = vec![0u8; HEADER_SIZE];
        file.read_exact_at(&mut b, off, "VHDX header")?;
        parsed.push((off, Header::parse(&b)));
    }
    let mut it = parsed.into_iter();
    let (Some((o1, h1)), Some((o2, h2))) = (it.next(), it.next()) else {
        return Err(ctx.corrupt("header", HEADER1_OFFSET, "no headers"));
    };
    match (h1, h2) {
        (Ok(a), Err(_)) => Ok((a, o1)),
        (Err(_), Ok(b)) => Ok((b, o2)),
        (Err(e1), Err(e2)) => Err(ctx.corrupt(
            "header",
            o1,
            format!("no valid VHDX header: header 1 at {o1:#x}: {e1}; header 2 at {o2:#x}: {e2}"),
        )),
        (Ok(a), Ok(b)) => {
            if a.sequence > b.sequence {
                Ok((a, o1))
            } else if b.sequence > a.sequence {
                Ok((b, o2))
            } else if a == b {
                Ok((a, o1))
            } else {
                Err(ctx.corrupt(
                    "header",
                    o2,
                    format!(
                        "both headers have sequence number {} but differ",
                        a.sequence
                    ),
                ))
            }
        }
    }
}

/// A region of the file named in the region table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Region {
    /// File offset (a multiple of 1 MiB).
    pub offset: u64,
    /// Length in bytes (a multiple of 1 MiB).
    pub length: u32,
}

impl Region {
    /// Where the region ends.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(u64::from(self.length))
    }
}

/// The two regions every VHDX has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionTable {
    /// The block allocation table.
    pub bat: Region,
    /// The metadata region.
    pub metadata: Region,
}

/// Reads and checks the region table at `off` (qemu reads only the first copy). `taken` holds
/// the ranges already known (header section, log) that no region may overlap.
pub fn read_region_table(
    file: &View,
    ctx: &Ctx,
    off: u64,
    taken: &mut Vec<(u64, u64, String)>,
) -> Result<RegionTable> {
    let mut b = vec![0u8; REGION_TABLE_SIZE];
    file.read_exact_at(&mut b, off, "VHDX region table")?;
    let what = "region table";
    if &b[..4] != REGION_SIGNATURE {
        return Err(ctx.corrupt(what, off, "signature is not \"regi\""));
    }
    let stored = le32(&b, 4);
    let computed = checksum(&b, 4);
    if stored != computed {
        return Err(ctx.corrupt(
            what,
            off,
            format!("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"),
        ));
    }
    let count = le32(&b, 8);
    if count > MAX_REGION_ENTRIES {
        return Err(ctx.corrupt(
            what,
            off + 8,
            format!("{count} entries, over the limit of {MAX_REGION_ENTRIES}"),
        ));
    }
    let mut bat = None;
    let mut metadata = None;
    for i in 0..count as usize {
        let e = 16 + i * 32;
        let eoff = off + e as u64;
        let id = guid_at(&b, e);
        let region = Region {
            offset: le64(&b, e + 16),
            length: le32(&b, e + 24),
        };
        let flags = le32(&b, e + 28);
        let name = if id == BAT_GUID {
            "BAT"
        } else if id == METADATA_GUID {
            "metadata region"
        } else {
            "region"
        };
        let end = region.offset.checked_add(u64::from(region.length));
        let Some(end) = end else {
            return Err(ctx.corrupt(what, eoff, format!("entry {i} ({name}) overflows")));
        };
        if region.length > 0 && end > file.len() {
            return Err(ctx.corrupt(
                what,
                eoff,
                format!(
                    "entry {i} ({name}) at {:#x}+{:#x} ends past the end of the file ({} bytes)",
                    region.offset,
                    region.length,
                    file.len()
                ),
            ));
        }
        if let Some((s, e2, other)) = taken
            .iter()
            .find(|(s, e2, _)| region.length > 0 && region.offset < *e2 && end > *s)
        {
            return Err(ctx.corrupt(
                what,
                eoff,
                format!(
                    "entry {i} ({name}) at {:#x}..{end:#x} overlaps the {other} at {s:#x}..{e2:#x}",
                    region.offset
                ),
            ));
        }
        taken.push((region.offset, end, name.to_string()));
        let slot = if id == BAT_GUID {
            &mut bat
        } else if id == METADATA_GUID {
            &mut metadata
        } else {
            if flags & REGION_REQUIRED != 0 {
                return Err(ctx.unsupported(format!(
                    "required region {} (region table entry {i} at {eoff:#x}) is unknown",
                    uuid::Uuid::from_bytes_le(id)
                )));
            }
            continue;
        };
        if slot.is_some() {
            return Err(ctx.corrupt(what, eoff, format!("entry {i}: a second {name}")));
        }
        *slot = Some(region);
    }
    match (bat, metadata) {
        (Some(bat), Some(metadata)) => Ok(RegionTable { bat, metadata }),
        (None, _) => Err(ctx.corrupt(what, off, "no BAT region")),
        (_, None) => Err(ctx.corrupt(what, off, "no metadata region")),
    }
}

/// The region table as its 64 KiB on-disk block, checksum included.
pub fn region_table_bytes(t: &RegionTable) -> Vec<u8> {
    let mut b = vec![0u8; REGION_TABLE_SIZE];
    put(&mut b, 0, REGION_SIGNATURE);
    put(&mut b, 8, &2u32.to_le_bytes());
    for (i, (id, r)) in [(BAT_GUID, t.bat), (METADATA_GUID, t.metadata)]
        .into_iter()
        .enumerate()
    {
        let e = 16 + i * 32;
        put(&mut b, e, &id);
        put(&mut b, e + 16, &r.offset.to_le_bytes());
        put(&mut b, e + 24, &r.length.to_le_bytes());
        put(&mut b, e + 28, &REGION_REQUIRED.to_le_bytes());
    }
    seal(&mut b, 4);
    b
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            sequence: 7,
            file_write_guid: [1; 16],
            data_write_guid: [2; 16],
            log_guid: [0; 16],
            log_version: 0,
            version: 1,
            log_length: MIB as u32,
            log_offset: MIB,
        }
    }

    #[test]
    fn header_round_trips_and_refuses_a_bad_checksum() {
        let h = sample();
        let mut b = h.to_bytes();
        assert_eq!(Header::parse(&b).unwrap(), h);
        b[100] ^= 1;
        let e = Header::parse(&b).unwrap_err();
        assert!(e.contains("checksum"), "{e}");
        assert!(Header::parse(&b[..10]).is_err());
    }

    #[test]
    fn header_refuses_other_versions() {
        let mut h = sample();
        h.version = 2;
        assert!(
            Header::parse(&h.to_bytes())
                .unwrap_err()
                .contains("version")
        );
    }
}
