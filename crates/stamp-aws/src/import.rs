//! The S3 path of `stamp push --via s3://BUCKET/PREFIX`, for accounts where EBS direct is not
//! allowed: the disk goes up as one S3 object (a streamOptimized VMDK made on the fly, or the
//! raw bytes) by multipart upload, then EC2 ImportSnapshot turns it into a snapshot.
//!
//! [`import_snapshot`] starts the import task and polls DescribeImportSnapshotTasks until it is
//! `completed`; [`push_via_s3`] does the whole path and leaves nothing behind: the object is
//! deleted afterwards whatever happened, and on any error or cancellation the multipart upload
//! is aborted and the import task cancelled; [`Error::Aborted`] says what was removed.
//!
//! No temporary file: a producer thread reads the [`DiskReader`] (allocated ranges only) and
//! writes the object's bytes into a bounded pipe; this thread feeds them to a
//! [`MultipartWriter`], which uploads parts in the background.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use stamp_disk::DiskReader;

use crate::ec2::{
    self, CancelImportTaskRequest, DescribeImportSnapshotTasksRequest, ImportSnapshotRequest,
    SnapshotDiskContainer, Tag, TagSpecification, UserBucket,
};
use crate::http::Client;
use crate::s3::{self, MultipartOptions, MultipartWriter, ObjectInfo, PartProgress};
use crate::{Error, Result};

/// First wait between two DescribeImportSnapshotTasks by default; doubles up to
/// [`MAX_POLL_INTERVAL`].
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait between two polls.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(15);
/// Longest wait for an import task by default (AWS takes minutes to hours for big disks).
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(6 * 60 * 60);
/// Polls in a row that may not find the task (it can take a moment to appear) before giving up.
const NOT_FOUND_POLLS: u32 = 5;
/// Writes queued between the producer and the uploader (each at most a VMDK writer's batch of
/// ~16 MiB, or [`stamp_disk::convert::CHUNK`] of raw bytes).
const PIPE_DEPTH: usize = 2;

/// The disk formats ImportSnapshot takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum ImportFormat {
    /// A VMDK (stamp writes streamOptimized).
    #[default]
    Vmdk,
    /// Raw bytes.
    Raw,
    /// A VHD (stamp does not stream it; [`import_snapshot`] only).
    Vhd,
}

impl ImportFormat {
    /// The name ImportSnapshot wants: `VMDK`, `RAW`, `VHD`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImportFormat::Vmdk => "VMDK",
            ImportFormat::Raw => "RAW",
            ImportFormat::Vhd => "VHD",
        }
    }

    /// The file extension of the object.
    pub fn extension(self) -> &'static str {
        match self {
            ImportFormat::Vmdk => "vmdk",
            ImportFormat::Raw => "raw",
            ImportFormat::Vhd => "vhd",
        }
    }
}

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportSpec {
    /// The bucket holding the disk.
    pub bucket: String,
    /// Its key.
    pub key: String,
    /// Its format.
    pub format: ImportFormat,
    /// The task's and the snapshot's description. By default, none.
    pub description: Option<String>,
    /// Tags on the import task (key, value). By default, none.
    pub tags: Vec<(String, String)>,
    /// The IAM role EC2 reads the bucket with. By default, AWS's `vmimport`.
    pub role_name: Option<String>,
    /// Idempotency token. By default, a fresh one.
    pub client_token: Option<String>,
    /// First wait between polls. By default, [`POLL_INTERVAL`].
    pub poll_interval: Duration,
    /// Longest wait for the task. By default, [`IMPORT_TIMEOUT`].
    pub timeout: Duration,
}

impl Default for ImportSpec {
    fn default() -> Self {
        ImportSpec {
            bucket: String::new(),
            key: String::new(),
            format: ImportFormat::default(),
            description: None,
            tags: Vec::new(),
            role_name: None,
            client_token: None,
            poll_interval: POLL_INTERVAL,
            timeout: IMPORT_TIMEOUT,
        }
    }
}

/// A completed import.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Imported {
    /// `import-snap-...`.
    pub task_id: String,
    /// The snapshot it made.
    pub snapshot_id: String,
}

/// An import task's state as DescribeImportSnapshotTasks reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportStatus {
    /// The task.
    pub task_id: String,
    /// `active`, `completed`, `deleting`, `deleted`.
    pub status: String,
    /// Percent done, as AWS gives it (a string), while active.
    pub progress: Option<String>,
    /// AWS's status message (`pending`, `converting`, or what failed).
    pub message: Option<String>,
}

/// Checks an id from a response before it goes into requests and messages.
fn check_id(id: &str, prefix: &str, action: &str) -> Result<()> {
    if id.starts_with(prefix)
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        Ok(())
    } else {
        Err(Error::Malformed {
            service: "ec2",
            action: action.to_string(),
            detail: format!("'{id:.80}' is not an id ({prefix}...)"),
        })
    }
}

/// ImportSnapshot of `spec`'s object; returns the task id.
pub fn start_import(client: &Client, spec: &ImportSpec) -> Result<String> {
    const ACTION: &str = "ImportSnapshot";
    s3::check_bucket_name(&spec.bucket).map_err(Error::Config)?;
    if spec.key.is_empty() || spec.key.len() > s3::MAX_KEY_LEN {
        return Err(Error::Config(format!(
            "ImportSnapshot needs an S3 key of 1 to {} bytes",
            s3::MAX_KEY_LEN
        )));
    }
    let tags: Vec<Tag> = spec.tags.iter().map(|(k, v)| Tag::new(k, v)).collect();
    let req = ImportSnapshotRequest {
        client_token: Some(
            spec.client_token
                .clone()
                .unwrap_or_else(|| format!("stamp-{}", crate::fresh_id())),
        ),
        description: spec.description.clone(),
        disk_container: Some(SnapshotDiskContainer {
            description: spec.description.clone(),
            format: Some(spec.format.as_str().to_string()),
            url: None,
            user_bucket: Some(UserBucket {
                s3_bucket: Some(spec.bucket.clone()),
                s3_key: Some(spec.key.clone()),
            }),
        }),
        role_name: spec.role_name.clone(),
        tag_specifications: if tags.is_empty() {
            Vec::new()
        } else {
            vec![TagSpecification::new("import-snapshot-task", tags)]
        },
        ..Default::default()
    };
    let out = ec2::call(client, &req)?;
    let id = out.import_task_id.unwrap_or_default();
    check_id(&id, "import-", ACTION)?;
    tracing::info!(
        task_id = id,
        bucket = spec.bucket,
        key = spec.key,
        "started import task"
    );
    Ok(id)
}

/// CancelImportTask.
pub fn cancel_import_task(client: &Client, task_id: &str) -> Result<()> {
    ec2::call(
        client,
        &CancelImportTaskRequest {
            cancel_reason: Some("stamp push stopped".into()),
            import_task_id: Some(task_id.to_string()),
            ..Default::default()
        },
    )?;
    Ok(())
}

/// DescribeImportSnapshotTasks of one task; `None` if the answer does not list it.
pub fn describe_import(client: &Client, task_id: &str) -> Result<Option<ImportStatus>> {
    let out = ec2::call(
        client,
        &DescribeImportSnapshotTasksRequest {
            import_task_ids: vec![task_id.to_string()],
            ..Default::default()
        },
    )?;
    Ok(out
        .import_snapshot_tasks
        .into_iter()
        .find(|t| t.import_task_id.as_deref() == Some(task_id))
        .map(|t| {
            let d = t.snapshot_task_detail.unwrap_or_default();
            ImportStatus {
                task_id: task_id.to_string(),
                status: d.status.unwrap_or_default(),
                progress: d.progress,
                message: d.status_message,
            }
        })
        .map(|mut s| {
            s.status = s.status.to_ascii_lowercase();
            s
        }))
}

/// The snapshot id of a completed task (a second call: the status above drops it).
fn completed_snapshot(client: &Client, task_id: &str) -> Result<String> {
    const ACTION: &str = "DescribeImportSnapshotTasks";
    let out = ec2::call(
        client,
        &DescribeImportSnapshotTasksRequest {
            import_task_ids: vec![task_id.to_string()],
            ..Default::default()
        },
    )?;
    let id = out
        .import_snapshot_tasks
        .into_iter()
        .find(|t| t.import_task_id.as_deref() == Some(task_id))
        .and_then(|t| t.snapshot_task_detail)
        .and_then(|d| d.snapshot_id)
        .unwrap_or_default();
    check_id(&id, "snap-", ACTION)?;
    Ok(id)
}

/// Returns true if and only if an import status message says the task failed.
fn is_failure_message(m: &str) -> bool {
    let m = m.to_ascii_lowercase();
    m.contains("error") || m.contains("fail")
}

/// Why waiting ended without a snapshot.
struct WaitFailure {
    error: Error,
    /// The task is still alive and should be cancelled.
    alive: bool,
}

/// Polls `task_id` until it completes; see [`import_snapshot`].
fn wait_import(
    client: &Client,
    task_id: &str,
    spec: &ImportSpec,
    progress: &dyn Fn(&ImportStatus),
    cancel: &AtomicBool,
) -> std::result::Result<String, WaitFailure> {
    let alive = |error| WaitFailure { error, alive: true };
    let start = Instant::now();
    let mut delay = spec.poll_interval.max(Duration::from_millis(10));
    let mut missing = 0;
    let mut last = ImportStatus::default();
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(alive(Error::Interrupted));
        }
        let described = match describe_import(client, task_id) {
            // A task can be unknown for a moment after ImportSnapshot.
            Err(Error::Api { code, .. })
                if code.starts_with("InvalidConversionTaskId") && missing < NOT_FOUND_POLLS =>
            {
                None
            }
            r => r.map_err(alive)?,
        };
        match described {
            None => {
                missing += 1;
                if missing > NOT_FOUND_POLLS {
                    return Err(WaitFailure {
                        error: Error::Api {
                            service: "ec2",
                            action: format!("DescribeImportSnapshotTasks {task_id}"),
                            code: "NotFound".into(),
                            message: format!("the import task {task_id} is not listed"),
                        },
                        alive: false,
                    });
                }
            }
            Some(st) => {
                missing = 0;
                if st != last {
                    progress(&st);
                    last = st.clone();
                }
                let message = st.message.clone().unwrap_or_default();
                match st.status.as_str() {
                    "completed" => {
                        return completed_snapshot(client, task_id).map_err(alive);
                    }
                    "deleted" | "deleting" => {
                        return Err(WaitFailure {
                            error: Error::Api {
                                service: "ec2",
                                action: format!("ImportSnapshot {task_id}"),
                                code: "ImportTaskDeleted".into(),
                                message: if message.is_empty() {
                                    format!("the import task is {}", st.status)
                                } else {
                                    format!("{message} (task {})", st.status)
                                },
                            },
                            alive: false,
                        });
                    }
                    _ if is_failure_message(&message) => {
                        return Err(alive(Error::Api {
                            service: "ec2",
                            action: format!("ImportSnapshot {task_id}"),
                            code: "ImportTaskFailed".into(),
                            message: format!("{message} (task {})", st.status),
                        }));
                    }
                    _ => {}
                }
            }
        }
        if start.elapsed() > spec.timeout {
            return Err(alive(Error::Transport(format!(
                "import task {task_id} still {} ({}% {}) after {} s",
                last.status,
                last.progress.as_deref().unwrap_or("?"),
                last.message.as_deref().unwrap_or(""),
                spec.timeout.as_secs()
            ))));
        }
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if cancel.load(Ordering::Relaxed) {
                return Err(alive(Error::Interrupted));
            }
            std::thread::sleep(Duration::from_millis(50).min(delay));
        }
        delay = (delay * 2).min(MAX_POLL_INTERVAL);
    }
}

/// What cancelling `task_id` did, for [`Error::Aborted`]'s clean-up text.
fn cancel_for_cleanup(client: &Client, task_id: &str) -> String {
    match cancel_import_task(client, task_id) {
        Ok(()) => format!("cancelled import task {task_id}"),
        Err(e) => format!("could not cancel import task {task_id}: {e}"),
    }
}

/// Imports `spec`'s object as a snapshot: ImportSnapshot, then DescribeImportSnapshotTasks
/// every [`ImportSpec::poll_interval`] (doubling to [`MAX_POLL_INTERVAL`]) until `completed`,
/// calling `progress` when the status changes. A task that ends `deleted`/`deleting` or
/// reports a failure is an [`Error::Api`] naming the task with AWS's message. On cancel,
/// timeout or an error while the task lives, the task is cancelled (CancelImportTask) and the
/// error is [`Error::Aborted`].
pub fn import_snapshot(
    client: &Client,
    spec: &ImportSpec,
    progress: &(dyn Fn(&ImportStatus) + Sync),
    cancel: &AtomicBool,
) -> Result<Imported> {
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    let task_id = start_import(client, spec)?;
    match wait_import(client, &task_id, spec, progress, cancel) {
        Ok(snapshot_id) => Ok(Imported {
            task_id,
            snapshot_id,
        }),
        Err(WaitFailure { error, alive: true }) => Err(Error::Aborted {
            cause: Box::new(error),
            cleanup: cancel_for_cleanup(client, &task_id),
        }),
        Err(WaitFailure { error, .. }) => Err(error),
    }
}

/// How to push through S3.
#[derive(Debug, Clone)]
pub struct ViaS3Options {
    /// The import task's description. By default, none.
    pub description: Option<String>,
    /// Tags on the import task. By default, none.
    pub tags: Vec<(String, String)>,
    /// The IAM role for ImportSnapshot. By default, AWS's `vmimport`.
    pub role_name: Option<String>,
    /// Names the object `stamp-RUN_ID.vmdk`. By default, a fresh id.
    pub run_id: Option<String>,
    /// Upload part size and parallelism (the size hint is computed).
    pub multipart: MultipartOptions,
    /// First wait between import polls. By default, [`POLL_INTERVAL`].
    pub poll_interval: Duration,
    /// Longest wait for the import. By default, [`IMPORT_TIMEOUT`].
    pub timeout: Duration,
}

impl Default for ViaS3Options {
    fn default() -> Self {
        ViaS3Options {
            description: None,
            tags: Vec::new(),
            role_name: None,
            run_id: None,
            multipart: MultipartOptions::default(),
            poll_interval: POLL_INTERVAL,
            timeout: IMPORT_TIMEOUT,
        }
    }
}

/// Progress of [`push_via_s3`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViaS3Progress {
    /// Reading the disk and uploading the object.
    Upload(UploadProgress),
    /// Waiting for the import task.
    Import(ImportStatus),
}

/// Counters of the upload stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadProgress {
    /// Bytes of the disk's allocated ranges read so far.
    pub source_read: u64,
    /// Bytes of the disk's allocated ranges.
    pub source_total: u64,
    /// Bytes of the object produced so far.
    pub object_bytes: u64,
    /// Bytes of the object S3 has acknowledged.
    pub bytes_uploaded: u64,
}

/// What [`push_via_s3`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ViaS3Report {
    /// The import task.
    pub task_id: String,
    /// The snapshot it made.
    pub snapshot_id: String,
    /// The bucket.
    pub bucket: String,
    /// The object's key (deleted by now unless `cleanup_warning` says otherwise).
    pub object_key: String,
    /// The object's format.
    pub format: ImportFormat,
    /// The object's size: bytes uploaded.
    pub bytes_uploaded: u64,
    /// Set when the object could not be deleted after the import.
    pub cleanup_warning: Option<String>,
}

/// Counts what the producer read and tells it when to stop.
struct SourceProgress<'a> {
    total: AtomicU64,
    done: AtomicU64,
    cancel: &'a AtomicBool,
}

impl stamp_disk::Progress for SourceProgress<'_> {
    fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }
    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// A sink that sends each write down a bounded channel to the uploading thread (the VMDK
/// stream writer wants an owned sink).
struct PipeWriter(SyncSender<Vec<u8>>);

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send(buf.to_vec()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped")
        })?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes the disk as a streamOptimized VMDK into `sink`; returns the object's size.
fn produce_vmdk(
    reader: &dyn DiskReader,
    name: &str,
    sink: PipeWriter,
    progress: &SourceProgress,
) -> stamp_disk::Result<u64> {
    let mut w = stamp_disk::vmdk::create_stream(
        Box::new(sink),
        name,
        reader.virtual_size(),
        &stamp_disk::CreateOptions::default(),
    )?;
    stamp_disk::convert::for_each_extent(reader, progress, &mut |e| w.write_extent(e))?;
    if stamp_disk::Progress::cancelled(progress) {
        return Err(stamp_disk::Error::Interrupted);
    }
    Ok(w.finish()?.file_size)
}

/// Writes the disk's raw bytes into `sink`: allocated ranges read, the rest as zeros.
fn produce_raw(
    reader: &dyn DiskReader,
    name: &str,
    mut sink: PipeWriter,
    progress: &SourceProgress,
) -> stamp_disk::Result<u64> {
    use stamp_disk::Progress as _;
    const CHUNK: u64 = stamp_disk::convert::CHUNK;
    let size = reader.virtual_size();
    let ranges = stamp_disk::convert::clip_ranges(
        stamp_disk::convert::merge_ranges(reader.allocation()?),
        size,
    );
    progress.start(stamp_disk::convert::ranges_len(&ranges));
    let zeros = vec![0u8; CHUNK as usize];
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0u64;
    let mut put = |data: &[u8]| {
        sink.write_all(data)
            .map_err(|e| stamp_disk::Error::io("write", name, e))
    };
    for r in ranges.iter().cloned().chain(std::iter::once(size..size)) {
        while pos < r.start {
            if progress.cancelled() {
                return Err(stamp_disk::Error::Interrupted);
            }
            let n = (r.start - pos).min(CHUNK) as usize;
            put(&zeros[..n])?;
            pos += n as u64;
        }
        while pos < r.end {
            if progress.cancelled() {
                return Err(stamp_disk::Error::Interrupted);
            }
            let n = (r.end - pos).min(CHUNK) as usize;
            reader.read_at(&mut buf[..n], pos)?;
            put(&buf[..n])?;
            progress.advance(n as u64);
            pos += n as u64;
        }
    }
    Ok(size)
}

/// An upper bound of the object's size, for the part size: a streamOptimized VMDK of
/// incompressible data is the data plus a marker and padding per 64 KiB grain (under 1%),
/// tables (under 0.01%) and the header.
fn size_hint(virtual_size: u64, format: ImportFormat) -> u64 {
    match format {
        ImportFormat::Raw => virtual_size,
        _ => virtual_size
            .saturating_add(virtual_size / 64)
            .saturating_add(16 << 20),
    }
}

fn disk_error(e: stamp_disk::Error) -> Error {
    match e {
        stamp_disk::Error::Interrupted => Error::Interrupted,
        e => Error::Disk(e),
    }
}

/// Streams the disk into the multipart upload; on success the object exists.
fn upload_stream(
    reader: &dyn DiskReader,
    format: ImportFormat,
    name: &str,
    mp: &mut MultipartWriter,
    src: &SourceProgress,
    report: &dyn Fn(&MultipartWriter),
) -> Result<()> {
    let (tx, rx): (SyncSender<Vec<u8>>, Receiver<Vec<u8>>) = sync_channel(PIPE_DEPTH);
    let (uploaded, produced) = std::thread::scope(|s| {
        let producer = s.spawn(move || {
            let sink = PipeWriter(tx);
            match format {
                ImportFormat::Raw => produce_raw(reader, name, sink, src),
                _ => produce_vmdk(reader, name, sink, src),
            }
        });
        let mut uploaded = Ok(());
        while let Ok(chunk) = rx.recv() {
            if let Err(e) = mp.write_bytes(&chunk) {
                uploaded = Err(e);
                break;
            }
            report(mp);
        }
        // A closed pipe stops the producer at its next write.
        drop(rx);
        let produced = producer.join().unwrap_or_else(|_| {
            Err(stamp_disk::Error::InvalidOption(
                "the disk reading thread panicked".into(),
            ))
        });
        (uploaded, produced)
    });
    // The uploader's error explains a producer's broken pipe.
    uploaded?;
    produced.map_err(disk_error)?;
    Ok(())
}

/// Pushes `reader`'s disk through S3: uploads it to `s3_url` (`s3://BUCKET/PREFIX`) as
/// `PREFIX/stamp-RUN_ID.vmdk` (a streamOptimized VMDK made on the fly) or `.raw`, imports it
/// with [`import_snapshot`] and deletes the object. On any error or cancellation it aborts the
/// multipart upload, cancels the import task and deletes the object, and returns
/// [`Error::Aborted`] saying what it removed. `format` is [`ImportFormat::Vmdk`] or
/// [`ImportFormat::Raw`].
pub fn push_via_s3(
    client: &Client,
    reader: &dyn DiskReader,
    s3_url: &str,
    format: ImportFormat,
    opts: &ViaS3Options,
    progress: &(dyn Fn(&ViaS3Progress) + Sync),
    cancel: &AtomicBool,
) -> Result<ViaS3Report> {
    let (bucket, prefix) = s3::parse_s3_url(s3_url)?;
    if format == ImportFormat::Vhd {
        return Err(Error::Config(
            "stamp pushes through S3 as VMDK or RAW, not VHD".into(),
        ));
    }
    let run_id = opts.run_id.clone().unwrap_or_else(crate::fresh_id);
    let name = format!("stamp-{run_id}.{}", format.extension());
    let key = s3::object_key(&prefix, &name);
    let src = SourceProgress {
        total: AtomicU64::new(0),
        done: AtomicU64::new(0),
        cancel,
    };
    let upload_progress = |p: &PartProgress| {
        progress(&ViaS3Progress::Upload(UploadProgress {
            source_read: src.done.load(Ordering::Relaxed),
            source_total: src.total.load(Ordering::Relaxed),
            object_bytes: p.bytes_written,
            bytes_uploaded: p.bytes_uploaded,
        }))
    };
    let mut mopts = opts.multipart.clone();
    mopts.size_hint = Some(size_hint(reader.virtual_size(), format));
    let mut mp = MultipartWriter::create(client, &bucket, &key, &mopts, &upload_progress, cancel)?;
    let upload_id = mp.upload_id().to_string();
    let report = |mp: &MultipartWriter| {
        upload_progress(&PartProgress {
            bytes_written: mp.bytes_written(),
            bytes_uploaded: mp.bytes_uploaded(),
            parts_uploaded: 0,
        })
    };
    if let Err(cause) = upload_stream(reader, format, &name, &mut mp, &src, &report) {
        let cleanup = match mp.abort() {
            Ok(()) => format!("aborted multipart upload {upload_id} of s3://{bucket}/{key}"),
            Err(e) => {
                format!("could not abort multipart upload {upload_id} of s3://{bucket}/{key}: {e}")
            }
        };
        return Err(Error::Aborted {
            cause: Box::new(cause),
            cleanup,
        });
    }
    // finish() cleans up after itself on failure (Error::Aborted).
    let object: ObjectInfo = mp.finish()?;
    upload_progress(&PartProgress {
        bytes_written: object.size,
        bytes_uploaded: object.size,
        parts_uploaded: 0,
    });

    let spec = ImportSpec {
        bucket: bucket.clone(),
        key: key.clone(),
        format,
        description: opts.description.clone(),
        tags: opts.tags.clone(),
        role_name: opts.role_name.clone(),
        client_token: Some(format!("stamp-{run_id}")),
        poll_interval: opts.poll_interval,
        timeout: opts.timeout,
    };
    let delete = || match s3::delete_object(client, &bucket, &key) {
        Ok(()) => Ok(format!("deleted s3://{bucket}/{key}")),
        Err(e) => Err(format!("could not delete s3://{bucket}/{key}: {e}")),
    };
    let import_progress = |st: &ImportStatus| progress(&ViaS3Progress::Import(st.clone()));
    let imported = if cancel.load(Ordering::Relaxed) {
        Err((Error::Interrupted, None))
    } else {
        match start_import(client, &spec) {
            Err(e) => Err((e, None)),
            Ok(task_id) => match wait_import(client, &task_id, &spec, &import_progress, cancel) {
                Ok(snapshot_id) => Ok(Imported {
                    task_id,
                    snapshot_id,
                }),
                Err(WaitFailure { error, alive }) => Err((error, alive.then_some(task_id))),
            },
        }
    };
    match imported {
        Ok(imported) => {
            let cleanup_warning = delete().err();
            if let Some(w) = &cleanup_warning {
                tracing::warn!("{w}");
            }
            Ok(ViaS3Report {
                task_id: imported.task_id,
                snapshot_id: imported.snapshot_id,
                bucket,
                object_key: key,
                format,
                bytes_uploaded: object.size,
                cleanup_warning,
            })
        }
        Err((cause, live_task)) => {
            let mut done = Vec::new();
            if let Some(task_id) = live_task {
                done.push(cancel_for_cleanup(client, &task_id));
            }
            done.push(delete().unwrap_or_else(|e| e));
            Err(Error::Aborted {
                cause: Box::new(cause),
                cleanup: done.join(", "),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_name_themselves_as_import_snapshot_wants() {
        assert_eq!(ImportFormat::Vmdk.as_str(), "VMDK");
        assert_eq!(ImportFormat::Raw.as_str(), "RAW");
        assert_eq!(ImportFormat::Vhd.as_str(), "VHD");
        assert_eq!(ImportFormat::Raw.extension(), "raw");
    }

    #[test]
    fn failure_messages_are_recognised() {
        assert!(is_failure_message(
            "ClientError: Disk validation failed [Unsupported VMDK File Format]"
        ));
        assert!(is_failure_message("ServerError: internal"));
        for ok in [
            "pending",
            "validating",
            "validated",
            "converting",
            "downloading/converting",
            "",
        ] {
            assert!(!is_failure_message(ok), "{ok}");
        }
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("import-snap-0123abcd", "import-", "x").is_ok());
        assert!(check_id("snap-01", "snap-", "x").is_ok());
        assert!(check_id("import-snap-<x>", "import-", "x").is_err());
        assert!(check_id("", "snap-", "x").is_err());
    }

    #[test]
    fn size_hints_bound_the_object() {
        assert_eq!(size_hint(1 << 30, ImportFormat::Raw), 1 << 30);
        let v = size_hint(1 << 30, ImportFormat::Vmdk);
        // A grain record is at most 64 KiB + 12 bytes of marker + deflate's stored-block
        // overhead, padded to a sector: 65536 + 1024 per grain.
        assert!(v >= (1u64 << 30) / 65536 * (65536 + 1024));
    }
}
