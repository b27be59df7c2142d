//! OVA: an Open Virtualization Format package in one tar file (DMTF DSP0243) — an OVF
//! descriptor (XML), optionally a manifest (`.mf`) and a certificate, and disk files (usually
//! streamOptimized VMDK).
//!
//! Reading walks the tar in place (nothing is extracted), checks that every file the descriptor
//! references is there and that every manifest digest matches, then opens each disk as a window
//! of the .ova file with the reader of the disk's own format, detected from its content. The
//! OVA reads as its first disk. Where the descriptor's capacity and the disk's own size differ,
//! the disk is trusted (as VirtualBox and VMware do); both are shown by `info()`.
//!
//! Writing makes the OVA that VirtualBox, VMware and AWS import: `NAME.ovf` (OVF 1.0),
//! `NAME-disk1.vmdk` (streamOptimized) and `NAME.mf` (SHA-256), deterministically.

mod archive;
mod descriptor;
mod manifest;
mod reader;
mod writer;

pub use archive::{MAX_MEMBERS, MAX_NAME_LEN, MAX_PAX_LEN};
pub use descriptor::{MAX_DEPTH, MAX_DESCRIPTOR_LEN, MAX_DISKS, MAX_ENTRIES};
pub use manifest::MAX_MANIFEST_LEN;
pub use reader::{OvaReader, open};
pub use writer::{OvaWriter, appliance_name, create};
