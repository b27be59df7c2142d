//! Objects: where source disks come from and exports go. A local directory (`DIR/BUCKET/KEY`,
//! the default) or an S3-compatible store (`s3://BUCKET/PREFIX`), behind [`ObjectStore`]; and
//! HTTP(S) URL sources, downloaded into the scratch directory ([`fetch_url`]).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use stamp_aws::config::AwsConfig;
use stamp_aws::http::Client;
use stamp_aws::s3;

use crate::{Error, Result};

/// Longest key accepted (S3's limit).
pub const MAX_KEY_LEN: usize = 1024;

/// Bytes read or written at a time when moving objects.
const CHUNK: usize = 8 << 20;

/// Where objects live. Every method is blocking.
pub trait ObjectStore: Send + Sync {
    /// A description for logs and errors (`/srv/objects`, `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// The size of `bucket/key`, or `None` if there is no such object.
    fn head(&self, bucket: &str, key: &str) -> Result<Option<u64>>;

    /// A local file to read `bucket/key` from: the file itself for a local directory, a
    /// download into `scratch` for S3 (removed when the [`Fetched`] drops). Objects larger than
    /// `limit` bytes are refused; `cancel` stops a download (nothing is left behind).
    fn fetch(
        &self,
        bucket: &str,
        key: &str,
        scratch: &Path,
        limit: u64,
        cancel: &AtomicBool,
    ) -> Result<Fetched>;

    /// Stores the file at `path` as `bucket/key` (written under a temporary name and renamed
    /// for a directory, a multipart upload for S3); returns its size. Nothing is left at
    /// `bucket/key` if it fails or is cancelled.
    fn put_file(&self, bucket: &str, key: &str, path: &Path, cancel: &AtomicBool) -> Result<u64>;

    /// Removes `bucket/key` (no error if it does not exist).
    fn delete(&self, bucket: &str, key: &str) -> Result<()>;

    /// The file `bucket/key` is (or would be) for a store on the local filesystem, so that a
    /// writer can make it in place; `None` for remote stores.
    fn local_path(&self, bucket: &str, key: &str) -> Result<Option<PathBuf>> {
        let _ = (bucket, key);
        Ok(None)
    }
}

/// A local file holding an object: either the object itself or a download that is removed on
/// drop.
#[derive(Debug)]
pub struct Fetched {
    path: PathBuf,
    temporary: bool,
    size: u64,
}

impl Fetched {
    /// The object in place (not removed on drop).
    pub fn in_place(path: PathBuf, size: u64) -> Fetched {
        Fetched {
            path,
            temporary: false,
            size,
        }
    }

    /// A download owned by this value (removed on drop).
    pub fn download(path: PathBuf, size: u64) -> Fetched {
        Fetched {
            path,
            temporary: true,
            size,
        }
    }

    /// The file to read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether it is a download (removed on drop) rather than the object in place.
    pub fn is_download(&self) -> bool {
        self.temporary
    }

    /// Bytes of scratch space it takes (0 for an object read in place).
    pub fn scratch_bytes(&self) -> u64 {
        if self.temporary { self.size } else { 0 }
    }
}

impl Drop for Fetched {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A file being written that is removed unless kept.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn new(dir: &Path, stem: &str) -> Result<(TempFile, File)> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let path = dir.join(format!(".{stem}.{:016x}.part", rand::random::<u64>()));
        let f = File::create_new(&path).map_err(|e| Error::io("create", &path, e))?;
        Ok((TempFile { path, keep: false }, f))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Checks an object key: not empty, at most [`MAX_KEY_LEN`] bytes, relative, no `.`/`..` or
/// empty components, no NUL or backslash.
pub fn check_key(key: &str) -> Result<()> {
    let bad = |why: &str| Error::Object {
        location: key.chars().take(200).collect(),
        detail: format!("not an acceptable object key: {why}"),
    };
    if key.is_empty() {
        return Err(bad("empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(bad(&format!("longer than {MAX_KEY_LEN} bytes")));
    }
    if key.starts_with('/') {
        return Err(bad("absolute"));
    }
    if key.contains('\0') || key.contains('\\') {
        return Err(bad("NUL or backslash"));
    }
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("empty, '.' or '..' component"));
    }
    Ok(())
}

/// Checks a bucket name with S3's rules.
pub fn check_bucket(bucket: &str) -> Result<()> {
    s3::check_bucket_name(bucket).map_err(|why| Error::Object {
        location: bucket.chars().take(100).collect(),
        detail: format!("not a bucket name: {why}"),
    })
}

fn location(bucket: &str, key: &str) -> String {
    format!("{bucket}/{key}")
}

fn check_cancel(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}

/// Copies `r` into `w` until the end, at most `limit` bytes, checking `cancel` between chunks;
/// returns the bytes copied.
fn copy_bounded(
    r: &mut dyn Read,
    w: &mut File,
    out: &Path,
    limit: u64,
    cancel: &AtomicBool,
    what: &str,
) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        check_cancel(cancel)?;
        let n = r.read(&mut buf).map_err(|e| Error::Object {
            location: what.to_string(),
            detail: format!("read after {total} bytes: {e}"),
        })?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total > limit {
            return Err(Error::Object {
                location: what.to_string(),
                detail: format!("larger than the limit of {limit} bytes"),
            });
        }
        w.write_all(&buf[..n])
            .map_err(|e| Error::io("write", out, e))?;
    }
}

/// Objects in a local directory: `DIR/BUCKET/KEY`.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// The store rooted at `root` (created if missing).
    pub fn new(root: &Path) -> Result<LocalDir> {
        std::fs::create_dir_all(root).map_err(|e| Error::io("create directory", root, e))?;
        Ok(LocalDir {
            root: root.to_path_buf(),
        })
    }

    /// The file of `bucket/key`, after checking both.
    pub fn path(&self, bucket: &str, key: &str) -> Result<PathBuf> {
        check_bucket(bucket)?;
        check_key(key)?;
        let mut p = self.root.join(bucket);
        for c in Path::new(key).components() {
            match c {
                Component::Normal(s) => p.push(s),
                _ => {
                    return Err(Error::Object {
                        location: location(bucket, key),
                        detail: "not an acceptable object key".into(),
                    });
                }
            }
        }
        Ok(p)
    }
}

impl ObjectStore for LocalDir {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn head(&self, bucket: &str, key: &str) -> Result<Option<u64>> {
        let p = self.path(bucket, key)?;
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat", &p, e)),
        }
    }

    fn fetch(
        &self,
        bucket: &str,
        key: &str,
        _scratch: &Path,
        limit: u64,
        cancel: &AtomicBool,
    ) -> Result<Fetched> {
        check_cancel(cancel)?;
        let size = self.head(bucket, key)?.ok_or_else(|| Error::Object {
            location: location(bucket, key),
            detail: "no such object".into(),
        })?;
        if size > limit {
            return Err(Error::Object {
                location: location(bucket, key),
                detail: format!("{size} bytes, larger than the limit of {limit}"),
            });
        }
        Ok(Fetched::in_place(self.path(bucket, key)?, size))
    }

    fn put_file(&self, bucket: &str, key: &str, path: &Path, cancel: &AtomicBool) -> Result<u64> {
        let dst = self.path(bucket, key)?;
        let dir = dst.parent().unwrap_or(&self.root).to_path_buf();
        let (mut tmp, mut out) = TempFile::new(&dir, "put")?;
        let mut src = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let n = copy_bounded(
            &mut src,
            &mut out,
            &tmp.path,
            u64::MAX,
            cancel,
            &path.display().to_string(),
        )?;
        out.sync_all()
            .map_err(|e| Error::io("sync", &tmp.path, e))?;
        check_cancel(cancel)?;
        std::fs::rename(&tmp.path, &dst).map_err(|e| Error::io("rename into", &dst, e))?;
        tmp.keep = true;
        Ok(n)
    }

    fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        let p = self.path(bucket, key)?;
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &p, e)),
        }
    }

    fn local_path(&self, bucket: &str, key: &str) -> Result<Option<PathBuf>> {
        let p = self.path(bucket, key)?;
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io("create directory", d, e))?;
        }
        Ok(Some(p))
    }
}

/// Objects in an S3-compatible store: `bucket/key` is S3's bucket and key.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
}

impl S3Store {
    /// A store speaking to the S3 endpoint of `config`.
    pub fn new(config: &AwsConfig) -> S3Store {
        S3Store {
            client: Client::new(config),
        }
    }
}

fn is_not_found(e: &stamp_aws::Error) -> bool {
    matches!(e, stamp_aws::Error::Api { code, .. } if code == "NotFound" || code == "NoSuchKey" || code == "404")
}

impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        format!("s3 at {}", self.client.config().endpoint("s3"))
    }

    fn head(&self, bucket: &str, key: &str) -> Result<Option<u64>> {
        check_bucket(bucket)?;
        check_key(key)?;
        match s3::head_object(&self.client, bucket, key) {
            Ok(info) => Ok(Some(info.size)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn fetch(
        &self,
        bucket: &str,
        key: &str,
        scratch: &Path,
        limit: u64,
        cancel: &AtomicBool,
    ) -> Result<Fetched> {
        let size = self.head(bucket, key)?.ok_or_else(|| Error::Object {
            location: format!("s3://{bucket}/{key}"),
            detail: "no such object".into(),
        })?;
        if size > limit {
            return Err(Error::Object {
                location: format!("s3://{bucket}/{key}"),
                detail: format!("{size} bytes, larger than the limit of {limit}"),
            });
        }
        let (mut tmp, mut out) = TempFile::new(scratch, "fetch")?;
        let mut pos = 0u64;
        while pos < size {
            check_cancel(cancel)?;
            let len = (size - pos).min(CHUNK as u64);
            let data = s3::get_object_range(&self.client, bucket, key, pos, len)?;
            if data.len() as u64 != len {
                return Err(Error::Object {
                    location: format!("s3://{bucket}/{key}"),
                    detail: format!(
                        "{} bytes at offset {pos} where {len} were asked (the object changed?)",
                        data.len()
                    ),
                });
            }
            out.write_all(&data)
                .map_err(|e| Error::io("write", &tmp.path, e))?;
            pos += len;
        }
        tmp.keep = true;
        Ok(Fetched::download(tmp.path.clone(), size))
    }

    fn put_file(&self, bucket: &str, key: &str, path: &Path, cancel: &AtomicBool) -> Result<u64> {
        check_bucket(bucket)?;
        check_key(key)?;
        let size = std::fs::metadata(path)
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        let progress = |_: &s3::PartProgress| {};
        let opts = s3::MultipartOptions {
            size_hint: Some(size),
            ..Default::default()
        };
        let mut w =
            s3::MultipartWriter::create(&self.client, bucket, key, &opts, &progress, cancel)
                .map_err(cancelled_or)?;
        let mut src = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = src.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
            if n == 0 {
                break;
            }
            w.write_bytes(&buf[..n]).map_err(cancelled_or)?;
        }
        Ok(w.finish().map_err(cancelled_or)?.size)
    }

    fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        check_bucket(bucket)?;
        check_key(key)?;
        Ok(s3::delete_object(&self.client, bucket, key)?)
    }
}

fn cancelled_or(e: stamp_aws::Error) -> Error {
    match e {
        stamp_aws::Error::Interrupted => Error::Cancelled,
        e => e.into(),
    }
}

/// Which hosts URL sources may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UrlPolicy {
    /// Only hosts with public addresses, and no redirects: a tenant cannot make the service
    /// fetch from loopback, private, link-local (cloud metadata) or unique-local addresses.
    #[default]
    PublicOnly,
    /// Any host, redirects followed (tests; private clouds whose disks are on internal hosts).
    Any,
}

/// Whether `ip` is an address a tenant may make the service fetch from.
pub fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            !(v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.is_multicast()
                || v.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xC0) == 64)
                || o[0] >= 240)
        }
        IpAddr::V6(v) => {
            if let Some(v4) = v.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s0 = v.segments()[0];
            !(v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (s0 & 0xfe00) == 0xfc00
                || (s0 & 0xffc0) == 0xfe80)
        }
    }
}

/// The host and port of an `http://` or `https://` URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let lower = url.to_ascii_lowercase();
    let (rest, port) = if let Some(r) = lower.strip_prefix("https://") {
        (r, 443)
    } else {
        (lower.strip_prefix("http://")?, 80)
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => port,
        };
        return Some((host.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((hostport.to_string(), port)),
    }
}

/// Refuses a URL that is not `http(s)://`, or (with [`UrlPolicy::PublicOnly`]) whose host
/// resolves to an address that is not public.
pub fn check_url(url: &str, policy: UrlPolicy) -> Result<()> {
    use std::net::ToSocketAddrs;
    let shown: String = url
        .split('?')
        .next()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    let bad = |detail: String| Error::Object {
        location: shown.clone(),
        detail,
    };
    let (host, port) =
        host_port(url).ok_or_else(|| bad("not an http:// or https:// URL with a host".into()))?;
    if host.is_empty() {
        return Err(bad("no host".into()));
    }
    if policy == UrlPolicy::Any {
        return Ok(());
    }
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| bad(format!("cannot resolve {host}: {e}")))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !is_public(a.ip())) {
        return Err(bad(format!(
            "{host} is not a public address; the service does not fetch from it"
        )));
    }
    Ok(())
}

/// Downloads `url` (`http://` or `https://`) into a new file in `scratch`, refusing bodies over
/// `limit` bytes and hosts `policy` does not allow; the file is removed when the result drops,
/// or at once on failure or cancellation.
pub fn fetch_url(
    url: &str,
    scratch: &Path,
    limit: u64,
    policy: UrlPolicy,
    cancel: &AtomicBool,
) -> Result<Fetched> {
    let (mut tmp, mut out) = TempFile::new(scratch, "url")?;
    let n = download_into(url, &mut out, &tmp.path, limit, policy, cancel)?;
    tmp.keep = true;
    Ok(Fetched::download(tmp.path.clone(), n))
}

/// Appends the body of `url` to `out` (at most `limit` bytes); returns the bytes written.
pub(crate) fn download_into(
    url: &str,
    out: &mut File,
    out_path: &Path,
    limit: u64,
    policy: UrlPolicy,
    cancel: &AtomicBool,
) -> Result<u64> {
    let shown: String = url
        .split('?')
        .next()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    check_url(url, policy)?;
    check_cancel(cancel)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .max_redirects(if policy == UrlPolicy::Any { 10 } else { 0 })
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .timeout_recv_response(Some(std::time::Duration::from_secs(120)))
        // ureq has no per-read idle timeout: a whole-body budget keeps a source that stalls
        // from holding a worker forever (6 h: a 1 TiB source at 50 MiB/s).
        .timeout_recv_body(Some(std::time::Duration::from_secs(6 * 3600)))
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| Error::Object {
        location: shown.clone(),
        detail: e.to_string(),
    })?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(Error::Object {
            location: shown,
            detail: format!("HTTP status {status}"),
        });
    }
    if let Some(len) = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        && len > limit
    {
        return Err(Error::Object {
            location: shown,
            detail: format!("{len} bytes, larger than the limit of {limit}"),
        });
    }
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    copy_bounded(&mut reader, out, out_path, limit, cancel, &shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_escape_the_directory_are_refused() {
        for k in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "a\\b",
            "a\0",
        ] {
            assert!(check_key(k).is_err(), "{k:?}");
        }
        assert!(check_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(check_key("disks/a.vmdk").is_ok());
    }

    #[test]
    fn urls_to_private_addresses_are_refused_unless_allowed() {
        for u in [
            "http://127.0.0.1:8080/x",
            "http://169.254.169.254/latest/meta-data/",
            "https://10.1.2.3/d.vmdk",
            "http://[::1]:80/x",
            "http://[fd00::1]/x",
            "http://user@192.168.1.1/x",
            "http://100.64.0.1/x",
            "http://localhost/x",
            "ftp://example.com/x",
            "http:///x",
        ] {
            assert!(check_url(u, UrlPolicy::PublicOnly).is_err(), "{u}");
        }
        assert!(check_url("http://127.0.0.1:8080/x", UrlPolicy::Any).is_ok());
        assert!(check_url("ftp://h/x", UrlPolicy::Any).is_err());
        assert!(is_public("8.8.8.8".parse().unwrap()));
        assert!(is_public("2001:4860::8888".parse().unwrap()));
        assert!(!is_public("::ffff:127.0.0.1".parse().unwrap()));
        assert_eq!(
            host_port("https://h.example:8443/a?b"),
            Some(("h.example".into(), 8443))
        );
    }

    #[test]
    fn a_local_directory_puts_fetches_and_deletes() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalDir::new(&d.path().join("objects")).unwrap();
        let src = d.path().join("src");
        std::fs::write(&src, b"hello").unwrap();
        let cancel = AtomicBool::new(false);
        assert_eq!(store.head("bucket", "a/b").unwrap(), None);
        assert_eq!(store.put_file("bucket", "a/b", &src, &cancel).unwrap(), 5);
        assert_eq!(store.head("bucket", "a/b").unwrap(), Some(5));
        let f = store
            .fetch("bucket", "a/b", d.path(), 100, &cancel)
            .unwrap();
        assert_eq!(std::fs::read(f.path()).unwrap(), b"hello");
        assert_eq!(f.scratch_bytes(), 0);
        assert!(store.fetch("bucket", "a/b", d.path(), 4, &cancel).is_err());
        store.delete("bucket", "a/b").unwrap();
        store.delete("bucket", "a/b").unwrap();
        assert_eq!(store.head("bucket", "a/b").unwrap(), None);
        let names: Vec<_> = std::fs::read_dir(d.path().join("objects/bucket/a"))
            .unwrap()
            .collect();
        assert!(names.is_empty(), "no temporary file left");
        assert!(store.head("bucket", "../x").is_err());
    }
}
