//! `stamp push`: an image from the store to a registry, as it is or a disk as a containerDisk
//! or a stamp disk artifact.

use anyhow::{Context, Result, bail};
use stamp_oci::disk::containerdisk;
use stamp_oci::{ImageKind, Reference};

use super::registry::{Bars, client, open_store};
use crate::cli::{PushArgs, PushAs};
use crate::progress::CancelFlag;

pub fn run(a: PushArgs, cancel: &CancelFlag) -> Result<u8> {
    if let Some(remote) = a.remote.as_deref().filter(|r| r.starts_with("aws://")) {
        return super::aws::push(&a, remote, cancel);
    }
    let store = open_store(&a.store)?;
    let desc = store.resolve(&a.local)?;
    let mut image = store.image(&desc, None)?;
    let remote_text = a.remote.as_deref().unwrap_or(&a.local);
    let remote: Reference = remote_text
        .parse()
        .with_context(|| format!("cannot push to '{remote_text}'"))?;
    match a.push_as {
        PushAs::Image => {}
        PushAs::Artifact | PushAs::Containerdisk if image.kind != ImageKind::Disk => bail!(
            "{} is not a disk image; --as {} pushes a disk imported with `stamp import DISK` or built by stamp",
            a.local,
            if a.push_as == PushAs::Artifact {
                "artifact"
            } else {
                "containerdisk"
            }
        ),
        PushAs::Artifact => {}
        PushAs::Containerdisk => {
            let mtime = stamp_oci::archive::source_date_epoch().unwrap_or(0).max(0) as u64;
            let desc = containerdisk::build(&store, &image, mtime)
                .with_context(|| format!("cannot make a containerDisk of {}", a.local))?;
            image = store.image(&desc, None)?;
        }
    }
    // Blobs of an image pulled from the same registry are mounted, not uploaded again.
    let mount_from = a
        .local
        .parse::<Reference>()
        .ok()
        .filter(|l| l.registry == remote.registry)
        .map(|l| l.repository);
    let client = client(&a.registry)?;
    let bars = Bars::new(a.quiet, cancel);
    let digest = stamp_oci::distribution::push(
        &store,
        &client,
        &image,
        &remote,
        mount_from.as_deref(),
        &bars,
    )
    .with_context(|| format!("cannot push {} to {remote}", a.local))?;
    if a.quiet {
        println!("{digest}");
    } else {
        println!("Pushed {remote}\nDigest: {digest}");
    }
    Ok(0)
}
