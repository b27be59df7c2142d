//! One handler per EC2 action: check the parameters as AWS does, act on the store for the
//! caller's tenant, answer with AWS's response type.

use stamp_aws::ec2::{
    self, CancelConversionTaskResult, CancelExportTaskResult, CancelImportTaskResult,
    CreateInstanceExportTaskResult, CreateTagsResult, DeleteTagsResult, DeregisterImageResult,
    DescribeConversionTasksResult, DescribeExportImageTasksResult, DescribeExportTasksResult,
    DescribeImagesResult, DescribeImportImageTasksResult, DescribeImportSnapshotTasksResult,
    Ec2Response, ExportImageResult, Filter, ImportImageResult, ImportInstanceResult,
    ImportSnapshotResult, ImportVolumeResult, Request, TagSpecification,
};

use super::views;
use super::{Failure, Service};
use crate::db::{Page, TaskQuery};
use crate::task::{NewTask, Task, TaskKind, TaskState, now_millis};

/// Largest MaxResults accepted (AWS's limit for these calls).
const MAX_RESULTS: i64 = 1000;
/// Most ids in one Describe call.
const MAX_IDS: usize = 1000;
/// Disk formats accepted for imports.
const IMPORT_FORMATS: &[&str] = &["VMDK", "VHD", "VHDX", "RAW", "OVA", "QCOW2"];
/// Disk formats accepted for exports.
const EXPORT_FORMATS: &[&str] = &["VMDK", "VHD", "RAW", "OVA", "QCOW2"];

type Answer = Result<String, Failure>;

fn xml<R: Ec2Response>(r: &R, request_id: &str) -> Answer {
    Ok(ec2::write_response(r, request_id))
}

/// Handles `req` for `tenant`.
pub fn dispatch(svc: &Service, tenant: &str, req: Request, id: &str) -> Answer {
    match req {
        Request::ImportSnapshot(r) => {
            dry_run(r.dry_run)?;
            let disk = r
                .disk_container
                .as_ref()
                .ok_or_else(|| Failure::missing("DiskContainer"))?;
            check_format(disk.format.as_deref(), IMPORT_FORMATS)?;
            check_source(disk.url.as_deref(), disk.user_bucket.as_ref())?;
            let t = create(
                svc,
                tenant,
                TaskKind::ImportSnapshot,
                Request::ImportSnapshot(r.clone()),
                r.client_token.clone(),
                r.description.clone(),
                &r.tag_specifications,
                "import-snapshot-task",
            )?;
            let v = views::import_snapshot_task(&t);
            xml(
                &ImportSnapshotResult {
                    description: v.description,
                    import_task_id: v.import_task_id,
                    snapshot_task_detail: v.snapshot_task_detail,
                    tags: v.tags,
                },
                id,
            )
        }
        Request::ImportImage(r) => {
            dry_run(r.dry_run)?;
            if r.disk_containers.is_empty() {
                return Err(Failure::missing("DiskContainer"));
            }
            if r.disk_containers.len() > 21 {
                return Err(Failure::invalid("at most 21 disk containers"));
            }
            for d in &r.disk_containers {
                check_format(d.format.as_deref(), IMPORT_FORMATS)?;
                check_source(d.url.as_deref(), d.user_bucket.as_ref())?;
            }
            if let Some(a) = r.architecture.as_deref()
                && !matches!(a, "x86_64" | "i386" | "arm64")
            {
                return Err(Failure::invalid(format!(
                    "Value ({a:.64}) for parameter Architecture is invalid"
                )));
            }
            let t = create(
                svc,
                tenant,
                TaskKind::ImportImage,
                Request::ImportImage(r.clone()),
                r.client_token.clone(),
                r.description.clone(),
                &r.tag_specifications,
                "import-image-task",
            )?;
            let v = views::import_image_task(&t);
            xml(
                &ImportImageResult {
                    architecture: v.architecture,
                    description: v.description,
                    encrypted: v.encrypted,
                    hypervisor: v.hypervisor,
                    import_task_id: v.import_task_id,
                    license_type: v.license_type,
                    platform: v.platform,
                    progress: v.progress,
                    snapshot_details: v.snapshot_details,
                    status: v.status,
                    status_message: v.status_message,
                    tags: v.tags,
                    ..Default::default()
                },
                id,
            )
        }
        Request::DescribeImportSnapshotTasks(r) => {
            dry_run(r.dry_run)?;
            let page = list(
                svc,
                tenant,
                TaskKind::ImportSnapshot,
                &r.import_task_ids,
                &r.filters,
                r.max_results,
                r.next_token.clone(),
            )?;
            xml(
                &DescribeImportSnapshotTasksResult {
                    import_snapshot_tasks: page
                        .items
                        .iter()
                        .map(views::import_snapshot_task)
                        .collect(),
                    next_token: page.next_token,
                },
                id,
            )
        }
        Request::DescribeImportImageTasks(r) => {
            dry_run(r.dry_run)?;
            let page = list(
                svc,
                tenant,
                TaskKind::ImportImage,
                &r.import_task_ids,
                &r.filters,
                r.max_results,
                r.next_token.clone(),
            )?;
            xml(
                &DescribeImportImageTasksResult {
                    import_image_tasks: page.items.iter().map(views::import_image_task).collect(),
                    next_token: page.next_token,
                },
                id,
            )
        }
        Request::CancelImportTask(r) => {
            dry_run(r.dry_run)?;
            let task_id = r
                .import_task_id
                .clone()
                .ok_or_else(|| Failure::missing("ImportTaskId"))?;
            let (before, after) = cancel(
                svc,
                tenant,
                &task_id,
                &[TaskKind::ImportImage, TaskKind::ImportSnapshot],
                r.cancel_reason
                    .as_deref()
                    .unwrap_or("cancelled by the user"),
                "InvalidConversionTaskId.Malformed",
            )?;
            xml(
                &CancelImportTaskResult {
                    import_task_id: Some(task_id),
                    previous_state: Some(before.state.aws_word(before.kind).into()),
                    state: Some(after.state.aws_word(after.kind).into()),
                },
                id,
            )
        }
        Request::ImportVolume(r) => {
            dry_run(r.dry_run)?;
            check_format(Some(&r.image.format), IMPORT_FORMATS)?;
            check_url(&r.image.import_manifest_url, "Image.ImportManifestUrl")?;
            if r.image.bytes <= 0 || r.volume.size <= 0 {
                return Err(Failure::invalid(
                    "Image.Bytes and Volume.Size must be positive",
                ));
            }
            let t = create(
                svc,
                tenant,
                TaskKind::ImportVolume,
                Request::ImportVolume(r.clone()),
                None,
                r.description.clone(),
                &[],
                "",
            )?;
            xml(
                &ImportVolumeResult {
                    conversion_task: Some(views::conversion_task(&t)),
                },
                id,
            )
        }
        Request::ImportInstance(r) => {
            dry_run(r.dry_run)?;
            if r.disk_images.is_empty() {
                return Err(Failure::missing("DiskImage"));
            }
            for d in &r.disk_images {
                let image = d
                    .image
                    .as_ref()
                    .ok_or_else(|| Failure::missing("DiskImage.Image"))?;
                check_format(Some(&image.format), IMPORT_FORMATS)?;
                check_url(
                    &image.import_manifest_url,
                    "DiskImage.Image.ImportManifestUrl",
                )?;
            }
            let t = create(
                svc,
                tenant,
                TaskKind::ImportInstance,
                Request::ImportInstance(r.clone()),
                None,
                r.description.clone(),
                &[],
                "",
            )?;
            xml(
                &ImportInstanceResult {
                    conversion_task: Some(views::conversion_task(&t)),
                },
                id,
            )
        }
        Request::DescribeConversionTasks(r) => {
            dry_run(r.dry_run)?;
            if r.conversion_task_ids.len() > MAX_IDS {
                return Err(Failure::invalid(format!("at most {MAX_IDS} task ids")));
            }
            // Both kinds in one query: an ImportVolume id is not missing because it is not an
            // ImportInstance task (the missing ones are reported below).
            let mut tasks = svc
                .store
                .tasks(
                    tenant,
                    &TaskQuery {
                        kinds: vec![TaskKind::ImportVolume, TaskKind::ImportInstance],
                        ids: r.conversion_task_ids.clone(),
                        max_results: None,
                        next_token: None,
                    },
                )?
                .items;
            tasks.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            if let Some(missing) = r
                .conversion_task_ids
                .iter()
                .find(|id| !tasks.iter().any(|t| &t.id == *id))
            {
                return Err(Failure::client(
                    "InvalidConversionTaskId.NotFound",
                    format!("The conversion task ID '{missing:.64}' does not exist"),
                ));
            }
            xml(
                &DescribeConversionTasksResult {
                    conversion_tasks: tasks.iter().map(views::conversion_task).collect(),
                },
                id,
            )
        }
        Request::CancelConversionTask(r) => {
            dry_run(r.dry_run)?;
            cancel(
                svc,
                tenant,
                &r.conversion_task_id,
                &[TaskKind::ImportVolume, TaskKind::ImportInstance],
                r.reason_message
                    .as_deref()
                    .unwrap_or("cancelled by the user"),
                "InvalidConversionTaskId",
            )?;
            xml(&CancelConversionTaskResult::default(), id)
        }
        Request::ExportImage(r) => {
            dry_run(r.dry_run)?;
            check_format(Some(&r.disk_image_format), EXPORT_FORMATS)?;
            check_bucket(&r.s3_export_location.s3_bucket)?;
            if svc.store.image(tenant, &r.image_id)?.is_none() {
                return Err(Failure::client(
                    "InvalidAMIID.NotFound",
                    format!("The image id '[{:.64}]' does not exist", r.image_id),
                ));
            }
            let t = create(
                svc,
                tenant,
                TaskKind::ExportImage,
                Request::ExportImage(r.clone()),
                r.client_token.clone(),
                r.description.clone(),
                &r.tag_specifications,
                "export-image-task",
            )?;
            let v = views::export_image_task(&t);
            xml(
                &ExportImageResult {
                    description: v.description,
                    disk_image_format: Some(r.disk_image_format.to_ascii_uppercase()),
                    export_image_task_id: v.export_image_task_id,
                    image_id: v.image_id,
                    role_name: r.role_name.clone(),
                    progress: v.progress,
                    s3_export_location: v.s3_export_location,
                    status: v.status,
                    status_message: v.status_message,
                    tags: v.tags,
                },
                id,
            )
        }
        Request::DescribeExportImageTasks(r) => {
            dry_run(r.dry_run)?;
            let page = list(
                svc,
                tenant,
                TaskKind::ExportImage,
                &r.export_image_task_ids,
                &r.filters,
                r.max_results,
                r.next_token.clone(),
            )?;
            xml(
                &DescribeExportImageTasksResult {
                    export_image_tasks: page.items.iter().map(views::export_image_task).collect(),
                    next_token: page.next_token,
                },
                id,
            )
        }
        Request::CreateInstanceExportTask(r) => {
            let s3 = &r.export_to_s3_task;
            check_format(s3.disk_image_format.as_deref(), EXPORT_FORMATS)?;
            check_bucket(s3.s3_bucket.as_deref().unwrap_or(""))?;
            if !matches!(
                r.target_environment.as_str(),
                "citrix" | "vmware" | "microsoft"
            ) {
                return Err(Failure::invalid(format!(
                    "Value ({:.64}) for parameter TargetEnvironment is invalid",
                    r.target_environment
                )));
            }
            let t = create(
                svc,
                tenant,
                TaskKind::ExportInstance,
                Request::CreateInstanceExportTask(r.clone()),
                None,
                r.description.clone(),
                &r.tag_specifications,
                "export-instance-task",
            )?;
            xml(
                &CreateInstanceExportTaskResult {
                    export_task: Some(views::export_task(&t)),
                },
                id,
            )
        }
        Request::DescribeExportTasks(r) => {
            let page = list(
                svc,
                tenant,
                TaskKind::ExportInstance,
                &r.export_task_ids,
                &r.filters,
                None,
                None,
            )?;
            xml(
                &DescribeExportTasksResult {
                    export_tasks: page.items.iter().map(views::export_task).collect(),
                },
                id,
            )
        }
        Request::CancelExportTask(r) => {
            cancel(
                svc,
                tenant,
                &r.export_task_id,
                &[TaskKind::ExportInstance, TaskKind::ExportImage],
                "cancelled by the user",
                "InvalidExportTaskID",
            )?;
            xml(&CancelExportTaskResult::default(), id)
        }
        Request::DescribeImages(r) => {
            dry_run(r.dry_run)?;
            if r.image_ids.len() > MAX_IDS {
                return Err(Failure::invalid(format!("at most {MAX_IDS} image ids")));
            }
            // Images owned by someone else are never listed: only "self" (or this tenant's
            // id) matches an Owner filter.
            if !r.owners.is_empty() && !r.owners.iter().any(|o| o == "self" || o == tenant) {
                return xml(&DescribeImagesResult::default(), id);
            }
            let max = max_results(r.max_results)?;
            let page = svc
                .store
                .images(tenant, &r.image_ids, max, r.next_token.as_deref())?;
            if let Some(missing) = r
                .image_ids
                .iter()
                .find(|i| !page.items.iter().any(|x| &x.id == *i))
                && r.next_token.is_none()
                && max.is_none()
            {
                return Err(Failure::client(
                    "InvalidAMIID.NotFound",
                    format!("The image id '[{missing:.64}]' does not exist"),
                ));
            }
            let mut images = Vec::new();
            for i in page.items.iter().filter(|i| matches_image(i, &r.filters)) {
                let sizes: Vec<Option<u64>> = i
                    .snapshot_ids
                    .iter()
                    .map(|s| Ok(svc.store.snapshot(tenant, s)?.map(|x| x.size)))
                    .collect::<Result<_, crate::Error>>()?;
                images.push(views::image(i, tenant, &sizes));
            }
            xml(
                &DescribeImagesResult {
                    images,
                    next_token: page.next_token,
                },
                id,
            )
        }
        Request::DeregisterImage(r) => {
            dry_run(r.dry_run)?;
            if !svc.store.delete_image(tenant, &r.image_id)? {
                return Err(Failure::client(
                    "InvalidAMIID.NotFound",
                    format!("The image id '[{:.64}]' does not exist", r.image_id),
                ));
            }
            xml(
                &DeregisterImageResult {
                    return_: Some(true),
                    ..Default::default()
                },
                id,
            )
        }
        Request::CreateTags(r) => {
            dry_run(r.dry_run)?;
            let tags = tag_pairs(&r.tags)?;
            for res in &r.resources {
                if !svc.store.set_tags(tenant, res, &tags)? {
                    return Err(not_found(res));
                }
            }
            xml(
                &CreateTagsResult {
                    return_: Some(true),
                },
                id,
            )
        }
        Request::DeleteTags(r) => {
            dry_run(r.dry_run)?;
            let tags: Vec<(String, Option<String>)> = r
                .tags
                .iter()
                .filter_map(|t| Some((t.key.clone()?, t.value.clone())))
                .collect();
            for res in &r.resources {
                if !svc.store.delete_tags(tenant, res, &tags)? {
                    return Err(not_found(res));
                }
            }
            xml(
                &DeleteTagsResult {
                    return_: Some(true),
                },
                id,
            )
        }
        other => Err(Failure::client(
            "InvalidAction",
            format!(
                "The action {} is not valid for this web service.",
                other.action()
            ),
        )),
    }
}

/// The `*.NotFound` error for a resource id, by its prefix.
fn not_found(id: &str) -> Failure {
    let code = if id.starts_with("ami-") {
        "InvalidAMIID.NotFound"
    } else if id.starts_with("snap-") {
        "InvalidSnapshot.NotFound"
    } else if id.starts_with("import-") || id.starts_with("export-") {
        "InvalidConversionTaskId.NotFound"
    } else {
        "InvalidID"
    };
    Failure::client(code, format!("The ID '{id:.64}' does not exist"))
}

fn dry_run(flag: Option<bool>) -> Result<(), Failure> {
    if flag == Some(true) {
        return Err(Failure {
            status: 412,
            error: ec2::ApiError::new(
                "DryRunOperation",
                "Request would have succeeded, but DryRun flag is set.",
            ),
        });
    }
    Ok(())
}

fn check_format(format: Option<&str>, allowed: &[&str]) -> Result<(), Failure> {
    match format {
        None => Ok(()),
        Some(f) if allowed.iter().any(|a| a.eq_ignore_ascii_case(f)) => Ok(()),
        Some(f) => Err(Failure::invalid(format!(
            "Value ({f:.64}) for parameter Format is invalid. Supported formats: {}",
            allowed.join(", ")
        ))),
    }
}

/// S3's bucket naming rules, checked when the task is made (the object store refuses such a
/// name later anyway, which would end the task with a ServerError).
fn check_bucket(b: &str) -> Result<(), Failure> {
    stamp_aws::s3::check_bucket_name(b).map_err(|why| {
        Failure::invalid(format!(
            "Value ({:.64}) for parameter S3Bucket is invalid: {why:.200}",
            b
        ))
    })
}

fn check_url(url: &str, name: &str) -> Result<(), Failure> {
    if url.starts_with("https://") || url.starts_with("http://") || url.starts_with("s3://") {
        Ok(())
    } else {
        Err(Failure::invalid(format!(
            "Value ({url:.100}) for parameter {name} is invalid: an https://, http:// or s3:// URL is expected"
        )))
    }
}

fn check_source(url: Option<&str>, bucket: Option<&ec2::UserBucket>) -> Result<(), Failure> {
    match (url, bucket) {
        (Some(_), Some(_)) => Err(Failure::invalid(
            "give either DiskContainer.Url or DiskContainer.UserBucket, not both",
        )),
        (Some(u), None) if u.starts_with("stamp://") && u.len() > 8 && u.len() <= 512 => Ok(()),
        (Some(u), None) => check_url(u, "DiskContainer.Url"),
        (None, Some(b)) => {
            check_bucket(b.s3_bucket.as_deref().unwrap_or(""))?;
            match b.s3_key.as_deref() {
                Some(k) if !k.is_empty() && k.len() <= 1024 => Ok(()),
                _ => Err(Failure::missing("DiskContainer.UserBucket.S3Key")),
            }
        }
        (None, None) => Err(Failure::missing("DiskContainer.UserBucket")),
    }
}

fn max_results(m: Option<i64>) -> Result<Option<usize>, Failure> {
    match m {
        None => Ok(None),
        Some(n) if (1..=MAX_RESULTS).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(Failure::invalid(format!(
            "Value ({n}) for parameter MaxResults is invalid: it must be between 1 and {MAX_RESULTS}"
        ))),
    }
}

fn tag_pairs(tags: &[ec2::Tag]) -> Result<Vec<(String, String)>, Failure> {
    if tags.len() > 50 {
        return Err(Failure::invalid("at most 50 tags"));
    }
    tags.iter()
        .map(|t| match &t.key {
            Some(k) if !k.is_empty() && k.len() <= 128 => {
                Ok((k.clone(), t.value.clone().unwrap_or_default()))
            }
            _ => Err(Failure::invalid("a tag key must have 1 to 128 characters")),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn create(
    svc: &Service,
    tenant: &str,
    kind: TaskKind,
    req: Request,
    client_token: Option<String>,
    description: Option<String>,
    specs: &[TagSpecification],
    resource_type: &str,
) -> Result<Task, Failure> {
    let mut tags = Vec::new();
    for s in specs {
        if s.resource_type
            .as_deref()
            .is_some_and(|r| r != resource_type)
        {
            return Err(Failure::invalid(format!(
                "TagSpecification.ResourceType must be {resource_type}"
            )));
        }
        tags.extend(tag_pairs(&s.tags)?);
    }
    let t = svc.store.create_task(
        &NewTask {
            id: kind.new_id(),
            tenant: tenant.to_string(),
            kind,
            request: req.encode(),
            client_token,
            description,
            tags,
        },
        now_millis(),
    )?;
    tracing::info!(task = %t.id, "created");
    (svc.notify)();
    Ok(t)
}

/// Whether a task passes the Describe call's filters (`task-state`, `tag:KEY`, `tag-key`).
fn matches_task(t: &Task, filters: &[Filter]) -> bool {
    filters.iter().all(|f| {
        let name = f.name.as_deref().unwrap_or("");
        let any = |v: &str| f.values.iter().any(|x| x == v);
        match name {
            "task-state" => any(t.state.aws_word(t.kind)),
            "tag-key" => t.tags.iter().any(|(k, _)| any(k)),
            n => match n.strip_prefix("tag:") {
                Some(key) => t.tags.iter().any(|(k, v)| k == key && any(v)),
                None => true,
            },
        }
    })
}

/// Whether an image passes DescribeImages filters (`name`, `state`, `architecture`,
/// `image-id`, `tag:KEY`, `tag-key`; `*` and `?` wildcards in values).
fn matches_image(i: &crate::task::ImageRecord, filters: &[Filter]) -> bool {
    filters.iter().all(|f| {
        let any = |v: &str| f.values.iter().any(|p| wildcard(p, v));
        match f.name.as_deref().unwrap_or("") {
            "name" => any(&i.name),
            "state" => any(&i.state),
            "architecture" => any(&i.architecture),
            "image-id" => any(&i.id),
            "tag-key" => i.tags.iter().any(|(k, _)| any(k)),
            n => match n.strip_prefix("tag:") {
                Some(key) => i.tags.iter().any(|(k, v)| k == key && any(v)),
                None => true,
            },
        }
    })
}

/// `*` (any run) and `?` (one character) matching, as EC2 filters do.
fn wildcard(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn list(
    svc: &Service,
    tenant: &str,
    kind: TaskKind,
    ids: &[String],
    filters: &[Filter],
    max: Option<i64>,
    next_token: Option<String>,
) -> Result<Page<Task>, Failure> {
    if ids.len() > MAX_IDS {
        return Err(Failure::invalid(format!("at most {MAX_IDS} task ids")));
    }
    let max_results = max_results(max)?;
    let mut page = svc.store.tasks(
        tenant,
        &TaskQuery {
            kinds: vec![kind],
            ids: ids.to_vec(),
            max_results,
            next_token,
        },
    )?;
    if let Some(missing) = ids
        .iter()
        .find(|id| !page.items.iter().any(|t| &t.id == *id))
        && max_results.is_none()
    {
        return Err(Failure::client(
            "InvalidConversionTaskId.NotFound",
            format!("The import task ID '{missing:.64}' does not exist"),
        ));
    }
    page.items.retain(|t| matches_task(t, filters));
    Ok(page)
}

/// Cancels the tenant's task `task_id` of one of `kinds`; returns it before and after.
fn cancel(
    svc: &Service,
    tenant: &str,
    task_id: &str,
    kinds: &[TaskKind],
    reason: &str,
    code: &str,
) -> Result<(Task, Task), Failure> {
    let not_found = || {
        Failure::client(
            &format!("{code}.NotFound"),
            format!("The task ID '{task_id:.64}' does not exist"),
        )
    };
    let before = svc
        .store
        .task(tenant, task_id)?
        .filter(|t| kinds.contains(&t.kind))
        .ok_or_else(not_found)?;
    if !views::cancellable(before.state) {
        return Err(Failure::client(
            "IncorrectState",
            format!(
                "The task {task_id} is {} and cannot be cancelled",
                before.state.aws_word(before.kind)
            ),
        ));
    }
    let after = svc
        .store
        .cancel(tenant, task_id, reason, now_millis())?
        .ok_or_else(not_found)?;
    debug_assert!(after.state != TaskState::Active);
    tracing::info!(task = task_id, "cancel requested: {reason}");
    (svc.notify)();
    Ok((before, after))
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn wildcards() {
        assert!(wildcard("node-*", "node-1.2"));
        assert!(wildcard("n?de", "node"));
        assert!(wildcard("*", ""));
        assert!(!wildcard("node", "node-1"));
        assert!(wildcard("*-1*", "node-1.2"));
    }
}
