//! `stamp serve`: an EC2-compatible VM Import/Export service.
//!
//! The pieces, each in its own module:
//! - [`task`]: the tasks and images the service keeps, as the API and the workers see them.
//! - [`db`]: where they live: the [`db::TaskStore`] trait, on SQLite (one process) or
//!   PostgreSQL (several processes sharing the work through claims and leases).
//! - [`objects`]: where disks come from and go to: a local directory (`DIR/BUCKET/KEY`) or an
//!   S3-compatible store, behind [`objects::ObjectStore`].
//! - [`worker`]: what a claimed task does: fetch, detect, validate, convert, store; export.
#![deny(missing_docs)]

pub mod api;
pub mod db;
mod error;
pub mod node;
pub mod objects;
pub mod pool;
pub mod server;
pub mod task;
pub mod worker;

pub use error::{Error, Result};
