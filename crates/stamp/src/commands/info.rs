//! `stamp info`.

use anyhow::Result;
use stamp_disk::ImageInfo;

use super::{human_size, open, parse_format, print_json};
use crate::cli::InfoArgs;

pub fn run(a: InfoArgs) -> Result<u8> {
    let reader = open(&a.file, parse_format(a.format.as_deref())?)?;
    let info = reader.info();
    if a.json {
        print_json(&info)?;
    } else {
        print_info(&info, "");
    }
    Ok(0)
}

/// Prints `info` in qemu-img's layout, indenting nested images by `indent`.
fn print_info(info: &ImageInfo, indent: &str) {
    println!("{indent}image: {}", info.filename);
    println!("{indent}file format: {}", info.format);
    if let Some(s) = &info.subformat {
        println!("{indent}subformat: {s}");
    }
    println!(
        "{indent}virtual size: {} ({} bytes)",
        human_size(info.virtual_size),
        info.virtual_size
    );
    println!("{indent}disk size: {}", human_size(info.actual_size));
    if let Some(c) = info.cluster_size {
        println!("{indent}cluster_size: {c}");
    }
    if let Some(c) = &info.compression {
        println!("{indent}compression: {c}");
    }
    if let Some(b) = &info.backing_file {
        println!("{indent}backing file: {b}");
    }
    for (k, v) in &info.details {
        println!("{indent}{k}: {v}");
    }
    for (i, d) in info.disks.iter().enumerate() {
        println!("{indent}disk {}:", i + 1);
        print_info(d, &format!("{indent}    "));
    }
    for b in &info.backing_chain {
        println!();
        print_info(b, indent);
    }
}
