//! AWS for stamp, without the AWS SDK's EC2 crate: credentials and regions the AWS way
//! ([`config`]), SigV4-signed HTTP ([`http`]), the EC2 Query API's requests and XML responses
//! as our own types, shared by the client and by `stamp serve` ([`ec2`]), and EBS direct
//! snapshot upload and download ([`ebs`]), the S3 path: multipart upload ([`s3`]) and
//! ImportSnapshot of the uploaded disk ([`import`]), and publishing a disk as an AMI ([`ami`]).
#![deny(missing_docs)]

pub mod ami;
pub mod config;
pub mod ebs;
pub mod ec2;
mod error;
pub mod http;
pub mod import;
pub mod s3;
pub mod sigv4;

pub use error::{Error, Result};

/// An id unique in practice across processes and calls (the time in nanoseconds, the process
/// id and a counter, in hex): run ids, idempotency tokens, object names.
pub fn fresh_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{nanos:x}-{:x}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
