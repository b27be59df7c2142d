//! The image store and distribution for stamp: a content-addressed store in the OCI image layout,
//! a registry client (OCI distribution / Docker Registry HTTP API v2), import and export of OCI
//! and Docker archives, and flattening of image layers into a [`stamp_fs::Tree`].
//!
//! Every blob is addressed by its [`Digest`] and verified when it is written and before it is used;
//! a blob whose content no longer matches its digest is reported as tampered and never used.
//! Disk images travel as OCI artifacts or KubeVirt containerDisks.
#![deny(missing_docs)]

pub mod archive;
pub mod compose;
mod digest;
pub mod disk;
pub mod distribution;
mod error;
mod flatten;
pub mod image;
pub mod media;
mod reference;
pub mod registry;
pub mod store;

pub use digest::{Digest, DigestWriter};
pub use error::{Error, Result};
pub use flatten::flatten;
pub use image::{Image, ImageKind};
pub use reference::Reference;
pub use store::{BlobWriter, Named, Store};
