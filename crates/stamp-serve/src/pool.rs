//! The worker pool: threads that claim tasks from the store, keep their lease alive with
//! heartbeats (which also carry progress and checkpoints), run them ([`crate::worker`]) and
//! record how they ended. A task whose lease lapses (its process died) is claimed again by any
//! process and resumes from its checkpoint; a task cancelled through the API is stopped at the
//! next heartbeat.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use stamp_aws::ec2::{
    CreateInstanceExportTaskRequest, ExportImageRequest, ImportImageRequest, ImportInstanceRequest,
    ImportSnapshotRequest, ImportVolumeRequest,
};

use crate::api::request_of;
use crate::db::{TaskEnd, TaskStore, TaskUpdate};
use crate::objects::ObjectStore;
use crate::task::{ImageRecord, Task, TaskKind, TaskState, now_millis};
use crate::worker::scratch::Scratch;
use crate::worker::{
    self, DiskInput, DiskSource, Env, ExportFormat, ExportTarget, Limits, Storage, TaskRef,
};
use crate::{Error, Result};

/// Attempts of a task that keeps failing for reasons that may pass (I/O, network).
const MAX_ATTEMPTS: u32 = 3;

/// How the pool runs.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Worker threads (concurrent tasks).
    pub workers: usize,
    /// How long a claim lasts without a heartbeat.
    pub lease: Duration,
    /// How often a running task renews its lease.
    pub heartbeat: Duration,
    /// How long an idle worker sleeps before it looks for work again (it is also woken when
    /// the API creates a task).
    pub idle: Duration,
    /// This process's name in leases (unique across processes).
    pub owner: String,
    /// The scratch directory.
    pub scratch_dir: PathBuf,
    /// Size and URL limits.
    pub limits: Limits,
    /// CPU threads one conversion may use for compression and decompression (0: all cores).
    pub threads: usize,
    /// The stamp image store whose disk images `Url = stamp://NAME` imports (none: refused).
    pub store: Option<PathBuf>,
}

/// What the pool shares between its threads (and with `/metrics`).
pub struct Pool {
    store: Arc<dyn TaskStore>,
    objects: Arc<dyn ObjectStore>,
    storage: Storage,
    /// The scratch quota.
    pub scratch: Arc<Scratch>,
    config: PoolConfig,
    wake: (Mutex<u64>, Condvar),
    stop: AtomicBool,
    /// Bytes converted by finished tasks of this process.
    pub bytes_converted: AtomicU64,
}

impl Pool {
    /// A pool over `store`, reading sources from `objects` and keeping snapshots in `storage`.
    pub fn new(
        store: Arc<dyn TaskStore>,
        objects: Arc<dyn ObjectStore>,
        storage: Storage,
        scratch: Arc<Scratch>,
        config: PoolConfig,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            store,
            objects,
            storage,
            scratch,
            config,
            wake: (Mutex::new(0), Condvar::new()),
            stop: AtomicBool::new(false),
            bytes_converted: AtomicU64::new(0),
        })
    }

    /// Wakes idle workers (a task was created or cancelled).
    pub fn notify(&self) {
        if let Ok(mut n) = self.wake.0.lock() {
            *n += 1;
        }
        self.wake.1.notify_all();
    }

    /// Asks the workers to stop after their current step.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Starts the worker threads. If one cannot start, those started are stopped and the
    /// error says why.
    pub fn start(self: &Arc<Self>) -> Result<Vec<std::thread::JoinHandle<()>>> {
        let mut handles = Vec::new();
        for i in 0..self.config.workers.max(1) {
            let pool = self.clone();
            match std::thread::Builder::new()
                .name(format!("stamp-worker-{i}"))
                .spawn(move || pool.work())
            {
                Ok(h) => handles.push(h),
                Err(e) => {
                    self.shutdown();
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(Error::Config(format!(
                        "cannot start worker thread {i}: {e}"
                    )));
                }
            }
        }
        Ok(handles)
    }

    fn idle(&self) {
        let Ok(n) = self.wake.0.lock() else { return };
        let seen = *n;
        let _ = self.wake.1.wait_timeout_while(n, self.config.idle, |n| {
            *n == seen && !self.stop.load(Ordering::SeqCst)
        });
    }

    fn work(&self) {
        while !self.stop.load(Ordering::SeqCst) {
            let claimed = self.store.claim(
                &self.config.owner,
                self.config.lease,
                self.scratch.free(),
                now_millis(),
            );
            match claimed {
                Ok(Some(task)) => self.run(task),
                Ok(None) => self.idle(),
                Err(e) => {
                    tracing::warn!("cannot claim a task: {e}");
                    self.idle();
                }
            }
        }
    }

    /// Runs a claimed task to its end (or until its lease is lost).
    fn run(&self, task: Task) {
        let span = tracing::info_span!("task", id = %task.id, tenant = %task.tenant);
        let _g = span.enter();
        tracing::info!(
            attempt = task.attempts,
            state = task.state.as_str(),
            "claimed"
        );
        if task.state == TaskState::Cancelling {
            self.end_cancelled(&task);
            return;
        }
        let cancel = AtomicBool::new(false);
        let latest: Mutex<TaskUpdate> = Mutex::new(TaskUpdate::default());
        let done = AtomicBool::new(false);
        let lost = AtomicBool::new(false);
        let outcome = std::thread::scope(|s| {
            // The heartbeat: renews the lease with the latest progress; a cancelled task or a
            // lost lease stops the work.
            s.spawn(|| {
                let tick = Duration::from_millis(100);
                let mut waited = Duration::ZERO;
                while !done.load(Ordering::SeqCst) {
                    std::thread::sleep(tick);
                    waited += tick;
                    if waited < self.config.heartbeat {
                        continue;
                    }
                    waited = Duration::ZERO;
                    let update = latest
                        .lock()
                        .map(|mut u| std::mem::take(&mut *u))
                        .unwrap_or_default();
                    if self.stop.load(Ordering::SeqCst) {
                        // The process is stopping: hand the task back (below).
                        cancel.store(true, Ordering::SeqCst);
                    }
                    match self.store.heartbeat(
                        &self.config.owner,
                        &task.id,
                        self.config.lease,
                        &update,
                        now_millis(),
                    ) {
                        Ok(Some(t)) if t.state == TaskState::Cancelling => {
                            cancel.store(true, Ordering::SeqCst)
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            tracing::warn!("lease lost; another process has the task");
                            lost.store(true, Ordering::SeqCst);
                            cancel.store(true, Ordering::SeqCst);
                        }
                        Err(e) => tracing::warn!("heartbeat failed: {e}"),
                    }
                }
            });
            let progress = |u: &TaskUpdate| {
                if let Ok(mut l) = latest.lock() {
                    merge(&mut l, u);
                }
            };
            let env = Env {
                objects: self.objects.as_ref(),
                storage: &self.storage,
                scratch: &self.scratch,
                scratch_dir: &self.config.scratch_dir,
                progress: &progress,
                cancel: &cancel,
                limits: self.config.limits,
            };
            let r = match self.config.threads {
                0 => self.perform(&env, &task),
                n => match rayon::ThreadPoolBuilder::new().num_threads(n).build() {
                    Ok(p) => p.install(|| self.perform(&env, &task)),
                    Err(e) => Err(Error::Config(format!("cannot start {n} threads: {e}"))),
                },
            };
            done.store(true, Ordering::SeqCst);
            // What the worker said last goes out with the end.
            if let Ok(u) = latest.lock()
                && *u != TaskUpdate::default()
                && !lost.load(Ordering::SeqCst)
            {
                let _ = self.store.heartbeat(
                    &self.config.owner,
                    &task.id,
                    self.config.lease,
                    &u,
                    now_millis(),
                );
            }
            r
        });
        if lost.load(Ordering::SeqCst) {
            return;
        }
        let asked_to_cancel = self
            .store
            .task(&task.tenant, &task.id)
            .ok()
            .flatten()
            .is_some_and(|t| t.state == TaskState::Cancelling);
        if matches!(outcome, Err(Error::Cancelled)) && !asked_to_cancel {
            // Stopped by the process shutting down: release the lease so that a restarted
            // (or another) process resumes the task from its checkpoint at once.
            self.release(&task, "interrupted by a restart; resuming");
            return;
        }
        let end = match outcome {
            Ok((result, bytes)) => {
                self.bytes_converted.fetch_add(bytes, Ordering::Relaxed);
                TaskEnd {
                    state: TaskState::Completed,
                    status_message: "completed".into(),
                    result: Some(result),
                }
            }
            // Cancelled, or failed after the user asked to cancel (the failure is moot).
            Err(_) if asked_to_cancel => {
                self.end_cancelled(&task);
                return;
            }
            Err(Error::Cancelled) => {
                self.end_cancelled(&task);
                return;
            }
            Err(e @ (Error::Invalid(_) | Error::TooLarge { .. } | Error::Config(_))) => {
                self.discard(&task);
                failed(&task, e.to_string())
            }
            Err(e) if task.attempts < MAX_ATTEMPTS => {
                // Worth another try: let the lease lapse at once so that any worker resumes it
                // from its checkpoint.
                tracing::warn!("attempt {} failed, will retry: {e}", task.attempts);
                self.release(&task, &format!("retrying after: {e}"));
                return;
            }
            Err(e) => {
                self.discard(&task);
                failed(&task, format!("ServerError: {e}"))
            }
        };
        match self
            .store
            .finish(&self.config.owner, &task.id, &end, now_millis())
        {
            Ok(true) => tracing::info!(status = %end.status_message, "ended"),
            Ok(false) => tracing::warn!("lease lost before the end was recorded"),
            Err(e) => tracing::error!("cannot record the end: {e}"),
        }
    }

    /// Gives the task back: its lease lapses now, so any worker claims it again.
    fn release(&self, task: &Task, why: &str) {
        let update = TaskUpdate {
            status_message: Some(why.to_string()),
            ..Default::default()
        };
        if let Err(e) = self.store.heartbeat(
            &self.config.owner,
            &task.id,
            Duration::ZERO,
            &update,
            now_millis(),
        ) {
            tracing::warn!("cannot release the task: {e}");
        }
    }

    /// Ends a task that was cancelled: removes what its checkpoint recorded.
    fn end_cancelled(&self, task: &Task) {
        self.discard(task);
        let current = self.store.task(&task.tenant, &task.id).ok().flatten();
        let reason = current
            .and_then(|t| t.status_message)
            .unwrap_or_else(|| "cancelled".into());
        let end = TaskEnd {
            state: TaskState::Cancelled,
            status_message: reason,
            result: None,
        };
        if let Err(e) = self
            .store
            .finish(&self.config.owner, &task.id, &end, now_millis())
        {
            tracing::error!("cannot record the cancellation: {e}");
        }
        tracing::info!("cancelled");
    }

    /// Removes the snapshots a task's checkpoint records (it will not complete).
    fn discard(&self, task: &Task) {
        let checkpoint = self
            .store
            .task(&task.tenant, &task.id)
            .ok()
            .flatten()
            .and_then(|t| t.checkpoint);
        if let Err(e) = worker::discard(&self.storage, checkpoint.as_ref()) {
            tracing::warn!("cannot remove the snapshots of the checkpoint: {e}");
        }
    }

    /// Does the task's work; returns its result JSON and the bytes converted.
    fn perform(&self, env: &Env<'_>, task: &Task) -> Result<(Value, u64)> {
        let t = TaskRef {
            id: &task.id,
            tenant: &task.tenant,
        };
        // The latest checkpoint (a resumed task continues from it).
        let checkpoint = task.checkpoint.as_ref();
        let bytes_of = |v: &Value| {
            v.get("bytes_converted")
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        match task.kind {
            TaskKind::ImportSnapshot => {
                let r: ImportSnapshotRequest = request_of(task);
                let d = r.disk_container.unwrap_or_default();
                let bucket = d.user_bucket.as_ref();
                let mut held = Vec::new();
                let input = DiskInput {
                    source: self.source(
                        env,
                        d.url.as_deref(),
                        bucket.and_then(|b| b.s3_bucket.as_deref()),
                        bucket.and_then(|b| b.s3_key.as_deref()),
                        &mut held,
                    )?,
                    format: d.format,
                    description: d.description.or(r.description),
                };
                let out = worker::import_snapshot(env, &t, &input, checkpoint)?;
                self.still_wanted(task)?;
                self.put_snapshots(&out.snapshots)?;
                let mut result = out.result;
                let first = result
                    .get("snapshots")
                    .and_then(|s| s.get(0))
                    .cloned()
                    .unwrap_or(Value::Null);
                if let Some(o) = result.as_object_mut() {
                    for k in ["snapshot_id", "disk_image_size", "format"] {
                        o.insert(k.into(), first.get(k).cloned().unwrap_or(Value::Null));
                    }
                }
                let bytes = bytes_of(&result);
                Ok((result, bytes))
            }
            TaskKind::ImportImage => {
                let r: ImportImageRequest = request_of(task);
                let mut held = Vec::new();
                let inputs = r
                    .disk_containers
                    .iter()
                    .map(|d| {
                        let b = d.user_bucket.as_ref();
                        Ok(DiskInput {
                            source: self.source(
                                env,
                                d.url.as_deref(),
                                b.and_then(|b| b.s3_bucket.as_deref()),
                                b.and_then(|b| b.s3_key.as_deref()),
                                &mut held,
                            )?,
                            format: d.format.clone(),
                            description: d.description.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let out = worker::import_image(env, &t, &inputs, checkpoint)?;
                self.still_wanted(task)?;
                self.put_snapshots(&out.snapshots)?;
                let v = out.validation.as_ref();
                // The same task always makes the same image id: a resumed task replaces it.
                let image_id = derived_id("ami-", &task.id);
                let architecture = r
                    .architecture
                    .clone()
                    .or(v.and_then(|v| v.architecture.clone()))
                    .unwrap_or_else(|| "x86_64".into());
                let image = ImageRecord {
                    id: image_id.clone(),
                    tenant: task.tenant.clone(),
                    name: task.id.clone(),
                    description: task.description.clone(),
                    architecture: architecture.clone(),
                    boot_mode: r.boot_mode.clone().or(v.and_then(|v| v.boot_mode.clone())),
                    platform: r.platform.clone().or(v.and_then(|v| v.platform.clone())),
                    snapshot_ids: out.snapshots.iter().map(|s| s.id.clone()).collect(),
                    state: "available".into(),
                    tags: Vec::new(),
                    task_id: task.id.clone(),
                    created_at: now_millis(),
                };
                self.store.put_image(&image)?;
                let mut result = out.result;
                if let Some(o) = result.as_object_mut() {
                    o.insert("image_id".into(), json!(image_id));
                    o.insert("architecture".into(), json!(architecture));
                    o.insert("platform".into(), json!(image.platform));
                    o.insert("boot_mode".into(), json!(image.boot_mode));
                }
                let bytes = bytes_of(&result);
                Ok((result, bytes))
            }
            TaskKind::ImportVolume => {
                let r: ImportVolumeRequest = request_of(task);
                let out = worker::import_volume(env, &t, &r.image.import_manifest_url, checkpoint)?;
                self.still_wanted(task)?;
                self.put_snapshots(&out.snapshots)?;
                let bytes = bytes_of(&out.result);
                let volumes: Vec<Value> = out
                    .snapshots
                    .iter()
                    .map(|s| {
                        json!({"volume_id": derived_id("vol-", &s.id), "snapshot_id": s.id,
                               "size_gib": s.size.div_ceil(1 << 30).max(r.volume.size as u64), "bytes": bytes})
                    })
                    .collect();
                let mut result = out.result;
                if let Some(o) = result.as_object_mut() {
                    o.insert("volumes".into(), json!(volumes));
                }
                Ok((result, bytes))
            }
            TaskKind::ImportInstance => {
                let r: ImportInstanceRequest = request_of(task);
                let mut volumes = Vec::new();
                let mut total = 0;
                // One checkpoint per task: it resumes a single-disk instance; with several
                // disks a restarted task converts them again.
                let cp = checkpoint.filter(|_| r.disk_images.len() == 1);
                for (i, d) in r.disk_images.iter().enumerate() {
                    let image = d.image.clone().unwrap_or_default();
                    let sub_id = format!("{}-{i}", task.id);
                    let sub = TaskRef {
                        id: &sub_id,
                        tenant: &task.tenant,
                    };
                    let out = worker::import_volume(env, &sub, &image.import_manifest_url, cp)?;
                    self.put_snapshots(&out.snapshots)?;
                    let bytes = bytes_of(&out.result);
                    total += bytes;
                    for s in &out.snapshots {
                        volumes.push(
                            json!({"volume_id": derived_id("vol-", &s.id), "snapshot_id": s.id,
                                            "size_gib": s.size.div_ceil(1 << 30), "bytes": bytes}),
                        );
                    }
                }
                Ok((
                    json!({"volumes": volumes, "instance_id": derived_id("i-", &task.id), "bytes_converted": total}),
                    total,
                ))
            }
            TaskKind::ExportImage => {
                let r: ExportImageRequest = request_of(task);
                let image = self
                    .store
                    .image(&task.tenant, &r.image_id)?
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "ClientError: the image {} does not exist",
                            r.image_id
                        ))
                    })?;
                let root = image.snapshot_ids.first().ok_or_else(|| {
                    Error::Invalid(format!("ClientError: the image {} has no disk", image.id))
                })?;
                let snapshot = self.store.snapshot(&task.tenant, root)?.ok_or_else(|| {
                    Error::Invalid(format!(
                        "ClientError: the snapshot {root} of {} is gone",
                        image.id
                    ))
                })?;
                let target = ExportTarget {
                    bucket: r.s3_export_location.s3_bucket.clone(),
                    prefix: r.s3_export_location.s3_prefix.clone().unwrap_or_default(),
                    format: ExportFormat::parse(&r.disk_image_format)?,
                };
                let out = worker::export(env, &t, &snapshot, &target)?;
                self.keep_export(task, &target, &out.result)?;
                Ok((out.result, snapshot.size))
            }
            TaskKind::ExportInstance => {
                let r: CreateInstanceExportTaskRequest = request_of(task);
                let snapshot = self.instance_root(&task.tenant, &r.instance_id)?;
                let s3 = r.export_to_s3_task;
                let target = ExportTarget {
                    bucket: s3.s3_bucket.unwrap_or_default(),
                    prefix: s3.s3_prefix.unwrap_or_default(),
                    format: ExportFormat::parse(s3.disk_image_format.as_deref().unwrap_or("VMDK"))?,
                };
                let out = worker::export(env, &t, &snapshot, &target)?;
                self.keep_export(task, &target, &out.result)?;
                Ok((out.result, snapshot.size))
            }
        }
    }

    /// The source a disk container names. `stamp://NAME` is a disk image in the stamp store: its
    /// file is put back together in the scratch directory (within the quota) and read from
    /// there; the file and its reservation are kept in `held` until the conversion ends.
    fn source(
        &self,
        env: &Env<'_>,
        url: Option<&str>,
        bucket: Option<&str>,
        key: Option<&str>,
        held: &mut Vec<StoreDisk>,
    ) -> Result<DiskSource> {
        let Some(name) = url.and_then(|u| u.strip_prefix("stamp://")) else {
            return DiskSource::from_request(url, bucket, key);
        };
        let Some(root) = &self.config.store else {
            return Err(Error::Invalid(
                "ClientError: this service imports no stamp:// images (it was started without a store)".into(),
            ));
        };
        let store = stamp_oci::Store::open(root)
            .map_err(|e| Error::Config(format!("the stamp store {}: {e}", root.display())))?;
        let missing = |e: String| Error::Invalid(format!("ClientError: stamp://{name}: {e}"));
        let desc = store.resolve(name).map_err(|e| missing(e.to_string()))?;
        let image = store
            .image(&desc, None)
            .map_err(|e| missing(e.to_string()))?;
        if image.kind != stamp_oci::ImageKind::Disk {
            return Err(missing("a container image, not a disk image".into()));
        }
        let (config, layers) =
            stamp_oci::disk::artifact::parts(&image).map_err(|e| missing(e.to_string()))?;
        let reservation = env
            .scratch
            .reserve(config.file_size, &|| env.cancel.load(Ordering::Relaxed))?;
        let path = self.config.scratch_dir.join(format!(
            ".store-{:08x}-{}",
            rand::random::<u32>(),
            config.file_name.replace('/', "_")
        ));
        let disk = StoreDisk {
            path: path.clone(),
            _reservation: reservation,
        };
        let mut file = std::fs::File::create(&path).map_err(|e| Error::io("create", &path, e))?;
        stamp_oci::disk::artifact::write_disk(&store, &config, &layers, &mut file, &|_| {})
            .map_err(|e| Error::Object {
                location: format!("stamp://{name}"),
                detail: e.to_string(),
            })?;
        held.push(disk);
        Ok(DiskSource::File(path))
    }

    /// The root disk of an instance ImportInstance made (`i-…`).
    fn instance_root(&self, tenant: &str, instance: &str) -> Result<crate::task::SnapshotRecord> {
        let q = crate::db::TaskQuery {
            kinds: vec![TaskKind::ImportInstance],
            ..Default::default()
        };
        let tasks = self.store.tasks(tenant, &q)?.items;
        let snapshot_id = tasks
            .iter()
            .filter_map(|t| t.result.as_ref())
            .find(|r| r.get("instance_id").and_then(Value::as_str) == Some(instance))
            .and_then(|r| {
                r.get("volumes")?
                    .get(0)?
                    .get("snapshot_id")?
                    .as_str()
                    .map(String::from)
            })
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "InvalidInstanceID.NotFound: the instance ID '{instance}' does not exist"
                ))
            })?;
        self.store.snapshot(tenant, &snapshot_id)?.ok_or_else(|| {
            Error::Invalid(format!(
                "ClientError: the disk {snapshot_id} of {instance} is gone"
            ))
        })
    }

    /// Fails with [`Error::Cancelled`] if a cancel was asked while the work ran (checked just
    /// before its results are recorded; the caller then removes what the checkpoint holds).
    fn still_wanted(&self, task: &Task) -> Result<()> {
        match self.store.task(&task.tenant, &task.id)? {
            Some(t) if t.state == TaskState::Active => Ok(()),
            _ => Err(Error::Cancelled),
        }
    }

    /// [`Pool::still_wanted`] for an export: a cancelled one removes the object it wrote.
    fn keep_export(&self, task: &Task, target: &ExportTarget, result: &Value) -> Result<()> {
        let cancelled = self.still_wanted(task);
        if cancelled.is_err()
            && let Some(key) = result.get("s3_key").and_then(Value::as_str)
            && let Err(e) = self.objects.delete(&target.bucket, key)
        {
            tracing::warn!("cannot remove the export of a cancelled task: {e}");
        }
        cancelled
    }

    fn put_snapshots(&self, snapshots: &[crate::task::SnapshotRecord]) -> Result<()> {
        for s in snapshots {
            self.store.put_snapshot(s)?;
        }
        Ok(())
    }
}

/// A store image's disk file in the scratch directory, removed (and its scratch released) when
/// dropped.
struct StoreDisk {
    path: PathBuf,
    _reservation: crate::worker::scratch::Reservation,
}

impl Drop for StoreDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `prefix` and 17 hex digits derived from `seed` (stable across retries of one task).
fn derived_id(prefix: &str, seed: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = hex::encode(Sha256::digest(seed.as_bytes()));
    format!("{prefix}{}", &h[..17])
}

/// A task that failed with `message` (AWS shows such import tasks as `deleted`).
fn failed(task: &Task, message: String) -> TaskEnd {
    tracing::warn!(task = %task.id, "failed: {message}");
    TaskEnd {
        state: TaskState::Cancelled,
        status_message: message,
        result: None,
    }
}

/// Folds a newer update into what the next heartbeat sends.
fn merge(into: &mut TaskUpdate, u: &TaskUpdate) {
    if u.status_message.is_some() {
        into.status_message = u.status_message.clone();
    }
    if u.progress.is_some() {
        into.progress = u.progress;
    }
    if u.bytes_converted.is_some() {
        into.bytes_converted = u.bytes_converted;
    }
    if u.checkpoint.is_some() {
        into.checkpoint = u.checkpoint.clone();
    }
}
