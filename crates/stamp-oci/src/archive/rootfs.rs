//! `rootfs:FILE`: a root filesystem tar as a one-layer image, and the image stamp makes around
//! one layer (also used by `dir:`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use super::{ImportOptions, Imported, Magic, magic_of};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::manifest_bytes;
use crate::media;
use crate::store::{BlobWriter, Staging, Store, descriptor};

/// A reader that copies everything read through it into a writer.
struct Tee<'a, R> {
    inner: R,
    out: &'a mut BlobWriter,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// A reader that hashes what passes.
struct Hashing<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads a tar stream to its end, checking that it is one.
fn check_tar(r: &mut dyn Read) -> io::Result<()> {
    {
        let mut archive = tar::Archive::new(&mut *r);
        for entry in archive.entries()? {
            entry?;
        }
    }
    io::copy(r, &mut io::sink())?;
    Ok(())
}

pub(crate) fn import_rootfs(store: &Store, path: &Path, opts: &ImportOptions) -> Result<Imported> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut input = BufReader::with_capacity(256 << 10, file);
    let magic = magic_of(input.fill_buf().map_err(|e| Error::io("read", path, e))?);
    let bad = |e: io::Error| Error::malformed(name.clone(), "root filesystem tar", e.to_string());
    let mut staging = store.staging()?;
    let mut w = staging.writer()?.with_source(name.clone());
    let (media_type, diff_id) = match magic {
        Magic::Gzip | Magic::Zstd => {
            // Keep the compressed bytes as the layer; the diff_id is the hash of the tar inside.
            let mut tee = Tee {
                inner: input,
                out: &mut w,
            };
            let hasher = <sha2::Sha256 as sha2::Digest>::new();
            let diff = if magic == Magic::Gzip {
                let mut h = Hashing {
                    inner: flate2::read::MultiGzDecoder::new(&mut tee),
                    hasher,
                };
                check_tar(&mut h).map_err(bad)?;
                h.hasher
            } else {
                let dec = zstd::stream::read::Decoder::with_buffer(BufReader::new(&mut tee))
                    .map_err(bad)?;
                let mut h = Hashing { inner: dec, hasher };
                check_tar(&mut h).map_err(bad)?;
                h.hasher
            };
            io::copy(&mut tee, &mut io::sink()).map_err(bad)?;
            let diff_id = Digest::from_bytes(sha2::Digest::finalize(diff).into());
            let kind = if magic == Magic::Gzip {
                media::OCI_LAYER_GZIP
            } else {
                media::OCI_LAYER_ZSTD
            };
            (kind, Some(diff_id))
        }
        Magic::Xz | Magic::Plain => {
            // Store the tar uncompressed (xz is not a layer compression registries accept).
            let inner: Box<dyn Read> = if magic == Magic::Xz {
                Box::new(xz2::read::XzDecoder::new_multi_decoder(input))
            } else {
                Box::new(input)
            };
            let mut tee = Tee { inner, out: &mut w };
            check_tar(&mut tee).map_err(bad)?;
            (media::OCI_LAYER_TAR, None)
        }
    };
    let (layer, size) = staging.commit(w, None)?;
    let diff_id = diff_id.unwrap_or(layer);
    let descriptor = one_layer_image(staging, media_type, layer, size, diff_id, opts, "rootfs")?;
    Ok(Imported {
        descriptor,
        name: None,
    })
}

/// Writes the config and manifest of a one-layer image around a staged layer and publishes it.
pub(crate) fn one_layer_image(
    mut staging: Staging,
    media_type: &str,
    layer: Digest,
    size: u64,
    diff_id: Digest,
    opts: &ImportOptions,
    what: &str,
) -> Result<oci_spec::image::Descriptor> {
    let created = rfc3339(opts.created);
    let config = serde_json::json!({
        "created": created,
        "architecture": opts.architecture,
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [diff_id.to_string()] },
        "history": [{ "created": created, "created_by": format!("stamp import {what}") }],
    });
    let config_bytes = serde_json::to_vec(&config)
        .map_err(|e| Error::malformed(what.to_string(), "image config", e.to_string()))?;
    let config_digest = staging.put_bytes(&config_bytes)?;
    let config = descriptor(media::OCI_CONFIG, &config_digest, config_bytes.len() as u64)?;
    let layer = descriptor(media_type, &layer, size)?;
    let manifest_bytes = manifest_bytes(what, &config, &[layer], None, None)?;
    staging.publish_manifest(&manifest_bytes)
}

/// Seconds since the epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub(crate) fn rfc3339(secs: i64) -> String {
    stamp_fs::Timestamp::from_secs(secs).to_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_epoch_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
