//! `stamp images` and `stamp inspect`: what is in the store.

use anyhow::Result;
use serde_json::{Value, json};
use stamp_oci::{Image, ImageKind};

use super::pull::parse_platform;
use super::registry::open_store;
use super::{human_size, print_json};
use crate::cli::{ImagesArgs, InspectArgs};

/// The words `stamp images` uses for an image's kind.
fn kind_name(kind: &ImageKind) -> String {
    match kind {
        ImageKind::Container => "container image".into(),
        ImageKind::Disk => "disk image".into(),
        ImageKind::Artifact(t) => format!("artifact {t}"),
    }
}

/// Splits a stored name into repository and tag (`<none>` when it has none).
fn split_name(name: &str) -> (&str, &str) {
    let name = name.split('@').next().unwrap_or(name);
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], &name[last_slash + i + 1..]),
        None => (name, "<none>"),
    }
}

pub fn run_images(a: ImagesArgs) -> Result<u8> {
    if let Some(remote) = &a.remote {
        return super::aws::images(&a.aws, remote, a.json, a.offline);
    }
    let store = open_store(&a.store)?;
    let mut rows = Vec::new();
    for named in store.list()? {
        let (repo, tag) = split_name(&named.name);
        // A damaged image is listed with its problem rather than hiding the rest.
        let row = match store.image(&named.descriptor, None) {
            Ok(image) => json!({
                "name": named.name, "repository": repo, "tag": tag,
                "digest": image.manifest_digest.to_string(),
                "kind": kind_name(&image.kind), "size": image.size(),
                "created": image.created(),
            }),
            Err(e) => json!({
                "name": named.name, "repository": repo, "tag": tag,
                "digest": named.descriptor.digest().to_string(), "error": e.to_string(),
            }),
        };
        rows.push(row);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<40} {:<16} {:<19} {:<16} {:>10}  CREATED",
        "REPOSITORY", "TAG", "DIGEST", "KIND", "SIZE"
    );
    for r in &rows {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        let digest = s("digest");
        let short = digest.strip_prefix("sha256:").unwrap_or(&digest);
        println!(
            "{:<40} {:<16} {:<19} {:<16} {:>10}  {}",
            s("repository"),
            s("tag"),
            &short[..short.len().min(12)],
            r["kind"].as_str().unwrap_or("damaged"),
            r["size"].as_u64().map(human_size).unwrap_or_default(),
            r["created"].as_str().or(r["error"].as_str()).unwrap_or("")
        );
    }
    Ok(0)
}

pub fn run_inspect(a: InspectArgs) -> Result<u8> {
    let store = open_store(&a.store)?;
    let desc = store.resolve(&a.reference)?;
    let platform = a.platform.as_deref().map(parse_platform).transpose()?;
    let image = store.image(&desc, platform.as_ref())?;
    let report = describe(&image)?;
    if a.json {
        print_json(&report)?;
        return Ok(0);
    }
    println!("Name:     {}", a.reference);
    println!("Digest:   {}", image.manifest_digest);
    println!("Kind:     {}", kind_name(&image.kind));
    println!("Size:     {}", human_size(image.size()));
    let config = &report["config"];
    if let Some(c) = config.get("config") {
        for (label, key) in [
            ("Entrypoint", "Entrypoint"),
            ("Cmd", "Cmd"),
            ("Env", "Env"),
            ("User", "User"),
            ("WorkingDir", "WorkingDir"),
            ("Labels", "Labels"),
        ] {
            if let Some(v) = c.get(key).filter(|v| !v.is_null()) {
                println!("{:<10}{}", format!("{label}:"), v);
            }
        }
    }
    if image.kind == ImageKind::Disk {
        for key in [
            "format",
            "virtualSize",
            "fileSize",
            "bootMode",
            "architecture",
        ] {
            if let Some(v) = config.get(key) {
                println!("{:<10}{}", format!("{key}:"), v);
            }
        }
    }
    println!("Layers:");
    for l in image.manifest.layers() {
        println!(
            "  {}  {:>10}  {}",
            l.digest(),
            human_size(l.size()),
            l.media_type()
        );
    }
    Ok(0)
}

/// The manifest, config and layers as one JSON value.
fn describe(image: &Image) -> Result<Value> {
    let config: Value = serde_json::from_slice(&image.config_bytes).unwrap_or(Value::Null);
    Ok(json!({
        "digest": image.manifest_digest.to_string(),
        "media_type": image.manifest_descriptor.media_type().to_string(),
        "kind": kind_name(&image.kind),
        "size": image.size(),
        "manifest": serde_json::to_value(&image.manifest)?,
        "config": config,
        "layers": image.manifest.layers().iter().map(|l| json!({
            "digest": l.digest().to_string(), "size": l.size(), "media_type": l.media_type().to_string(),
        })).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::split_name;

    #[test]
    fn names_split_at_the_tag_not_the_port() {
        assert_eq!(
            split_name("localhost:5000/deb:12"),
            ("localhost:5000/deb", "12")
        );
        assert_eq!(
            split_name("localhost:5000/deb"),
            ("localhost:5000/deb", "<none>")
        );
        assert_eq!(split_name("deb@sha256:ab"), ("deb", "<none>"));
    }
}
