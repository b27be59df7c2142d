//! `oci:DIR[:TAG]`: an OCI image layout directory, and picking an image from a layout's index.

use std::io::BufReader;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndex};

use super::Imported;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::walk::walk;
use crate::store::{MANIFEST_LIMIT, REF_NAME, Staging, Store, read_limited};

/// The annotation containerd (and `docker save`) put the full image name in.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Picks the manifest named `tag` (by `ref.name`, or the containerd name annotation) from a
/// layout's index, or the first one; returns it without its name annotation, and the name.
pub(crate) fn select(
    index: &ImageIndex,
    tag: Option<&str>,
    source_name: &str,
) -> Result<(Descriptor, Option<String>)> {
    let annotation =
        |d: &Descriptor, key: &str| d.annotations().as_ref().and_then(|a| a.get(key)).cloned();
    let found = match tag {
        Some(tag) => index.manifests().iter().find(|d| {
            annotation(d, REF_NAME).as_deref() == Some(tag)
                || annotation(d, CONTAINERD_NAME).as_deref() == Some(tag)
        }),
        None => index.manifests().first(),
    };
    let Some(found) = found else {
        return Err(match tag {
            Some(tag) => Error::NotFound(format!("{source_name}: no image named '{tag}'")),
            None => Error::malformed(source_name, "index.json", "no manifests"),
        });
    };
    let name = annotation(found, CONTAINERD_NAME).or_else(|| annotation(found, REF_NAME));
    let mut desc = found.clone();
    if let Some(mut a) = desc.annotations().clone() {
        a.remove(REF_NAME);
        a.remove(CONTAINERD_NAME);
        desc.set_annotations(if a.is_empty() { None } else { Some(a) });
    }
    Ok((desc, name))
}

/// Parses an `index.json` (already size-limited).
pub(crate) fn parse_index(bytes: &[u8], source_name: &str) -> Result<ImageIndex> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::malformed(source_name, "index.json", e.to_string()))
}

/// Checks an `oci-layout` file's content.
pub(crate) fn check_layout(bytes: &[u8], source_name: &str) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::malformed(source_name, "oci-layout", e.to_string()))?;
    match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
        Some(ver) if ver.starts_with("1.") => Ok(()),
        other => Err(Error::malformed(
            source_name,
            "oci-layout",
            format!("unsupported imageLayoutVersion {other:?}"),
        )),
    }
}

pub(crate) fn import_dir(store: &Store, dir: &Path, tag: Option<&str>) -> Result<Imported> {
    let name = dir.display().to_string();
    let layout = read_limited(&dir.join("oci-layout"), MANIFEST_LIMIT, "oci-layout")?;
    check_layout(&layout, &format!("{name}/oci-layout"))?;
    let index_bytes = read_limited(&dir.join("index.json"), MANIFEST_LIMIT, "index.json")?;
    let index = parse_index(&index_bytes, &format!("{name}/index.json"))?;
    let (root, carried) = select(&index, tag, &name)?;
    let mut staging = store.staging()?;
    let blob_in_dir = |d: &Digest| dir.join("blobs").join("sha256").join(d.hex());
    // Manifests and configs first (the walk reads them), then every layer it found.
    let closure = {
        let staging = &mut staging;
        let mut fetch = |d: &Digest, limit: u64| -> Result<Option<Vec<u8>>> {
            if !staging.has(d) {
                let path = blob_in_dir(d);
                if !path.is_file() {
                    return Ok(None);
                }
                copy_in(staging, &path, d)?;
            }
            staging.read_small(d, limit)
        };
        let present = |d: &Digest| store.has_blob(d) || blob_in_dir(d).is_file();
        walk(&mut fetch, &present, &root)?
    };
    if let Some((d, referrer)) = closure.missing.first() {
        return Err(Error::malformed(
            format!("{name} ({referrer})"),
            "image",
            format!("references blob {d}, which is not in the layout"),
        ));
    }
    for d in closure.blobs.keys() {
        if !staging.has(d) {
            copy_in(&mut staging, &blob_in_dir(d), d)?;
        }
    }
    let descriptor = staging.publish(&root)?;
    Ok(Imported {
        descriptor,
        name: carried,
    })
}

/// Copies a blob file into the staging area, checking its digest.
fn copy_in(staging: &mut Staging, path: &Path, d: &Digest) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut w = staging.writer()?.with_source(path.display().to_string());
    std::io::copy(&mut BufReader::with_capacity(256 << 10, file), &mut w)
        .map_err(|e| Error::io("copy", path, e))?;
    staging.commit(w, Some(d))?;
    Ok(())
}
