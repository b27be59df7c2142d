//! S3 REST calls on our SigV4 client, enough for `stamp push --via s3://`: multipart upload
//! ([`MultipartWriter`], a [`std::io::Write`] that uploads parts in the background), and
//! `HeadObject`, ranged `GetObject`, `DeleteObject`.
//!
//! URLs are path-style (`ENDPOINT/BUCKET/KEY`) when an endpoint URL is configured for S3
//! (moto, MinIO, Ceph) and virtual-hosted (`https://BUCKET.s3.REGION.amazonaws.com/KEY`)
//! otherwise, except for bucket names with dots, which would not match AWS's TLS certificate
//! (`https://s3.REGION.amazonaws.com/BUCKET/KEY`, as the AWS SDKs do). Keys are percent-encoded
//! byte by byte as S3 wants: everything but `A-Z a-z 0-9 - _ . ~` and `/`.
//!
//! Errors come from S3's XML error body (`<Error><Code>..</Code><Message>..</Message>`) as
//! [`Error::Api`] with the operation and `s3://BUCKET/KEY` as the action.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::config::AwsConfig;
use crate::http::{Client, Response, snippet, xml_text};
use crate::{Error, Result};

/// The smallest part S3 accepts (all parts but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// The largest part S3 accepts.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// The part size by default: large enough that a 64 GiB disk needs 1024 parts, small enough
/// that `jobs + 1` parts in memory stay a few hundred MiB.
pub const DEFAULT_PART_SIZE: u64 = 64 << 20;
/// Most parts of one upload (S3's limit).
pub const MAX_PARTS: u32 = 10_000;
/// The largest object S3 stores.
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;
/// Parts uploaded at once by default (each holds a part in memory).
pub const DEFAULT_JOBS: usize = 4;
/// Most parts in flight accepted.
pub const MAX_JOBS: usize = 64;
/// Longest object key S3 accepts, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// The S3 XML namespace.
const XMLNS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
/// Longest upload id or ETag accepted from a response (AWS's are under 200 bytes).
const MAX_TOKEN_LEN: usize = 1024;

/// Splits `s3://BUCKET/PREFIX` into the bucket and the prefix (possibly empty, kept as
/// given). The bucket name must follow S3's rules (3–63 lower-case letters, digits, dots and
/// hyphens, starting and ending with a letter or digit, not an IP address).
pub fn parse_s3_url(url: &str) -> Result<(String, String)> {
    let bad = |why: &str| Error::Config(format!("'{url}' is not an S3 location: {why}"));
    let rest = match url.get(..5) {
        Some(s) if s.eq_ignore_ascii_case("s3://") => &url[5..],
        _ => return Err(bad("it must start with s3:// (s3://BUCKET/PREFIX)")),
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("no bucket name (s3://BUCKET/PREFIX)"));
    }
    check_bucket_name(bucket).map_err(|e| bad(&e))?;
    if prefix.len() > MAX_KEY_LEN - 64 {
        return Err(bad(&format!(
            "the prefix is {} bytes; keys are at most {MAX_KEY_LEN} bytes with the object name",
            prefix.len()
        )));
    }
    if prefix.chars().any(char::is_control) {
        return Err(bad("the prefix has control characters"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// Checks `name` against S3's bucket naming rules; the error says which rule it breaks.
pub fn check_bucket_name(name: &str) -> std::result::Result<(), String> {
    if !(3..=63).contains(&name.len()) {
        return Err(format!(
            "bucket name '{name}' must be 3 to 63 characters long"
        ));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("bucket name '{name}' must be lower case"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err(format!(
            "bucket name '{name}' may only have letters, digits, dots and hyphens"
        ));
    }
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !alnum(name.as_bytes().first()) || !alnum(name.as_bytes().last()) {
        return Err(format!(
            "bucket name '{name}' must start and end with a letter or digit"
        ));
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return Err(format!(
            "bucket name '{name}' has two dots, or a dot next to a hyphen"
        ));
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(format!("bucket name '{name}' must not be an IP address"));
    }
    Ok(())
}

/// `prefix` joined with `name`: a prefix that is not empty and does not end with `/` is taken
/// as a folder (`images` + `x.vmdk` is `images/x.vmdk`).
pub fn object_key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        format!("{prefix}{name}")
    } else {
        format!("{prefix}/{name}")
    }
}

/// Percent-encodes a key for a URL path as S3 wants: every byte but the unreserved ones
/// (`A-Z a-z 0-9 - _ . ~`) and `/` as `%XX`, upper-case hex.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL of `key` in `bucket` (see the module documentation for the style), followed by
/// `query` (empty, or starting with `?` and already encoded).
pub fn object_url(config: &AwsConfig, bucket: &str, key: &str, query: &str) -> String {
    let path = encode_key(key);
    match config.endpoint_override("s3") {
        Some(ep) => format!("{ep}/{bucket}/{path}{query}"),
        None if bucket.contains('.') => format!(
            "https://s3.{}.amazonaws.com/{bucket}/{path}{query}",
            config.region
        ),
        None => format!(
            "https://{bucket}.s3.{}.amazonaws.com/{path}{query}",
            config.region
        ),
    }
}

/// Checks a key before it goes into a URL.
fn check_key(bucket: &str, key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::Config(format!(
            "S3 key of s3://{bucket}/{key:.80} must be 1 to {MAX_KEY_LEN} bytes (it is {})",
            key.len()
        )));
    }
    check_bucket_name(bucket).map_err(Error::Config)
}

/// This error response of `op` on `s3://bucket/key` as [`Error::Api`]: code and message from
/// the XML body, or from the status when there is none (HEAD answers have no body).
fn s3_error(resp: &Response, op: &str, bucket: &str, key: &str) -> Error {
    let code = xml_text(&resp.body, "Code").unwrap_or_else(|| match resp.status {
        404 => "NotFound".into(),
        403 => "AccessDenied".into(),
        s => format!("HTTP {s}"),
    });
    let message = xml_text(&resp.body, "Message").unwrap_or_else(|| {
        let s = snippet(&resp.body);
        if s.is_empty() {
            format!("HTTP status {}", resp.status)
        } else {
            s
        }
    });
    Error::Api {
        service: "s3",
        action: format!("{op} s3://{bucket}/{key}"),
        code,
        message,
    }
}

fn malformed(op: &str, bucket: &str, key: &str, detail: impl Into<String>) -> Error {
    Error::Malformed {
        service: "s3",
        action: format!("{op} s3://{bucket}/{key}"),
        detail: detail.into(),
    }
}

/// Sends one S3 request and turns a non-2xx answer into [`Error::Api`].
fn send(
    client: &Client,
    op: &str,
    method: &str,
    (bucket, key): (&str, &str),
    query: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<Response> {
    check_key(bucket, key)?;
    let url = object_url(client.config(), bucket, key, query);
    let resp = client.send_url("s3", op, method, &url, headers, body)?;
    if resp.is_success() {
        Ok(resp)
    } else {
        Err(s3_error(&resp, op, bucket, key))
    }
}

/// A token (upload id, ETag) from a response, checked for length and control characters.
fn token(value: Option<String>, what: &str, op: &str, bucket: &str, key: &str) -> Result<String> {
    match value {
        Some(v)
            if !v.is_empty() && v.len() <= MAX_TOKEN_LEN && !v.chars().any(char::is_control) =>
        {
            Ok(v)
        }
        Some(_) => Err(malformed(op, bucket, key, format!("a bad {what}"))),
        None => Err(malformed(op, bucket, key, format!("no {what}"))),
    }
}

/// What S3 says about an object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectInfo {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag (with S3's quotes), if S3 sent one.
    pub etag: Option<String>,
}

/// CreateMultipartUpload: starts an upload of `key` and returns its upload id.
pub fn create_multipart_upload(client: &Client, bucket: &str, key: &str) -> Result<String> {
    const OP: &str = "CreateMultipartUpload";
    let resp = send(
        client,
        OP,
        "POST",
        (bucket, key),
        "?uploads",
        &[("content-type", "application/octet-stream".into())],
        b"",
    )?;
    token(
        xml_text(&resp.body, "UploadId"),
        "UploadId",
        OP,
        bucket,
        key,
    )
}

/// UploadPart: part `part_number` (1..=[`MAX_PARTS`]) of upload `upload_id`; returns its ETag.
pub fn upload_part(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    part_number: u32,
    data: &[u8],
) -> Result<String> {
    const OP: &str = "UploadPart";
    if !(1..=MAX_PARTS).contains(&part_number) {
        return Err(Error::Config(format!(
            "part {part_number} of s3://{bucket}/{key}: parts are numbered 1 to {MAX_PARTS}"
        )));
    }
    let query = format!(
        "?partNumber={part_number}&uploadId={}",
        crate::ec2::query::percent_encode(upload_id)
    );
    let op = format!("{OP} {part_number}");
    let resp = send(client, &op, "PUT", (bucket, key), &query, &[], data)?;
    token(
        resp.header("etag").map(str::to_string),
        "ETag",
        &op,
        bucket,
        key,
    )
}

/// Escapes text for an XML element.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// CompleteMultipartUpload with `parts` (part number, ETag) in ascending order; returns the
/// object's ETag. S3 may answer 200 with an error document: that is an error too.
pub fn complete_multipart_upload(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    parts: &[(u32, String)],
) -> Result<Option<String>> {
    const OP: &str = "CompleteMultipartUpload";
    let mut body = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUpload xmlns="{XMLNS}">"#
    );
    for (n, etag) in parts {
        body.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
            xml_escape(etag)
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    let query = format!("?uploadId={}", crate::ec2::query::percent_encode(upload_id));
    let resp = send(
        client,
        OP,
        "POST",
        (bucket, key),
        &query,
        &[("content-type", "application/xml".into())],
        body.as_bytes(),
    )?;
    let text = String::from_utf8_lossy(&resp.body);
    if text.contains("<Error>") {
        return Err(s3_error(&resp, OP, bucket, key));
    }
    Ok(xml_text(&resp.body, "ETag"))
}

/// AbortMultipartUpload: S3 drops the parts uploaded so far.
pub fn abort_multipart_upload(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<()> {
    let query = format!("?uploadId={}", crate::ec2::query::percent_encode(upload_id));
    send(
        client,
        "AbortMultipartUpload",
        "DELETE",
        (bucket, key),
        &query,
        &[],
        b"",
    )?;
    Ok(())
}

/// DeleteObject (S3 answers success for a key that does not exist).
pub fn delete_object(client: &Client, bucket: &str, key: &str) -> Result<()> {
    send(
        client,
        "DeleteObject",
        "DELETE",
        (bucket, key),
        "",
        &[],
        b"",
    )?;
    Ok(())
}

/// HeadObject: the object's size and ETag; a missing object is [`Error::Api`] `NotFound`.
pub fn head_object(client: &Client, bucket: &str, key: &str) -> Result<ObjectInfo> {
    const OP: &str = "HeadObject";
    let resp = send(client, OP, "HEAD", (bucket, key), "", &[], b"")?;
    let size = resp
        .header("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| malformed(OP, bucket, key, "no Content-Length"))?;
    Ok(ObjectInfo {
        bucket: bucket.to_string(),
        key: key.to_string(),
        size,
        etag: resp.header("etag").map(str::to_string),
    })
}

/// GetObject of `len` bytes at `offset` (at most [`crate::http::MAX_RESPONSE_BODY`]); fewer
/// bytes come back only at the end of the object.
pub fn get_object_range(
    client: &Client,
    bucket: &str,
    key: &str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>> {
    const OP: &str = "GetObject";
    if len == 0 || len > crate::http::MAX_RESPONSE_BODY {
        return Err(Error::Config(format!(
            "a range of {len} bytes of s3://{bucket}/{key}: ranges are 1 to {} bytes",
            crate::http::MAX_RESPONSE_BODY
        )));
    }
    let last = offset
        .checked_add(len - 1)
        .ok_or_else(|| Error::Config(format!("range at {offset} of {len} bytes overflows")))?;
    let resp = send(
        client,
        OP,
        "GET",
        (bucket, key),
        "",
        &[("range", format!("bytes={offset}-{last}"))],
        b"",
    )?;
    if resp.body.len() as u64 > len {
        return Err(malformed(
            OP,
            bucket,
            key,
            format!("{} bytes for a range of {len}", resp.body.len()),
        ));
    }
    Ok(resp.body)
}

/// The part size for an upload: `requested` kept within S3's limits, grown so that an object
/// of `size_hint` bytes fits in [`MAX_PARTS`] parts (rounded up to whole MiB).
pub fn part_size_for(requested: u64, size_hint: Option<u64>) -> Result<u64> {
    let mut p = requested.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
    if let Some(size) = size_hint {
        if size > MAX_OBJECT_SIZE {
            return Err(Error::Config(format!(
                "an object of {size} bytes is larger than S3's limit of {MAX_OBJECT_SIZE} (5 TiB)"
            )));
        }
        let need = size
            .div_ceil(u64::from(MAX_PARTS))
            .next_multiple_of(1 << 20);
        p = p.max(need).min(MAX_PART_SIZE);
    }
    Ok(p)
}

/// How to upload in parts.
#[derive(Debug, Clone)]
pub struct MultipartOptions {
    /// Bytes per part (all but the last). By default, [`DEFAULT_PART_SIZE`]; kept within
    /// [`MIN_PART_SIZE`]..=[`MAX_PART_SIZE`] and grown for `size_hint`.
    pub part_size: u64,
    /// Parts uploaded at once. By default, [`DEFAULT_JOBS`].
    pub jobs: usize,
    /// The object's size, or an upper bound, when known: parts grow so that it fits in
    /// [`MAX_PARTS`]. By default, unknown.
    pub size_hint: Option<u64>,
}

impl Default for MultipartOptions {
    fn default() -> Self {
        MultipartOptions {
            part_size: DEFAULT_PART_SIZE,
            jobs: DEFAULT_JOBS,
            size_hint: None,
        }
    }
}

/// Counters reported to a [`MultipartWriter`]'s progress callback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartProgress {
    /// Bytes written into the writer so far.
    pub bytes_written: u64,
    /// Bytes of parts S3 has acknowledged.
    pub bytes_uploaded: u64,
    /// Parts S3 has acknowledged.
    pub parts_uploaded: u32,
}

/// What the writer and its part threads share.
struct Shared {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    state: Mutex<State>,
    changed: Condvar,
    /// Set when the upload is being given up: parts not started yet are not sent.
    stop: AtomicBool,
    uploaded: AtomicU64,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    etags: BTreeMap<u32, String>,
    /// The first part failure, and how many failed.
    error: Option<Error>,
    failures: u64,
}

/// A multipart upload as a [`Write`]: bytes are cut into parts of the part size, each uploaded
/// by a background thread, at most `jobs` at once; the writer blocks when all are busy, so at
/// most `jobs + 1` parts are in memory. [`MultipartWriter::finish`] uploads the last part and
/// completes the upload; dropping the writer without it (or [`MultipartWriter::abort`]) aborts
/// the upload, after waiting for the parts in flight.
///
/// Writes fail once `cancel` is set ([`Error::Interrupted`]) or a part failed (the part's
/// error). `progress` is called from the writing thread when parts complete.
pub struct MultipartWriter<'a> {
    shared: Arc<Shared>,
    part_size: u64,
    jobs: usize,
    buf: Vec<u8>,
    next_part: u32,
    written: u64,
    reported: u64,
    /// Set once an error was returned: the writer takes nothing more.
    failed: bool,
    /// Set by finish and abort: Drop has nothing to do.
    done: bool,
    progress: &'a (dyn Fn(&PartProgress) + Sync),
    cancel: &'a AtomicBool,
}

impl std::fmt::Debug for MultipartWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultipartWriter")
            .field("bucket", &self.shared.bucket)
            .field("key", &self.shared.key)
            .field("upload_id", &self.shared.upload_id)
            .field("part_size", &self.part_size)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<'a> MultipartWriter<'a> {
    /// Starts a multipart upload of `s3://bucket/key` (CreateMultipartUpload).
    pub fn create(
        client: &Client,
        bucket: &str,
        key: &str,
        opts: &MultipartOptions,
        progress: &'a (dyn Fn(&PartProgress) + Sync),
        cancel: &'a AtomicBool,
    ) -> Result<Self> {
        let part_size = part_size_for(opts.part_size, opts.size_hint)?;
        let jobs = opts.jobs.clamp(1, MAX_JOBS);
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let upload_id = create_multipart_upload(client, bucket, key)?;
        tracing::info!(
            bucket,
            key,
            upload_id,
            part_size,
            "started multipart upload"
        );
        Ok(MultipartWriter {
            shared: Arc::new(Shared {
                client: client.clone(),
                bucket: bucket.to_string(),
                key: key.to_string(),
                upload_id,
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                stop: AtomicBool::new(false),
                uploaded: AtomicU64::new(0),
            }),
            part_size,
            jobs,
            buf: Vec::new(),
            next_part: 1,
            written: 0,
            reported: 0,
            failed: false,
            done: false,
            progress,
            cancel,
        })
    }

    /// The upload id.
    pub fn upload_id(&self) -> &str {
        &self.shared.upload_id
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.shared.bucket
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Bytes per part.
    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Bytes of parts S3 has acknowledged.
    pub fn bytes_uploaded(&self) -> u64 {
        self.shared.uploaded.load(Ordering::Relaxed)
    }

    /// Writes all of `data`; see the type's documentation for when it fails.
    pub fn write_bytes(&mut self, mut data: &[u8]) -> Result<()> {
        self.check()?;
        while !data.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf = Vec::with_capacity(self.part_size as usize);
            }
            let room = self.part_size as usize - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            self.written += n as u64;
            data = &data[n..];
            if self.buf.len() as u64 == self.part_size {
                self.submit()?;
            }
        }
        self.report();
        Ok(())
    }

    /// Fails if the user cancelled, a part failed, or an earlier error was returned.
    fn check(&mut self) -> Result<()> {
        if self.failed {
            return Err(self.earlier_failure());
        }
        if self.cancel.load(Ordering::Relaxed) {
            self.failed = true;
            self.shared.stop.store(true, Ordering::Relaxed);
            return Err(Error::Interrupted);
        }
        let err = self
            .shared
            .state
            .lock()
            .ok()
            .and_then(|mut s| s.error.take());
        if let Some(e) = err {
            self.failed = true;
            self.shared.stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
        Ok(())
    }

    fn earlier_failure(&self) -> Error {
        Error::Transport(format!(
            "the multipart upload {} of s3://{}/{} failed earlier",
            self.shared.upload_id, self.shared.bucket, self.shared.key
        ))
    }

    /// Reports progress if parts completed since the last report.
    fn report(&mut self) {
        let uploaded = self.bytes_uploaded();
        if uploaded != self.reported {
            self.reported = uploaded;
            let parts = self.shared.state.lock().map(|s| s.etags.len()).unwrap_or(0);
            (self.progress)(&PartProgress {
                bytes_written: self.written,
                bytes_uploaded: uploaded,
                parts_uploaded: parts as u32,
            });
        }
    }

    /// Hands the buffered part to a background thread, after waiting for a free slot.
    fn submit(&mut self) -> Result<()> {
        let number = self.next_part;
        if number > MAX_PARTS {
            self.failed = true;
            return Err(Error::Config(format!(
                "s3://{}/{}: more than {MAX_PARTS} parts of {} bytes (the object is larger than \
                 its size hint)",
                self.shared.bucket, self.shared.key, self.part_size
            )));
        }
        let jobs = self.jobs;
        self.wait_for(|s| s.in_flight < jobs)?;
        let data = std::mem::take(&mut self.buf);
        self.next_part += 1;
        if let Ok(mut s) = self.shared.state.lock() {
            s.in_flight += 1;
        }
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name(format!("s3-part-{number}"))
            .spawn(move || upload_in_background(&shared, number, &data));
        if let Err(e) = spawned {
            if let Ok(mut s) = self.shared.state.lock() {
                s.in_flight -= 1;
            }
            self.failed = true;
            return Err(Error::Transport(format!(
                "could not start a thread for part {number}: {e}"
            )));
        }
        Ok(())
    }

    /// Waits until `ready` holds for the shared state, reporting progress as parts complete;
    /// fails on cancellation or a part's failure.
    fn wait_for(&mut self, ready: impl Fn(&State) -> bool) -> Result<()> {
        loop {
            self.check()?;
            self.report();
            let Ok(s) = self.shared.state.lock() else {
                self.failed = true;
                return Err(Error::Transport("a part upload thread panicked".into()));
            };
            if s.error.is_some() {
                continue;
            }
            if ready(&s) {
                return Ok(());
            }
            // Wake up now and then to notice cancellation.
            let _ = self
                .shared
                .changed
                .wait_timeout(s, Duration::from_millis(200));
        }
    }

    /// Waits for the parts in flight to end, whatever their result.
    fn drain(&self) {
        let Ok(mut s) = self.shared.state.lock() else {
            return;
        };
        while s.in_flight > 0 {
            s = match self.shared.changed.wait(s) {
                Ok(g) => g,
                Err(_) => return,
            };
        }
    }

    /// Uploads the last part, waits for all of them, completes the upload and checks the
    /// object's size with HeadObject. On any failure it aborts the upload (or deletes the
    /// object if the upload completed) and returns [`Error::Aborted`] saying so.
    pub fn finish(mut self) -> Result<ObjectInfo> {
        match self.try_finish() {
            Ok(info) => Ok(info),
            Err(cause) => {
                let sh = Arc::clone(&self.shared);
                let what = format!("s3://{}/{}", sh.bucket, sh.key);
                let cleanup = if self.done {
                    match delete_object(&sh.client, &sh.bucket, &sh.key) {
                        Ok(()) => format!("deleted {what}"),
                        Err(e) => format!("could not delete {what}: {e}"),
                    }
                } else {
                    match self.abort_now() {
                        Ok(()) => format!("aborted multipart upload {} of {what}", sh.upload_id),
                        Err(e) => format!(
                            "could not abort multipart upload {} of {what}: {e}",
                            sh.upload_id
                        ),
                    }
                };
                Err(Error::Aborted {
                    cause: Box::new(cause),
                    cleanup,
                })
            }
        }
    }

    fn try_finish(&mut self) -> Result<ObjectInfo> {
        self.check()?;
        // S3 wants at least one part; an empty object is one empty part.
        if !self.buf.is_empty() || self.next_part == 1 {
            self.submit()?;
        }
        self.wait_for(|s| s.in_flight == 0)?;
        self.check()?;
        let parts: Vec<(u32, String)> = self
            .shared
            .state
            .lock()
            .map_err(|_| Error::Transport("a part upload thread panicked".into()))?
            .etags
            .iter()
            .map(|(n, e)| (*n, e.clone()))
            .collect();
        let expected = self.next_part - 1;
        if parts.len() as u32 != expected {
            return Err(Error::Transport(format!(
                "s3://{}/{}: {} of {expected} parts uploaded",
                self.shared.bucket,
                self.shared.key,
                parts.len()
            )));
        }
        let sh = &self.shared;
        complete_multipart_upload(&sh.client, &sh.bucket, &sh.key, &sh.upload_id, &parts)?;
        tracing::info!(
            bucket = sh.bucket,
            key = sh.key,
            parts = expected,
            "completed multipart upload"
        );
        // From here the object exists: a failure below must not abort (nothing to abort) but
        // is still an error for the caller to clean up after.
        self.done = true;
        let info = head_object(&sh.client, &sh.bucket, &sh.key)?;
        if info.size != self.written {
            return Err(malformed(
                "HeadObject",
                &sh.bucket,
                &sh.key,
                format!("size {} after writing {} bytes", info.size, self.written),
            ));
        }
        self.report();
        Ok(info)
    }

    /// Aborts the upload (after the parts in flight end): S3 drops its parts.
    pub fn abort(mut self) -> Result<()> {
        self.abort_now()
    }

    fn abort_now(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        self.failed = true;
        self.shared.stop.store(true, Ordering::Relaxed);
        self.drain();
        let sh = &self.shared;
        let r = abort_multipart_upload(&sh.client, &sh.bucket, &sh.key, &sh.upload_id);
        match &r {
            Ok(()) => tracing::info!(upload_id = sh.upload_id, "aborted multipart upload"),
            Err(e) => tracing::warn!(upload_id = sh.upload_id, "could not abort: {e}"),
        }
        r
    }
}

/// A part's thread: uploads unless the upload is being given up, records the ETag or error.
fn upload_in_background(shared: &Shared, number: u32, data: &[u8]) {
    let result = if shared.stop.load(Ordering::Relaxed) {
        None
    } else {
        Some(upload_part(
            &shared.client,
            &shared.bucket,
            &shared.key,
            &shared.upload_id,
            number,
            data,
        ))
    };
    if let Ok(mut s) = shared.state.lock() {
        s.in_flight -= 1;
        match result {
            Some(Ok(etag)) => {
                s.etags.insert(number, etag);
                shared
                    .uploaded
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            Some(Err(e)) => {
                s.failures += 1;
                if s.error.is_none() && !shared.stop.load(Ordering::Relaxed) {
                    s.error = Some(e);
                } else {
                    tracing::debug!(part = number, "part failed after another: {e}");
                }
                shared.stop.store(true, Ordering::Relaxed);
            }
            None => {}
        }
    }
    shared.changed.notify_all();
}

impl Write for MultipartWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_bytes(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    /// Does nothing: parts go out when full, the last one on [`MultipartWriter::finish`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MultipartWriter<'_> {
    fn drop(&mut self) {
        let _ = self.abort_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn s3_urls_split_into_bucket_and_prefix() {
        let ok = |u: &str| parse_s3_url(u).unwrap();
        assert_eq!(
            ok("s3://bucket/prefix/"),
            ("bucket".into(), "prefix/".into())
        );
        assert_eq!(ok("s3://bucket"), ("bucket".into(), String::new()));
        assert_eq!(ok("s3://bucket/"), ("bucket".into(), String::new()));
        assert_eq!(
            ok("S3://my.bucket-1/a/b c"),
            ("my.bucket-1".into(), "a/b c".into())
        );
        let err = |u: &str| parse_s3_url(u).unwrap_err().to_string();
        assert!(err("https://bucket/x").contains("must start with s3://"));
        assert!(err("s3:///x").contains("no bucket name"));
        assert!(err("s3://").contains("no bucket name"));
        assert!(
            err("s3://My-Bucket/x").contains("lower case"),
            "{}",
            err("s3://My-Bucket/x")
        );
        assert!(err("s3://ab/x").contains("3 to 63"));
        assert!(err("s3://-abc/x").contains("start and end"));
        assert!(err("s3://a..b/x").contains("two dots"));
        assert!(err("s3://a_b/x").contains("letters, digits"));
        assert!(err("s3://192.168.1.1/x").contains("IP address"));
        assert!(err("s3://bucket/a\nb").contains("control"));
        assert!(err(&format!("s3://bucket/{}", "x".repeat(1000))).contains("prefix"));
    }

    #[test]
    fn keys_join_prefixes_as_folders() {
        assert_eq!(object_key("", "a.vmdk"), "a.vmdk");
        assert_eq!(object_key("p/", "a.vmdk"), "p/a.vmdk");
        assert_eq!(object_key("p", "a.vmdk"), "p/a.vmdk");
    }

    #[test]
    fn keys_are_encoded_as_s3_wants() {
        assert_eq!(encode_key("a/b c+d=é~_.-"), "a/b%20c%2Bd%3D%C3%A9~_.-");
        assert_eq!(encode_key("x?y#z%"), "x%3Fy%23z%25");
    }

    #[test]
    fn urls_are_path_style_with_an_endpoint_and_virtual_hosted_without() {
        let creds = crate::config::Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "s".into(),
            session_token: None,
        };
        let aws = AwsConfig::new("eu-west-1", creds);
        assert_eq!(
            object_url(&aws, "bucket", "a b/c", "?uploads"),
            "https://bucket.s3.eu-west-1.amazonaws.com/a%20b/c?uploads"
        );
        assert_eq!(
            object_url(&aws, "my.bucket", "k", ""),
            "https://s3.eu-west-1.amazonaws.com/my.bucket/k"
        );
        let local = aws.with_endpoint("http://127.0.0.1:9000/");
        assert_eq!(
            object_url(&local, "bucket", "k/x.vmdk", ""),
            "http://127.0.0.1:9000/bucket/k/x.vmdk"
        );
    }

    #[test]
    fn part_sizes_stay_in_limits_and_grow_for_big_objects() {
        assert_eq!(part_size_for(1, None).unwrap(), MIN_PART_SIZE);
        assert_eq!(part_size_for(u64::MAX, None).unwrap(), MAX_PART_SIZE);
        assert_eq!(
            part_size_for(DEFAULT_PART_SIZE, Some(1 << 30)).unwrap(),
            DEFAULT_PART_SIZE
        );
        // 2 TiB in 10000 parts needs parts of just over 209 MiB.
        let p = part_size_for(DEFAULT_PART_SIZE, Some(2 << 40)).unwrap();
        assert!(
            p * u64::from(MAX_PARTS) >= 2 << 40 && p % (1 << 20) == 0,
            "{p}"
        );
        assert!(part_size_for(DEFAULT_PART_SIZE, Some(MAX_OBJECT_SIZE + 1)).is_err());
    }

    #[test]
    fn error_bodies_become_api_errors_naming_the_object() {
        let resp = Response {
            status: 404,
            headers: vec![],
            body: b"<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>nob</BucketName></Error>".to_vec(),
        };
        let e = s3_error(&resp, "CreateMultipartUpload", "nob", "k");
        assert_eq!(
            e.to_string(),
            "s3 CreateMultipartUpload s3://nob/k: NoSuchBucket: The specified bucket does not exist"
        );
        let head = Response {
            status: 404,
            headers: vec![],
            body: vec![],
        };
        let e = s3_error(&head, "HeadObject", "b", "k");
        assert!(
            matches!(&e, Error::Api { code, .. } if code == "NotFound"),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn encoded_keys_decode_back_and_use_only_safe_bytes(key in "\\PC{1,64}") {
            let enc = encode_key(&key);
            prop_assert!(enc.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~/%".contains(&b)));
            // Decode %XX back.
            let mut out = Vec::new();
            let b = enc.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(h, 16).unwrap());
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            prop_assert_eq!(out, key.as_bytes());
        }

        #[test]
        fn valid_bucket_names_parse_and_keep_the_prefix(
            bucket in "[a-z0-9][a-z0-9-]{1,40}[a-z0-9]",
            prefix in "[a-zA-Z0-9/ _.-]{0,40}",
        ) {
            let (b, p) = parse_s3_url(&format!("s3://{bucket}/{prefix}")).unwrap();
            prop_assert_eq!(b, bucket);
            prop_assert_eq!(p, prefix);
        }
    }
}
