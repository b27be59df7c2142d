//! `stamp import` and `stamp export`: archives, root filesystem tars and disk images in and
//! out of the store.

use std::path::Path;

use anyhow::{Context, Result, bail};
use stamp_oci::ImageKind;
use stamp_oci::archive::{self, ImportOptions, Source};
use stamp_oci::disk::artifact;

use super::pull::write_disk;
use super::registry::open_store;
use crate::cli::{ExportArgs, ImportArgs};

pub fn run_import(a: ImportArgs) -> Result<u8> {
    let store = open_store(&a.store)?;
    let _guard = store.write_guard()?;
    let (desc, name) = if is_disk(&a.source)? {
        let desc = artifact::store_disk(&store, &a.source, None, Some(host_arch()), None, &|_| {})
            .with_context(|| format!("cannot import the disk {}", a.source.display()))?;
        (desc, None)
    } else {
        let source = Source::detect(&a.source)?;
        let imported = archive::import(&store, &source, &ImportOptions::default())
            .with_context(|| format!("cannot import {}", a.source.display()))?;
        (imported.descriptor, imported.name)
    };
    let name = a.name.or(name).unwrap_or_else(|| local_name(&a.source));
    store.set_name(&name, &desc)?;
    println!("Imported {name}\nDigest: {}", desc.digest());
    Ok(0)
}

pub fn run_export(a: ExportArgs) -> Result<u8> {
    let store = open_store(&a.store)?;
    let desc = store.resolve(&a.reference)?;
    if a.disk {
        let image = store.image(&desc, None)?;
        if image.kind != ImageKind::Disk {
            bail!(
                "{} is not a disk image; leave out --disk to export an OCI archive",
                a.reference
            );
        }
        write_disk(&store, &image, &a.output)?;
    } else {
        archive::export(&store, &desc, &a.output)
            .with_context(|| format!("cannot export {}", a.reference))?;
    }
    println!("Exported {} to {}", a.reference, a.output.display());
    Ok(0)
}

/// The name an imported image gets when neither the user nor the archive names it:
/// `localhost/<file name up to its first dot, lowercased>:latest`.
pub fn local_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = file
        .split('.')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("image");
    format!("localhost/{}:latest", stem.to_lowercase())
}

/// Whether `path` is a disk image (by its content; raw only by a .raw or .img name), rather
/// than an archive or a root filesystem tar.
fn is_disk(path: &Path) -> Result<bool> {
    if path.is_dir() {
        return Ok(false);
    }
    let format = stamp_disk::detect_path(path)?;
    Ok(match format {
        stamp_disk::Format::Raw => {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("raw" | "img")
            )
        }
        // An OVA is a tar of disks: import its disk with `stamp convert` first.
        stamp_disk::Format::Ova => false,
        _ => true,
    })
}

/// This machine's architecture in OCI's words.
pub(super) fn host_arch() -> String {
    stamp_oci::image::host_platform().architecture().to_string()
}
