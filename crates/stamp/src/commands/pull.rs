//! `stamp pull`: an image from a registry or an archive into the store.

use std::path::Path;

use anyhow::{Context, Result, bail};
use oci_spec::image::{Descriptor, Platform};
use stamp_oci::archive::{self, ImportOptions, Source};
use stamp_oci::disk::artifact;
use stamp_oci::{ImageKind, Reference, Store};

use super::archive::local_name;
use super::registry::{Bars, client, open_store};
use crate::cli::{PullArgs, RegistryArgs};
use crate::progress::CancelFlag;

pub fn run(a: PullArgs, cancel: &CancelFlag) -> Result<u8> {
    if a.reference.starts_with("aws://") {
        return super::aws::pull(&a, cancel);
    }
    if a.out_format.is_some() || a.json {
        bail!("-O and --json go with aws:// references; -o writes a disk artifact's disk as raw");
    }
    let store = open_store(&a.store)?;
    let platform = a.platform.as_deref().map(parse_platform).transpose()?;
    let (desc, name) = fetch(
        &store,
        &a.reference,
        &a.registry,
        platform.as_ref(),
        a.quiet,
        cancel,
    )?;
    let image = store.image(&desc, platform.as_ref())?;
    if let Some(out) = &a.output {
        if image.kind != ImageKind::Disk {
            bail!("{name} is not a disk image; -o writes the disk of a stamp disk artifact");
        }
        write_disk(&store, &image, out)?;
    }
    if a.quiet {
        println!("{}", image.manifest_digest);
    } else {
        println!("Pulled {name}\nDigest: {}", image.manifest_digest);
        if let Some(out) = &a.output {
            println!("Disk: {}", out.display());
        }
    }
    Ok(0)
}

/// Brings `reference` into the store: imports an archive source (oci:, oci-archive:, ...) or
/// pulls a registry reference. Returns the manifest's descriptor and the name it got.
pub fn fetch(
    store: &Store,
    reference: &str,
    registry: &RegistryArgs,
    platform: Option<&Platform>,
    quiet: bool,
    cancel: &CancelFlag,
) -> Result<(Descriptor, String)> {
    Ok(match Source::parse(reference)? {
        Some(source) => {
            let _guard = store.write_guard()?;
            let imported = archive::import_memoized(store, &source, &ImportOptions::default())
                .with_context(|| format!("cannot import {reference}"))?;
            let name = imported.name.unwrap_or_else(|| local_name(source.path()));
            store.set_name(&name, &imported.descriptor)?;
            (imported.descriptor, name)
        }
        None => {
            let r: Reference = reference.parse()?;
            let client = client(registry)?;
            let bars = Bars::new(quiet, cancel);
            let desc = stamp_oci::distribution::pull(store, &client, &r, platform, &bars)
                .with_context(|| format!("cannot pull {r}"))?;
            (desc, r.to_string())
        }
    })
}

/// Writes a disk artifact's disk to `out` (temporary name, renamed when verified).
pub fn write_disk(store: &Store, image: &stamp_oci::Image, out: &Path) -> Result<()> {
    let (config, layers) = artifact::parts(image)?;
    let file = stamp_disk::OutputFile::create(out)?;
    artifact::write_disk(store, &config, &layers, &mut file.file(), &|_| {})
        .with_context(|| format!("cannot write {}", out.display()))?;
    file.commit()?;
    Ok(())
}

/// Parses `OS/ARCH[/VARIANT]`.
pub fn parse_platform(s: &str) -> Result<Platform> {
    let mut parts = s.split('/');
    let (Some(os), Some(arch)) = (parts.next(), parts.next()) else {
        bail!("--platform must be OS/ARCH[/VARIANT], like linux/amd64");
    };
    let mut p = Platform::default();
    p.set_os(os.into());
    p.set_architecture(arch.into());
    if let Some(v) = parts.next() {
        p.set_variant(Some(v.to_string()));
    }
    Ok(p)
}
