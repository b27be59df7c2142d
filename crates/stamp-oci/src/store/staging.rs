//! A staging area for imports: blobs are verified into a private directory under `tmp/` and
//! only moved into `blobs/` once the whole image is known to be complete and well-formed, so a
//! malformed archive leaves nothing in the store.

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::image::Descriptor;
use tempfile::TempDir;

use super::Store;
use super::blob::{BlobWriter, read_small_at};
use super::lock::FileLock;
use super::walk::{Closure, walk};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// Blobs of an import in progress. See the [module docs](self). Dropping it removes what was
/// not published.
#[derive(Debug)]
pub struct Staging {
    store: Store,
    dir: TempDir,
    staged: BTreeMap<Digest, u64>,
    _gc: FileLock,
}

impl Staging {
    /// The store this stages for.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts writing a blob into the staging area; pass its digest to
    /// [`Staging::commit`] afterwards.
    pub fn writer(&self) -> Result<BlobWriter> {
        BlobWriter::new(
            self.dir.path(),
            self.dir.path().to_path_buf(),
            self.store.gc_shared()?,
        )
    }

    /// Commits a writer from [`Staging::writer`] (see [`BlobWriter::commit`]) and records it.
    pub fn commit(&mut self, w: BlobWriter, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let (d, n) = w.commit(expected)?;
        self.staged.insert(d, n);
        Ok((d, n))
    }

    /// Stores `bytes` in the staging area.
    pub fn put_bytes(&mut self, bytes: &[u8]) -> Result<Digest> {
        use std::io::Write;
        let mut w = self.writer()?;
        w.write_all(bytes)
            .map_err(|e| Error::io("write", self.dir.path(), e))?;
        Ok(self.commit(w, None)?.0)
    }

    /// Returns true if and only if `d` is staged or already in the store.
    pub fn has(&self, d: &Digest) -> bool {
        self.staged.contains_key(d) || self.store.has_blob(d)
    }

    /// Where blob `d` is: staged, else in the store.
    pub fn path(&self, d: &Digest) -> PathBuf {
        if self.staged.contains_key(d) {
            self.dir.path().join(d.hex())
        } else {
            self.store.blob_path(d)
        }
    }

    /// Reads a small staged (or stored) blob, verified; `Ok(None)` when it is in neither.
    pub fn read_small(&self, d: &Digest, limit: u64) -> Result<Option<Vec<u8>>> {
        if !self.has(d) {
            return Ok(None);
        }
        read_small_at(&self.path(d), d, limit).map(Some)
    }

    /// Size of a staged blob.
    pub fn staged_size(&self, d: &Digest) -> Option<u64> {
        self.staged.get(d).copied()
    }

    /// Stages `bytes` as an OCI image manifest and publishes it with everything it references.
    pub fn publish_manifest(mut self, bytes: &[u8]) -> Result<Descriptor> {
        let digest = self.put_bytes(bytes)?;
        let root = super::descriptor(crate::media::OCI_MANIFEST, &digest, bytes.len() as u64)?;
        self.publish(&root)
    }

    /// Checks that everything `root` references is staged or stored (sizes included), then
    /// moves the staged blobs it references into the store. Returns `root`.
    pub fn publish(self, root: &Descriptor) -> Result<Descriptor> {
        let closure = self.closure(root)?;
        if let Some((d, referrer)) = closure.missing.first() {
            return Err(Error::malformed(
                referrer.clone(),
                "image",
                format!(
                    "references blob {d}, which is not in the archive{}",
                    if closure.missing.len() > 1 {
                        format!(" ({} blobs missing)", closure.missing.len())
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        for (d, desc) in &closure.blobs {
            if let Some(size) = self.staged.get(d)
                && *size != desc.size()
            {
                return Err(Error::malformed(
                    d.to_string(),
                    "descriptor",
                    format!("size {} but the blob has {size} bytes", desc.size()),
                ));
            }
        }
        let blobs = self.store.blobs_dir();
        for d in closure.blobs.keys() {
            if self.staged.contains_key(d) {
                let from = self.dir.path().join(d.hex());
                let to = blobs.join(d.hex());
                std::fs::rename(&from, &to).map_err(|e| Error::io("rename into place", &to, e))?;
            }
        }
        Ok(root.clone())
    }

    fn closure(&self, root: &Descriptor) -> Result<Closure> {
        let mut fetch = |d: &Digest, limit: u64| self.read_small(d, limit);
        walk(&mut fetch, &|d| self.has(d), root)
    }
}

impl Store {
    /// Starts an import: a private staging directory under `tmp/`. Holds off [`Store::gc`].
    pub fn staging(&self) -> Result<Staging> {
        let gc = self.gc_shared()?;
        let tmp = self.tmp_dir();
        let dir = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(&tmp)
            .map_err(|e| Error::io("create temp directory in", &tmp, e))?;
        Ok(Staging {
            store: self.clone(),
            dir,
            staged: BTreeMap::new(),
            _gc: gc,
        })
    }
}
