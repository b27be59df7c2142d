//! The recipe (`stamp.toml`): what a node image needs beyond its container image, and how it
//! is applied to the image's tree.

use std::path::{Path, PathBuf};

use stamp_fs::Tree;

use crate::Result;

/// A parsed recipe. Every field is optional; an empty recipe changes only what every bootable
/// image needs (fstab, empty machine-id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipe {
    /// The directory relative host paths are resolved against (the recipe file's directory).
    pub base_dir: PathBuf,
    /// Disk size in bytes (`[disk] size = "4G"`); `None` sizes the disk from the content.
    pub disk_size: Option<u64>,
    /// Extra free space in the root filesystem when sized automatically (`[disk] extra = "1G"`).
    pub extra_space: Option<u64>,
    /// Extra kernel command-line arguments (`[boot] cmdline`).
    pub cmdline: Vec<String>,
    /// Add `console=ttyS0,115200` (`[boot] serial_console`, default true).
    pub serial_console: bool,
}

/// What applying a recipe needs to know about the disk being built.
#[derive(Debug, Clone)]
pub struct ApplyContext {
    /// The root partition's PARTUUID (lower-case textual GUID), for fstab.
    pub root_partuuid: String,
    /// The ESP's PARTUUID, for fstab's `/boot/efi` (or `/efi`) entry.
    pub esp_partuuid: String,
    /// SOURCE_DATE_EPOCH: timestamps of generated files.
    pub source_date_epoch: Option<i64>,
}

impl Recipe {
    /// Reads and validates `path`. Errors name the file, the line and the key.
    pub fn load(path: &Path) -> Result<Recipe> {
        let _ = path;
        Err(crate::Error::InvalidOption("recipes are not written yet".into()))
    }

    /// Applies the recipe to `tree`.
    pub fn apply(&self, tree: &mut Tree, ctx: &ApplyContext) -> Result<()> {
        let _ = (tree, ctx);
        Ok(())
    }
}
