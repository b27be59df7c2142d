//! Disk images as OCI content: a stamp disk artifact (the disk in content-defined chunks with a
//! config describing it) and a KubeVirt containerDisk (the disk under `/disk/` in a one-layer
//! container image).

pub mod artifact;
pub(crate) mod chunk;
pub mod containerdisk;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// The config blob of a stamp disk artifact (media type [`crate::media::STAMP_DISK_CONFIG`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskConfig {
    /// The disk file's format (`qcow2`, `raw`, `vmdk`, ...), as `stamp info` names it.
    pub format: String,
    /// The size of the disk as the guest sees it, in bytes.
    pub virtual_size: u64,
    /// The size of the disk file, in bytes (the sum of the layers).
    pub file_size: u64,
    /// The digest of the whole disk file, checked after reassembly.
    pub file_digest: Digest,
    /// The file name the disk had (a hint for the name to give it back).
    pub file_name: String,
    /// `uefi`, `bios` or `uefi+bios`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<String>,
    /// The CPU architecture (`amd64`, `arm64`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// The digest of the container image the disk was built from, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_image: Option<Digest>,
}
