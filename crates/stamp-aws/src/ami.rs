//! AMIs: publishing a disk as one (snapshot, register, share, copy to other regions) as a
//! transaction that removes everything it created when a step fails or the user interrupts,
//! and the calls it is made of.
//!
//! Until a publish succeeds, what it creates carries the tags `stamp:incomplete=true` and
//! `stamp:run=<run id>`, so that what a crash leaves behind can be found and removed
//! (`stamp rmi --incomplete`); the last step removes `stamp:incomplete`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::AwsConfig;
use crate::ebs::{UploadOptions, UploadReport};
use crate::ec2::{
    self, BlockDeviceMapping, CopyImageRequest, CreateTagsRequest, CreateVolumePermission,
    CreateVolumePermissionModifications, DeleteSnapshotRequest, DeleteTagsRequest,
    DeregisterImageRequest, DescribeImagesRequest, DescribeSnapshotsRequest, EbsBlockDevice,
    Filter, Image, LaunchPermission, LaunchPermissionModifications, ModifyImageAttributeRequest,
    ModifySnapshotAttributeRequest, RegisterImageRequest, Tag, TagSpecification,
};
use crate::http::Client;
use crate::import::ViaS3Report;
use crate::{Error, Result};

/// The tag that marks what an unfinished publish created.
pub const INCOMPLETE_TAG: &str = "stamp:incomplete";
/// The tag that names the publish run that created a resource.
pub const RUN_TAG: &str = "stamp:run";
/// The root device of the AMIs stamp registers.
pub const ROOT_DEVICE: &str = "/dev/xvda";
/// Longest wait for an AMI (or a copy in another region) to become `available`.
const AVAILABLE_TIMEOUT: Duration = Duration::from_secs(3 * 60 * 60);

/// What the registered AMI says about the machine it boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The AMI's name (unique per account and region).
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// `x86_64` or `arm64`.
    pub architecture: String,
    /// `uefi`, `legacy-bios` or `uefi-preferred`; `None` leaves AWS's default.
    pub boot_mode: Option<String>,
    /// ENA networking.
    pub ena: bool,
    /// Intel 82599 VF networking (`sriovNetSupport=simple`).
    pub sriov: bool,
    /// NitroTPM (v2.0); needs the `uefi` boot mode.
    pub tpm: bool,
    /// Instances must use IMDSv2 (`imdsSupport=v2.0`).
    pub imds_v2: bool,
    /// The root volume's type (`gp3`, `gp2`, `io1`, ...).
    pub volume_type: String,
    /// The root volume's size in GiB; `None` is the snapshot's size.
    pub volume_size_gib: Option<u64>,
    /// Tags on the AMI and its snapshots.
    pub tags: Vec<(String, String)>,
}

/// Who may launch the AMI (and create volumes from its snapshots) besides the owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sharing {
    /// Everyone.
    pub public: bool,
    /// These account ids.
    pub accounts: Vec<String>,
}

impl Sharing {
    fn is_empty(&self) -> bool {
        !self.public && self.accounts.is_empty()
    }
}

/// How to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The AMI.
    pub image: ImageSpec,
    /// Launch permissions.
    pub sharing: Sharing,
    /// Other regions to copy the AMI to (waiting until each copy is available).
    pub copy_to: Vec<String>,
    /// Return an existing AMI of the same name instead of failing.
    pub reuse: bool,
    /// Blocks in flight during the upload.
    pub jobs: usize,
    /// Identifies this run in the `stamp:run` tag and the upload's idempotency token.
    pub run_id: String,
}

/// How the root snapshot was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upload {
    /// EBS direct APIs (tagged at StartSnapshot).
    Ebs(UploadReport),
    /// S3 and ImportSnapshot (the snapshot is tagged and measured by [`publish`], since
    /// ImportSnapshot tags only its task).
    ViaS3(ViaS3Report),
}

impl Upload {
    /// The snapshot made.
    pub fn snapshot_id(&self) -> &str {
        match self {
            Upload::Ebs(r) => &r.snapshot_id,
            Upload::ViaS3(r) => &r.snapshot_id,
        }
    }
}

/// An AMI in another region made by `--copy-to`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegionCopy {
    /// The region.
    pub region: String,
    /// The copy's id there.
    pub image_id: String,
}

/// What a publish made (or found, with `reuse`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Published {
    /// The AMI's name.
    pub name: String,
    /// Its region.
    pub region: String,
    /// `ami-…`.
    pub image_id: String,
    /// The root snapshot (`snap-…`), if known.
    pub snapshot_id: Option<String>,
    /// True if an existing AMI of that name was returned and nothing was uploaded.
    pub reused: bool,
    /// The EBS direct upload, if that made the snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadReport>,
    /// The S3 upload and import, if that made the snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via_s3: Option<ViaS3Report>,
    /// Copies in other regions.
    pub copies: Vec<RegionCopy>,
}

/// Steps reported while publishing.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// An AMI of the name exists and is returned (`reuse`).
    Reused(&'a str),
    /// The snapshot is complete.
    Uploaded(&'a Upload),
    /// The AMI is registered (and available).
    Registered(&'a str),
    /// Launch permissions were granted.
    Shared(&'a str),
    /// A copy to a region was started: region, new id.
    Copying(&'a str, &'a str),
    /// A copy is available: region, id.
    Copied(&'a str, &'a str),
}

/// Checks an AMI name as AWS does (3–128 of letters, digits, `( ) [ ] . / - ' @ _` and space),
/// before anything is uploaded.
pub fn check_name(name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "()[]./-'@_ ".contains(c);
    if (3..=128).contains(&name.len()) && name.chars().all(ok_char) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "'{name}' is not a valid AMI name: 3 to 128 letters, digits, spaces and ( ) [ ] . / - ' @ _"
        )))
    }
}

impl ImageSpec {
    /// Checks the combination of settings against what AWS accepts.
    pub fn check(&self) -> Result<()> {
        check_name(&self.name)?;
        if !matches!(self.architecture.as_str(), "x86_64" | "arm64" | "i386") {
            return Err(Error::Config(format!(
                "architecture '{}' is not one of x86_64, arm64",
                self.architecture
            )));
        }
        if let Some(m) = &self.boot_mode
            && !matches!(m.as_str(), "uefi" | "legacy-bios" | "uefi-preferred")
        {
            return Err(Error::Config(format!(
                "boot mode '{m}' is not one of uefi, legacy-bios, uefi-preferred"
            )));
        }
        if self.tpm && self.boot_mode.as_deref() != Some("uefi") {
            return Err(Error::Config(
                "NitroTPM (--tpm) needs the uefi boot mode (--boot-mode uefi)".into(),
            ));
        }
        if self.architecture == "arm64" && self.boot_mode.as_deref() == Some("legacy-bios") {
            return Err(Error::Config(
                "arm64 AMIs boot with uefi only, not legacy-bios".into(),
            ));
        }
        if !matches!(
            self.volume_type.as_str(),
            "gp3" | "gp2" | "io1" | "io2" | "st1" | "sc1" | "standard"
        ) {
            return Err(Error::Config(format!(
                "volume type '{}' is not one of gp3, gp2, io1, io2, st1, sc1, standard",
                self.volume_type
            )));
        }
        Ok(())
    }

    /// The RegisterImage request for `snapshot_id` of `snapshot_gib`, with `tags` on the AMI.
    pub fn register_request(
        &self,
        snapshot_id: &str,
        snapshot_gib: u64,
        tags: &[(String, String)],
    ) -> RegisterImageRequest {
        let size = self
            .volume_size_gib
            .unwrap_or(snapshot_gib)
            .max(snapshot_gib);
        RegisterImageRequest {
            name: self.name.clone(),
            description: self.description.clone(),
            architecture: Some(self.architecture.clone()),
            root_device_name: Some(ROOT_DEVICE.into()),
            virtualization_type: Some("hvm".into()),
            block_device_mappings: vec![BlockDeviceMapping {
                device_name: Some(ROOT_DEVICE.into()),
                ebs: Some(EbsBlockDevice {
                    snapshot_id: Some(snapshot_id.into()),
                    volume_size: Some(size as i64),
                    volume_type: Some(self.volume_type.clone()),
                    delete_on_termination: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ena_support: self.ena.then_some(true),
            sriov_net_support: self.sriov.then(|| "simple".into()),
            boot_mode: self.boot_mode.clone(),
            tpm_support: self.tpm.then(|| "v2.0".into()),
            imds_support: self.imds_v2.then(|| "v2.0".into()),
            tag_specifications: tag_specs(&["image"], tags),
            ..Default::default()
        }
    }
}

fn to_tags(tags: &[(String, String)]) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag {
            key: Some(k.clone()),
            value: Some(v.clone()),
        })
        .collect()
}

fn tag_specs(kinds: &[&str], tags: &[(String, String)]) -> Vec<TagSpecification> {
    if tags.is_empty() {
        return Vec::new();
    }
    kinds
        .iter()
        .map(|k| TagSpecification {
            resource_type: Some((*k).into()),
            tags: to_tags(tags),
        })
        .collect()
}

/// The caller's AMI named `name`, if any (DescribeImages, owner self, filter name).
pub fn find_by_name(client: &Client, name: &str) -> Result<Option<Image>> {
    let req = DescribeImagesRequest {
        owners: vec!["self".into()],
        filters: vec![Filter {
            name: Some("name".into()),
            values: vec![name.into()],
        }],
        ..Default::default()
    };
    let resp = ec2::call(client, &req)?;
    Ok(resp
        .images
        .into_iter()
        .find(|i| i.name.as_deref() == Some(name)))
}

/// The AMI `image_id` (DescribeImages), or `None` if the region does not have it.
pub fn describe(client: &Client, image_id: &str) -> Result<Option<Image>> {
    let req = DescribeImagesRequest {
        image_ids: vec![image_id.into()],
        ..Default::default()
    };
    match ec2::call(client, &req) {
        Ok(resp) => Ok(resp
            .images
            .into_iter()
            .find(|i| i.image_id.as_deref() == Some(image_id))),
        Err(Error::Api { code, .. }) if code.starts_with("InvalidAMIID") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits until `image_id` is `available` (error if it turns `failed`, `invalid` or
/// `deregistered`, disappears, or after a timeout); returns it.
pub fn wait_available(client: &Client, image_id: &str, cancel: &AtomicBool) -> Result<Image> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        let image = describe(client, image_id)?.ok_or_else(|| Error::Api {
            service: "ec2",
            action: "DescribeImages".into(),
            code: "InvalidAMIID.NotFound".into(),
            message: format!("{image_id} disappeared while waiting for it to become available"),
        })?;
        let state = image.state.clone().unwrap_or_default();
        match state.as_str() {
            // moto leaves the state out; an AMI that is described is usable there.
            "available" | "" => return Ok(image),
            "pending" | "transient" => {}
            other => {
                let reason = image
                    .state_reason
                    .as_ref()
                    .and_then(|r| r.message.clone())
                    .unwrap_or_default();
                return Err(Error::Api {
                    service: "ec2",
                    action: "DescribeImages".into(),
                    code: format!("ImageState.{other}"),
                    message: format!("{image_id} is {other}: {reason}"),
                });
            }
        }
        if start.elapsed() > AVAILABLE_TIMEOUT {
            return Err(Error::Transport(format!(
                "{image_id} still {state} after {} min",
                AVAILABLE_TIMEOUT.as_secs() / 60
            )));
        }
        sleep_unless_cancelled(delay, cancel)?;
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

fn sleep_unless_cancelled(d: Duration, cancel: &AtomicBool) -> Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    Ok(())
}

/// The volume size of `snapshot_id` in GiB (DescribeSnapshots).
pub fn snapshot_gib(client: &Client, snapshot_id: &str) -> Result<u64> {
    let req = DescribeSnapshotsRequest {
        snapshot_ids: vec![snapshot_id.into()],
        ..Default::default()
    };
    ec2::call(client, &req)?
        .snapshots
        .into_iter()
        .find(|s| s.snapshot_id.as_deref() == Some(snapshot_id))
        .and_then(|s| s.volume_size)
        .filter(|&g| g > 0)
        .map(|g| g as u64)
        .ok_or_else(|| Error::Malformed {
            service: "ec2",
            action: "DescribeSnapshots".into(),
            detail: format!("no volume size for {snapshot_id}"),
        })
}

/// Grants launch permission on `image_id` and create-volume permission on its snapshots.
pub fn share(client: &Client, image_id: &str, snapshots: &[String], s: &Sharing) -> Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    let mut launch: Vec<LaunchPermission> = s
        .accounts
        .iter()
        .map(|a| LaunchPermission {
            user_id: Some(a.clone()),
            ..Default::default()
        })
        .collect();
    let mut volume: Vec<CreateVolumePermission> = s
        .accounts
        .iter()
        .map(|a| CreateVolumePermission {
            user_id: Some(a.clone()),
            ..Default::default()
        })
        .collect();
    if s.public {
        launch.push(LaunchPermission {
            group: Some("all".into()),
            ..Default::default()
        });
        volume.push(CreateVolumePermission {
            group: Some("all".into()),
            ..Default::default()
        });
    }
    ec2::call(
        client,
        &ModifyImageAttributeRequest {
            image_id: image_id.into(),
            launch_permission: Some(LaunchPermissionModifications {
                add: launch,
                remove: Vec::new(),
            }),
            ..Default::default()
        },
    )?;
    for snapshot_id in snapshots {
        ec2::call(
            client,
            &ModifySnapshotAttributeRequest {
                snapshot_id: snapshot_id.clone(),
                create_volume_permission: Some(CreateVolumePermissionModifications {
                    add: volume.clone(),
                    remove: Vec::new(),
                }),
                ..Default::default()
            },
        )?;
    }
    Ok(())
}

/// Deregisters `image_id` and deletes `snapshots`; says what it removed (and what not).
pub fn remove(client: &Client, image_id: &str, snapshots: &[String]) -> Vec<String> {
    let mut said = Vec::new();
    let req = DeregisterImageRequest {
        image_id: image_id.into(),
        delete_associated_snapshots: None,
        dry_run: None,
    };
    said.push(match ec2::call(client, &req) {
        Ok(_) => format!("deregistered {image_id}"),
        Err(e) => format!("could not deregister {image_id}: {e}"),
    });
    for s in snapshots {
        said.push(delete_snapshot(client, s));
    }
    said
}

fn delete_snapshot(client: &Client, snapshot_id: &str) -> String {
    let req = DeleteSnapshotRequest {
        snapshot_id: snapshot_id.into(),
        dry_run: None,
    };
    match ec2::call(client, &req) {
        Ok(_) => format!("deleted snapshot {snapshot_id}"),
        Err(e) => format!("could not delete snapshot {snapshot_id}: {e}"),
    }
}

/// What a publish has created so far, to undo in reverse.
struct Created<'c> {
    home: &'c Client,
    snapshot: Option<String>,
    image: Option<String>,
    /// Per copy: its region's client, the id, its snapshots (once known).
    copies: Vec<(Client, String, Vec<String>)>,
}

impl Created<'_> {
    fn undo(self) -> String {
        let mut said = Vec::new();
        for (client, id, snaps) in self.copies.iter().rev() {
            // A copy still pending has no snapshots to name yet; deregistering it stops it.
            said.extend(remove(client, id, snaps));
        }
        match (&self.image, &self.snapshot) {
            (Some(i), s) => said.extend(remove(self.home, i, s.as_slice())),
            (None, Some(s)) => said.push(delete_snapshot(self.home, s)),
            (None, None) => {}
        }
        if said.is_empty() {
            "nothing was created".into()
        } else {
            said.join(", ")
        }
    }
}

/// Publishes a disk as an AMI in `config`'s region: `upload` makes the root snapshot (it gets
/// the upload options with this run's tags and must delete its snapshot itself when it fails),
/// then the AMI is registered, shared and copied. Any failure or `cancel` after the snapshot
/// exists removes everything created and returns [`Error::Aborted`] saying so.
pub fn publish(
    config: &AwsConfig,
    opts: &PublishOptions,
    upload: &dyn Fn(&Client, &UploadOptions) -> Result<Upload>,
    events: &dyn Fn(Event),
    cancel: &AtomicBool,
) -> Result<Published> {
    let spec = &opts.image;
    spec.check()?;
    let home = Client::new(config);
    let region = config.region.clone();
    if let Some(existing) = find_by_name(&home, &spec.name)? {
        let id = existing.image_id.clone().unwrap_or_default();
        if !opts.reuse {
            return Err(Error::Config(format!(
                "an AMI named '{}' already exists in {region}: {id}; pass --reuse to use it, choose another name, or remove it with `stamp rmi aws://{region}/{id}`",
                spec.name
            )));
        }
        events(Event::Reused(&id));
        return Ok(Published {
            name: spec.name.clone(),
            region,
            snapshot_id: existing.root_snapshot_id().map(String::from),
            image_id: id,
            reused: true,
            upload: None,
            via_s3: None,
            copies: Vec::new(),
        });
    }
    let mut incomplete = spec.tags.clone();
    incomplete.push((INCOMPLETE_TAG.into(), "true".into()));
    incomplete.push((RUN_TAG.into(), opts.run_id.clone()));
    let upload_opts = UploadOptions {
        description: Some(
            spec.description
                .clone()
                .unwrap_or_else(|| format!("{} (stamp)", spec.name)),
        ),
        tags: incomplete.clone(),
        jobs: opts.jobs,
        client_token: Some(format!("{}-snapshot", opts.run_id)),
        timeout_minutes: None,
    };
    let report = upload(&home, &upload_opts)?;
    events(Event::Uploaded(&report));
    let mut created = Created {
        home: &home,
        snapshot: Some(report.snapshot_id().to_string()),
        image: None,
        copies: Vec::new(),
    };
    match finish(
        config,
        opts,
        &report,
        &incomplete,
        &mut created,
        events,
        cancel,
    ) {
        Ok(published) => Ok(published),
        Err(cause) => {
            let cleanup = created.undo();
            tracing::warn!("publish failed: {cause}; {cleanup}");
            Err(Error::Aborted {
                cause: Box::new(cause),
                cleanup,
            })
        }
    }
}

/// The steps after the upload; records what it creates in `created`.
fn finish(
    config: &AwsConfig,
    opts: &PublishOptions,
    report: &Upload,
    incomplete: &[(String, String)],
    created: &mut Created,
    events: &dyn Fn(Event),
    cancel: &AtomicBool,
) -> Result<Published> {
    let spec = &opts.image;
    let home = created.home;
    let check = || {
        if cancel.load(Ordering::Relaxed) {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    };
    check()?;
    let snapshot_id = report.snapshot_id().to_string();
    let gib = match report {
        Upload::Ebs(r) => r.volume_size_gib,
        Upload::ViaS3(_) => {
            ec2::call(
                home,
                &CreateTagsRequest {
                    resources: vec![snapshot_id.clone()],
                    tags: to_tags(incomplete),
                    dry_run: None,
                },
            )?;
            snapshot_gib(home, &snapshot_id)?
        }
    };
    let req = spec.register_request(&snapshot_id, gib, incomplete);
    let image_id = ec2::call(home, &req)?
        .image_id
        .ok_or_else(|| Error::Malformed {
            service: "ec2",
            action: "RegisterImage".into(),
            detail: "no imageId".into(),
        })?;
    created.image = Some(image_id.clone());
    wait_available(home, &image_id, cancel)?;
    events(Event::Registered(&image_id));
    check()?;
    share(
        home,
        &image_id,
        std::slice::from_ref(&snapshot_id),
        &opts.sharing,
    )?;
    if !opts.sharing.is_empty() {
        events(Event::Shared(&image_id));
    }
    let mut copies = Vec::new();
    for region in &opts.copy_to {
        check()?;
        let client = Client::new(&config.for_region(region));
        let req = CopyImageRequest {
            name: spec.name.clone(),
            description: spec.description.clone(),
            source_image_id: image_id.clone(),
            source_region: config.region.clone(),
            client_token: Some(format!("{}-copy-{region}", opts.run_id)),
            tag_specifications: tag_specs(&["image", "snapshot"], incomplete),
            ..Default::default()
        };
        let copy_id = ec2::call(&client, &req)?
            .image_id
            .ok_or_else(|| Error::Malformed {
                service: "ec2",
                action: "CopyImage".into(),
                detail: "no imageId".into(),
            })?;
        events(Event::Copying(region, &copy_id));
        created
            .copies
            .push((client.clone(), copy_id.clone(), Vec::new()));
        copies.push(RegionCopy {
            region: region.clone(),
            image_id: copy_id,
        });
    }
    for (i, copy) in copies.iter().enumerate() {
        let client = created.copies[i].0.clone();
        let image = wait_available(&client, &copy.image_id, cancel)?;
        let snaps: Vec<String> = image.snapshot_ids().iter().map(|s| s.to_string()).collect();
        created.copies[i].2 = snaps.clone();
        share(&client, &copy.image_id, &snaps, &opts.sharing)?;
        events(Event::Copied(&copy.region, &copy.image_id));
    }
    check()?;
    // Done: what was created is no longer incomplete.
    let untag = |client: &Client, ids: Vec<String>| {
        ec2::call(
            client,
            &DeleteTagsRequest {
                resources: ids,
                tags: vec![Tag {
                    key: Some(INCOMPLETE_TAG.into()),
                    value: None,
                }],
                dry_run: None,
            },
        )
    };
    untag(home, vec![image_id.clone(), snapshot_id.clone()])?;
    for (client, id, snaps) in &created.copies {
        let mut ids = vec![id.clone()];
        ids.extend(snaps.iter().cloned());
        untag(client, ids)?;
    }
    Ok(Published {
        name: spec.name.clone(),
        region: config.region.clone(),
        image_id,
        snapshot_id: Some(snapshot_id),
        reused: false,
        upload: match report {
            Upload::Ebs(r) => Some(r.clone()),
            Upload::ViaS3(_) => None,
        },
        via_s3: match report {
            Upload::ViaS3(r) => Some(r.clone()),
            Upload::Ebs(_) => None,
        },
        copies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ImageSpec {
        ImageSpec {
            name: "node-1.2".into(),
            description: None,
            architecture: "x86_64".into(),
            boot_mode: Some("uefi".into()),
            ena: true,
            sriov: false,
            tpm: true,
            imds_v2: true,
            volume_type: "gp3".into(),
            volume_size_gib: Some(8),
            tags: vec![("team".into(), "infra".into())],
        }
    }

    #[test]
    fn names_are_checked_as_aws_does() {
        assert!(check_name("node (v1.2) [x86_64]").is_ok());
        assert!(check_name("ab").is_err());
        assert!(check_name("bad*name").is_err());
        assert!(check_name(&"a".repeat(129)).is_err());
    }

    #[test]
    fn settings_aws_refuses_are_refused_before_any_upload() {
        assert!(spec().check().is_ok());
        let mut s = spec();
        s.boot_mode = Some("legacy-bios".into());
        assert!(s.check().unwrap_err().to_string().contains("--tpm"));
        s.tpm = false;
        s.architecture = "arm64".into();
        assert!(s.check().is_err());
        let mut s = spec();
        s.volume_type = "fast".into();
        assert!(s.check().is_err());
    }

    #[test]
    fn register_request_carries_every_setting() {
        let tags = vec![(INCOMPLETE_TAG.to_string(), "true".to_string())];
        let r = spec().register_request("snap-1", 2, &tags);
        let form = ec2::form_encode(&ec2::encode_request(&r));
        for want in [
            "Action=RegisterImage",
            "Architecture=x86_64",
            "BootMode=uefi",
            "EnaSupport=true",
            "TpmSupport=v2.0",
            "ImdsSupport=v2.0",
            "RootDeviceName=%2Fdev%2Fxvda",
            "VirtualizationType=hvm",
            "BlockDeviceMapping.1.DeviceName=%2Fdev%2Fxvda",
            "BlockDeviceMapping.1.Ebs.SnapshotId=snap-1",
            "BlockDeviceMapping.1.Ebs.VolumeSize=8",
            "BlockDeviceMapping.1.Ebs.VolumeType=gp3",
            "BlockDeviceMapping.1.Ebs.DeleteOnTermination=true",
            "TagSpecification.1.ResourceType=image",
            "TagSpecification.1.Tag.1.Key=stamp%3Aincomplete",
        ] {
            assert!(form.contains(want), "{want} not in {form}");
        }
        assert!(!form.contains("SriovNetSupport"));
        // A volume smaller than the snapshot is raised to the snapshot's size.
        let r = spec().register_request("snap-1", 20, &[]);
        assert_eq!(
            r.block_device_mappings[0].ebs.as_ref().unwrap().volume_size,
            Some(20)
        );
    }
}
