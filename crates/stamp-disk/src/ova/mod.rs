//! ova images (not yet implemented: open and create refuse with a clear error).

use std::path::Path;

use crate::file::ImageFile;
use crate::{CreateOptions, DiskReader, DiskWriter, Error, Format, OpenOptions, Result};

/// Opens a ova image.
pub fn open(file: ImageFile, _opts: &OpenOptions) -> Result<Box<dyn DiskReader>> {
    Err(Error::unsupported(
        file.path(),
        Format::Ova,
        "reading ova is not implemented yet",
    ))
}

/// Creates a ova image.
pub fn create(path: &Path, _size: u64, _opts: &CreateOptions) -> Result<Box<dyn DiskWriter>> {
    Err(Error::unsupported(
        path,
        Format::Ova,
        "writing ova is not implemented yet",
    ))
}
