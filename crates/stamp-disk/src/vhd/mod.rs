//! vhd images (not yet implemented: open and create refuse with a clear error).

use std::path::Path;

use crate::file::ImageFile;
use crate::{CreateOptions, DiskReader, DiskWriter, Error, Format, OpenOptions, Result};

/// Opens a vhd image.
pub fn open(file: ImageFile, _opts: &OpenOptions) -> Result<Box<dyn DiskReader>> {
    Err(Error::unsupported(
        file.path(),
        Format::Vhd,
        "reading vhd is not implemented yet",
    ))
}

/// Creates a vhd image.
pub fn create(path: &Path, _size: u64, _opts: &CreateOptions) -> Result<Box<dyn DiskWriter>> {
    Err(Error::unsupported(
        path,
        Format::Vhd,
        "writing vhd is not implemented yet",
    ))
}
