//! Where a block-mapped image's data really is: the file's data ranges (SEEK_DATA/SEEK_HOLE)
//! mapped back to virtual disk ranges, so unwritten parts of allocated blocks are skipped too.
//! Used by the block-mapped readers (VHD, VDI).

use std::ops::Range;

use crate::file::ImageFile;

/// The data ranges of an image file, sorted.
#[derive(Debug, Clone)]
pub(crate) struct FileData {
    ranges: Vec<Range<u64>>,
}

impl FileData {
    /// The data ranges of `file` (all of it where the filesystem cannot tell).
    pub(crate) fn of(file: &ImageFile) -> Self {
        FileData {
            ranges: crate::raw::data_ranges(file),
        }
    }

    /// Appends to `out` the virtual ranges, for a run of `len` bytes stored at file offset `f`
    /// and mapped at virtual offset `v`, where the file holds data.
    pub(crate) fn map(&self, v: u64, f: u64, len: u64, out: &mut Vec<Range<u64>>) {
        let end = f.saturating_add(len);
        let mut i = self.ranges.partition_point(|r| r.end <= f);
        while let Some(r) = self.ranges.get(i) {
            if r.start >= end {
                break;
            }
            let s = r.start.max(f);
            let e = r.end.min(end);
            if s < e {
                out.push(v + (s - f)..v + (e - f));
            }
            i += 1;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn maps_only_the_data_parts() {
        let d = FileData {
            ranges: vec![0..10, 20..30, 40..50],
        };
        let mut out = Vec::new();
        d.map(1000, 5, 30, &mut out);
        assert_eq!(out, vec![1000..1005, 1015..1025]);
        out.clear();
        d.map(0, 30, 10, &mut out);
        assert!(out.is_empty());
    }
}
