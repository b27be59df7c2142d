//! A disk image as a stamp disk artifact in the store: the disk file in content-defined layers,
//! a [`DiskConfig`], and an OCI 1.1 manifest with `artifactType` [`media::STAMP_DISK_ARTIFACT`].

use std::io::{Read, Write};
use std::path::Path;

use serde_json::json;

use super::DiskConfig;
use super::chunk::{Piece, split};
use crate::digest::{Digest, DigestWriter};
use crate::error::{Error, Result};
use crate::media;
use crate::store::{BlobWriter, Store};

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

/// Stores the disk file at `path` as an artifact; returns the manifest's digest and size.
///
/// `config` supplies the optional fields (boot mode, architecture, source image); the format,
/// sizes, digest and file name are read from the file.
pub fn store_disk(
    store: &Store,
    path: &Path,
    boot_mode: Option<String>,
    architecture: Option<String>,
    source_image: Option<Digest>,
    progress: &dyn Fn(u64),
) -> Result<(Digest, u64)> {
    let (format, virtual_size) = describe(path)?;
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
    let config_bytes = serde_json::to_vec(&config).map_err(|e| {
        Error::malformed(name.clone(), "disk config", e.to_string())
    })?;
    let config_digest = store.put_bytes(&config_bytes)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": media::STAMP_DISK_ARTIFACT,
        "config": {
            "mediaType": media::STAMP_DISK_CONFIG,
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": layers.iter().map(|(d, size)| json!({
            "mediaType": media::STAMP_DISK_CHUNK,
            "digest": d,
            "size": size,
        })).collect::<Vec<_>>(),
        "annotations": { "org.opencontainers.image.title": config.file_name },
    });
    let bytes = serde_json::to_vec(&manifest)
        .map_err(|e| Error::malformed(name, "manifest", e.to_string()))?;
    let digest = store.put_bytes(&bytes)?;
    Ok((digest, bytes.len() as u64))
}

/// Writes the disk of an artifact to `out` by concatenating its layers, verifying each layer
/// and the whole file against the config's digest.
pub fn write_disk(
    store: &Store,
    config: &DiskConfig,
    layers: &[Digest],
    out: &mut dyn Write,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let mut whole = DigestWriter::new(out);
    let mut buf = vec![0u8; 1 << 20];
    for layer in layers {
        let mut r = store.open_verified(layer)?;
        loop {
            let n = r
                .read(&mut buf)
                .map_err(|e| Error::io("read blob", store.blob_path(layer), e))?;
            if n == 0 {
                break;
            }
            whole
                .write_all(&buf[..n])
                .map_err(|e| Error::io("write", &config.file_name, e))?;
            progress(n as u64);
        }
    }
    let (digest, size, _) = whole.finish();
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
