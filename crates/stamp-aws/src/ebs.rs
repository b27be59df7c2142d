//! EBS direct APIs: write a disk straight into an EBS snapshot and read one back, without a
//! helper instance.
//!
//! [`upload`] reads only the allocated ranges of a [`DiskReader`], skips blocks that are all
//! zeros, and sends the rest with `PutSnapshotBlock` from many scoped threads; it completes the
//! snapshot with the linear checksum and waits for `completed`. On any error or cancellation it
//! deletes the snapshot it created. [`download`] lists a snapshot's blocks, fetches them in
//! parallel, verifies each checksum and writes them in ascending order to a
//! [`DiskWriter`] with bounded memory.
//!
//! The low-level calls ([`start_snapshot`], [`put_snapshot_block`], [`complete_snapshot`],
//! [`list_snapshot_blocks`], [`get_snapshot_block`]) are public for other callers.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use stamp_disk::{DiskReader, DiskSummary, DiskWriter, Extent};

use crate::ec2::query::percent_encode as encode;
use crate::ec2::{self, DeleteSnapshotRequest, DescribeSnapshotsRequest};
use crate::http::{Client, Response, backoff};
use crate::{Error, Result};

/// One GiB: EBS volume sizes are whole GiB.
const GIB: u64 = 1 << 30;
/// Parallel block transfers by default (coldsnap uses 64 too; EBS direct allows ~1000 PUT/s
/// per snapshot).
pub const DEFAULT_JOBS: usize = 64;
/// Most parallel transfers accepted: more only draws throttling.
pub const MAX_JOBS: usize = 1024;
/// Largest EBS volume (64 TiB for io2 Block Express).
pub const MAX_VOLUME_GIB: u64 = 64 * 1024;
/// Smallest and largest block size accepted from StartSnapshot (AWS says 512 KiB, moto 512).
pub const MIN_BLOCK_SIZE: u64 = 512;
/// See [`MIN_BLOCK_SIZE`].
pub const MAX_BLOCK_SIZE: u64 = 16 << 20;
/// How many times a block is retried while AWS says the new snapshot does not exist yet
/// (ResourceNotFoundException in the first seconds after StartSnapshot).
const NOT_FOUND_RETRIES: u32 = 10;
/// Longest wait for a completed snapshot to reach `completed` (AWS: minutes for large ones).
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Blocks per ListSnapshotBlocks page (the API's maximum is 10000).
const LIST_PAGE: u32 = 10000;
/// How often a download waiting for blocks looks at its cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);
/// Most ListSnapshotBlocks pages followed: a 64 TiB volume of 512 KiB blocks needs 13 108.
const MAX_LIST_PAGES: u32 = 20_000;

/// Counters reported to the progress callback. During an upload `blocks_skipped` counts the
/// zero blocks found inside allocated ranges; the last call counts every block not sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Blocks sent (upload) or received (download) so far.
    pub blocks_done: u64,
    /// Blocks skipped because they are zero.
    pub blocks_skipped: u64,
    /// Bytes of block data sent or received so far.
    pub bytes: u64,
    /// Blocks of the whole disk.
    pub blocks_total: u64,
}

/// How to upload.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// The snapshot's description. By default, none.
    pub description: Option<String>,
    /// Tags on the snapshot (key, value). By default, none.
    pub tags: Vec<(String, String)>,
    /// Blocks in flight. By default, [`DEFAULT_JOBS`].
    pub jobs: usize,
    /// Idempotency token for StartSnapshot. By default, a fresh one per upload.
    pub client_token: Option<String>,
    /// Minutes the snapshot may stay pending before AWS abandons it (10–4320). By default,
    /// AWS's 60.
    pub timeout_minutes: Option<u32>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            description: None,
            tags: Vec::new(),
            jobs: DEFAULT_JOBS,
            client_token: None,
            timeout_minutes: None,
        }
    }
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UploadReport {
    /// The completed snapshot.
    pub snapshot_id: String,
    /// Its volume size in GiB.
    pub volume_size_gib: u64,
    /// The block size StartSnapshot returned.
    pub block_size: u64,
    /// Blocks sent.
    pub blocks_sent: u64,
    /// Blocks of the disk not sent because they are zero.
    pub blocks_skipped: u64,
    /// Bytes of block data sent.
    pub bytes_sent: u64,
}

/// StartSnapshot's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `snap-...`.
    pub snapshot_id: String,
    /// Bytes per block.
    pub block_size: u64,
    /// Volume size in GiB.
    pub volume_size_gib: u64,
    /// `pending`, `completed` or `error`.
    pub status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StartSnapshotOut {
    snapshot_id: Option<String>,
    block_size: Option<u64>,
    volume_size: Option<u64>,
    status: Option<String>,
}

/// Checks that `id` looks like a snapshot id (it goes into URL paths).
fn check_snapshot_id(id: &str) -> Result<()> {
    if id.starts_with("snap-")
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "'{id}' is not a snapshot id (snap-...)"
        )))
    }
}

fn malformed(action: &str, detail: impl Into<String>) -> Error {
    Error::Malformed {
        service: "ebs",
        action: action.to_string(),
        detail: detail.into(),
    }
}

fn json<T: serde::de::DeserializeOwned>(action: &str, resp: &Response) -> Result<T> {
    serde_json::from_slice(&resp.body).map_err(|e| malformed(action, format!("{e}")))
}

/// Validates a block size from a response.
fn check_block_size(action: &str, bs: u64) -> Result<u64> {
    if (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) && bs.is_power_of_two() {
        Ok(bs)
    } else {
        Err(malformed(
            action,
            format!("BlockSize {bs} is not a power of two in {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}"),
        ))
    }
}

/// A token for StartSnapshot's idempotency: unique per call in practice.
fn fresh_token() -> String {
    format!("stamp-{}", crate::fresh_id())
}

/// StartSnapshot for a volume of `volume_size_gib`.
pub fn start_snapshot(
    client: &Client,
    volume_size_gib: u64,
    opts: &UploadOptions,
) -> Result<Snapshot> {
    const ACTION: &str = "StartSnapshot";
    let mut body = serde_json::json!({
        "VolumeSize": volume_size_gib,
        "ClientToken": opts.client_token.clone().unwrap_or_else(fresh_token),
    });
    if let Some(d) = &opts.description {
        body["Description"] = d.clone().into();
    }
    if !opts.tags.is_empty() {
        body["Tags"] = opts
            .tags
            .iter()
            .map(|(k, v)| serde_json::json!({"Key": k, "Value": v}))
            .collect();
    }
    if let Some(t) = opts.timeout_minutes {
        body["Timeout"] = t.into();
    }
    let body = serde_json::to_vec(&body).map_err(|e| malformed(ACTION, e.to_string()))?;
    let resp = client.send_json(
        "ebs",
        ACTION,
        "POST",
        "/snapshots",
        &[("content-type", "application/json".into())],
        &body,
    )?;
    let out: StartSnapshotOut = json(ACTION, &resp)?;
    let snapshot_id = out
        .snapshot_id
        .ok_or_else(|| malformed(ACTION, "no SnapshotId"))?;
    check_snapshot_id(&snapshot_id).map_err(|e| malformed(ACTION, e.to_string()))?;
    let block_size = check_block_size(
        ACTION,
        out.block_size
            .ok_or_else(|| malformed(ACTION, "no BlockSize"))?,
    )?;
    Ok(Snapshot {
        snapshot_id,
        block_size,
        volume_size_gib: out.volume_size.unwrap_or(volume_size_gib),
        status: out.status.unwrap_or_default(),
    })
}

/// The base64 SHA-256 of `data`, as EBS direct wants checksums.
pub fn checksum(data: &[u8]) -> String {
    B64.encode(Sha256::digest(data))
}

/// PutSnapshotBlock: block `index` of `snapshot_id` with `data` (exactly one block). Retries
/// while the snapshot is not visible yet. Returns the SHA-256 of `data`.
pub fn put_snapshot_block(
    client: &Client,
    snapshot_id: &str,
    index: u64,
    data: &[u8],
    progress_percent: Option<u8>,
) -> Result<[u8; 32]> {
    const ACTION: &str = "PutSnapshotBlock";
    check_snapshot_id(snapshot_id)?;
    let digest: [u8; 32] = Sha256::digest(data).into();
    let mut headers = vec![
        ("content-type", "application/octet-stream".to_string()),
        ("x-amz-Data-Length", data.len().to_string()),
        ("x-amz-Checksum", B64.encode(digest)),
        ("x-amz-Checksum-Algorithm", "SHA256".to_string()),
    ];
    if let Some(p) = progress_percent {
        headers.push(("x-amz-Progress", p.min(100).to_string()));
    }
    let path = format!("/snapshots/{snapshot_id}/blocks/{index}");
    let mut tries = 0;
    loop {
        let resp = client.send("ebs", ACTION, "PUT", &path, &headers, data)?;
        if resp.is_success() {
            return Ok(digest);
        }
        tries += 1;
        if resp.error_code().as_deref() == Some("ResourceNotFoundException")
            && tries <= NOT_FOUND_RETRIES
        {
            tracing::debug!(
                snapshot_id,
                index,
                tries,
                "snapshot not visible yet; retrying"
            );
            backoff(tries);
            continue;
        }
        return Err(resp.json_error("ebs", &format!("{ACTION} {snapshot_id} block {index}")));
    }
}

/// The linear aggregate checksum: base64 SHA-256 of the block digests in block order.
pub fn linear_checksum<'a>(digests: impl IntoIterator<Item = &'a [u8; 32]>) -> String {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    B64.encode(h.finalize())
}

/// CompleteSnapshot with `changed_blocks` and the linear checksum `aggregate`.
pub fn complete_snapshot(
    client: &Client,
    snapshot_id: &str,
    changed_blocks: u64,
    aggregate: &str,
) -> Result<String> {
    const ACTION: &str = "CompleteSnapshot";
    check_snapshot_id(snapshot_id)?;
    let headers = [
        ("x-amz-ChangedBlocksCount", changed_blocks.to_string()),
        ("x-amz-Checksum", aggregate.to_string()),
        ("x-amz-Checksum-Algorithm", "SHA256".to_string()),
        ("x-amz-Checksum-Aggregation-Method", "LINEAR".to_string()),
    ];
    let resp = client.send_json(
        "ebs",
        ACTION,
        "POST",
        &format!("/snapshots/completion/{snapshot_id}"),
        &headers,
        b"",
    )?;
    #[derive(Deserialize)]
    struct Out {
        #[serde(rename = "Status")]
        status: Option<String>,
    }
    let out: Out = json(ACTION, &resp)?;
    Ok(out.status.unwrap_or_default())
}

/// A block of a snapshot as ListSnapshotBlocks gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRef {
    /// Its index.
    pub index: u64,
    /// The token GetSnapshotBlock wants.
    pub token: String,
}

/// A snapshot's block list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockList {
    /// Blocks with data, ascending by index.
    pub blocks: Vec<BlockRef>,
    /// Bytes per block.
    pub block_size: u64,
    /// Volume size in GiB.
    pub volume_size_gib: u64,
}

/// A number that some servers send as a string (moto sends block indices as strings).
#[derive(Deserialize)]
#[serde(untagged)]
enum Num {
    N(u64),
    S(String),
}

impl Num {
    fn get(&self) -> Option<u64> {
        match self {
            Num::N(n) => Some(*n),
            Num::S(s) => s.parse().ok(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListOut {
    #[serde(default)]
    blocks: Vec<ListBlock>,
    block_size: Option<u64>,
    volume_size: Option<u64>,
    next_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBlock {
    block_index: Num,
    block_token: Option<String>,
}

/// ListSnapshotBlocks, following NextToken to the end; blocks sorted by index, duplicates
/// refused.
pub fn list_snapshot_blocks(client: &Client, snapshot_id: &str) -> Result<BlockList> {
    list_blocks(client, snapshot_id, MAX_LIST_PAGES)
}

fn list_blocks(client: &Client, snapshot_id: &str, max_pages: u32) -> Result<BlockList> {
    const ACTION: &str = "ListSnapshotBlocks";
    check_snapshot_id(snapshot_id)?;
    let mut blocks = Vec::new();
    let mut token: Option<String> = None;
    let mut block_size = None;
    let mut volume_size = None;
    for _ in 0..max_pages {
        let mut path = format!("/snapshots/{snapshot_id}/blocks?maxResults={LIST_PAGE}");
        if let Some(t) = &token {
            path.push_str(&format!("&pageToken={}", encode(t)));
        }
        let resp = client.send_json("ebs", ACTION, "GET", &path, &[], b"")?;
        let out: ListOut = json(ACTION, &resp)?;
        if let Some(bs) = out.block_size {
            block_size = Some(check_block_size(ACTION, bs)?);
        }
        if let Some(v) = out.volume_size {
            volume_size = Some(v);
        }
        for b in out.blocks {
            let index = b
                .block_index
                .get()
                .ok_or_else(|| malformed(ACTION, "a BlockIndex is not a number"))?;
            blocks.push(BlockRef {
                index,
                token: b.block_token.unwrap_or_default(),
            });
        }
        match out.next_token {
            Some(t) if !t.is_empty() && max_pages > 1 => token = Some(t),
            Some(t) if !t.is_empty() => {
                return Err(malformed(ACTION, format!("more than {max_pages} pages")));
            }
            _ => {
                token = None;
                break;
            }
        }
    }
    if token.is_some() {
        return Err(malformed(ACTION, format!("more than {max_pages} pages")));
    }
    let block_size = block_size.ok_or_else(|| malformed(ACTION, "no BlockSize"))?;
    let volume_size_gib = volume_size.ok_or_else(|| malformed(ACTION, "no VolumeSize"))?;
    if volume_size_gib > MAX_VOLUME_GIB {
        return Err(malformed(
            ACTION,
            format!("VolumeSize {volume_size_gib} GiB is over {MAX_VOLUME_GIB}"),
        ));
    }
    blocks.sort_by_key(|b| b.index);
    let total = volume_size_gib * GIB / block_size;
    for w in blocks.windows(2) {
        if w[0].index == w[1].index {
            return Err(malformed(
                ACTION,
                format!("block {} listed twice", w[0].index),
            ));
        }
    }
    if let Some(last) = blocks.last() {
        if last.index >= total {
            return Err(malformed(
                ACTION,
                format!(
                    "block {} is beyond the {volume_size_gib} GiB volume",
                    last.index
                ),
            ));
        }
    }
    Ok(BlockList {
        blocks,
        block_size,
        volume_size_gib,
    })
}

/// GetSnapshotBlock: the data of `block`, verified against its checksum and length.
pub fn get_snapshot_block(
    client: &Client,
    snapshot_id: &str,
    block: &BlockRef,
    block_size: u64,
) -> Result<Vec<u8>> {
    let action = format!("GetSnapshotBlock {snapshot_id} block {}", block.index);
    check_snapshot_id(snapshot_id)?;
    let path = format!(
        "/snapshots/{snapshot_id}/blocks/{}?blockToken={}",
        block.index,
        encode(&block.token)
    );
    let resp = client.send_json("ebs", &action, "GET", &path, &[], b"")?;
    let bad = |d: String| Error::Malformed {
        service: "ebs",
        action: action.clone(),
        detail: d,
    };
    if resp.body.len() as u64 != block_size {
        return Err(bad(format!(
            "{} bytes, not the block size {block_size}",
            resp.body.len()
        )));
    }
    if let Some(len) = resp.header("x-amz-data-length") {
        if len.trim() != resp.body.len().to_string() {
            return Err(bad(format!(
                "x-amz-Data-Length {len} but {} bytes",
                resp.body.len()
            )));
        }
    }
    match (
        resp.header("x-amz-checksum-algorithm"),
        resp.header("x-amz-checksum"),
    ) {
        (Some(alg), Some(sum)) if alg.eq_ignore_ascii_case("SHA256") => {
            let got = checksum(&resp.body);
            if got != sum.trim() {
                return Err(bad(format!(
                    "checksum mismatch: expected {sum}, data has {got}"
                )));
            }
        }
        (Some(alg), Some(_)) => return Err(bad(format!("unknown checksum algorithm {alg}"))),
        _ => return Err(bad("no x-amz-Checksum".into())),
    }
    Ok(resp.body)
}

/// EC2 DeleteSnapshot.
pub fn ec2_delete_snapshot(client: &Client, snapshot_id: &str) -> Result<()> {
    let req = DeleteSnapshotRequest {
        snapshot_id: snapshot_id.to_string(),
        dry_run: None,
    };
    ec2::call(client, &req).map(|_| ())
}

/// EC2 DescribeSnapshots for one snapshot: its state (`pending`, `completed`, `error`) and
/// progress.
pub fn ec2_snapshot_state(client: &Client, snapshot_id: &str) -> Result<(String, Option<String>)> {
    let req = DescribeSnapshotsRequest {
        snapshot_ids: vec![snapshot_id.to_string()],
        ..Default::default()
    };
    let resp = ec2::call(client, &req)?;
    let snap = resp
        .snapshots
        .into_iter()
        .find(|s| s.snapshot_id.as_deref() == Some(snapshot_id));
    let Some(snap) = snap else {
        return Err(Error::Malformed {
            service: "ec2",
            action: "DescribeSnapshots".into(),
            detail: format!("no snapshot {snapshot_id} in the answer"),
        });
    };
    let state = snap.state.ok_or_else(|| Error::Malformed {
        service: "ec2",
        action: "DescribeSnapshots".into(),
        detail: format!("no <status> for {snapshot_id}"),
    })?;
    Ok((state, snap.progress))
}

/// Waits until `snapshot_id` is `completed` (error on `error` or after `timeout`).
pub fn wait_completed(
    client: &Client,
    snapshot_id: &str,
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<()> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        let (state, progress) = ec2_snapshot_state(client, snapshot_id)?;
        match state.as_str() {
            "completed" => return Ok(()),
            "error" => {
                return Err(Error::Api {
                    service: "ec2",
                    action: "DescribeSnapshots".into(),
                    code: "SnapshotError".into(),
                    message: format!("snapshot {snapshot_id} is in state error"),
                });
            }
            _ => {}
        }
        if start.elapsed() > timeout {
            return Err(Error::Transport(format!(
                "snapshot {snapshot_id} still {state} ({}) after {} s",
                progress.unwrap_or_default(),
                timeout.as_secs()
            )));
        }
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Hands out the indices of blocks that overlap the allocated ranges, each once, ascending.
struct BlockPlan {
    ranges: Vec<Range<u64>>,
    range: usize,
    next: u64,
    block_size: u64,
    total: u64,
}

impl BlockPlan {
    fn next_block(&mut self) -> Option<u64> {
        while let Some(r) = self.ranges.get(self.range) {
            let first = (r.start / self.block_size).max(self.next);
            let end = r.end.div_ceil(self.block_size).min(self.total);
            if first < end {
                self.next = first + 1;
                return Some(first);
            }
            self.range += 1;
        }
        None
    }
}

/// Uploads `reader`'s contents into a new snapshot; see the module documentation. `progress`
/// is called after each block; setting `cancel` stops the upload (and deletes the snapshot).
pub fn upload(
    client: &Client,
    reader: &dyn DiskReader,
    opts: &UploadOptions,
    progress: &(dyn Fn(&Transfer) + Sync),
    cancel: &AtomicBool,
) -> Result<UploadReport> {
    let size = reader.virtual_size();
    let gib = size.div_ceil(GIB).max(1);
    if gib > MAX_VOLUME_GIB {
        return Err(Error::Config(format!(
            "the disk is {gib} GiB; EBS volumes hold at most {MAX_VOLUME_GIB} GiB"
        )));
    }
    let jobs = opts.jobs.clamp(1, MAX_JOBS);
    // Read the allocation map before creating anything to clean up.
    let ranges = reader.allocation()?;
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    let snap = start_snapshot(client, gib, opts)?;
    let id = snap.snapshot_id.clone();
    tracing::info!(snapshot_id = %id, block_size = snap.block_size, "started snapshot");
    match upload_blocks(client, reader, &snap, ranges, jobs, progress, cancel) {
        Ok(report) => Ok(report),
        Err(cause) => {
            let cleanup = match ec2_delete_snapshot(client, &id) {
                Ok(()) => format!("deleted snapshot {id}"),
                Err(e) => format!("could not delete snapshot {id}: {e}"),
            };
            tracing::warn!(snapshot_id = %id, "{cleanup}");
            Err(Error::Aborted {
                cause: Box::new(cause),
                cleanup,
            })
        }
    }
}

fn upload_blocks(
    client: &Client,
    reader: &dyn DiskReader,
    snap: &Snapshot,
    ranges: Vec<Range<u64>>,
    jobs: usize,
    progress: &(dyn Fn(&Transfer) + Sync),
    cancel: &AtomicBool,
) -> Result<UploadReport> {
    let bs = snap.block_size;
    let size = reader.virtual_size();
    let total = size.div_ceil(bs);
    let plan = Mutex::new(BlockPlan {
        ranges,
        range: 0,
        next: 0,
        block_size: bs,
        total,
    });
    let digests: Mutex<BTreeMap<u64, [u8; 32]>> = Mutex::new(BTreeMap::new());
    let sent = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let zero_in_alloc = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failures: Mutex<(Option<Error>, u64)> = Mutex::new((None, 0));
    let id = snap.snapshot_id.as_str();
    let report_progress = || {
        let done = sent.load(Ordering::Relaxed);
        progress(&Transfer {
            blocks_done: done,
            blocks_skipped: zero_in_alloc.load(Ordering::Relaxed),
            bytes: bytes.load(Ordering::Relaxed),
            blocks_total: total,
        });
    };
    let worker = || {
        let mut buf = vec![0u8; bs as usize];
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if cancel.load(Ordering::Relaxed) {
                record(&failures, &stop, Error::Interrupted);
                return;
            }
            let next = plan.lock().ok().and_then(|mut p| p.next_block());
            let Some(index) = next else { return };
            let off = index * bs;
            let len = bs.min(size - off) as usize;
            buf[len..].fill(0);
            if let Err(e) = reader.read_at(&mut buf[..len], off) {
                record(&failures, &stop, e.into());
                return;
            }
            if stamp_disk::is_zero(&buf) {
                zero_in_alloc.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let pct = (index * 100 / total.max(1)) as u8;
            match put_snapshot_block(client, id, index, &buf, Some(pct)) {
                Ok(d) => {
                    if let Ok(mut m) = digests.lock() {
                        m.insert(index, d);
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(bs, Ordering::Relaxed);
                    report_progress();
                }
                Err(e) => {
                    record(&failures, &stop, e);
                    return;
                }
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(worker);
        }
    });
    let (first, count) = failures
        .into_inner()
        .map_err(|_| Error::Transport("a block upload thread panicked".into()))?;
    if let Some(e) = first {
        if count > 1 {
            tracing::warn!("{count} block uploads failed; the first: {e}");
        }
        return Err(e);
    }
    let digests = digests
        .into_inner()
        .map_err(|_| Error::Transport("a block upload thread panicked".into()))?;
    let blocks_sent = digests.len() as u64;
    let aggregate = linear_checksum(digests.values());
    let status = complete_snapshot(client, id, blocks_sent, &aggregate)?;
    tracing::info!(snapshot_id = id, status, "completed snapshot");
    wait_completed(client, id, COMPLETION_TIMEOUT, cancel)?;
    progress(&Transfer {
        blocks_done: blocks_sent,
        blocks_skipped: total - blocks_sent,
        bytes: bytes.load(Ordering::Relaxed),
        blocks_total: total,
    });
    Ok(UploadReport {
        snapshot_id: id.to_string(),
        volume_size_gib: snap.volume_size_gib,
        block_size: bs,
        blocks_sent,
        blocks_skipped: total - blocks_sent,
        bytes_sent: bytes.load(Ordering::Relaxed),
    })
}

/// Keeps the first error, counts the rest, and tells the other workers to stop.
fn record(failures: &Mutex<(Option<Error>, u64)>, stop: &AtomicBool, e: Error) {
    stop.store(true, Ordering::Relaxed);
    if let Ok(mut f) = failures.lock() {
        f.1 += 1;
        if f.0.is_none() {
            f.0 = Some(e);
        }
    }
}

/// What a download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadReport {
    /// The snapshot read.
    pub snapshot_id: String,
    /// Its block size.
    pub block_size: u64,
    /// Blocks fetched.
    pub blocks: u64,
    /// Bytes fetched.
    pub bytes: u64,
    /// What the writer produced.
    pub summary: DiskSummary,
}

/// The size in bytes of `snapshot_id`'s volume (to create the writer for [`download`]).
pub fn snapshot_size(client: &Client, snapshot_id: &str) -> Result<u64> {
    const ACTION: &str = "ListSnapshotBlocks";
    check_snapshot_id(snapshot_id)?;
    let resp = client.send_json(
        "ebs",
        ACTION,
        "GET",
        &format!("/snapshots/{snapshot_id}/blocks?maxResults=100"),
        &[],
        b"",
    )?;
    let out: ListOut = json(ACTION, &resp)?;
    let gib = out
        .volume_size
        .ok_or_else(|| malformed(ACTION, "no VolumeSize"))?;
    if gib > MAX_VOLUME_GIB {
        return Err(malformed(
            ACTION,
            format!("VolumeSize {gib} GiB is over {MAX_VOLUME_GIB}"),
        ));
    }
    Ok(gib * GIB)
}

struct Ordered {
    /// The next position (into the block list) the writer takes.
    next_write: usize,
    /// Fetched blocks waiting for their turn.
    pending: BTreeMap<usize, Vec<u8>>,
    /// Set when a worker failed or the writer stopped.
    failed: bool,
}

/// Downloads `snapshot_id` into `writer` (created for [`snapshot_size`] bytes): blocks fetched
/// by `jobs` threads, verified, written in ascending order; at most `2 * jobs` blocks are held
/// in memory. Zero blocks are written as gaps. `progress` gets, after each block written,
/// `blocks_done` = blocks of the snapshot received so far and `blocks_skipped` = blocks the
/// snapshot does not hold (the same in every call: `blocks_total - blocks_skipped` is the
/// number of blocks to fetch). Setting `cancel` stops the download with
/// [`Error::Interrupted`] once the requests in flight end; the writer is then dropped
/// unfinished, which removes what it wrote.
pub fn download(
    client: &Client,
    snapshot_id: &str,
    mut writer: Box<dyn DiskWriter>,
    jobs: usize,
    progress: &(dyn Fn(&Transfer) + Sync),
    cancel: &AtomicBool,
) -> Result<DownloadReport> {
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    let list = list_snapshot_blocks(client, snapshot_id)?;
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    let bs = list.block_size;
    let total = list.volume_size_gib * GIB / bs;
    let jobs = jobs.clamp(1, MAX_JOBS);
    let window = 2 * jobs;
    let next_fetch = AtomicU64::new(0);
    let state = Mutex::new(Ordered {
        next_write: 0,
        pending: BTreeMap::new(),
        failed: false,
    });
    let ready = Condvar::new();
    let failures: Mutex<(Option<Error>, u64)> = Mutex::new((None, 0));
    let stop = AtomicBool::new(false);
    let n = list.blocks.len();
    let mut bytes = 0u64;
    let mut written = 0u64;
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next_fetch.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // Wait until the block is inside the window the writer will take.
                    {
                        let Ok(mut st) = state.lock() else { return };
                        while !st.failed
                            && !cancel.load(Ordering::Relaxed)
                            && i >= st.next_write + window
                        {
                            st = match ready.wait_timeout(st, CANCEL_POLL) {
                                Ok((g, _)) => g,
                                Err(_) => return,
                            };
                        }
                        if st.failed {
                            return;
                        }
                    }
                    if cancel.load(Ordering::Relaxed) {
                        record(&failures, &stop, Error::Interrupted);
                        if let Ok(mut st) = state.lock() {
                            st.failed = true;
                        }
                        ready.notify_all();
                        return;
                    }
                    match get_snapshot_block(client, snapshot_id, &list.blocks[i], bs) {
                        Ok(data) => {
                            if let Ok(mut st) = state.lock() {
                                st.pending.insert(i, data);
                            }
                            ready.notify_all();
                        }
                        Err(e) => {
                            record(&failures, &stop, e);
                            if let Ok(mut st) = state.lock() {
                                st.failed = true;
                            }
                            ready.notify_all();
                            return;
                        }
                    }
                }
            });
        }
        // The writer: this thread, in block order.
        let mut result: Result<()> = Ok(());
        for i in 0..n {
            let data = {
                let Ok(mut st) = state.lock() else { break };
                loop {
                    if let Some(d) = st.pending.remove(&i) {
                        break Some(d);
                    }
                    if st.failed {
                        break None;
                    }
                    if cancel.load(Ordering::Relaxed) {
                        st.failed = true;
                        record(&failures, &stop, Error::Interrupted);
                        break None;
                    }
                    st = match ready.wait_timeout(st, CANCEL_POLL) {
                        Ok((g, _)) => g,
                        Err(_) => return,
                    };
                }
            };
            let Some(data) = data else { break };
            bytes += data.len() as u64;
            if !stamp_disk::is_zero(&data) {
                let e = Extent::Data {
                    offset: list.blocks[i].index * bs,
                    bytes: Bytes::from(data),
                };
                if let Err(e) = writer.write_extent(e) {
                    result = Err(e.into());
                }
                written += 1;
            }
            if let Ok(mut st) = state.lock() {
                st.next_write = i + 1;
                if result.is_err() {
                    st.failed = true;
                }
            }
            ready.notify_all();
            if let Err(e) = std::mem::replace(&mut result, Ok(())) {
                record(&failures, &stop, e);
                break;
            }
            progress(&Transfer {
                blocks_done: (i + 1) as u64,
                blocks_skipped: total - n as u64,
                bytes,
                blocks_total: total,
            });
        }
    });
    let (first, _) = failures
        .into_inner()
        .map_err(|_| Error::Transport("a block download thread panicked".into()))?;
    if let Some(e) = first {
        // Dropping the writer removes what it wrote.
        return Err(e);
    }
    let _ = written;
    let summary = writer.finish()?;
    Ok(DownloadReport {
        snapshot_id: snapshot_id.to_string(),
        block_size: bs,
        blocks: n as u64,
        bytes,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_plan_covers_each_overlapping_block_once() {
        let mut p = BlockPlan {
            ranges: vec![0..1, 100..1500, 1600..1700, 4000..9000],
            range: 0,
            next: 0,
            block_size: 512,
            total: 10,
        };
        let mut got = Vec::new();
        while let Some(b) = p.next_block() {
            got.push(b);
        }
        // 4000..9000 is cut at the disk's 10 blocks.
        assert_eq!(got, vec![0, 1, 2, 3, 7, 8, 9]);
    }

    #[test]
    fn linear_checksum_hashes_digests_in_order() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let mut cat = Vec::new();
        cat.extend_from_slice(&a);
        cat.extend_from_slice(&b);
        assert_eq!(linear_checksum([&a, &b]), checksum(&cat));
        assert_ne!(linear_checksum([&b, &a]), checksum(&cat));
    }

    #[test]
    fn ids_and_block_sizes_are_checked() {
        assert!(check_snapshot_id("snap-0123abc").is_ok());
        assert!(check_snapshot_id("snap-../../x").is_err());
        assert!(check_snapshot_id("vol-1").is_err());
        assert!(check_block_size("x", 524288).is_ok());
        assert!(check_block_size("x", 512).is_ok());
        assert!(check_block_size("x", 1000).is_err());
        assert!(check_block_size("x", 0).is_err());
        assert!(check_block_size("x", 1 << 30).is_err());
        assert_eq!(encode("a+b/c="), "a%2Bb%2Fc%3D");
    }
}
