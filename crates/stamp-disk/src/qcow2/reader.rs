//! Reading qcow2 images: L1/L2 lookups through an L2 cache, contiguous host clusters read in one
//! pread, compressed clusters decompressed in parallel, unallocated clusters read from the
//! backing file.

use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::header::{
    AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY,
};
use super::table::{ClusterKind, Geometry, L2Cache, OFFSET_MASK, SUBCLUSTERS, parse_be_u64};
use crate::compress::{self, Codec};
use crate::convert::merge_ranges;
use crate::file::ImageFile;
use crate::{CheckReport, Ctx, DiskReader, Error, Format, ImageInfo, OpenOptions, Result};

/// Largest gap between two compressed clusters that are still read with one pread.
const COMPRESSED_READ_GAP: u64 = 64 << 10;
/// Largest single read of compressed data for a group of clusters.
const COMPRESSED_READ_MAX: u64 = 16 << 20;

/// A qcow2 image opened for reading.
pub struct Qcow2Reader {
    pub(super) file: ImageFile,
    pub(super) ctx: Ctx,
    pub(super) header: Header,
    pub(super) geo: Geometry,
    pub(super) l1: Vec<u64>,
    /// Where guest data lives: the external data file, or the image itself.
    pub(super) data: ImageFile,
    pub(super) backing: Option<Box<dyn DiskReader>>,
    cache: Mutex<L2Cache>,
    codec: Codec,
}

impl std::fmt::Debug for Qcow2Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Reader")
            .field("file", &self.file.path())
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// Sorted, non-overlapping guest ranges.
type Ranges = Vec<Range<u64>>;

/// A piece of a read: a run of guest bytes and where they come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The backing file (zeros without one).
    Backing,
    /// Zeros.
    Zero,
    /// Data at this host offset.
    Host(u64),
    /// Byte `within` of the compressed cluster at (offset, size).
    Compressed { offset: u64, size: u64, within: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Piece {
    /// Offset in the caller's buffer.
    at: usize,
    len: usize,
    src: Source,
}

/// Opens a qcow2 image.
pub fn open(file: ImageFile, opts: &OpenOptions) -> Result<Qcow2Reader> {
    let ctx = Ctx::new(file.path(), Format::Qcow2);
    let header = Header::read(&file, &ctx)?;
    let geo = Geometry::new(&header);
    let l1_bytes = u64::from(header.l1_size) * 8;
    let l1 = if header.l1_size == 0 {
        Vec::new()
    } else {
        parse_be_u64(&file.read_vec(
            header.l1_table_offset,
            l1_bytes,
            super::header::MAX_L1_BYTES,
            "L1 table",
        )?)
    };
    let data = match &header.data_file {
        Some(name) => {
            // Relative to the image's directory; qemu-img takes it relative to its working
            // directory, so that is tried second.
            let mut p = crate::resolve_relative(file.path(), name);
            if !p.exists() && Path::new(name).exists() {
                p = Path::new(name).to_path_buf();
            }
            if !p.exists() {
                return Err(Error::Missing {
                    path: file.path().to_path_buf(),
                    what: "external data file",
                    missing: p,
                });
            }
            ImageFile::open(&p)?
        }
        None => file.clone(),
    };
    let backing = match &header.backing_file {
        Some(name) => {
            let fmt = header
                .backing_format
                .as_deref()
                .and_then(|f| f.parse::<Format>().ok());
            Some(crate::open_backing(
                file.path(),
                name,
                fmt,
                opts.depth,
                "backing file",
            )?)
        }
        None => None,
    };
    let codec = if header.compression_type == 1 {
        Codec::Zstd
    } else {
        Codec::Deflate
    };
    let cache = Mutex::new(L2Cache::new(geo.cluster_size));
    Ok(Qcow2Reader {
        file,
        ctx,
        header,
        geo,
        l1,
        data,
        backing,
        cache,
        codec,
    })
}

impl Qcow2Reader {
    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Host offset of the L2 table for L1 index `i`, or None if unallocated. Checked for
    /// alignment and against the file size.
    pub(super) fn l2_offset(&self, i: u64) -> Result<Option<u64>> {
        let Some(e) = self.l1.get(i as usize).copied() else {
            return Ok(None);
        };
        let off = e & OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        let at = self.header.l1_table_offset + i * 8;
        if off % self.geo.cluster_size != 0 {
            return Err(self.ctx.corrupt(
                "L1 table",
                at,
                format!("entry {i} points to an L2 table at {off:#x}, not aligned to a cluster"),
            ));
        }
        if off
            .checked_add(self.geo.cluster_size)
            .is_none_or(|end| end > self.file.len())
        {
            return Err(self.ctx.corrupt(
                "L1 table",
                at,
                format!(
                    "entry {i} points to an L2 table at {off:#x}, past the end of the file ({} bytes)",
                    self.file.len()
                ),
            ));
        }
        Ok(Some(off))
    }

    /// Reads and decodes the L2 table at `off` without the cache.
    pub(super) fn read_l2(&self, off: u64) -> Result<Arc<[u64]>> {
        let mut b = vec![0u8; self.geo.cluster_size as usize];
        self.file.read_exact_at(&mut b, off, "L2 table")?;
        Ok(Arc::from(parse_be_u64(&b)))
    }

    /// The L2 table for L1 index `i` through the cache.
    fn l2_table(&self, i: u64) -> Result<Option<(u64, Arc<[u64]>)>> {
        let Some(off) = self.l2_offset(i)? else {
            return Ok(None);
        };
        if let Some(t) = self.cache.lock().ok().and_then(|mut c| c.get(off)) {
            return Ok(Some((off, t)));
        }
        let t = self.read_l2(off)?;
        if let Ok(mut c) = self.cache.lock() {
            c.insert(off, t.clone());
        }
        Ok(Some((off, t)))
    }

    /// Decodes entry `idx` of the L2 table at `table_off`.
    pub(super) fn kind(&self, table_off: u64, table: &[u64], idx: u64) -> Result<ClusterKind> {
        let (e, b, at) = if self.geo.extended {
            let i = idx as usize * 2;
            (
                table.get(i).copied().unwrap_or(0),
                table.get(i + 1).copied().unwrap_or(0),
                table_off + idx * 16,
            )
        } else {
            (
                table.get(idx as usize).copied().unwrap_or(0),
                0,
                table_off + idx * 8,
            )
        };
        let k = self.geo.classify(e, b).map_err(|d| {
            self.ctx
                .corrupt("L2 table", at, format!("entry {idx}: {d}"))
        })?;
        match k {
            ClusterKind::Normal { host } | ClusterKind::Subclusters { host, .. }
                if !self.has_data_file() && host != 0 && host >= self.file.len() =>
            {
                Err(self.ctx.corrupt(
                    "L2 table",
                    at,
                    format!(
                        "entry {idx} points to a data cluster at {host:#x}, past the end of the file ({} bytes)",
                        self.file.len()
                    ),
                ))
            }
            ClusterKind::Compressed { offset, .. } if offset >= self.file.len() => {
                Err(self.ctx.corrupt(
                    "L2 table",
                    at,
                    format!(
                        "entry {idx} points to compressed data at {offset:#x}, past the end of the file ({} bytes)",
                        self.file.len()
                    ),
                ))
            }
            k => Ok(k),
        }
    }

    /// Returns true if and only if guest data lives in an external data file.
    pub fn has_data_file(&self) -> bool {
        self.header.data_file.is_some()
    }

    /// Splits the guest range `offset..offset+len` into pieces by source, merging neighbours.
    fn plan(&self, offset: u64, len: usize) -> Result<Vec<Piece>> {
        let mut pieces: Vec<Piece> = Vec::new();
        let unalloc = if self.backing.is_some() {
            Source::Backing
        } else {
            Source::Zero
        };
        let mut push = |at: usize, len: usize, src: Source| {
            if let Some(last) = pieces.last_mut() {
                let joins = match (last.src, src) {
                    (Source::Zero, Source::Zero) | (Source::Backing, Source::Backing) => true,
                    (Source::Host(a), Source::Host(b)) => a + last.len as u64 == b,
                    _ => false,
                };
                if joins && last.at + last.len == at {
                    last.len += len;
                    return;
                }
            }
            pieces.push(Piece { at, len, src });
        };
        let cs = self.geo.cluster_size;
        let sub = self.geo.subcluster_size();
        let end = offset + len as u64;
        let mut pos = offset;
        while pos < end {
            let l1i = pos / self.geo.l2_span();
            let table_end = ((l1i + 1) * self.geo.l2_span()).min(end);
            let table = self.l2_table(l1i)?;
            while pos < table_end {
                let cl = pos >> self.geo.cluster_bits;
                let cl_start = cl << self.geo.cluster_bits;
                let cl_end = (cl_start + cs).min(table_end);
                let at = (pos - offset) as usize;
                let n = (cl_end - pos) as usize;
                let kind = match &table {
                    None => ClusterKind::Unallocated,
                    Some((toff, t)) => self.kind(*toff, t, cl % self.geo.l2_entries)?,
                };
                match kind {
                    ClusterKind::Unallocated => push(at, n, unalloc),
                    ClusterKind::Zero { .. } => push(at, n, Source::Zero),
                    ClusterKind::Normal { host } => {
                        push(at, n, Source::Host(host + pos - cl_start))
                    }
                    ClusterKind::Compressed { offset, size } => push(
                        at,
                        n,
                        Source::Compressed {
                            offset,
                            size,
                            within: pos - cl_start,
                        },
                    ),
                    ClusterKind::Subclusters { host, alloc, zero } => {
                        let mut p = pos;
                        while p < cl_end {
                            let si = ((p - cl_start) / sub) as u32;
                            let s_end = (cl_start + u64::from(si + 1) * sub).min(cl_end);
                            let src = if alloc & (1 << si) != 0 {
                                Source::Host(host + p - cl_start)
                            } else if zero & (1 << si) != 0 {
                                Source::Zero
                            } else {
                                unalloc
                            };
                            push((p - offset) as usize, (s_end - p) as usize, src);
                            p = s_end;
                        }
                    }
                }
                pos = cl_end;
            }
        }
        Ok(pieces)
    }

    /// Reads the backing file's contents at `guest` into `dst` (zeros past its end).
    fn read_backing(&self, dst: &mut [u8], guest: u64) -> Result<()> {
        let Some(b) = &self.backing else {
            dst.fill(0);
            return Ok(());
        };
        let bsize = b.virtual_size();
        let n = bsize.saturating_sub(guest).min(dst.len() as u64) as usize;
        if n > 0 {
            b.read_at(&mut dst[..n], guest)?;
        }
        dst[n..].fill(0);
        Ok(())
    }

    /// Reads compressed pieces: neighbouring compressed data in one pread, then decompression
    /// in parallel.
    fn read_compressed(&self, buf: &mut [u8], pieces: &[Piece]) -> Result<()> {
        // Group pieces whose compressed data lie close together in the file.
        let mut groups: Vec<(u64, u64)> = Vec::new(); // (start, end) in the file
        let mut which: Vec<(usize, u64, u64)> = Vec::with_capacity(pieces.len()); // (group, start, len)
        let flen = self.file.len();
        for p in pieces {
            let Source::Compressed { offset, size, .. } = p.src else {
                continue;
            };
            let end = offset.saturating_add(size).min(flen);
            let extend = groups.last().is_some_and(|&(gs, ge)| {
                offset >= gs
                    && offset <= ge + COMPRESSED_READ_GAP
                    && end - gs <= COMPRESSED_READ_MAX
            });
            if extend {
                if let Some(g) = groups.last_mut() {
                    g.1 = g.1.max(end);
                }
            } else {
                groups.push((offset, end));
            }
            which.push((groups.len() - 1, offset, end - offset));
        }
        let mut data = Vec::with_capacity(groups.len());
        for &(s, e) in &groups {
            data.push(self.file.read_vec(
                s,
                e - s,
                COMPRESSED_READ_MAX + COMPRESSED_READ_GAP + self.geo.cluster_size * 2,
                "compressed cluster",
            )?);
        }
        // Split the caller's buffer into the pieces' disjoint slices.
        let mut jobs = Vec::with_capacity(pieces.len());
        let mut rest: &mut [u8] = buf;
        let mut consumed = 0usize;
        for (p, &(g, start, len)) in pieces.iter().zip(&which) {
            let tail = std::mem::take(&mut rest);
            let (_, tail) = tail.split_at_mut(p.at - consumed);
            let (dst, tail) = tail.split_at_mut(p.len);
            rest = tail;
            consumed = p.at + p.len;
            let gs = groups.get(g).map_or(0, |g| g.0);
            let src = data
                .get(g)
                .and_then(|d| d.get((start - gs) as usize..(start - gs + len) as usize))
                .unwrap_or(&[]);
            let within = match p.src {
                Source::Compressed { within, .. } => within,
                _ => 0,
            };
            jobs.push((dst, src, within, start));
        }
        let cs = self.geo.cluster_size as usize;
        let codec = self.codec;
        jobs.into_par_iter()
            .try_for_each(|(dst, src, within, start)| -> Result<()> {
                let fail = |d: String| self.ctx.corrupt("compressed cluster", start, d);
                if within == 0 && dst.len() == cs {
                    compress::decompress_into(codec, src, dst).map_err(fail)
                } else {
                    let mut tmp = vec![0u8; cs];
                    compress::decompress_into(codec, src, &mut tmp).map_err(fail)?;
                    let w = within as usize;
                    dst.copy_from_slice(&tmp[w..w + dst.len()]);
                    Ok(())
                }
            })
    }

    /// Walks the active L1/L2 tables and returns (ranges with data, ranges explicitly zero).
    pub(super) fn own_map(&self) -> Result<(Ranges, Ranges)> {
        let mut data: Vec<Range<u64>> = Vec::new();
        let mut zero: Vec<Range<u64>> = Vec::new();
        let add = |v: &mut Vec<Range<u64>>, r: Range<u64>| match v.last_mut() {
            Some(l) if l.end == r.start => l.end = r.end,
            _ => v.push(r),
        };
        let size = self.header.size;
        let cs = self.geo.cluster_size;
        let sub = self.geo.subcluster_size();
        let mut seen = std::collections::HashSet::new();
        for i in 0..self.l1.len() as u64 {
            let base = i * self.geo.l2_span();
            if base >= size {
                break;
            }
            let Some(off) = self.l2_offset(i)? else {
                continue;
            };
            // Each L2 table serves one L1 entry; a shared one would also make this walk's cost
            // unbounded by the file size.
            if !seen.insert(off) {
                return Err(self.ctx.corrupt(
                    "L1 table",
                    self.header.l1_table_offset + i * 8,
                    format!(
                        "entry {i} points to the L2 table at {off:#x}, which another entry uses too"
                    ),
                ));
            }
            let t = self.read_l2(off)?;
            for j in 0..self.geo.l2_entries {
                let start = base + j * cs;
                if start >= size {
                    break;
                }
                let end = (start + cs).min(size);
                match self.kind(off, &t, j)? {
                    ClusterKind::Unallocated => {}
                    ClusterKind::Zero { .. } => add(&mut zero, start..end),
                    ClusterKind::Normal { .. } | ClusterKind::Compressed { .. } => {
                        add(&mut data, start..end)
                    }
                    ClusterKind::Subclusters { alloc, zero: z, .. } => {
                        for s in 0..SUBCLUSTERS {
                            let ss = start + u64::from(s) * sub;
                            if ss >= end {
                                break;
                            }
                            let se = (ss + sub).min(end);
                            if alloc & (1 << s) != 0 {
                                add(&mut data, ss..se);
                            } else if z & (1 << s) != 0 {
                                add(&mut zero, ss..se);
                            }
                        }
                    }
                }
            }
        }
        Ok((data, zero))
    }

    /// Returns true if and only if the active tables hold at least one compressed cluster.
    fn has_compressed(&self) -> bool {
        let mut seen = std::collections::HashSet::new();
        for i in 0..self.l1.len() as u64 {
            let Ok(Some(off)) = self.l2_offset(i) else {
                continue;
            };
            if !seen.insert(off) {
                continue;
            }
            let Ok(t) = self.read_l2(off) else {
                continue;
            };
            let stride = if self.geo.extended { 2 } else { 1 };
            if t.iter()
                .step_by(stride)
                .any(|e| e & super::table::OFLAG_COMPRESSED != 0)
            {
                return true;
            }
        }
        false
    }
}

/// `a` minus the ranges of `b` (both sorted, non-overlapping).
fn subtract(a: Vec<Range<u64>>, b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for r in a {
        let mut start = r.start;
        while j < b.len() && b[j].end <= start {
            j += 1;
        }
        let mut k = j;
        while start < r.end {
            match b.get(k) {
                Some(z) if z.start < r.end => {
                    if z.start > start {
                        out.push(start..z.start);
                    }
                    start = start.max(z.end);
                    k += 1;
                }
                _ => {
                    out.push(start..r.end);
                    break;
                }
            }
        }
    }
    out
}

impl DiskReader for Qcow2Reader {
    fn virtual_size(&self) -> u64 {
        self.header.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let size = self.header.size;
        crate::error::check_read(self.file.path(), offset, buf.len(), size)?;
        let pieces = self.plan(offset, buf.len())?;
        let mut compressed = Vec::new();
        for p in pieces {
            let dst = &mut buf[p.at..p.at + p.len];
            match p.src {
                Source::Zero => dst.fill(0),
                Source::Backing => self.read_backing(dst, offset + p.at as u64)?,
                Source::Host(h) => self.data.read_at_zero_fill(dst, h)?,
                Source::Compressed { .. } => compressed.push(p),
            }
        }
        if !compressed.is_empty() {
            self.read_compressed(buf, &compressed)?;
        }
        Ok(())
    }

    fn allocation(&self) -> Result<Vec<Range<u64>>> {
        let (data, zero) = self.own_map()?;
        let mut all = data.clone();
        if let Some(b) = &self.backing {
            let limit = b.virtual_size().min(self.header.size);
            let theirs = crate::convert::clip_ranges(merge_ranges(b.allocation()?), limit);
            // What this image says is zero hides the backing file.
            all.extend(subtract(subtract(theirs, &zero), &data));
        }
        Ok(merge_ranges(all))
    }

    fn info(&self) -> ImageInfo {
        let h = &self.header;
        let mut i = ImageInfo::new(self.file.path(), Format::Qcow2, h.size);
        i.subformat = Some(format!("v{}", h.version));
        i.actual_size = self.file.allocated_bytes();
        if self.has_data_file() {
            i.actual_size += self.data.allocated_bytes();
        }
        i.cluster_size = Some(self.geo.cluster_size);
        let ctype = if h.compression_type == 1 {
            "zstd"
        } else {
            "zlib"
        };
        if h.compression_type == 1 || self.has_compressed() {
            i.compression = Some(ctype.to_string());
        }
        i.backing_file = h.backing_file.clone();
        if let Some(b) = &self.backing {
            let mut bi = b.info();
            let rest = std::mem::take(&mut bi.backing_chain);
            i.backing_chain.push(bi);
            i.backing_chain.extend(rest);
        }
        let onoff = |b: bool| if b { "true" } else { "false" };
        i = i
            .detail("compat", if h.version >= 3 { "1.1" } else { "0.10" })
            .detail("refcount_bits", h.refcount_bits())
            .detail("extended_l2", onoff(h.extended_l2()))
            .detail(
                "lazy_refcounts",
                onoff(h.compatible & COMPAT_LAZY_REFCOUNTS != 0),
            )
            .detail("corrupt", onoff(h.incompatible & INCOMPAT_CORRUPT != 0))
            .detail("dirty", onoff(h.incompatible & INCOMPAT_DIRTY != 0));
        if h.version >= 3 {
            i = i.detail("compression_type", ctype);
        }
        if let Some(f) = &h.backing_format {
            i = i.detail("backing_format", f);
        }
        if let Some(d) = &h.data_file {
            i = i.detail("data_file", d).detail(
                "data_file_raw",
                onoff(h.autoclear & AUTOCLEAR_DATA_FILE_RAW != 0),
            );
        }
        i
    }

    fn check(&self) -> Result<CheckReport> {
        super::check::check(self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    #[test]
    fn subtract_removes_overlaps() {
        assert_eq!(
            subtract(vec![0..10, 20..30], &[2..4, 8..22, 25..26]),
            vec![0..2, 4..8, 22..25, 26..30]
        );
        assert_eq!(subtract(vec![0..10], &[]), vec![0..10]);
        assert_eq!(subtract(vec![5..10], &[0..20]), Vec::new());
    }
}
