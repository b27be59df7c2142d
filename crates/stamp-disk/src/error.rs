//! The crate's error type: every failure names the file, and for bad input the structure and the
//! offset where it was found.

use std::path::{Path, PathBuf};

use crate::Format;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while opening, reading, writing or comparing a disk image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O error on a named file.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "open", ...).
        op: &'static str,
        /// The file it was done to.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The image is malformed: a structure holds a value that cannot be right.
    #[error("{path}: corrupt {format} image: {structure} at offset {offset:#x}: {detail}")]
    Corrupt {
        /// The image file.
        path: PathBuf,
        /// Its format.
        format: Format,
        /// The on-disk structure that is wrong ("L1 table", "grain directory", "BAT", ...).
        structure: String,
        /// Byte offset of that structure (or of the bad field) in the file.
        offset: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// The image is valid but uses a feature this crate does not read or write.
    #[error("{path}: {format} image uses an unsupported feature: {feature}")]
    Unsupported {
        /// The image file.
        path: PathBuf,
        /// Its format.
        format: Format,
        /// The feature.
        feature: String,
    },
    /// The image depends on a file that cannot be found (backing file, extent, parent).
    #[error("{path}: {what} {missing} not found")]
    Missing {
        /// The image that refers to the missing file.
        path: PathBuf,
        /// What kind of file ("backing file", "extent", "parent disk").
        what: &'static str,
        /// The missing file as resolved.
        missing: PathBuf,
    },
    /// An option or argument given by the caller is invalid.
    #[error("{0}")]
    InvalidOption(String),
    /// A read outside the virtual disk.
    #[error("{path}: read of {len} bytes at {offset:#x} is beyond the virtual size {size}")]
    OutOfBounds {
        /// The image file.
        path: PathBuf,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Virtual size of the disk.
        size: u64,
    },
    /// The writer was given extents out of order or past the virtual size.
    #[error("extent at {offset:#x} ({len} bytes) is out of order or past the end ({detail})")]
    BadExtent {
        /// Offset of the extent.
        offset: u64,
        /// Its length.
        len: u64,
        /// Why it was refused.
        detail: String,
    },
    /// The operation was cancelled (Ctrl-C); nothing partial was kept.
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// Makes an [`Error::Io`] for `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Makes an [`Error::Corrupt`].
    pub fn corrupt(
        path: &Path,
        format: Format,
        structure: impl Into<String>,
        offset: u64,
        detail: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            path: path.to_path_buf(),
            format,
            structure: structure.into(),
            offset,
            detail: detail.into(),
        }
    }

    /// Makes an [`Error::Unsupported`].
    pub fn unsupported(path: &Path, format: Format, feature: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.to_path_buf(),
            format,
            feature: feature.into(),
        }
    }

    /// Returns true if and only if this error says the input is malformed or unsupported (as
    /// opposed to an I/O failure or a cancellation).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. } | Error::Unsupported { .. } | Error::Missing { .. }
        )
    }
}

/// A small helper that makes [`Error::Corrupt`] values for one file and format without repeating
/// them at every check.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The file being read.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
}

impl Ctx {
    /// A context for `path` in `format`.
    pub fn new(path: &Path, format: Format) -> Self {
        Ctx {
            path: path.to_path_buf(),
            format,
        }
    }

    /// An [`Error::Corrupt`] about `structure` at `offset`.
    pub fn corrupt(
        &self,
        structure: impl Into<String>,
        offset: u64,
        detail: impl Into<String>,
    ) -> Error {
        Error::corrupt(&self.path, self.format, structure, offset, detail)
    }

    /// An [`Error::Unsupported`] about `feature`.
    pub fn unsupported(&self, feature: impl Into<String>) -> Error {
        Error::unsupported(&self.path, self.format, feature)
    }

    /// An [`Error::Io`] for `op` on this file.
    pub fn io(&self, op: &'static str, source: std::io::Error) -> Error {
        Error::io(op, &self.path, source)
    }
}

/// Refuses a read of `len` bytes at `offset` that does not lie within a disk of `size` bytes
/// (every reader's `read_at` starts with this).
pub fn check_read(path: &Path, offset: u64, len: usize, size: u64) -> Result<()> {
    if offset.checked_add(len as u64).is_none_or(|end| end > size) {
        return Err(Error::OutOfBounds {
            path: path.to_path_buf(),
            offset,
            len: len as u64,
            size,
        });
    }
    Ok(())
}
