//! [`Image`]: a laid-out filesystem or disk as its size and a stream of extents.

use stamp_disk::{DiskSummary, DiskWriter, Extent};

use crate::Result;

/// A laid-out filesystem or partitioned disk: its size and its contents as extents in ascending
/// order (gaps are zeros), produced lazily so that file contents stream from their source.
pub struct Image<'a> {
    /// Size in bytes.
    pub size: u64,
    /// The contents.
    pub extents: Box<dyn Iterator<Item = Result<Extent>> + Send + 'a>,
}

impl std::fmt::Debug for Image<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Image<'_> {
    /// Feeds the image to every writer in `writers` and finishes them. On error the writers are
    /// dropped unfinished, which removes their temporary files.
    pub fn write_to(self, mut writers: Vec<Box<dyn DiskWriter>>) -> Result<Vec<DiskSummary>> {
        for e in self.extents {
            let e = e?;
            for w in writers.iter_mut() {
                w.write_extent(e.clone())?;
            }
        }
        Ok(writers
            .into_iter()
            .map(|w| w.finish())
            .collect::<std::result::Result<_, _>>()?)
    }
}
