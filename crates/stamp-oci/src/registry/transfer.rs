//! Blob transfers: existence checks, streaming downloads with resume, uploads with
//! cross-repository mounts.

use std::io::Read;

use sha2::{Digest as _, Sha256};

use super::client::{Client, ReqBody, Target, encode_query, registry_error};
use super::{BlobSink, BlobSource, PushOutcome};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::Reference;

/// The read buffer of a blob download.
const DOWNLOAD_BUFFER: usize = 128 * 1024;

/// Returns true if and only if a failed step may succeed when the whole push is retried.
fn push_retryable(e: &Error) -> bool {
    matches!(e, Error::Registry { status, .. } if *status == 0 || *status >= 500 || *status == 429)
}

impl Client {
    /// Returns true if and only if the repository of `r` has the blob `digest`.
    pub fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool> {
        let scope = format!("repository:{}:pull", r.repository);
        self.head_blob(r, digest, scope)
    }

    fn head_blob(&self, r: &Reference, digest: &Digest, scope: String) -> Result<bool> {
        let base = self.base_url(&r.registry)?;
        let url = format!("{base}/v2/{}/blobs/{digest}", r.repository);
        let t = Target {
            registry: &r.registry,
            scopes: vec![scope],
        };
        let mut resp = self.send(&t, "HEAD", &url, &[], &ReqBody::Empty, true)?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(registry_error("HEAD", &url, &mut resp)),
        }
    }

    /// Streams the blob `digest` (of `size` bytes) of `r`'s repository into `out`, hashing it
    /// on the way and calling `progress` with the bytes received so far.
    ///
    /// Content that does not hash to `digest` (or is longer than `size`) is
    /// [`Error::DigestMismatch`]; `out` then holds unverified bytes and must be discarded. When
    /// the connection fails mid-body, the download resumes with a `Range` request if the
    /// registry honours it, else starts over after [`BlobSink::reset`].
    pub fn get_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        out: &mut dyn BlobSink,
        progress: &dyn Fn(u64),
    ) -> Result<()> {
        let base = self.base_url(&r.registry)?;
        let url = format!("{base}/v2/{}/blobs/{digest}", r.repository);
        let t = Target {
            registry: &r.registry,
            scopes: vec![format!("repository:{}:pull", r.repository)],
        };
        let sink_err = |op: &'static str| {
            move |e: std::io::Error| Error::BlobIo {
                op,
                digest: *digest,
                source: e,
            }
        };
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut attempt = 0;
        let mut buf = vec![0u8; DOWNLOAD_BUFFER];
        out.reset().map_err(sink_err("reset the output of"))?;
        'attempts: loop {
            let headers = if received > 0 {
                vec![("Range", format!("bytes={received}-"))]
            } else {
                Vec::new()
            };
            let mut resp = self.send(&t, "GET", &url, &headers, &ReqBody::Empty, true)?;
            match resp.status().as_u16() {
                200 => {
                    if received > 0 {
                        tracing::debug!("{url}: no range support; starting over");
                        out.reset().map_err(sink_err("reset the output of"))?;
                        hasher = Sha256::new();
                        received = 0;
                    }
                }
                206 => {
                    let start_ok = resp
                        .headers()
                        .get("content-range")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("bytes "))
                        .and_then(|v| v.split('-').next())
                        .and_then(|v| v.parse::<u64>().ok())
                        == Some(received);
                    if received == 0 || !start_ok {
                        return Err(Error::Registry {
                            method: "GET",
                            url,
                            status: 206,
                            detail: format!(
                                "partial content that does not start at byte {received}"
                            ),
                        });
                    }
                }
                404 => {
                    return Err(Error::NotFound(format!(
                        "{}/{}@{digest}",
                        r.registry, r.repository
                    )));
                }
                _ => return Err(registry_error("GET", &url, &mut resp)),
            }
            let mut reader = resp.body_mut().as_reader();
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break 'attempts,
                    Ok(n) => {
                        let chunk = &buf[..n];
                        hasher.update(chunk);
                        received += n as u64;
                        if received > size {
                            // Never store more than was asked for.
                            return Err(Error::DigestMismatch {
                                source_name: url,
                                expected: *digest,
                                actual: Digest::from_bytes(hasher.finalize().into()),
                                size: received,
                            });
                        }
                        out.write_all(chunk).map_err(sink_err("write"))?;
                        progress(received);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        if attempt >= self.opts.retries {
                            return Err(Error::Registry {
                                method: "GET",
                                url,
                                status: 0,
                                detail: format!("connection failed after {received} bytes: {e}"),
                            });
                        }
                        tracing::debug!("{url}: {e} after {received} bytes; resuming");
                        self.backoff(attempt);
                        attempt += 1;
                        continue 'attempts;
                    }
                }
            }
        }
        out.flush().map_err(sink_err("flush"))?;
        let actual = Digest::from_bytes(hasher.finalize().into());
        if actual != *digest || received != size {
            return Err(Error::DigestMismatch {
                source_name: url,
                expected: *digest,
                actual,
                size: received,
            });
        }
        Ok(())
    }

    /// Pushes the blob `digest` (of `size` bytes) to `r`'s repository, unless it is there
    /// already.
    ///
    /// With `mount_from` (another repository of the same registry that has the blob), first
    /// asks the registry to mount it from there. Otherwise uploads it monolithically (POST then
    /// PUT), streaming from `source`, which is re-opened when the upload is retried; `progress`
    /// is called with the bytes sent so far.
    pub fn push_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
        mount_from: Option<&str>,
        progress: &dyn Fn(u64),
    ) -> Result<PushOutcome> {
        let push_scope = format!("repository:{}:pull,push", r.repository);
        if self.head_blob(r, digest, push_scope.clone())? {
            return Ok(PushOutcome::Exists);
        }
        let mount_from = mount_from.filter(|m| *m != r.repository);
        let mut scopes = vec![push_scope];
        if let Some(m) = mount_from {
            scopes.push(format!("repository:{m}:pull"));
        }
        let t = Target {
            registry: &r.registry,
            scopes,
        };
        let base = self.base_url(&r.registry)?;
        let mut attempt = 0;
        loop {
            match self.try_push(&t, &base, r, digest, size, source, mount_from, progress) {
                Err(e) if push_retryable(&e) && attempt < self.opts.retries => {
                    tracing::debug!("push of {digest}: {e}; retrying");
                    self.backoff(attempt);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One try at a push: start (or mount), then upload.
    #[allow(clippy::too_many_arguments)]
    fn try_push(
        &self,
        t: &Target<'_>,
        base: &str,
        r: &Reference,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
        mount_from: Option<&str>,
        progress: &dyn Fn(u64),
    ) -> Result<PushOutcome> {
        let mut url = format!("{base}/v2/{}/blobs/uploads/", r.repository);
        if let Some(m) = mount_from {
            url.push_str(&format!(
                "?mount={}&from={}",
                encode_query(&digest.to_string()),
                encode_query(m)
            ));
        }
        let mut resp = self.send(t, "POST", &url, &[], &ReqBody::Empty, true)?;
        match resp.status().as_u16() {
            201 if mount_from.is_some() => return Ok(PushOutcome::Mounted),
            202 => {}
            _ => return Err(registry_error("POST", &url, &mut resp)),
        }
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| Error::Registry {
                method: "POST",
                url: url.clone(),
                status: 202,
                detail: "no Location for the upload".to_string(),
            })?;
        let mut put_url = resolve_location(base, &url, &location);
        put_url.push(if put_url.contains('?') { '&' } else { '?' });
        put_url.push_str(&format!("digest={}", encode_query(&digest.to_string())));
        // Not retried by itself: a failed PUT may have consumed the upload session, so the whole
        // push starts over.
        let mut resp = self.send(
            t,
            "PUT",
            &put_url,
            &[],
            &ReqBody::Source(source, digest, size, progress),
            false,
        )?;
        if resp.status().as_u16() != 201 {
            return Err(registry_error("PUT", &put_url, &mut resp));
        }
        if let Some(sent) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok())
        {
            if sent != *digest {
                return Err(Error::DigestMismatch {
                    source_name: put_url,
                    expected: *digest,
                    actual: sent,
                    size,
                });
            }
        }
        Ok(PushOutcome::Uploaded)
    }
}

/// The URL a `Location` header names: absolute as it is, else relative to the request URL
/// (query parameters kept either way).
fn resolve_location(base: &str, request_url: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        let path = request_url.split('?').next().unwrap_or(request_url);
        let dir = path.rsplit_once('/').map_or(path, |(d, _)| d);
        format!("{dir}/{location}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve() {
        let base = "http://h:1";
        let req = "http://h:1/v2/a/blobs/uploads/";
        assert_eq!(
            resolve_location(base, req, "/v2/a/blobs/uploads/u?_state=x"),
            "http://h:1/v2/a/blobs/uploads/u?_state=x"
        );
        assert_eq!(
            resolve_location(base, req, "https://s3/x?sig=1"),
            "https://s3/x?sig=1"
        );
        assert_eq!(
            resolve_location(base, req, "u?s=1"),
            "http://h:1/v2/a/blobs/uploads/u?s=1"
        );
    }
}
