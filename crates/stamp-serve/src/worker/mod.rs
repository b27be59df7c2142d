//! What a claimed task does: fetch its source, detect the format, validate the disk, convert
//! it into the service's store, and for exports write the requested format to the target.
//!
//! Each task kind is one blocking function ([`import_snapshot`], [`import_image`],
//! [`import_volume`], [`export`]) over an [`Env`] (where sources and the service's storage
//! are, the scratch quota, a progress callback and a cancel flag) and the task's decoded
//! request. They report status, percent, bytes and checkpoints through the callback as
//! [`TaskUpdate`]s, take the last checkpoint back when a task is resumed, and return an
//! [`Outcome`]: the result JSON and the snapshot records to store. On failure or cancellation
//! nothing they wrote is left behind (except snapshots already recorded in a checkpoint).

pub mod manifest;
pub mod references;
pub mod scratch;
pub mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stamp_disk::{CreateOptions, DiskReader, Format};

use crate::db::TaskUpdate;
use crate::objects::{Fetched, ObjectStore, UrlPolicy, fetch_url};
use crate::task::{SnapshotRecord, new_id, now_millis};
use crate::{Error, Result};
use scratch::{Reservation, Scratch};
use validate::Validation;

/// The service's own storage: snapshots are `PREFIX + snapshots/snap-….qcow2` in `bucket`.
#[derive(Clone)]
pub struct Storage {
    /// The store (a local directory, or S3 for scale-out).
    pub store: Arc<dyn ObjectStore>,
    /// The bucket.
    pub bucket: String,
    /// A prefix for every key (empty, or ending in `/`).
    pub prefix: String,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("store", &self.store.describe())
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Storage {
    /// Storage under a local objects directory `dir`: `dir/.stamp-serve/snapshots/…`. No
    /// tenant can name it as a bucket (bucket names cannot start with a dot).
    pub fn local(dir: &Path) -> Result<Storage> {
        Ok(Storage {
            store: Arc::new(crate::objects::LocalDir::new(&dir.join(".stamp-serve"))?),
            bucket: "stamp-serve".into(),
            prefix: String::new(),
        })
    }

    /// Storage in S3 at `s3://BUCKET/PREFIX`, reached with `config`.
    pub fn s3(url: &str, config: &stamp_aws::config::AwsConfig) -> Result<Storage> {
        let (bucket, prefix) = stamp_aws::s3::parse_s3_url(url)?;
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix
        } else {
            format!("{prefix}/")
        };
        Ok(Storage {
            store: Arc::new(crate::objects::S3Store::new(config)),
            bucket,
            prefix,
        })
    }

    /// Whether `bucket/key` of `objects` is the service's own (tenants may neither import
    /// from nor export to it).
    pub fn owns(&self, objects: &dyn ObjectStore, bucket: &str, key: &str) -> bool {
        bucket == self.bucket
            && key.starts_with(&self.prefix)
            && objects.describe() == self.store.describe()
    }

    /// The key of snapshot `id`.
    pub fn snapshot_key(&self, id: &str) -> String {
        format!("{}snapshots/{id}.qcow2", self.prefix)
    }
}

/// Limits on what a task may fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest source object or URL body accepted, in bytes.
    pub max_source: u64,
    /// Largest virtual disk accepted, in bytes.
    pub max_disk: u64,
    /// Which hosts URL sources and manifest parts may name.
    pub urls: UrlPolicy,
    /// Most bytes per second one conversion reads (none: no limit).
    pub convert_rate: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_source: 1 << 40,
            max_disk: 16 << 40,
            urls: UrlPolicy::PublicOnly,
            convert_rate: None,
        }
    }
}

/// Everything a task runs with.
pub struct Env<'a> {
    /// Where `UserBucket` sources and export targets are.
    pub objects: &'a dyn ObjectStore,
    /// Where snapshots go.
    pub storage: &'a Storage,
    /// The process's scratch quota.
    pub scratch: &'a Scratch,
    /// The scratch directory (downloads, and disks on their way to a remote store).
    pub scratch_dir: &'a Path,
    /// Receives status, progress, bytes converted and checkpoints (a heartbeat).
    pub progress: &'a (dyn Fn(&TaskUpdate) + Sync),
    /// Set to stop the task (cancelled, or its lease lost): it returns [`Error::Cancelled`].
    pub cancel: &'a AtomicBool,
    /// Size limits.
    pub limits: Limits,
}

impl Env<'_> {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn check_cancel(&self) -> Result<()> {
        if self.cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    fn status(&self, s: &str, percent: u8) {
        (self.progress)(&TaskUpdate {
            status_message: Some(s.into()),
            progress: Some(percent),
            ..Default::default()
        });
    }

    /// The task waits for scratch space.
    fn waiting(&self) {
        (self.progress)(&TaskUpdate {
            status_message: Some("pending".into()),
            ..Default::default()
        });
    }

    fn checkpoint(&self, c: Value) {
        (self.progress)(&TaskUpdate {
            checkpoint: Some(c),
            ..Default::default()
        });
    }
}

/// The task being worked on.
#[derive(Debug, Clone, Copy)]
pub struct TaskRef<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its tenant.
    pub tenant: &'a str,
}

/// Where a disk comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskSource {
    /// `UserBucket {S3Bucket, S3Key}` in [`Env::objects`].
    Object {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// An `http://` or `https://` URL.
    Url(String),
    /// A local file (a disk in the stamp store).
    File(PathBuf),
    /// The URL of an import manifest (ImportVolume): the disk is its parts joined.
    Manifest(String),
}

impl DiskSource {
    /// The source a request names: `UserBucket {S3Bucket, S3Key}`, or `Url` (`s3://BUCKET/KEY`,
    /// `http://` or `https://`). Exactly one of them must be given.
    pub fn from_request(
        url: Option<&str>,
        bucket: Option<&str>,
        key: Option<&str>,
    ) -> Result<DiskSource> {
        let bad = |m: &str| Error::Invalid(format!("InvalidParameterValue: {m}"));
        match (url, bucket, key) {
            (None, Some(b), Some(k)) => {
                crate::objects::check_bucket(b)?;
                crate::objects::check_key(k)?;
                Ok(DiskSource::Object {
                    bucket: b.to_string(),
                    key: k.to_string(),
                })
            }
            (Some(u), None, None) => {
                let lower = u.to_ascii_lowercase();
                if lower.starts_with("s3://") {
                    let (b, k) = u[5..].split_once('/').ok_or_else(|| {
                        bad(&format!("the URL {u} names no key (s3://BUCKET/KEY)"))
                    })?;
                    DiskSource::from_request(None, Some(b), Some(k))
                } else if lower.starts_with("https://") || lower.starts_with("http://") {
                    Ok(DiskSource::Url(u.to_string()))
                } else {
                    Err(bad(&format!("the URL {u} is neither s3:// nor http(s)://")))
                }
            }
            (Some(_), _, _) => Err(bad("give either Url or UserBucket, not both")),
            _ => Err(bad("a disk needs Url or UserBucket (S3Bucket and S3Key)")),
        }
    }

    fn describe(&self) -> String {
        match self {
            DiskSource::Object { bucket, key } => format!("s3://{bucket}/{key}"),
            DiskSource::Url(u) | DiskSource::Manifest(u) => {
                u.split('?').next().unwrap_or("").to_string()
            }
            DiskSource::File(p) => p.display().to_string(),
        }
    }
}

/// One disk to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInput {
    /// Where it is.
    pub source: DiskSource,
    /// The request's `Format` (`VMDK`, `VHD`, `VHDX`, `RAW`, `OVA`, `QCOW2`), checked against
    /// the content; `None`: whatever the content is.
    pub format: Option<String>,
    /// The snapshot's description.
    pub description: Option<String>,
}

/// What a task produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The task's result JSON.
    pub result: Value,
    /// Snapshots to store (in disk order).
    pub snapshots: Vec<SnapshotRecord>,
    /// The root disk's validation (ImportImage).
    pub validation: Option<Validation>,
}

/// The [`Format`] a request's `Format` names (case-insensitive).
pub fn parse_format(s: &str) -> Result<Format> {
    match s.to_ascii_lowercase().as_str() {
        "vmdk" => Ok(Format::Vmdk),
        "vhd" => Ok(Format::Vhd),
        "vhdx" => Ok(Format::Vhdx),
        "raw" => Ok(Format::Raw),
        "ova" => Ok(Format::Ova),
        "qcow2" => Ok(Format::Qcow2),
        "vdi" => Ok(Format::Vdi),
        _ => Err(Error::Invalid(format!(
            "ClientError: Unsupported format '{s}' (expected VMDK, VHD, VHDX, RAW, OVA or QCOW2)"
        ))),
    }
}

/// A disk error as a task failure: bad input becomes `ClientError: …` naming the source, not
/// the scratch file; cancellation stays cancellation.
fn disk_error(e: stamp_disk::Error, shown: &str, local: &Path) -> Error {
    match e {
        stamp_disk::Error::Interrupted => Error::Cancelled,
        e if e.is_bad_input() || matches!(e, stamp_disk::Error::OutOfBounds { .. }) => {
            let mut text = e.to_string().replace(&local.display().to_string(), shown);
            // Files next to it (extents, parents) are named as objects next to the source.
            if let (Some(dir), Some((shown_dir, _))) = (local.parent(), shown.rsplit_once('/'))
                && !dir.as_os_str().is_empty()
            {
                text = text.replace(&dir.display().to_string(), shown_dir);
            }
            Error::Invalid(format!("ClientError: Disk validation failed [{text}]"))
        }
        e => Error::Disk(e),
    }
}

/// Scratch bytes a qcow2 of `reader` may take: its data plus tables.
fn qcow2_estimate(reader: &dyn DiskReader) -> stamp_disk::Result<u64> {
    let data: u64 =
        stamp_disk::convert::ranges_len(&stamp_disk::convert::merge_ranges(reader.allocation()?));
    let tables = reader.virtual_size() / (64 << 10) * 16 + (4 << 20);
    Ok(data.min(reader.virtual_size()) + tables)
}

/// A fetched source, its reservation, the open disk and its detected format.
struct Source {
    /// The disks to import: one, or each disk of an OVA when expanded.
    disks: Vec<Arc<dyn DiskReader>>,
    /// The source image's bytes on the host.
    image_size: u64,
    /// The source file (for messages).
    path: PathBuf,
    format: Format,
    _reservation: Reservation,
    _fetched: Option<Fetched>,
}

/// Scratch bytes a fetch of `src` takes (0 when read in place).
fn source_scratch(env: &Env<'_>, src: &DiskSource) -> Result<u64> {
    if let DiskSource::Object { bucket, key } = src
        && env.storage.owns(env.objects, bucket, key)
    {
        return Err(Error::Invalid(format!(
            "ClientError: s3://{bucket}/{key} is the service's own storage"
        )));
    }
    match src {
        DiskSource::File(_) => Ok(0),
        DiskSource::Object { bucket, key } => {
            if env.objects.local_path(bucket, key)?.is_some() {
                return Ok(0);
            }
            env.objects
                .head(bucket, key)?
                .ok_or_else(|| missing_object(bucket, key))
        }
        DiskSource::Manifest(u) => {
            let m = manifest::fetch(u, env.limits.urls, env.cancel)?;
            if m.size > env.limits.max_source {
                return Err(Error::Invalid(format!(
                    "ClientError: the manifest's disk is {} bytes, more than the limit of {}",
                    m.size, env.limits.max_source
                )));
            }
            Ok(m.size)
        }
        // Without a Content-Length, the whole quota (or the source limit) is held for it.
        DiskSource::Url(u) => Ok(url_size(u, env.limits.urls)?
            .unwrap_or_else(|| env.limits.max_source.min(env.scratch.quota()))),
    }
}

fn missing_object(bucket: &str, key: &str) -> Error {
    Error::Invalid(format!(
        "ClientError: The specified object s3://{bucket}/{key} does not exist"
    ))
}

/// The Content-Length a HEAD of `url` announces.
fn url_size(url: &str, policy: UrlPolicy) -> Result<Option<u64>> {
    crate::objects::check_url(url, policy)?;
    Ok(head_length(url, policy))
}

fn head_length(url: &str, policy: UrlPolicy) -> Option<u64> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .max_redirects(if policy == UrlPolicy::Any { 10 } else { 0 })
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let resp = agent.head(url).call().ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.headers()
        .get("content-length")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Fetches `src`; a download of more than `limit` bytes (what was reserved) is refused.
fn fetch_source(env: &Env<'_>, src: &DiskSource, limit: u64) -> Result<(PathBuf, Option<Fetched>)> {
    Ok(match src {
        DiskSource::File(p) => (p.clone(), None),
        DiskSource::Object { bucket, key } => {
            if env.objects.head(bucket, key)?.is_none() {
                return Err(missing_object(bucket, key));
            }
            let f = env
                .objects
                .fetch(bucket, key, env.scratch_dir, limit, env.cancel)?;
            (f.path().to_path_buf(), Some(f))
        }
        DiskSource::Url(u) => {
            let f = fetch_url(u, env.scratch_dir, limit, env.limits.urls, env.cancel)?;
            (f.path().to_path_buf(), Some(f))
        }
        DiskSource::Manifest(u) => {
            let m = manifest::fetch(u, env.limits.urls, env.cancel)?;
            if m.size > limit {
                return Err(Error::Invalid(format!(
                    "ClientError: the manifest's disk is {} bytes, more than the {limit} reserved for it (did the manifest change?)",
                    m.size
                )));
            }
            let f = manifest::download(&m, env.scratch_dir, env.limits.urls, env.cancel)?;
            (f.path().to_path_buf(), Some(f))
        }
    })
}

/// Fetches and opens a disk, holding scratch for the download and (`with_output`) for a qcow2
/// of it. Never waits for more scratch while holding some: when the output does not fit next
/// to the download, it gives everything back and starts over with the whole need.
fn open_source(
    env: &Env<'_>,
    disk: &DiskInput,
    with_output: bool,
    expand_ova: bool,
) -> Result<Source> {
    let shown = disk.source.describe();
    let src_need = source_scratch(env, &disk.source)?;
    let mut need = src_need;
    for _attempt in 0..3 {
        if need > 0 && env.scratch.try_reserve(need)?.is_none() {
            env.waiting();
        }
        let mut reservation = env.scratch.reserve(need, &|| env.cancelled())?;
        // In-place sources reserve nothing; downloads get what was reserved for them.
        let limit = if src_need == 0 {
            env.limits.max_source
        } else {
            src_need.min(env.limits.max_source)
        };
        let (path, fetched) = fetch_source(env, &disk.source, limit)?;
        env.check_cancel()?;
        let format = stamp_disk::detect_path(&path).map_err(|e| disk_error(e, &shown, &path))?;
        if let Some(asked) = &disk.format {
            let asked_f = parse_format(asked)?;
            if asked_f != format {
                return Err(Error::Invalid(format!(
                    "ClientError: Disk validation failed [The disk format {} does not match the content of {shown}, which is {}]",
                    asked.to_ascii_uppercase(),
                    format.name().to_ascii_uppercase()
                )));
            }
        }
        let local = fetched.as_ref().is_none_or(|f| !f.is_download());
        references::check(&path, format, local, &shown)?;
        if format == Format::Gce {
            return Err(Error::Invalid(format!(
                "ClientError: Unsupported format: {shown} is a GCE image"
            )));
        }
        let reader =
            stamp_disk::open(&path, Some(format)).map_err(|e| disk_error(e, &shown, &path))?;
        if reader.virtual_size() > env.limits.max_disk {
            return Err(Error::Invalid(format!(
                "ClientError: The disk {shown} is {} bytes, more than the limit of {}",
                reader.virtual_size(),
                env.limits.max_disk
            )));
        }
        // DiskImageSize is the source object's length, as AWS reports it.
        let image_size = std::fs::metadata(&path)
            .map(|m| m.len())
            .unwrap_or(reader.info().actual_size);
        let disks: Vec<Arc<dyn DiskReader>> = if format == Format::Ova && expand_ova {
            let file = stamp_disk::ImageFile::open(&path)?;
            stamp_disk::ova::OvaReader::open(file, &stamp_disk::OpenOptions::default())
                .map_err(|e| disk_error(e, &shown, &path))?
                .disks()
        } else {
            vec![Arc::from(reader)]
        };
        if disks.len() > MAX_SUB_DISKS {
            return Err(Error::Invalid(format!(
                "ClientError: {shown} holds {} disks, more than {MAX_SUB_DISKS}",
                disks.len()
            )));
        }
        let mut out = 0u64;
        if with_output {
            for d in &disks {
                out += qcow2_estimate(d.as_ref()).map_err(|e| disk_error(e, &shown, &path))?;
            }
        }
        let fetched_bytes = fetched.as_ref().map(|f| f.scratch_bytes()).unwrap_or(0);
        let total = fetched_bytes.max(src_need) + out;
        if reservation.bytes() >= total || reservation.try_grow(total - reservation.bytes()) {
            return Ok(Source {
                disks,
                image_size,
                path,
                format,
                _reservation: reservation,
                _fetched: fetched,
            });
        }
        // Give everything back, then wait for the whole need at once.
        drop(disks);
        drop(fetched);
        drop(reservation);
        need = total;
    }
    Err(Error::Invalid(format!(
        "the scratch space needed by {shown} kept changing"
    )))
}

/// Progress of one conversion, forwarded to the task's callback when the percent changes.
struct Tracker<'a> {
    env: &'a Env<'a>,
    total: AtomicU64,
    done: AtomicU64,
    /// Bytes of earlier disks (for bytes converted).
    base: u64,
    /// The percent range this conversion spans.
    from: u8,
    to: u8,
    last: AtomicU64,
    /// When the conversion started (for `--convert-rate`).
    started: std::time::Instant,
}

impl<'a> Tracker<'a> {
    fn new(env: &'a Env<'a>, base: u64, from: u8, to: u8) -> Self {
        Tracker {
            env,
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            base,
            from,
            to,
            last: AtomicU64::new(u64::MAX),
            started: std::time::Instant::now(),
        }
    }
}

impl stamp_disk::Progress for Tracker<'_> {
    fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    fn advance(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let total = self.total.load(Ordering::Relaxed).max(1);
        let span = (self.to - self.from) as u64;
        let pct = self.from as u64 + (done.min(total) * span) / total;
        if self.last.swap(pct, Ordering::Relaxed) != pct {
            (self.env.progress)(&TaskUpdate {
                progress: Some(pct as u8),
                bytes_converted: Some(self.base + done),
                ..Default::default()
            });
        }
        // The rate limit: a conversion ahead of `rate` bytes per second waits (in short
        // sleeps, so that a cancel is seen).
        if let Some(rate) = self.env.limits.convert_rate {
            let due = std::time::Duration::from_secs_f64(done as f64 / rate as f64);
            while self.started.elapsed() < due && !self.env.cancelled() {
                std::thread::sleep(
                    due.saturating_sub(self.started.elapsed())
                        .min(std::time::Duration::from_millis(100)),
                );
            }
        }
    }

    fn cancelled(&self) -> bool {
        self.env.cancelled()
    }
}

/// Converts `reader` to a qcow2 stored as snapshot `id`; returns the record. Nothing is left
/// in the storage or the scratch directory if it fails.
#[allow(clippy::too_many_arguments)]
fn store_snapshot(
    env: &Env<'_>,
    task: &TaskRef<'_>,
    id: &str,
    reader: &dyn DiskReader,
    description: Option<String>,
    tracker: &Tracker<'_>,
    shown: &str,
    source_path: &Path,
) -> Result<SnapshotRecord> {
    let key = env.storage.snapshot_key(id);
    let size = reader.virtual_size();
    let convert = |dst: &Path| -> Result<()> {
        let w = stamp_disk::create(dst, Format::Qcow2, size, &CreateOptions::default())?;
        stamp_disk::convert::convert(reader, vec![w], tracker)
            .map_err(|e| disk_error(e, shown, source_path))?;
        Ok(())
    };
    match env.storage.store.local_path(&env.storage.bucket, &key)? {
        Some(dst) => {
            remove_stale_temporaries(&dst);
            convert(&dst)?
        }
        None => {
            let tmp = env
                .scratch_dir
                .join(format!(".{id}.{:08x}.qcow2", rand::random::<u32>()));
            let _cleanup = RemoveOnDrop(tmp.clone());
            convert(&tmp)?;
            env.check_cancel()?;
            env.storage
                .store
                .put_file(&env.storage.bucket, &key, &tmp, env.cancel)?;
        }
    }
    if let Err(e) = env.check_cancel() {
        let _ = env.storage.store.delete(&env.storage.bucket, &key);
        return Err(e);
    }
    Ok(SnapshotRecord {
        id: id.to_string(),
        tenant: task.tenant.to_string(),
        object_key: key,
        format: "qcow2".into(),
        size,
        description,
        task_id: task.id.to_string(),
        created_at: now_millis(),
    })
}

/// Removes what a killed writer of `dst` left beside it (`.NAME.*.tmp`), before the resumed
/// task writes it again.
fn remove_stale_temporaries(dst: &Path) {
    let (Some(dir), Some(name)) = (dst.parent(), dst.file_name()) else {
        return;
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The checkpoint of an import: snapshots made so far by disk index, the id reserved for the
/// disk being converted, and the root disk's validation once known.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportCheckpoint {
    /// Finished disks: (index, snapshot).
    #[serde(default)]
    pub done: Vec<(usize, SnapshotRecord)>,
    /// The disk in progress and the snapshot id it will have.
    #[serde(default)]
    pub current: Option<(usize, String)>,
    /// The root disk's validation.
    #[serde(default)]
    pub validation: Option<Validation>,
    /// The result's details of finished disks: (index, JSON).
    #[serde(default)]
    pub details: Vec<(usize, Value)>,
    /// How many disks each request disk turned out to hold (an OVA may hold several).
    #[serde(default)]
    pub units: Vec<(usize, usize)>,
}

/// Most disks taken from one source (an OVA).
const MAX_SUB_DISKS: usize = 1024;

/// The checkpoint key of disk `j` of request disk `i`.
fn unit_key(i: usize, j: usize) -> usize {
    i * MAX_SUB_DISKS + j
}

impl ImportCheckpoint {
    fn detail(&self, k: usize) -> Option<Value> {
        self.details
            .iter()
            .find(|(x, _)| *x == k)
            .map(|(_, d)| d.clone())
    }

    fn from_json(v: Option<&Value>) -> ImportCheckpoint {
        v.and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Imports `disks` in order; `validate_root` validates the first for booting.
fn import_disks(
    env: &Env<'_>,
    task: &TaskRef<'_>,
    disks: &[DiskInput],
    checkpoint: Option<&Value>,
    validate_root: bool,
) -> Result<Outcome> {
    let mut cp = ImportCheckpoint::from_json(checkpoint);
    // Snapshots recorded but no longer in the storage are made again.
    cp.done.retain(|(k, s)| {
        *k / MAX_SUB_DISKS < disks.len()
            && matches!(
                env.storage.store.head(&env.storage.bucket, &s.object_key),
                Ok(Some(_))
            )
    });
    let result = import_disks_inner(env, task, disks, &mut cp, validate_root);
    if let Err(e) = &result
        && !matches!(e, Error::Cancelled)
        && matches!(e, Error::Invalid(_))
    {
        // The task failed for good: its snapshots go too.
        for (_, s) in &cp.done {
            let _ = env.storage.store.delete(&env.storage.bucket, &s.object_key);
        }
    }
    result
}

fn import_disks_inner(
    env: &Env<'_>,
    task: &TaskRef<'_>,
    disks: &[DiskInput],
    cp: &mut ImportCheckpoint,
    validate_root: bool,
) -> Result<Outcome> {
    if disks.is_empty() {
        return Err(Error::Invalid(
            "ClientError: the request names no disk".into(),
        ));
    }
    let n = disks.len() as u64;
    let mut bytes = 0u64;
    let mut details = Vec::new();
    // A disk converted straight into a local storage directory needs no scratch for its qcow2.
    let remote = env
        .storage
        .store
        .local_path(&env.storage.bucket, &env.storage.snapshot_key("snap-probe"))?
        .is_none();
    for (i, disk) in disks.iter().enumerate() {
        env.check_cancel()?;
        let from = (5 + 80 * i as u64 / n) as u8;
        let to = (5 + 80 * (i as u64 + 1) / n) as u8;
        let known = cp.units.iter().find(|(k, _)| *k == i).map(|u| u.1);
        if let Some(count) = known
            && (0..count).all(|j| cp.done.iter().any(|(k, _)| *k == unit_key(i, j)))
        {
            for j in 0..count {
                let k = unit_key(i, j);
                if let Some((_, s)) = cp.done.iter().find(|(x, _)| *x == k) {
                    bytes += s.size;
                    details.push(
                        cp.detail(k)
                            .unwrap_or_else(|| disk_detail(details.len(), disk, s, None, None)),
                    );
                }
            }
            continue;
        }
        let src = open_source(env, disk, remote, validate_root)?;
        let count = src.disks.len();
        if known.is_none() {
            cp.units.push((i, count));
        }
        let shown = disk.source.describe();
        for (j, reader) in src.disks.iter().enumerate() {
            env.check_cancel()?;
            let k = unit_key(i, j);
            if let Some((_, s)) = cp.done.iter().find(|(x, _)| *x == k) {
                bytes += s.size;
                details.push(
                    cp.detail(k)
                        .unwrap_or_else(|| disk_detail(details.len(), disk, s, None, None)),
                );
                continue;
            }
            let id = match &cp.current {
                Some((x, id)) if *x == k => id.clone(),
                _ => new_id("snap-"),
            };
            let span = (to - from) as u64;
            let sub_from = from + (span * j as u64 / count as u64) as u8;
            let sub_to = from + (span * (j as u64 + 1) / count as u64) as u8;
            env.status("converting", sub_from);
            cp.current = Some((k, id.clone()));
            env.checkpoint(cp.to_json());
            let tracker = Tracker::new(env, bytes, sub_from, sub_to);
            let rec = store_snapshot(
                env,
                task,
                &id,
                reader.as_ref(),
                disk.description.clone(),
                &tracker,
                &shown,
                &src.path,
            )?;
            if k == 0 {
                let v = validate::validate(reader.as_ref(), src.format.name()).map_err(
                    |e| match e {
                        Error::Disk(d) => disk_error(d, &shown, &src.path),
                        e => e,
                    },
                )?;
                cp.validation = Some(v);
            }
            bytes += rec.size;
            let d = disk_detail(
                details.len(),
                disk,
                &rec,
                Some(src.format),
                Some(src.image_size),
            );
            details.push(d.clone());
            cp.details.push((k, d));
            cp.done.push((k, rec));
            cp.current = None;
            env.checkpoint(cp.to_json());
        }
        drop(src);
    }
    env.status("validating", 90);
    let validation = match &cp.validation {
        Some(v) => v.clone(),
        None => validate_stored(env, &cp.done[0].1)?,
    };
    if validate_root {
        validation.require_bootable()?;
    }
    let mut snaps: Vec<_> = cp.done.clone();
    snaps.sort_by_key(|(i, _)| *i);
    let snapshots: Vec<SnapshotRecord> = snaps.into_iter().map(|(_, s)| s).collect();
    (env.progress)(&TaskUpdate {
        progress: Some(100),
        bytes_converted: Some(bytes),
        ..Default::default()
    });
    Ok(Outcome {
        result: json!({
            "snapshots": details,
            "snapshot_ids": snapshots.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
            "validation": validation,
            "bytes_converted": bytes,
        }),
        snapshots,
        validation: Some(validation),
    })
}

/// Validates a stored snapshot (a resumed task whose checkpoint lacks the validation).
fn validate_stored(env: &Env<'_>, s: &SnapshotRecord) -> Result<Validation> {
    let size = env
        .storage
        .store
        .head(&env.storage.bucket, &s.object_key)?
        .unwrap_or(0);
    let need = if env
        .storage
        .store
        .local_path(&env.storage.bucket, &s.object_key)?
        .is_some()
    {
        0
    } else {
        size
    };
    let _r = env.scratch.reserve(need, &|| env.cancelled())?;
    let f = env.storage.store.fetch(
        &env.storage.bucket,
        &s.object_key,
        env.scratch_dir,
        u64::MAX,
        env.cancel,
    )?;
    let reader = stamp_disk::open(f.path(), Some(Format::Qcow2))?;
    validate::validate(reader.as_ref(), "qcow2")
}

fn disk_detail(
    i: usize,
    disk: &DiskInput,
    s: &SnapshotRecord,
    format: Option<Format>,
    image_size: Option<u64>,
) -> Value {
    let (bucket, key, url) = match &disk.source {
        DiskSource::Object { bucket, key } => (
            Some(bucket.clone()),
            Some(key.clone()),
            format!("s3://{bucket}/{key}"),
        ),
        other => (None, None, other.describe()),
    };
    // The root is /dev/sda1, the others /dev/sdb, /dev/sdc, ... as VM Import names them.
    let device = if i == 0 {
        "/dev/sda1".to_string()
    } else {
        format!("/dev/sd{}", (b'a' + (i % 26) as u8) as char)
    };
    json!({
        "snapshot_id": s.id,
        "device_name": device,
        "size": s.size,
        "disk_image_size": image_size,
        "format": format.map(|f| f.name().to_ascii_uppercase()).or_else(|| disk.format.clone()),
        "url": url,
        "s3_bucket": bucket,
        "s3_key": key,
        "description": s.description,
        "status": "completed",
    })
}

/// ImportSnapshot: one disk → a stored qcow2 snapshot. The disk need only be readable.
pub fn import_snapshot(
    env: &Env<'_>,
    task: &TaskRef<'_>,
    disk: &DiskInput,
    checkpoint: Option<&Value>,
) -> Result<Outcome> {
    let mut out = import_disks(env, task, std::slice::from_ref(disk), checkpoint, false)?;
    out.validation = None;
    Ok(out)
}

/// ImportImage: each disk → a snapshot; the first must be bootable (partition table,
/// filesystem, bootloader), else the task fails with AWS's `ClientError` message and its
/// snapshots are removed.
pub fn import_image(
    env: &Env<'_>,
    task: &TaskRef<'_>,
    disks: &[DiskInput],
    checkpoint: Option<&Value>,
) -> Result<Outcome> {
    import_disks(env, task, disks, checkpoint, true)
}

/// ImportVolume: the disk an import manifest describes (its parts fetched and joined in the
/// scratch directory, its `file-format` checked against the content) → a snapshot.
pub fn import_volume(
    env: &Env<'_>,
    task: &TaskRef<'_>,
    manifest_url: &str,
    checkpoint: Option<&Value>,
) -> Result<Outcome> {
    let cp = ImportCheckpoint::from_json(checkpoint);
    let source = DiskSource::Manifest(manifest_url.to_string());
    // A finished volume is not fetched again (its manifest's URLs may have expired).
    let (format, volume_size) = if cp.units.iter().any(|(i, n)| *i == 0 && *n == 1)
        && cp.done.iter().any(|(k, _)| *k == 0)
    {
        (None, None)
    } else {
        let m = manifest::fetch(manifest_url, env.limits.urls, env.cancel)?;
        (Some(m.format), m.volume_size)
    };
    let disk = DiskInput {
        source,
        format: format.clone(),
        description: None,
    };
    let mut out = import_disks(env, task, &[disk], checkpoint, false)?;
    out.validation = None;
    if let Some(o) = out.result.as_object_mut() {
        o.insert("volume_size_gib".into(), json!(volume_size));
        o.insert("manifest_format".into(), json!(format));
    }
    Ok(out)
}

/// An export's output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportFormat {
    /// VMDK streamOptimized.
    Vmdk,
    /// VHD (dynamic).
    Vhd,
    /// Raw.
    Raw,
    /// OVA (an OVF and a streamOptimized VMDK).
    Ova,
    /// qcow2.
    Qcow2,
}

impl ExportFormat {
    /// The format a request names (`VMDK`, `VHD`, `RAW`, `OVA`, `QCOW2`; case-insensitive).
    pub fn parse(s: &str) -> Result<ExportFormat> {
        match s.to_ascii_lowercase().as_str() {
            "vmdk" => Ok(ExportFormat::Vmdk),
            "vhd" => Ok(ExportFormat::Vhd),
            "raw" => Ok(ExportFormat::Raw),
            "ova" => Ok(ExportFormat::Ova),
            "qcow2" => Ok(ExportFormat::Qcow2),
            _ => Err(Error::Invalid(format!(
                "InvalidParameterValue: export format '{s}' (expected VMDK, VHD, RAW, OVA or QCOW2)"
            ))),
        }
    }

    /// The file extension (`vmdk`, `vhd`, `raw`, `ova`, `qcow2`).
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Vmdk => "vmdk",
            ExportFormat::Vhd => "vhd",
            ExportFormat::Raw => "raw",
            ExportFormat::Ova => "ova",
            ExportFormat::Qcow2 => "qcow2",
        }
    }

    fn disk_format(self) -> (Format, CreateOptions) {
        match self {
            ExportFormat::Vmdk => (
                Format::Vmdk,
                CreateOptions {
                    subformat: Some("streamOptimized".into()),
                    given: vec!["subformat".into()],
                    ..Default::default()
                },
            ),
            ExportFormat::Vhd => (Format::Vhd, CreateOptions::default()),
            ExportFormat::Raw => (Format::Raw, CreateOptions::default()),
            ExportFormat::Ova => (Format::Ova, CreateOptions::default()),
            ExportFormat::Qcow2 => (Format::Qcow2, CreateOptions::default()),
        }
    }
}

/// Where an export goes: `PREFIX + TASK_ID.EXT` in `bucket` of [`Env::objects`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTarget {
    /// The bucket.
    pub bucket: String,
    /// The key prefix (`S3Prefix`; may be empty).
    pub prefix: String,
    /// The format.
    pub format: ExportFormat,
}

/// ExportImage / CreateInstanceExportTask: the stored snapshot → `format` → the target object
/// `PREFIX + TASK_ID.EXT`. Nothing is left at the target or in scratch on failure.
pub fn export(
    env: &Env<'_>,
    task: &TaskRef<'_>,
    snapshot: &SnapshotRecord,
    target: &ExportTarget,
) -> Result<Outcome> {
    let key = format!("{}{}.{}", target.prefix, task.id, target.format.extension());
    crate::objects::check_key(&key)?;
    crate::objects::check_bucket(&target.bucket)?;
    if env.storage.owns(env.objects, &target.bucket, &key) {
        return Err(Error::Invalid(format!(
            "ClientError: s3://{}/{key} is the service's own storage",
            target.bucket
        )));
    }
    let st = env.storage;
    let stored = st
        .store
        .head(&st.bucket, &snapshot.object_key)?
        .ok_or_else(|| Error::Object {
            location: format!("{}/{}", st.bucket, snapshot.object_key),
            detail: format!("the stored disk of {} is missing", snapshot.id),
        })?;
    let src_need = if st
        .store
        .local_path(&st.bucket, &snapshot.object_key)?
        .is_some()
    {
        0
    } else {
        stored
    };
    let target_local = env.objects.local_path(&target.bucket, &key)?;
    // The output takes at most the stored data plus its format's overhead (a raw file is
    // sparse); an OVA is staged as a VMDK and then archived, so twice that.
    let out_need = if target_local.is_some() {
        0
    } else {
        let one = stored + snapshot.size / (64 << 10) * 16 + (8 << 20);
        if target.format == ExportFormat::Ova {
            one * 2
        } else {
            one
        }
    };
    if src_need + out_need > 0 && env.scratch.try_reserve(src_need + out_need)?.is_none() {
        env.waiting();
    }
    let _reservation = env
        .scratch
        .reserve(src_need + out_need, &|| env.cancelled())?;
    env.status("converting", 5);
    let fetched = st.store.fetch(
        &st.bucket,
        &snapshot.object_key,
        env.scratch_dir,
        u64::MAX,
        env.cancel,
    )?;
    let reader = stamp_disk::open(fetched.path(), Some(Format::Qcow2))?;
    let (format, opts) = target.format.disk_format();
    let tracker = Tracker::new(env, 0, 5, 90);
    let write = |dst: &Path| -> Result<stamp_disk::DiskSummary> {
        let w = stamp_disk::create(dst, format, reader.virtual_size(), &opts)?;
        let mut s = stamp_disk::convert::convert(reader.as_ref(), vec![w], &tracker).map_err(
            |e| match e {
                stamp_disk::Error::Interrupted => Error::Cancelled,
                e => Error::Disk(e),
            },
        )?;
        s.pop()
            .ok_or_else(|| Error::Invalid("the writer reported nothing".into()))
    };
    let size = match target_local {
        Some(dst) => {
            let s = write(&dst)?;
            if let Err(e) = env.check_cancel() {
                let _ = env.objects.delete(&target.bucket, &key);
                return Err(e);
            }
            s.file_size
        }
        None => {
            let tmp = env.scratch_dir.join(format!(
                ".{}.{:08x}.{}",
                task.id,
                rand::random::<u32>(),
                target.format.extension()
            ));
            let _cleanup = RemoveOnDrop(tmp.clone());
            write(&tmp)?;
            env.status("uploading", 92);
            env.objects
                .put_file(&target.bucket, &key, &tmp, env.cancel)?
        }
    };
    (env.progress)(&TaskUpdate {
        progress: Some(100),
        bytes_converted: Some(snapshot.size),
        ..Default::default()
    });
    Ok(Outcome {
        result: json!({
            "s3_bucket": target.bucket,
            "s3_key": key,
            "s3_prefix": target.prefix,
            "disk_image_format": target.format.extension().to_ascii_uppercase(),
            "size": size,
            "snapshot_id": snapshot.id,
        }),
        snapshots: Vec::new(),
        validation: None,
    })
}

/// Removes the snapshots an import's checkpoint records (finished disks and the one in
/// progress): for a task cancelled by its tenant or failed for good. Not for a task whose
/// lease was merely lost: another process may be resuming it. Returns how many were removed.
pub fn discard(storage: &Storage, checkpoint: Option<&Value>) -> Result<usize> {
    let cp = ImportCheckpoint::from_json(checkpoint);
    let mut keys: Vec<String> = cp.done.iter().map(|(_, s)| s.object_key.clone()).collect();
    if let Some((_, id)) = &cp.current {
        keys.push(storage.snapshot_key(id));
    }
    for k in &keys {
        storage.store.delete(&storage.bucket, k)?;
    }
    Ok(keys.len())
}

/// Empties the scratch directory (at process start: what a killed process left there).
/// Returns the bytes freed. The directory must be this process's own.
pub fn clean_scratch(dir: &Path) -> Result<u64> {
    let mut freed = 0;
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    for e in rd {
        let e = e.map_err(|e| Error::io("read directory", dir, e))?;
        let p = e.path();
        let meta = std::fs::symlink_metadata(&p).map_err(|e| Error::io("stat", &p, e))?;
        if meta.is_dir() {
            freed += clean_scratch(&p)?;
            std::fs::remove_dir(&p).map_err(|e| Error::io("remove", &p, e))?;
        } else {
            freed += meta.len();
            std::fs::remove_file(&p).map_err(|e| Error::io("remove", &p, e))?;
        }
    }
    Ok(freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_sources_are_buckets_or_urls() {
        assert_eq!(
            DiskSource::from_request(Some("s3://my-bucket/a/b.vmdk"), None, None).unwrap(),
            DiskSource::Object {
                bucket: "my-bucket".into(),
                key: "a/b.vmdk".into()
            }
        );
        assert_eq!(
            DiskSource::from_request(None, Some("my-bucket"), Some("k")).unwrap(),
            DiskSource::Object {
                bucket: "my-bucket".into(),
                key: "k".into()
            }
        );
        assert!(matches!(
            DiskSource::from_request(Some("https://h/x"), None, None).unwrap(),
            DiskSource::Url(_)
        ));
        for (u, b, k) in [
            (Some("ftp://h/x"), None, None),
            (Some("s3://bucket"), None, None),
            (Some("https://h/x"), Some("b"), Some("k")),
            (None, Some("my-bucket"), Some("../x")),
            (None, Some("my-bucket"), None),
            (None, None, None),
        ] {
            assert!(
                DiskSource::from_request(u, b, k).is_err(),
                "{u:?} {b:?} {k:?}"
            );
        }
    }

    #[test]
    fn local_storage_is_out_of_the_tenants_reach() {
        let d = tempfile::tempdir().unwrap();
        let st = Storage::local(d.path()).unwrap();
        let key = st.snapshot_key("snap-1");
        assert_eq!(key, "snapshots/snap-1.qcow2");
        let p = st.store.local_path(&st.bucket, &key).unwrap().unwrap();
        assert!(p.starts_with(d.path().join(".stamp-serve")));
        let objects = crate::objects::LocalDir::new(d.path()).unwrap();
        assert!(
            objects
                .head(".stamp-serve", "stamp-serve/snapshots/snap-1.qcow2")
                .is_err()
        );
        let cfg = stamp_aws::config::AwsConfig::new(
            "us-east-1",
            stamp_aws::config::Credentials {
                access_key_id: "AKID".into(),
                secret_access_key: "s".into(),
                session_token: None,
            },
        );
        let st = Storage::s3("s3://svc-bucket/pre", &cfg).unwrap();
        assert_eq!(st.snapshot_key("snap-1"), "pre/snapshots/snap-1.qcow2");
        assert!(st.owns(st.store.as_ref(), "svc-bucket", "pre/snapshots/x"));
        assert!(!st.owns(st.store.as_ref(), "svc-bucket", "other/x"));
        assert!(!st.owns(st.store.as_ref(), "user-bucket", "pre/x"));
    }

    #[test]
    fn formats_parse_in_any_case() {
        assert_eq!(parse_format("VmDk").unwrap(), Format::Vmdk);
        assert_eq!(parse_format("RAW").unwrap(), Format::Raw);
        assert!(parse_format("iso").is_err());
        assert_eq!(ExportFormat::parse("vhd").unwrap().extension(), "vhd");
        assert!(ExportFormat::parse("vhdx").is_err());
    }

    #[test]
    fn discard_removes_what_a_checkpoint_records_and_clean_scratch_empties() {
        let d = tempfile::tempdir().unwrap();
        let store = crate::objects::LocalDir::new(d.path()).unwrap();
        let storage = Storage {
            store: Arc::new(store),
            bucket: "stamp".into(),
            prefix: String::new(),
        };
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let no = AtomicBool::new(false);
        for id in ["snap-a", "snap-b"] {
            storage
                .store
                .put_file("stamp", &storage.snapshot_key(id), &f, &no)
                .unwrap();
        }
        let rec = SnapshotRecord {
            id: "snap-a".into(),
            tenant: "t".into(),
            object_key: storage.snapshot_key("snap-a"),
            format: "qcow2".into(),
            size: 1,
            description: None,
            task_id: "import-ami-1".into(),
            created_at: 0,
        };
        let cp = ImportCheckpoint {
            done: vec![(0, rec)],
            current: Some((1, "snap-b".into())),
            validation: None,
            details: Vec::new(),
            units: Vec::new(),
        };
        assert_eq!(discard(&storage, Some(&cp.to_json())).unwrap(), 2);
        assert_eq!(
            storage
                .store
                .head("stamp", &storage.snapshot_key("snap-a"))
                .unwrap(),
            None
        );
        assert_eq!(
            storage
                .store
                .head("stamp", &storage.snapshot_key("snap-b"))
                .unwrap(),
            None
        );
        let scratch = d.path().join("scratch");
        std::fs::create_dir_all(scratch.join("sub")).unwrap();
        std::fs::write(scratch.join("sub/x"), b"12345").unwrap();
        std::fs::write(scratch.join("y"), b"1").unwrap();
        assert_eq!(clean_scratch(&scratch).unwrap(), 6);
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    }
}
