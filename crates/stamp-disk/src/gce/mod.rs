//! GCE: Google Compute Engine's image import format — a gzip-compressed tar in GNU (`oldgnu`)
//! format holding one member, `disk.raw`, the raw disk, whose size is a multiple of 1 GiB. It is
//! what `tar --format=oldgnu -Sczf disk.tar.gz disk.raw` makes and what
//! `gcloud compute images create --source-uri gs://.../disk.tar.gz` takes.
//!
//! Output only: the virtual size is rounded up to a whole GiB (the added tail is zeros), the
//! archive is written in one streaming pass with bounded memory, chunks of data are compressed
//! in parallel and chunks of zeros cost nothing, and the same disk always gives the same bytes
//! (gzip time 0; tar time `SOURCE_DATE_EPOCH` or 0, owner 0:0, mode 0644). Reading one back is
//! not supported (extract `disk.raw` with `tar -xzf`); [`crate::detect`] recognises one so that
//! `open` can say so.

mod archive;
mod writer;

use crate::file::ImageFile;
use crate::{DiskReader, Error, Format, OpenOptions, Result};

pub use archive::oldgnu_header;
pub use writer::{CHUNK, GceWriter, MEMBER, SIZE_UNIT, create, disk_size};

/// Refuses to read a GCE image: a gzip stream has no random access.
pub fn open(file: ImageFile, _opts: &OpenOptions) -> Result<Box<dyn DiskReader>> {
    Err(Error::unsupported(
        file.path(),
        Format::Gce,
        "reading a GCE image (a gzip-compressed tar has no random access): extract disk.raw with `tar -xzf` and use that",
    ))
}

/// Bytes of the tar stream decompressed for detection: one header block.
const DETECT_LEN: usize = 512;

/// Returns true if and only if `head` starts a gzip stream whose first tar header names
/// [`MEMBER`] with GNU's magic — an image this module wrote, or `tar --format=oldgnu` did.
pub fn is_gce(head: &[u8]) -> bool {
    use std::io::Read;
    if !head.starts_with(&[0x1f, 0x8b, 8]) {
        return false;
    }
    let mut block = [0u8; DETECT_LEN];
    let mut d = flate2::read::GzDecoder::new(head);
    if d.read_exact(&mut block).is_err() {
        return false;
    }
    block.starts_with(b"disk.raw\0") && &block[257..265] == b"ustar  \0"
}
