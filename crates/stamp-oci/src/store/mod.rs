//! The local content-addressed store: an [OCI image layout] under a root directory.
//!
//! ```text
//! ROOT/oci-layout            {"imageLayoutVersion": "1.0.0"}
//! ROOT/index.json            an image index; every name is a manifest descriptor annotated
//!                            org.opencontainers.image.ref.name = the full name
//! ROOT/blobs/sha256/<hex>    every blob, named by the SHA-256 of its content
//! ROOT/tmp/                  blobs being written (temp files, renamed into blobs/ when verified)
//! ROOT/verified/<hex>        when a blob was last fully verified (see Store::verify_cached)
//! ROOT/index.lock, gc.lock   flock(2) files (see WriteGuard)
//! ```
//!
//! Tools that read OCI layouts (`skopeo inspect oci:ROOT:NAME`, `umoci`) read the store as is.
//! A blob only appears under `blobs/` once its content has been hashed and matched its name, by
//! an atomic rename, so a killed process leaves only temp files, which [`Store::gc`] removes.
//!
//! Concurrency: `index.json` is updated read-modify-write under an exclusive `flock` on
//! `index.lock` and replaced by rename, so readers never see a torn index and no update is lost.
//! Blob writers and imports hold a shared `flock` on `gc.lock` and [`Store::gc`] takes it
//! exclusively: a long operation made of several writes (a registry pull) must hold a
//! [`Store::write_guard`] from its first blob until it has named its image.
//!
//! ```
//! # fn main() -> stamp_oci::Result<()> {
//! # let dir = tempfile::tempdir().map_err(|e| stamp_oci::Error::io("tempdir", "/tmp", e))?;
//! let store = stamp_oci::Store::open(&dir.path().join("store"))?;
//! let digest = store.put_bytes(b"{}")?;
//! assert_eq!(store.read_small(&digest, 1024)?, b"{}");
//! store.verify(&digest)?;
//! # Ok(())
//! # }
//! ```
//!
//! [OCI image layout]: https://github.com/opencontainers/image-spec/blob/main/image-layout.md

mod blob;
mod gc;
mod lock;
mod staging;
pub(crate) mod walk;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType, Platform};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::media;

pub use blob::BlobWriter;
pub(crate) use blob::HashReader as HashingFile;
pub use gc::{FsckReport, GcReport};
pub use lock::WriteGuard;
pub use staging::Staging;

/// The annotation that carries an image's name in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Size limit for manifests, indexes and image configs read into memory. Registries commonly
/// refuse manifests over 4 MiB, so nothing legitimate is larger.
pub const MANIFEST_LIMIT: u64 = 4 << 20;

/// Size limit for the store's own `index.json` (one small descriptor per name).
const INDEX_LIMIT: u64 = 64 << 20;

/// Longest name accepted by [`Store::set_name`] (a registry reference is at most a few hundred).
const MAX_NAME_LEN: usize = 1024;

/// Shortest digest prefix [`Store::resolve`] accepts, so that a short word is never taken for one.
const MIN_DIGEST_PREFIX: usize = 4;

/// A name in the store and the manifest (or index) descriptor it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// The full name, e.g. `localhost:5000/debian:12` or `debian:12`.
    pub name: String,
    /// The manifest or index it names (its annotations include [`REF_NAME`]).
    pub descriptor: Descriptor,
}

/// A content-addressed image store in the OCI image layout. See the [module docs](self).
///
/// A `Store` is a path and cheap to clone; all state is on disk, and several processes may use
/// the same root at once.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens the store at `root`, creating the layout (directories, `oci-layout`, an empty
    /// `index.json`) if it is missing. An existing `oci-layout` must declare version 1.x.
    pub fn open(root: &Path) -> Result<Store> {
        let store = Store {
            root: root.to_path_buf(),
        };
        for dir in [store.blobs_dir(), store.tmp_dir(), store.verified_dir()] {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        }
        let layout = root.join("oci-layout");
        match std::fs::read(&layout) {
            Ok(bytes) => check_oci_layout(&layout, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                store.write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            }
            Err(e) => return Err(Error::io("read", layout, e)),
        }
        let index = store.index_path();
        if !index.exists() {
            let _lock = lock::FileLock::exclusive(&store.root.join("index.lock"))?;
            if !index.exists() {
                store.write_index(&empty_index()?)?;
            }
        }
        Ok(store)
    }

    /// The default store root: `$STAMP_STORE` if set, else `$XDG_DATA_HOME/stamp/store`, else
    /// `~/.local/share/stamp/store` (and `/var/lib/stamp/store` when there is no home at all).
    /// The CLI's `--store` takes precedence over all of these.
    pub fn default_root() -> PathBuf {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(p) = var("STAMP_STORE") {
            return PathBuf::from(p);
        }
        if let Some(p) = var("XDG_DATA_HOME").map(PathBuf::from)
            && p.is_absolute()
        {
            return p.join("stamp").join("store");
        }
        match var("HOME") {
            Some(home) => PathBuf::from(home).join(".local/share/stamp/store"),
            None => PathBuf::from("/var/lib/stamp/store"),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Holds off garbage collection until the guard is dropped. See [`WriteGuard`].
    pub fn write_guard(&self) -> Result<WriteGuard> {
        Ok(WriteGuard::new(self.gc_shared()?))
    }

    /// Names `manifest` (a manifest or index descriptor whose blob is in the store) `name`,
    /// replacing what the name pointed to before.
    pub fn set_name(&self, name: &str, manifest: &Descriptor) -> Result<()> {
        check_name(name)?;
        let digest = descriptor_digest(manifest)?;
        if !self.has_blob(&digest) {
            return Err(Error::MissingBlob(digest));
        }
        let mut desc = manifest.clone();
        let mut annotations = desc.annotations().clone().unwrap_or_default();
        annotations.insert(REF_NAME.to_string(), name.to_string());
        desc.set_annotations(Some(annotations));
        self.update_index(|descs| {
            descs.retain(|d| ref_name(d) != Some(name));
            descs.push(desc);
            Ok(())
        })
    }

    /// Removes the name `name` (the blobs stay until [`Store::gc`]). A missing name is
    /// [`Error::NotFound`].
    pub fn remove_name(&self, name: &str) -> Result<()> {
        self.update_index(|descs| {
            let before = descs.len();
            descs.retain(|d| ref_name(d) != Some(name));
            if descs.len() == before {
                return Err(Error::NotFound(name.to_string()));
            }
            Ok(())
        })
    }

    /// Finds what `name_or_digest` refers to: an exact name; else the name with `:latest` when
    /// it has no tag; else a digest (`sha256:<hex>`, or a unique prefix of at least 4 hex digits,
    /// with or without `sha256:`) of a named manifest or of any manifest blob in the store.
    pub fn resolve(&self, name_or_digest: &str) -> Result<Descriptor> {
        let descs = self.read_index()?.manifests().clone();
        if let Some(d) = descs.iter().find(|d| ref_name(d) == Some(name_or_digest)) {
            return Ok(d.clone());
        }
        if !has_tag(name_or_digest) {
            let latest = format!("{name_or_digest}:latest");
            if let Some(d) = descs.iter().find(|d| ref_name(d) == Some(latest.as_str())) {
                return Ok(d.clone());
            }
        }
        let hex = name_or_digest
            .strip_prefix("sha256:")
            .unwrap_or(name_or_digest);
        let is_hex = hex.len() >= MIN_DIGEST_PREFIX
            && hex.len() <= 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_hex {
            return Err(Error::NotFound(name_or_digest.to_string()));
        }
        // Named manifests first: their descriptors carry the media type and platform.
        let mut found: Vec<Descriptor> = Vec::new();
        for d in &descs {
            if d.digest().digest().starts_with(hex)
                && !found.iter().any(|f| f.digest() == d.digest())
            {
                found.push(d.clone());
            }
        }
        if found.is_empty() {
            found = self.manifest_blobs_with_prefix(hex)?;
        }
        match found.len() {
            0 => Err(Error::NotFound(name_or_digest.to_string())),
            1 => Ok(found.remove(0)),
            n => Err(Error::BadReference {
                reference: name_or_digest.to_string(),
                why: format!("ambiguous: {n} images have digests starting with it"),
            }),
        }
    }

    /// Every name in the store, sorted by name.
    pub fn list(&self) -> Result<Vec<Named>> {
        let mut out: Vec<Named> = self
            .read_index()?
            .manifests()
            .iter()
            .filter_map(|d| {
                ref_name(d).map(|n| Named {
                    name: n.to_string(),
                    descriptor: d.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Reads and verifies the image `d` points to: for an index, the manifest for `platform`
    /// (by default linux and the host's architecture) is picked; then the manifest and its
    /// config are read and verified against their digests.
    pub fn image(&self, d: &Descriptor, platform: Option<&Platform>) -> Result<Image> {
        crate::image::load(self, d, platform)
    }

    /// Path of `index.json`.
    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn verified_dir(&self) -> PathBuf {
        self.root.join("verified")
    }

    pub(crate) fn gc_shared(&self) -> Result<lock::FileLock> {
        lock::FileLock::shared(&self.root.join("gc.lock"))
    }

    pub(crate) fn gc_exclusive(&self) -> Result<lock::FileLock> {
        lock::FileLock::exclusive(&self.root.join("gc.lock"))
    }

    pub(crate) fn index_lock(&self) -> Result<lock::FileLock> {
        lock::FileLock::exclusive(&self.root.join("index.lock"))
    }

    /// Reads `index.json` (bounded).
    pub(crate) fn read_index(&self) -> Result<ImageIndex> {
        let path = self.index_path();
        let bytes = read_limited(&path, INDEX_LIMIT, "index.json")?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::malformed(path.display().to_string(), "index.json", e.to_string()))
    }

    fn write_index(&self, index: &ImageIndex) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(index)
            .map_err(|e| Error::malformed("index.json", "index.json", e.to_string()))?;
        self.write_atomic(&self.index_path(), &bytes)
    }

    /// Read-modify-write of the index's manifest list under the index lock.
    fn update_index(&self, f: impl FnOnce(&mut Vec<Descriptor>) -> Result<()>) -> Result<()> {
        let _lock = self.index_lock()?;
        let mut index = self.read_index()?;
        let mut descs = index.manifests().clone();
        f(&mut descs)?;
        index.set_manifests(descs);
        self.write_index(&index)
    }

    /// Writes `bytes` to `dest` through a temp file in `tmp/` and a rename.
    pub(crate) fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.tmp_dir();
        let mut file = tempfile::Builder::new()
            .prefix("write-")
            .tempfile_in(&tmp)
            .map_err(|e| Error::io("create temp file in", &tmp, e))?;
        file.write_all(bytes)
            .and_then(|()| file.as_file().sync_all())
            .map_err(|e| Error::io("write", file.path().to_path_buf(), e))?;
        file.persist(dest)
            .map_err(|e| Error::io("rename into place", dest, e.error))?;
        Ok(())
    }

    /// Descriptors of the manifest and index blobs whose hex name starts with `hex`.
    fn manifest_blobs_with_prefix(&self, hex: &str) -> Result<Vec<Descriptor>> {
        let mut out = Vec::new();
        for digest in self.blob_digests()? {
            if !digest.hex().starts_with(hex) {
                continue;
            }
            let Ok(bytes) = self.read_small(&digest, MANIFEST_LIMIT) else {
                continue;
            };
            if let Some(media_type) = sniff_manifest(&bytes) {
                out.push(descriptor(&media_type, &digest, bytes.len() as u64)?);
            }
        }
        Ok(out)
    }

    /// Every digest under `blobs/sha256/` (files with other names are skipped).
    pub(crate) fn blob_digests(&self) -> Result<Vec<Digest>> {
        let dir = self.blobs_dir();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let name = entry.file_name();
            if let Some(d) = name
                .to_str()
                .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok())
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The media type of a manifest or index from its JSON, if it is one.
pub(crate) fn sniff_manifest(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let obj = v.as_object()?;
    if let Some(mt) = obj.get("mediaType").and_then(|m| m.as_str())
        && (media::is_manifest(mt) || media::is_index(mt))
    {
        return Some(mt.to_string());
    }
    if obj.contains_key("manifests") {
        Some(media::OCI_INDEX.to_string())
    } else if obj.contains_key("layers") && obj.contains_key("config") {
        Some(media::OCI_MANIFEST.to_string())
    } else {
        None
    }
}

fn empty_index() -> Result<ImageIndex> {
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(Vec::<Descriptor>::new())
        .build()
        .map_err(|e| Error::malformed("index.json", "index.json", e.to_string()))
}

fn check_oci_layout(path: &Path, bytes: &[u8]) -> Result<()> {
    let bad = |detail: String| Error::malformed(path.display().to_string(), "oci-layout", detail);
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
        Some(ver) if ver.starts_with("1.") => Ok(()),
        Some(ver) => Err(bad(format!("unsupported imageLayoutVersion '{ver}'"))),
        None => Err(bad("no imageLayoutVersion".to_string())),
    }
}

fn check_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "empty name"
    } else if name.len() > MAX_NAME_LEN {
        "name too long"
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "names contain no spaces or control characters"
    } else if name.parse::<Digest>().is_ok() {
        "a digest is not a name"
    } else {
        return Ok(());
    };
    Err(Error::BadReference {
        reference: name.chars().take(200).collect(),
        why: why.to_string(),
    })
}

/// Whether a name has a tag or digest after its last `/` (`debian:12`, `x@sha256:..`).
fn has_tag(name: &str) -> bool {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.contains(':') || last.contains('@')
}

/// The `ref.name` annotation of a descriptor.
pub(crate) fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

/// Our digest of a descriptor (sha256 only), or [`Error::BadDigest`].
pub(crate) fn descriptor_digest(d: &Descriptor) -> Result<Digest> {
    d.digest().to_string().parse()
}

/// The `oci-spec` digest for ours (a `Digest` always prints as a valid sha256 digest, so this
/// only fails if `oci-spec` changes its rules).
pub(crate) fn oci_digest(d: &Digest) -> Result<oci_spec::image::Digest> {
    d.to_string()
        .parse()
        .map_err(|e: oci_spec::OciSpecError| Error::BadDigest {
            digest: d.to_string(),
            why: e.to_string(),
        })
}

/// Reads a whole small file, refusing anything larger than `limit`.
pub(crate) fn read_limited(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::malformed(
            path.display().to_string(),
            what,
            format!("larger than the limit of {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// A descriptor for a blob.
pub fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Result<Descriptor> {
    Ok(Descriptor::new(
        MediaType::from(media_type),
        size,
        oci_digest(digest)?,
    ))
}

/// Annotations map with one entry.
pub(crate) fn one_annotation(key: &str, value: &str) -> HashMap<String, String> {
    HashMap::from([(key.to_string(), value.to_string())])
}
