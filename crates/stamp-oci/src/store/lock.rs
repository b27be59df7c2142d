//! Advisory `flock` locks that make several stamp processes on one store safe.
//!
//! Two lock files live at the root of the store: `index.lock` serialises read-modify-write
//! updates of `index.json`, and `gc.lock` is held shared by everything that writes blobs (so a
//! pull in progress keeps its blobs) and exclusively by garbage collection.

use std::fs::{File, OpenOptions};
use std::path::Path;

use rustix::fs::{FlockOperation, flock};

use crate::error::{Error, Result};

/// An advisory lock on a file, released when dropped (when its file is closed).
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
}

impl FileLock {
    /// Waits for and takes an exclusive lock on `path` (created if missing).
    pub(crate) fn exclusive(path: &Path) -> Result<Self> {
        Self::take(path, FlockOperation::LockExclusive)
    }

    /// Waits for and takes a shared lock on `path` (created if missing).
    pub(crate) fn shared(path: &Path) -> Result<Self> {
        Self::take(path, FlockOperation::LockShared)
    }

    fn take(path: &Path, op: FlockOperation) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io("open lock file", path, e))?;
        loop {
            match flock(&file, op) {
                Ok(()) => return Ok(FileLock { _file: file }),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Error::io("lock", path, e.into())),
            }
        }
    }
}

/// Keeps garbage collection away while held: blobs written (and names set) by the holder are
/// never removed by a concurrent [`Store::gc`](crate::store::Store::gc).
///
/// Every [`BlobWriter`](crate::store::BlobWriter) and archive import holds one on its own; hold one
/// yourself across an import and the [`Store::set_name`](crate::store::Store::set_name) that
/// names its result, so the unnamed image cannot be collected in between.
#[derive(Debug)]
pub struct WriteGuard {
    _lock: FileLock,
}

impl WriteGuard {
    pub(crate) fn new(lock: FileLock) -> Self {
        WriteGuard { _lock: lock }
    }
}
