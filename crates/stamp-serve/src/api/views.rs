//! Stored records as the EC2 API shows them: tasks as ImportSnapshotTask, ImportImageTask,
//! ConversionTask, ExportImageTask, ExportTask; images as Image.
//!
//! What a task produced is its `result` JSON, written by the task runner:
//! - ImportSnapshot: `{"snapshot_id", "disk_image_size", "format"}`
//! - ImportImage: `{"image_id", "architecture", "platform", "boot_mode", "snapshots": [{"snapshot_id",
//!   "disk_image_size", "format", "device_name"}]}`
//! - ImportVolume / ImportInstance: `{"volumes": [{"volume_id", "size_gib", "bytes"}], "instance_id"}`
//! - exports: `{"s3_key"}`

use serde_json::Value;
use stamp_aws::ec2::{
    self, BlockDeviceMapping, ConversionTask, CreateInstanceExportTaskRequest,
    DiskImageDescription, DiskImageVolumeDescription, EbsBlockDevice, Ec2Request,
    ExportImageRequest, ExportImageTask, ExportTask, ExportTaskS3Location, ExportToS3Task, Image,
    ImportImageRequest, ImportImageTask, ImportInstanceRequest, ImportInstanceTaskDetails,
    ImportInstanceVolumeDetailItem, ImportSnapshotRequest, ImportSnapshotTask, ImportVolumeRequest,
    ImportVolumeTaskDetails, InstanceExportDetails, SnapshotDetail, SnapshotTaskDetail, Tag,
    UserBucketDetails,
};

use crate::task::{ImageRecord, Millis, Task, TaskState};

/// The stored request of `task` decoded as `R` (it was valid when the task was made).
pub fn request_of<R: Ec2Request + Default>(task: &Task) -> R {
    ec2::decode_request::<R>(&task.request).unwrap_or_default()
}

/// Tags as the API writes them.
pub fn tags(t: &[(String, String)]) -> Vec<Tag> {
    t.iter()
        .map(|(k, v)| Tag {
            key: Some(k.clone()),
            value: Some(v.clone()),
        })
        .collect()
}

/// Milliseconds since the epoch as ISO 8601 (`2026-12-07T01:02:03.045Z`), as EC2 writes times.
pub fn iso8601(ms: Millis) -> String {
    let secs = stamp_fs::Timestamp::from_secs(ms.div_euclid(1000)).to_rfc3339();
    let whole = secs.strip_suffix('Z').unwrap_or(&secs);
    format!("{whole}.{:03}Z", ms.rem_euclid(1000))
}

fn status(t: &Task) -> String {
    t.state.aws_word(t.kind).to_string()
}

/// The percentage AWS shows while a task runs (none once it ended).
fn progress(t: &Task) -> Option<String> {
    (!t.state.is_final()).then(|| t.progress.to_string())
}

fn result_str(t: &Task, key: &str) -> Option<String> {
    t.result.as_ref()?.get(key)?.as_str().map(String::from)
}

fn num(v: &Value, key: &str) -> Option<i64> {
    v.get(key)?.as_i64()
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)?.as_str().map(String::from)
}

/// An ImportSnapshot task.
pub fn import_snapshot_task(t: &Task) -> ImportSnapshotTask {
    let req: ImportSnapshotRequest = request_of(t);
    let disk = req.disk_container.unwrap_or_default();
    let result = t.result.clone().unwrap_or(Value::Null);
    ImportSnapshotTask {
        description: t.description.clone(),
        import_task_id: Some(t.id.clone()),
        snapshot_task_detail: Some(SnapshotTaskDetail {
            description: disk.description.or_else(|| t.description.clone()),
            disk_image_size: num(&result, "disk_image_size").map(|n| format!("{}.0", n)),
            encrypted: Some(false),
            format: text(&result, "format").or(disk.format.map(|f| f.to_ascii_uppercase())),
            progress: progress(t),
            snapshot_id: text(&result, "snapshot_id"),
            status: Some(status(t)),
            status_message: t.status_message.clone(),
            url: disk.url,
            user_bucket: disk.user_bucket.map(|b| UserBucketDetails {
                s3_bucket: b.s3_bucket,
                s3_key: b.s3_key,
            }),
            kms_key_id: None,
        }),
        tags: tags(&t.tags),
    }
}

/// An ImportImage task.
pub fn import_image_task(t: &Task) -> ImportImageTask {
    let req: ImportImageRequest = request_of(t);
    let result = t.result.clone().unwrap_or(Value::Null);
    let produced = result.get("snapshots").and_then(|s| s.as_array());
    let snapshot_details = req
        .disk_containers
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let made = produced
                .and_then(|p| p.get(i))
                .cloned()
                .unwrap_or(Value::Null);
            SnapshotDetail {
                description: d.description.clone(),
                device_name: text(&made, "device_name").or(d.device_name.clone()),
                disk_image_size: num(&made, "disk_image_size").map(|n| format!("{n}.0")),
                format: text(&made, "format").or(d.format.clone().map(|f| f.to_ascii_uppercase())),
                progress: None,
                snapshot_id: text(&made, "snapshot_id"),
                status: Some(
                    if made.is_null() {
                        "active"
                    } else {
                        "completed"
                    }
                    .into(),
                ),
                status_message: None,
                url: d.url.clone(),
                user_bucket: d.user_bucket.clone().map(|b| UserBucketDetails {
                    s3_bucket: b.s3_bucket,
                    s3_key: b.s3_key,
                }),
            }
        })
        .collect();
    ImportImageTask {
        architecture: text(&result, "architecture").or(req.architecture),
        description: t.description.clone(),
        encrypted: Some(false),
        hypervisor: req.hypervisor,
        image_id: text(&result, "image_id"),
        import_task_id: Some(t.id.clone()),
        license_type: req.license_type.or(Some("BYOL".into())),
        platform: text(&result, "platform").or(req.platform),
        progress: progress(t),
        snapshot_details,
        status: Some(status(t)),
        status_message: t.status_message.clone(),
        tags: tags(&t.tags),
        boot_mode: text(&result, "boot_mode").or(req.boot_mode),
        ..Default::default()
    }
}

/// A conversion task (ImportVolume or ImportInstance).
pub fn conversion_task(t: &Task) -> ConversionTask {
    let result = t.result.clone().unwrap_or(Value::Null);
    let volumes = result
        .get("volumes")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    let volume = |i: usize| {
        volumes.get(i).map(|v| DiskImageVolumeDescription {
            id: text(v, "volume_id"),
            size: num(v, "size_gib"),
        })
    };
    let expiration = Some(iso8601(t.created_at + 7 * 24 * 3600 * 1000));
    let mut c = ConversionTask {
        conversion_task_id: Some(t.id.clone()),
        expiration_time: expiration,
        state: Some(status(t)),
        status_message: t.status_message.clone(),
        tags: tags(&t.tags),
        ..Default::default()
    };
    if t.kind == crate::task::TaskKind::ImportVolume {
        let req: ImportVolumeRequest = request_of(t);
        c.import_volume = Some(ImportVolumeTaskDetails {
            availability_zone: req.availability_zone,
            bytes_converted: Some(t.bytes_converted as i64),
            description: req.description,
            image: Some(DiskImageDescription {
                format: Some(req.image.format.clone()),
                import_manifest_url: Some(req.image.import_manifest_url.clone()),
                size: Some(req.image.bytes),
                checksum: None,
            }),
            volume: volume(0).or(Some(DiskImageVolumeDescription {
                id: None,
                size: Some(req.volume.size),
            })),
            availability_zone_id: None,
        });
    } else {
        let req: ImportInstanceRequest = request_of(t);
        c.import_instance = Some(ImportInstanceTaskDetails {
            description: req.description,
            instance_id: text(&result, "instance_id"),
            platform: Some(req.platform.clone()),
            volumes: req
                .disk_images
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let image = d.image.clone().unwrap_or_default();
                    ImportInstanceVolumeDetailItem {
                        bytes_converted: Some(
                            volumes.get(i).and_then(|v| num(v, "bytes")).unwrap_or(0),
                        ),
                        description: d.description.clone(),
                        image: Some(DiskImageDescription {
                            format: Some(image.format),
                            import_manifest_url: Some(image.import_manifest_url),
                            size: Some(image.bytes),
                            checksum: None,
                        }),
                        status: Some(status(t)),
                        status_message: t.status_message.clone(),
                        volume: volume(i).or(d.volume.as_ref().map(|v| {
                            DiskImageVolumeDescription {
                                id: None,
                                size: Some(v.size),
                            }
                        })),
                        ..Default::default()
                    }
                })
                .collect(),
        });
    }
    c
}

/// An ExportImage task.
pub fn export_image_task(t: &Task) -> ExportImageTask {
    let req: ExportImageRequest = request_of(t);
    ExportImageTask {
        description: t.description.clone(),
        export_image_task_id: Some(t.id.clone()),
        image_id: Some(req.image_id),
        progress: progress(t),
        s3_export_location: Some(ExportTaskS3Location {
            s3_bucket: Some(req.s3_export_location.s3_bucket),
            s3_prefix: req.s3_export_location.s3_prefix,
        }),
        status: Some(status(t)),
        status_message: t.status_message.clone(),
        tags: tags(&t.tags),
    }
}

/// A CreateInstanceExportTask task.
pub fn export_task(t: &Task) -> ExportTask {
    let req: CreateInstanceExportTaskRequest = request_of(t);
    let s3 = req.export_to_s3_task;
    ExportTask {
        description: t.description.clone(),
        export_task_id: Some(t.id.clone()),
        export_to_s3_task: Some(ExportToS3Task {
            container_format: s3.container_format,
            disk_image_format: s3.disk_image_format,
            s3_bucket: s3.s3_bucket,
            s3_key: result_str(t, "s3_key"),
        }),
        instance_export_details: Some(InstanceExportDetails {
            instance_id: Some(req.instance_id),
            target_environment: Some(req.target_environment),
        }),
        state: Some(status(t)),
        status_message: t.status_message.clone(),
        tags: tags(&t.tags),
    }
}

/// An image, with its snapshots as block device mappings.
pub fn image(i: &ImageRecord, owner: &str, sizes: &[Option<u64>]) -> Image {
    let mappings = i
        .snapshot_ids
        .iter()
        .enumerate()
        .map(|(n, s)| BlockDeviceMapping {
            device_name: Some(if n == 0 {
                "/dev/sda1".into()
            } else {
                format!("/dev/sd{}", (b'a' + n as u8 % 26) as char)
            }),
            ebs: Some(EbsBlockDevice {
                snapshot_id: Some(s.clone()),
                volume_size: sizes
                    .get(n)
                    .copied()
                    .flatten()
                    .map(|b| b.div_ceil(1 << 30) as i64),
                delete_on_termination: Some(true),
                volume_type: Some("gp3".into()),
                encrypted: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    Image {
        image_id: Some(i.id.clone()),
        name: Some(i.name.clone()),
        description: i.description.clone(),
        architecture: Some(i.architecture.clone()),
        boot_mode: i.boot_mode.clone(),
        platform: i
            .platform
            .as_deref()
            .filter(|p| p.eq_ignore_ascii_case("windows"))
            .map(|_| "windows".to_string()),
        platform_details: Some(i.platform.clone().unwrap_or_else(|| "Linux/UNIX".into())),
        state: Some(i.state.clone()),
        owner_id: Some(owner.to_string()),
        creation_date: Some(iso8601(i.created_at)),
        public: Some(false),
        image_type: Some("machine".into()),
        root_device_type: Some("ebs".into()),
        root_device_name: Some("/dev/sda1".into()),
        virtualization_type: Some("hvm".into()),
        hypervisor: Some("xen".into()),
        block_device_mappings: mappings,
        tags: tags(&i.tags),
        ..Default::default()
    }
}

/// Whether `state` may still be cancelled.
pub fn cancellable(state: TaskState) -> bool {
    state == TaskState::Active
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_aws_does() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_796_605_323_045), "2026-12-07T01:02:03.045Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
