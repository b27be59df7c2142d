//! VMware virtual disks (VMDK, "Virtual Disk Format 1.1").
//!
//! Reading: text descriptors (standalone, or embedded in a sparse extent) and their extents —
//! hosted sparse (`KDMV`: monolithicSparse, twoGbMaxExtentSparse, streamOptimized with or without
//! markers, grain directory in the header or at the end behind a footer), flat (monolithicFlat,
//! twoGbMaxExtentFlat, vmfs), ESX snapshot deltas (`COWD`, vmfsSparse) and `ZERO` extents — laid
//! end to end, with parent disks (`parentFileNameHint`) for unallocated grains.
//!
//! Writing: `subformat=monolithicSparse` (the default; qemu-img's layout: redundant and primary
//! grain directories with every grain table preallocated, then uncompressed grains) and
//! `subformat=streamOptimized` (VMware's stream layout, as ovftool, VirtualBox and open-vmdk
//! write it: compressed grains with markers, then the grain tables, grain directory, footer and
//! end-of-stream marker), with qemu-img's descriptor (adapter type and geometry).

mod descriptor;
mod header;
mod reader;
mod sparse;
mod writer;

pub use descriptor::{Descriptor, MAX_DESCRIPTOR_LEN, MAX_EXTENTS};
pub use header::{CowdHeader, SparseHeader};
pub use reader::{VmdkReader, open};
pub use sparse::{MAX_COMPRESSED_GRAIN, MAX_GD_ENTRIES, MAX_GRAIN_SECTORS, MAX_GTES_PER_GT};
pub use writer::{ADAPTER_TYPES, SparseWriter, StreamWriter, Subformat, create, create_stream};
