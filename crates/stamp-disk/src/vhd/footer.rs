//! The VHD hard disk footer: 512 big-endian bytes at the end of every VHD (and copied at offset 0
//! of dynamic and differencing disks), with the disk type, sizes, CHS geometry and checksum.

/// Length of the footer as written by every current tool.
pub const FOOTER_LEN: usize = 512;

/// The footer's signature ("cookie").
pub const COOKIE: &[u8; 8] = b"conectix";

/// Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC).
pub const VHD_EPOCH: u64 = 946_684_800;

/// Largest CHS geometry a footer can hold: 65535 cylinders, 16 heads, 255 sectors per track.
pub const MAX_GEOMETRY: u64 = 65535 * 16 * 255;

/// Largest disk in sectors: 2040 GiB, the same limit as qemu (`VHD_MAX_SECTORS`).
pub const MAX_SECTORS: u64 = 0xff00_0000;

/// The disk type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// Type 2: the disk's bytes followed by the footer.
    Fixed,
    /// Type 3: blocks allocated on demand through a block allocation table.
    Dynamic,
    /// Type 4: a dynamic disk whose unwritten sectors come from a parent disk.
    Differencing,
}

impl DiskType {
    /// The on-disk value.
    pub fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }

    /// The type for an on-disk value, if it is one of the three disk types.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            2 => Some(DiskType::Fixed),
            3 => Some(DiskType::Dynamic),
            4 => Some(DiskType::Differencing),
            _ => None,
        }
    }

    /// The subformat name (`fixed`, `dynamic`, `differencing`).
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// Field offsets inside the footer.
mod off {
    pub const FEATURES: usize = 8;
    pub const VERSION: usize = 12;
    pub const DATA_OFFSET: usize = 16;
    pub const TIMESTAMP: usize = 24;
    pub const CREATOR_APP: usize = 28;
    pub const CREATOR_VERSION: usize = 32;
    pub const CREATOR_OS: usize = 36;
    pub const ORIGINAL_SIZE: usize = 40;
    pub const CURRENT_SIZE: usize = 48;
    pub const CYLINDERS: usize = 56;
    pub const HEADS: usize = 58;
    pub const SECTORS: usize = 59;
    pub const DISK_TYPE: usize = 60;
    pub const CHECKSUM: usize = 64;
    pub const UUID: usize = 68;
    pub const SAVED_STATE: usize = 84;
}

/// Checksum offset inside the footer (for error messages).
pub const CHECKSUM_OFFSET: u64 = off::CHECKSUM as u64;

/// Reads a big-endian u16 at `at` (0 if out of range, which the fixed layouts never are).
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_be_bytes)
}

/// Reads a big-endian u32 at `at` (0 if out of range).
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

/// Reads a big-endian u64 at `at` (0 if out of range).
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Writes `v` at `at` if it fits.
pub(crate) fn put(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(dst) = b.get_mut(at..at + v.len()) {
        dst.copy_from_slice(v);
    }
}

/// The VHD checksum: the one's complement of the sum of all bytes, with the checksum field
/// (at `checksum_at`) counted as zero.
pub fn checksum(buf: &[u8], checksum_at: usize) -> u32 {
    let sum = buf.iter().enumerate().fold(0u32, |acc, (i, b)| {
        if (checksum_at..checksum_at + 4).contains(&i) {
            acc
        } else {
            acc.wrapping_add(u32::from(*b))
        }
    });
    !sum
}

/// A parsed footer (the fields stamp uses; the raw bytes are kept for comparison).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Feature flags (2 = reserved bit, always set).
    pub features: u32,
    /// Format version (0x00010000).
    pub version: u32,
    /// Offset of the dynamic disk header (all ones for fixed disks).
    pub data_offset: u64,
    /// Seconds since 2000-01-01 UTC.
    pub timestamp: u32,
    /// The creating application ("qemu", "win ", "vpc ", ...).
    pub creator_app: [u8; 4],
    /// The creating application's version (major << 16 | minor).
    pub creator_version: u32,
    /// The creating host OS ("Wi2k", "Mac ").
    pub creator_os: [u8; 4],
    /// Size of the disk at creation.
    pub original_size: u64,
    /// Current size of the disk in bytes.
    pub current_size: u64,
    /// Cylinders of the CHS geometry.
    pub cylinders: u16,
    /// Heads of the CHS geometry.
    pub heads: u8,
    /// Sectors per track of the CHS geometry.
    pub sectors: u8,
    /// Raw disk type field.
    pub disk_type: u32,
    /// Checksum as stored.
    pub checksum: u32,
    /// The disk's unique id (identifies it as a parent of differencing disks).
    pub uuid: [u8; 16],
    /// Saved-state flag.
    pub saved_state: u8,
}

impl Footer {
    /// Parses a footer from `buf` (512 bytes, or 511 for old Virtual PC footers). Returns `None`
    /// when the cookie is missing; the checksum is checked by the caller with [`Footer::checksum_ok`].
    pub fn parse(buf: &[u8]) -> Option<Footer> {
        if !buf.starts_with(COOKIE) {
            return None;
        }
        let arr4 = |at: usize| -> [u8; 4] {
            buf.get(at..at + 4)
                .and_then(|s| s.try_into().ok())
                .unwrap_or([0; 4])
        };
        Some(Footer {
            features: be32(buf, off::FEATURES),
            version: be32(buf, off::VERSION),
            data_offset: be64(buf, off::DATA_OFFSET),
            timestamp: be32(buf, off::TIMESTAMP),
            creator_app: arr4(off::CREATOR_APP),
            creator_version: be32(buf, off::CREATOR_VERSION),
            creator_os: arr4(off::CREATOR_OS),
            original_size: be64(buf, off::ORIGINAL_SIZE),
            current_size: be64(buf, off::CURRENT_SIZE),
            cylinders: be16(buf, off::CYLINDERS),
            heads: buf.get(off::HEADS).copied().unwrap_or(0),
            sectors: buf.get(off::SECTORS).copied().unwrap_or(0),
            disk_type: be32(buf, off::DISK_TYPE),
            checksum: be32(buf, off::CHECKSUM),
            uuid: buf
                .get(off::UUID..off::UUID + 16)
                .and_then(|s| s.try_into().ok())
                .unwrap_or([0; 16]),
            saved_state: buf.get(off::SAVED_STATE).copied().unwrap_or(0),
        })
    }

    /// Returns true if and only if the stored checksum matches the bytes of `buf`.
    pub fn checksum_ok(buf: &[u8]) -> bool {
        checksum(buf, off::CHECKSUM) == be32(buf, off::CHECKSUM)
    }

    /// The 512 bytes of this footer, with its checksum computed.
    pub fn to_bytes(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        put(&mut b, 0, COOKIE);
        put(&mut b, off::FEATURES, &self.features.to_be_bytes());
        put(&mut b, off::VERSION, &self.version.to_be_bytes());
        put(&mut b, off::DATA_OFFSET, &self.data_offset.to_be_bytes());
        put(&mut b, off::TIMESTAMP, &self.timestamp.to_be_bytes());
        put(&mut b, off::CREATOR_APP, &self.creator_app);
        put(
            &mut b,
            off::CREATOR_VERSION,
            &self.creator_version.to_be_bytes(),
        );
        put(&mut b, off::CREATOR_OS, &self.creator_os);
        put(
            &mut b,
            off::ORIGINAL_SIZE,
            &self.original_size.to_be_bytes(),
        );
        put(&mut b, off::CURRENT_SIZE, &self.current_size.to_be_bytes());
        put(&mut b, off::CYLINDERS, &self.cylinders.to_be_bytes());
        put(&mut b, off::HEADS, &[self.heads]);
        put(&mut b, off::SECTORS, &[self.sectors]);
        put(&mut b, off::DISK_TYPE, &self.disk_type.to_be_bytes());
        put(&mut b, off::UUID, &self.uuid);
        put(&mut b, off::SAVED_STATE, &[self.saved_state]);
        let sum = checksum(&b, off::CHECKSUM);
        put(&mut b, off::CHECKSUM, &sum.to_be_bytes());
        b
    }

    /// The sectors of the CHS geometry (cylinders × heads × sectors per track).
    pub fn geometry_sectors(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors)
    }

    /// Returns true if and only if qemu sizes this disk by its CHS geometry rather than its
    /// current size: Virtual PC ("vpc ") and old qemu ("qemu") images, unless the geometry is the
    /// maximum one (which means "use the current size"). This is `vpc_ignore_current_size()`
    /// of qemu 10.
    pub fn sized_by_geometry(&self) -> bool {
        (&self.creator_app == b"vpc " || &self.creator_app == b"qemu")
            && self.geometry_sectors() != MAX_GEOMETRY
    }

    /// The virtual size in sectors exactly as qemu computes it in `vpc_open()`.
    pub fn virtual_sectors(&self) -> u64 {
        if self.sized_by_geometry() {
            self.geometry_sectors()
        } else {
            self.current_size / 512
        }
    }
}

/// The CHS geometry the VHD specification (and qemu's `calculate_geometry()`) gives a disk of
/// `total_sectors`: (cylinders, heads, sectors per track). It may round the size down.
pub fn calculate_geometry(total_sectors: u64) -> (u16, u8, u8) {
    let total = total_sectors.min(MAX_GEOMETRY);
    let (mut spt, mut heads, mut cth): (u64, u64, u64);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        spt = 17;
        cth = total / spt;
        // qemu stores this in a uint8_t; the truncation never changes the outcome below.
        heads = cth.div_ceil(1024) % 256;
        if heads < 4 {
            heads = 4;
        }
        if cth >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cth = total / spt;
        }
        if cth >= heads * 1024 {
            spt = 63;
            heads = 16;
            cth = total / spt;
        }
    }
    let cyls = (cth / heads).min(65535);
    (cyls as u16, heads as u8, spt as u8)
}

/// The size qemu gives a new VHD of `size` bytes without `force_size`: rounded up to a sector,
/// then up to the smallest CHS geometry that holds it (qemu's `calculate_rounded_image_size()`).
/// Returns (total sectors, cylinders, heads, sectors per track); with the maximum geometry the
/// sector count is the requested one.
pub fn rounded_geometry(size: u64) -> (u64, u16, u8, u8) {
    let requested = size.div_ceil(512);
    let target = requested.min(MAX_GEOMETRY);
    let (mut c, mut h, mut s) = (0u16, 0u8, 0u8);
    let mut i = 0u64;
    while target > u64::from(c) * u64::from(h) * u64::from(s) {
        (c, h, s) = calculate_geometry(target + i);
        i += 1;
    }
    let product = u64::from(c) * u64::from(h) * u64::from(s);
    if product == MAX_GEOMETRY {
        (requested, c, h, s)
    } else {
        (product, c, h, s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_qemu_for_known_sizes() {
        // qemu-img create -f vpc x 10M gives 10514432 bytes.
        assert_eq!(rounded_geometry(10 << 20).0 * 512, 10_514_432);
        // Sizes qemu-img 10 gives for 1G, 3M, 1000000 and 4194304.
        assert_eq!(rounded_geometry(1 << 30).0 * 512, 1_073_995_776);
        assert_eq!(rounded_geometry(3 << 20).0 * 512, 3_168_256);
        assert_eq!(rounded_geometry(1_000_000).0 * 512, 1_009_664);
        assert_eq!(rounded_geometry(4_194_304).0 * 512, 4_212_736);
        // Beyond the largest geometry the requested size stays.
        let big = 200u64 << 30;
        assert_eq!(rounded_geometry(big), (big / 512, 65535, 16, 255));
        assert_eq!(rounded_geometry(0).0, 0);
    }

    #[test]
    fn footer_round_trips_and_checksums() {
        let f = Footer {
            features: 2,
            version: 0x0001_0000,
            data_offset: 512,
            timestamp: 7,
            creator_app: *b"qem2",
            creator_version: 0x0005_0003,
            creator_os: *b"Wi2k",
            original_size: 1 << 20,
            current_size: 1 << 20,
            cylinders: 65535,
            heads: 16,
            sectors: 255,
            disk_type: 3,
            checksum: 0,
            uuid: [9; 16],
            saved_state: 0,
        };
        let b = f.to_bytes();
        assert!(Footer::checksum_ok(&b));
        let back = Footer::parse(&b).unwrap();
        assert_eq!(back.current_size, 1 << 20);
        assert_eq!(back.virtual_sectors(), 2048);
        let mut bad = b;
        bad[100] ^= 1;
        assert!(!Footer::checksum_ok(&bad));
        assert!(Footer::parse(&b[1..]).is_none());
    }

    #[test]
    fn size_rule_follows_creator() {
        let mut f = Footer::parse(&{
            let mut b = [0u8; 512];
            b[..8].copy_from_slice(COOKIE);
            b
        })
        .unwrap();
        f.current_size = 10 << 20;
        (f.cylinders, f.heads, f.sectors) = (300, 16, 17);
        f.creator_app = *b"qemu";
        assert_eq!(f.virtual_sectors(), 300 * 16 * 17);
        f.creator_app = *b"vpc ";
        assert_eq!(f.virtual_sectors(), 300 * 16 * 17);
        f.creator_app = *b"wa\0\0";
        assert_eq!(f.virtual_sectors(), 20480);
        f.creator_app = *b"qemu";
        (f.cylinders, f.heads, f.sectors) = (65535, 16, 255);
        assert_eq!(f.virtual_sectors(), 20480);
    }
}
