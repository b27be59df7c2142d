//! Stacking images: one container image made of other images' layers in order, plus layers
//! from tar files (the app launchers' provisioning: a base image, delta layers, the app
//! image, files from the host). Layers are shared with the stacked images, not copied.

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;

use crate::error::{Error, Result};
use crate::image::{Image, manifest_bytes};
use crate::media;
use crate::store::{Store, descriptor};

/// Publishes a container image whose layers are those of `images` in order, then each tar of
/// `extra` as one more (uncompressed) layer; its config is the last image's, with the
/// layers' diff IDs and without a history (which would not match the layers). Returns the
/// manifest's descriptor (the image has no name in the store).
pub fn stack(store: &Store, images: &[Image], extra: &[PathBuf]) -> Result<Descriptor> {
    let last = images
        .last()
        .ok_or_else(|| Error::malformed("stack", "images", "nothing to stack".to_string()))?;
    let not_container = |i: &Image| {
        Error::malformed(
            i.manifest_digest.to_string(),
            "image",
            "is not a container image (no config)".to_string(),
        )
    };
    let mut config = last.config.clone().ok_or_else(|| not_container(last))?;
    let mut layers: Vec<Descriptor> = Vec::new();
    let mut diff_ids: Vec<String> = Vec::new();
    for image in images {
        let c = image.config.as_ref().ok_or_else(|| not_container(image))?;
        layers.extend(image.manifest.layers().iter().cloned());
        diff_ids.extend(c.rootfs().diff_ids().iter().cloned());
    }
    let mut staging = store.staging()?;
    for tar in extra {
        check_tar(tar)?;
        let mut w = staging.writer()?.with_source(tar.display().to_string());
        let mut f = std::fs::File::open(tar).map_err(|e| Error::io("open", tar, e))?;
        std::io::copy(&mut f, &mut w).map_err(|e| Error::io("read", tar, e))?;
        let (digest, size) = staging.commit(w, None)?;
        layers.push(descriptor(media::OCI_LAYER_TAR, &digest, size)?);
        diff_ids.push(digest.to_string());
    }
    config.rootfs_mut().set_diff_ids(diff_ids);
    config.set_history(None);
    let bytes = serde_json::to_vec(&config)
        .map_err(|e| Error::malformed("stack", "image config", e.to_string()))?;
    let config_digest = staging.put_bytes(&bytes)?;
    let config = descriptor(media::OCI_CONFIG, &config_digest, bytes.len() as u64)?;
    let manifest = manifest_bytes("stack", &config, &layers, None, None)?;
    staging.publish_manifest(&manifest)
}

/// Reads `path` through as a tar, so that a file that is none fails here, naming it.
fn check_tar(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let bad = |e: std::io::Error| {
        Error::malformed(path.display().to_string(), "tar archive", e.to_string())
    };
    let mut archive = tar::Archive::new(std::io::BufReader::new(f));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        std::io::copy(&mut entry.by_ref().take(u64::MAX), &mut std::io::sink()).map_err(bad)?;
    }
    Ok(())
}
