//! An image read from the store: its manifest, its config, and what kind of image it is.

use oci_spec::image::{
    Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Os, Platform,
};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::media;
use crate::store::{MANIFEST_LIMIT, Store, descriptor_digest, sniff_manifest};

/// What an image is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageKind {
    /// A container image (an OCI or Docker image config and tar layers).
    Container,
    /// A stamp disk image stored as an OCI artifact (artifactType or config media type
    /// [`media::STAMP_DISK_ARTIFACT`] / [`media::STAMP_DISK_CONFIG`]).
    Disk,
    /// Some other OCI artifact, with its artifact type (or config media type).
    Artifact(String),
}

/// A verified image manifest and config from the store.
#[derive(Debug, Clone)]
pub struct Image {
    /// The digest of the manifest (of the platform's manifest when an index was given).
    pub manifest_digest: Digest,
    /// The manifest's descriptor.
    pub manifest_descriptor: Descriptor,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The parsed config of a container image (`None` for artifacts).
    pub config: Option<ImageConfiguration>,
    /// The config blob as stored (verified).
    pub config_bytes: Vec<u8>,
    /// Container image, disk artifact or other artifact.
    pub kind: ImageKind,
}

impl Image {
    /// The image's size as stored in a registry: the manifest, the config and every layer as
    /// their descriptors declare them.
    pub fn size(&self) -> u64 {
        self.manifest.layers().iter().map(|l| l.size()).fold(
            self.manifest_descriptor.size() + self.manifest.config().size(),
            u64::saturating_add,
        )
    }

    /// The config's `created` time (RFC 3339), if the image has one.
    pub fn created(&self) -> Option<&str> {
        self.config.as_ref()?.created().as_deref()
    }

    /// The layers' diff_ids from the config (container images), one per layer.
    pub fn diff_ids(&self) -> Result<Vec<Digest>> {
        let Some(config) = &self.config else {
            return Ok(Vec::new());
        };
        let ids: Vec<Digest> = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_>>()?;
        if ids.len() != self.manifest.layers().len() {
            return Err(Error::malformed(
                self.manifest_digest.to_string(),
                "image config",
                format!(
                    "{} diff_ids for {} layers",
                    ids.len(),
                    self.manifest.layers().len()
                ),
            ));
        }
        Ok(ids)
    }
}

/// The platform stamp picks from an index by default: linux on the host's architecture.
pub fn host_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let mut p = Platform::default();
    p.set_architecture(Arch::from(arch));
    p.set_os(Os::Linux);
    p
}

pub(crate) fn load(store: &Store, d: &Descriptor, platform: Option<&Platform>) -> Result<Image> {
    let mut desc = d.clone();
    for _ in 0..4 {
        let digest = descriptor_digest(&desc)?;
        let bytes = store.read_small(&digest, MANIFEST_LIMIT)?;
        let declared = desc.media_type().to_string();
        let kind = if media::is_index(&declared) || media::is_manifest(&declared) {
            declared
        } else {
            sniff_manifest(&bytes).ok_or_else(|| Error::UnsupportedMediaType {
                source_name: digest.to_string(),
                media_type: declared.clone(),
            })?
        };
        if media::is_index(&kind) {
            let index: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| Error::malformed(digest.to_string(), "image index", e.to_string()))?;
            desc = pick_platform(&index, platform, &digest)?;
            continue;
        }
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::malformed(digest.to_string(), "image manifest", e.to_string()))?;
        let config_digest = descriptor_digest(manifest.config())?;
        let config_bytes = store.read_small(&config_digest, MANIFEST_LIMIT)?;
        let config_type = manifest.config().media_type().to_string();
        let artifact_type = manifest.artifact_type().as_ref().map(|a| a.to_string());
        let (kind, config) = if is_disk_manifest(&manifest) {
            (ImageKind::Disk, None)
        } else if config_type == media::OCI_CONFIG || config_type == media::DOCKER_CONFIG {
            let config: ImageConfiguration =
                serde_json::from_slice(&config_bytes).map_err(|e| {
                    Error::malformed(config_digest.to_string(), "image config", e.to_string())
                })?;
            (ImageKind::Container, Some(config))
        } else {
            (
                ImageKind::Artifact(artifact_type.unwrap_or(config_type)),
                None,
            )
        };
        return Ok(Image {
            manifest_digest: digest,
            manifest_descriptor: desc,
            manifest,
            config,
            config_bytes,
            kind,
        });
    }
    Err(Error::malformed(
        d.digest().to_string(),
        "image index",
        "indexes nested too deep",
    ))
}

/// Whether `m` is a stamp disk artifact: by its artifactType, or by its config's media type.
pub(crate) fn is_disk_manifest(m: &ImageManifest) -> bool {
    m.artifact_type()
        .as_ref()
        .is_some_and(|a| a.to_string() == media::STAMP_DISK_ARTIFACT)
        || m.config().media_type().to_string() == media::STAMP_DISK_CONFIG
}

pub(crate) fn pick_platform(
    index: &ImageIndex,
    want: Option<&Platform>,
    digest: &Digest,
) -> Result<Descriptor> {
    let host = host_platform();
    let want = want.unwrap_or(&host);
    let matches = |p: &Platform| {
        p.architecture() == want.architecture()
            && p.os() == want.os()
            && (want.variant().is_none() || p.variant() == want.variant())
    };
    index
        .manifests()
        .iter()
        .find(|m| m.platform().as_ref().is_some_and(matches))
        .or_else(|| {
            // An index whose one entry has no platform (an attestation-free single image).
            match index.manifests().as_slice() {
                [only] if only.platform().is_none() => Some(only),
                _ => None,
            }
        })
        .cloned()
        .ok_or_else(|| {
            let have: Vec<String> = index
                .manifests()
                .iter()
                .filter_map(|m| m.platform().as_ref())
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
                .collect();
            Error::NotFound(format!(
                "{digest} for platform {}/{} (the index has: {})",
                want.os(),
                want.architecture(),
                have.join(", ")
            ))
        })
}

/// The bytes of an OCI image manifest of `config` and `layers` (an OCI 1.1 artifact's when
/// `artifact_type` is set), ready to store; `source` names what it is made from, for errors.
pub(crate) fn manifest_bytes(
    source: &str,
    config: &Descriptor,
    layers: &[Descriptor],
    artifact_type: Option<&str>,
    title: Option<&str>,
) -> Result<Vec<u8>> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": config,
        "layers": layers,
    });
    if let Some(t) = artifact_type {
        m["artifactType"] = t.into();
    }
    if let Some(t) = title {
        m["annotations"] = serde_json::json!({ "org.opencontainers.image.title": t });
    }
    serde_json::to_vec(&m).map_err(|e| Error::malformed(source, "manifest", e.to_string()))
}
