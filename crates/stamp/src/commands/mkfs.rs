//! `stamp mkfs`: an ext4 or FAT filesystem image from a directory or a tar, without root.

use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow, bail};
use stamp_disk::{CreateOptions, Format, Progress, parse_size};
use stamp_fs::Image;
use stamp_fs::ext4::{Ext4Options, ext4};
use stamp_fs::fat::{FatOptions, fat};
use stamp_fs::source::{Loaded, SourceOptions};

use super::parse_format;
use crate::cli::{MkfsArgs, MkfsExt4Args, MkfsFatArgs};
use crate::progress::{Bar, CancelFlag};

pub fn run(a: MkfsArgs, cancel: &CancelFlag) -> Result<u8> {
    match a {
        MkfsArgs::Ext4(a) => run_ext4(a, cancel),
        MkfsArgs::Fat(a) => run_fat(a, cancel),
    }
}

fn run_ext4(a: MkfsExt4Args, cancel: &CancelFlag) -> Result<u8> {
    let format = output_format(a.out_format.as_deref(), &a.output)?;
    let opts = ext4_options(
        a.size.as_deref(),
        a.extra_space.as_deref(),
        a.label,
        a.uuid.as_deref(),
        a.inodes,
        a.block_size,
        a.seed,
    )?;
    let loaded = load(&a.from)?;
    let image = ext4(&loaded.tree, &opts)
        .with_context(|| format!("cannot lay out an ext4 filesystem from {}", a.from))?;
    write_image(image, &a.output, format, a.progress, cancel)
}

fn run_fat(a: MkfsFatArgs, cancel: &CancelFlag) -> Result<u8> {
    let format = output_format(a.out_format.as_deref(), &a.output)?;
    let opts = fat_options(a.size.as_deref(), a.label)?;
    let loaded = load(&a.from)?;
    let image = fat(&loaded.tree, &opts)
        .with_context(|| format!("cannot lay out a FAT filesystem from {}", a.from))?;
    write_image(image, &a.output, format, a.progress, cancel)
}

/// The ext4 options from the command line and SOURCE_DATE_EPOCH.
pub(super) fn ext4_options(
    size: Option<&str>,
    extra_space: Option<&str>,
    label: Option<String>,
    uuid: Option<&str>,
    inodes: Option<u64>,
    block_size: u32,
    seed: Option<u64>,
) -> Result<Ext4Options> {
    let mut opts = Ext4Options {
        size: size.map(size_arg).transpose()?,
        label,
        uuid: uuid.map(parse_uuid).transpose()?,
        inodes,
        block_size,
        seed,
        source_date_epoch: source_date_epoch()?,
        ..Ext4Options::default()
    };
    if let Some(e) = extra_space {
        let n = e.trim().trim_end_matches('%');
        opts.extra_space_percent = n
            .parse()
            .map_err(|_| anyhow!("invalid --extra-space '{e}': a percentage such as 20%"))?;
    }
    Ok(opts)
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
        None => Format::from_extension(output).unwrap_or(Format::Raw),
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

/// A UUID in its textual form (`8-4-4-4-12` hex digits, hyphens optional).
fn parse_uuid(s: &str) -> Result<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|c| *c != b'-').collect();
    let bad = || anyhow!("invalid UUID '{s}': 32 hex digits expected, as 0a1b2c3d-...");
    if hex.len() != 32 {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let p = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_uuid;

    #[test]
    fn uuids_parse_in_textual_byte_order() {
        let u = parse_uuid("01234567-89ab-cdef-0123-456789ABCDEF").unwrap_or_default();
        assert_eq!(u[0], 0x01);
        assert_eq!(u[15], 0xef);
        assert!(parse_uuid("0123").is_err());
        assert!(parse_uuid("g1234567-89ab-cdef-0123-456789abcdef").is_err());
    }
}
