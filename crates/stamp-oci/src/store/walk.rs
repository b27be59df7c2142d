//! Walks what an index or manifest references: the closure of an image, for import, export,
//! gc and fsck.

use std::collections::{BTreeMap, BTreeSet};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use super::{MANIFEST_LIMIT, descriptor_digest, sniff_manifest};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::media;

/// Nesting limit for indexes of indexes (real ones nest once).
const MAX_DEPTH: usize = 8;

/// Limit on the number of descriptors in one closure, so a hostile index cannot make us walk
/// forever.
const MAX_DESCRIPTORS: usize = 100_000;

/// What a walk found.
#[derive(Debug, Default)]
pub(crate) struct Closure {
    /// Every blob referenced (manifests, indexes, configs, layers), with its descriptor.
    pub blobs: BTreeMap<Digest, Descriptor>,
    /// The diff_ids of container image configs (uncompressed layer caches).
    pub diff_ids: BTreeSet<Digest>,
    /// Referenced blobs that `fetch` did not have: (digest, what referenced it).
    pub missing: Vec<(Digest, String)>,
}

/// Fetches a small blob, verified; `Ok(None)` when it is not there.
pub(crate) type Fetch<'a> = dyn FnMut(&Digest, u64) -> Result<Option<Vec<u8>>> + 'a;

/// Walks from `root` (a manifest or index descriptor). `present(d)` says whether a leaf blob
/// exists (missing leaves are recorded in `missing`); a subject that is missing is not an error
/// (referrers point at images that need not be local).
pub(crate) fn walk(
    fetch: &mut Fetch<'_>,
    present: &dyn Fn(&Digest) -> bool,
    root: &Descriptor,
) -> Result<Closure> {
    let mut c = Closure::default();
    visit(fetch, present, root, "index", 0, &mut c, false)?;
    Ok(c)
}

fn visit(
    fetch: &mut Fetch<'_>,
    present: &dyn Fn(&Digest) -> bool,
    desc: &Descriptor,
    referrer: &str,
    depth: usize,
    c: &mut Closure,
    optional: bool,
) -> Result<()> {
    let digest = descriptor_digest(desc)?;
    if c.blobs.contains_key(&digest) {
        return Ok(());
    }
    if c.blobs.len() >= MAX_DESCRIPTORS {
        return Err(Error::malformed(
            referrer,
            "index",
            format!("more than {MAX_DESCRIPTORS} descriptors"),
        ));
    }
    if depth > MAX_DEPTH {
        return Err(Error::malformed(
            referrer,
            "index",
            format!("indexes nested more than {MAX_DEPTH} deep"),
        ));
    }
    let Some(bytes) = fetch(&digest, MANIFEST_LIMIT)? else {
        if !optional {
            c.missing.push((digest, referrer.to_string()));
        }
        return Ok(());
    };
    if bytes.len() as u64 != desc.size() {
        return Err(Error::malformed(
            format!("{referrer} -> {digest}"),
            "descriptor",
            format!(
                "size {} but the blob has {} bytes",
                desc.size(),
                bytes.len()
            ),
        ));
    }
    c.blobs.insert(digest, desc.clone());
    let declared = desc.media_type().to_string();
    let kind = if media::is_index(&declared) || media::is_manifest(&declared) {
        declared
    } else {
        match sniff_manifest(&bytes) {
            Some(k) => k,
            None => return Ok(()),
        }
    };
    let name = digest.to_string();
    if media::is_index(&kind) {
        let index: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| Error::malformed(name.clone(), "image index", e.to_string()))?;
        for m in index.manifests() {
            visit(fetch, present, m, &name, depth + 1, c, false)?;
        }
        return Ok(());
    }
    let manifest: ImageManifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::malformed(name.clone(), "image manifest", e.to_string()))?;
    let config = manifest.config();
    let config_digest = descriptor_digest(config)?;
    let config_type = config.media_type().to_string();
    if config_type == media::OCI_CONFIG || config_type == media::DOCKER_CONFIG {
        match fetch(&config_digest, MANIFEST_LIMIT)? {
            None => c.missing.push((config_digest, name.clone())),
            Some(cfg) => {
                let v: serde_json::Value = serde_json::from_slice(&cfg).map_err(|e| {
                    Error::malformed(config_digest.to_string(), "image config", e.to_string())
                })?;
                if let Some(ids) = v.pointer("/rootfs/diff_ids").and_then(|d| d.as_array()) {
                    for id in ids {
                        let id = id.as_str().unwrap_or_default();
                        let id: Digest = id.parse()?;
                        c.diff_ids.insert(id);
                    }
                }
                c.blobs.insert(config_digest, config.clone());
            }
        }
    } else {
        leaf(present, config, &name, c)?;
    }
    for layer in manifest.layers() {
        leaf(present, layer, &name, c)?;
    }
    if let Some(subject) = manifest.subject() {
        visit(fetch, present, subject, &name, depth + 1, c, true)?;
    }
    Ok(())
}

fn leaf(
    present: &dyn Fn(&Digest) -> bool,
    desc: &Descriptor,
    referrer: &str,
    c: &mut Closure,
) -> Result<()> {
    let digest = descriptor_digest(desc)?;
    if present(&digest) {
        c.blobs.insert(digest, desc.clone());
    } else {
        c.missing.push((digest, referrer.to_string()));
    }
    Ok(())
}
