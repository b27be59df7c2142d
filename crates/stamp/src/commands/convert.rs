//! `stamp convert`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use stamp_disk::{CreateOptions, Format};

use super::{open, parse_format};
use crate::cli::ConvertArgs;
use crate::progress::{Bar, CancelFlag};

pub fn run(a: ConvertArgs, cancel: &CancelFlag) -> Result<u8> {
    let src_format = parse_format(a.src_format.as_deref())?;
    let out_format = match parse_format(a.out_format.as_deref())? {
        Some(f) => f,
        None => Format::from_extension(&a.dst).unwrap_or(Format::Raw),
    };
    let mut opts = CreateOptions::default();
    for o in &a.options {
        opts.merge(o).context("invalid -o option")?;
    }
    opts.compress = a.compress;
    if same_file(&a.src, &a.dst) {
        bail!(
            "{} is both the source and the destination; write to another file",
            a.src.display()
        );
    }
    let reader = open(&a.src, src_format)?;
    let writer = stamp_disk::create(&a.dst, out_format, reader.virtual_size(), &opts)
        .with_context(|| format!("cannot create {} as {out_format}", a.dst.display()))?;
    let bar = Bar::new(a.progress, "converting", cancel);
    let result = stamp_disk::convert::convert(reader.as_ref(), vec![writer], &bar);
    bar.finish();
    result.with_context(|| {
        format!(
            "converting {} to {} failed; nothing was written",
            a.src.display(),
            a.dst.display()
        )
    })?;
    Ok(0)
}

/// Returns true if and only if `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
