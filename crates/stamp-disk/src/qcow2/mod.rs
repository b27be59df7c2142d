//! qcow2 images (QEMU copy-on-write, versions 2 and 3).
//!
//! Reading covers zlib and zstd compressed clusters, v3 zero clusters, extended L2 entries
//! (subclusters), every cluster size from 512 B to 2 MiB, backing chains and external data
//! files; encrypted images and unknown incompatible features are refused by name. Writing
//! streams v2 or v3 images, optionally compressed in parallel batches, optionally as an overlay
//! over a backing file. `check` rebuilds the refcounts as `qemu-img check` does.
//!
//! Where stamp and qemu differ on purpose: a data cluster that starts past the end of the file
//! is refused as corrupt (qemu reads zeros); a relative external data file name is looked up
//! beside the image first, then from the working directory (qemu only uses the latter); written
//! images have their virtual size rounded up to whole 512-byte sectors, as qemu's are.

pub mod check;
pub mod header;
pub mod reader;
pub mod table;
pub mod writer;

use std::path::Path;

use crate::file::ImageFile;
use crate::{CreateOptions, DiskReader, DiskWriter, OpenOptions, Result};

pub use header::Header;
pub use reader::Qcow2Reader;
pub use writer::Qcow2Writer;

/// Opens a qcow2 image.
pub fn open(file: ImageFile, opts: &OpenOptions) -> Result<Box<dyn DiskReader>> {
    Ok(Box::new(reader::open(file, opts)?))
}

/// Creates a qcow2 image: options compress, compat (`0.10`/`v2`, `1.1`/`v3`), cluster_size,
/// compression_type (`zlib`, `zstd`), backing_file and backing_fmt. With a backing file, a size
/// of 0 takes the backing file's virtual size, and what no extent covers reads through to the
/// backing file.
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn DiskWriter>> {
    Ok(Box::new(writer::create(path, size, opts)?))
}
