//! The caller's AMIs: `stamp images --remote aws` lists them (and keeps the listing in a cache
//! for `--offline` and for when AWS cannot be reached), `stamp rmi aws://…` removes one, and
//! `stamp rmi --incomplete aws://REGION` removes what interrupted pushes left behind.
//!
//! The cache is `$XDG_CACHE_HOME/stamp/aws/<endpoint-host>/<region>.json` (default
//! `~/.cache`), one JSON document per endpoint and region, written under a temporary name and
//! renamed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use stamp_aws::ami::INCOMPLETE_TAG;
use stamp_aws::config::{AwsConfig, ConfigOptions};
use stamp_aws::ec2::{
    self, DeleteSnapshotRequest, DeregisterImageRequest, DescribeImagesRequest,
    DescribeSnapshotsRequest, Filter, Image,
};
use stamp_aws::http::Client;

use super::{client, parse_location};
use crate::cli::AwsArgs;
use crate::commands::print_json;

/// Most pages of a Describe* listing followed (a server repeating its token must not loop).
const MAX_PAGES: usize = 10_000;
/// Largest cache file read: a listing of thousands of AMIs is a few MiB.
const MAX_CACHE_FILE: u64 = 64 << 20;
/// The cache document's version.
const CACHE_SCHEMA: u32 = 1;

/// One AMI as `stamp images --remote aws` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Ami {
    id: String,
    name: String,
    created: String,
    architecture: String,
    boot_mode: String,
    snapshot: String,
    size_gib: Option<i64>,
    state: String,
}

impl From<&Image> for Ami {
    fn from(i: &Image) -> Self {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        Ami {
            id: text(&i.image_id),
            name: text(&i.name),
            created: text(&i.creation_date),
            architecture: text(&i.architecture),
            boot_mode: text(&i.boot_mode),
            snapshot: i.root_snapshot_id().unwrap_or_default().to_string(),
            size_gib: i
                .block_device_mappings
                .iter()
                .find_map(|m| m.ebs.as_ref()?.volume_size),
            state: text(&i.state),
        }
    }
}

/// A saved listing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Cached {
    schema_version: u32,
    /// The EC2 endpoint it came from.
    endpoint: String,
    region: String,
    /// When it was fetched, RFC 3339 UTC.
    fetched: String,
    /// The same, in seconds since the epoch.
    fetched_unix: u64,
    images: Vec<Ami>,
}

/// Seconds since the epoch now.
fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `secs` as RFC 3339 UTC.
fn rfc3339(secs: u64) -> String {
    stamp_fs::Timestamp::from_secs(i64::try_from(secs).unwrap_or(i64::MAX)).to_rfc3339()
}

/// A duration in words: "42 s", "5 min", "3 h", "2 days".
fn age(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

/// The host (and port) of an endpoint URL as a file name: `ec2.us-east-1.amazonaws.com`,
/// `127.0.0.1_5000`.
fn endpoint_dir_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    // Never "", "." or "..": those are not a directory of their own.
    if name.chars().all(|c| c == '.') {
        format!("_{name}")
    } else {
        name
    }
}

/// The cache file of `config`'s EC2 endpoint and region.
fn cache_path(config: &AwsConfig) -> Result<PathBuf> {
    Ok(crate::dirs::xdg("XDG_CACHE_HOME", ".cache")?
        .join("aws")
        .join(endpoint_dir_name(&config.endpoint("ec2")))
        .join(format!("{}.json", config.region)))
}

/// Reads a cache file; `Ok(None)` if there is none.
fn read_cache(path: &Path) -> Result<Option<Cached>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut text = Vec::new();
    file.take(MAX_CACHE_FILE + 1)
        .read_to_end(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() as u64 > MAX_CACHE_FILE {
        bail!(
            "the cached listing {} is over {} MiB; delete it",
            path.display(),
            MAX_CACHE_FILE >> 20
        );
    }
    let cached: Cached = serde_json::from_slice(&text).with_context(|| {
        format!(
            "the cached listing {} is damaged (not a stamp AMI listing); delete it",
            path.display()
        )
    })?;
    if cached.schema_version != CACHE_SCHEMA {
        bail!(
            "the cached listing {} has schema version {}, not {CACHE_SCHEMA}; delete it",
            path.display(),
            cached.schema_version
        );
    }
    Ok(Some(cached))
}

/// Writes a cache file under a temporary name and renames it into place.
fn write_cache(path: &Path, cached: &Cached) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".listing.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    serde_json::to_writer_pretty(&mut tmp, cached)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Saves a fresh listing; a cache that cannot be written is only worth a warning.
fn save_listing(config: &AwsConfig, amis: &[Ami], fetched_unix: u64) {
    let cached = Cached {
        schema_version: CACHE_SCHEMA,
        endpoint: config.endpoint("ec2"),
        region: config.region.clone(),
        fetched: rfc3339(fetched_unix),
        fetched_unix,
        images: amis.to_vec(),
    };
    if let Err(e) = cache_path(config).and_then(|p| write_cache(&p, &cached)) {
        eprintln!("warning: the listing was not cached: {e:#}");
    }
}

/// Drops `ids` from the cached listing of `config`'s endpoint and region, if there is one.
fn forget(config: &AwsConfig, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let result = cache_path(config).and_then(|path| {
        let Some(mut cached) = read_cache(&path)? else {
            return Ok(());
        };
        let before = cached.images.len();
        cached.images.retain(|i| !ids.contains(&i.id));
        if cached.images.len() != before {
            write_cache(&path, &cached)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("warning: the cached listing was not updated: {e:#}");
    }
}

/// The configuration for `--offline`: region and endpoint as usual, but no credentials needed
/// (nothing is sent).
fn offline_config(a: &AwsArgs, region: Option<String>) -> Result<AwsConfig> {
    Ok(AwsConfig::load(&ConfigOptions {
        profile: a.profile.clone(),
        region: region.or_else(|| a.region.clone()),
        endpoint_url: a.endpoint_url.clone(),
        access_key: Some("offline".into()),
        secret_key: Some("offline".into()),
        ..ConfigOptions::default()
    })?)
}

/// Every AMI of the caller (DescribeImages, owner self, every page).
fn list_amis(client: &Client) -> stamp_aws::Result<Vec<Ami>> {
    let mut amis = Vec::new();
    let mut next_token = None;
    for _ in 0..MAX_PAGES {
        let req = DescribeImagesRequest {
            owners: vec!["self".into()],
            next_token: next_token.take(),
            ..Default::default()
        };
        let resp = ec2::call(client, &req)?;
        amis.extend(resp.images.iter().map(Ami::from));
        match resp.next_token {
            Some(t) if !t.is_empty() => next_token = Some(t),
            _ => break,
        }
    }
    amis.sort_by(|x, y| x.created.cmp(&y.created).then(x.id.cmp(&y.id)));
    Ok(amis)
}

/// Lists the caller's AMIs (DescribeImages, owner self, every page) and caches the listing;
/// with `offline`, lists the cache; when AWS cannot be reached, lists the cache with a warning.
pub fn images(a: &AwsArgs, location: &str, json: bool, offline: bool) -> Result<u8> {
    let Some((region, None)) = parse_location(location) else {
        bail!("--remote takes aws or aws://REGION, not {location}");
    };
    if offline {
        let config = offline_config(a, region)?;
        let path = cache_path(&config)?;
        let Some(cached) = read_cache(&path)? else {
            bail!(
                "no cached listing of {} in {} ({} does not exist); list once without --offline",
                config.endpoint("ec2"),
                config.region,
                path.display()
            );
        };
        if !json {
            eprintln!("(the listing cached at {})", cached.fetched);
        }
        return show(&cached.images, json, Some(&cached));
    }
    let client = client(a, region)?;
    let fetched = now_unix();
    match list_amis(&client) {
        Ok(amis) => {
            save_listing(client.config(), &amis, fetched);
            show(&amis, json, None)
        }
        Err(e @ stamp_aws::Error::Transport(_)) => {
            let cached = cache_path(client.config()).and_then(|p| read_cache(&p));
            let Ok(Some(cached)) = cached else {
                return Err(anyhow::Error::new(e).context("cannot list the AMIs"));
            };
            eprintln!(
                "warning: AWS cannot be reached ({e}); this is the listing cached at {} ({} ago), which may be stale",
                cached.fetched,
                age(now_unix().saturating_sub(cached.fetched_unix))
            );
            show(&cached.images, json, Some(&cached))
        }
        Err(e) => Err(anyhow::Error::new(e).context("cannot list the AMIs")),
    }
}

/// Prints a listing; `cached` says it came from the cache.
fn show(amis: &[Ami], json: bool, cached: Option<&Cached>) -> Result<u8> {
    if json {
        #[derive(serde::Serialize)]
        struct Listing<'a> {
            images: &'a [Ami],
            /// Set when the listing comes from the cache: when it was fetched.
            #[serde(skip_serializing_if = "Option::is_none")]
            cached_at: Option<&'a str>,
        }
        print_json(&Listing {
            images: amis,
            cached_at: cached.map(|c| c.fetched.as_str()),
        })?;
        return Ok(0);
    }
    println!(
        "{:<22} {:<32} {:<25} {:<8} {:<10} {:<24} {:>5} STATE",
        "IMAGE ID", "NAME", "CREATED", "ARCH", "BOOT", "SNAPSHOT", "GiB"
    );
    for i in amis {
        println!(
            "{:<22} {:<32} {:<25} {:<8} {:<10} {:<24} {:>5} {}",
            i.id,
            i.name,
            i.created,
            i.architecture,
            i.boot_mode,
            i.snapshot,
            i.size_gib.map(|s| s.to_string()).unwrap_or_default(),
            i.state
        );
    }
    Ok(0)
}

/// Deregisters the AMI `location` names and deletes its snapshots.
pub fn rmi(a: &AwsArgs, location: &str) -> Result<()> {
    let Some((region, Some(id))) = parse_location(location) else {
        bail!("give the AMI as aws://[REGION/]ami-…, not {location}");
    };
    if !id.starts_with("ami-") {
        bail!("{id} is not an AMI id (ami-…)");
    }
    let client = client(a, region)?;
    let req = DescribeImagesRequest {
        image_ids: vec![id.clone()],
        ..Default::default()
    };
    let resp = ec2::call(&client, &req).with_context(|| format!("cannot find {id}"))?;
    let Some(image) = resp
        .images
        .iter()
        .find(|i| i.image_id.as_deref() == Some(&id))
    else {
        bail!("no AMI {id} in this region; `stamp images --remote aws` lists yours");
    };
    let snapshots: Vec<String> = image.snapshot_ids().iter().map(|s| s.to_string()).collect();
    let req = DeregisterImageRequest {
        image_id: id.clone(),
        delete_associated_snapshots: None,
        dry_run: None,
    };
    ec2::call(&client, &req).with_context(|| format!("cannot deregister {id}"))?;
    println!("Deregistered: {id}");
    forget(client.config(), std::slice::from_ref(&id));
    for snapshot_id in snapshots {
        let req = DeleteSnapshotRequest {
            snapshot_id: snapshot_id.clone(),
            dry_run: None,
        };
        ec2::call(&client, &req).with_context(|| {
            format!("{id} is deregistered but its snapshot {snapshot_id} could not be deleted; delete it with `aws ec2 delete-snapshot --snapshot-id {snapshot_id}`")
        })?;
        println!("Deleted: {snapshot_id}");
    }
    Ok(())
}

/// What `stamp rmi --incomplete` removed.
#[derive(Debug, Default, serde::Serialize)]
struct Removed {
    region: String,
    deregistered: Vec<String>,
    deleted: Vec<String>,
}

/// The filter on the incomplete tag.
fn incomplete_filter() -> Vec<Filter> {
    vec![Filter::new(format!("tag:{INCOMPLETE_TAG}"), ["true"])]
}

/// Deregisters the caller's AMIs and deletes the caller's snapshots tagged
/// `stamp:incomplete=true` in the region `location` names (`aws` or `aws://REGION`); an AMI's
/// snapshots go with it. Keeps going past a failure and reports every one at the end.
pub fn rmi_incomplete(a: &AwsArgs, location: &str, json: bool) -> Result<()> {
    let Some((region, None)) = parse_location(location) else {
        bail!("--incomplete takes aws or aws://REGION, not {location}");
    };
    let client = client(a, region)?;
    let region = client.config().region.clone();

    let mut images: Vec<Image> = Vec::new();
    let mut next_token = None;
    for _ in 0..MAX_PAGES {
        let req = DescribeImagesRequest {
            owners: vec!["self".into()],
            filters: incomplete_filter(),
            next_token: next_token.take(),
            ..Default::default()
        };
        let resp = ec2::call(&client, &req).context("cannot list the incomplete AMIs")?;
        images.extend(resp.images);
        match resp.next_token {
            Some(t) if !t.is_empty() => next_token = Some(t),
            _ => break,
        }
    }
    let mut snapshots: Vec<String> = Vec::new();
    for _ in 0..MAX_PAGES {
        let req = DescribeSnapshotsRequest {
            owner_ids: vec!["self".into()],
            filters: incomplete_filter(),
            next_token: next_token.take(),
            ..Default::default()
        };
        let resp = ec2::call(&client, &req).context("cannot list the incomplete snapshots")?;
        snapshots.extend(resp.snapshots.into_iter().filter_map(|s| s.snapshot_id));
        match resp.next_token {
            Some(t) if !t.is_empty() => next_token = Some(t),
            _ => break,
        }
    }

    let mut removed = Removed {
        region: region.clone(),
        ..Default::default()
    };
    let mut failures = Vec::new();
    // AMIs first: a snapshot an AMI uses cannot be deleted.
    for image in &images {
        let Some(id) = image.image_id.clone() else {
            continue;
        };
        let req = DeregisterImageRequest {
            image_id: id.clone(),
            delete_associated_snapshots: None,
            dry_run: None,
        };
        match ec2::call(&client, &req) {
            Ok(_) => {
                if !json {
                    println!("Deregistered: {id}");
                }
                removed.deregistered.push(id);
                for s in image.snapshot_ids() {
                    if !snapshots.iter().any(|x| x == s) {
                        snapshots.push(s.to_string());
                    }
                }
            }
            Err(e) => failures.push(format!("cannot deregister {id}: {e}")),
        }
    }
    for id in snapshots {
        let req = DeleteSnapshotRequest {
            snapshot_id: id.clone(),
            dry_run: None,
        };
        match ec2::call(&client, &req) {
            Ok(_) => {
                if !json {
                    println!("Deleted: {id}");
                }
                removed.deleted.push(id);
            }
            Err(e) => failures.push(format!("cannot delete {id}: {e}")),
        }
    }
    forget(client.config(), &removed.deregistered);
    if json {
        print_json(&removed)?;
    } else if removed.deregistered.is_empty() && removed.deleted.is_empty() && failures.is_empty() {
        println!("No incomplete AMIs or snapshots in {region}.");
    }
    if !failures.is_empty() {
        bail!(
            "{} incomplete resource(s) could not be removed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hosts_become_one_safe_file_name() {
        assert_eq!(
            endpoint_dir_name("https://ec2.us-east-1.amazonaws.com"),
            "ec2.us-east-1.amazonaws.com"
        );
        assert_eq!(
            endpoint_dir_name("http://127.0.0.1:5000/"),
            "127.0.0.1_5000"
        );
        assert_eq!(
            endpoint_dir_name("http://user:pw@Host.example:8/x/../y"),
            "host.example_8"
        );
        assert_eq!(endpoint_dir_name("http://[::1]:5000"), "___1__5000");
        assert_eq!(endpoint_dir_name("http://../"), "_..");
        assert_eq!(endpoint_dir_name(""), "_");
    }

    #[test]
    fn ages_read_as_words() {
        assert_eq!(age(5), "5 s");
        assert_eq!(age(600), "10 min");
        assert_eq!(age(3 * 3600), "3 h");
        assert_eq!(age(5 * 86_400), "5 days");
        assert_eq!(rfc3339(86_400 + 61), "1970-01-02T00:01:01Z");
    }

    #[test]
    fn the_cache_round_trips_and_refuses_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/us-east-1.json");
        assert!(read_cache(&path).unwrap().is_none());
        let cached = Cached {
            schema_version: CACHE_SCHEMA,
            endpoint: "http://127.0.0.1:1".into(),
            region: "us-east-1".into(),
            fetched: rfc3339(100),
            fetched_unix: 100,
            images: vec![Ami {
                id: "ami-1".into(),
                name: "n".into(),
                created: String::new(),
                architecture: "x86_64".into(),
                boot_mode: String::new(),
                snapshot: "snap-1".into(),
                size_gib: Some(2),
                state: "available".into(),
            }],
        };
        write_cache(&path, &cached).unwrap();
        assert_eq!(read_cache(&path).unwrap(), Some(cached));
        // Only the renamed file is left, no temporary.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        std::fs::write(&path, b"{\"images\": 3").unwrap();
        let err = read_cache(&path).unwrap_err();
        assert!(format!("{err:#}").contains("damaged"), "{err:#}");
        std::fs::write(&path, br#"{"schema_version": 9, "endpoint": "", "region": "", "fetched": "", "fetched_unix": 0, "images": []}"#).unwrap();
        let err = read_cache(&path).unwrap_err();
        assert!(err.to_string().contains("schema version 9"), "{err:#}");
    }
}
