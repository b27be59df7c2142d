//! The volume's geometry: FAT type, cluster size and where the regions start.

use crate::{Error, Result};

/// Bytes per sector (the only size written).
pub(crate) const SECTOR: u64 = 512;

/// Which FAT variant the volume is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FatType {
    /// 12-bit entries, up to 4084 clusters.
    Fat12,
    /// 16-bit entries, 4085 to 65524 clusters.
    Fat16,
    /// 28-bit entries, 65525 clusters and more.
    Fat32,
}

impl FatType {
    /// Bits per FAT entry.
    pub(crate) fn bits(self) -> u64 {
        match self {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        }
    }
}

/// Where everything is on a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub kind: FatType,
    /// Total sectors.
    pub sectors: u64,
    pub sectors_per_cluster: u64,
    pub reserved: u64,
    /// Sectors per FAT.
    pub fat_sectors: u64,
    /// Root directory entries (FAT12/16; 0 for FAT32).
    pub root_entries: u64,
    /// Number of data clusters.
    pub clusters: u64,
}

impl Layout {
    /// Bytes per cluster.
    pub fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * SECTOR
    }

    /// Byte offset of FAT number `i` (0 or 1).
    pub fn fat_offset(&self, i: u64) -> u64 {
        (self.reserved + i * self.fat_sectors) * SECTOR
    }

    /// Byte offset of the FAT12/16 root directory region.
    pub fn root_offset(&self) -> u64 {
        self.fat_offset(2)
    }

    /// Sectors of the FAT12/16 root directory region.
    pub fn root_sectors(&self) -> u64 {
        (self.root_entries * 32).div_ceil(SECTOR)
    }

    /// Byte offset of cluster `c` (2 is the first).
    pub fn cluster_offset(&self, c: u64) -> u64 {
        self.root_offset() + self.root_sectors() * SECTOR + (c - 2) * self.cluster_bytes()
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.sectors * SECTOR
    }
}

/// Chooses the layout for a volume of `size` bytes whose root directory needs `root_needed`
/// entries (FAT12/16 only). FAT32 from 64 MiB (with the cluster sizes of Microsoft's table),
/// FAT16 below, FAT12 for volumes under 4 MiB.
pub(crate) fn choose(size: u64, root_needed: u64) -> Result<Layout> {
    let sectors = size / SECTOR;
    const MIB: u64 = 1 << 20;
    if sectors > u64::from(u32::MAX) {
        return Err(Error::InvalidOption(format!(
            "a FAT volume of {size} bytes is larger than FAT's 2 TiB limit"
        )));
    }
    let root_entries = root_needed.max(512).next_multiple_of(16);
    if size >= 64 * MIB {
        let spc = match size {
            s if s < 260 * MIB => 1,
            s if s < 8 << 30 => 8,
            s if s < 16 << 30 => 16,
            s if s < 32 << 30 => 32,
            _ => 64,
        };
        if let Some(l) = fit(FatType::Fat32, sectors, spc, 32, 0)
            && l.clusters >= 65_525
        {
            return Ok(l);
        }
    }
    if root_entries > 0xFFF0 {
        return Err(Error::InvalidOption(format!(
            "the root directory needs {root_needed} entries, more than FAT16 holds; use a \
             volume of 64 MiB or more for FAT32"
        )));
    }
    let (kind, min, max) = if size >= 4 * MIB {
        (FatType::Fat16, 4_085, 65_524)
    } else {
        (FatType::Fat12, 1, 4_084)
    };
    let mut spc = 1;
    while spc <= 128 {
        if let Some(l) = fit(kind, sectors, spc, 1, root_entries)
            && l.clusters <= max
        {
            if l.clusters < min {
                break;
            }
            return Ok(l);
        }
        spc *= 2;
    }
    Err(Error::InvalidOption(format!(
        "no FAT layout fits a volume of {size} bytes"
    )))
}

/// The layout of `kind` with these parameters, if any data cluster remains. Reserved sectors are
/// added so that the data area starts on a cluster boundary, as mkfs.fat does.
fn fit(kind: FatType, sectors: u64, spc: u64, reserved: u64, root_entries: u64) -> Option<Layout> {
    let root_sectors = (root_entries * 32).div_ceil(SECTOR);
    let mut fat_sectors = 1;
    loop {
        let meta = reserved + 2 * fat_sectors + root_sectors;
        let data = sectors.checked_sub(meta)?;
        let clusters = data / spc;
        let need = ((clusters + 2) * kind.bits()).div_ceil(8).div_ceil(SECTOR);
        if need <= fat_sectors {
            let pad = (spc - meta % spc) % spc;
            let reserved = reserved + pad;
            let clusters = (data - pad.min(data)) / spc;
            if clusters == 0 || reserved > u64::from(u16::MAX) {
                return None;
            }
            return Some(Layout {
                kind,
                sectors,
                sectors_per_cluster: spc,
                reserved,
                fat_sectors,
                root_entries,
                clusters,
            });
        }
        fat_sectors = need;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn types_by_size() {
        let l = choose(256 << 20, 0).unwrap();
        assert_eq!(l.kind, FatType::Fat32);
        assert!(l.clusters >= 65_525);
        assert!((l.clusters + 2) * 4 <= l.fat_sectors * SECTOR);
        assert_eq!(choose(32 << 20, 0).unwrap().kind, FatType::Fat16);
        assert_eq!(choose(1 << 20, 0).unwrap().kind, FatType::Fat12);
        assert!(choose(4096, 0).is_err());
        let big = choose(600 << 20, 0).unwrap();
        assert_eq!(big.sectors_per_cluster, 8);
        // The data area starts on a cluster boundary.
        assert_eq!(big.cluster_offset(2) % big.cluster_bytes(), 0);
        let f16 = choose(60 << 20, 700).unwrap();
        assert_eq!(f16.root_entries, 704);
        assert_eq!(f16.cluster_offset(2) % f16.cluster_bytes(), 0);
    }
}
