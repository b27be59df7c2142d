//! `stamp mkfs`: a filesystem image from a directory or a tar, without root (FAT for now; ext4
//! when its writer lands).

use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow, bail};
use stamp_disk::{CreateOptions, Format, Progress, parse_size};
use stamp_fs::Image;
use stamp_fs::fat::{FatOptions, fat};
use stamp_fs::source::{Loaded, SourceOptions};

use super::convert::format_from_extension;
use super::parse_format;
use crate::cli::{MkfsArgs, MkfsFatArgs};
use crate::progress::{Bar, CancelFlag};

pub fn run(a: MkfsArgs, cancel: &CancelFlag) -> Result<u8> {
    match a {
        MkfsArgs::Fat(a) => run_fat(a, cancel),
    }
}

fn run_fat(a: MkfsFatArgs, cancel: &CancelFlag) -> Result<u8> {
    let format = output_format(a.out_format.as_deref(), &a.output)?;
    let opts = fat_options(a.size.as_deref(), a.label)?;
    let loaded = load(&a.from)?;
    let image = fat(&loaded.tree, &opts)
        .with_context(|| format!("cannot lay out a FAT filesystem from {}", a.from))?;
    write_image(image, &a.output, format, a.progress, cancel)
}

/// The FAT options from the command line and SOURCE_DATE_EPOCH.
pub(super) fn fat_options(size: Option<&str>, label: Option<String>) -> Result<FatOptions> {
    Ok(FatOptions {
        size: size.map(size_arg).transpose()?,
        label,
        source_date_epoch: source_date_epoch()?,
        ..FatOptions::default()
    })
}

/// Loads a tree source (directory, tar, or `-` for a tar on stdin) with SOURCE_DATE_EPOCH.
pub(super) fn load(src: &str) -> Result<Loaded> {
    let opts = SourceOptions {
        source_date_epoch: source_date_epoch()?,
    };
    stamp_fs::source::load(src, &opts).with_context(|| format!("cannot read {src}"))
}

/// The output format: `-O`, else the output's extension, else raw.
pub(super) fn output_format(name: Option<&str>, output: &Path) -> Result<Format> {
    Ok(match parse_format(name)? {
        Some(f) => f,
        None => format_from_extension(output).unwrap_or(Format::Raw),
    })
}

/// Streams `image` into a new disk image at `output` (renamed into place when complete).
pub(super) fn write_image(
    image: Image<'_>,
    output: &Path,
    format: Format,
    progress: bool,
    cancel: &CancelFlag,
) -> Result<u8> {
    let mut writer = stamp_disk::create(output, format, image.size, &CreateOptions::default())
        .with_context(|| format!("cannot create {} as {format}", output.display()))?;
    let bar = Bar::new(progress, "writing", cancel);
    bar.start(image.size);
    let failed = || format!("writing {} failed; nothing was written", output.display());
    for e in image.extents {
        if cancel.load(Ordering::SeqCst) {
            bar.finish();
            bail!("interrupted; nothing was written to {}", output.display());
        }
        let e = e.with_context(failed)?;
        let len = e.len();
        writer.write_extent(e).with_context(failed)?;
        bar.advance(len);
    }
    bar.finish();
    writer.finish().with_context(failed)?;
    Ok(0)
}

/// SOURCE_DATE_EPOCH from the environment, if set and not empty.
fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map(Some).map_err(|_| {
            anyhow!("invalid SOURCE_DATE_EPOCH '{v}': seconds since 1970-01-01 expected")
        }),
        _ => Ok(None),
    }
}

/// A size with K/M/G/T suffixes.
pub(super) fn size_arg(s: &str) -> Result<u64> {
    parse_size(s).map_err(|e| anyhow!("invalid size '{s}': {e}"))
}
