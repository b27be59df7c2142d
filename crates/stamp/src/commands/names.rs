//! `stamp tag` and `stamp rmi`: names in the store.

use anyhow::{Result, bail};

use super::registry::open_store;
use crate::cli::{RmiArgs, TagArgs};

pub fn run_tag(a: TagArgs) -> Result<u8> {
    let store = open_store(&a.store)?;
    let desc = store.resolve(&a.source)?;
    store.set_name(&a.target, &desc)?;
    Ok(0)
}

pub fn run_rmi(a: RmiArgs) -> Result<u8> {
    if a.incomplete {
        for location in &a.references {
            super::aws::rmi_incomplete(&a.aws, location, a.json)?;
        }
        return Ok(0);
    }
    if a.json {
        bail!("--json goes with --incomplete");
    }
    let store = open_store(&a.store)?;
    let named = store.list()?;
    for reference in &a.references {
        if super::aws::parse_location(reference).is_some() {
            super::aws::rmi(&a.aws, reference)?;
            continue;
        }
        if named.iter().any(|n| &n.name == reference) {
            store.remove_name(reference)?;
            println!("Untagged: {reference}");
            continue;
        }
        let desc = store.resolve(reference)?;
        let names: Vec<&str> = named
            .iter()
            .filter(|n| n.descriptor.digest() == desc.digest())
            .map(|n| n.name.as_str())
            .collect();
        if names.len() > 1 && !a.force {
            bail!(
                "{reference} has {} names ({}); remove them one by one, or use -f to remove them all",
                names.len(),
                names.join(", ")
            );
        }
        for name in names {
            store.remove_name(name)?;
            println!("Untagged: {name}");
        }
    }
    eprintln!("(run `stamp gc` to free the space of images no name refers to)");
    Ok(0)
}
