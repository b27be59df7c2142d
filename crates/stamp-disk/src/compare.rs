//! Content comparison of two disks, as `qemu-img compare` does it: only contents count, not
//! formats or allocation, and a size difference is fine if the extra part of the larger disk is
//! all zeros.

use crate::convert::{CHUNK, Progress, merge_ranges, ranges_len};
use crate::{DiskReader, Error, Result, is_zero};

/// Granularity at which a difference is reported (qemu-img reports 512-byte sectors).
pub const SECTOR: u64 = 512;

/// The outcome of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Comparison {
    /// Same contents; `size_mismatch` if the sizes differ (the larger disk's extra part is zeros).
    Identical {
        /// Returns true if and only if the virtual sizes differ.
        size_mismatch: bool,
    },
    /// Contents differ, first at the sector starting at `offset`.
    Differ {
        /// Offset of the first differing 512-byte sector.
        offset: u64,
    },
}

/// Compares the contents of `a` and `b`.
pub fn compare(
    a: &dyn DiskReader,
    b: &dyn DiskReader,
    progress: &dyn Progress,
) -> Result<Comparison> {
    let common = a.virtual_size().min(b.virtual_size());
    let mut ranges = a.allocation()?;
    ranges.extend(b.allocation()?);
    let ranges = merge_ranges(ranges);
    progress.start(ranges_len(&ranges));
    let mut buf_a = vec![0u8; CHUNK as usize];
    let mut buf_b = vec![0u8; CHUNK as usize];
    for r in ranges {
        let mut pos = r.start;
        while pos < r.end {
            if progress.cancelled() {
                return Err(Error::Interrupted);
            }
            let end = (pos + CHUNK).min(r.end);
            let len = (end - pos) as usize;
            let in_a = pos < a.virtual_size();
            let in_b = pos < b.virtual_size();
            let a_len = (a.virtual_size().saturating_sub(pos)).min(len as u64) as usize;
            let b_len = (b.virtual_size().saturating_sub(pos)).min(len as u64) as usize;
            if in_a {
                a.read_at(&mut buf_a[..a_len], pos)?;
            }
            buf_a[a_len..len].fill(0);
            if in_b {
                b.read_at(&mut buf_b[..b_len], pos)?;
            }
            buf_b[b_len..len].fill(0);
            if buf_a[..len] != buf_b[..len] {
                let i = buf_a[..len]
                    .iter()
                    .zip(&buf_b[..len])
                    .position(|(x, y)| x != y)
                    .unwrap_or(0) as u64;
                return Ok(Comparison::Differ {
                    offset: (pos + i) / SECTOR * SECTOR,
                });
            }
            // Past the common size, the larger disk must read as zeros (checked above against the
            // zero-filled buffer of the smaller one).
            debug_assert!(pos < common || is_zero(&buf_a[..len]) || is_zero(&buf_b[..len]));
            progress.advance(len as u64);
            pos = end;
        }
    }
    Ok(Comparison::Identical {
        size_mismatch: a.virtual_size() != b.virtual_size(),
    })
}
