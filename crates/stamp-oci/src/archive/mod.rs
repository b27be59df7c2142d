//! Importing images from archives and directories into the store, and exporting them.
//!
//! | source | what it is |
//! |---|---|
//! | `oci:DIR[:TAG]` | an OCI image layout directory; TAG picks by `org.opencontainers.image.ref.name` |
//! | `oci-archive:FILE[:TAG]` | a tar of an OCI image layout (`podman save --format oci-archive`) |
//! | `docker-archive:FILE[:TAG]` | `docker save` / `podman save --format docker-archive` |
//! | `rootfs:FILE` | a root filesystem tar (plain, gzip, zstd or xz) as a one-layer image |
//! | `dir:PATH` | a directory as a one-layer image, written deterministically |
//!
//! Every import stages its blobs in a private directory under the store's `tmp/`, verifying each
//! against its digest, and moves them into the store only when the whole image is complete: a
//! malformed archive leaves nothing behind. An import returns the manifest descriptor and the
//! name the archive carries, if any; naming it in the store is the caller's job (hold a
//! [`Store::write_guard`] across both so that a concurrent `gc` cannot intervene).

mod dir;
mod export;
mod layout;
mod rootfs;
mod tarball;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;

use crate::error::{Error, Result};
use crate::store::Store;

pub use export::export;

/// Where an image comes from. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `oci:DIR[:TAG]`.
    OciDir {
        /// The layout directory.
        path: PathBuf,
        /// The `ref.name` to pick; by default the only (or first) manifest.
        tag: Option<String>,
    },
    /// `oci-archive:FILE[:TAG]`.
    OciArchive {
        /// The tar file.
        path: PathBuf,
        /// The `ref.name` to pick; by default the only (or first) manifest.
        tag: Option<String>,
    },
    /// `docker-archive:FILE[:TAG]`.
    DockerArchive {
        /// The tar file.
        path: PathBuf,
        /// The repo tag to pick (as in `RepoTags`); by default the first image.
        tag: Option<String>,
    },
    /// `rootfs:FILE`.
    Rootfs {
        /// The tar file (plain, gzip, zstd or xz; detected by content).
        path: PathBuf,
    },
    /// `dir:PATH`.
    Dir {
        /// The directory.
        path: PathBuf,
    },
}

impl Source {
    /// Parses `oci:`, `oci-archive:`, `docker-archive:`, `rootfs:` and `dir:` sources;
    /// `Ok(None)` for anything else (a registry reference). A `:TAG` suffix (which may itself
    /// contain ':', as in `oci-archive:a.tar:localhost:5000/x:1`) is split off after the
    /// shortest prefix that is an existing path; when none exists, at the first ':'.
    pub fn parse(s: &str) -> Result<Option<Source>> {
        let Some((transport, rest)) = s.split_once(':') else {
            return Ok(None);
        };
        if rest.is_empty()
            && matches!(
                transport,
                "oci" | "oci-archive" | "docker-archive" | "rootfs" | "dir"
            )
        {
            return Err(Error::BadReference {
                reference: s.to_string(),
                why: "no path after the transport".to_string(),
            });
        }
        let with_tag = |rest: &str| -> (PathBuf, Option<String>) {
            if Path::new(rest).exists() {
                return (PathBuf::from(rest), None);
            }
            // The path is the shortest prefix that exists (a name may contain ':'), else
            // everything before the first ':' as skopeo does.
            let colons = rest.match_indices(':').map(|(i, _)| i);
            let split = colons
                .clone()
                .find(|&i| Path::new(&rest[..i]).exists())
                .or_else(|| colons.clone().next());
            match split {
                Some(i) if i > 0 && i + 1 < rest.len() => {
                    (PathBuf::from(&rest[..i]), Some(rest[i + 1..].to_string()))
                }
                _ => (PathBuf::from(rest), None),
            }
        };
        Ok(Some(match transport {
            "oci" => {
                let (path, tag) = with_tag(rest);
                Source::OciDir { path, tag }
            }
            "oci-archive" => {
                let (path, tag) = with_tag(rest);
                Source::OciArchive { path, tag }
            }
            "docker-archive" => {
                let (path, tag) = with_tag(rest);
                Source::DockerArchive { path, tag }
            }
            "rootfs" => Source::Rootfs {
                path: PathBuf::from(rest),
            },
            "dir" => Source::Dir {
                path: PathBuf::from(rest),
            },
            _ => return Ok(None),
        }))
    }
}

impl Source {
    /// The file or directory the source reads.
    pub fn path(&self) -> &Path {
        match self {
            Source::OciDir { path, .. }
            | Source::OciArchive { path, .. }
            | Source::DockerArchive { path, .. }
            | Source::Rootfs { path }
            | Source::Dir { path } => path,
        }
    }

    /// What `stamp import PATH` imports: a directory with an `oci-layout` file is an OCI layout,
    /// another directory a `dir:`; a file is an `oci-archive` when it holds `oci-layout`, a
    /// `docker-archive` when it holds `manifest.json` (and nothing a root filesystem would),
    /// else a `rootfs` tar. Reads the member names only as far as needed (a root filesystem
    /// is recognised by its first member).
    pub fn detect(path: &Path) -> Result<Source> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
        let path_buf = path.to_path_buf();
        if meta.is_dir() {
            return Ok(if path.join("oci-layout").is_file() {
                Source::OciDir {
                    path: path_buf,
                    tag: None,
                }
            } else {
                Source::Dir { path: path_buf }
            });
        }
        let bad = |e: std::io::Error| {
            Error::malformed(path.display().to_string(), "tar archive", e.to_string())
        };
        let mut archive = tar::Archive::new(open_decompressed(path)?);
        let (mut layout, mut docker) = (false, false);
        for entry in archive.entries().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let name = safe_member_path(&entry.path().map_err(bad)?, path)?;
            match name.as_str() {
                "oci-layout" => layout = true,
                "manifest.json" => docker = true,
                "" | "index.json" | "repositories" | "blobs" => {}
                n if n.starts_with("blobs/") || is_image_archive_member(n) => {}
                _ => return Ok(Source::Rootfs { path: path_buf }),
            }
        }
        Ok(if layout {
            Source::OciArchive {
                path: path_buf,
                tag: None,
            }
        } else if docker {
            Source::DockerArchive {
                path: path_buf,
                tag: None,
            }
        } else {
            Source::Rootfs { path: path_buf }
        })
    }
}

/// Whether a member name is one `docker save` writes: `<64 hex>` with an optional `.json` or
/// `.tar` suffix, or a file in such a directory.
fn is_image_archive_member(name: &str) -> bool {
    let first = name.split('/').next().unwrap_or(name);
    let stem = first
        .strip_suffix(".json")
        .or_else(|| first.strip_suffix(".tar"))
        .unwrap_or(first);
    stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Settings for images stamp makes itself (`rootfs:` and `dir:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// The image config's architecture (GOARCH spelling). By default, `amd64`.
    pub architecture: String,
    /// The config's `created` time and the `dir:` layer's newest mtime, in seconds since the
    /// epoch. By default, `SOURCE_DATE_EPOCH` if set, else 0, for reproducible digests.
    pub created: i64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            architecture: "amd64".to_string(),
            created: source_date_epoch().unwrap_or(0),
        }
    }
}

/// The result of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The manifest (or index) now in the store.
    pub descriptor: Descriptor,
    /// The name the archive gives the image (`ref.name` annotation, `RepoTags`), if any.
    pub name: Option<String>,
}

/// Imports `source` into `store`. See the [module docs](self).
pub fn import(store: &Store, source: &Source, opts: &ImportOptions) -> Result<Imported> {
    match source {
        Source::OciDir { path, tag } => layout::import_dir(store, path, tag.as_deref()),
        Source::OciArchive { path, tag } => {
            tarball::import_oci_archive(store, path, tag.as_deref())
        }
        Source::DockerArchive { path, tag } => {
            tarball::import_docker_archive(store, path, tag.as_deref())
        }
        Source::Rootfs { path } => rootfs::import_rootfs(store, path, opts),
        Source::Dir { path } => dir::import_dir(store, path, opts),
    }
}

/// [`import`], remembering the result for a file source by the file's identity (device, inode,
/// size, modification time), as `make` judges freshness: importing the same unchanged archive
/// again returns the same image at once instead of re-reading it. The memo lives in the store's
/// `cache/import/` (emptied by `gc`) and is used only while the store still holds the manifest.
pub fn import_memoized(store: &Store, source: &Source, opts: &ImportOptions) -> Result<Imported> {
    use std::os::unix::fs::MetadataExt;
    let file = match source {
        Source::OciArchive { path, .. }
        | Source::DockerArchive { path, .. }
        | Source::Rootfs { path } => path,
        Source::OciDir { .. } | Source::Dir { .. } => return import(store, source, opts),
    };
    let Ok(meta) = std::fs::metadata(file) else {
        return import(store, source, opts);
    };
    let canonical = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
    let key = crate::Digest::of(
        format!(
            "{source:?}|{}|{opts:?}|{}|{}|{}|{}.{}",
            canonical.display(),
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        )
        .as_bytes(),
    );
    let memo = store.root().join("cache").join("import").join(key.hex());
    if let Ok(bytes) = std::fs::read(&memo) {
        if let Ok((digest, name)) = serde_json::from_slice::<(String, Option<String>)>(&bytes) {
            if let Ok(descriptor) = store.resolve(&digest) {
                return Ok(Imported { descriptor, name });
            }
        }
    }
    let imported = import(store, source, opts)?;
    // A memo that cannot be written costs only the next import's speed.
    let _ = write_memo(&memo, &imported);
    Ok(imported)
}

/// Writes an import memo through a temporary name.
fn write_memo(memo: &Path, imported: &Imported) -> std::io::Result<()> {
    let dir = memo.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let value = (
        imported.descriptor.digest().to_string(),
        imported.name.clone(),
    );
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, &serde_json::to_vec(&value)?)?;
    tmp.persist(memo).map_err(|e| e.error)?;
    Ok(())
}

/// `SOURCE_DATE_EPOCH`, when set to an integer.
pub fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

/// Compression of a stream, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Magic {
    Plain,
    Gzip,
    Zstd,
    Xz,
}

pub(crate) fn magic_of(head: &[u8]) -> Magic {
    if head.starts_with(&[0x1f, 0x8b]) {
        Magic::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Magic::Zstd
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Magic::Xz
    } else {
        Magic::Plain
    }
}

/// Opens `path` and undoes gzip, zstd or xz compression (detected by content).
pub(crate) fn open_decompressed(path: &Path) -> Result<Box<dyn Read>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut r = BufReader::with_capacity(256 << 10, file);
    let head = r.fill_buf().map_err(|e| Error::io("read", path, e))?;
    Ok(match magic_of(head) {
        Magic::Plain => Box::new(r),
        Magic::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Magic::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(r).map_err(|e| Error::io("read", path, e))?,
        ),
        Magic::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(r)),
    })
}

/// A member name made safe: relative, no `..`, `./` and duplicate slashes removed.
pub(crate) fn safe_member_path(raw: &Path, archive: &Path) -> Result<String> {
    use std::path::Component;
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().ok_or_else(|| {
                Error::malformed(
                    archive.display().to_string(),
                    "archive member name",
                    format!("{} is not UTF-8", raw.display()),
                )
            })?),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => {
                return Err(Error::malformed(
                    archive.display().to_string(),
                    "archive member name",
                    format!("{} leaves the archive (absolute or ..)", raw.display()),
                ));
            }
        }
    }
    Ok(parts.join("/"))
}
