//! Pulling images from a registry into the store and pushing them from the store to a
//! registry: the registry client and the store put together, with digests checked both ways.

use std::sync::Mutex;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, Platform};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Image, is_disk_manifest, pick_platform};
use crate::media;
use crate::reference::Reference;
use crate::registry::{BlobSink, Client};
use crate::store::{BlobWriter, MANIFEST_LIMIT, Store, descriptor, descriptor_digest};

/// How many blobs move at once.
const PARALLEL_BLOBS: usize = 3;

/// What a transfer reports as it goes, one blob at a time (several blobs move at once).
pub trait TransferProgress: Sync {
    /// A blob of `size` bytes starts moving.
    fn start(&self, digest: &Digest, size: u64);
    /// `done` bytes of the blob have moved so far.
    fn advance(&self, digest: &Digest, done: u64);
    /// The blob is complete; `moved` is false when nothing had to be sent (already there).
    fn finish(&self, digest: &Digest, moved: bool);
    /// Whether the user asked to stop (Ctrl-C): transfers then fail soon with
    /// [`Error::Interrupted`], leaving no partial blob.
    fn cancelled(&self) -> bool {
        false
    }
}

/// A [`TransferProgress`] that reports nothing.
pub struct Quiet;

impl TransferProgress for Quiet {
    fn start(&self, _: &Digest, _: u64) {}
    fn advance(&self, _: &Digest, _: u64) {}
    fn finish(&self, _: &Digest, _: bool) {}
}

/// Pulls `r` into the store and names it `r`; returns the descriptor of the manifest stored
/// (of the chosen platform's manifest when `r` is a multi-platform index).
///
/// Blobs the store has are not downloaded again, so a pull that was killed resumes where it
/// stopped. Every blob is verified against its digest before it becomes visible.
pub fn pull(
    store: &Store,
    client: &Client,
    r: &Reference,
    platform: Option<&Platform>,
    progress: &dyn TransferProgress,
) -> Result<Descriptor> {
    // Keeps gc from collecting what this pull has stored until it is named.
    let _guard = store.write_guard()?;
    let mut fetched = client.get_manifest(r)?;
    if media::is_index(&fetched.media_type) {
        let index: ImageIndex = serde_json::from_slice(&fetched.bytes)
            .map_err(|e| Error::malformed(r.to_string(), "image index", e.to_string()))?;
        let chosen = pick_platform(&index, platform, &fetched.digest)?;
        let digest = descriptor_digest(&chosen)?;
        fetched = client.get_manifest(&r.with_digest(digest))?;
        if !media::is_manifest(&fetched.media_type) {
            return Err(Error::malformed(
                r.to_string(),
                "image index",
                format!(
                    "{digest} is a {}, not an image manifest",
                    fetched.media_type
                ),
            ));
        }
    }
    let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes)
        .map_err(|e| Error::malformed(r.to_string(), "image manifest", e.to_string()))?;
    check_media_types(&r.to_string(), &manifest)?;
    let mut blobs = vec![manifest.config().clone()];
    blobs.extend(manifest.layers().iter().cloned());
    let wanted = blobs
        .iter()
        .map(|d| Ok((descriptor_digest(d)?, d.size())))
        .collect::<Result<Vec<_>>>()?;
    let downloaded = for_each_parallel(&wanted, |digest, size| {
        if store.has_blob(digest) {
            progress.finish(digest, false);
            return Ok(());
        }
        progress.start(digest, size);
        let mut w = store
            .blob_writer()?
            .with_source(format!("{}@{digest}", r.repository));
        let mut sink = Cancellable {
            inner: &mut w,
            progress,
        };
        client.get_blob(r, digest, size, &mut sink, &|n| progress.advance(digest, n))?;
        w.commit(Some(digest))?;
        progress.finish(digest, true);
        Ok(())
    });
    interrupted_or(downloaded, progress)?;
    // The client checked the manifest's digest; the store checks it again as it writes.
    let stored = store.put_bytes(&fetched.bytes)?;
    let desc = descriptor(&fetched.media_type, &stored, fetched.bytes.len() as u64)?;
    store.set_name(&r.to_string(), &desc)?;
    Ok(desc)
}

/// Pushes `image` from the store to `remote`: every blob the registry lacks (mounted from
/// `mount_from`, a repository of the same registry, when it has them), then the manifest
/// byte for byte, so the registry's digest is the store's. Returns that digest.
///
/// Every blob is verified before it is sent: a tampered blob stops the push.
pub fn push(
    store: &Store,
    client: &Client,
    image: &Image,
    remote: &Reference,
    mount_from: Option<&str>,
    progress: &dyn TransferProgress,
) -> Result<Digest> {
    let manifest_bytes = store.read_small(&image.manifest_digest, MANIFEST_LIMIT)?;
    let mut blobs = vec![image.manifest.config().clone()];
    blobs.extend(image.manifest.layers().iter().cloned());
    let wanted = blobs
        .iter()
        .map(|d| Ok((descriptor_digest(d)?, d.size())))
        .collect::<Result<Vec<_>>>()?;
    for (digest, _) in &wanted {
        store.verify_cached(digest)?;
    }
    let uploaded = for_each_parallel(&wanted, |digest, size| {
        progress.start(digest, size);
        let source = CancellableFile {
            path: store.blob_path(digest),
            progress,
        };
        let outcome = client.push_blob(remote, digest, size, &source, mount_from, &|n| {
            progress.advance(digest, n)
        })?;
        progress.finish(digest, outcome.uploaded());
        Ok(())
    });
    interrupted_or(uploaded, progress)?;
    let media_type = image.manifest_descriptor.media_type().to_string();
    client.put_manifest(remote, &manifest_bytes, &media_type)
}

/// Refuses a manifest with a layer stamp cannot use, before anything is downloaded.
fn check_media_types(source: &str, m: &ImageManifest) -> Result<()> {
    let disk = is_disk_manifest(m);
    for layer in m.layers() {
        let t = layer.media_type().to_string();
        let known = if disk {
            t == media::STAMP_DISK_CHUNK
        } else {
            media::layer_compression(&t).is_some()
        };
        if !known {
            return Err(Error::UnsupportedMediaType {
                source_name: format!("{source} layer {}", layer.digest()),
                media_type: t,
            });
        }
    }
    Ok(())
}

/// Runs `f` on every (digest, size), [`PARALLEL_BLOBS`] at a time; the first error wins.
fn for_each_parallel(
    items: &[(Digest, u64)],
    f: impl Fn(&Digest, u64) -> Result<()> + Sync,
) -> Result<()> {
    let next = Mutex::new(items.iter());
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_BLOBS.min(items.len()) {
            s.spawn(|| {
                loop {
                    if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        return;
                    }
                    let item = match next.lock() {
                        Ok(mut it) => it.next().copied(),
                        Err(_) => None,
                    };
                    let Some((digest, size)) = item else { return };
                    if let Err(e) = f(&digest, size) {
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    match first_error.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// `result`, or [`Error::Interrupted`] when it failed because the user asked to stop.
fn interrupted_or(result: Result<()>, progress: &dyn TransferProgress) -> Result<()> {
    match result {
        Err(_) if progress.cancelled() => Err(Error::Interrupted),
        other => other,
    }
}

/// The error a transfer's reader or writer returns once the user has asked to stop (not
/// `ErrorKind::Interrupted`, which `write_all` and `read_exact` would retry forever).
fn cancelled_error() -> std::io::Error {
    std::io::Error::other("interrupted by the user")
}

/// A download sink that fails its next write once the transfer is cancelled.
struct Cancellable<'a, W> {
    inner: W,
    progress: &'a dyn TransferProgress,
}

impl<W: BlobSink> std::io::Write for Cancellable<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.progress.cancelled() {
            return Err(cancelled_error());
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: BlobSink> BlobSink for Cancellable<'_, W> {
    fn reset(&mut self) -> std::io::Result<()> {
        self.inner.reset()
    }
}

/// A blob file to upload whose reads fail once the transfer is cancelled.
struct CancellableFile<'a> {
    path: std::path::PathBuf,
    progress: &'a dyn TransferProgress,
}

impl crate::registry::BlobSource for CancellableFile<'_> {
    fn open(&self) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        if self.progress.cancelled() {
            return Err(cancelled_error());
        }
        Ok(Box::new(CancellableRead {
            file: std::fs::File::open(&self.path)?,
            progress: self.progress,
        }))
    }
}

struct CancellableRead<'a> {
    file: std::fs::File,
    progress: &'a dyn TransferProgress,
}

impl std::io::Read for CancellableRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.progress.cancelled() {
            return Err(cancelled_error());
        }
        self.file.read(buf)
    }
}

impl BlobSink for BlobWriter {
    fn reset(&mut self) -> std::io::Result<()> {
        BlobWriter::reset(self).map_err(std::io::Error::other)
    }
}
