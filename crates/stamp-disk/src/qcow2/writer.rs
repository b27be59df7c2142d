//! Writing qcow2 images in one streaming pass: the header cluster first, data clusters appended
//! as extents arrive (batched into large writes, or compressed in parallel batches and packed
//! back to back), and at `finish` the L2 tables, the L1 table, the refcount table and refcount
//! blocks, then the final header.

use std::io::IoSlice;
use std::path::Path;

use bytes::Bytes;

use super::header::{
    Header, INCOMPAT_COMPRESSION, MAX_BACKING_NAME, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS,
    V2_HEADER_LEN, V3_HEADER_LEN,
};
use super::table::{Geometry, OFLAG_COPIED, OFLAG_ZERO, SECTOR};
use crate::compress::{self, Codec};
use crate::file::OutputFile;
use crate::{
    Compression, CreateOptions, DiskReader, DiskSummary, DiskWriter, Error, Extent, ExtentOrder,
    Format, Result, is_zero,
};

/// Default cluster size (as qemu): 64 KiB.
pub const DEFAULT_CLUSTER_SIZE: u64 = 64 << 10;
/// Bytes of uncompressed data clusters gathered before one write.
const WRITE_BATCH: usize = 8 << 20;
/// Most buffers handed to one pwritev (Linux's IOV_MAX).
const MAX_IOV: usize = 1024;
/// Bytes of clusters gathered before one parallel compression batch.
const COMPRESS_BATCH: usize = 16 << 20;
/// Refcount order written: 16-bit refcounts, as qemu's default.
const REFCOUNT_ORDER: u32 = 4;

/// Writes a qcow2 image from a stream of extents.
pub struct Qcow2Writer {
    out: OutputFile,
    order: ExtentOrder,
    header: Header,
    geo: Geometry,
    codec: Option<Codec>,
    backing: Option<Box<dyn DiskReader>>,
    /// Where the backing file may have data (sorted): elsewhere, zeros need not be stored.
    backing_alloc: Vec<std::ops::Range<u64>>,
    /// Guest cluster being gathered, its bytes and the parts of it that extents covered.
    cur: Option<u64>,
    cur_buf: Vec<u8>,
    cur_covered: Vec<(usize, usize)>,
    /// Uncompressed clusters waiting to be written at `wbuf_at`, without copying them.
    wbuf: Vec<Bytes>,
    wbuf_len: usize,
    wbuf_at: u64,
    /// Clusters waiting to be compressed: (guest cluster, bytes).
    batch: Vec<(u64, Bytes)>,
    batch_bytes: usize,
    /// Next free byte of the file (compressed data packs at byte granularity).
    next: u64,
    /// L2 tables by L1 index, only where something was written.
    l2: Vec<Option<Box<[u64]>>>,
    /// Refcount of each host cluster of the data area.
    refs: Vec<u16>,
    data_bytes: u64,
}

impl std::fmt::Debug for Qcow2Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Writer")
            .field("path", &self.out.path())
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// Creates a qcow2 image of `size` bytes at `path` (size 0 with a backing file: the backing
/// file's size).
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<Qcow2Writer> {
    opts.allow_only(
        Format::Qcow2,
        &[
            "compress",
            "compat",
            "cluster_size",
            "compression_type",
            "backing_file",
            "backing_fmt",
        ],
    )?;
    let version = match opts.compat.as_deref() {
        None | Some("1.1") | Some("v3") => 3,
        Some("0.10") | Some("v2") => 2,
        Some(other) => {
            return Err(Error::InvalidOption(format!(
                "qcow2 compat={other} is not valid (use 0.10 or v2, 1.1 or v3)"
            )));
        }
    };
    let cs = opts.cluster_size.unwrap_or(DEFAULT_CLUSTER_SIZE);
    if !cs.is_power_of_two() || !((1 << MIN_CLUSTER_BITS)..=(1 << MAX_CLUSTER_BITS)).contains(&cs) {
        return Err(Error::InvalidOption(format!(
            "qcow2 cluster_size={cs} is not valid (a power of two from 512 to 2M)"
        )));
    }
    let zstd = opts.compression_type == Some(Compression::Zstd);
    if zstd && version < 3 {
        return Err(Error::InvalidOption(
            "qcow2 compression_type=zstd needs compat=1.1 (v3)".into(),
        ));
    }
    let mut header = Header {
        version,
        cluster_bits: cs.trailing_zeros(),
        refcount_order: REFCOUNT_ORDER,
        header_length: if version >= 3 {
            V3_HEADER_LEN
        } else {
            V2_HEADER_LEN
        },
        ..Default::default()
    };
    if zstd {
        header.incompatible |= INCOMPAT_COMPRESSION;
        header.compression_type = 1;
    }
    let mut backing = None;
    let mut backing_alloc = Vec::new();
    let mut size = size;
    if let Some(b) = &opts.backing_file {
        let name = b.to_str().ok_or_else(|| {
            Error::InvalidOption(format!(
                "backing file name {} is not valid UTF-8",
                b.display()
            ))
        })?;
        if name.is_empty() || name.len() > MAX_BACKING_NAME as usize {
            return Err(Error::InvalidOption(format!(
                "backing file name must be 1 to {MAX_BACKING_NAME} bytes long"
            )));
        }
        let resolved = crate::resolve_relative(path, name);
        if !resolved.exists() {
            return Err(Error::Missing {
                path: path.to_path_buf(),
                what: "backing file",
                missing: resolved,
            });
        }
        let fmt = match opts.backing_fmt {
            Some(f) => f,
            None => crate::detect_path(&resolved)?,
        };
        let r = crate::open_backing(path, name, Some(fmt), 0, "backing file")?;
        if size == 0 {
            size = r.virtual_size();
        }
        header.backing_file = Some(name.to_string());
        header.backing_format = Some(fmt.qemu_name().unwrap_or(fmt.name()).to_string());
        backing_alloc = crate::convert::merge_ranges(r.allocation()?);
        backing = Some(r);
    } else if opts.backing_fmt.is_some() {
        return Err(Error::InvalidOption(
            "qcow2 backing_fmt needs backing_file".into(),
        ));
    }
    if size > super::header::MAX_VIRTUAL_SIZE {
        return Err(Error::InvalidOption(format!(
            "qcow2 virtual size {size} is over 2^61 bytes"
        )));
    }
    // qemu reads sizes in whole 512-byte sectors (and rounds sizes up on create): so do we.
    header.size = size.div_ceil(512) * 512;
    let geo = Geometry::new(&header);
    let l1_entries = header.l1_entries_needed().max(1);
    if l1_entries * 8 > super::header::MAX_L1_BYTES {
        return Err(Error::InvalidOption(format!(
            "a {size}-byte qcow2 disk needs an L1 table over qemu's 32 MiB limit: use a larger cluster_size"
        )));
    }
    header.l1_size = l1_entries as u32;
    // Fail early if the header does not fit in a cluster.
    header.encode()?;
    let codec = opts
        .compress
        .then_some(if zstd { Codec::Zstd } else { Codec::Deflate });
    let out = OutputFile::create(path)?;
    let mut l2 = Vec::new();
    l2.resize_with(l1_entries as usize, || None);
    Ok(Qcow2Writer {
        out,
        order: ExtentOrder::new(size),
        header,
        geo,
        codec,
        backing,
        backing_alloc,
        cur: None,
        cur_buf: vec![0u8; cs as usize],
        cur_covered: Vec::new(),
        wbuf: Vec::new(),
        wbuf_len: 0,
        wbuf_at: cs,
        batch: Vec::new(),
        batch_bytes: 0,
        next: cs,
        l2,
        refs: vec![1],
        data_bytes: 0,
    })
}

impl Qcow2Writer {
    /// Sets the L2 entry of guest cluster `idx`.
    fn set_l2(&mut self, idx: u64, entry: u64) {
        let per = self.geo.l2_entries;
        let Some(slot) = self.l2.get_mut((idx / per) as usize) else {
            return;
        };
        let t = slot.get_or_insert_with(|| vec![0u64; per as usize].into_boxed_slice());
        if let Some(e) = t.get_mut((idx % per) as usize) {
            *e = entry;
        }
    }

    /// Counts one more reference to every host cluster that `len` bytes at `off` touch.
    fn add_refs(&mut self, off: u64, len: u64) -> Result<()> {
        let cs = self.geo.cluster_size;
        let first = (off / cs) as usize;
        let last = (off + len).div_ceil(cs) as usize;
        if self.refs.len() < last {
            self.refs.resize(last, 0);
        }
        for r in &mut self.refs[first..last] {
            *r = r.checked_add(1).ok_or_else(|| {
                Error::InvalidOption(
                    "a host cluster is shared by over 65535 compressed clusters".into(),
                )
            })?;
        }
        Ok(())
    }

    /// Writes out the gathered uncompressed clusters with as few pwritev calls as it takes.
    fn flush_wbuf(&mut self) -> Result<()> {
        let mut at = self.wbuf_at;
        let (mut idx, mut skip) = (0usize, 0usize);
        while idx < self.wbuf.len() {
            let end = (idx + MAX_IOV).min(self.wbuf.len());
            let slices: Vec<IoSlice<'_>> = self.wbuf[idx..end]
                .iter()
                .enumerate()
                .map(|(k, b)| IoSlice::new(if k == 0 { &b[skip..] } else { b }))
                .collect();
            let n = match rustix::io::pwritev(self.out.file(), &slices, at) {
                Ok(0) => {
                    return Err(Error::io(
                        "write",
                        self.out.path(),
                        std::io::ErrorKind::WriteZero.into(),
                    ));
                }
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Error::io("write", self.out.path(), e.into())),
            };
            at += n as u64;
            let mut left = n;
            while left > 0 && idx < self.wbuf.len() {
                let rem = self.wbuf[idx].len() - skip;
                if left >= rem {
                    left -= rem;
                    idx += 1;
                    skip = 0;
                } else {
                    skip += left;
                    left = 0;
                }
            }
        }
        self.wbuf_at = at;
        self.wbuf.clear();
        self.wbuf_len = 0;
        Ok(())
    }

    /// Returns true if and only if the backing file may have data in guest cluster `idx`.
    fn backing_has_data(&self, idx: u64) -> bool {
        let cs = self.geo.cluster_size;
        let (start, end) = (idx * cs, (idx + 1) * cs);
        let i = self.backing_alloc.partition_point(|r| r.end <= start);
        self.backing_alloc.get(i).is_some_and(|r| r.start < end)
    }

    /// Stores the full cluster `data` for guest cluster `idx`. `explicit` says an extent covered
    /// it (with a backing file, an all-zero cluster must then hide the backing file's data).
    fn store(&mut self, idx: u64, data: Bytes, explicit: bool) -> Result<()> {
        if is_zero(&data) {
            if self.backing.is_some() && explicit && self.backing_has_data(idx) {
                if self.header.version >= 3 {
                    self.set_l2(idx, OFLAG_ZERO);
                    return Ok(());
                }
            } else {
                return Ok(());
            }
        }
        if self.codec.is_some() {
            self.batch_bytes += data.len();
            self.batch.push((idx, data));
            if self.batch_bytes >= COMPRESS_BATCH {
                self.flush_batch()?;
            }
            return Ok(());
        }
        let host = self.next;
        self.wbuf_len += data.len();
        self.wbuf.push(data);
        self.next += self.geo.cluster_size;
        self.add_refs(host, self.geo.cluster_size)?;
        self.set_l2(idx, host | OFLAG_COPIED);
        if self.wbuf_len >= WRITE_BATCH || self.wbuf.len() >= MAX_IOV {
            self.flush_wbuf()?;
        }
        Ok(())
    }

    /// Compresses the gathered clusters in parallel and packs them back to back at the end of
    /// the file; a cluster that does not get smaller is stored as it is.
    fn flush_batch(&mut self) -> Result<()> {
        let Some(codec) = self.codec else {
            return Ok(());
        };
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let blocks: Vec<&[u8]> = batch.iter().map(|(_, b)| b.as_ref()).collect();
        let packed = compress::compress_batch(codec, &blocks);
        let cs = self.geo.cluster_size;
        let start = self.next;
        let mut out = Vec::with_capacity(COMPRESS_BATCH);
        for ((idx, raw), c) in batch.iter().zip(&packed) {
            if !c.is_empty() && (c.len() as u64) < cs {
                let at = self.next;
                if at > self.geo.coffset_mask {
                    return Err(Error::InvalidOption(format!(
                        "compressed data at {at:#x} is past what a qcow2 compressed cluster descriptor can address with {cs}-byte clusters"
                    )));
                }
                self.set_l2(*idx, self.geo.encode_compressed(at, c.len() as u64));
                let end = (at + c.len() as u64).div_ceil(SECTOR) * SECTOR;
                self.add_refs(at, end - at)?;
                out.extend_from_slice(c);
                self.next += c.len() as u64;
            } else {
                let at = self.next.div_ceil(cs) * cs;
                out.resize((at - start) as usize, 0);
                self.set_l2(*idx, at | OFLAG_COPIED);
                self.add_refs(at, cs)?;
                out.extend_from_slice(raw);
                self.next = at + cs;
            }
        }
        self.out.write_all_at(&out, start)?;
        Ok(())
    }

    /// Stores the cluster being gathered, filling what extents did not cover from the backing
    /// file (or zeros).
    fn flush_cluster(&mut self) -> Result<()> {
        let Some(idx) = self.cur.take() else {
            return Ok(());
        };
        let mut buf = std::mem::take(&mut self.cur_buf);
        let mut covered = std::mem::take(&mut self.cur_covered);
        let r = self
            .fill_from_backing(idx, &mut buf, &mut covered)
            .and_then(|()| self.store(idx, Bytes::copy_from_slice(&buf), true));
        // Whatever happened, the gathering buffer is ready for the next cluster.
        buf.fill(0);
        self.cur_buf = buf;
        covered.clear();
        self.cur_covered = covered;
        r
    }

    /// Copy-on-write: fills the parts of guest cluster `idx` that no extent covered with the
    /// backing file's contents, where it has data.
    fn fill_from_backing(
        &self,
        idx: u64,
        buf: &mut [u8],
        covered: &mut [(usize, usize)],
    ) -> Result<()> {
        let Some(b) = self.backing.as_ref() else {
            return Ok(());
        };
        if !self.backing_has_data(idx) {
            return Ok(());
        }
        let cs = buf.len();
        covered.sort_unstable();
        let mut gaps = Vec::new();
        let mut pos = 0usize;
        for &(s, e) in covered.iter() {
            if s > pos {
                gaps.push((pos, s));
            }
            pos = pos.max(e);
        }
        if pos < cs {
            gaps.push((pos, cs));
        }
        let base = idx * cs as u64;
        let limit = b.virtual_size().min(self.header.size);
        for (s, e) in gaps {
            let g0 = base + s as u64;
            let n = limit.saturating_sub(g0).min((e - s) as u64) as usize;
            if n > 0 {
                b.read_at(&mut buf[s..s + n], g0)?;
            }
        }
        Ok(())
    }

    /// Takes `len` bytes at guest `offset`: `Some(data)` or zeros.
    fn take(&mut self, mut offset: u64, data: Option<&Bytes>, len: u64) -> Result<()> {
        let cs = self.geo.cluster_size;
        let end = offset + len;
        while offset < end {
            let idx = offset / cs;
            let within = (offset % cs) as usize;
            let n = (cs - within as u64).min(end - offset) as usize;
            let at = (len - (end - offset)) as usize;
            let piece = data
                .filter(|d| at + n <= d.len())
                .map(|d| d.slice(at..at + n));
            if within == 0 && n as u64 == cs && self.cur != Some(idx) {
                // A whole cluster: no gathering needed.
                self.flush_cluster()?;
                match piece {
                    Some(p) => self.store(idx, p, true)?,
                    None if self.backing.is_some() && self.backing_has_data(idx) => {
                        self.store(idx, Bytes::from(vec![0u8; n]), true)?;
                    }
                    None => {}
                }
            } else {
                if self.cur != Some(idx) {
                    self.flush_cluster()?;
                    self.cur = Some(idx);
                }
                if let Some(p) = piece {
                    self.cur_buf[within..within + n].copy_from_slice(&p);
                }
                self.cur_covered.push((within, within + n));
            }
            offset += n as u64;
        }
        Ok(())
    }

    /// Lays out and writes the L2 tables, the L1 table and the refcount structures, then the
    /// header. Returns the file's final length.
    fn write_metadata(&mut self) -> Result<u64> {
        let cs = self.geo.cluster_size;
        let data_end = self.next.div_ceil(cs) * cs;
        let n_l2 = self.l2.iter().filter(|t| t.is_some()).count() as u64;
        let l1_bytes = self.l2.len() as u64 * 8;
        let l1_clusters = l1_bytes.div_ceil(cs).max(1);
        let l1_at = data_end + n_l2 * cs;
        let rt_at = l1_at + l1_clusters * cs;
        let before = rt_at / cs;
        // The refcount table and blocks must count themselves: grow until they do.
        let per_block = cs * 8 / (1 << REFCOUNT_ORDER);
        let (mut n_rt, mut n_rb) = (1u64, 1u64);
        loop {
            let total = before + n_rt + n_rb;
            let need_rb = total.div_ceil(per_block);
            let need_rt = (need_rb * 8).div_ceil(cs);
            if need_rb == n_rb && need_rt == n_rt {
                break;
            }
            n_rb = need_rb.max(n_rb);
            n_rt = need_rt.max(n_rt);
        }
        if n_rt * cs > super::header::MAX_REFTABLE_BYTES {
            return Err(Error::InvalidOption(
                "the qcow2 refcount table would be over qemu's 8 MiB limit: use a larger cluster_size".into(),
            ));
        }
        let rb_at = rt_at + n_rt * cs;
        let total = before + n_rt + n_rb;
        let mut meta = vec![0u8; ((total * cs) - data_end) as usize];
        // L2 tables, then L1.
        let mut next_l2 = data_end;
        let mut l1 = vec![0u64; self.l2.len()];
        for (i, t) in self.l2.iter().enumerate() {
            let Some(t) = t else { continue };
            let at = (next_l2 - data_end) as usize;
            for (k, e) in t.iter().enumerate() {
                meta[at + k * 8..at + k * 8 + 8].copy_from_slice(&e.to_be_bytes());
            }
            l1[i] = next_l2 | OFLAG_COPIED;
            next_l2 += cs;
        }
        let at = (l1_at - data_end) as usize;
        for (k, e) in l1.iter().enumerate() {
            meta[at + k * 8..at + k * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        // Refcount table and blocks.
        let at = (rt_at - data_end) as usize;
        for b in 0..n_rb {
            let e = rb_at + b * cs;
            let o = at + b as usize * 8;
            meta[o..o + 8].copy_from_slice(&e.to_be_bytes());
        }
        let data_clusters = data_end / cs;
        let at = (rb_at - data_end) as usize;
        for c in 0..total {
            let v: u16 = if c < data_clusters {
                self.refs.get(c as usize).copied().unwrap_or(0)
            } else {
                1
            };
            let o = at + c as usize * 2;
            meta[o..o + 2].copy_from_slice(&v.to_be_bytes());
        }
        self.out.write_all_at(&meta, data_end)?;
        self.header.l1_table_offset = l1_at;
        self.header.refcount_table_offset = rt_at;
        self.header.refcount_table_clusters = n_rt as u32;
        self.out.write_all_at(&self.header.encode()?, 0)?;
        let len = total * cs;
        self.out.set_len(len)?;
        Ok(len)
    }
}

impl DiskWriter for Qcow2Writer {
    fn write_extent(&mut self, e: Extent) -> Result<()> {
        self.order.accept(&e)?;
        match e {
            Extent::Data { offset, bytes } => {
                self.data_bytes += bytes.len() as u64;
                let len = bytes.len() as u64;
                self.take(offset, Some(&bytes), len)
            }
            // Without a backing file, zeros are what unwritten clusters read as.
            Extent::Zero { offset, len } if self.backing.is_some() => self.take(offset, None, len),
            Extent::Zero { .. } => Ok(()),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<DiskSummary> {
        self.flush_cluster()?;
        self.flush_batch()?;
        self.flush_wbuf()?;
        let file_size = self.write_metadata()?;
        let path = self.out.path().to_path_buf();
        let Qcow2Writer {
            out,
            header,
            data_bytes,
            ..
        } = *self;
        out.commit()?;
        Ok(DiskSummary {
            path,
            format: Format::Qcow2.name().into(),
            virtual_size: header.size,
            file_size,
            data_bytes,
        })
    }
}
