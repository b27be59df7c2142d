//! Blobs: writing (hash as it goes, verify, rename into place), reading and verification.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use super::lock::FileLock;
use super::{Store, descriptor_digest};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::media::{self, Compression};

/// Buffer size for streaming copies and hashing.
const BUF: usize = 256 << 10;

/// A blob being written: a temp file under the store's `tmp/` that hashes what is written.
///
/// [`BlobWriter::commit`] checks the digest and renames the file into `blobs/sha256/` (atomic:
/// readers see the whole blob or nothing). Dropping the writer without committing removes the
/// temp file. The writer holds off [`Store::gc`] while it exists; an operation that writes
/// several blobs before naming them must also hold a [`Store::write_guard`] throughout, or a
/// `gc` between two blobs may remove the first.
///
/// Durability: the temp file is fsynced before the rename, so after a crash a blob is either
/// complete or absent (the rename itself may be lost, which only means a re-download).
pub struct BlobWriter {
    file: NamedTempFile,
    hasher: Sha256,
    len: u64,
    dest_dir: PathBuf,
    source_name: String,
    _gc: FileLock,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("temp", &self.file.path())
            .field("len", &self.len)
            .finish()
    }
}

impl BlobWriter {
    /// The temporary file being written.
    pub(crate) fn temp_path(&self) -> &Path {
        self.file.path()
    }
    pub(crate) fn new(temp_dir: &Path, dest_dir: PathBuf, gc: FileLock) -> Result<Self> {
        let file = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(temp_dir)
            .map_err(|e| Error::io("create temp file in", temp_dir, e))?;
        Ok(BlobWriter {
            file,
            hasher: Sha256::new(),
            len: 0,
            dest_dir,
            source_name: "blob".to_string(),
            _gc: gc,
        })
    }

    /// Names where the content comes from (a URL, an archive member) for error messages.
    /// By default, "blob".
    pub fn with_source(mut self, source_name: impl Into<String>) -> Self {
        self.source_name = source_name.into();
        self
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Returns true if and only if nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Discards what was written, to start over (a restarted download).
    pub fn reset(&mut self) -> Result<()> {
        let f = self.file.as_file_mut();
        f.set_len(0)
            .and_then(|()| f.rewind())
            .map_err(|e| Error::io("truncate", self.file.path().to_path_buf(), e))?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    /// Finishes the blob: when `expected` is given and the content hashes to something else,
    /// the temp file is removed and the result is [`Error::DigestMismatch`]. Otherwise the file is
    /// synced and renamed to `blobs/sha256/<hex>`. Returns the digest and the size.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let BlobWriter {
            mut file,
            hasher,
            len,
            dest_dir,
            source_name,
            _gc,
        } = self;
        let actual = Digest::from_bytes(hasher.finalize().into());
        if let Some(expected) = expected
            && *expected != actual
        {
            return Err(Error::DigestMismatch {
                source_name,
                expected: *expected,
                actual,
                size: len,
            });
        }
        let temp = file.path().to_path_buf();
        file.flush()
            .and_then(|()| file.as_file().sync_all())
            .map_err(|e| Error::io("sync", &temp, e))?;
        let dest = dest_dir.join(actual.hex());
        file.persist(&dest)
            .map_err(|e| Error::io("rename into place", &dest, e.error))?;
        Ok((actual, len))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A reader that hashes what is read through it.
pub(crate) struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Reads the rest of the input, then returns its digest and length.
    pub(crate) fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest::from_bytes(self.hasher.finalize().into()), self.len))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// The SHA-256 of a file's content, streaming.
pub(crate) fn hash_file(path: &Path) -> Result<(Digest, u64)> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    HashReader::new(io::BufReader::with_capacity(BUF, file))
        .finish()
        .map_err(|e| Error::io("read", path, e))
}

impl Store {
    /// Starts writing a blob. See [`BlobWriter`].
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        BlobWriter::new(&self.tmp_dir(), self.blobs_dir(), self.gc_shared()?)
    }

    /// Stores `bytes` as a blob and returns its digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let mut w = self.blob_writer()?;
        let temp = w.file.path().to_path_buf();
        w.write_all(bytes)
            .map_err(|e| Error::io("write", temp, e))?;
        Ok(w.commit(None)?.0)
    }

    /// Returns true if and only if a blob named `d` is in the store (its content is not checked).
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Where blob `d` is (or would be). Reading it this way is unverified: use
    /// [`Store::verify`] or [`Store::verify_cached`] first.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }

    /// Reads a small blob (a manifest, an index, a config) whole and checks its digest:
    /// [`Error::MissingBlob`], a [`Error::Malformed`] when it is larger than `limit`, or
    /// [`Error::Tampered`].
    pub fn read_small(&self, d: &Digest, limit: u64) -> Result<Vec<u8>> {
        read_small_at(&self.blob_path(d), d, limit)
    }

    /// Re-hashes blob `d` whole: [`Error::MissingBlob`] or [`Error::Tampered`] when its content
    /// no longer matches its name. Records the verification for [`Store::verify_cached`].
    pub fn verify(&self, d: &Digest) -> Result<()> {
        let path = self.blob_path(d);
        if !path.is_file() {
            return Err(Error::MissingBlob(*d));
        }
        let (actual, _) = hash_file(&path)?;
        if actual != *d {
            return Err(Error::Tampered {
                digest: *d,
                actual: actual.to_string(),
            });
        }
        self.record_verified(d);
        Ok(())
    }

    /// Like [`Store::verify`], but skips the re-hash when the blob's file is unchanged since its
    /// last full verification.
    ///
    /// Policy: after a blob is fully hashed, `verified/<hex>` records its size, modification time
    /// (ns), change time (ns) and inode. A blob whose metadata still matches is trusted; any
    /// write to it (which changes the mtime and ctime) or a replaced file (a new inode) makes the
    /// next call hash it again. Only a deliberate forgery of ctime (which needs the clock set
    /// back) goes unnoticed; `stamp fsck` always hashes everything.
    pub fn verify_cached(&self, d: &Digest) -> Result<()> {
        let path = self.blob_path(d);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::MissingBlob(*d)),
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        let marker = self.verified_dir().join(d.hex());
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(stamp_of(&meta).as_str()) {
            return Ok(());
        }
        self.verify(d)
    }

    /// Records that blob `d` was just verified (best effort: a failure only costs a re-hash).
    pub(crate) fn record_verified(&self, d: &Digest) {
        if let Ok(meta) = std::fs::metadata(self.blob_path(d)) {
            let marker = self.verified_dir().join(d.hex());
            if let Err(e) = self.write_atomic(&marker, stamp_of(&meta).as_bytes()) {
                tracing::debug!("could not record the verification of {d}: {e}");
            }
        }
    }

    /// The layer `layer` as a verified uncompressed tar, stored as blob `diff_id`, and its path.
    ///
    /// A gzip or zstd layer is decompressed once into the blob named by its `diff_id` (checking
    /// both the compressed digest and the diff_id); a plain tar layer is its own uncompressed
    /// blob. Later calls are instant: the uncompressed blob is checked with
    /// [`Store::verify_cached`] (re-hashed only if its file changed since it was verified). A
    /// [`Store::gc`] keeps it as long as an image whose config lists `diff_id` is named.
    pub fn uncompressed_layer(&self, layer: &Descriptor, diff_id: &Digest) -> Result<PathBuf> {
        let media_type = layer.media_type().to_string();
        let compression =
            media::layer_compression(&media_type).ok_or_else(|| Error::UnsupportedMediaType {
                source_name: format!("layer {}", layer.digest()),
                media_type: media_type.clone(),
            })?;
        let digest = descriptor_digest(layer)?;
        let out = self.blob_path(diff_id);
        if compression == Compression::None {
            if digest != *diff_id {
                return Err(Error::malformed(
                    format!("layer {digest}"),
                    "image config",
                    format!("an uncompressed layer's diff_id must be its digest, not {diff_id}"),
                ));
            }
            self.verify_cached(&digest)?;
            return Ok(out);
        }
        if out.is_file() {
            self.verify_cached(diff_id)?;
            return Ok(out);
        }
        let path = self.blob_path(&digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::MissingBlob(digest));
            }
            Err(e) => return Err(Error::io("open", path, e)),
        };
        let mut writer = self
            .blob_writer()?
            .with_source(format!("decompressed layer {digest}"));
        let reader = HashReader::new(io::BufReader::with_capacity(BUF, file));
        let read_err = |e: io::Error| {
            Error::malformed(format!("layer {digest}"), "compressed layer", e.to_string())
        };
        let rest = match compression {
            Compression::Gzip => {
                let mut dec = flate2::read::MultiGzDecoder::new(reader);
                copy_decoded(&mut dec, &mut writer, read_err)?;
                dec.into_inner()
            }
            Compression::Zstd => {
                let mut dec = zstd::stream::read::Decoder::with_buffer(io::BufReader::new(reader))
                    .map_err(read_err)?;
                copy_decoded(&mut dec, &mut writer, read_err)?;
                dec.finish().into_inner()
            }
            Compression::None => return Ok(out),
        };
        let (actual, _) = rest.finish().map_err(|e| Error::io("read", &path, e))?;
        if actual != digest {
            return Err(Error::Tampered {
                digest,
                actual: actual.to_string(),
            });
        }
        self.record_verified(&digest);
        writer.commit(Some(diff_id))?;
        self.record_verified(diff_id);
        Ok(out)
    }
}

/// Copies a decoder's output into `w`: a read error is the layer's (`read_err`), a write
/// error the store's (a full disk is not a malformed layer).
fn copy_decoded(
    dec: &mut impl Read,
    w: &mut BlobWriter,
    read_err: impl Fn(io::Error) -> Error,
) -> Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        w.write_all(&buf[..n])
            .map_err(|e| Error::io("write the decompressed layer to", w.temp_path(), e))?;
    }
}

/// Reads a small file whole and checks it hashes to `d`.
pub(crate) fn read_small_at(path: &Path, d: &Digest, limit: u64) -> Result<Vec<u8>> {
    if !path.exists() {
        return Err(Error::MissingBlob(*d));
    }
    let bytes = super::read_limited(path, limit, "blob (manifest or config)")?;
    let actual = Digest::of(&bytes);
    if actual != *d {
        return Err(Error::Tampered {
            digest: *d,
            actual: actual.to_string(),
        });
    }
    Ok(bytes)
}

/// What `verified/<hex>` records about a blob file.
fn stamp_of(meta: &std::fs::Metadata) -> String {
    format!(
        "size={} mtime={}.{} ctime={}.{} ino={}\n",
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
        meta.ino()
    )
}
