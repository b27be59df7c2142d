//! Writing a GCE image in one pass: the gzip header and the tar header of `disk.raw` first (the
//! size is known up front), then the disk in [`CHUNK`]-sized pieces, then the end of the archive
//! and the gzip trailer.
//!
//! Every piece is an independent deflate segment ending with a full flush, so pieces concatenate
//! into one deflate stream: chunks holding data are compressed in parallel batches (in order,
//! so the output is deterministic) while the next batch is gathered, and chunks of zeros reuse
//! one segment compressed once. The gzip CRC-32 is the combination of the pieces' CRCs.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crc32fast::Hasher;
use rayon::prelude::*;

use super::archive::{
    BLOCK, FINAL_BLOCK, GZIP_HEADER, RECORD, deflate_segment, gzip_trailer, oldgnu_header,
    zeros_crc,
};
use crate::file::OutputFile;
use crate::{
    CreateOptions, DiskSummary, DiskWriter, Error, Extent, ExtentOrder, Format, Result, is_zero,
};

/// The size of `disk.raw` is a multiple of this (GCE refuses other sizes).
pub const SIZE_UNIT: u64 = 1 << 30;

/// The name of the disk in the archive, which GCE requires.
pub const MEMBER: &str = "disk.raw";

/// Unit of compression: the disk is cut at multiples of this; each chunk is one deflate segment.
/// Large enough that restarting the compressor's dictionary costs nothing measurable, small
/// enough that a batch of them keeps every core busy with little memory.
pub const CHUNK: u64 = 1 << 20;

/// Deflate level, gzip's default.
const LEVEL: u32 = 6;

/// Fewest chunks gathered before a batch is compressed; more on machines with many cores (two
/// per core), at most [`MAX_BATCH_CHUNKS`]. Memory: two batches of [`CHUNK`]s and their output.
const MIN_BATCH_CHUNKS: usize = 16;

/// Most chunks in a batch (bounds memory on machines with very many cores).
const MAX_BATCH_CHUNKS: usize = 128;

/// Output gathered before it is written to the file.
const WRITE_BATCH: usize = 4 << 20;

/// A run of the disk in the order it is written: zero chunks, or the next data chunk of the
/// batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// This many chunks of zeros.
    Zeros(u64),
    /// The next chunk of the batch.
    Data,
}

/// A compressed chunk and the CRC-32 state of its uncompressed bytes.
type Compressed = (Vec<u8>, Hasher);

/// A batch of pieces whose data chunks a thread is compressing (on the rayon pool).
struct Job {
    pieces: Vec<Piece>,
    handle: JoinHandle<std::result::Result<Vec<Compressed>, String>>,
}

/// Writes a GCE image: a gzip-compressed oldgnu tar holding `disk.raw`.
pub struct GceWriter {
    out: OutputFile,
    order: ExtentOrder,
    /// Size of `disk.raw`: the virtual size rounded up to [`SIZE_UNIT`].
    size: u64,
    /// Index of the first chunk not yet handed to `pieces`.
    next_chunk: u64,
    /// The chunk being filled: its index and contents.
    current: Option<(u64, Vec<u8>)>,
    /// Pieces gathered for the next batch, and that batch's data chunks.
    pieces: Vec<Piece>,
    chunks: Vec<Vec<u8>>,
    batch_chunks: usize,
    /// The batch being compressed in the background while the next is gathered.
    job: Option<Job>,
    /// One chunk of zeros, compressed, and its CRC-32 state.
    zero_segment: Vec<u8>,
    zero_crc: Hasher,
    /// CRC-32 state of everything compressed so far.
    crc: Hasher,
    /// Output not yet written, and the length of what was.
    buf: Vec<u8>,
    written: u64,
    data_bytes: u64,
}

impl std::fmt::Debug for GceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GceWriter")
            .field("path", &self.out.path())
            .field("size", &self.size)
            .field("next_chunk", &self.next_chunk)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

/// Modification time of `disk.raw`: `SOURCE_DATE_EPOCH` if set, else 0, so the same disk always
/// gives the same bytes.
fn mtime() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The size of `disk.raw` for a disk of `virtual_size` bytes: rounded up to a whole GiB.
pub fn disk_size(virtual_size: u64) -> Option<u64> {
    virtual_size.checked_next_multiple_of(SIZE_UNIT)
}

/// Creates a GCE image of a `size`-byte disk at `path`; `disk.raw` is `size` rounded up to a
/// whole GiB (the rest is zeros). No options are taken (`-c` is accepted: the image is always
/// compressed).
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn DiskWriter>> {
    opts.allow_only(Format::Gce, &["compress"])?;
    let rounded = disk_size(size)
        .ok_or_else(|| Error::unsupported(path, Format::Gce, format!("a {size}-byte disk")))?;
    let failed = |e: String| Error::io("compress", path, std::io::Error::other(e));
    let zero_chunk = vec![0u8; CHUNK as usize];
    let zero_segment = deflate_segment(&zero_chunk, LEVEL).map_err(failed)?;
    let mut zero_crc = Hasher::new();
    zero_crc.update(&zero_chunk);
    let header = oldgnu_header(MEMBER, rounded, mtime());
    let mut crc = Hasher::new();
    crc.update(&header);
    let mut buf = Vec::with_capacity(WRITE_BATCH + 2 * CHUNK as usize);
    buf.extend_from_slice(&GZIP_HEADER);
    buf.extend(deflate_segment(&header, LEVEL).map_err(failed)?);
    Ok(Box::new(GceWriter {
        out: OutputFile::create(path)?,
        order: ExtentOrder::new(size),
        size: rounded,
        next_chunk: 0,
        current: None,
        pieces: Vec::new(),
        chunks: Vec::new(),
        batch_chunks: (2 * rayon::current_num_threads()).clamp(MIN_BATCH_CHUNKS, MAX_BATCH_CHUNKS),
        job: None,
        zero_segment,
        zero_crc,
        crc,
        buf,
        written: 0,
        data_bytes: 0,
    }))
}

impl GceWriter {
    /// Makes chunk `index` the one being filled, handing over the one before it and the zero
    /// chunks between.
    fn open_chunk(&mut self, index: u64) -> Result<()> {
        if let Some((i, _)) = &self.current {
            if *i == index {
                return Ok(());
            }
            self.close_chunk()?;
        }
        self.push_zeros(index - self.next_chunk);
        self.current = Some((index, vec![0u8; CHUNK as usize]));
        Ok(())
    }

    /// Hands the chunk being filled to the batch.
    fn close_chunk(&mut self) -> Result<()> {
        let Some((index, data)) = self.current.take() else {
            return Ok(());
        };
        self.push_zeros(index - self.next_chunk);
        self.next_chunk = index + 1;
        self.pieces.push(Piece::Data);
        self.chunks.push(data);
        if self.chunks.len() >= self.batch_chunks {
            self.compress_out()?;
        }
        Ok(())
    }

    /// Adds `count` zero chunks after those already handed over.
    fn push_zeros(&mut self, count: u64) {
        if count == 0 {
            return;
        }
        self.next_chunk += count;
        match self.pieces.last_mut() {
            Some(Piece::Zeros(n)) => *n += count,
            _ => self.pieces.push(Piece::Zeros(count)),
        }
    }

    /// Writes the batch being compressed, then starts compressing the gathered one in the
    /// background (or writes it at once if it is all zeros).
    fn compress_out(&mut self) -> Result<()> {
        let pieces = std::mem::take(&mut self.pieces);
        let chunks = std::mem::take(&mut self.chunks);
        self.write_job()?;
        if chunks.is_empty() {
            return self.write_pieces(&pieces, Vec::new());
        }
        let handle = std::thread::Builder::new()
            .name("gce-compress".into())
            .spawn(move || {
                chunks
                    .par_iter()
                    .map(|c| {
                        let mut h = Hasher::new();
                        h.update(c);
                        deflate_segment(c, LEVEL).map(|seg| (seg, h))
                    })
                    .collect()
            })
            .map_err(|e| Error::io("start compression thread for", self.out.path(), e))?;
        self.job = Some(Job { pieces, handle });
        Ok(())
    }

    /// Waits for the batch being compressed and writes it.
    fn write_job(&mut self) -> Result<()> {
        let Some(Job { pieces, handle }) = self.job.take() else {
            return Ok(());
        };
        let compressed = handle
            .join()
            .map_err(|_| "the compression thread panicked".to_string())
            .and_then(|r| r)
            .map_err(|e| Error::io("compress", self.out.path(), std::io::Error::other(e)))?;
        self.write_pieces(&pieces, compressed)
    }

    /// Appends `pieces` to the output, taking data chunks from `compressed` in order.
    fn write_pieces(&mut self, pieces: &[Piece], compressed: Vec<Compressed>) -> Result<()> {
        let mut compressed = compressed.into_iter();
        for piece in pieces {
            match *piece {
                Piece::Zeros(n) => {
                    for _ in 0..n {
                        self.buf.extend_from_slice(&self.zero_segment);
                        self.flush_if_full()?;
                    }
                    self.crc.combine(&zeros_crc(&self.zero_crc, n));
                }
                Piece::Data => {
                    let (segment, crc) = compressed.next().ok_or_else(|| {
                        Error::io(
                            "compress",
                            self.out.path(),
                            std::io::Error::other("a compressed chunk is missing"),
                        )
                    })?;
                    self.buf.extend_from_slice(&segment);
                    self.crc.combine(&crc);
                    self.flush_if_full()?;
                }
            }
        }
        Ok(())
    }

    /// Writes the output gathered once there is enough of it.
    fn flush_if_full(&mut self) -> Result<()> {
        if self.buf.len() >= WRITE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the output gathered.
    fn flush(&mut self) -> Result<()> {
        self.out.append(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// The final path.
    fn path(&self) -> PathBuf {
        self.out.path().to_path_buf()
    }
}

impl DiskWriter for GceWriter {
    fn write_extent(&mut self, e: Extent) -> Result<()> {
        self.order.accept(&e)?;
        let Extent::Data { offset, bytes } = e else {
            return Ok(());
        };
        self.data_bytes += bytes.len() as u64;
        let mut pos = 0usize;
        while pos < bytes.len() {
            let at = offset + pos as u64;
            let index = at / CHUNK;
            let within = (at % CHUNK) as usize;
            let n = (CHUNK as usize - within).min(bytes.len() - pos);
            let part = &bytes[pos..pos + n];
            pos += n;
            if is_zero(part) {
                continue;
            }
            self.open_chunk(index)?;
            if let Some((_, chunk)) = &mut self.current {
                chunk[within..within + n].copy_from_slice(part);
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<DiskSummary> {
        self.close_chunk()?;
        self.push_zeros(self.size / CHUNK - self.next_chunk);
        self.compress_out()?;
        self.write_job()?;
        // The end of the archive: two zero blocks, then zeros to a whole record as GNU tar pads.
        let stream = BLOCK + self.size + 2 * BLOCK;
        let end = vec![0u8; (stream.next_multiple_of(RECORD) - stream + 2 * BLOCK) as usize];
        let segment = deflate_segment(&end, LEVEL)
            .map_err(|e| Error::io("compress", self.path(), std::io::Error::other(e)))?;
        self.buf.extend_from_slice(&segment);
        let mut h = Hasher::new();
        h.update(&end);
        self.crc.combine(&h);
        self.buf.extend_from_slice(&FINAL_BLOCK);
        let trailer = gzip_trailer(&self.crc);
        self.buf.extend_from_slice(&trailer);
        self.flush()?;
        let GceWriter {
            out,
            size,
            written,
            data_bytes,
            ..
        } = *self;
        let path = out.path().to_path_buf();
        out.commit()?;
        Ok(DiskSummary {
            path,
            format: Format::Gce.name().into(),
            virtual_size: size,
            file_size: written,
            data_bytes,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::io::Read;

    /// Reads back the archive at `path` with flate2 and the tar crate: (member name, contents).
    fn read_back(path: &Path) -> (String, Vec<u8>, tar::Header) {
        let f = std::fs::File::open(path).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
        let mut entries = ar.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let header = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        assert!(entries.next().is_none());
        (name, data, header)
    }

    #[test]
    fn disk_size_rounds_up_to_whole_gib() {
        assert_eq!(disk_size(0), Some(0));
        assert_eq!(disk_size(1), Some(SIZE_UNIT));
        assert_eq!(disk_size(SIZE_UNIT), Some(SIZE_UNIT));
        assert_eq!(disk_size(SIZE_UNIT + 512), Some(2 * SIZE_UNIT));
        assert_eq!(disk_size(u64::MAX), None);
    }

    #[test]
    fn writes_data_around_chunk_boundaries_and_at_the_end() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.tar.gz");
        let size = SIZE_UNIT - 4096;
        let mut w = create(&p, size, &CreateOptions::default()).unwrap();
        let pieces: Vec<(u64, Vec<u8>)> = vec![
            (0, vec![1; 512]),
            // Straddles chunks 0 and 1, with zeros inside (not stored as data).
            (
                CHUNK - 1000,
                (0..5000u32).map(|i| (i % 251) as u8).collect(),
            ),
            (CHUNK + 8192, vec![0; 4096]),
            // Several batches' worth of chunks, one extent.
            (
                3 * CHUNK + 7,
                (0..(40 * CHUNK as u32)).map(|i| (i / 3) as u8).collect(),
            ),
            (size - 4096, vec![9; 4096]),
        ];
        let mut expect = vec![0u8; SIZE_UNIT as usize];
        for (off, data) in &pieces {
            expect[*off as usize..*off as usize + data.len()].copy_from_slice(data);
            w.write_extent(Extent::Data {
                offset: *off,
                bytes: Bytes::from(data.clone()),
            })
            .unwrap();
        }
        let sum = w.finish().unwrap();
        assert_eq!(sum.virtual_size, SIZE_UNIT);
        assert_eq!(sum.file_size, std::fs::metadata(&p).unwrap().len());
        assert_eq!(sum.format, "gce");
        let (name, data, header) = read_back(&p);
        assert_eq!(name, "disk.raw");
        assert_eq!(header.size().unwrap(), SIZE_UNIT);
        assert!(header.as_gnu().is_some());
        assert!(data == expect, "disk.raw differs from what was written");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_empty_disk_is_an_archive_of_an_empty_member() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("e.tar.gz");
        create(&p, 0, &CreateOptions::default())
            .unwrap()
            .finish()
            .unwrap();
        let (name, data, _) = read_back(&p);
        assert_eq!(name, "disk.raw");
        assert!(data.is_empty());
    }

    #[test]
    fn an_unfinished_or_misfed_writer_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut w = create(
            &d.path().join("a.tar.gz"),
            1 << 20,
            &CreateOptions::default(),
        )
        .unwrap();
        w.write_extent(Extent::Data {
            offset: 0,
            bytes: Bytes::from_static(&[1; 512]),
        })
        .unwrap();
        assert!(w.write_extent(Extent::Zero { offset: 0, len: 1 }).is_err());
        // Within the rounded size but past the virtual size.
        assert!(
            w.write_extent(Extent::Data {
                offset: 2 << 20,
                bytes: Bytes::from_static(&[1; 512]),
            })
            .is_err()
        );
        drop(w);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_options_but_takes_compress() {
        let d = tempfile::tempdir().unwrap();
        let o = CreateOptions::parse("subformat=fixed").unwrap();
        let Err(e) = create(&d.path().join("a.tar.gz"), 1 << 20, &o) else {
            panic!("subformat accepted");
        };
        assert!(
            e.to_string()
                .contains("gce does not take option 'subformat'"),
            "{e}"
        );
        let o = CreateOptions {
            compress: true,
            ..Default::default()
        };
        assert!(create(&d.path().join("b.tar.gz"), 1 << 20, &o).is_ok());
    }
}
