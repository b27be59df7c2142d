//! On-disk binary structures of VMDK sparse extents: the hosted sparse header (`KDMV`), the ESX
//! snapshot header (`COWD`), and the stream-optimized markers.

/// Bytes per sector: every VMDK offset and size is counted in these.
pub const SECTOR: u64 = 512;

/// Magic of a hosted sparse extent (VMDK 4), as the first four bytes of the file.
pub const KDMV_MAGIC: &[u8; 4] = b"KDMV";

/// Magic of an ESX sparse extent (vmfsSparse, VMDK 3).
pub const COWD_MAGIC: &[u8; 4] = b"COWD";

/// Header flag: the newline-detection bytes are valid.
pub const FLAG_NL_DETECT: u32 = 1 << 0;
/// Header flag: a redundant grain directory is present.
pub const FLAG_RGD: u32 = 1 << 1;
/// Header flag: grain table entry 1 means "zero grain".
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Header flag: grains are compressed.
pub const FLAG_COMPRESS: u32 = 1 << 16;
/// Header flag: grains and metadata are preceded by markers.
pub const FLAG_MARKER: u32 = 1 << 17;

/// `compressAlgorithm` value for deflate (zlib-wrapped).
pub const COMPRESSION_DEFLATE: u16 = 1;

/// `gdOffset` meaning "the grain directory is at the end; read the footer".
pub const GD_AT_END: u64 = 0xffff_ffff_ffff_ffff;

/// Grain table entry meaning "this grain reads as zeros" (with [`FLAG_ZERO_GRAIN`]).
pub const GTE_ZEROED: u32 = 1;

/// The newline-detection bytes every writer puts in the header: `\n`, ` `, `\r`, `\n`.
pub const CHECK_BYTES: [u8; 4] = [0x0a, 0x20, 0x0d, 0x0a];

/// Marker type: end of stream.
pub const MARKER_EOS: u32 = 0;
/// Marker type: a grain table follows.
pub const MARKER_GT: u32 = 1;
/// Marker type: the grain directory follows.
pub const MARKER_GD: u32 = 2;
/// Marker type: the footer follows.
pub const MARKER_FOOTER: u32 = 3;

/// Size of the fixed part of a grain marker: LBA (8) and compressed size (4).
pub const GRAIN_MARKER_LEN: u64 = 12;

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The header of a hosted sparse extent (`SparseExtentHeader` of the VMDK specification), which
/// is also the footer of a stream-optimized extent. Sizes and offsets are in sectors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SparseHeader {
    /// Format version (1, 2 or 3; 3 for stream-optimized).
    pub version: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Size of the extent in sectors.
    pub capacity: u64,
    /// Sectors per grain.
    pub granularity: u64,
    /// Sector of the embedded descriptor (0 if none).
    pub desc_offset: u64,
    /// Size of the embedded descriptor in sectors.
    pub desc_size: u64,
    /// Entries per grain table.
    pub num_gtes_per_gt: u32,
    /// Sector of the redundant grain directory.
    pub rgd_offset: u64,
    /// Sector of the grain directory, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors of metadata before the first grain.
    pub grain_offset: u64,
    /// Set while a writer has the file open.
    pub unclean_shutdown: u8,
    /// Newline-detection bytes ([`CHECK_BYTES`] when intact).
    pub check_bytes: [u8; 4],
    /// Grain compression: 0 none, [`COMPRESSION_DEFLATE`].
    pub compress_algorithm: u16,
}

impl SparseHeader {
    /// Size of the header on disk (one sector; the fields fill the first 79 bytes).
    pub const LEN: usize = 512;

    /// Parses a header from the first sector of an extent (or of a footer), magic included.
    /// Returns `None` if the magic is not `KDMV` or the buffer is short.
    pub fn parse(b: &[u8]) -> Option<SparseHeader> {
        if b.len() < 79 || &b[0..4] != KDMV_MAGIC {
            return None;
        }
        Some(SparseHeader {
            version: le32(b, 4),
            flags: le32(b, 8),
            capacity: le64(b, 12),
            granularity: le64(b, 20),
            desc_offset: le64(b, 28),
            desc_size: le64(b, 36),
            num_gtes_per_gt: le32(b, 44),
            rgd_offset: le64(b, 48),
            gd_offset: le64(b, 56),
            grain_offset: le64(b, 64),
            unclean_shutdown: b[72],
            check_bytes: [b[73], b[74], b[75], b[76]],
            compress_algorithm: u16::from_le_bytes([b[77], b[78]]),
        })
    }

    /// The header as one 512-byte sector.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(KDMV_MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.granularity.to_le_bytes());
        b[28..36].copy_from_slice(&self.desc_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.desc_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.grain_offset.to_le_bytes());
        b[72] = self.unclean_shutdown;
        b[73..77].copy_from_slice(&self.check_bytes);
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    /// Returns true if and only if grains are deflate-compressed.
    pub fn compressed(&self) -> bool {
        self.compress_algorithm == COMPRESSION_DEFLATE
    }
}

/// The header of an ESX sparse extent (`COWD`, used by vmfsSparse snapshot deltas). Sizes and
/// offsets are in sectors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CowdHeader {
    /// Format version.
    pub version: u32,
    /// Flags.
    pub flags: u32,
    /// Size of the extent in sectors.
    pub disk_sectors: u32,
    /// Sectors per grain.
    pub granularity: u32,
    /// Sector of the grain directory.
    pub gd_offset: u32,
    /// Number of grain directory entries.
    pub gd_entries: u32,
    /// Sectors in use in the file (next free sector).
    pub file_sectors: u32,
}

impl CowdHeader {
    /// Parses the header from the start of a `COWD` extent, magic included.
    pub fn parse(b: &[u8]) -> Option<CowdHeader> {
        if b.len() < 32 || &b[0..4] != COWD_MAGIC {
            return None;
        }
        Some(CowdHeader {
            version: le32(b, 4),
            flags: le32(b, 8),
            disk_sectors: le32(b, 12),
            granularity: le32(b, 16),
            gd_offset: le32(b, 20),
            gd_entries: le32(b, 24),
            file_sectors: le32(b, 28),
        })
    }
}

/// A stream-optimized metadata marker: one sector holding the size of what follows (in sectors),
/// a zero size field and the marker type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// Sectors of metadata that follow (0 for end of stream).
    pub num_sectors: u64,
    /// Always 0 for metadata markers (a grain marker has its compressed size here).
    pub size: u32,
    /// `MARKER_*`.
    pub kind: u32,
}

impl Marker {
    /// Parses a marker from the start of `b` (at least 16 bytes).
    pub fn parse(b: &[u8]) -> Option<Marker> {
        if b.len() < 16 {
            return None;
        }
        Some(Marker {
            num_sectors: le64(b, 0),
            size: le32(b, 8),
            kind: le32(b, 12),
        })
    }

    /// A metadata marker sector of `kind` announcing `num_sectors` sectors.
    pub fn sector(kind: u32, num_sectors: u64) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..8].copy_from_slice(&num_sectors.to_le_bytes());
        b[12..16].copy_from_slice(&kind.to_le_bytes());
        b
    }
}

/// Parses a grain marker (LBA, compressed size) from the start of `b` (at least 12 bytes).
pub fn parse_grain_marker(b: &[u8]) -> Option<(u64, u32)> {
    if b.len() < GRAIN_MARKER_LEN as usize {
        return None;
    }
    Some((le64(b, 0), le32(b, 8)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_keeps_field_offsets() {
        let h = SparseHeader {
            version: 3,
            flags: FLAG_NL_DETECT | FLAG_COMPRESS | FLAG_MARKER,
            capacity: 20480,
            granularity: 128,
            desc_offset: 1,
            desc_size: 20,
            num_gtes_per_gt: 512,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            grain_offset: 128,
            unclean_shutdown: 0,
            check_bytes: CHECK_BYTES,
            compress_algorithm: COMPRESSION_DEFLATE,
        };
        let b = h.to_bytes();
        // Same bytes as VMware Workstation's stream-optimized header.
        assert_eq!(&b[0..12], b"KDMV\x03\x00\x00\x00\x01\x00\x03\x00");
        assert_eq!(&b[73..79], &[0x0a, 0x20, 0x0d, 0x0a, 0x01, 0x00]);
        assert_eq!(SparseHeader::parse(&b), Some(h));
        assert!(SparseHeader::parse(&b[..40]).is_none());
        assert!(SparseHeader::parse(&[0u8; 512]).is_none());
    }

    #[test]
    fn markers_parse() {
        let m = Marker::sector(MARKER_GD, 2);
        assert_eq!(
            Marker::parse(&m),
            Some(Marker {
                num_sectors: 2,
                size: 0,
                kind: MARKER_GD
            })
        );
        let mut g = [0u8; 12];
        g[0] = 0x80;
        g[8] = 0x10;
        assert_eq!(parse_grain_marker(&g), Some((0x80, 0x10)));
        assert!(parse_grain_marker(&g[..11]).is_none());
    }

    #[test]
    fn cowd_header_parses() {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(COWD_MAGIC);
        b[12..16].copy_from_slice(&4096u32.to_le_bytes());
        b[16..20].copy_from_slice(&1u32.to_le_bytes());
        let h = CowdHeader::parse(&b).unwrap();
        assert_eq!(h.disk_sectors, 4096);
        assert_eq!(h.granularity, 1);
        assert!(CowdHeader::parse(&b[..20]).is_none());
    }
}
