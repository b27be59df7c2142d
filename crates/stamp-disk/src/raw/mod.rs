//! Raw images: the disk byte for byte. Reading is sparse-aware (SEEK_DATA/SEEK_HOLE), writing
//! leaves holes where the disk is zero.

use std::ops::Range;
use std::path::Path;

use crate::file::{ImageFile, OutputFile};
use crate::{
    CreateOptions, DiskReader, DiskSummary, DiskWriter, Extent, ExtentOrder, Format, ImageInfo,
    OpenOptions, Result,
};

/// A raw image opened for reading.
#[derive(Debug)]
pub struct RawReader {
    file: ImageFile,
}

/// Opens a raw image (any file: raw is what is left when no signature matches).
pub fn open(file: ImageFile, _opts: &OpenOptions) -> Result<Box<dyn DiskReader>> {
    Ok(Box::new(RawReader { file }))
}

impl RawReader {
    /// Wraps an open file as a raw disk.
    pub fn new(file: ImageFile) -> Self {
        RawReader { file }
    }
}

/// Ranges of `file` that hold data according to the filesystem (SEEK_DATA/SEEK_HOLE); the whole
/// file where the filesystem cannot tell.
pub fn data_ranges(file: &ImageFile) -> Vec<Range<u64>> {
    use rustix::fs::{SeekFrom, seek};
    let len = file.len();
    if file.base() != 0 {
        // A window inside a larger file: the filesystem's map is of the whole file.
        return vec![0..len];
    }
    let fd = file.file();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(fd, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return vec![0..len],
        };
        if data >= len {
            break;
        }
        let hole = match seek(fd, SeekFrom::Hole(data)) {
            Ok(h) => h.min(len),
            Err(_) => len,
        };
        if hole <= data {
            return vec![0..len];
        }
        out.push(data..hole);
        pos = hole;
    }
    out
}

impl RawReader {
    /// The file's length rounded up to whole 512-byte sectors, as qemu's block layer sizes a
    /// raw file (a 4-byte file is a 512-byte disk); the rounded-up tail reads as zeros.
    fn size(&self) -> u64 {
        let len = self.file.len();
        len.checked_next_multiple_of(512).unwrap_or(len)
    }
}

impl DiskReader for RawReader {
    fn virtual_size(&self) -> u64 {
        self.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let size = self.size();
        crate::error::check_read(self.file.path(), offset, buf.len(), size)?;
        if size == self.file.len() {
            self.file.read_exact_at(buf, offset, "data")
        } else {
            self.file.read_at_zero_fill(buf, offset)
        }
    }

    fn allocation(&self) -> Result<Vec<Range<u64>>> {
        Ok(data_ranges(&self.file))
    }

    fn info(&self) -> ImageInfo {
        let mut i = ImageInfo::new(self.file.path(), Format::Raw, self.size());
        i.actual_size = self.file.allocated_bytes();
        i
    }
}

/// Writes a raw image: data at its offset, holes elsewhere.
#[derive(Debug)]
pub struct RawWriter {
    out: OutputFile,
    size: u64,
    order: ExtentOrder,
    data_bytes: u64,
}

/// Creates a raw image of `size` bytes at `path`.
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn DiskWriter>> {
    opts.allow_only(Format::Raw, &[])?;
    let out = OutputFile::create(path)?;
    out.set_len(size)?;
    Ok(Box::new(RawWriter {
        out,
        size,
        order: ExtentOrder::new(size),
        data_bytes: 0,
    }))
}

impl DiskWriter for RawWriter {
    fn write_extent(&mut self, e: Extent) -> Result<()> {
        self.order.accept(&e)?;
        if let Extent::Data { offset, bytes } = e {
            self.out.write_all_at(&bytes, offset)?;
            self.data_bytes += bytes.len() as u64;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<DiskSummary> {
        let path = self.out.path().to_path_buf();
        self.out.commit()?;
        Ok(DiskSummary {
            path,
            format: Format::Raw.name().into(),
            virtual_size: self.size,
            file_size: self.size,
            data_bytes: self.data_bytes,
        })
    }
}
