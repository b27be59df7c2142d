//! `stamp create`: an empty image of a given size.

use anyhow::{Context, Result, anyhow};
use stamp_disk::{CreateOptions, parse_size};

use super::parse_format;
use crate::cli::CreateArgs;

pub fn run(a: CreateArgs) -> Result<u8> {
    let format = parse_format(Some(&a.format))?.unwrap_or(stamp_disk::Format::Raw);
    let mut opts = CreateOptions::default();
    for o in &a.options {
        opts.merge(o).context("invalid -o option")?;
    }
    let size = match &a.size {
        Some(s) => parse_size(s).map_err(|e| anyhow!("invalid size: {e}"))?,
        None if opts.backing_file.is_some() => 0,
        None => {
            return Err(anyhow!(
                "a size is needed: stamp create -f {format} {} SIZE (for example 10G)",
                a.file.display()
            ));
        }
    };
    let writer = stamp_disk::create(&a.file, format, size, &opts)
        .with_context(|| format!("cannot create {}", a.file.display()))?;
    writer.finish()?;
    Ok(0)
}
