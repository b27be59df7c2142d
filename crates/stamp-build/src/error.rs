//! The crate's error type.

use std::path::PathBuf;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong stamping a disk.
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
    /// The recipe is invalid: names the file, the line and the key.
    #[error("{path}:{line}: {key}: {detail}")]
    Recipe {
        /// The recipe file.
        path: PathBuf,
        /// 1-based line of the offending key (0 when unknown).
        line: usize,
        /// The key, dotted (`users[0].name`).
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// The image has no kernel to boot.
    #[error("the image has no kernel: {detail}")]
    NoKernel {
        /// What was looked for, and how to add one.
        detail: String,
    },
    /// The image has a kernel but nothing that can boot it, or a boot file is malformed.
    #[error("boot: {0}")]
    Boot(String),
    /// A file of the image is malformed (names the path in the image, the structure and the
    /// offset).
    #[error("{path}: {detail}")]
    BadFile {
        /// The path in the image (or on the host).
        path: String,
        /// What is wrong, with the structure and offset.
        detail: String,
    },
    /// An invalid build option.
    #[error("{0}")]
    InvalidOption(String),
    /// From the filesystem writers.
    #[error(transparent)]
    Fs(#[from] stamp_fs::Error),
    /// From the disk writers.
    #[error(transparent)]
    Disk(#[from] stamp_disk::Error),
    /// From the image store.
    #[error(transparent)]
    Oci(#[from] stamp_oci::Error),
}

impl Error {
    /// Returns true if the build stopped because the user asked (Ctrl-C).
    pub fn is_interrupted(&self) -> bool {
        matches!(
            self,
            Error::Disk(stamp_disk::Error::Interrupted)
                | Error::Fs(stamp_fs::Error::Disk(stamp_disk::Error::Interrupted))
                | Error::Oci(stamp_oci::Error::Interrupted)
        )
    }

    /// Makes an [`Error::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
