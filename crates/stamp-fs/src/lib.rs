//! Filesystems and partition tables for stamp: ext4, FAT and GPT written natively from a [`Tree`].
//!
//! A [`Tree`] holds a filesystem's metadata in memory (paths, types, modes, owners, timestamps,
//! xattrs, link targets, device numbers, hard links) and refers to file contents where they
//! already are (a region of a tar or a host file), so building an image never needs root, a mount
//! or a copy of the data. The writers turn a tree into a stream of [`stamp_disk::Extent`]s that any
//! `stamp-disk` writer consumes directly.
//!
//! It does not know where trees come from beyond directories, tar archives and the layer tars of
//! a container image (`source::from_layers`; fetching and storing images is `stamp-oci`) nor how
//! disks are stored (that is `stamp-disk`).
#![deny(missing_docs)]

mod error;
pub mod ext4;
pub mod fat;
pub mod gpt;
mod image;
pub mod source;
pub mod tree;

pub use error::{Error, Result};
pub use image::Image;
pub use tree::{Content, Entry, Kind, NodeId, Resolved, Timestamp, Tree};
