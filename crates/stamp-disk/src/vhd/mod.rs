//! VHD images (Microsoft Virtual PC / Hyper-V; qemu calls the format `vpc`): fixed, dynamic and
//! differencing disks are read; fixed and dynamic disks are written.
//!
//! The virtual size is computed exactly as qemu 10 does (CHS geometry for Virtual PC and old qemu
//! images, the footer's current size otherwise), so reads are byte-identical to `qemu-img`. New
//! images get qemu's layout and sizes (CHS rounding unless `force_size=on`), a timestamp from
//! `SOURCE_DATE_EPOCH` (else 0) and a UUID derived from the disk's contents, so the same input
//! always gives the same bytes.

use std::path::Path;

use crate::file::ImageFile;
use crate::{CreateOptions, DiskReader, DiskWriter, OpenOptions, Result};

pub mod footer;
pub mod header;
pub mod parent;
pub mod reader;
pub mod writer;

pub use reader::VhdReader;
pub use writer::VhdWriter;

/// Opens a VHD image (fixed, dynamic or differencing). A differencing disk's parent is opened on
/// first read: describing it works without the parent, reading it fails naming the parent.
pub fn open(file: ImageFile, opts: &OpenOptions) -> Result<Box<dyn DiskReader>> {
    Ok(Box::new(VhdReader::open(file, opts.depth)?))
}

/// Creates a VHD image of `size` bytes at `path`. Options: `subformat=dynamic|fixed` and
/// `force_size=on`.
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn DiskWriter>> {
    Ok(Box::new(writer::create(path, size, opts)?))
}
