//! The build pipeline: tree → recipe → boot files → GPT (ESP + root) → every output at once.
//!
//! Every identifier on the disk (disk GUID, partition GUIDs, filesystem UUIDs, volume id) is
//! derived from [`BuildOptions::seed`], a digest of the build's inputs, so the same inputs give
//! the same bytes and different inputs give different identifiers.

use std::path::PathBuf;

use sha2::{Digest as _, Sha256};
use stamp_disk::convert::Progress;
use stamp_disk::{CreateOptions, DiskSummary, DiskWriter, Extent, Format};
use stamp_fs::ext4::{Ext4Options, ext4};
use stamp_fs::fat::{FatOptions, fat};
use stamp_fs::gpt::{GptOptions, Partition, PartitionType, gpt_disk};
use stamp_fs::{Image, Tree};
use uuid::Uuid;

use crate::boot::{Arch, BootFiles, BootMethod, BootRequest, boot_files};
use crate::cache::Cache;
use crate::recipe::{ApplyContext, Recipe};
use crate::{Error, Result};

/// Smallest ESP stamp makes: FAT32 starts at 64 MiB, and firmware expects room for updates.
pub const MIN_ESP: u64 = 256 << 20;

/// One disk file to write.
#[derive(Debug, Clone)]
pub struct Output {
    /// Where to write it (through a temporary name, renamed on success).
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Format options.
    pub options: CreateOptions,
}

impl Output {
    /// An output of `format` at `path` with the options a bootable disk of that format wants:
    /// VMDK streamOptimized, VHD fixed with its size a whole MiB (as Azure requires).
    pub fn new(path: PathBuf, format: Format) -> Self {
        let mut options = CreateOptions::default();
        match format {
            Format::Vmdk => options.subformat = Some("streamOptimized".into()),
            Format::Vhd => {
                options.subformat = Some("fixed".into());
                options.force_size = true;
            }
            _ => {}
        }
        Output {
            path,
            format,
            options,
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The recipe (already merged with the command line's overrides).
    pub recipe: Recipe,
    /// Extra kernel command-line arguments after the recipe's (e.g. the app init's).
    pub cmdline: Vec<String>,
    /// Force a boot method.
    pub boot_method: Option<BootMethod>,
    /// The architecture.
    pub arch: Arch,
    /// ESP size in bytes (by default the larger of [`MIN_ESP`] and the boot files plus room).
    pub esp_size: Option<u64>,
    /// SOURCE_DATE_EPOCH: timestamps of generated files, filesystem times.
    pub source_date_epoch: Option<i64>,
    /// A digest of the inputs, from which every GUID and UUID on the disk is derived.
    pub seed: [u8; 32],
}

/// Identifiers of the disk being built (JSON: lower-case hyphenated strings).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ids {
    /// The disk GUID.
    pub disk_guid: Uuid,
    /// The ESP's PARTUUID.
    pub esp_partuuid: Uuid,
    /// The root partition's PARTUUID.
    pub root_partuuid: Uuid,
    /// The root filesystem's UUID.
    pub root_fs_uuid: Uuid,
}

/// What a build made.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BuildReport {
    /// The disk's virtual size in bytes.
    pub disk_size: u64,
    /// The ESP's size in bytes.
    pub esp_size: u64,
    /// The root filesystem's size in bytes.
    pub root_size: u64,
    /// How the disk boots.
    pub boot_method: String,
    /// The kernel release booted.
    pub kernel: String,
    /// The kernel command line.
    pub cmdline: String,
    /// GUIDs and UUIDs.
    pub ids: Ids,
    /// One summary per output, in the order given.
    pub outputs: Vec<DiskSummary>,
    /// Whether the outputs were copied from the build cache.
    #[serde(default)]
    pub cached: bool,
}

/// A UUID derived from `seed` and `label`: SHA-256 truncated, with the version 4 and RFC 4122
/// variant bits set so that every tool accepts it.
pub fn derive_guid(seed: &[u8; 32], label: &str) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"stamp-build guid\0");
    h.update(seed);
    h.update(label.as_bytes());
    let d = h.finalize();
    let mut g = [0u8; 16];
    g.copy_from_slice(&d[..16]);
    g[6] = (g[6] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    Uuid::from_bytes(g)
}

impl Ids {
    /// The identifiers derived from `seed`.
    pub fn derive(seed: &[u8; 32]) -> Ids {
        Ids {
            disk_guid: derive_guid(seed, "disk"),
            esp_partuuid: derive_guid(seed, "esp"),
            root_partuuid: derive_guid(seed, "root"),
            root_fs_uuid: derive_guid(seed, "root-fs"),
        }
    }
}

/// The first 8 bytes of `seed` as the u64 seeds the writers take.
fn seed_u64(seed: &[u8; 32], label: &str) -> u64 {
    let g = derive_guid(seed, label).into_bytes();
    u64::from_le_bytes([g[0], g[1], g[2], g[3], g[4], g[5], g[10], g[11]])
}

/// A prepared build: the recipe applied, the boot files made, ready to lay out and write.
pub struct Prepared {
    /// The root filesystem's tree (recipe applied).
    pub tree: Tree,
    /// The ESP's files and how the disk boots.
    pub boot: BootFiles,
    /// The kernel command line.
    pub cmdline: String,
    /// The disk's identifiers.
    pub ids: Ids,
}

/// Applies the recipe to `tree` with the identifiers derived from the options' seed.
pub fn apply(mut tree: Tree, opts: &BuildOptions) -> Result<(Tree, Ids)> {
    let ids = Ids::derive(&opts.seed);
    let ctx = ApplyContext {
        root_partuuid: ids.root_partuuid.to_string(),
        esp_partuuid: ids.esp_partuuid.to_string(),
        source_date_epoch: opts.source_date_epoch,
    };
    opts.recipe.apply(&mut tree, &ctx)?;
    Ok((tree, ids))
}

/// Makes the boot files of an [`apply`]'d tree.
pub fn prepare(tree: Tree, ids: Ids, opts: &BuildOptions) -> Result<Prepared> {
    let mut args = vec![format!("root=PARTUUID={}", ids.root_partuuid), "rw".into()];
    args.extend(opts.recipe.kernel_cmdline());
    args.extend(opts.cmdline.iter().cloned());
    let cmdline = args.join(" ");
    let boot = boot_files(&BootRequest {
        tree: &tree,
        cmdline: cmdline.clone(),
        arch: opts.arch,
        root_fs_uuid: ids.root_fs_uuid.to_string(),
        method: opts.boot_method,
    })?;
    Ok(Prepared {
        tree,
        boot,
        cmdline,
        ids,
    })
}

/// Sum of the ESP tree's file sizes.
fn content_size(tree: &Tree) -> u64 {
    tree.ids().map(|id| tree.entry(id).size()).sum()
}

/// The laid-out disk of a prepared build.
pub struct Layout<'a> {
    /// The whole disk.
    pub disk: Image<'a>,
    /// The ESP's size.
    pub esp_size: u64,
    /// The root filesystem's size.
    pub root_size: u64,
}

/// Space the GPT takes besides the partitions: 1 MiB before the first, the backup table after
/// the last (rounded up to 1 MiB).
const GPT_OVERHEAD: u64 = 2 << 20;

/// Lays out the disk: GPT with the ESP (FAT) and the root partition (ext4).
pub fn layout<'a>(p: &'a Prepared, opts: &BuildOptions) -> Result<Layout<'a>> {
    let sde = opts.source_date_epoch;
    let esp_content = content_size(&p.boot.esp);
    let esp_size = opts.esp_size.unwrap_or_else(|| {
        (esp_content + esp_content / 4 + (32 << 20))
            .max(MIN_ESP)
            .next_multiple_of(1 << 20)
    });
    let esp = fat(
        &p.boot.esp,
        &FatOptions {
            size: Some(esp_size),
            label: Some("ESP".into()),
            volume_id: Some(seed_u64(&opts.seed, "esp-volume") as u32),
            source_date_epoch: sde,
        },
    )
    .map_err(|e| no_space(e, "the boot files", "the ESP (set [disk] esp_size)"))?;
    let root_size = match opts.recipe.disk_size {
        Some(disk) => {
            let root = disk
                .checked_sub(esp_size + GPT_OVERHEAD)
                .filter(|r| *r >= 16 << 20)
                .ok_or_else(|| {
                    Error::InvalidOption(format!(
                        "a {disk}-byte disk is too small: the ESP alone takes {esp_size} bytes; \
                         give a larger --size"
                    ))
                })?;
            Some(root & !((1 << 20) - 1))
        }
        None => None,
    };
    let root = ext4(
        &p.tree,
        &Ext4Options {
            size: root_size,
            extra_space_bytes: opts.recipe.extra_space.unwrap_or(0),
            label: Some("root".into()),
            uuid: Some(p.ids.root_fs_uuid.into_bytes()),
            seed: Some(seed_u64(&opts.seed, "ext4")),
            source_date_epoch: sde,
            ..Ext4Options::default()
        },
    )
    .map_err(|e| no_space(e, "the image's files", "the disk (give a larger --size)"))?;
    let root_size = root.size;
    let root_type = match opts.arch {
        Arch::X86_64 => PartitionType::RootX86_64,
        Arch::Aarch64 => PartitionType::RootArm64,
    };
    let parts = vec![
        Partition {
            name: "ESP".into(),
            kind: PartitionType::Esp,
            size: esp_size,
            attributes: 0,
            unique_guid: Some(p.ids.esp_partuuid.into_bytes()),
            image: Some(esp),
        },
        Partition {
            name: "root".into(),
            kind: root_type,
            size: 0,
            attributes: 0,
            unique_guid: Some(p.ids.root_partuuid.into_bytes()),
            image: Some(root),
        },
    ];
    let disk = gpt_disk(
        parts,
        &GptOptions {
            disk_guid: Some(p.ids.disk_guid.into_bytes()),
            size: opts.recipe.disk_size,
            seed: Some(seed_u64(&opts.seed, "gpt")),
        },
    )?;
    Ok(Layout {
        disk,
        esp_size,
        root_size,
    })
}

/// Turns a writer's "does not fit" into a message that says what to do.
fn no_space(e: stamp_fs::Error, what: &str, fix: &str) -> Error {
    match e {
        stamp_fs::Error::NoSpace {
            needed, available, ..
        } => Error::InvalidOption(format!(
            "{what} do not fit: they need {needed} bytes, {fix} has {available}"
        )),
        e => e.into(),
    }
}

/// Writes `disk` to every output in one pass, reporting bytes through `progress`.
/// On error (or when `progress` says cancelled) no output is left behind.
pub fn write(
    disk: Image<'_>,
    outputs: &[Output],
    progress: &dyn Progress,
) -> Result<Vec<DiskSummary>> {
    let size = disk.size;
    let writers = outputs
        .iter()
        .map(|o| stamp_disk::create(&o.path, o.format, size, &o.options))
        .collect::<std::result::Result<Vec<Box<dyn DiskWriter>>, _>>()?;
    progress.start(size);
    let mut done = 0u64;
    let extents = disk.extents.map(move |e| {
        let e = e?;
        let end = match &e {
            Extent::Data { offset, bytes } => offset + bytes.len() as u64,
            Extent::Zero { offset, len } => offset + len,
        };
        if end > done {
            progress.advance(end - done);
            done = end;
        }
        if progress.cancelled() {
            return Err(stamp_fs::Error::Disk(stamp_disk::Error::Interrupted));
        }
        Ok(e)
    });
    let counted = Image {
        size,
        extents: Box::new(extents),
    };
    Ok(counted.write_to(writers)?)
}

/// Builds `tree` into `outputs`: [`apply`], [`prepare`], [`layout`], [`write`]. With a
/// `cache`, outputs of an identical earlier build are copied from it instead, and new outputs
/// are recorded in it.
pub fn build(
    tree: Tree,
    opts: &BuildOptions,
    outputs: &[Output],
    progress: &dyn Progress,
    cache: Option<&Cache>,
) -> Result<BuildReport> {
    let (tree, ids) = apply(tree, opts)?;
    let key = cache.map(|c| c.key(&opts.seed, &tree));
    if let (Some(cache), Some(key)) = (cache, &key) {
        match cache.restore(key, outputs) {
            Ok(Some(mut report)) => {
                report.cached = true;
                return Ok(report);
            }
            Ok(None) => {}
            // An entry removed while it was read (pruned by another build): build instead.
            Err(e) => tracing::warn!("cannot use the build cache, building: {e}"),
        }
    }
    let p = prepare(tree, ids, opts)?;
    let l = layout(&p, opts)?;
    let disk_size = l.disk.size;
    let summaries = write(l.disk, outputs, progress)?;
    let report = BuildReport {
        disk_size,
        esp_size: l.esp_size,
        root_size: l.root_size,
        boot_method: match p.boot.method {
            BootMethod::Uki => "uki",
            BootMethod::SystemdBoot => "systemd-boot",
            BootMethod::Grub => "grub",
        }
        .into(),
        kernel: p.boot.kernel.version.clone(),
        cmdline: p.cmdline.clone(),
        ids: p.ids.clone(),
        outputs: summaries,
        cached: false,
    };
    if let (Some(cache), Some(key)) = (cache, &key) {
        // A cache that cannot be written only costs the next build its speed.
        if let Err(e) = cache.insert(key, outputs, &report) {
            tracing::warn!("cannot record the build in the cache: {e}");
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_guids_are_stable_rfc4122_and_distinct() {
        let seed = [7u8; 32];
        let a = Ids::derive(&seed);
        assert_eq!(a, Ids::derive(&seed));
        assert_ne!(a.root_partuuid, a.esp_partuuid);
        assert_ne!(a.root_partuuid, Ids::derive(&[8u8; 32]).root_partuuid);
        let text = a.root_partuuid.to_string();
        let u = text.as_bytes();
        assert_eq!(u[14], b'4');
        assert!(matches!(u[19], b'8' | b'9' | b'a' | b'b'));
        // The report's JSON keeps the textual form.
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["root_partuuid"], text.as_str());
    }
}
