//! Reading VHD images: fixed (the disk followed by a footer), dynamic (blocks through a block
//! allocation table) and differencing (a dynamic disk over a parent, sector by sector).

use std::ops::Range;

use super::footer::{self, DiskType, FOOTER_LEN, Footer, MAX_SECTORS};
use super::header::{self, DynamicHeader, HEADER_LEN};
use super::parent::{MAX_LOCATOR_LEN, Parent, ParentName, decode_header_name, decode_locator};
use crate::convert::merge_ranges;
use crate::file::ImageFile;
use crate::mapping::FileData;
use crate::{CheckReport, Ctx, DiskReader, Format, ImageInfo, Result};

/// Largest block allocation table: `INT_MAX / 4` entries, the same limit as qemu.
pub const MAX_BAT_ENTRIES: u32 = (i32::MAX / 4) as u32;

/// A BAT entry for a block that is not allocated.
const UNALLOCATED: u32 = 0xffff_ffff;

/// Where the footer in use was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FooterAt {
    /// The copy at offset 0 of a dynamic or differencing disk.
    Start,
    /// The last 512 bytes.
    End,
    /// The last 511 bytes (old Virtual PC).
    End511,
}

/// The block structure of a dynamic or differencing disk.
#[derive(Debug)]
struct Blocks {
    header: DynamicHeader,
    header_offset: u64,
    /// The BAT: sector numbers of each block's bitmap, [`UNALLOCATED`] for none.
    bat: Vec<u32>,
    block_size: u64,
    bitmap_size: u64,
}

impl Blocks {
    /// File offset of block `idx`'s sector bitmap, if the block is allocated.
    fn bitmap_offset(&self, idx: u64) -> Option<u64> {
        let e = *self.bat.get(usize::try_from(idx).ok()?)?;
        (e != UNALLOCATED).then(|| u64::from(e) * 512)
    }
}

/// A VHD image opened for reading.
#[derive(Debug)]
pub struct VhdReader {
    file: ImageFile,
    ctx: Ctx,
    footer: Footer,
    footer_raw: [u8; FOOTER_LEN],
    footer_at: FooterAt,
    disk_type: DiskType,
    size: u64,
    /// Bytes of disk data before the footer (fixed disks).
    data_len: u64,
    blocks: Option<Blocks>,
    parent: Option<Parent>,
    /// Decoded parent locators, (platform, text), for info.
    locators: Vec<(String, String)>,
}

impl VhdReader {
    /// Opens a VHD whose chain depth is `depth` (0 for the image the user named). A differencing
    /// disk's parent is opened on first read, so describing one works without its parent.
    pub fn open(file: ImageFile, depth: u32) -> Result<Self> {
        let ctx = Ctx::new(file.path(), Format::Vhd);
        let len = file.len();
        if len < 511 {
            return Err(ctx.corrupt(
                "footer",
                0,
                format!("file is {len} bytes, too small for a VHD footer (512 bytes)"),
            ));
        }
        let (footer_raw, footer_at, footer_offset) = find_footer(&file, &ctx)?;
        if !Footer::checksum_ok(&footer_raw) {
            return Err(ctx.corrupt(
                "footer",
                footer_offset + footer::CHECKSUM_OFFSET,
                format!(
                    "incorrect footer checksum: stored {:#010x}, computed {:#010x}",
                    footer::be32(&footer_raw, footer::CHECKSUM_OFFSET as usize),
                    footer::checksum(&footer_raw, footer::CHECKSUM_OFFSET as usize)
                ),
            ));
        }
        let footer = Footer::parse(&footer_raw)
            .ok_or_else(|| ctx.corrupt("footer", footer_offset, "missing 'conectix' cookie"))?;
        let disk_type = DiskType::from_code(footer.disk_type).ok_or_else(|| {
            ctx.corrupt(
                "footer",
                footer_offset + 60,
                format!(
                    "disk type {} is not fixed (2), dynamic (3) or differencing (4)",
                    footer.disk_type
                ),
            )
        })?;
        let sectors = footer.virtual_sectors();
        if sectors > MAX_SECTORS {
            return Err(ctx.unsupported(format!(
                "disk of {} bytes is over the 2040 GiB VHD limit",
                sectors.saturating_mul(512)
            )));
        }
        let size = sectors * 512;
        let mut r = VhdReader {
            data_len: if footer_at == FooterAt::Start {
                0
            } else {
                footer_offset
            },
            file,
            ctx,
            footer,
            footer_raw,
            footer_at,
            disk_type,
            size,
            blocks: None,
            parent: None,
            locators: Vec::new(),
        };
        if disk_type != DiskType::Fixed {
            r.open_blocks(depth)?;
        } else if footer_at == FooterAt::Start {
            return Err(r.ctx.corrupt(
                "footer",
                0,
                "fixed disk has a footer at the start of the file but none at the end",
            ));
        }
        Ok(r)
    }

    /// Reads the dynamic disk header, the BAT and, for a differencing disk, the parent's names.
    fn open_blocks(&mut self, depth: u32) -> Result<()> {
        let ctx = &self.ctx;
        let len = self.file.len();
        let hoff = self.footer.data_offset;
        if hoff.checked_add(HEADER_LEN as u64).is_none_or(|e| e > len) {
            return Err(ctx.corrupt(
                "footer",
                16,
                format!(
                    "dynamic disk header offset {hoff:#x} is past the end of the file ({len} bytes)"
                ),
            ));
        }
        let mut raw = vec![0u8; HEADER_LEN];
        self.file
            .read_exact_at(&mut raw, hoff, "dynamic disk header")?;
        let h = DynamicHeader::parse(&raw).ok_or_else(|| {
            ctx.corrupt(
                "dynamic disk header",
                hoff,
                "invalid header magic (expected 'cxsparse')",
            )
        })?;
        if !DynamicHeader::checksum_ok(&raw) {
            return Err(ctx.corrupt(
                "dynamic disk header",
                hoff + header::CHECKSUM_OFFSET,
                format!(
                    "incorrect header checksum: stored {:#010x}, computed {:#010x}",
                    h.checksum,
                    footer::checksum(&raw, header::CHECKSUM_OFFSET as usize)
                ),
            ));
        }
        let bs = u64::from(h.block_size);
        if !h.block_size.is_power_of_two() || h.block_size < 512 {
            return Err(ctx.corrupt(
                "dynamic disk header",
                hoff + header::BLOCK_SIZE_OFFSET,
                format!(
                    "invalid block size {} (must be a power of two of at least 512)",
                    h.block_size
                ),
            ));
        }
        let bitmap_size = (bs / (8 * 512)).div_ceil(512) * 512;
        let entries = h.max_table_entries;
        if entries > MAX_BAT_ENTRIES {
            return Err(ctx.corrupt(
                "dynamic disk header",
                hoff + header::MAX_TABLE_ENTRIES_OFFSET,
                format!("{entries} BAT entries is over the limit of {MAX_BAT_ENTRIES}"),
            ));
        }
        if u64::from(entries) * bs < self.size {
            return Err(ctx.corrupt(
                "dynamic disk header",
                hoff + header::MAX_TABLE_ENTRIES_OFFSET,
                format!(
                    "BAT of {entries} blocks of {bs} bytes is too small for a disk of {} bytes",
                    self.size
                ),
            ));
        }
        let toff = h.table_offset;
        let tlen = u64::from(entries) * 4;
        if toff.checked_add(tlen).is_none_or(|e| e > len) {
            return Err(ctx.corrupt(
                "BAT",
                toff,
                format!("table of {entries} entries ends past the end of the file ({len} bytes)"),
            ));
        }
        let raw_bat = self.file.read_vec(
            toff,
            tlen,
            u64::from(MAX_BAT_ENTRIES) * 4,
            "block allocation table",
        )?;
        let bat: Vec<u32> = raw_bat
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        for (i, e) in bat.iter().enumerate() {
            if *e == UNALLOCATED {
                continue;
            }
            let start = u64::from(*e) * 512;
            let end = start + bitmap_size + bs;
            if end > len {
                return Err(ctx.corrupt(
                    "BAT",
                    toff + 4 * i as u64,
                    format!(
                        "entry {i} points to a block at {start:#x} that ends at {end:#x}, past the end of the file ({len} bytes): the image is truncated"
                    ),
                ));
            }
        }
        if self.disk_type == DiskType::Differencing {
            let mut names = Vec::new();
            for (i, l) in h.locators.iter().enumerate() {
                let at = hoff + 576 + 24 * i as u64;
                if l.data_length > MAX_LOCATOR_LEN {
                    return Err(ctx.corrupt(
                        "parent locator",
                        at,
                        format!(
                            "{} locator is {} bytes, over the limit of {MAX_LOCATOR_LEN}",
                            l.platform_name(),
                            l.data_length
                        ),
                    ));
                }
                if l.data_offset
                    .checked_add(u64::from(l.data_length))
                    .is_none_or(|e| e > len)
                {
                    return Err(ctx.corrupt(
                        "parent locator",
                        at,
                        format!(
                            "{} locator data at {:#x} ({} bytes) is past the end of the file ({len} bytes)",
                            l.platform_name(),
                            l.data_offset,
                            l.data_length
                        ),
                    ));
                }
                let data = self.file.read_vec(
                    l.data_offset,
                    u64::from(l.data_length),
                    u64::from(MAX_LOCATOR_LEN),
                    "parent locator",
                )?;
                if let Some(text) = decode_locator(&l.platform, &data) {
                    self.locators.push((l.platform_name(), text.clone()));
                    names.push(ParentName {
                        source: l.platform_name(),
                        text,
                    });
                }
            }
            // Relative locators first: they still work when the images were moved together.
            names.sort_by_key(|n| match n.source.as_str() {
                "W2ru" => 0,
                "W2ku" => 1,
                _ => 2,
            });
            let hname = decode_header_name(&raw[64..576]);
            if !hname.is_empty() {
                names.push(ParentName {
                    source: "name".into(),
                    text: hname,
                });
            }
            if names.is_empty() {
                return Err(ctx.corrupt(
                    "dynamic disk header",
                    hoff + 64,
                    "differencing disk records no parent name nor parent locator",
                ));
            }
            self.parent = Some(Parent::new(self.file.path(), names, h.parent_uuid, depth));
        }
        self.blocks = Some(Blocks {
            header: h,
            header_offset: hoff,
            bat,
            block_size: bs,
            bitmap_size,
        });
        Ok(())
    }

    /// Reads from the parent, zeros past its end. Only differencing disks have one.
    fn read_parent(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(parent) = &self.parent else {
            buf.fill(0);
            return Ok(());
        };
        let p = parent.get()?;
        let avail = p
            .virtual_size()
            .saturating_sub(offset)
            .min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(avail);
        if !head.is_empty() {
            p.read_at(head, offset)?;
        }
        tail.fill(0);
        Ok(())
    }

    /// Reads `buf` at disk `offset`, all within block `idx` of a differencing disk whose bitmap is
    /// at `bitmap_off`: sectors whose bitmap bit is set come from this file, the others from the
    /// parent.
    fn read_differencing(
        &self,
        b: &Blocks,
        buf: &mut [u8],
        offset: u64,
        bitmap_off: u64,
    ) -> Result<()> {
        let inb = offset % b.block_size;
        let block_start = offset - inb;
        let n = buf.len() as u64;
        let first_sector = inb / 512;
        let last_sector = (inb + n - 1) / 512;
        let first_byte = first_sector / 8;
        let mut bitmap = vec![0u8; (last_sector / 8 - first_byte + 1) as usize];
        self.file
            .read_exact_at(&mut bitmap, bitmap_off + first_byte, "sector bitmap")?;
        let bit = |sector: u64| -> bool {
            bitmap
                .get((sector / 8 - first_byte) as usize)
                .is_some_and(|byte| byte & (0x80 >> (sector % 8)) != 0)
        };
        let data_off = bitmap_off + b.bitmap_size;
        let mut pos = inb;
        while pos < inb + n {
            let present = bit(pos / 512);
            let mut end = (pos / 512 + 1) * 512;
            while end < inb + n && bit(end / 512) == present {
                end += 512;
            }
            let end = end.min(inb + n);
            let piece = &mut buf[(pos - inb) as usize..(end - inb) as usize];
            if present {
                self.file
                    .read_exact_at(piece, data_off + pos, "data block")?;
            } else {
                self.read_parent(piece, block_start + pos)?;
            }
            pos = end;
        }
        Ok(())
    }

    /// The parent, if this is a differencing disk.
    pub fn parent(&self) -> Option<&Parent> {
        self.parent.as_ref()
    }
}

/// Finds the footer: a fixed disk's footer at the end (so a fixed disk whose data starts like a
/// VHD is still read as fixed), else the copy at offset 0 of a dynamic disk, else the last 512
/// bytes, else the last 511 (old Virtual PC). Returns (footer bytes padded to 512, where, file
/// offset).
fn find_footer(file: &ImageFile, ctx: &Ctx) -> Result<([u8; FOOTER_LEN], FooterAt, u64)> {
    let len = file.len();
    let is_footer = |b: &[u8]| b.starts_with(footer::COOKIE);
    let fixed = |b: &[u8]| footer::be32(b, 60) == DiskType::Fixed.code();
    let mut head = [0u8; FOOTER_LEN];
    let mut tail = [0u8; FOOTER_LEN];
    if len < FOOTER_LEN as u64 {
        let mut f = [0u8; FOOTER_LEN];
        file.read_exact_at(&mut f[..FOOTER_LEN - 1], 0, "footer")?;
        if is_footer(&f) {
            return Ok((f, FooterAt::End511, 0));
        }
    } else {
        let at = len - FOOTER_LEN as u64;
        file.read_exact_at(&mut head, 0, "footer copy")?;
        file.read_exact_at(&mut tail, at, "footer")?;
        if is_footer(&tail) && fixed(&tail) && Footer::checksum_ok(&tail) {
            return Ok((tail, FooterAt::End, at));
        }
        if is_footer(&head) && !fixed(&head) {
            return Ok((head, FooterAt::Start, 0));
        }
        if is_footer(&tail) {
            return Ok((tail, FooterAt::End, at));
        }
        if is_footer(&tail[1..]) {
            let mut f = [0u8; FOOTER_LEN];
            f[..FOOTER_LEN - 1].copy_from_slice(&tail[1..]);
            return Ok((f, FooterAt::End511, at + 1));
        }
        if is_footer(&head) {
            return Ok((head, FooterAt::Start, 0));
        }
    }
    Err(ctx.corrupt(
        "footer",
        len.saturating_sub(FOOTER_LEN as u64),
        "no VHD footer ('conectix') at the start or the end of the file",
    ))
}

impl DiskReader for VhdReader {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::error::check_read(self.file.path(), offset, buf.len(), self.size)?;
        let Some(b) = &self.blocks else {
            let avail = self.data_len.saturating_sub(offset).min(buf.len() as u64) as usize;
            let (head, tail) = buf.split_at_mut(avail);
            if !head.is_empty() {
                self.file.read_exact_at(head, offset, "disk data")?;
            }
            tail.fill(0);
            return Ok(());
        };
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let idx = pos / b.block_size;
            let inb = pos % b.block_size;
            let n = ((b.block_size - inb) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            match b.bitmap_offset(idx) {
                None => self.read_parent(chunk, pos)?,
                Some(bm) if self.parent.is_some() => self.read_differencing(b, chunk, pos, bm)?,
                // Like qemu, a dynamic disk's allocated block is read whole (its bitmap is not
                // consulted: writers set every bit).
                Some(bm) => {
                    self.file
                        .read_exact_at(chunk, bm + b.bitmap_size + inb, "data block")?
                }
            }
            done += n;
        }
        Ok(())
    }

    fn allocation(&self) -> Result<Vec<Range<u64>>> {
        let data = FileData::of(&self.file);
        let mut out = Vec::new();
        match &self.blocks {
            None => data.map(0, 0, self.size.min(self.data_len), &mut out),
            Some(b) => {
                for (i, e) in b.bat.iter().enumerate() {
                    let v = i as u64 * b.block_size;
                    if *e == UNALLOCATED || v >= self.size {
                        continue;
                    }
                    let len = b.block_size.min(self.size - v);
                    data.map(v, u64::from(*e) * 512 + b.bitmap_size, len, &mut out);
                }
                if let Some(p) = &self.parent {
                    let p = p.get()?;
                    out.extend(crate::convert::clip_ranges(p.allocation()?, self.size));
                }
            }
        }
        Ok(merge_ranges(out))
    }

    fn info(&self) -> ImageInfo {
        let f = &self.footer;
        let text = |b: &[u8; 4]| {
            String::from_utf8_lossy(b)
                .trim_end_matches(['\0', ' '])
                .to_string()
        };
        let mut i = ImageInfo::new(self.file.path(), Format::Vhd, self.size)
            .detail("creator_app", text(&f.creator_app))
            .detail(
                "creator_version",
                format!("{}.{}", f.creator_version >> 16, f.creator_version & 0xffff),
            )
            .detail("creator_os", text(&f.creator_os))
            .detail("disk_type", self.disk_type.name())
            .detail("uuid", uuid::Uuid::from_bytes(f.uuid))
            .detail("timestamp", u64::from(f.timestamp) + footer::VHD_EPOCH)
            .detail(
                "geometry",
                format!("{}/{}/{}", f.cylinders, f.heads, f.sectors),
            )
            .detail("current_size", f.current_size)
            .detail("original_size", f.original_size)
            .detail(
                "size_from",
                if f.sized_by_geometry() {
                    "geometry"
                } else {
                    "current_size"
                },
            )
            .detail(
                "footer",
                match self.footer_at {
                    FooterAt::Start => "start and end",
                    FooterAt::End => "end",
                    FooterAt::End511 => "end (511 bytes, Virtual PC)",
                },
            );
        i.subformat = Some(self.disk_type.name().to_string());
        i.actual_size = self.file.allocated_bytes();
        if let Some(b) = &self.blocks {
            i.cluster_size = Some(b.block_size);
            i = i
                .detail("block_size", b.block_size)
                .detail("bat_entries", b.bat.len())
                .detail(
                    "allocated_blocks",
                    b.bat.iter().filter(|e| **e != UNALLOCATED).count(),
                );
        }
        if let (Some(p), Some(b)) = (&self.parent, &self.blocks) {
            i.backing_file = p.recorded().map(str::to_string);
            i = i
                .detail("parent_uuid", uuid::Uuid::from_bytes(b.header.parent_uuid))
                .detail(
                    "parent_locators",
                    self.locators
                        .iter()
                        .map(|(p, t)| format!("{p}={t}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
            if let Some(n) = p.names.iter().find(|n| n.source == "name") {
                i = i.detail("parent_name", &n.text);
            }
            if let Ok(r) = p.get() {
                i.backing_chain = vec![r.info()];
            }
        }
        i
    }

    fn check(&self) -> Result<CheckReport> {
        let mut rep = CheckReport::default();
        let len = self.file.len();
        let Some(b) = &self.blocks else {
            if self.data_len < self.size {
                rep.corruptions.push(format!(
                    "footer: fixed disk of {} bytes holds only {} bytes of data: the file is truncated",
                    self.size, self.data_len
                ));
            }
            return Ok(rep);
        };
        // The footer at the end must match the copy at the start.
        let mut tail = [0u8; FOOTER_LEN];
        if len >= 2 * FOOTER_LEN as u64 {
            self.file
                .read_exact_at(&mut tail, len - FOOTER_LEN as u64, "footer")?;
        }
        if tail != self.footer_raw {
            rep.corruptions.push(format!(
                "footer at {:#x} does not match the copy at offset 0",
                len.saturating_sub(FOOTER_LEN as u64)
            ));
        }
        // Every block must lie clear of the metadata and of every other block.
        let mut used: Vec<(u64, u64, String)> = vec![
            (0, FOOTER_LEN as u64, "footer copy".into()),
            (
                b.header_offset,
                b.header_offset + HEADER_LEN as u64,
                "dynamic disk header".into(),
            ),
            (
                b.header.table_offset,
                b.header.table_offset + 4 * b.bat.len() as u64,
                "BAT".into(),
            ),
        ];
        for l in &b.header.locators {
            if l.data_length > 0 {
                used.push((
                    l.data_offset,
                    l.data_offset.saturating_add(u64::from(l.data_length)),
                    format!("{} parent locator", l.platform_name()),
                ));
            }
        }
        used.push((len.saturating_sub(FOOTER_LEN as u64), len, "footer".into()));
        for (i, e) in b.bat.iter().enumerate() {
            if *e != UNALLOCATED {
                rep.allocated_clusters += 1;
                let s = u64::from(*e) * 512;
                used.push((s, s + b.bitmap_size + b.block_size, format!("block {i}")));
            }
        }
        used.sort();
        let mut reach: Option<(u64, &str)> = None;
        for (s, e, what) in &used {
            if let Some((end, prev)) = reach {
                if *s < end && (what.starts_with("block") || prev.starts_with("block")) {
                    rep.corruptions.push(format!(
                        "{what} at {s:#x} overlaps {prev} (which ends at {end:#x})"
                    ));
                }
            }
            if reach.is_none_or(|(end, _)| *e > end) {
                reach = Some((*e, what));
            }
        }
        rep.total_clusters = self.size.div_ceil(b.block_size);
        Ok(rep)
    }
}
