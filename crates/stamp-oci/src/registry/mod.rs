//! A blocking client for the OCI distribution API (Docker Registry HTTP API v2).
//!
//! It pulls and pushes manifests and blobs, streaming blobs with bounded memory and verifying
//! every digest; it speaks the anonymous and authenticated bearer-token flow and Basic auth,
//! finds credentials where podman and Docker keep them, retries with backoff on 5xx, 429 and
//! connection failures, and resumes interrupted blob downloads with `Range` where it can.
//!
//! It knows nothing of the local store: blobs are written into any [`BlobSink`] and pushed from
//! any [`BlobSource`].
//!
//! ```no_run
//! use stamp_oci::Reference;
//! use stamp_oci::registry::{Client, RegistryOptions};
//!
//! # fn main() -> stamp_oci::Result<()> {
//! let client = Client::new(RegistryOptions::default())?;
//! let r: Reference = "localhost:5000/debian:12".parse()?;
//! let manifest = client.get_manifest(&r)?;
//! println!("{} is {}", r, manifest.digest);
//! // The first layer's descriptor (a real caller parses the manifest with oci-spec).
//! let v: serde_json::Value = serde_json::from_slice(&manifest.bytes)
//!     .map_err(|e| stamp_oci::Error::malformed(r.to_string(), "manifest", e.to_string()))?;
//! let layer: stamp_oci::Digest = v["layers"][0]["digest"].as_str().unwrap_or("").parse()?;
//! let size = v["layers"][0]["size"].as_u64().unwrap_or(0);
//! let mut out = std::fs::File::create("layer.tar")
//!     .map_err(|e| stamp_oci::Error::io("create", "layer.tar", e))?;
//! client.get_blob(&r, &layer, size, &mut out, &|bytes| eprintln!("{bytes} of {size} bytes"))?;
//! # Ok(())
//! # }
//! ```

mod auth;
mod client;
mod transfer;

use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use client::Client;

use crate::digest::Digest;

/// Retries after the first attempt, by default: three, which rides out a registry restart or a
/// load balancer hiccup without making a dead registry take long to report.
pub const DEFAULT_RETRIES: u32 = 3;
/// The first backoff, doubled at each retry, with up to as much again of random jitter so that
/// parallel transfers do not retry in lockstep.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(200);
/// The largest manifest or index accepted: the limit containerd and the distribution registry use.
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// How a [`Client`] connects and authenticates.
#[derive(Clone)]
pub struct RegistryOptions {
    /// Verify TLS certificates and refuse plain HTTP (except to localhost). `false` is podman's
    /// `--tls-verify=false`: HTTPS without verification, falling back to HTTP. By default, true.
    pub tls_verify: bool,
    /// A directory of `*.crt` files trusted as CA roots in addition to the public ones (podman's
    /// and Docker's `--cert-dir`). By default, none.
    pub cert_dir: Option<PathBuf>,
    /// Explicit credentials (`--creds user:pass`); they win over every file. By default, none.
    pub creds: Option<(String, String)>,
    /// The one credentials file to read instead of the usual ones (`$REGISTRY_AUTH_FILE`,
    /// `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`,
    /// `~/.docker/config.json`). By default, none.
    pub auth_file: Option<PathBuf>,
    /// How many times a failed request is retried. By default, [`DEFAULT_RETRIES`].
    pub retries: u32,
    /// The first retry's delay. By default, [`DEFAULT_BACKOFF`].
    pub backoff: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            tls_verify: true,
            cert_dir: None,
            creds: None,
            auth_file: None,
            retries: DEFAULT_RETRIES,
            backoff: DEFAULT_BACKOFF,
        }
    }
}

impl std::fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("tls_verify", &self.tls_verify)
            .field("cert_dir", &self.cert_dir)
            .field(
                "creds",
                &self.creds.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .field("auth_file", &self.auth_file)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .finish()
    }
}

/// A manifest or index as the registry sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The exact bytes (what the digest is of).
    pub bytes: Vec<u8>,
    /// Its media type: one of the OCI or Docker manifest or index types in [`crate::media`].
    pub media_type: String,
    /// The digest of `bytes`.
    pub digest: Digest,
}

/// What [`Client::push_blob`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The repository already had the blob: nothing was sent.
    Exists,
    /// The registry mounted the blob from another repository: nothing was sent.
    Mounted,
    /// The blob's bytes were uploaded.
    Uploaded,
}

impl PushOutcome {
    /// Returns true if and only if the blob's bytes were sent.
    pub fn uploaded(self) -> bool {
        self == PushOutcome::Uploaded
    }
}

/// Where a downloaded blob goes: a writer that can start over when a download restarts from
/// the beginning.
pub trait BlobSink: Write {
    /// Discards everything written so far; the next write is the blob's first byte.
    fn reset(&mut self) -> io::Result<()>;
}

impl BlobSink for Vec<u8> {
    fn reset(&mut self) -> io::Result<()> {
        self.clear();
        Ok(())
    }
}

impl BlobSink for std::fs::File {
    fn reset(&mut self) -> io::Result<()> {
        self.set_len(0)?;
        self.rewind()
    }
}

impl<S: BlobSink + ?Sized> BlobSink for &mut S {
    fn reset(&mut self) -> io::Result<()> {
        (**self).reset()
    }
}

/// Where a pushed blob comes from: something that can be read from the start as many times as
/// an upload is retried.
pub trait BlobSource {
    /// Opens the blob at its first byte.
    fn open(&self) -> io::Result<Box<dyn Read + '_>>;
}

impl BlobSource for [u8] {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(self))
    }
}

impl BlobSource for Vec<u8> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.as_slice()))
    }
}

impl BlobSource for Path {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(io::BufReader::new(std::fs::File::open(self)?)))
    }
}

impl BlobSource for PathBuf {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        self.as_path().open()
    }
}
