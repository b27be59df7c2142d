//! The caller's AMIs: `stamp images --remote aws` lists them, `stamp rmi aws://…` removes one.

use anyhow::{Context, Result, bail};
use stamp_aws::ec2::{
    self, DeleteSnapshotRequest, DeregisterImageRequest, DescribeImagesRequest, Image,
};

use super::{client, parse_location};
use crate::cli::AwsArgs;
use crate::commands::print_json;

/// One AMI as `stamp images --remote aws` shows it.
#[derive(Debug, serde::Serialize)]
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

/// Lists the caller's AMIs (DescribeImages, owner self, every page).
pub fn images(a: &AwsArgs, location: &str, json: bool) -> Result<u8> {
    let Some((region, None)) = parse_location(location) else {
        bail!("--remote takes aws or aws://REGION, not {location}");
    };
    let client = client(a, region)?;
    let mut amis = Vec::new();
    let mut next_token = None;
    loop {
        let req = DescribeImagesRequest {
            owners: vec!["self".into()],
            next_token: next_token.take(),
            ..Default::default()
        };
        let resp = ec2::call(&client, &req).context("cannot list the AMIs")?;
        amis.extend(resp.images.iter().map(Ami::from));
        match resp.next_token {
            Some(t) if !t.is_empty() => next_token = Some(t),
            _ => break,
        }
    }
    amis.sort_by(|x, y| x.created.cmp(&y.created).then(x.id.cmp(&y.id)));
    if json {
        #[derive(serde::Serialize)]
        struct Listing<'a> {
            images: &'a [Ami],
        }
        print_json(&Listing { images: &amis })?;
        return Ok(0);
    }
    println!(
        "{:<22} {:<32} {:<25} {:<8} {:<10} {:<24} {:>5} STATE",
        "IMAGE ID", "NAME", "CREATED", "ARCH", "BOOT", "SNAPSHOT", "GiB"
    );
    for i in &amis {
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
