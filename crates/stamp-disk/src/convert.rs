//! Conversion: a reader's contents as a stream of extents, fed to one or more writers at once.

use std::ops::Range;
use std::sync::mpsc;

use bytes::Bytes;

use crate::{DiskReader, DiskSummary, DiskWriter, Error, Extent, Result, is_zero};

/// Bytes read from the source at a time. Large enough for sequential throughput, small enough
/// that the few chunks in flight keep memory bounded.
pub const CHUNK: u64 = 2 << 20;

/// Granularity of zero detection: runs of zeros this size and aligned to it are not written.
pub const ZERO_BLOCK: usize = 4096;

/// Chunks queued between the reading thread and the writers (memory in flight: this × CHUNK).
const QUEUE_DEPTH: usize = 8;

/// Receives progress from long operations and tells them when to stop.
///
/// Libraries report through this trait; only the CLI draws progress bars.
pub trait Progress: Sync {
    /// The operation will process `total` bytes.
    fn start(&self, total: u64) {
        let _ = total;
    }
    /// `bytes` more bytes were processed.
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }
    /// Returns true if and only if the user asked to stop (Ctrl-C).
    fn cancelled(&self) -> bool {
        false
    }
}

/// A [`Progress`] that reports nothing and never cancels.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// Merges sorted ranges that touch or overlap and drops empty ones.
pub fn merge_ranges(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// `ranges` cut off at `limit`: what lies past it is dropped (a parent's allocation seen through a
/// smaller child).
pub fn clip_ranges(ranges: Vec<Range<u64>>, limit: u64) -> Vec<Range<u64>> {
    ranges
        .into_iter()
        .filter(|r| r.start < limit)
        .map(|r| r.start..r.end.min(limit))
        .collect()
}

/// Total bytes covered by `ranges`.
pub fn ranges_len(ranges: &[Range<u64>]) -> u64 {
    ranges.iter().map(|r| r.end - r.start).sum()
}

/// Reads `range` of `reader` in [`CHUNK`]-aligned pieces and calls `emit` with each run of data,
/// skipping zero blocks. Returns the number of bytes read.
fn read_range(
    reader: &dyn DiskReader,
    range: Range<u64>,
    progress: &dyn Progress,
    emit: &mut dyn FnMut(Extent) -> Result<()>,
) -> Result<()> {
    let mut pos = range.start;
    while pos < range.end {
        if progress.cancelled() {
            return Err(Error::Interrupted);
        }
        let chunk_end = ((pos / CHUNK) + 1) * CHUNK;
        let end = chunk_end.min(range.end);
        let len = (end - pos) as usize;
        let mut buf = vec![0u8; len];
        reader.read_at(&mut buf, pos)?;
        let buf = Bytes::from(buf);
        // Split at ZERO_BLOCK boundaries of the virtual disk into data runs.
        let mut run_start: Option<usize> = None;
        let mut i = 0usize;
        while i < len {
            let block_end =
                (((pos + i as u64) / ZERO_BLOCK as u64 + 1) * ZERO_BLOCK as u64 - pos) as usize;
            let j = block_end.min(len);
            let zero = is_zero(&buf[i..j]);
            match (zero, run_start) {
                (false, None) => run_start = Some(i),
                (true, Some(s)) => {
                    emit(Extent::Data {
                        offset: pos + s as u64,
                        bytes: buf.slice(s..i),
                    })?;
                    run_start = None;
                }
                _ => {}
            }
            i = j;
        }
        if let Some(s) = run_start {
            emit(Extent::Data {
                offset: pos + s as u64,
                bytes: buf.slice(s..len),
            })?;
        }
        progress.advance(len as u64);
        pos = end;
    }
    Ok(())
}

/// Calls `emit` with every run of non-zero data in `reader`, in ascending order, reading only the
/// allocated ranges. Zero blocks are skipped: consumers treat gaps as zeros.
pub fn for_each_extent(
    reader: &dyn DiskReader,
    progress: &dyn Progress,
    emit: &mut dyn FnMut(Extent) -> Result<()>,
) -> Result<()> {
    let ranges = merge_ranges(reader.allocation()?);
    progress.start(ranges_len(&ranges));
    for r in ranges {
        let r = r.start..r.end.min(reader.virtual_size());
        read_range(reader, r, progress, emit)?;
    }
    Ok(())
}

/// Copies the contents of `reader` into every writer in `writers` and finishes them.
///
/// Reading runs on its own thread ahead of the writers, with a bounded queue between them. On any
/// error (or cancellation through `progress`), every writer is dropped unfinished, which removes its
/// temporary file.
pub fn convert(
    reader: &dyn DiskReader,
    mut writers: Vec<Box<dyn DiskWriter>>,
    progress: &dyn Progress,
) -> Result<Vec<DiskSummary>> {
    let (tx, rx) = mpsc::sync_channel::<Extent>(QUEUE_DEPTH * 4);
    let result: Result<()> = std::thread::scope(|s| {
        let producer = s.spawn(move || {
            for_each_extent(reader, progress, &mut |e| {
                // A closed channel means the writers failed; their error is the one to report.
                tx.send(e).map_err(|_| Error::Interrupted)
            })
        });
        let mut write_result = Ok(());
        for e in rx.iter() {
            if let Err(err) = writers
                .iter_mut()
                .try_for_each(|w| w.write_extent(e.clone()))
            {
                write_result = Err(err);
                break;
            }
        }
        drop(rx);
        let read_result = producer
            .join()
            .unwrap_or_else(|_| Err(Error::InvalidOption("reader thread panicked".into())));
        write_result.and(read_result)
    });
    result?;
    if progress.cancelled() {
        return Err(Error::Interrupted);
    }
    writers.into_iter().map(|w| w.finish()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_joins_touching_and_overlapping_ranges() {
        assert_eq!(
            merge_ranges(vec![10..20, 0..5, 5..8, 15..30, 40..40, 50..60]),
            vec![0..8, 10..30, 50..60]
        );
    }
}
