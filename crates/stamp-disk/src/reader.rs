//! The reading side: [`DiskReader`] gives random access to a disk's contents and tells where data
//! may be, [`ImageInfo`] describes the image and [`CheckReport`] says whether its metadata is sound.

use std::ops::Range;

use serde::Serialize;

use crate::{Format, Result};

/// Random access to the contents of a virtual disk, whatever its format.
///
/// Implementations are `Send + Sync`: several threads may read at once.
pub trait DiskReader: Send + Sync {
    /// The virtual size of the disk in bytes.
    fn virtual_size(&self) -> u64;

    /// Fills `buf` with the disk's contents at `offset`. Reading past the virtual size is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Ranges of the virtual disk where data may be, sorted and not overlapping; everything outside
    /// them reads as zeros. Ranges may include zeros (it is an upper bound), never exclude data.
    fn allocation(&self) -> Result<Vec<Range<u64>>>;

    /// What the image is: format, subformat, sizes, backing chain.
    fn info(&self) -> ImageInfo;

    /// Checks the image's metadata for corruption and leaks. By default, a format with no
    /// metadata to check is reported clean.
    fn check(&self) -> Result<CheckReport> {
        Ok(CheckReport::default())
    }
}

/// A description of an image, printed by `stamp info` (and as JSON with `--json`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ImageInfo {
    /// The image file.
    pub filename: String,
    /// Its format (`raw`, `qcow2`, ...).
    pub format: String,
    /// The variant of the format (`streamOptimized`, `dynamic`, `fixed`, `v3`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subformat: Option<String>,
    /// Size of the virtual disk in bytes.
    pub virtual_size: u64,
    /// Bytes the image occupies on the host (all its files).
    pub actual_size: u64,
    /// Allocation unit: qcow2 cluster, VMDK grain, VHD/VHDX/VDI block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// Compression of data blocks (`zlib`, `zstd`, `deflate`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// The backing (parent) file as recorded in the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_file: Option<String>,
    /// The backing chain, nearest first, each described in full.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backing_chain: Vec<ImageInfo>,
    /// Disks inside a container format (OVA).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<ImageInfo>,
    /// Format-specific details (key, value) in a stable order.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub details: std::collections::BTreeMap<String, String>,
}

impl ImageInfo {
    /// A description with the common fields set and the rest empty.
    pub fn new(filename: &std::path::Path, format: Format, virtual_size: u64) -> Self {
        ImageInfo {
            filename: filename.display().to_string(),
            format: format.name().to_string(),
            virtual_size,
            ..Default::default()
        }
    }

    /// Adds a format-specific detail.
    pub fn detail(mut self, key: &str, value: impl ToString) -> Self {
        self.details.insert(key.to_string(), value.to_string());
        self
    }
}

/// The result of checking an image's metadata, in qemu-img's terms.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CheckReport {
    /// Inconsistencies that make data unreliable (overlapping clusters, bad table entries).
    pub corruptions: Vec<String>,
    /// Allocated space that nothing refers to.
    pub leaks: Vec<String>,
    /// Data clusters (or blocks) allocated in the image.
    pub allocated_clusters: u64,
    /// Total clusters (or blocks) of the virtual disk.
    pub total_clusters: u64,
}

impl CheckReport {
    /// qemu-img's exit code for this report: 0 clean, 2 corruption, 3 leaks only.
    pub fn exit_code(&self) -> i32 {
        if !self.corruptions.is_empty() {
            2
        } else if !self.leaks.is_empty() {
            3
        } else {
            0
        }
    }
}
