//! The crate's error type.

use std::path::PathBuf;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong building a tree or writing a filesystem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A path in the source is not acceptable (escapes the root, too long, not UTF-8 where needed).
    #[error("{source_name}: entry '{path}': {detail}")]
    BadPath {
        /// The source (tar file or directory).
        source_name: String,
        /// The offending path as written in the source.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// A hard link names a target that is not in the tree.
    #[error("hard link '{link}' points to '{target}', which is not in the tree")]
    MissingLinkTarget {
        /// The link.
        link: String,
        /// Its target.
        target: String,
    },
    /// The content does not fit in the requested size.
    #[error("{what} does not fit: it needs {needed} bytes, the filesystem has {available}")]
    NoSpace {
        /// What did not fit.
        what: String,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// An option is invalid.
    #[error("{0}")]
    InvalidOption(String),
    /// An error from the disk layer.
    #[error(transparent)]
    Disk(#[from] stamp_disk::Error),
}

impl Error {
    /// Makes an [`Error::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
