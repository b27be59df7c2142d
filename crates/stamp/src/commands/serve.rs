//! `stamp serve`: the EC2-compatible VM Import/Export service (crates/stamp-serve).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use stamp_serve::node::{NodeConfig, Objects, run as run_node};

use super::aws::config as aws_config;
use crate::cli::ServeArgs;
use crate::dirs::xdg;
use crate::progress::CancelFlag;

/// The options a `--config` TOML file may set (the flags' long names).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<String>,
    db: Option<String>,
    objects: Option<String>,
    credentials: Option<PathBuf>,
    workers: Option<usize>,
    threads: Option<usize>,
    scratch: Option<PathBuf>,
    scratch_quota: Option<String>,
    lease: Option<u64>,
    convert_rate: Option<String>,
    retention_days: Option<u64>,
    allow_private_urls: Option<bool>,
    rate_limit: Option<f64>,
    endpoint_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

fn read_config(path: &PathBuf) -> Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid serve config", path.display()))
}

pub fn run(mut a: ServeArgs, cancel: &CancelFlag) -> Result<u8> {
    let f = match &a.config {
        Some(p) => read_config(p)?,
        None => FileConfig::default(),
    };
    if a.aws.endpoint_url.is_none() {
        a.aws.endpoint_url = f.endpoint_url.clone();
    }
    let listen = a
        .listen
        .or(f.listen)
        .unwrap_or_else(|| "127.0.0.1:8773".into());
    let listen = listen
        .parse()
        .with_context(|| format!("--listen {listen} is not ADDR:PORT"))?;
    let db = match a.db.or(f.db) {
        Some(d) => d,
        None => {
            let dir = xdg("XDG_STATE_HOME", ".local/state")?;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            format!("sqlite:{}", dir.join("serve.db").display())
        }
    };
    let objects = match a.objects.or(f.objects) {
        Some(o) if o.starts_with("s3://") => Objects::S3 {
            url: o,
            config: Box::new(aws_config(&a.aws, None)?),
        },
        Some(o) => Objects::Dir(PathBuf::from(o)),
        None => Objects::Dir(xdg("XDG_DATA_HOME", ".local/share")?.join("objects")),
    };
    let Some(credentials) = a.credentials.or(f.credentials) else {
        bail!(
            "give the access keys with --credentials FILE (one `ACCESS_KEY_ID SECRET TENANT` per line)"
        );
    };
    let scratch = match a.scratch.or(f.scratch) {
        Some(s) => s,
        None => xdg("XDG_CACHE_HOME", ".cache")?.join("serve-scratch"),
    };
    let quota = a
        .scratch_quota
        .or(f.scratch_quota)
        .unwrap_or_else(|| "20G".into());
    let scratch_quota = stamp_disk::parse_size(&quota)
        .map_err(|e| anyhow::anyhow!("--scratch-quota {quota}: {e}"))?;
    let convert_rate = match a.convert_rate.or(f.convert_rate) {
        Some(r) => Some(
            stamp_disk::parse_size(&r)
                .map_err(|e| anyhow::anyhow!("--convert-rate {r}: {e}"))?
                .max(1),
        ),
        None => None,
    };
    let cfg = NodeConfig {
        listen,
        db,
        objects,
        credentials,
        workers: a.workers.or(f.workers).unwrap_or(2).max(1),
        threads: a.threads.or(f.threads).unwrap_or(0),
        rate_limit: a.rate_limit.or(f.rate_limit).unwrap_or(0.0),
        store: Some(match a.store.store.clone() {
            Some(s) => s,
            None => stamp_oci::Store::default_root(),
        }),
        scratch,
        scratch_quota,
        lease: Duration::from_secs(a.lease.or(f.lease).unwrap_or(30).max(1)),
        retention: Duration::from_secs(a.retention_days.or(f.retention_days).unwrap_or(7) * 86_400),
        allow_private_urls: a.allow_private_urls || f.allow_private_urls.unwrap_or(false),
        convert_rate,
        tls: match (a.tls_cert.or(f.tls_cert), a.tls_key.or(f.tls_key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("TLS needs both --tls-cert and --tls-key"),
        },
    };
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    run_node(&cfg, cancel.clone(), &|addr| {
        // The first line on stdout is the address (a test or script can read the port).
        println!("listening on {scheme}://{addr}");
    })
    .context("stamp serve stopped")?;
    Ok(0)
}
