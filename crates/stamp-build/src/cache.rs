//! The build cache: the outputs of earlier builds, kept in the store under `cache/build/` and
//! keyed by a digest of every input, so that building the same inputs again copies the disks
//! (sparse, in the kernel) instead of writing them.
//!
//! The key covers the build's seed (source image digest, recipe, options) and a fingerprint of
//! the tree after the recipe was applied: every path's metadata, the bytes of generated files,
//! and for files read from elsewhere their location plus, outside the store's immutable blobs, the host file's identity (device,
//! inode, size, modification time), as `make` and cargo judge freshness. An entry is a directory
//! per key holding one disk and one summary per output kind; the summary is renamed into place
//! after its disk, so a present summary always means a complete disk. Entries can be deleted at
//! any time: the cache keeps the [`KEEP`] newest builds, and `stamp gc` empties it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use stamp_disk::DiskSummary;
use stamp_fs::{Content, Kind, Tree};

use crate::pipeline::{BuildReport, Output};
use crate::{Error, Result};

/// How many builds the cache keeps (the most recently written); older entries are removed when
/// a new one is recorded, so the cache holds at most a few disks' worth of space.
pub const KEEP: usize = 4;

/// Bumped whenever the pipeline's output for the same inputs changes.
const CACHE_VERSION: &str = "stamp-build-cache v1";

/// The build cache of a store.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    /// The store's content-addressed blobs: files there never change, so their path is their
    /// identity (they are rewritten, with a new inode, when the same content is stored again).
    blobs: PathBuf,
}

impl Cache {
    /// The cache of the store at `store_root`.
    pub fn new(store_root: &Path) -> Cache {
        Cache {
            dir: store_root.join("cache").join("build"),
            blobs: store_root.join("blobs"),
        }
    }

    /// The key of a build with `seed` (a digest of the source and options) of `tree` (after the
    /// recipe was applied).
    pub fn key(&self, seed: &[u8; 32], tree: &Tree) -> String {
        let mut h = Sha256::new();
        h.update(CACHE_VERSION);
        h.update(env!("CARGO_PKG_VERSION"));
        h.update(seed);
        fingerprint(tree, &self.blobs, &mut h);
        hex::encode(h.finalize())
    }

    /// Restores every output of the build `key` from the cache, or returns `None` (having
    /// written nothing) when any of them is missing.
    pub fn restore(&self, key: &str, outputs: &[Output]) -> Result<Option<BuildReport>> {
        let entry = self.dir.join(key);
        let Ok(report) = std::fs::read(entry.join("report.json")) else {
            return Ok(None);
        };
        let Ok(mut report) = serde_json::from_slice::<BuildReport>(&report) else {
            return Ok(None);
        };
        let mut summaries = Vec::with_capacity(outputs.len());
        for o in outputs {
            let id = output_id(o);
            let Ok(summary) = std::fs::read(entry.join(format!("{id}.json"))) else {
                return Ok(None);
            };
            let Ok(summary) = serde_json::from_slice::<DiskSummary>(&summary) else {
                return Ok(None);
            };
            summaries.push((entry.join(format!("{id}.disk")), summary));
        }
        report.outputs = Vec::with_capacity(outputs.len());
        for (o, (disk, mut summary)) in outputs.iter().zip(summaries) {
            stamp_disk::file::copy_sparse(&disk, &o.path)?;
            summary.path = o.path.clone();
            report.outputs.push(summary);
        }
        Ok(Some(report))
    }

    /// Records the outputs of the build `key` (already written, described by `report`).
    pub fn insert(&self, key: &str, outputs: &[Output], report: &BuildReport) -> Result<()> {
        let entry = self.dir.join(key);
        std::fs::create_dir_all(&entry).map_err(|e| Error::io("create", &entry, e))?;
        for (o, summary) in outputs.iter().zip(&report.outputs) {
            let id = output_id(o);
            stamp_disk::file::copy_sparse(&o.path, &entry.join(format!("{id}.disk")))?;
            write_json(&entry.join(format!("{id}.json")), summary)?;
        }
        let mut bare = report.clone();
        bare.outputs.clear();
        write_json(&entry.join("report.json"), &bare)?;
        self.prune(key);
        Ok(())
    }

    /// Removes all but the [`KEEP`] most recently written entries (never `current`).
    fn prune(&self, current: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name() != current)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (_, old) in entries.into_iter().skip(KEEP.saturating_sub(1)) {
            // Another build may be reading it; a failed removal is retried next time.
            let _ = std::fs::remove_dir_all(old);
        }
    }
}

/// Writes `value` as JSON through a temporary name.
fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| Error::InvalidOption(format!("cannot encode {}: {e}", path.display())))?;
    let out = stamp_disk::OutputFile::create(path)?;
    out.write_all_at(&bytes, 0)?;
    out.commit()?;
    Ok(())
}

/// What distinguishes two outputs of one build: the format and its options.
fn output_id(o: &Output) -> String {
    let mut h = Sha256::new();
    h.update(o.format.name());
    h.update(format!("{:?}", o.options));
    hex::encode(&h.finalize()[..16])
}

/// Feeds every path's metadata and content identity of `tree` into `h`.
fn fingerprint(tree: &Tree, blobs: &Path, h: &mut Sha256) {
    let mut hosts: HashMap<PathBuf, [u8; 40]> = HashMap::new();
    for (path, id) in tree.walk() {
        let e = tree.entry(id);
        h.update((path.len() as u64).to_le_bytes());
        h.update(&path);
        h.update(id.index().to_le_bytes());
        h.update(e.st_mode().to_le_bytes());
        h.update(e.uid.to_le_bytes());
        h.update(e.gid.to_le_bytes());
        for t in [e.mtime, e.atime, e.ctime] {
            h.update(t.sec.to_le_bytes());
            h.update(t.nsec.to_le_bytes());
        }
        for (k, v) in &e.xattrs {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v);
        }
        match &e.kind {
            Kind::File(Content::Bytes(b)) => {
                h.update(b"B");
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            }
            Kind::File(Content::File { path, offset, len }) => {
                h.update(b"F");
                let p: &Path = path;
                h.update(p.as_os_str().as_encoded_bytes());
                h.update(offset.to_le_bytes());
                h.update(len.to_le_bytes());
                if !p.starts_with(blobs) {
                    let ident = hosts.entry(p.to_path_buf()).or_insert_with(|| identity(p));
                    h.update(*ident);
                }
            }
            Kind::Symlink(t) => {
                h.update(b"L");
                h.update(t);
            }
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                h.update(major.to_le_bytes());
                h.update(minor.to_le_bytes());
            }
            Kind::Dir | Kind::Fifo | Kind::Socket => {}
        }
    }
}

/// A host file's identity: device, inode, size, modification time (all zero if it cannot be
/// read, which makes the build miss the cache and then fail on the read).
fn identity(path: &Path) -> [u8; 40] {
    let mut out = [0u8; 40];
    if let Ok(m) = std::fs::metadata(path) {
        out[..8].copy_from_slice(&m.dev().to_le_bytes());
        out[8..16].copy_from_slice(&m.ino().to_le_bytes());
        out[16..24].copy_from_slice(&m.size().to_le_bytes());
        out[24..32].copy_from_slice(&m.mtime().to_le_bytes());
        out[32..40].copy_from_slice(&m.mtime_nsec().to_le_bytes());
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest_entries_and_the_current_one() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path());
        let base =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for i in 0..7u64 {
            let e = cache.dir.join(format!("k{i}"));
            std::fs::create_dir_all(&e).unwrap();
            let f = std::fs::File::open(&e).unwrap();
            f.set_modified(base + std::time::Duration::from_secs(i))
                .unwrap();
        }
        // k0 is the oldest, but it is the entry just written.
        cache.prune("k0");
        let mut left: Vec<String> = std::fs::read_dir(&cache.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["k0", "k4", "k5", "k6"]);
    }

    #[test]
    fn the_key_changes_with_the_tree_and_the_seed() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path());
        let mut t = Tree::default();
        let a = cache.key(&[1; 32], &t);
        assert_eq!(a, cache.key(&[1; 32], &t));
        assert_ne!(a, cache.key(&[2; 32], &t));
        t.insert(
            b"/f",
            stamp_fs::Entry::new(
                Kind::File(Content::Bytes(bytes::Bytes::from_static(b"x"))),
                0o644,
                stamp_fs::Timestamp::default(),
            ),
        )
        .unwrap();
        assert_ne!(a, cache.key(&[1; 32], &t));
    }
}
