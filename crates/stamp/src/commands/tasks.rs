//! `stamp tasks list|show|cancel`: the VM import/export tasks of a `stamp serve` (or of AWS),
//! through the EC2 Query API with our own client.

use anyhow::{Context, Result, bail};
use stamp_aws::ec2::{
    self, CancelConversionRequest, CancelExportTaskRequest, CancelImportTaskRequest,
    DescribeConversionTasksRequest, DescribeExportImageTasksRequest, DescribeExportTasksRequest,
    DescribeImportImageTasksRequest, DescribeImportSnapshotTasksRequest,
};
use stamp_aws::http::Client;

use super::aws::client;
use super::print_json;
use crate::cli::{TasksArgs, TasksCommand};

/// One task as `stamp tasks` shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Row {
    id: String,
    kind: &'static str,
    status: String,
    progress: Option<String>,
    status_message: Option<String>,
    description: Option<String>,
    /// What it made or where it writes: snapshot, image, volume or S3 location.
    output: Option<String>,
}

/// Every page of a Describe call that pages with NextToken.
fn pages<T>(
    mut call: impl FnMut(Option<String>) -> Result<(Vec<T>, Option<String>)>,
) -> Result<Vec<T>> {
    let mut all = Vec::new();
    let mut token = None;
    for _ in 0..10_000 {
        let (items, next) = call(token.take())?;
        all.extend(items);
        match next {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(all),
        }
    }
    bail!("the server kept answering with a NextToken (10000 pages)")
}

/// Every task of every kind (or only `id`'s kind and id).
fn rows(c: &Client, id: Option<&str>) -> Result<Vec<Row>> {
    let ids = |p: &str| -> Option<Vec<String>> {
        match id {
            None => Some(Vec::new()),
            Some(i) if i.starts_with(p) => Some(vec![i.to_string()]),
            Some(_) => None,
        }
    };
    let mut rows = Vec::new();
    if let Some(ids) = ids("import-snap-") {
        let tasks = pages(|next_token| {
            let r = ec2::call(
                c,
                &DescribeImportSnapshotTasksRequest {
                    import_task_ids: ids.clone(),
                    next_token,
                    ..Default::default()
                },
            )?;
            Ok((r.import_snapshot_tasks, r.next_token))
        })?;
        rows.extend(tasks.into_iter().map(|t| {
            let d = t.snapshot_task_detail.unwrap_or_default();
            Row {
                id: t.import_task_id.unwrap_or_default(),
                kind: "import-snapshot",
                status: d.status.unwrap_or_default(),
                progress: d.progress,
                status_message: d.status_message,
                description: t.description,
                output: d.snapshot_id,
            }
        }));
    }
    if let Some(ids) = ids("import-ami-") {
        let tasks = pages(|next_token| {
            let r = ec2::call(
                c,
                &DescribeImportImageTasksRequest {
                    import_task_ids: ids.clone(),
                    next_token,
                    ..Default::default()
                },
            )?;
            Ok((r.import_image_tasks, r.next_token))
        })?;
        rows.extend(tasks.into_iter().map(|t| Row {
            id: t.import_task_id.unwrap_or_default(),
            kind: "import-image",
            status: t.status.unwrap_or_default(),
            progress: t.progress,
            status_message: t.status_message,
            description: t.description,
            output: t.image_id,
        }));
    }
    let conversion = match id {
        None => Some(Vec::new()),
        Some(i) if i.starts_with("import-vol-") || i.starts_with("import-i-") => {
            Some(vec![i.to_string()])
        }
        Some(_) => None,
    };
    if let Some(ids) = conversion {
        let r = ec2::call(
            c,
            &DescribeConversionTasksRequest {
                conversion_task_ids: ids,
                dry_run: None,
            },
        )?;
        rows.extend(r.conversion_tasks.into_iter().map(|t| {
            let (kind, output) = match (&t.import_volume, &t.import_instance) {
                (Some(v), _) => (
                    "import-volume",
                    v.volume.as_ref().and_then(|v| v.id.clone()),
                ),
                (None, Some(i)) => ("import-instance", i.instance_id.clone()),
                (None, None) => ("conversion", None),
            };
            Row {
                id: t.conversion_task_id.unwrap_or_default(),
                kind,
                status: t.state.unwrap_or_default(),
                progress: None,
                status_message: t.status_message,
                description: None,
                output,
            }
        }));
    }
    if let Some(ids) = ids("export-ami-") {
        let tasks = pages(|next_token| {
            let r = ec2::call(
                c,
                &DescribeExportImageTasksRequest {
                    export_image_task_ids: ids.clone(),
                    next_token,
                    ..Default::default()
                },
            )?;
            Ok((r.export_image_tasks, r.next_token))
        })?;
        rows.extend(tasks.into_iter().map(|t| Row {
            id: t.export_image_task_id.unwrap_or_default(),
            kind: "export-image",
            status: t.status.unwrap_or_default(),
            progress: t.progress,
            status_message: t.status_message,
            description: t.description,
            output: t.s3_export_location.map(|l| {
                format!(
                    "s3://{}/{}",
                    l.s3_bucket.unwrap_or_default(),
                    l.s3_prefix.unwrap_or_default()
                )
            }),
        }));
    }
    if let Some(ids) = ids("export-i-") {
        let r = ec2::call(
            c,
            &DescribeExportTasksRequest {
                export_task_ids: ids,
                filters: Vec::new(),
            },
        )?;
        rows.extend(r.export_tasks.into_iter().map(|t| Row {
            id: t.export_task_id.unwrap_or_default(),
            kind: "export-instance",
            status: t.state.unwrap_or_default(),
            progress: None,
            status_message: t.status_message,
            description: t.description,
            output: t.export_to_s3_task.map(|s| {
                format!(
                    "s3://{}/{}",
                    s.s3_bucket.unwrap_or_default(),
                    s.s3_key.unwrap_or_default()
                )
            }),
        }));
    }
    Ok(rows)
}

pub fn run(a: TasksArgs) -> Result<u8> {
    let c = client(&a.aws, None)?;
    match a.command {
        TasksCommand::List { json } => {
            let rows = rows(&c, None).context("cannot list the tasks")?;
            if json {
                #[derive(serde::Serialize)]
                struct Listing {
                    tasks: Vec<Row>,
                }
                print_json(&Listing { tasks: rows })?;
                return Ok(0);
            }
            println!(
                "{:<30} {:<16} {:<11} {:>4} {:<24} MESSAGE",
                "TASK ID", "KIND", "STATUS", "%", "OUTPUT"
            );
            for r in rows {
                println!(
                    "{:<30} {:<16} {:<11} {:>4} {:<24} {}",
                    r.id,
                    r.kind,
                    r.status,
                    r.progress.unwrap_or_default(),
                    r.output.unwrap_or_default(),
                    r.status_message.unwrap_or_default()
                );
            }
            Ok(0)
        }
        TasksCommand::Show { id, json } => {
            let row = rows(&c, Some(&id))
                .with_context(|| format!("cannot find {id}"))?
                .into_iter()
                .find(|r| r.id == id);
            let Some(row) = row else {
                bail!("no task {id}; `stamp tasks list` shows them");
            };
            if json {
                print_json(&row)?;
            } else {
                println!("Task:        {}", row.id);
                println!("Kind:        {}", row.kind);
                println!("Status:      {}", row.status);
                for (k, v) in [
                    ("Progress:   ", row.progress.map(|p| format!("{p}%"))),
                    ("Message:    ", row.status_message),
                    ("Description:", row.description),
                    ("Output:     ", row.output),
                ] {
                    if let Some(v) = v {
                        println!("{k} {v}");
                    }
                }
            }
            Ok(0)
        }
        TasksCommand::Cancel { id, reason } => {
            if id.starts_with("import-snap-") || id.starts_with("import-ami-") {
                ec2::call(
                    &c,
                    &CancelImportTaskRequest {
                        import_task_id: Some(id.clone()),
                        cancel_reason: reason,
                        dry_run: None,
                    },
                )?;
            } else if id.starts_with("import-vol-") || id.starts_with("import-i-") {
                ec2::call(
                    &c,
                    &CancelConversionRequest {
                        conversion_task_id: id.clone(),
                        reason_message: reason,
                        dry_run: None,
                    },
                )?;
            } else if id.starts_with("export-") {
                ec2::call(
                    &c,
                    &CancelExportTaskRequest {
                        export_task_id: id.clone(),
                    },
                )?;
            } else {
                bail!(
                    "'{id}' is not a task id (import-ami-…, import-snap-…, import-vol-…, import-i-…, export-ami-…, export-i-…)"
                );
            }
            println!("Cancelling {id}");
            Ok(0)
        }
    }
}
