//! L1/L2 tables: decoding of table entries into what a guest cluster holds (standard, extended
//! and compressed descriptors), and a small LRU cache of L2 tables.

use std::sync::Arc;

use super::header::Header;

/// Bits 9-55 of an L1 or L2 entry: the host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63 of L1/L2 entries: refcount is exactly one.
pub const OFLAG_COPIED: u64 = 1 << 63;
/// Bit 62 of L2 entries: compressed cluster.
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Bit 0 of standard L2 entries: the cluster reads as zeros (v3).
pub const OFLAG_ZERO: u64 = 1;
/// Reserved bits of an L1 entry (same mask as qemu).
pub const L1E_RESERVED_MASK: u64 = 0x7f00_0000_0000_01ff;
/// Reserved bits of a standard (not compressed) L2 entry (same mask as qemu).
pub const L2E_STD_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;
/// Reserved bits of a refcount table entry.
pub const REFTABLE_RESERVED_MASK: u64 = 0x1ff;
/// Bits 9-63 of a refcount table entry: the refcount block's offset.
pub const REFTABLE_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Compressed data is counted in 512-byte sectors.
pub const SECTOR: u64 = 512;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;

/// What one guest cluster holds, decoded from its L2 entry (and bitmap with extended L2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind {
    /// Nothing here: reads from the backing file, or zeros.
    Unallocated,
    /// Reads as zeros; `host` is a preallocated cluster (0 if none).
    Zero {
        /// Preallocated host cluster, or 0.
        host: u64,
    },
    /// Data at `host`.
    Normal {
        /// Host offset of the cluster (in the data file if there is one).
        host: u64,
    },
    /// Compressed data: `size` bytes at `offset` of the image file (the last sector may be short).
    Compressed {
        /// Byte offset of the compressed data.
        offset: u64,
        /// Bytes from `offset` to the end of the last sector.
        size: u64,
    },
    /// Extended L2: each subcluster allocated (at `host` + index × subcluster size), zero, or
    /// unallocated (backing).
    Subclusters {
        /// Host cluster (0 if the cluster is unallocated).
        host: u64,
        /// Allocation bitmap, bit n for subcluster n.
        alloc: u32,
        /// Zero bitmap, bit n for subcluster n.
        zero: u32,
    },
}

/// The geometry needed to decode table entries, taken from the header.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Cluster size.
    pub cluster_size: u64,
    /// Guest clusters per L2 table.
    pub l2_entries: u64,
    /// Extended L2 entries.
    pub extended: bool,
    /// The image has an external data file (host offset 0 is then valid).
    pub data_file: bool,
    /// Where the sector count starts in a compressed descriptor.
    pub csize_shift: u32,
    /// Mask of the sector count.
    pub csize_mask: u64,
    /// Mask of the host offset in a compressed descriptor.
    pub coffset_mask: u64,
}

impl Geometry {
    /// The geometry of `h`.
    pub fn new(h: &Header) -> Self {
        let csize_shift = 62 - (h.cluster_bits - 8);
        Geometry {
            cluster_bits: h.cluster_bits,
            cluster_size: h.cluster_size(),
            l2_entries: h.l2_entries(),
            extended: h.extended_l2(),
            data_file: h.data_file.is_some(),
            csize_shift,
            csize_mask: (1u64 << (h.cluster_bits - 8)) - 1,
            coffset_mask: (1u64 << csize_shift) - 1,
        }
    }

    /// Guest bytes covered by one L2 table.
    pub fn l2_span(&self) -> u64 {
        self.l2_entries << self.cluster_bits
    }

    /// Size of a subcluster (the cluster size without extended L2).
    pub fn subcluster_size(&self) -> u64 {
        if self.extended {
            self.cluster_size / u64::from(SUBCLUSTERS)
        } else {
            self.cluster_size
        }
    }

    /// Decodes a compressed descriptor into (offset, size), as qemu does.
    pub fn compressed(&self, entry: u64) -> (u64, u64) {
        let offset = entry & self.coffset_mask;
        let sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1;
        (offset, sectors * SECTOR - (offset & (SECTOR - 1)))
    }

    /// Encodes a compressed descriptor for `len` bytes of compressed data at `offset`.
    pub fn encode_compressed(&self, offset: u64, len: u64) -> u64 {
        let sectors = ((offset & (SECTOR - 1)) + len).div_ceil(SECTOR);
        OFLAG_COMPRESSED | ((sectors - 1) << self.csize_shift) | offset
    }

    /// Decodes an L2 entry (and its bitmap with extended L2). Errors say what is wrong.
    pub fn classify(&self, entry: u64, bitmap: u64) -> Result<ClusterKind, String> {
        if entry & OFLAG_COMPRESSED != 0 {
            if self.data_file {
                return Err(format!(
                    "compressed cluster (entry {entry:#x}) in an image with an external data file"
                ));
            }
            let (offset, size) = self.compressed(entry);
            return Ok(ClusterKind::Compressed { offset, size });
        }
        let host = entry & OFFSET_MASK;
        let allocated = host != 0 || (self.data_file && entry & OFLAG_COPIED != 0);
        if allocated && host % self.cluster_size != 0 {
            return Err(format!(
                "host offset {host:#x} is not aligned to a cluster (entry {entry:#x})"
            ));
        }
        if !self.extended {
            if entry & OFLAG_ZERO != 0 {
                return Ok(ClusterKind::Zero { host });
            }
            if !allocated {
                return Ok(ClusterKind::Unallocated);
            }
            return Ok(ClusterKind::Normal { host });
        }
        let alloc = bitmap as u32;
        let zero = (bitmap >> 32) as u32;
        if alloc & zero != 0 {
            return Err(format!(
                "subclusters {:#x} are marked both allocated and zero (bitmap {bitmap:#x})",
                alloc & zero
            ));
        }
        if !allocated {
            if alloc != 0 {
                return Err(format!(
                    "subclusters {alloc:#x} are allocated in an unallocated cluster (bitmap {bitmap:#x})"
                ));
            }
            return Ok(match zero {
                0 => ClusterKind::Unallocated,
                u32::MAX => ClusterKind::Zero { host: 0 },
                _ => ClusterKind::Subclusters {
                    host: 0,
                    alloc: 0,
                    zero,
                },
            });
        }
        Ok(match (alloc, zero) {
            (u32::MAX, _) => ClusterKind::Normal { host },
            (_, u32::MAX) => ClusterKind::Zero { host },
            _ => ClusterKind::Subclusters { host, alloc, zero },
        })
    }
}

/// Decodes a big-endian table of u64 entries.
pub fn parse_be_u64(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_be_bytes(a)
        })
        .collect()
}

/// Total bytes of L2 tables the cache keeps at most (a few tables of 2 MiB clusters, many of
/// small ones).
const CACHE_BYTES: u64 = 32 << 20;
/// Most tables the cache keeps (lookups scan it linearly).
const CACHE_MAX_TABLES: usize = 64;

/// A small LRU cache of decoded L2 tables, keyed by host offset.
#[derive(Debug)]
pub struct L2Cache {
    slots: Vec<(u64, Arc<[u64]>, u64)>,
    tick: u64,
    cap: usize,
}

impl L2Cache {
    /// A cache for tables of `table_bytes` each.
    pub fn new(table_bytes: u64) -> Self {
        let cap = (CACHE_BYTES / table_bytes.max(1)).clamp(4, CACHE_MAX_TABLES as u64) as usize;
        L2Cache {
            slots: Vec::with_capacity(cap),
            tick: 0,
            cap,
        }
    }

    /// The table at `offset`, if cached.
    pub fn get(&mut self, offset: u64) -> Option<Arc<[u64]>> {
        self.tick += 1;
        let tick = self.tick;
        self.slots.iter_mut().find(|s| s.0 == offset).map(|s| {
            s.2 = tick;
            s.1.clone()
        })
    }

    /// Caches `table` at `offset`, evicting the least recently used table when full.
    pub fn insert(&mut self, offset: u64, table: Arc<[u64]>) {
        self.tick += 1;
        if let Some(s) = self.slots.iter_mut().find(|s| s.0 == offset) {
            s.1 = table;
            s.2 = self.tick;
            return;
        }
        if self.slots.len() >= self.cap {
            if let Some(i) = self
                .slots
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.2)
                .map(|(i, _)| i)
            {
                self.slots.swap_remove(i);
            }
        }
        self.slots.push((offset, table, self.tick));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn geo(bits: u32, extended: bool) -> Geometry {
        let h = Header {
            cluster_bits: bits,
            incompatible: if extended {
                super::super::header::INCOMPAT_EXTL2
            } else {
                0
            },
            ..Default::default()
        };
        Geometry::new(&h)
    }

    #[test]
    fn compressed_descriptors_round_trip_for_every_cluster_size() {
        for bits in 9..=21 {
            let g = geo(bits, false);
            for (off, len) in [
                (0x10000u64, 1u64),
                (0x10123, 700),
                (0x7777, (1 << bits) - 1),
            ] {
                let e = g.encode_compressed(off, len);
                match g.classify(e, 0).unwrap() {
                    ClusterKind::Compressed { offset, size } => {
                        assert_eq!(offset, off);
                        assert!(size >= len && size < len + SECTOR, "{bits} {size} {len}");
                    }
                    k => panic!("{k:?}"),
                }
            }
        }
    }

    #[test]
    fn standard_and_extended_entries_decode_as_qemu_does() {
        let g = geo(16, false);
        assert_eq!(g.classify(0, 0).unwrap(), ClusterKind::Unallocated);
        assert_eq!(
            g.classify(OFLAG_COPIED | 0x30000, 0).unwrap(),
            ClusterKind::Normal { host: 0x30000 }
        );
        assert_eq!(g.classify(1, 0).unwrap(), ClusterKind::Zero { host: 0 });
        assert!(g.classify(0x30200, 0).is_err());
        let x = geo(16, true);
        assert_eq!(
            x.classify(0x30000, 0xffff_ffff).unwrap(),
            ClusterKind::Normal { host: 0x30000 }
        );
        assert_eq!(
            x.classify(0, 0xffff_ffff << 32).unwrap(),
            ClusterKind::Zero { host: 0 }
        );
        assert_eq!(
            x.classify(0x30000, 0x3 | (0x4 << 32)).unwrap(),
            ClusterKind::Subclusters {
                host: 0x30000,
                alloc: 3,
                zero: 4
            }
        );
        assert!(x.classify(0x30000, 0x1 | (0x1 << 32)).is_err());
        assert!(x.classify(0, 0x1).is_err());
    }

    #[test]
    fn cache_evicts_least_recently_used() {
        let mut c = L2Cache::new(u64::MAX);
        for i in 0..4u64 {
            c.insert(i, Arc::from(vec![i]));
        }
        assert!(c.get(0).is_some());
        c.insert(9, Arc::from(vec![9]));
        assert!(c.get(0).is_some());
        assert!(c.get(1).is_none());
    }
}
