//! The crate's error type: every variant names what it was working on (file, blob digest,
//! registry URL, manifest) so the CLI can say what went wrong and where.

use std::path::PathBuf;

use crate::digest::Digest;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store, the registry client and the archives.
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
    /// A string that should be a digest is not one.
    #[error("bad digest '{digest}': {why}")]
    BadDigest {
        /// The string (shortened).
        digest: String,
        /// What is wrong.
        why: String,
    },
    /// A stored blob no longer matches its digest.
    #[error("blob {digest} is tampered: its content hashes to {actual}")]
    Tampered {
        /// The digest the blob is stored under.
        digest: Digest,
        /// What its content hashes to now (or a note on its size).
        actual: String,
    },
    /// Content received (from a registry or an archive) does not match the digest it was sent as.
    #[error("{source_name}: content of {expected} hashes to {actual} ({size} bytes)")]
    DigestMismatch {
        /// Where the content came from (URL, archive member).
        source_name: String,
        /// The digest it should have.
        expected: Digest,
        /// The digest it has.
        actual: Digest,
        /// The number of bytes received.
        size: u64,
    },
    /// A blob is not in the store.
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
    /// A name is not in the store or the registry.
    #[error("image '{0}' not found")]
    NotFound(String),
    /// A manifest, index, config or archive is malformed.
    #[error("{source_name}: malformed {what}: {detail}")]
    Malformed {
        /// The file or URL.
        source_name: String,
        /// The structure (manifest, index, config, oci-layout, manifest.json, ...).
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A media type stamp does not know.
    #[error("{source_name}: unsupported media type '{media_type}'")]
    UnsupportedMediaType {
        /// The file or URL.
        source_name: String,
        /// The media type.
        media_type: String,
    },
    /// A reference (image name, source) does not parse.
    #[error("invalid reference '{reference}': {why}")]
    BadReference {
        /// The reference.
        reference: String,
        /// What is wrong.
        why: String,
    },
    /// A registry answered with an error.
    #[error("{method} {url}: {status} {detail}")]
    Registry {
        /// HTTP method.
        method: &'static str,
        /// The URL.
        url: String,
        /// HTTP status (0 when the connection failed).
        status: u16,
        /// The registry's error message, or the transport error.
        detail: String,
    },
    /// The registry refused the credentials (or none were given where some are needed).
    #[error("{registry}: authentication failed: {detail}")]
    Auth {
        /// The registry host.
        registry: String,
        /// What happened.
        detail: String,
    },
    /// The operation was interrupted (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
    /// An error from the filesystem layer (tree building, flattening).
    #[error(transparent)]
    Fs(#[from] stamp_fs::Error),
    /// An I/O error on the local side of a blob transfer (the sink a blob is written to, the
    /// source it is pushed from).
    #[error("{op} blob {digest}: {source}")]
    BlobIo {
        /// What was being done.
        op: &'static str,
        /// The blob.
        digest: Digest,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A disk image could not be read.
    #[error("{path}: {source}")]
    Disk {
        /// The disk file.
        path: PathBuf,
        /// What went wrong.
        source: stamp_disk::Error,
    },
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

    /// Makes an [`Error::Malformed`].
    pub fn malformed(
        source_name: impl Into<String>,
        what: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Error::Malformed {
            source_name: source_name.into(),
            what,
            detail: detail.into(),
        }
    }
}
