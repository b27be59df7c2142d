//! VMDK writers: monolithicSparse (qemu-img's layout) and streamOptimized (VMware's stream
//! layout), both fed ascending extents and writing only grains that hold data.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::descriptor::{DescriptorSpec, render};
use super::header::{
    CHECK_BYTES, COMPRESSION_DEFLATE, FLAG_COMPRESS, FLAG_MARKER, FLAG_NL_DETECT, FLAG_RGD,
    GD_AT_END, MARKER_FOOTER, MARKER_GD, MARKER_GT, Marker, SECTOR, SparseHeader,
};
use crate::compress::{Codec, compress_batch};
use crate::file::OutputFile;
use crate::{
    CreateOptions, DiskSummary, DiskWriter, Error, Extent, ExtentOrder, Format, Result, is_zero,
};

/// Adapter types accepted by `adapter_type=` (qemu-img's list; `ide` is the default).
pub const ADAPTER_TYPES: &[&str] = &["ide", "lsilogic", "buslogic", "legacyESX"];

/// Sectors per grain written (64 KiB, as qemu and VMware).
const GRAIN_SECTORS: u64 = 128;
/// Bytes per grain written.
const GRAIN: u64 = GRAIN_SECTORS * SECTOR;
/// Grain table entries per grain table written.
const GTES: u64 = 512;
/// Sectors of one grain table.
const GT_SECTORS: u64 = GTES * 4 / SECTOR;
/// Sector of the embedded descriptor.
const DESC_OFFSET: u64 = 1;
/// Sectors reserved for the embedded descriptor (qemu's value).
const DESC_SECTORS: u64 = 20;
/// Raw bytes gathered before a batch of grains is compressed on all cores.
const STREAM_BATCH: usize = 16 << 20;
/// Largest disk written: 64 TiB, above VMware's 62 TB limit, so that the grain directory (and
/// the table of grain tables kept while writing) stays a few MiB; grain and table sectors must
/// also fit the 32-bit entries.
const MAX_WRITE_SIZE: u64 = 64 << 40;
/// Bytes gathered before a write to the output.
const WRITE_BATCH: usize = 8 << 20;

/// The VMDK variants stamp writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subformat {
    /// One sparse file with uncompressed grains (default).
    MonolithicSparse,
    /// One sparse file with compressed grains and markers, written front to back.
    StreamOptimized,
}

impl Subformat {
    /// The createType name.
    pub fn name(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::StreamOptimized => "streamOptimized",
        }
    }
}

/// Creates a VMDK image of `size` bytes at `path` (rounded up to whole sectors, as qemu-img
/// does). Options: `subformat` (`monolithicSparse`, `streamOptimized`), `adapter_type`, and `-c`
/// (only with streamOptimized, whose grains are always compressed).
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn DiskWriter>> {
    opts.allow_only(Format::Vmdk, &["subformat", "adapter_type", "compress"])?;
    let sub = match opts.subformat.as_deref() {
        None | Some("monolithicSparse") => Subformat::MonolithicSparse,
        Some("streamOptimized") => Subformat::StreamOptimized,
        Some(other) => {
            return Err(Error::InvalidOption(format!(
                "vmdk subformat '{other}' cannot be written (use monolithicSparse or streamOptimized)"
            )));
        }
    };
    if opts.compress && sub != Subformat::StreamOptimized {
        return Err(Error::InvalidOption(
            "vmdk compresses grains only with subformat=streamOptimized (monolithicSparse grains \
             are not compressed): add -o subformat=streamOptimized or drop -c"
                .into(),
        ));
    }
    let adapter = adapter_type(opts)?;
    check_size(size)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let common = Common::new(Out::File(OutputFile::create(path)?), size, adapter, name);
    Ok(match sub {
        Subformat::MonolithicSparse => Box::new(SparseWriter::new(common)),
        Subformat::StreamOptimized => Box::new(StreamWriter::new(common)?),
    })
}

/// Writes a streamOptimized VMDK of `size` bytes to `sink`, strictly front to back (no seek):
/// header and descriptor first, then compressed grains, grain tables, grain directory, footer
/// and end-of-stream marker. `name` is the extent file name in the descriptor and the path in
/// errors and in the summary. Options: `adapter_type`, `-c` and `subformat=streamOptimized`.
///
/// Unlike [`create`], the content ID is not a hash of the grains (the header goes out before
/// them) but of `name` and `size`. The sink gets writes of up to a few MiB; a writer dropped
/// without `finish` leaves what it wrote to the sink (the sink's owner discards it).
pub fn create_stream(
    sink: Box<dyn Write + Send>,
    name: &str,
    size: u64,
    opts: &CreateOptions,
) -> Result<Box<dyn DiskWriter>> {
    opts.allow_only(Format::Vmdk, &["subformat", "adapter_type", "compress"])?;
    match opts.subformat.as_deref() {
        None | Some("streamOptimized") => {}
        Some(other) => {
            return Err(Error::InvalidOption(format!(
                "vmdk subformat '{other}' cannot be written to a stream (use streamOptimized)"
            )));
        }
    }
    let adapter = adapter_type(opts)?;
    check_size(size)?;
    let out = Out::Stream {
        sink,
        name: PathBuf::from(name),
        pos: 0,
    };
    let mut common = Common::new(out, size, adapter, name.to_string());
    let mut h = crc32fast::Hasher::new();
    h.update(name.as_bytes());
    h.update(&size.to_le_bytes());
    common.fixed_cid = Some(match h.finalize() {
        u32::MAX => u32::MAX - 1,
        c => c,
    });
    Ok(Box::new(StreamWriter::new(common)?))
}

/// The adapter type option, checked.
fn adapter_type(opts: &CreateOptions) -> Result<&str> {
    match opts.adapter_type.as_deref() {
        None => Ok("ide"),
        Some(a) if ADAPTER_TYPES.contains(&a) => Ok(a),
        Some(a) => Err(Error::InvalidOption(format!(
            "vmdk adapter_type '{a}' is not known (use one of: {})",
            ADAPTER_TYPES.join(", ")
        ))),
    }
}

/// Refuses disks larger than [`MAX_WRITE_SIZE`].
fn check_size(size: u64) -> Result<()> {
    if size > MAX_WRITE_SIZE {
        return Err(Error::InvalidOption(format!(
            "vmdk cannot hold a disk of {size} bytes (at most {MAX_WRITE_SIZE}, 64 TiB)"
        )));
    }
    Ok(())
}

/// Where a writer's bytes go: a file written at offsets and renamed into place, or a
/// sequential sink (streamOptimized only).
enum Out {
    File(OutputFile),
    Stream {
        sink: Box<dyn Write + Send>,
        /// For messages and the summary.
        name: PathBuf,
        /// Bytes written so far: the only offset the next write may have.
        pos: u64,
    },
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Out::File(o) => f.debug_tuple("File").field(o).finish(),
            Out::Stream { name, pos, .. } => f
                .debug_struct("Stream")
                .field("name", name)
                .field("pos", pos)
                .finish_non_exhaustive(),
        }
    }
}

impl Out {
    fn path(&self) -> &Path {
        match self {
            Out::File(o) => o.path(),
            Out::Stream { name, .. } => name,
        }
    }

    /// Writes `buf` at `offset`; a stream takes only the offset right after its last write.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        match self {
            Out::File(o) => o.write_all_at(buf, offset),
            Out::Stream { sink, name, pos } => {
                if offset != *pos {
                    return Err(Error::unsupported(
                        name,
                        Format::Vmdk,
                        format!("a write at offset {offset:#x} of a stream at {pos:#x}"),
                    ));
                }
                sink.write_all(buf)
                    .map_err(|e| Error::io("write", &**name, e))?;
                *pos += buf.len() as u64;
                Ok(())
            }
        }
    }

    /// Flushes a stream, or renames the file into place.
    fn commit(self) -> Result<()> {
        match self {
            Out::File(o) => o.commit(),
            Out::Stream { mut sink, name, .. } => {
                sink.flush().map_err(|e| Error::io("flush", &name, e))
            }
        }
    }
}

/// Cuts ascending data extents into whole grains, skipping grains of zeros, and hashes what it
/// keeps for the content ID.
#[derive(Debug)]
struct Grains {
    /// Bytes of the disk (whole sectors).
    size: u64,
    /// The grain being filled from pieces: index and bytes.
    cur: Option<(u64, Vec<u8>)>,
    hasher: crc32fast::Hasher,
}

impl Grains {
    fn new(size: u64) -> Self {
        Grains {
            size,
            cur: None,
            hasher: crc32fast::Hasher::new(),
        }
    }

    /// Bytes of grain `g` within the disk (the last one may be short).
    fn usable(&self, g: u64) -> u64 {
        GRAIN.min(self.size.saturating_sub(g * GRAIN))
    }

    fn keep(&mut self, g: u64, b: Bytes, done: &mut Vec<(u64, Bytes)>) {
        if is_zero(&b) {
            return;
        }
        self.hasher.update(&g.to_le_bytes());
        self.hasher.update(&b);
        done.push((g, b));
    }

    /// Adds `bytes` at `offset`; completed grains go to `done`.
    fn push(&mut self, offset: u64, bytes: Bytes, done: &mut Vec<(u64, Bytes)>) {
        let mut pos = 0usize;
        while pos < bytes.len() {
            let off = offset + pos as u64;
            let g = off / GRAIN;
            let within = (off % GRAIN) as usize;
            let usable = self.usable(g) as usize;
            let n = (usable - within).min(bytes.len() - pos);
            if self.cur.as_ref().is_some_and(|(cg, _)| *cg != g) {
                self.flush(done);
            }
            if within == 0 && n == usable && self.cur.is_none() {
                self.keep(g, bytes.slice(pos..pos + n), done);
            } else {
                let (_, buf) = self.cur.get_or_insert_with(|| (g, vec![0u8; usable]));
                buf[within..within + n].copy_from_slice(&bytes[pos..pos + n]);
                if within + n == usable {
                    self.flush(done);
                }
            }
            pos += n;
        }
    }

    /// Completes the grain being filled, if any.
    fn flush(&mut self, done: &mut Vec<(u64, Bytes)>) {
        if let Some((g, buf)) = self.cur.take() {
            self.keep(g, Bytes::from(buf), done);
        }
    }

    /// The content ID: a hash of every grain kept, never `ffffffff` (which means "no parent").
    fn cid(&self) -> u32 {
        match self.hasher.clone().finalize() {
            u32::MAX => u32::MAX - 1,
            c => c,
        }
    }
}

/// What both writers share.
#[derive(Debug)]
struct Common {
    out: Out,
    capacity: u64,
    order: ExtentOrder,
    grains: Grains,
    /// The grain tables that have grains (entries are grain sectors, 0 if not written); a table
    /// is allocated when its first grain is written, so memory follows the data.
    gts: Vec<Option<Box<[u32]>>>,
    gt_count: u64,
    data_bytes: u64,
    adapter: String,
    name: String,
    /// Completed grains not yet written.
    done: Vec<(u64, Bytes)>,
    /// The content ID when it cannot be a hash of the grains (a stream writes the descriptor
    /// first).
    fixed_cid: Option<u32>,
}

impl Common {
    fn new(out: Out, size: u64, adapter: &str, name: String) -> Self {
        let capacity = size.div_ceil(SECTOR);
        let grains = capacity.div_ceil(GRAIN_SECTORS);
        let gt_count = grains.div_ceil(GTES);
        Common {
            out,
            capacity,
            order: ExtentOrder::new(size),
            grains: Grains::new(capacity * SECTOR),
            gts: (0..gt_count).map(|_| None).collect(),
            gt_count,
            data_bytes: 0,
            adapter: adapter.to_string(),
            name,
            done: Vec::new(),
            fixed_cid: None,
        }
    }

    fn accept(&mut self, e: Extent) -> Result<()> {
        self.order.accept(&e)?;
        if let Extent::Data { offset, bytes } = e {
            self.grains.push(offset, bytes, &mut self.done);
        }
        Ok(())
    }

    fn set_gte(&mut self, g: u64, sector: u64) -> Result<()> {
        let s = u32::try_from(sector).map_err(|_| {
            Error::unsupported(
                self.out.path(),
                Format::Vmdk,
                "a sparse extent over 2 TiB (grain tables hold 32-bit sector numbers)",
            )
        })?;
        if let Some(t) = self.gts.get_mut((g / GTES) as usize) {
            let t = t.get_or_insert_with(|| vec![0u32; GTES as usize].into_boxed_slice());
            if let Some(e) = t.get_mut((g % GTES) as usize) {
                *e = s;
            }
        }
        Ok(())
    }

    fn header(&self, version: u32, flags: u32) -> SparseHeader {
        SparseHeader {
            version,
            flags,
            capacity: self.capacity,
            granularity: GRAIN_SECTORS,
            desc_offset: DESC_OFFSET,
            desc_size: DESC_SECTORS,
            num_gtes_per_gt: GTES as u32,
            check_bytes: CHECK_BYTES,
            ..Default::default()
        }
    }

    /// The embedded descriptor padded to its reserved sectors.
    fn descriptor(&self, create_type: &str) -> Result<Vec<u8>> {
        let text = render(&DescriptorSpec {
            cid: self.fixed_cid.unwrap_or_else(|| self.grains.cid()),
            parent_cid: u32::MAX,
            create_type,
            extents: vec![format!("RW {} SPARSE \"{}\"", self.capacity, self.name)],
            size: self.capacity * SECTOR,
            adapter_type: &self.adapter,
        });
        let mut b = text.into_bytes();
        if b.len() as u64 > DESC_SECTORS * SECTOR {
            return Err(Error::InvalidOption(format!(
                "vmdk descriptor for {} does not fit in {DESC_SECTORS} sectors (file name too long?)",
                self.out.path().display()
            )));
        }
        b.resize((DESC_SECTORS * SECTOR) as usize, 0);
        Ok(b)
    }

    /// Grain table `i` as bytes, if it has grains.
    fn gt_bytes(&self, i: u64) -> Option<Vec<u8>> {
        let t = self.gts.get(i as usize)?.as_ref()?;
        Some(t.iter().flat_map(|e| e.to_le_bytes()).collect())
    }

    fn summary(self, file_size: u64) -> Result<DiskSummary> {
        let path = self.out.path().to_path_buf();
        self.out.commit()?;
        Ok(DiskSummary {
            path,
            format: Format::Vmdk.name().into(),
            virtual_size: self.capacity * SECTOR,
            file_size,
            data_bytes: self.data_bytes,
        })
    }
}

/// Pads `v` with zeros to a whole number of sectors.
fn pad_sector(v: &mut Vec<u8>) {
    let len = (v.len() as u64).next_multiple_of(SECTOR) as usize;
    v.resize(len, 0);
}

/// Writes a monolithicSparse VMDK as qemu-img lays it out: header, descriptor, redundant grain
/// directory and tables, grain directory and tables (all tables preallocated), then grains.
#[derive(Debug)]
pub struct SparseWriter {
    c: Common,
    gd_sectors: u64,
    rgd_offset: u64,
    gd_offset: u64,
    grain_offset: u64,
    /// Grains gathered for the next write, starting at `buf_at`.
    buf: Vec<u8>,
    buf_at: u64,
    /// File offset of the next grain.
    next: u64,
}

impl SparseWriter {
    fn new(c: Common) -> Self {
        let gd_sectors = (c.gt_count * 4).div_ceil(SECTOR);
        let rgd_offset = DESC_OFFSET + DESC_SECTORS;
        let gd_offset = rgd_offset + gd_sectors + GT_SECTORS * c.gt_count;
        let grain_offset =
            (gd_offset + gd_sectors + GT_SECTORS * c.gt_count).next_multiple_of(GRAIN_SECTORS);
        let next = grain_offset * SECTOR;
        SparseWriter {
            c,
            gd_sectors,
            rgd_offset,
            gd_offset,
            grain_offset,
            buf: Vec::new(),
            buf_at: next,
            next,
        }
    }

    fn drain(&mut self) -> Result<()> {
        for (g, b) in std::mem::take(&mut self.c.done) {
            self.c.set_gte(g, self.next / SECTOR)?;
            self.buf.extend_from_slice(&b);
            self.buf
                .resize(self.buf.len() + (GRAIN as usize - b.len()), 0);
            self.next += GRAIN;
            self.c.data_bytes += b.len() as u64;
        }
        if self.buf.len() >= WRITE_BATCH {
            self.write_buf()?;
        }
        Ok(())
    }

    fn write_buf(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.c.out.write_all_at(&self.buf, self.buf_at)?;
            self.buf_at += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes one copy of the grain directory at sector `at` and the grain tables after it
    /// (only those with grains: the others stay holes that read as zeros).
    fn write_tables(&mut self, at: u64) -> Result<()> {
        let mut gd = Vec::with_capacity((self.gd_sectors * SECTOR) as usize);
        for i in 0..self.c.gt_count {
            let gt_sector = at + self.gd_sectors + i * GT_SECTORS;
            gd.extend_from_slice(&(gt_sector as u32).to_le_bytes());
        }
        self.c.out.write_all_at(&gd, at * SECTOR)?;
        for i in 0..self.c.gt_count {
            if let Some(t) = self.c.gt_bytes(i) {
                let gt_sector = at + self.gd_sectors + i * GT_SECTORS;
                self.c.out.write_all_at(&t, gt_sector * SECTOR)?;
            }
        }
        Ok(())
    }
}

impl DiskWriter for SparseWriter {
    fn write_extent(&mut self, e: Extent) -> Result<()> {
        self.c.accept(e)?;
        self.drain()
    }

    fn finish(mut self: Box<Self>) -> Result<DiskSummary> {
        self.c.grains.flush(&mut self.c.done);
        self.drain()?;
        self.write_buf()?;
        let mut h = self.c.header(1, FLAG_NL_DETECT | FLAG_RGD);
        h.rgd_offset = self.rgd_offset;
        h.gd_offset = self.gd_offset;
        h.grain_offset = self.grain_offset;
        let mut meta = h.to_bytes().to_vec();
        meta.extend_from_slice(&self.c.descriptor(Subformat::MonolithicSparse.name())?);
        self.c.out.write_all_at(&meta, 0)?;
        self.write_tables(self.rgd_offset)?;
        self.write_tables(self.gd_offset)?;
        let file_size = self.next;
        if let Out::File(o) = &self.c.out {
            o.set_len(file_size)?;
        }
        self.c.summary(file_size)
    }
}

/// Writes a streamOptimized VMDK front to back as VMware does: header (grain directory "at the
/// end"), descriptor, compressed grains each behind a grain marker, then each grain table that
/// has grains behind a GT marker, the grain directory behind a GD marker, the footer behind a
/// footer marker, and the end-of-stream marker.
#[derive(Debug)]
pub struct StreamWriter {
    c: Common,
    /// File offset of the next write.
    pos: u64,
    /// The batch being compressed in the background while the next one is gathered.
    job: Option<Job>,
}

/// A batch of grains and the thread compressing them (on the rayon pool, in order).
#[derive(Debug)]
struct Job {
    grains: Vec<(u64, Bytes)>,
    handle: std::thread::JoinHandle<Vec<Vec<u8>>>,
}

impl StreamWriter {
    fn new(c: Common) -> Result<Self> {
        let mut w = StreamWriter {
            c,
            // Grains start after the header and descriptor, on a grain boundary as VMware does.
            pos: GRAIN,
            job: None,
        };
        if matches!(w.c.out, Out::Stream { .. }) {
            // A stream cannot come back to the start: the header goes first, with its grain
            // directory "at the end" as always.
            let head = w.head()?;
            w.c.out.write_all_at(&head, 0)?;
        }
        Ok(w)
    }

    /// The header (grain directory at the end) and descriptor, padded to one grain.
    fn head(&self) -> Result<Vec<u8>> {
        let mut h = self.header();
        h.gd_offset = GD_AT_END;
        let mut head = h.to_bytes().to_vec();
        head.extend_from_slice(&self.c.descriptor(Subformat::StreamOptimized.name())?);
        head.resize(GRAIN as usize, 0);
        Ok(head)
    }

    fn header(&self) -> SparseHeader {
        let mut h = self
            .c
            .header(3, FLAG_NL_DETECT | FLAG_COMPRESS | FLAG_MARKER);
        h.grain_offset = GRAIN_SECTORS;
        h.compress_algorithm = COMPRESSION_DEFLATE;
        h
    }

    /// Starts compressing the gathered grains in the background, after writing the batch
    /// compressed before them: compression of one batch overlaps reading the next.
    fn compress_out(&mut self) -> Result<()> {
        let grains = std::mem::take(&mut self.c.done);
        self.write_job()?;
        if grains.is_empty() {
            return Ok(());
        }
        let blocks: Vec<Bytes> = grains.iter().map(|(_, b)| b.clone()).collect();
        let handle = std::thread::Builder::new()
            .name("vmdk-compress".into())
            .spawn(move || compress_batch(Codec::Zlib, &blocks))
            .map_err(|e| Error::io("start compression thread for", self.c.out.path(), e))?;
        self.job = Some(Job { grains, handle });
        Ok(())
    }

    /// Waits for the batch being compressed and appends its grains with their markers.
    fn write_job(&mut self) -> Result<()> {
        let Some(Job { grains, handle }) = self.job.take() else {
            return Ok(());
        };
        let path = self.c.out.path().to_path_buf();
        let failed = |what: String| Error::io("compress", &path, std::io::Error::other(what));
        let compressed = handle
            .join()
            .map_err(|_| failed("the compression thread panicked".into()))?;
        let total: usize = compressed.iter().map(|c| c.len() + 512).sum();
        let mut out = Vec::with_capacity(total);
        for ((g, raw), c) in grains.iter().zip(&compressed) {
            if c.is_empty() {
                return Err(failed(format!("grain {g} did not compress")));
            }
            let at = self.pos + out.len() as u64;
            self.c.set_gte(*g, at / SECTOR)?;
            out.extend_from_slice(&(g * GRAIN_SECTORS).to_le_bytes());
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(c);
            pad_sector(&mut out);
            self.c.data_bytes += raw.len() as u64;
        }
        self.c.out.write_all_at(&out, self.pos)?;
        self.pos += out.len() as u64;
        Ok(())
    }

    fn gathered(&mut self) -> Result<()> {
        let pending: usize = self.c.done.iter().map(|(_, b)| b.len()).sum();
        if pending >= STREAM_BATCH {
            self.compress_out()?;
        }
        Ok(())
    }
}

impl DiskWriter for StreamWriter {
    fn write_extent(&mut self, e: Extent) -> Result<()> {
        self.c.accept(e)?;
        self.gathered()
    }

    fn finish(mut self: Box<Self>) -> Result<DiskSummary> {
        self.c.grains.flush(&mut self.c.done);
        self.compress_out()?;
        self.write_job()?;
        let mut tail = Vec::new();
        let gd_sectors = (self.c.gt_count * 4).div_ceil(SECTOR);
        let mut gd = Vec::with_capacity((gd_sectors * SECTOR) as usize);
        for i in 0..self.c.gt_count {
            let Some(t) = self.c.gt_bytes(i) else {
                gd.extend_from_slice(&0u32.to_le_bytes());
                continue;
            };
            tail.extend_from_slice(&Marker::sector(MARKER_GT, GT_SECTORS));
            let at = (self.pos + tail.len() as u64) / SECTOR;
            let at = u32::try_from(at).map_err(|_| {
                Error::unsupported(
                    self.c.out.path(),
                    Format::Vmdk,
                    "a sparse extent over 2 TiB",
                )
            })?;
            gd.extend_from_slice(&at.to_le_bytes());
            tail.extend_from_slice(&t);
            if tail.len() >= WRITE_BATCH {
                self.c.out.write_all_at(&tail, self.pos)?;
                self.pos += tail.len() as u64;
                tail.clear();
            }
        }
        pad_sector(&mut gd);
        tail.extend_from_slice(&Marker::sector(MARKER_GD, gd_sectors));
        let gd_offset = (self.pos + tail.len() as u64) / SECTOR;
        tail.extend_from_slice(&gd);
        let mut footer = self.header();
        footer.gd_offset = gd_offset;
        tail.extend_from_slice(&Marker::sector(MARKER_FOOTER, 1));
        tail.extend_from_slice(&footer.to_bytes());
        tail.extend_from_slice(&[0u8; SECTOR as usize]);
        self.c.out.write_all_at(&tail, self.pos)?;
        let file_size = self.pos + tail.len() as u64;
        if let Out::File(_) = self.c.out {
            // The content ID is known now: the header goes in last.
            let head = self.head()?;
            self.c.out.write_all_at(&head, 0)?;
        }
        self.c.summary(file_size)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::header::GRAIN_MARKER_LEN;
    use super::*;

    /// Size of a grain record written for `compressed_len` bytes (marker, data, padding).
    fn record_len(compressed_len: u64) -> u64 {
        (GRAIN_MARKER_LEN + compressed_len).next_multiple_of(SECTOR)
    }

    #[test]
    fn grains_are_cut_whole_and_zero_grains_dropped() {
        let mut g = Grains::new(3 * GRAIN + 1024);
        let mut done = Vec::new();
        // Half a grain, then the other half, then a whole grain of zeros, then a short tail.
        g.push(0, Bytes::from(vec![1u8; 32768]), &mut done);
        assert!(done.is_empty());
        g.push(32768, Bytes::from(vec![2u8; 32768]), &mut done);
        assert_eq!(done.len(), 1);
        g.push(GRAIN, Bytes::from(vec![0u8; GRAIN as usize]), &mut done);
        g.push(3 * GRAIN + 512, Bytes::from(vec![3u8; 512]), &mut done);
        g.flush(&mut done);
        assert_eq!(done.len(), 2);
        assert_eq!(done[1].0, 3);
        assert_eq!(done[1].1.len(), 1024);
        assert_eq!(&done[1].1[..512], &[0u8; 512][..]);
        assert_eq!(record_len(500), 512);
        assert_eq!(record_len(501), 1024);
    }

    #[test]
    fn options_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.vmdk");
        let bad = |o: &str, c: bool| {
            let mut opts = CreateOptions::parse(o).unwrap();
            opts.compress = c;
            create(&p, 1 << 20, &opts).is_err()
        };
        assert!(bad("subformat=monolithicFlat", false));
        assert!(bad("adapter_type=scsi", false));
        assert!(bad("", true));
        assert!(bad("cluster_size=64K", false));
        assert!(!bad(
            "subformat=streamOptimized,adapter_type=lsilogic",
            true
        ));
    }
}
