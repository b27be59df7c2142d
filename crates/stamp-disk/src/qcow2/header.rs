//! The qcow2 header (cluster 0): the fixed fields of versions 2 and 3, the header extensions
//! (backing format, external data file, feature names, bitmaps, encryption) and the backing file
//! name; parsed with every field checked, and encoded for the writer.

use crate::file::ImageFile;
use crate::{Ctx, Error, Result};

/// The magic at the start of every qcow2 image.
pub const MAGIC: &[u8; 4] = b"QFI\xfb";

/// Smallest cluster size: 512 bytes (same limit as qemu).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster size: 2 MiB (same limit as qemu).
pub const MAX_CLUSTER_BITS: u32 = 21;

/// Length of the version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Length of the version 3 header as this crate writes it (with the compression type byte and
/// padding to a multiple of 8, as qemu writes it).
pub const V3_HEADER_LEN: u32 = 112;
/// Smallest valid version 3 header.
const V3_MIN_HEADER_LEN: u32 = 104;

/// Longest backing file name (same limit as qemu: 1023 bytes).
pub const MAX_BACKING_NAME: u32 = 1023;
/// Longest backing format or data file name taken from a header extension (qemu keeps 16 bytes for
/// a format name; names of data files are paths, bounded like backing file names).
const MAX_EXT_STRING: u32 = 4096;
/// Largest L1 table in bytes (same limit as qemu: 32 MiB).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table in bytes (same limit as qemu: 8 MiB).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Most snapshots in an image (same limit as qemu).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Largest virtual disk (same limit as qemu: 2^61 bytes, so offsets never overflow).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 61;

/// Incompatible feature: the image was not closed cleanly (refcounts may be stale).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature: the image was marked corrupt by qemu.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature: the compression type field is not zlib.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature: L2 entries are extended (16 bytes, 32 subclusters).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Every incompatible feature this crate reads.
pub const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
/// Compatible feature: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Autoclear feature: the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
/// Autoclear feature: the external data file is a valid raw image by itself.
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// Header extension: end of the extension area.
const EXT_END: u32 = 0;
/// Header extension: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Header extension: bitmaps.
const EXT_BITMAPS: u32 = 0x2385_2875;
/// Header extension: full disk encryption header pointer.
const EXT_CRYPTO: u32 = 0x0537_be77;
/// Header extension: external data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// The bitmaps header extension: where the bitmap directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapsExt {
    /// Number of bitmaps.
    pub count: u32,
    /// Size of the bitmap directory in bytes.
    pub dir_size: u64,
    /// Offset of the bitmap directory.
    pub dir_offset: u64,
}

/// A parsed qcow2 header with its extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Where the backing file name is (0: no backing file).
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual size in bytes.
    pub size: u64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
    /// Number of snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (v3).
    pub incompatible: u64,
    /// Compatible feature bits (v3).
    pub compatible: u64,
    /// Autoclear feature bits (v3).
    pub autoclear: u64,
    /// log2 of the refcount width in bits (4 for v2).
    pub refcount_order: u32,
    /// Length of the header structure.
    pub header_length: u32,
    /// 0 zlib, 1 zstd.
    pub compression_type: u8,
    /// Backing file name, as recorded.
    pub backing_file: Option<String>,
    /// Backing file format, from its header extension.
    pub backing_format: Option<String>,
    /// External data file name, from its header extension.
    pub data_file: Option<String>,
    /// Feature names from the feature name table: (type, bit, name).
    pub feature_names: Vec<(u8, u8, String)>,
    /// The bitmaps extension, if present.
    pub bitmaps: Option<BitmapsExt>,
    /// The full disk encryption header pointer (offset, length), if present.
    pub crypto: Option<(u64, u64)>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}

impl Header {
    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Returns true if and only if L2 entries are extended (subclusters).
    pub fn extended_l2(&self) -> bool {
        self.incompatible & INCOMPAT_EXTL2 != 0
    }

    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Number of L2 entries (guest clusters) covered by one L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / if self.extended_l2() { 16 } else { 8 }
    }

    /// The name of incompatible feature `bit`, from the feature name table when it has one.
    pub fn feature_name(&self, kind: u8, bit: u8) -> String {
        self.feature_names
            .iter()
            .find(|(t, b, _)| *t == kind && *b == bit)
            .map(|(_, _, n)| format!("'{n}' (bit {bit})"))
            .unwrap_or_else(|| format!("unknown feature bit {bit}"))
    }

    /// Reads and checks the header of `file`.
    pub fn read(file: &ImageFile, ctx: &Ctx) -> Result<Header> {
        let len = file.len();
        if len < u64::from(V2_HEADER_LEN) {
            return Err(ctx.corrupt(
                "header",
                0,
                format!("file is {len} bytes, too short for a qcow2 header (72 bytes)"),
            ));
        }
        let mut fixed = [0u8; V3_HEADER_LEN as usize];
        let n = (V3_HEADER_LEN as u64).min(len) as usize;
        file.read_exact_at(&mut fixed[..n], 0, "qcow2 header")?;
        if &fixed[..4] != MAGIC {
            return Err(ctx.corrupt("header", 0, "bad magic (not a qcow2 image)"));
        }
        let mut h = Header {
            version: be32(&fixed, 4),
            backing_file_offset: be64(&fixed, 8),
            backing_file_size: be32(&fixed, 16),
            cluster_bits: be32(&fixed, 20),
            size: be64(&fixed, 24),
            crypt_method: be32(&fixed, 32),
            l1_size: be32(&fixed, 36),
            l1_table_offset: be64(&fixed, 40),
            refcount_table_offset: be64(&fixed, 48),
            refcount_table_clusters: be32(&fixed, 56),
            nb_snapshots: be32(&fixed, 60),
            snapshots_offset: be64(&fixed, 64),
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            ..Default::default()
        };
        match h.version {
            2 => {}
            3 => {
                if len < u64::from(V3_MIN_HEADER_LEN) {
                    return Err(ctx.corrupt(
                        "header",
                        0,
                        format!("file is {len} bytes, too short for a version 3 header"),
                    ));
                }
                h.incompatible = be64(&fixed, 72);
                h.compatible = be64(&fixed, 80);
                h.autoclear = be64(&fixed, 88);
                h.refcount_order = be32(&fixed, 96);
                h.header_length = be32(&fixed, 100);
            }
            1 => {
                return Err(ctx.unsupported(
                    "qcow version 1 (the predecessor of qcow2); convert it with qemu-img first",
                ));
            }
            v => {
                return Err(
                    ctx.unsupported(format!("qcow2 version {v} (only versions 2 and 3 exist)"))
                );
            }
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
            return Err(ctx.corrupt(
                "header",
                20,
                format!(
                    "cluster_bits {} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS} (512 B to 2 MiB clusters)",
                    h.cluster_bits
                ),
            ));
        }
        let cs = h.cluster_size();
        if h.version == 3 {
            if h.header_length < V3_MIN_HEADER_LEN
                || h.header_length % 8 != 0
                || u64::from(h.header_length) > cs
            {
                return Err(ctx.corrupt(
                    "header",
                    100,
                    format!(
                        "header_length {} is not a multiple of 8 between 104 and the cluster size",
                        h.header_length
                    ),
                ));
            }
            if h.refcount_order > 6 {
                return Err(ctx.corrupt(
                    "header",
                    96,
                    format!("refcount_order {} is over 6", h.refcount_order),
                ));
            }
            if h.header_length > 104 {
                let mut b = [0u8; 1];
                file.read_exact_at(&mut b, 104, "qcow2 header compression type")?;
                h.compression_type = b[0];
            }
        }
        if h.crypt_method != 0 {
            return Err(ctx.unsupported(format!(
                "encrypted image ({} encryption); stamp does not read encrypted qcow2 images",
                match h.crypt_method {
                    1 => "AES",
                    2 => "LUKS",
                    _ => "unknown",
                }
            )));
        }
        let unknown = h.incompatible & !INCOMPAT_KNOWN;
        // Read extensions before refusing unknown features, so the refusal can name them.
        h.read_extensions(file, ctx)?;
        if unknown != 0 {
            let names: Vec<String> = (0..64u8)
                .filter(|b| unknown & (1u64 << b) != 0)
                .map(|b| h.feature_name(0, b))
                .collect();
            return Err(ctx.unsupported(format!(
                "unknown incompatible feature(s): {}",
                names.join(", ")
            )));
        }
        if h.incompatible & INCOMPAT_COMPRESSION != 0 {
            if h.compression_type == 0 {
                return Err(ctx.corrupt(
                    "header",
                    104,
                    "compression type bit is set but the compression type is zlib (0)",
                ));
            }
        } else if h.compression_type != 0 {
            return Err(ctx.corrupt(
                "header",
                104,
                format!(
                    "compression type {} without the compression type feature bit",
                    h.compression_type
                ),
            ));
        }
        if h.compression_type > 1 {
            return Err(ctx.unsupported(format!(
                "compression type {} (known: 0 zlib, 1 zstd)",
                h.compression_type
            )));
        }
        if h.incompatible & INCOMPAT_DATA_FILE != 0 && h.data_file.is_none() {
            return Err(ctx.unsupported(
                "external data file whose name is not recorded in the image (no data file name extension)",
            ));
        }
        if h.incompatible & INCOMPAT_DATA_FILE == 0 {
            h.data_file = None;
        }
        if h.size > MAX_VIRTUAL_SIZE {
            return Err(ctx.corrupt(
                "header",
                24,
                format!("virtual size {} is over 2^61 bytes", h.size),
            ));
        }
        let l1_bytes = u64::from(h.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(ctx.corrupt(
                "header",
                36,
                format!(
                    "L1 table of {} entries is over qemu's limit of {MAX_L1_BYTES} bytes",
                    h.l1_size
                ),
            ));
        }
        let needed = h.l1_entries_needed();
        if u64::from(h.l1_size) < needed {
            return Err(ctx.corrupt(
                "header",
                36,
                format!(
                    "L1 table has {} entries, the virtual size {} needs {needed}",
                    h.l1_size, h.size
                ),
            ));
        }
        if h.l1_size > 0 {
            check_table(ctx, "L1 table", 40, h.l1_table_offset, l1_bytes, cs, len)?;
        }
        let rt_bytes = u64::from(h.refcount_table_clusters) * cs;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(ctx.corrupt(
                "header",
                56,
                format!(
                    "refcount table of {} clusters is over qemu's limit of {MAX_REFTABLE_BYTES} bytes",
                    h.refcount_table_clusters
                ),
            ));
        }
        if h.nb_snapshots > MAX_SNAPSHOTS {
            return Err(ctx.corrupt(
                "header",
                60,
                format!(
                    "{} snapshots is over the limit of {MAX_SNAPSHOTS}",
                    h.nb_snapshots
                ),
            ));
        }
        if h.backing_file_offset != 0 {
            let end = h
                .backing_file_offset
                .checked_add(u64::from(h.backing_file_size));
            if h.backing_file_size > MAX_BACKING_NAME || end.is_none_or(|e| e > cs.min(len)) {
                return Err(ctx.corrupt(
                    "header",
                    8,
                    format!(
                        "backing file name ({} bytes at {:#x}) is over {MAX_BACKING_NAME} bytes or not within the first cluster",
                        h.backing_file_size, h.backing_file_offset
                    ),
                ));
            }
            let mut name = vec![0u8; h.backing_file_size as usize];
            file.read_exact_at(&mut name, h.backing_file_offset, "backing file name")?;
            let name = String::from_utf8(name).map_err(|_| {
                ctx.corrupt(
                    "backing file name",
                    h.backing_file_offset,
                    "not valid UTF-8",
                )
            })?;
            if !name.is_empty() {
                h.backing_file = Some(name);
            }
        }
        Ok(h)
    }

    /// L1 entries the virtual size needs.
    pub fn l1_entries_needed(&self) -> u64 {
        let per_l1 = self.l2_entries() << self.cluster_bits;
        self.size.div_ceil(per_l1)
    }

    /// Reads the header extensions between the header and the backing file name (or the end of
    /// cluster 0).
    fn read_extensions(&mut self, file: &ImageFile, ctx: &Ctx) -> Result<()> {
        let cs = self.cluster_size();
        let mut end = cs.min(file.len());
        if self.backing_file_offset != 0 && self.backing_file_offset > u64::from(self.header_length)
        {
            end = end.min(self.backing_file_offset);
        }
        let start = u64::from(self.header_length);
        if end <= start {
            return Ok(());
        }
        let area = file.read_vec(start, end - start, cs, "qcow2 header extensions")?;
        let mut pos = 0usize;
        while pos + 8 <= area.len() {
            let off = start + pos as u64;
            let kind = be32(&area, pos);
            let elen = be32(&area, pos + 4) as usize;
            if kind == EXT_END {
                break;
            }
            let data_start = pos + 8;
            let data = area.get(data_start..data_start + elen).ok_or_else(|| {
                ctx.corrupt(
                    "header extension",
                    off,
                    format!(
                        "extension {kind:#x} of {elen} bytes runs past the end of the header cluster"
                    ),
                )
            })?;
            let string = |what: &str| -> Result<String> {
                if elen as u32 > MAX_EXT_STRING {
                    return Err(ctx.corrupt(
                        "header extension",
                        off,
                        format!("{what} is {elen} bytes, over {MAX_EXT_STRING}"),
                    ));
                }
                String::from_utf8(data.to_vec()).map_err(|_| {
                    ctx.corrupt("header extension", off, format!("{what} is not UTF-8"))
                })
            };
            match kind {
                EXT_BACKING_FORMAT => self.backing_format = Some(string("backing format")?),
                EXT_DATA_FILE => self.data_file = Some(string("data file name")?),
                EXT_FEATURE_TABLE => {
                    for e in data.chunks_exact(48) {
                        let name = e[2..]
                            .split(|b| *b == 0)
                            .next()
                            .map(|n| String::from_utf8_lossy(n).into_owned())
                            .unwrap_or_default();
                        self.feature_names.push((e[0], e[1], name));
                    }
                }
                EXT_BITMAPS => {
                    if elen < 24 {
                        return Err(ctx.corrupt(
                            "bitmaps extension",
                            off,
                            format!("{elen} bytes, expected 24"),
                        ));
                    }
                    self.bitmaps = Some(BitmapsExt {
                        count: be32(data, 0),
                        dir_size: be64(data, 8),
                        dir_offset: be64(data, 16),
                    });
                }
                EXT_CRYPTO if elen >= 16 => {
                    self.crypto = Some((be64(data, 0), be64(data, 8)));
                }
                _ => {}
            }
            pos = data_start + elen.div_ceil(8) * 8;
        }
        Ok(())
    }

    /// Encodes this header with its extensions and backing file name into one cluster, as the
    /// writer puts it at offset 0. Fails if it does not fit in the cluster.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let mut b = Vec::with_capacity(cs);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.version.to_be_bytes());
        b.extend_from_slice(&[0u8; 12]); // backing file offset and size, set below
        b.extend_from_slice(&self.cluster_bits.to_be_bytes());
        b.extend_from_slice(&self.size.to_be_bytes());
        b.extend_from_slice(&self.crypt_method.to_be_bytes());
        b.extend_from_slice(&self.l1_size.to_be_bytes());
        b.extend_from_slice(&self.l1_table_offset.to_be_bytes());
        b.extend_from_slice(&self.refcount_table_offset.to_be_bytes());
        b.extend_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b.extend_from_slice(&self.nb_snapshots.to_be_bytes());
        b.extend_from_slice(&self.snapshots_offset.to_be_bytes());
        if self.version >= 3 {
            b.extend_from_slice(&self.incompatible.to_be_bytes());
            b.extend_from_slice(&self.compatible.to_be_bytes());
            b.extend_from_slice(&self.autoclear.to_be_bytes());
            b.extend_from_slice(&self.refcount_order.to_be_bytes());
            b.extend_from_slice(&V3_HEADER_LEN.to_be_bytes());
            b.push(self.compression_type);
            b.resize(V3_HEADER_LEN as usize, 0);
        }
        let mut ext = |kind: u32, data: &[u8]| {
            b.extend_from_slice(&kind.to_be_bytes());
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(data);
            let padded = b.len().div_ceil(8) * 8;
            b.resize(padded, 0);
        };
        if let Some(f) = &self.backing_format {
            ext(EXT_BACKING_FORMAT, f.as_bytes());
        }
        if let Some(f) = &self.data_file {
            ext(EXT_DATA_FILE, f.as_bytes());
        }
        ext(EXT_END, &[]);
        if let Some(name) = &self.backing_file {
            let off = b.len() as u64;
            b[8..16].copy_from_slice(&off.to_be_bytes());
            b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            b.extend_from_slice(name.as_bytes());
        }
        if b.len() > cs {
            return Err(Error::InvalidOption(format!(
                "the qcow2 header with its backing file name takes {} bytes, more than one {cs}-byte cluster: use a larger cluster_size or a shorter backing file name",
                b.len()
            )));
        }
        b.resize(cs, 0);
        Ok(b)
    }
}

/// Checks that a table of `bytes` at `offset` is cluster-aligned and lies within the file.
pub fn check_table(
    ctx: &Ctx,
    what: &str,
    field: u64,
    offset: u64,
    bytes: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<()> {
    if offset % cluster_size != 0 || offset == 0 {
        return Err(ctx.corrupt(
            "header",
            field,
            format!("{what} offset {offset:#x} is zero or not aligned to a cluster"),
        ));
    }
    if offset.checked_add(bytes).is_none_or(|e| e > file_len) {
        return Err(ctx.corrupt(
            what,
            offset,
            format!("{bytes} bytes at {offset:#x} run past the end of the file ({file_len} bytes)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 3,
            cluster_bits: 16,
            size: 10 << 20,
            l1_size: 1,
            l1_table_offset: 3 << 16,
            refcount_table_offset: 1 << 16,
            refcount_table_clusters: 1,
            refcount_order: 4,
            header_length: V3_HEADER_LEN,
            backing_file: Some("base.qcow2".into()),
            backing_format: Some("qcow2".into()),
            ..Default::default()
        }
    }

    fn image(bytes: &[u8]) -> (tempfile::TempDir, ImageFile) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h.qcow2");
        std::fs::write(&p, bytes).unwrap();
        let f = ImageFile::open(&p).unwrap();
        (d, f)
    }

    #[test]
    fn encode_then_read_round_trips() {
        let h = sample();
        let mut b = h.encode().unwrap();
        b.resize(4 << 16, 0);
        let (_d, f) = image(&b);
        let ctx = Ctx::new(f.path(), crate::Format::Qcow2);
        let r = Header::read(&f, &ctx).unwrap();
        assert_eq!(r.backing_file.as_deref(), Some("base.qcow2"));
        assert_eq!(r.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(r.size, h.size);
        assert_eq!(r.l2_entries(), 8192);
    }

    #[test]
    fn bad_fields_are_refused_naming_the_header() {
        let h = sample();
        let mut b = h.encode().unwrap();
        b.resize(4 << 16, 0);
        for (at, val, needle) in [
            (20usize, 30u32, "cluster_bits"),
            (4, 9, "version"),
            (32, 2, "encrypted"),
            (36, 0, "L1 table"),
        ] {
            let mut m = b.clone();
            m[at..at + 4].copy_from_slice(&val.to_be_bytes());
            let (_d, f) = image(&m);
            let ctx = Ctx::new(f.path(), crate::Format::Qcow2);
            let e = Header::read(&f, &ctx).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let mut m = b.clone();
        m[72..80].copy_from_slice(&(1u64 << 40).to_be_bytes());
        let (_d, f) = image(&m);
        let ctx = Ctx::new(f.path(), crate::Format::Qcow2);
        let e = Header::read(&f, &ctx).unwrap_err().to_string();
        assert!(e.contains("bit 40"), "{e}");
        let (_d, f) = image(&b[..50]);
        let ctx = Ctx::new(f.path(), crate::Format::Qcow2);
        assert!(Header::read(&f, &ctx).is_err());
    }
}
