//! A disk image as a stamp disk artifact in the store: the disk file in content-defined layers,
//! a [`DiskConfig`], and an OCI 1.1 manifest with `artifactType` [`media::STAMP_DISK_ARTIFACT`].

use std::io::{Read, Write};
use std::path::Path;

use super::DiskConfig;
use super::chunk::{Piece, split};
use crate::digest::{Digest, DigestWriter};
use crate::error::{Error, Result};
use crate::media;
use oci_spec::image::Descriptor;

use crate::image::{Image, manifest_bytes};
use crate::store::{BlobWriter, Store, descriptor, descriptor_digest};

/// Reads and checks a disk file to be stored: its format, virtual size, and that it stands alone.
pub fn describe(path: &Path) -> Result<(String, u64)> {
    let info = stamp_disk::info(path, None).map_err(|e| Error::Disk {
        path: path.to_path_buf(),
        source: e,
    })?;
    if let Some(backing) = info.backing_file {
        return Err(Error::malformed(
            path.display().to_string(),
            "disk image",
            format!(
                "it has a backing file ({backing}); convert it to a self-contained image first"
            ),
        ));
    }
    Ok((info.format, info.virtual_size))
}

/// Stores the disk file at `path` as an artifact; returns the manifest's descriptor.
///
/// The optional fields (boot mode, architecture, source image) are the caller's; the format,
/// sizes, digest and file name are read from the file. Hold a [`crate::store::WriteGuard`] until
/// the manifest is named, or `gc` may collect it.
pub fn store_disk(
    store: &Store,
    path: &Path,
    boot_mode: Option<String>,
    architecture: Option<String>,
    source_image: Option<Digest>,
    progress: &dyn Fn(u64),
) -> Result<Descriptor> {
    let (format, virtual_size) = describe(path)?;
    // Keeps gc from collecting the layers before the caller names the manifest.
    let _guard = store.write_guard()?;
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    // The whole file's digest is computed while the chunker reads it.
    let mut whole = DigestWriter::new(std::io::sink());
    let tee = TeeReader {
        inner: file,
        copy: &mut whole,
    };
    let mut layers = Vec::new();
    let mut current: Option<BlobWriter> = None;
    split(&name, tee, |piece| {
        match piece {
            Piece::Data(bytes) => {
                let w = match &mut current {
                    Some(w) => w,
                    None => current.insert(store.blob_writer()?),
                };
                w.write_all(bytes)
                    .map_err(|e| Error::io("write a blob of", path, e))?;
                progress(bytes.len() as u64);
            }
            Piece::End => {
                if let Some(w) = current.take() {
                    layers.push(w.commit(None)?);
                }
            }
        }
        Ok(())
    })?;
    let (file_digest, file_size, _) = whole.finish();
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("disk.{format}"));
    let config = DiskConfig {
        format,
        virtual_size,
        file_size,
        file_digest,
        file_name,
        boot_mode,
        architecture,
        source_image,
    };
    let config_bytes = serde_json::to_vec(&config)
        .map_err(|e| Error::malformed(name.clone(), "disk config", e.to_string()))?;
    let config_digest = store.put_bytes(&config_bytes)?;
    let layers = layers
        .iter()
        .map(|(d, size)| descriptor(media::STAMP_DISK_CHUNK, d, *size))
        .collect::<Result<Vec<_>>>()?;
    let bytes = manifest_bytes(
        &name,
        &descriptor(
            media::STAMP_DISK_CONFIG,
            &config_digest,
            config_bytes.len() as u64,
        )?,
        &layers,
        Some(media::STAMP_DISK_ARTIFACT),
        Some(&config.file_name),
    )?;
    let digest = store.put_bytes(&bytes)?;
    descriptor(media::OCI_MANIFEST, &digest, bytes.len() as u64)
}

/// Writes the disk of an artifact to `out`, verifying every layer and the whole file against
/// the config's digest.
pub fn write_disk(
    store: &Store,
    config: &DiskConfig,
    layers: &[Digest],
    out: &mut dyn Write,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let mut disk = Reassembly::open(store, layers)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = disk
            .read(&mut buf)
            .map_err(|e| Error::io("read the layers of", &config.file_name, e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("write", &config.file_name, e))?;
        progress(n as u64);
    }
    disk.finish(config)
}

/// The disk file of an artifact read back from its layers, hashed as it is read.
pub struct Reassembly {
    files: std::vec::IntoIter<std::fs::File>,
    current: Option<std::fs::File>,
    hash: DigestWriter<std::io::Sink>,
}

impl Reassembly {
    /// Verifies the layers (a tampered one is [`Error::Tampered`]) and opens them in order.
    pub fn open(store: &Store, layers: &[Digest]) -> Result<Self> {
        let mut files = Vec::with_capacity(layers.len());
        for layer in layers {
            store.verify_cached(layer)?;
            let path = store.blob_path(layer);
            files.push(std::fs::File::open(&path).map_err(|e| Error::io("open blob", &path, e))?);
        }
        Ok(Reassembly {
            files: files.into_iter(),
            current: None,
            hash: DigestWriter::new(std::io::sink()),
        })
    }

    /// Checks what was read against the config's file digest and size.
    pub fn finish(self, config: &DiskConfig) -> Result<()> {
        let (digest, size, _) = self.hash.finish();
        if digest != config.file_digest || size != config.file_size {
            return Err(Error::DigestMismatch {
                source_name: format!("the reassembled disk {}", config.file_name),
                expected: config.file_digest,
                actual: digest,
                size,
            });
        }
        Ok(())
    }
}

impl Read for Reassembly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let file = match &mut self.current {
                Some(f) => f,
                None => match self.files.next() {
                    Some(f) => self.current.insert(f),
                    None => return Ok(0),
                },
            };
            let n = file.read(buf)?;
            if n == 0 && !buf.is_empty() {
                self.current = None;
                continue;
            }
            self.hash.write_all(&buf[..n])?;
            return Ok(n);
        }
    }
}

/// A reader that copies what it reads into a writer (here: a hasher).
struct TeeReader<'a, R> {
    inner: R,
    copy: &'a mut DigestWriter<std::io::Sink>,
}

impl<R: Read> Read for TeeReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// The config and layer digests of a disk artifact.
pub fn parts(image: &Image) -> Result<(DiskConfig, Vec<Digest>)> {
    let name = image.manifest_digest.to_string();
    let config: DiskConfig = serde_json::from_slice(&image.config_bytes)
        .map_err(|e| Error::malformed(name.clone(), "disk config", e.to_string()))?;
    let layers = image
        .manifest
        .layers()
        .iter()
        .map(descriptor_digest)
        .collect::<Result<Vec<Digest>>>()?;
    Ok((config, layers))
}
