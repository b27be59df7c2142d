//! VHDX images (Hyper-V, [MS-VHDX]): dynamic and fixed disks, read and written.
//!
//! Reading checks the two headers (the valid one with the higher sequence number wins), replays a
//! pending metadata log in memory (the file is never modified), and checks the region table, the
//! metadata and the BAT; differencing disks are refused. Writing lays the file out as qemu does,
//! with deterministic GUIDs, and stores only the blocks that hold data (dynamic) or every block
//! (fixed).

pub mod bat;
pub mod header;
pub mod layout;
pub mod log;
pub mod metadata;
pub mod reader;
pub mod writer;

use std::path::Path;

use crate::file::ImageFile;
use crate::{CreateOptions, DiskReader, DiskWriter, OpenOptions, Result};

pub use reader::VhdxReader;
pub use writer::VhdxWriter;

/// Opens a VHDX image.
pub fn open(file: ImageFile, opts: &OpenOptions) -> Result<Box<dyn DiskReader>> {
    if opts.for_check {
        return Ok(Box::new(VhdxReader::open_for_check(file)?));
    }
    Ok(Box::new(VhdxReader::open(file)?))
}

/// Creates a VHDX image of `size` bytes (`subformat=dynamic|fixed`, `block_size=`).
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn DiskWriter>> {
    writer::create(path, size, opts)
}
