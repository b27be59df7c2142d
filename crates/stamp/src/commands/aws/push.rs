//! `stamp push IMAGE aws://[REGION/]NAME`: a disk file or a store disk image becomes an AMI.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use stamp_aws::ami::{self, Event, ImageSpec, PublishOptions, Sharing, Upload};
use stamp_aws::ebs::{self, Transfer};
use stamp_aws::import::{self, ImportFormat, ViaS3Options, ViaS3Progress};
use stamp_disk::DiskReader;
use stamp_oci::ImageKind;
use stamp_oci::disk::artifact;

use super::config;
use crate::cli::PushArgs;
use crate::commands::{human_size, print_json};
use crate::progress::CancelFlag;

/// Splits `aws://[REGION/]NAME` into the region (if given) and the AMI name.
pub fn parse_target(s: &str) -> Result<(Option<String>, String)> {
    let rest = s
        .strip_prefix("aws://")
        .with_context(|| format!("'{s}' is not an aws://[REGION/]NAME location"))?;
    let (region, name) = match rest.split_once('/') {
        Some((r, n)) => (Some(r.to_string()).filter(|r| !r.is_empty()), n),
        None => (None, rest),
    };
    if name.is_empty() {
        bail!("'{s}' names no AMI: push to aws://[REGION/]NAME");
    }
    Ok((region, name.to_string()))
}

/// The disk to upload and what its origin says about it.
struct Disk {
    reader: Box<dyn DiskReader>,
    architecture: Option<String>,
    boot_mode: Option<String>,
    /// The reassembled file of a store image, removed when dropped.
    _temp: Option<tempfile::TempPath>,
}

/// Opens `local`: a disk file, else a disk image in the store (its file reassembled into the
/// store's tmp/, in the format it was stored in: no raw copy is made).
fn open_disk(local: &str, store: &crate::cli::StoreArgs) -> Result<Disk> {
    let path = Path::new(local);
    if path.exists() {
        let reader =
            stamp_disk::open(path, None).with_context(|| format!("cannot open {local}"))?;
        return Ok(Disk {
            reader,
            architecture: None,
            boot_mode: None,
            _temp: None,
        });
    }
    let store = crate::commands::registry::open_store(store)?;
    let desc = store.resolve(local).with_context(|| {
        format!(
            "{local} is neither a disk file nor an image in the store (`stamp images` lists them)"
        )
    })?;
    let image = store.image(&desc, None)?;
    if image.kind != ImageKind::Disk {
        bail!(
            "{local} is a container image, not a disk; build a disk from it with `stamp build {local} -o disk.qcow2` (or `--tag`) and push that"
        );
    }
    let (config, layers) = artifact::parts(&image)?;
    let tmp_dir = store.root().join("tmp");
    std::fs::create_dir_all(&tmp_dir)
        .with_context(|| format!("cannot create {}", tmp_dir.display()))?;
    let mut temp = tempfile::Builder::new()
        .prefix("push-")
        .tempfile_in(&tmp_dir)
        .with_context(|| format!("cannot create a file in {}", tmp_dir.display()))?;
    artifact::write_disk(&store, &config, &layers, temp.as_file_mut(), &|_| {})
        .with_context(|| format!("cannot reassemble the disk of {local}"))?;
    let temp = temp.into_temp_path();
    let format = config.format.parse::<stamp_disk::Format>().ok();
    let reader = stamp_disk::open(&temp, format)
        .with_context(|| format!("cannot open the disk of {local}"))?;
    Ok(Disk {
        reader,
        architecture: config.architecture.clone(),
        boot_mode: config.boot_mode.clone(),
        _temp: Some(temp),
    })
}

/// EC2's name for an OCI or uname architecture.
fn ec2_arch(a: &str) -> String {
    match a {
        "amd64" | "x86-64" => "x86_64".into(),
        "aarch64" => "arm64".into(),
        other => other.into(),
    }
}

/// A bar with the bytes sent, blocks sent and skipped, and throughput; only on a terminal.
fn upload_bar(enabled: bool) -> Option<ProgressBar> {
    (enabled && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} uploading {binary_bytes} ({binary_bytes_per_sec}) {msg} {elapsed}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b
    })
}

pub fn run(a: &PushArgs, remote: &str, cancel: &CancelFlag) -> Result<u8> {
    let (region, name) = parse_target(remote)?;
    let m = &a.ami;
    let disk = open_disk(&a.local, &a.store)?;
    let architecture = m
        .arch
        .clone()
        .or(disk.architecture.as_deref().map(ec2_arch))
        .unwrap_or_else(|| "x86_64".into());
    let boot_mode = match m.boot_mode.clone().or(disk.boot_mode.clone()) {
        Some(b) => Some(b),
        None => stamp_fs::gpt::firmware(&*disk.reader)
            .with_context(|| format!("cannot read the partition table of {}", a.local))?
            .map(|f| f.ec2_boot_mode().to_string()),
    };
    let mut tags = Vec::new();
    for t in &m.tags {
        let Some((k, v)) = t.split_once('=') else {
            bail!("--tag takes KEY=VALUE, not '{t}'");
        };
        tags.push((k.to_string(), v.to_string()));
    }
    let opts = PublishOptions {
        image: ImageSpec {
            name,
            description: m.description.clone(),
            architecture,
            boot_mode,
            ena: m.ena,
            sriov: m.sriov,
            tpm: m.tpm,
            imds_v2: m.imds_v2,
            volume_type: m.volume_type.clone(),
            volume_size_gib: m.volume_size,
            tags,
        },
        sharing: Sharing {
            public: m.public,
            accounts: m.grants.clone(),
        },
        copy_to: m.copy_to.clone(),
        reuse: m.reuse,
        jobs: m.jobs,
        run_id: stamp_aws::fresh_id(),
    };
    let config = config(&a.aws, region)?;
    let bar = upload_bar(m.progress);
    let progress = |t: &Transfer| {
        if let Some(b) = &bar {
            b.set_position(t.bytes);
            b.set_message(format!(
                "{} blocks sent, {} zero blocks skipped",
                t.blocks_done, t.blocks_skipped
            ));
        }
    };
    let reader = &*disk.reader;
    let progress_s3 = |p: &ViaS3Progress| {
        if let Some(b) = &bar {
            match p {
                ViaS3Progress::Upload(u) => {
                    b.set_position(u.bytes_uploaded);
                    b.set_message(format!(
                        "to S3, {} of {} read",
                        human_size(u.source_read),
                        human_size(u.source_total)
                    ));
                }
                ViaS3Progress::Import(t) => b.set_message(format!(
                    "importing {}: {} {}% {}",
                    t.task_id,
                    t.status,
                    t.progress.as_deref().unwrap_or("0"),
                    t.message.as_deref().unwrap_or("")
                )),
            }
        }
    };
    let upload = |client: &stamp_aws::http::Client, o: &ebs::UploadOptions| match &m.via {
        None => ebs::upload(client, reader, o, &progress, cancel).map(Upload::Ebs),
        Some(url) => {
            let via = ViaS3Options {
                description: o.description.clone(),
                tags: o.tags.clone(),
                run_id: Some(opts.run_id.clone()),
                ..Default::default()
            };
            import::push_via_s3(
                client,
                reader,
                url,
                ImportFormat::Vmdk,
                &via,
                &progress_s3,
                cancel,
            )
            .map(Upload::ViaS3)
        }
    };
    let events = |e: Event| {
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        match e {
            Event::Reused(id) => eprintln!("An AMI named {} exists: {id}", opts.image.name),
            Event::Uploaded(Upload::Ebs(r)) => eprintln!(
                "Uploaded {}: {} in {} blocks; {} zero blocks not sent",
                r.snapshot_id,
                human_size(r.bytes_sent),
                r.blocks_sent,
                r.blocks_skipped
            ),
            Event::Uploaded(Upload::ViaS3(r)) => {
                eprintln!(
                    "Imported {} with task {} from s3://{}/{} ({})",
                    r.snapshot_id,
                    r.task_id,
                    r.bucket,
                    r.object_key,
                    human_size(r.bytes_uploaded)
                );
                if let Some(w) = &r.cleanup_warning {
                    eprintln!("warning: {w}");
                }
            }
            Event::Registered(id) => eprintln!("Registered {id}"),
            Event::Shared(id) => eprintln!("Shared {id}"),
            Event::Copying(region, id) => eprintln!("Copying to {region}: {id}"),
            Event::Copied(region, id) => eprintln!("Available in {region}: {id}"),
        }
    };
    let result = ami::publish(&config, &opts, &upload, &events, cancel);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let published = result.with_context(|| {
        format!(
            "cannot push {} to aws://{}/{}",
            a.local, config.region, opts.image.name
        )
    })?;
    if m.json {
        print_json(&published)?;
    } else {
        println!(
            "Pushed aws://{}/{}\nImage: {}",
            published.region, published.name, published.image_id
        );
        if let Some(s) = &published.snapshot_id {
            println!("Snapshot: {s}");
        }
        for c in &published.copies {
            println!("Copy: {} {}", c.region, c.image_id);
        }
    }
    if cancel.load(Ordering::SeqCst) {
        // Interrupted after everything was done: the result stands.
        eprintln!("(interrupted after the AMI was complete; it is kept)");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_target;

    #[test]
    fn targets() {
        let t = |s: &str| parse_target(s).ok();
        assert_eq!(t("aws://node"), Some((None, "node".into())));
        assert_eq!(
            t("aws://eu-west-1/node"),
            Some((Some("eu-west-1".into()), "node".into()))
        );
        assert_eq!(t("aws:///node"), Some((None, "node".into())));
        assert_eq!(t("aws://eu-west-1/"), None);
        assert_eq!(t("aws://"), None);
        assert_eq!(t("s3://x"), None);
    }
}
