//! Tree sources: a [`Tree`] from a host directory, a tar archive (plain, gzip, zstd or xz), or
//! the layers of a container image flattened with their whiteouts ([`from_layers`]).
//!
//! Sources never copy file contents into memory: a directory's files are referred to by path, a
//! plain tar's members by their offset in the archive. A compressed tar (or a tar read from stdin)
//! is decompressed once into a temporary file, the *spool*, which the returned [`Loaded`] keeps
//! alive; the tree's contents refer into it, so keep the [`Loaded`] (not only its tree) for as
//! long as the tree is used.

mod archive;
mod dir;
mod layers;
mod pax;
mod spool;

use std::path::Path;
use std::sync::Arc;

use crate::{Error, Result, Timestamp, Tree};

pub use archive::from_tar;
pub use dir::from_dir;
pub use layers::from_layers;

/// Options common to every source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceOptions {
    /// If set, every timestamp (mtime, atime, ctime) later than this many seconds since the epoch
    /// is clamped to it (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
}

impl SourceOptions {
    fn clamp(&self, t: Timestamp) -> Timestamp {
        t.clamp_to(self.source_date_epoch.map(Timestamp::from_secs))
    }
}

/// A loaded tree and whatever must outlive it: the temporary file its contents refer into when
/// the source was compressed or read from stdin (removed when this is dropped).
#[derive(Debug)]
pub struct Loaded {
    /// The tree. Its file contents may refer into the spool held here: moving the tree out and
    /// dropping the rest removes the spool, and reading such contents then fails.
    pub tree: Tree,
    spool: Option<Arc<tempfile::TempPath>>,
}

impl Loaded {
    /// A tree whose contents need nothing kept alive (in memory, or host files).
    pub fn new(tree: Tree) -> Self {
        Loaded { tree, spool: None }
    }

    /// The temporary file the contents refer into, if any.
    pub fn spool(&self) -> Option<&Path> {
        self.spool.as_deref().map(|p| p.as_ref())
    }
}

/// Loads `src`: `-` is a tar on stdin, a directory is read with [`from_dir`], anything else is a
/// tar archive read with [`from_tar`] (its compression detected from its first bytes).
pub fn load(src: &str, opts: &SourceOptions) -> Result<Loaded> {
    let path = Path::new(src);
    if src == "-" {
        return from_tar(path, opts);
    }
    let meta = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    if meta.is_dir() {
        Ok(Loaded::new(from_dir(path, opts)?))
    } else {
        from_tar(path, opts)
    }
}

/// Gives a [`Error::BadPath`] from the tree the name of the source it came from.
fn name_source(e: Error, source_name: &str) -> Error {
    match e {
        Error::BadPath { path, detail, .. } => Error::BadPath {
            source_name: source_name.to_string(),
            path,
            detail,
        },
        e => e,
    }
}
