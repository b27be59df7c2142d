//! VDI images (VirtualBox): static and dynamic images are read, dynamic images are written.
//!
//! Limits and read semantics follow qemu (`block/vdi.c`): version 1.1 only, 1 MiB blocks, no
//! differencing or snapshot images, unallocated and discarded blocks read as zeros. New images
//! have qemu's layout (header, block map at 0x200, blocks appended in disk order), a banner as
//! VirtualBox writes it, and UUIDs derived from the disk's contents, so the same input always
//! gives the same bytes and different disks get different UUIDs.

use std::path::Path;

use crate::file::ImageFile;
use crate::{CreateOptions, DiskReader, DiskWriter, OpenOptions, Result};

pub mod header;
pub mod reader;
pub mod writer;

pub use reader::VdiReader;
pub use writer::VdiWriter;

/// Opens a VDI image.
pub fn open(file: ImageFile, _opts: &OpenOptions) -> Result<Box<dyn DiskReader>> {
    Ok(Box::new(VdiReader::open(file)?))
}

/// Creates a dynamic VDI image of `size` bytes at `path`. Option: `subformat=dynamic`.
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn DiskWriter>> {
    Ok(Box::new(writer::create(path, size, opts)?))
}
