//! `stamp pull aws://[REGION/]ami-…|snap-… -o OUT.FMT`: an AMI's root snapshot (or a snapshot)
//! read through the EBS direct APIs into a disk file of any stamp-disk format, under a temporary
//! name renamed when complete.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use stamp_aws::ebs::{self, Transfer};
use stamp_aws::ec2::{self, DescribeImagesRequest};
use stamp_aws::http::Client;
use stamp_disk::{CreateOptions, Format};

use super::{client, parse_location};
use crate::cli::PullArgs;
use crate::commands::{human_size, parse_format, print_json};
use crate::progress::CancelFlag;

/// What `stamp pull aws://…` did (its `--json`).
#[derive(Debug, serde::Serialize)]
struct PullReport {
    /// The AMI pulled, if an AMI was named.
    image_id: Option<String>,
    /// The snapshot read.
    snapshot_id: String,
    region: String,
    /// The file written.
    output: String,
    format: String,
    /// The disk's size in bytes (the volume's).
    virtual_size: u64,
    /// The EBS block size.
    block_size: u64,
    /// Blocks with data fetched.
    blocks: u64,
    /// Bytes fetched.
    bytes: u64,
}

/// Whether `id` is an AMI or snapshot id: `ami-`/`snap-` and letters or digits.
fn valid_id(id: &str) -> bool {
    let rest = id.strip_prefix("ami-").or_else(|| id.strip_prefix("snap-"));
    rest.is_some_and(|r| {
        !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// Pulls the AMI or snapshot `a.reference` names into `a.output`. Returns 2 (usage) when -o is
/// missing.
pub fn pull(a: &PullArgs, cancel: &CancelFlag) -> Result<u8> {
    let Some(out) = &a.output else {
        eprintln!(
            "error: pulling {} needs -o OUT.FMT: AMIs and snapshots are written to a disk file, not the store\n\n\
             Usage: stamp pull aws://[REGION/]ami-…|snap-… -o OUT.FMT [-O FMT] [--jobs N]",
            a.reference
        );
        return Ok(2);
    };
    let (region, id) = match parse_location(&a.reference) {
        Some((region, Some(id))) => (region, id),
        _ => bail!(
            "give the AMI or snapshot as aws://[REGION/]ami-…|snap-…, not {}",
            a.reference
        ),
    };
    if !valid_id(&id) {
        bail!("{id} is not an AMI id (ami-…) or a snapshot id (snap-…)");
    }
    if a.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let format = match parse_format(a.out_format.as_deref())? {
        Some(f) => f,
        None => Format::from_extension(out).unwrap_or(Format::Raw),
    };
    let client = client(&a.aws, region)?;
    let region = client.config().region.clone();
    let (image_id, snapshot_id) = if id.starts_with("ami-") {
        let snapshot = root_snapshot(&client, &id, &region)?;
        (Some(id), snapshot)
    } else {
        (None, id)
    };
    let (state, _) = ebs::ec2_snapshot_state(&client, &snapshot_id)
        .with_context(|| format!("cannot find snapshot {snapshot_id} in {region}"))?;
    if state != "completed" {
        bail!("snapshot {snapshot_id} is {state}; it can be pulled once it is completed");
    }
    let size = ebs::snapshot_size(&client, &snapshot_id)
        .with_context(|| format!("cannot read the size of {snapshot_id}"))?;
    let writer = stamp_disk::create(out, format, size, &CreateOptions::default())
        .with_context(|| format!("cannot create {} as {format}", out.display()))?;

    let bar = Progress::new(!a.quiet && !a.json, &snapshot_id);
    let result = ebs::download(
        &client,
        &snapshot_id,
        writer,
        a.jobs,
        &|t| bar.update(t),
        cancel.as_ref(),
    );
    bar.finish();
    // An interruption is a stamp_aws::Error::Interrupted in the chain: exit code 130.
    let report = result.with_context(|| {
        format!(
            "cannot pull {snapshot_id} to {}; nothing was written",
            out.display()
        )
    })?;

    let summary = PullReport {
        image_id,
        snapshot_id,
        region,
        output: out.display().to_string(),
        format: format.to_string(),
        virtual_size: size,
        block_size: report.block_size,
        blocks: report.blocks,
        bytes: report.bytes,
    };
    if a.json {
        print_json(&summary)?;
    } else if a.quiet {
        println!("{}", out.display());
    } else {
        println!("{}", sentence(&summary, out));
    }
    Ok(0)
}

/// "Pulled ami-… (snap-…, 8 GiB, 1234 blocks) to OUT".
fn sentence(r: &PullReport, out: &Path) -> String {
    let what = match &r.image_id {
        Some(ami) => format!("{ami} ({}, ", r.snapshot_id),
        None => format!("{} (", r.snapshot_id),
    };
    format!(
        "Pulled {what}{}, {} blocks) to {}",
        human_size(r.virtual_size),
        r.blocks,
        out.display()
    )
}

/// The snapshot behind AMI `id`'s root device.
fn root_snapshot(client: &Client, id: &str, region: &str) -> Result<String> {
    let req = DescribeImagesRequest {
        image_ids: vec![id.to_string()],
        ..Default::default()
    };
    let resp = ec2::call(client, &req).with_context(|| format!("cannot find {id} in {region}"))?;
    let Some(image) = resp
        .images
        .iter()
        .find(|i| i.image_id.as_deref() == Some(id))
    else {
        bail!("no AMI {id} in {region}; `stamp images --remote aws://{region}` lists yours");
    };
    image.root_snapshot_id().map(str::to_string).ok_or_else(|| {
        anyhow!("{id} has no EBS snapshot behind its root device (an instance-store AMI?)")
    })
}

/// The progress bar of a pull: blocks, bytes and throughput, on a terminal only.
struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
}

impl Progress {
    fn new(enabled: bool, snapshot_id: &str) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:40}] {pos}/{len} blocks  {msg}  eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(format!("pulling {snapshot_id}"));
            b
        });
        Progress {
            bar,
            start: Instant::now(),
        }
    }

    fn update(&self, t: &Transfer) {
        let Some(b) = &self.bar else { return };
        // The bar covers the blocks the snapshot holds (the others are holes, never fetched).
        b.set_length(t.blocks_total.saturating_sub(t.blocks_skipped));
        b.set_position(t.blocks_done);
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        b.set_message(format!(
            "{}  {}/s",
            human_size(t.bytes),
            human_size((t.bytes as f64 / secs) as u64)
        ));
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_any_request() {
        assert!(valid_id("ami-0123abcd"));
        assert!(valid_id("snap-0123abcd"));
        assert!(!valid_id("ami-"));
        assert!(!valid_id("vol-0123"));
        assert!(!valid_id("snap-../x"));
        assert!(!valid_id(&format!("snap-{}", "a".repeat(65))));
    }

    #[test]
    fn the_sentence_names_ami_snapshot_size_and_blocks() {
        let mut r = PullReport {
            image_id: Some("ami-1".into()),
            snapshot_id: "snap-2".into(),
            region: "us-east-1".into(),
            output: "o.qcow2".into(),
            format: "qcow2".into(),
            virtual_size: 8 << 30,
            block_size: 512 << 10,
            blocks: 12,
            bytes: 12 << 19,
        };
        assert_eq!(
            sentence(&r, Path::new("o.qcow2")),
            "Pulled ami-1 (snap-2, 8 GiB, 12 blocks) to o.qcow2"
        );
        r.image_id = None;
        assert_eq!(
            sentence(&r, Path::new("o.qcow2")),
            "Pulled snap-2 (8 GiB, 12 blocks) to o.qcow2"
        );
    }
}
