//! `stamp compare`: exit 0 identical, 1 different, 2 error (as qemu-img).

use anyhow::Result;
use stamp_disk::compare::{Comparison, compare};

use super::{open, parse_format, print_json};
use crate::cli::CompareArgs;
use crate::progress::{Bar, CancelFlag};

/// Exit code for "the images differ".
const DIFFERENT: u8 = 1;

pub fn run(a: CompareArgs, cancel: &CancelFlag) -> Result<u8> {
    let ra = open(&a.a, parse_format(a.format_a.as_deref())?)?;
    let rb = open(&a.b, parse_format(a.format_b.as_deref())?)?;
    let bar = Bar::new(a.progress, "comparing", cancel);
    let result = compare(ra.as_ref(), rb.as_ref(), &bar);
    bar.finish();
    let result = result?;
    if a.json {
        print_json(&result)?;
    }
    // qemu-img compares the common part first and warns about the sizes only once past it.
    let common = ra.virtual_size().min(rb.virtual_size());
    let past_common = match result {
        Comparison::Identical { .. } => true,
        Comparison::Differ { offset } => offset >= common,
    };
    if !a.json && ra.virtual_size() != rb.virtual_size() && past_common {
        println!("Warning: Image size mismatch!");
    }
    match result {
        Comparison::Identical { .. } => {
            if !a.json {
                println!("Images are identical.");
            }
            Ok(0)
        }
        Comparison::Differ { offset } => {
            if !a.json {
                println!("Content mismatch at offset {offset}!");
            }
            Ok(DIFFERENT)
        }
    }
}
