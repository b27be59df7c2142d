//! Format tests against qemu-img, the reference implementation: what qemu-img writes, stamp reads
//! byte for byte; what stamp writes, qemu-img checks clean and reads identically.

#![allow(clippy::unwrap_used)]

mod common;

mod cross;
mod gce;
mod ova;
mod qcow2;
mod raw;
mod vdi;
mod vhd;
mod vhdx;
mod vmdk;
