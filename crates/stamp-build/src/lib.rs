//! The stamping pipeline: a container image's [`Tree`](stamp_fs::Tree) becomes a bootable disk.
//!
//! [`recipe`] reads `stamp.toml` and applies it to the tree (users, files, units, first boot);
//! [`boot`] finds the kernel and makes the EFI System Partition's files (a Unified Kernel Image
//! from the image's systemd-stub, or systemd-boot or GRUB entries); [`app`] turns an application
//! image into a bootable one with a separate kernel and stamp's own init; [`pipeline`] lays out
//! the GPT disk (ESP + root) and streams it into every requested output at once.
//!
//! It does not fetch or store images (`stamp-oci`) nor know disk formats (`stamp-disk`).
#![deny(missing_docs)]

pub mod app;
pub mod boot;
pub mod cache;
mod error;
pub mod pipeline;
pub mod recipe;

pub use error::{Error, Result};
