//! `stamp gc` and `stamp fsck`: the store's space and integrity.

use anyhow::{Result, bail};
use serde_json::json;

use super::registry::open_store;
use super::{human_size, print_json};
use crate::cli::{FsckArgs, GcArgs};

pub fn run_gc(a: GcArgs) -> Result<u8> {
    let store = open_store(&a.store)?;
    let r = store.gc(a.dry_run)?;
    if a.json {
        print_json(&json!({
            "dry_run": r.dry_run,
            "removed_blobs": r.removed_blobs.iter().map(|(d, s)| json!({"digest": d.to_string(), "size": s})).collect::<Vec<_>>(),
            "removed_temp": r.removed_temp,
            "removed_bytes": r.removed_bytes,
            "kept_blobs": r.kept_blobs,
        }))?;
        return Ok(0);
    }
    let verb = if r.dry_run { "Would remove" } else { "Removed" };
    for (d, size) in &r.removed_blobs {
        println!("{verb} {d} ({})", human_size(*size));
    }
    println!(
        "{verb} {} blobs and {} temporary files, {}; kept {} blobs",
        r.removed_blobs.len(),
        r.removed_temp.len(),
        human_size(r.removed_bytes),
        r.kept_blobs
    );
    Ok(0)
}

pub fn run_fsck(a: FsckArgs) -> Result<u8> {
    let store = open_store(&a.store)?;
    let r = store.fsck()?;
    if a.json {
        print_json(&json!({
            "clean": r.is_clean(),
            "blobs_checked": r.blobs_checked,
            "tampered": r.tampered.iter().map(|(d, a)| json!({"digest": d.to_string(), "actual": a})).collect::<Vec<_>>(),
            "missing": r.missing.iter().map(|(d, by)| json!({"digest": d.to_string(), "referenced_by": by})).collect::<Vec<_>>(),
            "broken": r.broken.iter().map(|(n, e)| json!({"name": n, "error": e})).collect::<Vec<_>>(),
            "unreferenced": r.unreferenced.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        }))?;
    } else {
        for (d, actual) in &r.tampered {
            println!("tampered: {d} (content hashes to {actual})");
        }
        for (d, by) in &r.missing {
            println!("missing: {d} (referenced by {by})");
        }
        for (name, e) in &r.broken {
            println!("broken: {name}: {e}");
        }
        println!(
            "{} blobs checked; {} tampered, {} missing, {} unreadable names, {} unreferenced",
            r.blobs_checked,
            r.tampered.len(),
            r.missing.len(),
            r.broken.len(),
            r.unreferenced.len()
        );
    }
    if !r.is_clean() {
        bail!(
            "the store has damaged or missing blobs; remove the affected images with `stamp rmi` and pull them again"
        );
    }
    Ok(0)
}
