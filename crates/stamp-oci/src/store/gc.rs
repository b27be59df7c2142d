//! Garbage collection and consistency checks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::blob::hash_file;
use super::walk::walk;
use super::{Store, ref_name};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// Temp files and staging directories older than this are left over from a killed process
/// (live writers are also protected by the gc lock; the age is a second safeguard).
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// What [`Store::gc`] removed (or would remove, on a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Unreferenced blobs and their sizes.
    pub removed_blobs: Vec<(Digest, u64)>,
    /// Stale temp files, staging directories, and cache entries (`cache/build/KEY`,
    /// `cache/import/KEY`, which `stamp build` and imports recreate when they need them).
    pub removed_temp: Vec<PathBuf>,
    /// Total bytes freed (blobs and temp files).
    pub removed_bytes: u64,
    /// Blobs kept.
    pub kept_blobs: usize,
    /// True when nothing was actually removed.
    pub dry_run: bool,
}

/// What [`Store::fsck`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Blobs re-hashed.
    pub blobs_checked: usize,
    /// Blobs whose content does not match their name, with what it hashes to.
    pub tampered: Vec<(Digest, String)>,
    /// Referenced blobs that are missing, with what referenced them (a name or a digest).
    pub missing: Vec<(Digest, String)>,
    /// Names whose image could not be read at all (bad JSON, tampered manifest), with the error.
    pub broken: Vec<(String, String)>,
    /// Blobs no name references (what `gc` would remove).
    pub unreferenced: Vec<Digest>,
}

impl FsckReport {
    /// Returns true if and only if no blob is tampered, missing or unreadable.
    pub fn is_clean(&self) -> bool {
        self.tampered.is_empty() && self.missing.is_empty() && self.broken.is_empty()
    }
}

impl Store {
    /// Removes blobs that no descriptor in `index.json` reaches (through indexes, manifests,
    /// configs, layers and subjects; the uncompressed copies of referenced images' layers are
    /// kept too), and temp files older than an hour. Waits for running writers (pulls, imports)
    /// to finish, and blocks new ones meanwhile. With `dry_run`, only reports.
    ///
    /// Refuses to run (with the error) if a referenced manifest or config cannot be read, since
    /// what it references would then look unreferenced: run [`Store::fsck`].
    ///
    /// Never call it while the same thread holds a [`BlobWriter`](super::BlobWriter), a
    /// [`Staging`](super::Staging) or a [`WriteGuard`](super::WriteGuard): it would wait for
    /// itself.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let _gc = self.gc_exclusive()?;
        let _index = self.index_lock()?;
        let reachable = self.reachable()?;
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        for d in self.blob_digests()? {
            if reachable.contains(&d) {
                report.kept_blobs += 1;
                continue;
            }
            let path = self.blob_path(&d);
            let size = std::fs::symlink_metadata(&path)
                .map(|m| m.len())
                .unwrap_or(0);
            if !dry_run {
                remove(&path)?;
                let _ = std::fs::remove_file(self.verified_dir().join(d.hex()));
            }
            report.removed_bytes += size;
            report.removed_blobs.push((d, size));
        }
        let tmp = self.tmp_dir();
        let now = SystemTime::now();
        for entry in std::fs::read_dir(&tmp).map_err(|e| Error::io("list", &tmp, e))? {
            let entry = entry.map_err(|e| Error::io("list", &tmp, e))?;
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < STALE_TEMP {
                continue;
            }
            let path = entry.path();
            let size = if meta.is_dir() {
                dir_size(&path)
            } else {
                meta.len()
            };
            if !dry_run {
                if meta.is_dir() {
                    std::fs::remove_dir_all(&path).map_err(|e| Error::io("remove", &path, e))?;
                } else {
                    remove(&path)?;
                }
            }
            report.removed_bytes += size;
            report.removed_temp.push(path);
        }
        let caches = ["build", "import"].map(|c| self.root().join("cache").join(c));
        for entry in caches
            .iter()
            .filter_map(|c| std::fs::read_dir(c).ok())
            .flatten()
            .flatten()
        {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            report.removed_bytes += if is_dir {
                dir_size(&path)
            } else {
                entry.metadata().map(|m| m.len()).unwrap_or(0)
            };
            if !dry_run {
                if is_dir {
                    std::fs::remove_dir_all(&path).map_err(|e| Error::io("remove", &path, e))?;
                } else {
                    remove(&path)?;
                }
            }
            report.removed_temp.push(path);
        }
        Ok(report)
    }

    /// Re-hashes every blob and checks that everything every name references is present.
    pub fn fsck(&self) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        let mut bad: BTreeSet<Digest> = BTreeSet::new();
        for d in self.blob_digests()? {
            report.blobs_checked += 1;
            let (actual, _) = hash_file(&self.blob_path(&d))?;
            if actual != d {
                report.tampered.push((d, actual.to_string()));
                bad.insert(d);
            } else {
                self.record_verified(&d);
            }
        }
        let index = self.read_index()?;
        let mut reachable = BTreeSet::new();
        for desc in index.manifests() {
            let label = ref_name(desc)
                .map(str::to_string)
                .unwrap_or_else(|| desc.digest().to_string());
            match self.closure_of(desc) {
                Ok(c) => {
                    reachable.extend(c.blobs.keys().copied());
                    reachable.extend(c.diff_ids.iter().copied());
                    for (d, referrer) in c.missing {
                        let who = if referrer == "index" {
                            label.clone()
                        } else {
                            referrer
                        };
                        report.missing.push((d, who));
                    }
                }
                Err(e) => report.broken.push((label, e.to_string())),
            }
        }
        report.unreferenced = self
            .blob_digests()?
            .into_iter()
            .filter(|d| !reachable.contains(d))
            .collect();
        Ok(report)
    }

    /// Everything reachable from `index.json` (an unreadable manifest or config is an error).
    fn reachable(&self) -> Result<BTreeSet<Digest>> {
        let index = self.read_index()?;
        let mut reachable = BTreeSet::new();
        for desc in index.manifests() {
            let c = self.closure_of(desc)?;
            reachable.extend(c.blobs.keys().copied());
            reachable.extend(c.diff_ids.iter().copied());
        }
        Ok(reachable)
    }

    pub(crate) fn closure_of(
        &self,
        desc: &oci_spec::image::Descriptor,
    ) -> Result<super::walk::Closure> {
        let mut fetch = |d: &Digest, limit: u64| match self.read_small(d, limit) {
            Ok(b) => Ok(Some(b)),
            Err(Error::MissingBlob(_)) => Ok(None),
            Err(e) => Err(e),
        };
        walk(&mut fetch, &|d| self.has_blob(d), desc)
    }
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(path) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
