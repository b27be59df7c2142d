//! Sparse extents: hosted sparse (`KDMV`: monolithicSparse, twoGbMaxExtentSparse,
//! streamOptimized) and ESX snapshot deltas (`COWD`: vmfsSparse). A grain directory points to
//! grain tables, whose entries point to grains (compressed with markers in stream-optimized
//! extents).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::header::{
    COWD_MAGIC, CowdHeader, FLAG_MARKER, FLAG_ZERO_GRAIN, GD_AT_END, GRAIN_MARKER_LEN, GTE_ZEROED,
    KDMV_MAGIC, MARKER_EOS, MARKER_FOOTER, Marker, SECTOR, SparseHeader, parse_grain_marker,
};
use crate::compress::{Codec, decompress_into};
use crate::file::ImageFile;
use crate::{Ctx, Format, Result};

/// Most grain table entries in a hosted sparse extent's grain table (qemu refuses more: "L2
/// table size too big").
pub const MAX_GTES_PER_GT: u32 = 512;

/// Entries per grain table of a `COWD` extent (fixed by the format).
pub const COWD_GTES_PER_GT: u32 = 4096;

/// Largest grain in sectors (qemu's limit: a grain over 1 GiB means a corrupt header).
pub const MAX_GRAIN_SECTORS: u64 = 0x20_0000;

/// Largest compressed grain in bytes: every producer uses 64 KiB grains; this bounds the buffers
/// a read allocates for a stream-optimized extent.
pub const MAX_COMPRESSED_GRAIN: u64 = 16 << 20;

/// Most grain directory entries (qemu's limit, "L1 size too big").
pub const MAX_GD_ENTRIES: u64 = 32 << 20;

/// Most grain tables kept in the read cache (2 KiB each for hosted extents: 8 MiB).
const MAX_CACHED_GTS: usize = 4096;

/// Most bytes read at once for a run of compressed grains.
const MAX_COMPRESSED_RUN: u64 = 32 << 20;

thread_local! {
    /// A libdeflate decompressor per thread (it holds about 8 KiB of tables).
    static INFLATER: std::cell::RefCell<libdeflater::Decompressor> =
        std::cell::RefCell::new(libdeflater::Decompressor::new());
}

/// Decompresses a zlib grain into exactly `dst`: libdeflate (about twice as fast as zlib) for a
/// stream that fills `dst` exactly, otherwise the shared path, which also accepts trailing bytes
/// and grains that decompress past `dst` and explains what is wrong.
fn inflate(data: &[u8], dst: &mut [u8]) -> Result<(), String> {
    let fast = INFLATER.with(|d| d.borrow_mut().zlib_decompress(data, dst));
    match fast {
        Ok(n) if n == dst.len() => Ok(()),
        _ => decompress_into(Codec::Zlib, data, dst),
    }
}

/// What a grain table entry says about a grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// Not allocated: reads from the parent, or zeros.
    Unallocated,
    /// Explicitly zero (zeroed-grain entry).
    Zero,
    /// Data at this byte offset of the extent file.
    Data(u64),
}

/// Which sparse format the extent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SparseKind {
    /// Hosted sparse (`KDMV`) with its effective header (the footer's, for a grain directory at
    /// the end).
    Hosted(SparseHeader),
    /// ESX snapshot delta (`COWD`).
    Cowd(CowdHeader),
}

/// An open sparse extent.
#[derive(Debug)]
pub struct SparseExtent {
    file: ImageFile,
    ctx: Ctx,
    /// The effective header.
    pub kind: SparseKind,
    /// Extent size in bytes.
    pub capacity: u64,
    /// Grain size in bytes.
    pub grain: u64,
    gtes_per_gt: u32,
    gd_offset: u64,
    gd: Vec<u32>,
    /// Bytes of header/descriptor before data may start.
    metadata_end: u64,
    compressed: bool,
    markers: bool,
    zero_grain: bool,
    cache: Mutex<HashMap<u32, Arc<Vec<u32>>>>,
}

/// A piece of a read that falls in one grain.
struct Piece {
    grain: Grain,
    /// Offset of the piece in the extent.
    ext_off: u64,
    /// Offset of the piece within its grain.
    in_grain: u64,
    /// Index of the grain in the extent.
    index: u64,
    len: usize,
}

impl SparseExtent {
    /// Opens the sparse extent in `file` (either magic). Also returns the embedded descriptor's
    /// bytes, if the header points to one.
    pub fn open(file: ImageFile) -> Result<(SparseExtent, Option<Vec<u8>>)> {
        let ctx = Ctx::new(file.path(), Format::Vmdk);
        if file.len() < SECTOR {
            return Err(ctx.corrupt(
                "sparse extent header",
                0,
                format!("file is {} bytes, shorter than a header", file.len()),
            ));
        }
        let mut first = [0u8; 512];
        file.read_exact_at(&mut first, 0, "sparse extent header")?;
        if &first[0..4] == COWD_MAGIC {
            return Self::open_cowd(file, ctx, &first).map(|e| (e, None));
        }
        if &first[0..4] != KDMV_MAGIC {
            return Err(ctx.corrupt(
                "sparse extent header",
                0,
                "no KDMV or COWD magic: not a sparse extent",
            ));
        }
        let mut h = SparseHeader::parse(&first)
            .ok_or_else(|| ctx.corrupt("sparse extent header", 0, "unreadable header"))?;
        // Like qemu, the embedded descriptor only gives settings: one that cannot be read is
        // ignored.
        let desc = Self::embedded_descriptor(&file, &h);
        // Where the header in effect is: the footer's takes precedence when the directory is at
        // the end.
        let mut at = 0;
        if h.gd_offset == GD_AT_END {
            (h, at) = Self::read_footer(&file, &ctx)?;
        }
        let hdr = if at == 0 {
            "sparse extent header"
        } else {
            "footer"
        };
        if h.version > 3 {
            return Err(ctx.unsupported(format!("sparse extent version {}", h.version)));
        }
        if h.num_gtes_per_gt > MAX_GTES_PER_GT {
            return Err(ctx.corrupt(
                hdr,
                at + 44,
                format!(
                    "L2 table size too big: {} grain table entries (at most {MAX_GTES_PER_GT})",
                    h.num_gtes_per_gt
                ),
            ));
        }
        if h.num_gtes_per_gt == 0 {
            return Err(ctx.corrupt(hdr, at + 44, "0 grain table entries"));
        }
        if h.granularity == 0 || h.granularity > MAX_GRAIN_SECTORS {
            return Err(ctx.corrupt(
                hdr,
                at + 20,
                format!(
                    "invalid grain size of {} sectors (1 to {MAX_GRAIN_SECTORS})",
                    h.granularity
                ),
            ));
        }
        let compressed = h.compressed();
        if h.compress_algorithm > 1 {
            return Err(ctx.unsupported(format!(
                "grain compression algorithm {}",
                h.compress_algorithm
            )));
        }
        let grain = h.granularity * SECTOR;
        if compressed && grain > MAX_COMPRESSED_GRAIN {
            return Err(ctx.corrupt(
                hdr,
                at + 20,
                format!("compressed grains of {grain} bytes (at most {MAX_COMPRESSED_GRAIN})"),
            ));
        }
        let file_sectors = file.len() / SECTOR;
        if file_sectors < h.grain_offset {
            return Err(ctx.corrupt(
                hdr,
                at + 64,
                format!(
                    "file truncated: grains start at {:#x} but the file is {} bytes",
                    h.grain_offset.saturating_mul(SECTOR),
                    file.len()
                ),
            ));
        }
        let capacity = h.capacity.checked_mul(SECTOR).ok_or_else(|| {
            ctx.corrupt(
                hdr,
                at + 12,
                format!("capacity {} sectors overflows", h.capacity),
            )
        })?;
        let gd_offset = h.gd_offset.checked_mul(SECTOR).ok_or_else(|| {
            ctx.corrupt(
                hdr,
                at + 56,
                format!("grain directory sector {:#x} overflows", h.gd_offset),
            )
        })?;
        let metadata_end = (h.grain_offset * SECTOR).max(SECTOR);
        let ext = Self::finish_open(
            file,
            ctx,
            SparseKind::Hosted(h.clone()),
            capacity,
            grain,
            h.num_gtes_per_gt,
            gd_offset,
            metadata_end,
            compressed,
            h.flags & FLAG_MARKER != 0,
            h.flags & FLAG_ZERO_GRAIN != 0,
        )?;
        Ok((ext, desc))
    }

    fn open_cowd(file: ImageFile, ctx: Ctx, first: &[u8]) -> Result<SparseExtent> {
        let h = CowdHeader::parse(first)
            .ok_or_else(|| ctx.corrupt("COWD header", 0, "unreadable header"))?;
        let gran = u64::from(h.granularity);
        if gran == 0 || gran > MAX_GRAIN_SECTORS {
            return Err(ctx.corrupt(
                "COWD header",
                16,
                format!("invalid grain size of {gran} sectors (1 to {MAX_GRAIN_SECTORS})"),
            ));
        }
        let capacity = u64::from(h.disk_sectors) * SECTOR;
        let gd_offset = u64::from(h.gd_offset) * SECTOR;
        let mut ext = Self::finish_open(
            file,
            ctx,
            SparseKind::Cowd(h.clone()),
            capacity,
            gran * SECTOR,
            COWD_GTES_PER_GT,
            gd_offset,
            SECTOR,
            false,
            false,
            false,
        )?;
        // COWD gives the directory size explicitly; it must cover the disk.
        if u64::from(h.gd_entries) < ext.gd.len() as u64 {
            return Err(ext.ctx.corrupt(
                "COWD header",
                24,
                format!(
                    "grain directory has {} entries, the disk needs {}",
                    h.gd_entries,
                    ext.gd.len()
                ),
            ));
        }
        ext.metadata_end = SECTOR;
        Ok(ext)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_open(
        file: ImageFile,
        ctx: Ctx,
        kind: SparseKind,
        capacity: u64,
        grain: u64,
        gtes_per_gt: u32,
        gd_offset: u64,
        metadata_end: u64,
        compressed: bool,
        markers: bool,
        zero_grain: bool,
    ) -> Result<SparseExtent> {
        let span = grain * u64::from(gtes_per_gt);
        let gd_entries = capacity.div_ceil(span);
        if gd_entries > MAX_GD_ENTRIES {
            return Err(ctx.corrupt(
                "grain directory",
                gd_offset,
                format!("L1 size too big: {gd_entries} entries (at most {MAX_GD_ENTRIES})"),
            ));
        }
        let gd_len = gd_entries * 4;
        let mut gd = Vec::new();
        if gd_entries > 0 {
            if gd_offset == 0
                || gd_offset
                    .checked_add(gd_len)
                    .is_none_or(|end| end > file.len())
            {
                return Err(ctx.corrupt(
                    "grain directory",
                    gd_offset,
                    format!(
                        "{gd_entries} entries at {gd_offset:#x} do not lie within the file ({} bytes)",
                        file.len()
                    ),
                ));
            }
            let raw = file.read_vec(gd_offset, gd_len, MAX_GD_ENTRIES * 4, "grain directory")?;
            gd = raw
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
        }
        let gt_len = u64::from(gtes_per_gt) * 4;
        for (i, &e) in gd.iter().enumerate() {
            if e == 0 {
                continue;
            }
            let off = u64::from(e) * SECTOR;
            if off + gt_len > file.len() {
                return Err(ctx.corrupt(
                    "grain directory",
                    gd_offset + i as u64 * 4,
                    format!(
                        "entry {i} points to a grain table at {off:#x}, past the end of the file ({} bytes)",
                        file.len()
                    ),
                ));
            }
        }
        Ok(SparseExtent {
            file,
            ctx,
            kind,
            capacity,
            grain,
            gtes_per_gt,
            gd_offset,
            gd,
            metadata_end,
            compressed,
            markers,
            zero_grain,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Reads the embedded descriptor the header points to, if any and if it lies in the file.
    fn embedded_descriptor(file: &ImageFile, h: &SparseHeader) -> Option<Vec<u8>> {
        if h.desc_offset == 0 || h.desc_size == 0 {
            return None;
        }
        let off = h.desc_offset.checked_mul(SECTOR)?;
        let len = h.desc_size.checked_mul(SECTOR)?;
        // Like qemu, read at most 1 MiB and no further than the end of the file.
        let len = len
            .min(super::descriptor::MAX_DESCRIPTOR_LEN)
            .min(file.len().saturating_sub(off));
        if len == 0 {
            return None;
        }
        file.read_vec(
            off,
            len,
            super::descriptor::MAX_DESCRIPTOR_LEN,
            "embedded descriptor",
        )
        .ok()
    }

    /// Reads the footer of a stream-optimized extent whose grain directory is at the end: footer
    /// marker, footer (a header), end-of-stream marker, in the last three sectors.
    fn read_footer(file: &ImageFile, ctx: &Ctx) -> Result<(SparseHeader, u64)> {
        let len = file.len() / SECTOR * SECTOR;
        if len < 4 * SECTOR {
            return Err(ctx.corrupt("footer", 0, "invalid footer: the file is too short for one"));
        }
        let off = len - 3 * SECTOR;
        let mut b = vec![0u8; 3 * SECTOR as usize];
        file.read_exact_at(&mut b, off, "footer")?;
        let fm = Marker::parse(&b).filter(|m| m.size == 0 && m.kind == MARKER_FOOTER);
        let eos = Marker::parse(&b[1024..])
            .filter(|m| m.num_sectors == 0 && m.size == 0 && m.kind == MARKER_EOS);
        let h = SparseHeader::parse(&b[512..]);
        match (fm, h, eos) {
            (Some(_), Some(h), Some(_)) if h.gd_offset != GD_AT_END => Ok((h, off + 512)),
            (Some(_), Some(_), Some(_)) => Err(ctx.corrupt(
                "footer",
                off + 512,
                "invalid footer: its grain directory offset is also 'at the end'",
            )),
            _ => Err(ctx.corrupt(
                "footer",
                off,
                "invalid footer: the header says the grain directory is at the end, but the file \
                 does not end with a footer marker, footer and end-of-stream marker (truncated?)",
            )),
        }
    }

    /// Returns true if and only if grains are compressed.
    pub fn compressed(&self) -> bool {
        self.compressed
    }

    /// Number of grains in the extent.
    pub fn grains(&self) -> u64 {
        self.capacity.div_ceil(self.grain)
    }

    /// The grain table `gt` (index in the directory), or `None` if unallocated.
    fn grain_table(&self, gt: usize) -> Result<Option<Arc<Vec<u32>>>> {
        let Some(&e) = self.gd.get(gt) else {
            return Ok(None);
        };
        if e == 0 {
            return Ok(None);
        }
        if let Ok(c) = self.cache.lock()
            && let Some(t) = c.get(&(gt as u32))
        {
            return Ok(Some(t.clone()));
        }
        let off = u64::from(e) * SECTOR;
        let len = u64::from(self.gtes_per_gt) * 4;
        let raw = self
            .file
            .read_vec(off, len, u64::from(COWD_GTES_PER_GT) * 4, "grain table")?;
        let t: Arc<Vec<u32>> = Arc::new(
            raw.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= MAX_CACHED_GTS {
                c.clear();
            }
            c.insert(gt as u32, t.clone());
        }
        Ok(Some(t))
    }

    /// What the grain table says about grain `index`, with the grain table's file offset of the
    /// entry (for errors), checked against the end of the file.
    fn lookup_with(&self, index: u64, table: &mut Option<(usize, Arc<Vec<u32>>)>) -> Result<Grain> {
        let per = u64::from(self.gtes_per_gt);
        let gt = (index / per) as usize;
        let slot = (index % per) as usize;
        let t = match table {
            Some((i, t)) if *i == gt => t.clone(),
            _ => match self.grain_table(gt)? {
                Some(t) => {
                    *table = Some((gt, t.clone()));
                    t
                }
                None => return Ok(Grain::Unallocated),
            },
        };
        let e = t.get(slot).copied().unwrap_or(0);
        if e == 0 {
            return Ok(Grain::Unallocated);
        }
        if self.zero_grain && e == GTE_ZEROED {
            return Ok(Grain::Zero);
        }
        let off = u64::from(e) * SECTOR;
        if off >= self.file.len() {
            let gt_off = u64::from(self.gd.get(gt).copied().unwrap_or(0)) * SECTOR;
            return Err(self.ctx.corrupt(
                "grain table",
                gt_off + slot as u64 * 4,
                format!(
                    "entry {slot} of grain table {gt} points to a grain at {off:#x}, past the end of the file ({} bytes)",
                    self.file.len()
                ),
            ));
        }
        Ok(Grain::Data(off))
    }

    /// Ranges of the extent (relative to its start) holding allocated data grains.
    pub fn allocation(&self) -> Result<Vec<Range<u64>>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        let per = u64::from(self.gtes_per_gt);
        for gt in 0..self.gd.len() {
            let Some(t) = self.grain_table(gt)? else {
                continue;
            };
            for (slot, &e) in t.iter().enumerate() {
                if e == 0 || (self.zero_grain && e == GTE_ZEROED) {
                    continue;
                }
                let start = (gt as u64 * per + slot as u64).saturating_mul(self.grain);
                if start >= self.capacity {
                    break;
                }
                let end = (start + self.grain).min(self.capacity);
                match out.last_mut() {
                    Some(l) if l.end == start => l.end = end,
                    _ => out.push(start..end),
                }
            }
        }
        Ok(out)
    }

    /// Reads `buf` at `off` (relative to the extent); unallocated grains are filled by
    /// `fallback(buf, off)` (the parent, or zeros).
    pub fn read(
        &self,
        buf: &mut [u8],
        off: u64,
        fallback: &(dyn Fn(&mut [u8], u64) -> Result<()> + Sync),
    ) -> Result<()> {
        // Split the request into per-grain pieces.
        let mut pieces = Vec::new();
        let mut table = None;
        let mut pos = 0usize;
        while pos < buf.len() {
            let ext_off = off + pos as u64;
            let index = ext_off / self.grain;
            let in_grain = ext_off % self.grain;
            let len = ((self.grain - in_grain) as usize).min(buf.len() - pos);
            let grain = self.lookup_with(index, &mut table)?;
            pieces.push(Piece {
                grain,
                ext_off,
                in_grain,
                index,
                len,
            });
            pos += len;
        }
        // Runs of pieces of the same kind (contiguous in the file for data) are read at once.
        let mut rest: &mut [u8] = buf;
        let mut i = 0;
        while i < pieces.len() {
            let mut j = i + 1;
            let mut run_len = pieces[i].len;
            while j < pieces.len() && self.joins(&pieces[j - 1], &pieces[j]) {
                run_len += pieces[j].len;
                j += 1;
            }
            let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(run_len);
            rest = tail;
            let first = &pieces[i];
            match first.grain {
                Grain::Unallocated => fallback(chunk, first.ext_off)?,
                Grain::Zero => chunk.fill(0),
                Grain::Data(file_off) if !self.compressed => {
                    // Like qemu, a last grain cut short by the end of the file reads as zeros.
                    self.file
                        .read_at_zero_fill(chunk, file_off + first.in_grain)?;
                }
                Grain::Data(_) => self.read_compressed(chunk, &pieces[i..j])?,
            }
            i = j;
        }
        Ok(())
    }

    /// Returns true if and only if piece `b` continues the run that `a` ends.
    fn joins(&self, a: &Piece, b: &Piece) -> bool {
        match (a.grain, b.grain) {
            (Grain::Unallocated, Grain::Unallocated) | (Grain::Zero, Grain::Zero) => true,
            (Grain::Data(x), Grain::Data(y)) if !self.compressed => {
                x + a.in_grain + a.len as u64 == y + b.in_grain
            }
            (Grain::Data(x), Grain::Data(y)) => {
                // Compressed grains close together in the file are read in one go.
                y > x && y - x <= 2 * self.grain + SECTOR && y - x <= MAX_COMPRESSED_RUN
            }
            _ => false,
        }
    }

    /// Reads a run of compressed grains (ascending in the file) into `buf` and decompresses them
    /// in parallel.
    fn read_compressed(&self, buf: &mut [u8], pieces: &[Piece]) -> Result<()> {
        let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
            return Ok(());
        };
        let (Grain::Data(start), Grain::Data(last_off)) = (first.grain, last.grain) else {
            return Ok(());
        };
        let max_record = 2 * self.grain + GRAIN_MARKER_LEN;
        let end = last_off.saturating_add(max_record).min(self.file.len());
        let span = end.saturating_sub(start);
        if span > MAX_COMPRESSED_RUN + max_record {
            // Not expected from `joins`; read grain by grain instead.
            let mut rest: &mut [u8] = buf;
            for p in pieces {
                let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(p.len);
                rest = tail;
                self.read_compressed(chunk, std::slice::from_ref(p))?;
            }
            return Ok(());
        }
        let mut raw = vec![0u8; span as usize];
        self.file
            .read_exact_at(&mut raw, start, "compressed grains")?;
        let mut jobs: Vec<(&mut [u8], &Piece)> = Vec::with_capacity(pieces.len());
        let mut rest: &mut [u8] = buf;
        for p in pieces {
            let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(p.len);
            rest = tail;
            jobs.push((chunk, p));
        }
        let raw = &raw;
        jobs.into_par_iter().try_for_each(|(chunk, p)| {
            let Grain::Data(off) = p.grain else {
                return Ok(());
            };
            let rec = raw.get((off - start) as usize..).unwrap_or(&[]);
            self.decompress_grain(rec, off, p, chunk)
        })
    }

    /// Decompresses the grain whose record starts `rec` (at `off` in the file) and copies the
    /// part `p` asks for into `out`.
    fn decompress_grain(&self, rec: &[u8], off: u64, p: &Piece, out: &mut [u8]) -> Result<()> {
        let data = if self.markers {
            let (_lba, size) = parse_grain_marker(rec).ok_or_else(|| {
                self.ctx
                    .corrupt("grain marker", off, "grain marker past the end of the file")
            })?;
            let size = u64::from(size);
            if size == 0 || size > 2 * self.grain {
                return Err(self.ctx.corrupt(
                    "grain marker",
                    off,
                    format!(
                        "grain {} has a compressed size of {size} bytes (1 to {})",
                        p.index,
                        2 * self.grain
                    ),
                ));
            }
            let end = GRAIN_MARKER_LEN + size;
            if end > rec.len() as u64 {
                return Err(self.ctx.corrupt(
                    "grain marker",
                    off,
                    format!(
                        "compressed grain {} of {size} bytes runs past the end of the file",
                        p.index
                    ),
                ));
            }
            &rec[GRAIN_MARKER_LEN as usize..end as usize]
        } else {
            rec
        };
        // The grain's bytes that lie within the extent (the last grain may be short).
        let grain_start = p.index * self.grain;
        let usable = self.grain.min(self.capacity.saturating_sub(grain_start)) as usize;
        let err = |e: String| {
            self.ctx
                .corrupt("compressed grain", off, format!("grain {}: {e}", p.index))
        };
        if p.in_grain == 0 && out.len() == usable {
            return inflate(data, out).map_err(err);
        }
        let mut tmp = vec![0u8; usable];
        inflate(data, &mut tmp).map_err(err)?;
        let a = p.in_grain as usize;
        let src = tmp
            .get(a..a + p.len)
            .ok_or_else(|| err("read outside the grain".into()))?;
        out.copy_from_slice(src);
        Ok(())
    }

    /// Checks the extent's metadata: grain table entries that point past the end of the file or
    /// into metadata are corruptions. Returns (corruptions, allocated grains).
    pub fn check(&self) -> Result<(Vec<String>, u64)> {
        let mut corrupt = Vec::new();
        let mut allocated = 0u64;
        let len = self.file.len();
        let per = u64::from(self.gtes_per_gt);
        let gt_len = per * 4;
        let gd_end = self.gd_offset + self.gd.len() as u64 * 4;
        let name = self.file.path().display().to_string();
        let mut tables: Vec<Range<u64>> = Vec::new();
        for &e in &self.gd {
            if e != 0 {
                let o = u64::from(e) * SECTOR;
                tables.push(o..o + gt_len);
            }
        }
        tables.sort_by_key(|r| r.start);
        let in_metadata = |o: u64, end: u64| -> bool {
            o < self.metadata_end || (o < gd_end && end > self.gd_offset) || {
                let i = tables.partition_point(|r| r.end <= o);
                tables.get(i).is_some_and(|r| r.start < end)
            }
        };
        for gt in 0..self.gd.len() {
            let Some(t) = self.grain_table(gt)? else {
                continue;
            };
            for (slot, &e) in t.iter().enumerate() {
                let index = gt as u64 * per + slot as u64;
                if e == 0 || (self.zero_grain && e == GTE_ZEROED) || index >= self.grains() {
                    continue;
                }
                allocated += 1;
                let o = u64::from(e) * SECTOR;
                let end = if self.compressed {
                    o + GRAIN_MARKER_LEN
                } else {
                    o + self.grain
                };
                if o >= len {
                    corrupt.push(format!(
                        "{name}: grain {index} (grain table {gt} entry {slot}) at {o:#x} points past the end of the file ({len} bytes)"
                    ));
                } else if in_metadata(o, end) {
                    corrupt.push(format!(
                        "{name}: grain {index} (grain table {gt} entry {slot}) at {o:#x} overlaps metadata"
                    ));
                }
            }
        }
        Ok((corrupt, allocated))
    }
}
