//! `oci-archive:` and `docker-archive:`: tars streamed once, every member copied into the
//! staging area with verification, nothing extracted to disk by name.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::layout::{check_layout, parse_index, select};
use super::{Imported, Magic, magic_of, open_decompressed, safe_member_path};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::manifest_bytes;
use crate::media;
use crate::store::{MANIFEST_LIMIT, Staging, Store, descriptor};

/// Limit on the number of members of an image archive (a real one has a few per layer), so
/// the member table stays small.
const MAX_MEMBERS: usize = 100_000;

/// Limit on following symbolic links between members.
const MAX_LINK_HOPS: usize = 16;

/// A regular member copied into the staging area.
#[derive(Debug, Clone, Copy)]
struct Member {
    digest: Digest,
    size: u64,
    magic: Magic,
}

/// What a pass over an archive found.
#[derive(Debug, Default)]
struct Scanned {
    files: BTreeMap<String, Member>,
    /// Link member -> what it points to (already resolved to an archive path).
    links: BTreeMap<String, String>,
}

impl Scanned {
    fn get(&self, path: &str) -> Option<Member> {
        let mut p = path.trim_start_matches("./").to_string();
        for _ in 0..MAX_LINK_HOPS {
            if let Some(m) = self.files.get(&p) {
                return Some(*m);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }
}

/// Streams the tar at `path` into `staging`; a member `blobs/sha256/<hex>` must hash to `<hex>`.
fn scan(staging: &mut Staging, path: &Path) -> Result<Scanned> {
    let name = path.display().to_string();
    let bad_tar = |e: std::io::Error| Error::malformed(name.clone(), "tar archive", e.to_string());
    let mut archive = tar::Archive::new(open_decompressed(path)?);
    let mut out = Scanned::default();
    for entry in archive.entries().map_err(bad_tar)? {
        let mut entry = entry.map_err(bad_tar)?;
        if out.files.len() + out.links.len() >= MAX_MEMBERS {
            return Err(Error::malformed(
                name,
                "tar archive",
                format!("more than {MAX_MEMBERS} members"),
            ));
        }
        let raw = entry.path().map_err(bad_tar)?.into_owned();
        let member = safe_member_path(&raw, path)?;
        let kind = entry.header().entry_type();
        if kind.is_file() || kind == tar::EntryType::Continuous {
            let expected = member
                .strip_prefix("blobs/sha256/")
                .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok());
            let mut w = staging
                .writer()?
                .with_source(format!("{name}: member {member}"));
            let mut head = [0u8; 8];
            let mut got = 0;
            while got < head.len() {
                let n = entry.read(&mut head[got..]).map_err(bad_tar)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            std::io::Write::write_all(&mut w, &head[..got]).map_err(bad_tar)?;
            std::io::copy(&mut entry, &mut w).map_err(bad_tar)?;
            let (digest, size) = staging.commit(w, expected.as_ref())?;
            out.files.insert(
                member,
                Member {
                    digest,
                    size,
                    magic: magic_of(&head[..got]),
                },
            );
        } else if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(bad_tar)?
                .ok_or_else(|| {
                    Error::malformed(
                        name.clone(),
                        "tar archive",
                        format!("link {member} has no target"),
                    )
                })?
                .into_owned();
            let resolved = if kind.is_symlink() && !target.is_absolute() {
                let parent = Path::new(&member).parent().unwrap_or(Path::new(""));
                normalize(&parent.join(&target), path)?
            } else {
                safe_member_path(&target, path)?
            };
            out.links.insert(member, resolved);
        }
    }
    Ok(out)
}

/// Resolves `..` inside an archive path; leaving the archive is an error.
fn normalize(p: &Path, archive: &Path) -> Result<String> {
    use std::path::Component;
    let mut parts: Vec<&str> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or_default()),
            Component::CurDir => {}
            Component::ParentDir if !parts.is_empty() => {
                parts.pop();
            }
            _ => {
                return Err(Error::malformed(
                    archive.display().to_string(),
                    "archive member name",
                    format!("link target {} leaves the archive", p.display()),
                ));
            }
        }
    }
    Ok(parts.join("/"))
}

fn small(staging: &Staging, scanned: &Scanned, member: &str, archive: &str) -> Result<Vec<u8>> {
    let m = scanned
        .get(member)
        .ok_or_else(|| Error::malformed(archive, "archive", format!("no {member}")))?;
    staging
        .read_small(&m.digest, MANIFEST_LIMIT)?
        .ok_or(Error::MissingBlob(m.digest))
}

pub(crate) fn import_oci_archive(
    store: &Store,
    path: &Path,
    tag: Option<&str>,
) -> Result<Imported> {
    let name = path.display().to_string();
    let mut staging = store.staging()?;
    let scanned = scan(&mut staging, path)?;
    check_layout(
        &small(&staging, &scanned, "oci-layout", &name)?,
        &format!("{name}: oci-layout"),
    )?;
    let index = parse_index(
        &small(&staging, &scanned, "index.json", &name)?,
        &format!("{name}: index.json"),
    )?;
    let (root, carried) = select(&index, tag, &name)?;
    let descriptor = staging.publish(&root)?;
    Ok(Imported {
        descriptor,
        name: carried,
    })
}

/// One entry of a docker-archive `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

pub(crate) fn import_docker_archive(
    store: &Store,
    path: &Path,
    tag: Option<&str>,
) -> Result<Imported> {
    let name = path.display().to_string();
    let mut staging = store.staging()?;
    let scanned = scan(&mut staging, path)?;
    let manifest_json = small(&staging, &scanned, "manifest.json", &name)?;
    let entries: Vec<DockerEntry> = serde_json::from_slice(&manifest_json)
        .map_err(|e| Error::malformed(name.clone(), "manifest.json", e.to_string()))?;
    let tags = |e: &DockerEntry| e.repo_tags.clone().unwrap_or_default();
    let matches_tag =
        |r: &String, t: &str| r == t || r.rsplit_once(':').is_some_and(|(_, x)| x == t);
    let entry = match tag {
        Some(t) => entries
            .iter()
            .find(|e| tags(e).iter().any(|r| matches_tag(r, t))),
        None => entries.first(),
    }
    .ok_or_else(|| match tag {
        Some(t) => Error::NotFound(format!("{name}: no image tagged '{t}'")),
        None => Error::malformed(name.clone(), "manifest.json", "no images"),
    })?;
    let member = |p: &str| {
        scanned.get(p).ok_or_else(|| {
            Error::malformed(
                name.clone(),
                "manifest.json",
                format!("names {p}, which is not in the archive"),
            )
        })
    };
    let config = member(&entry.config)?;
    let config_bytes = staging
        .read_small(&config.digest, MANIFEST_LIMIT)?
        .ok_or(Error::MissingBlob(config.digest))?;
    let config_json: serde_json::Value = serde_json::from_slice(&config_bytes).map_err(|e| {
        Error::malformed(
            format!("{name}: {}", entry.config),
            "image config",
            e.to_string(),
        )
    })?;
    let diff_ids: Vec<Digest> = config_json
        .pointer("/rootfs/diff_ids")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().parse())
                .collect::<Result<Vec<Digest>>>()
        })
        .transpose()?
        .unwrap_or_default();
    if diff_ids.len() != entry.layers.len() {
        return Err(Error::malformed(
            format!("{name}: {}", entry.config),
            "image config",
            format!(
                "{} diff_ids for {} layers",
                diff_ids.len(),
                entry.layers.len()
            ),
        ));
    }
    let mut layers = Vec::new();
    for (layer_path, diff_id) in entry.layers.iter().zip(&diff_ids) {
        let m = member(layer_path)?;
        let media_type = match m.magic {
            Magic::Plain => {
                if m.digest != *diff_id {
                    return Err(Error::DigestMismatch {
                        source_name: format!("{name}: layer {layer_path} (its diff_id)"),
                        expected: *diff_id,
                        actual: m.digest,
                        size: m.size,
                    });
                }
                media::OCI_LAYER_TAR
            }
            Magic::Gzip => media::OCI_LAYER_GZIP,
            Magic::Zstd => media::OCI_LAYER_ZSTD,
            Magic::Xz => {
                return Err(Error::UnsupportedMediaType {
                    source_name: format!("{name}: layer {layer_path}"),
                    media_type: "xz-compressed layer".to_string(),
                });
            }
        };
        layers.push(descriptor(media_type, &m.digest, m.size)?);
    }
    let config = descriptor(media::OCI_CONFIG, &config.digest, config.size)?;
    let manifest_bytes = manifest_bytes(&name, &config, &layers, None, None)?;
    let descriptor = staging.publish_manifest(&manifest_bytes)?;
    Ok(Imported {
        descriptor,
        name: match tag {
            Some(t) => tags(entry).into_iter().find(|r| matches_tag(r, t)),
            None => tags(entry).into_iter().next(),
        },
    })
}
