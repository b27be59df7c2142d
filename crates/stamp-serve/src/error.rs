//! The crate's error type.

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The task store (SQLite or PostgreSQL) failed.
    #[error("task store: {0}")]
    Db(String),
    /// An object (source disk, export target) could not be read or written.
    #[error("object {location}: {detail}")]
    Object {
        /// `BUCKET/KEY` or a URL.
        location: String,
        /// What went wrong.
        detail: String,
    },
    /// The task's disk is not acceptable (unreadable, no partition table, ...): the task fails
    /// with this as its status message.
    #[error("{0}")]
    Invalid(String),
    /// The scratch quota can never hold this task.
    #[error("the task needs {needed} bytes of scratch space; the quota is {quota}")]
    TooLarge {
        /// Bytes the task needs.
        needed: u64,
        /// The configured quota.
        quota: u64,
    },
    /// The task was cancelled (or its lease lost) while running.
    #[error("cancelled")]
    Cancelled,
    /// A configuration value is wrong.
    #[error("{0}")]
    Config(String),
    /// From the disk layer.
    #[error(transparent)]
    Disk(#[from] stamp_disk::Error),
    /// From the AWS layer (S3 objects).
    #[error(transparent)]
    Aws(#[from] stamp_aws::Error),
    /// An I/O error on a named path.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Io`].
    pub fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
