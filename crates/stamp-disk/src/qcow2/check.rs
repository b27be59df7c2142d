//! `check` for qcow2, with qemu-img's semantics: every reference from the header, the L1/L2
//! tables (active and snapshots), the refcount structures and the bitmaps is counted, and the
//! counts are compared with the stored refcounts. A stored refcount lower than the references
//! (or a bad entry) is a corruption, a higher one a leak.

use super::header::{AUTOCLEAR_BITMAPS, MAX_L1_BYTES};
use super::reader::Qcow2Reader;
use super::table::{
    ClusterKind, L1E_RESERVED_MASK, L2E_STD_RESERVED_MASK, OFFSET_MASK, OFLAG_COMPRESSED,
    OFLAG_COPIED, REFTABLE_OFFSET_MASK, REFTABLE_RESERVED_MASK, parse_be_u64,
};
use crate::{CheckReport, Result};

/// Most host clusters `check` counts (two u32 per cluster in memory: 512 MiB at most).
pub const MAX_CHECK_CLUSTERS: u64 = 1 << 26;
/// Largest snapshot table (same limit as qemu: 64 MiB).
const MAX_SNAPSHOT_TABLE: u64 = 64 << 20;
/// Largest bitmap directory (same limit as qemu: 64 KiB per bitmap, 65535 bitmaps; bounded here
/// at 64 MiB).
const MAX_BITMAP_DIR: u64 = 64 << 20;
/// Largest bitmap table in entries (qemu's limit: 0x4000000).
const MAX_BITMAP_TABLE: u64 = 0x400_0000;

/// Most L2 entries one check walks, over the active table and all snapshots (a bound on the
/// time a crafted image can make it take; a 1 TiB disk with 64 KiB clusters and 60 snapshots
/// stays under it).
const MAX_CHECK_L2_ENTRIES: u64 = 1 << 30;

/// A running count of references to each host cluster.
struct Counter<'a> {
    refs: Vec<u32>,
    walked: u64,
    cs: u64,
    flen: u64,
    report: &'a mut CheckReport,
}

impl Counter<'_> {
    /// Counts one reference to every cluster that `len` bytes at `off` touch.
    fn inc(&mut self, off: u64, len: u64, what: &str) {
        if len == 0 {
            return;
        }
        let Some(end) = off.checked_add(len) else {
            self.report
                .corruptions
                .push(format!("{what} at {off:#x} ({len} bytes) overflows"));
            return;
        };
        if end > self.flen.div_ceil(self.cs) * self.cs {
            self.report.corruptions.push(format!(
                "{what} at {off:#x} ({len} bytes) is past the end of the file ({} bytes)",
                self.flen
            ));
            return;
        }
        for c in off / self.cs..end.div_ceil(self.cs) {
            if let Some(r) = self.refs.get_mut(c as usize) {
                *r = r.saturating_add(1);
            }
        }
    }
}

/// Reads the stored refcount of every host cluster of the file.
fn stored_refcounts(r: &Qcow2Reader, n: u64, report: &mut CheckReport) -> Result<Vec<u32>> {
    let h = &r.header;
    let cs = r.geo.cluster_size;
    let bits = u64::from(h.refcount_bits());
    let per_block = cs * 8 / bits;
    let mut stored = vec![0u32; n as usize];
    let rt_len = u64::from(h.refcount_table_clusters) * cs;
    if h.refcount_table_offset % cs != 0
        || h.refcount_table_offset
            .checked_add(rt_len)
            .is_none_or(|e| e > r.file.len())
    {
        report.corruptions.push(format!(
            "refcount table at {:#x} ({rt_len} bytes) is unaligned or past the end of the file",
            h.refcount_table_offset
        ));
        return Ok(stored);
    }
    let table = parse_be_u64(&r.file.read_vec(
        h.refcount_table_offset,
        rt_len,
        super::header::MAX_REFTABLE_BYTES,
        "refcount table",
    )?);
    let mut block = vec![0u8; cs as usize];
    for (i, e) in table.iter().enumerate() {
        let first = i as u64 * per_block;
        if first >= n {
            break;
        }
        let off = e & REFTABLE_OFFSET_MASK;
        if off == 0 {
            continue;
        }
        if off % cs != 0 || off.checked_add(cs).is_none_or(|end| end > r.file.len()) {
            // Counted (and reported) by the reference walk.
            continue;
        }
        r.file.read_exact_at(&mut block, off, "refcount block")?;
        for k in 0..per_block.min(n - first) {
            let v = match bits {
                1 | 2 | 4 => {
                    let bit = k * bits;
                    let byte = block.get((bit / 8) as usize).copied().unwrap_or(0);
                    u64::from(byte >> (bit % 8)) & ((1 << bits) - 1)
                }
                _ => {
                    let w = (bits / 8) as usize;
                    let at = k as usize * w;
                    block
                        .get(at..at + w)
                        .map(|b| b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x)))
                        .unwrap_or(0)
                }
            };
            if let Some(s) = stored.get_mut((first + k) as usize) {
                *s = u32::try_from(v).unwrap_or(u32::MAX);
            }
        }
    }
    Ok(stored)
}

/// A reference whose COPIED flag must agree with the stored refcount (active tables only).
struct Copied {
    what: &'static str,
    at: u64,
    host: u64,
    flag: bool,
}

/// Counts the references of the L1 table `l1` and the L2 tables under it.
fn walk_l1(
    r: &Qcow2Reader,
    l1: &[u64],
    active: bool,
    c: &mut Counter<'_>,
    copied: &mut Vec<Copied>,
    l1_at: u64,
) -> Result<u64> {
    let cs = r.geo.cluster_size;
    let mut allocated = 0u64;
    for (i, e) in l1.iter().enumerate() {
        let at = l1_at + i as u64 * 8;
        if *e != 0 && e & L1E_RESERVED_MASK != 0 {
            c.report.corruptions.push(format!(
                "L1 entry {i} at {at:#x}: reserved bits are set ({e:#x})"
            ));
        }
        let off = e & OFFSET_MASK;
        if off == 0 {
            continue;
        }
        if off % cs != 0 || off.checked_add(cs).is_none_or(|end| end > r.file.len()) {
            c.report.corruptions.push(format!(
                "L1 entry {i} at {at:#x}: L2 table offset {off:#x} is unaligned or past the end of the file"
            ));
            continue;
        }
        c.inc(off, cs, "L2 table");
        c.walked += r.geo.l2_entries;
        if c.walked > MAX_CHECK_L2_ENTRIES {
            return Err(r.ctx.unsupported(format!(
                "checking over {MAX_CHECK_L2_ENTRIES} L2 entries (L1 tables referring to the same L2 tables many times?)"
            )));
        }
        if active {
            copied.push(Copied {
                what: "L2 table",
                at,
                host: off,
                flag: e & OFLAG_COPIED != 0,
            });
        }
        let t = r.read_l2(off)?;
        let stride = if r.geo.extended { 2 } else { 1 };
        for j in 0..r.geo.l2_entries {
            let entry = t.get((j * stride) as usize).copied().unwrap_or(0);
            let bitmap = if r.geo.extended {
                t.get((j * 2 + 1) as usize).copied().unwrap_or(0)
            } else {
                0
            };
            let eat = off + j * 8 * stride;
            if entry & OFLAG_COMPRESSED == 0 && entry & L2E_STD_RESERVED_MASK != 0 {
                c.report.corruptions.push(format!(
                    "L2 entry {j} at {eat:#x}: reserved bits are set ({entry:#x})"
                ));
            }
            let kind = match r.geo.classify(entry, bitmap) {
                Ok(k) => k,
                Err(d) => {
                    c.report
                        .corruptions
                        .push(format!("L2 entry {j} at {eat:#x}: {d}"));
                    continue;
                }
            };
            let data_cluster = |host: u64, c: &mut Counter<'_>, copied: &mut Vec<Copied>| {
                if r.has_data_file() {
                    return;
                }
                c.inc(host, cs, "data cluster");
                if active {
                    copied.push(Copied {
                        what: "data cluster",
                        at: eat,
                        host,
                        flag: entry & OFLAG_COPIED != 0,
                    });
                }
            };
            match kind {
                ClusterKind::Unallocated | ClusterKind::Zero { host: 0 } => {}
                ClusterKind::Zero { host } => data_cluster(host, c, copied),
                ClusterKind::Normal { host } => {
                    allocated += 1;
                    data_cluster(host, c, copied);
                }
                ClusterKind::Subclusters { host, alloc, .. } => {
                    if alloc != 0 {
                        allocated += 1;
                    }
                    if host != 0 {
                        data_cluster(host, c, copied);
                    }
                }
                ClusterKind::Compressed { offset, size } => {
                    allocated += 1;
                    if entry & OFLAG_COPIED != 0 {
                        c.report.corruptions.push(format!(
                            "L2 entry {j} at {eat:#x}: copied flag set on a compressed cluster"
                        ));
                    }
                    if bitmap != 0 {
                        c.report.corruptions.push(format!(
                            "L2 entry {j} at {eat:#x}: compressed cluster with a non-zero subcluster bitmap"
                        ));
                    }
                    debug_assert!(entry & OFLAG_COMPRESSED != 0);
                    c.inc(offset, size, "compressed cluster");
                }
            }
        }
    }
    Ok(allocated)
}

/// Counts the snapshot table and every snapshot's tables.
fn walk_snapshots(r: &Qcow2Reader, c: &mut Counter<'_>) -> Result<()> {
    let h = &r.header;
    if h.nb_snapshots == 0 {
        return Ok(());
    }
    let cs = r.geo.cluster_size;
    if h.snapshots_offset % cs != 0 || h.snapshots_offset >= r.file.len() {
        c.report.corruptions.push(format!(
            "snapshot table at {:#x} is unaligned or past the end of the file",
            h.snapshots_offset
        ));
        return Ok(());
    }
    let mut pos = h.snapshots_offset;
    let mut ignored = Vec::new();
    for n in 0..h.nb_snapshots {
        if pos - h.snapshots_offset > MAX_SNAPSHOT_TABLE {
            c.report.corruptions.push(format!(
                "snapshot table at {:#x} is over 64 MiB",
                h.snapshots_offset
            ));
            return Ok(());
        }
        let mut e = [0u8; 40];
        r.file.read_exact_at(&mut e, pos, "snapshot table entry")?;
        let be32 = |at: usize| u32::from_be_bytes([e[at], e[at + 1], e[at + 2], e[at + 3]]);
        let mut o = [0u8; 8];
        o.copy_from_slice(&e[..8]);
        let l1_off = u64::from_be_bytes(o);
        let l1_size = u64::from(be32(8));
        let id_len = u64::from(u16::from_be_bytes([e[12], e[13]]));
        let name_len = u64::from(u16::from_be_bytes([e[14], e[15]]));
        let extra = u64::from(be32(36));
        let l1_bytes = l1_size * 8;
        if l1_bytes > MAX_L1_BYTES
            || l1_off % cs != 0
            || l1_off
                .checked_add(l1_bytes)
                .is_none_or(|x| x > r.file.len())
        {
            c.report.corruptions.push(format!(
                "snapshot {n} at {pos:#x}: L1 table at {l1_off:#x} ({l1_size} entries) is unaligned, too large or past the end of the file"
            ));
        } else if l1_size > 0 {
            c.inc(l1_off, l1_bytes, "snapshot L1 table");
            let l1 = parse_be_u64(&r.file.read_vec(
                l1_off,
                l1_bytes,
                MAX_L1_BYTES,
                "snapshot L1 table",
            )?);
            walk_l1(r, &l1, false, c, &mut ignored, l1_off)?;
        }
        pos = (pos + 40 + extra + id_len + name_len).div_ceil(8) * 8;
    }
    c.inc(
        h.snapshots_offset,
        pos - h.snapshots_offset,
        "snapshot table",
    );
    Ok(())
}

/// Counts the bitmap directory and the bitmaps' tables and data.
fn walk_bitmaps(r: &Qcow2Reader, c: &mut Counter<'_>) -> Result<()> {
    let h = &r.header;
    let Some(b) = h.bitmaps else {
        return Ok(());
    };
    if h.autoclear & AUTOCLEAR_BITMAPS == 0 || b.count == 0 {
        return Ok(());
    }
    let cs = r.geo.cluster_size;
    if b.dir_size > MAX_BITMAP_DIR
        || b.dir_offset % cs != 0
        || b.dir_offset
            .checked_add(b.dir_size)
            .is_none_or(|e| e > r.file.len())
    {
        c.report.corruptions.push(format!(
            "bitmap directory at {:#x} ({} bytes) is unaligned, too large or past the end of the file",
            b.dir_offset, b.dir_size
        ));
        return Ok(());
    }
    c.inc(b.dir_offset, b.dir_size, "bitmap directory");
    let dir = r
        .file
        .read_vec(b.dir_offset, b.dir_size, MAX_BITMAP_DIR, "bitmap directory")?;
    let mut pos = 0usize;
    for _ in 0..b.count {
        let Some(e) = dir.get(pos..pos + 24) else {
            break;
        };
        let mut o = [0u8; 8];
        o.copy_from_slice(&e[..8]);
        let t_off = u64::from_be_bytes(o);
        let t_size = u64::from(u32::from_be_bytes([e[8], e[9], e[10], e[11]]));
        let name_len = usize::from(u16::from_be_bytes([e[18], e[19]]));
        let extra = u32::from_be_bytes([e[20], e[21], e[22], e[23]]) as usize;
        if t_size > MAX_BITMAP_TABLE
            || t_off % cs != 0
            || t_off
                .checked_add(t_size * 8)
                .is_none_or(|x| x > r.file.len())
        {
            c.report.corruptions.push(format!(
                "bitmap table at {t_off:#x} ({t_size} entries) is unaligned, too large or past the end of the file"
            ));
        } else if t_size > 0 {
            c.inc(t_off, t_size * 8, "bitmap table");
            let t = parse_be_u64(&r.file.read_vec(
                t_off,
                t_size * 8,
                MAX_BITMAP_TABLE * 8,
                "bitmap table",
            )?);
            for d in t {
                let off = d & OFFSET_MASK;
                if off != 0 {
                    c.inc(off, cs, "bitmap data cluster");
                }
            }
        }
        pos = (pos + 24 + extra + name_len).div_ceil(8) * 8;
    }
    Ok(())
}

/// Checks the image's metadata as `qemu-img check` does.
pub fn check(r: &Qcow2Reader) -> Result<CheckReport> {
    let h = &r.header;
    let cs = r.geo.cluster_size;
    let flen = r.file.len();
    let n = flen.div_ceil(cs);
    if n > MAX_CHECK_CLUSTERS {
        return Err(r.ctx.unsupported(format!(
            "checking an image of {n} clusters (the limit is {MAX_CHECK_CLUSTERS})"
        )));
    }
    let mut report = CheckReport {
        total_clusters: h.size.div_ceil(cs),
        ..Default::default()
    };
    let stored = stored_refcounts(r, n, &mut report)?;
    let mut copied = Vec::new();
    let mut c = Counter {
        refs: vec![0u32; n as usize],
        walked: 0,
        cs,
        flen,
        report: &mut report,
    };
    c.inc(0, cs, "header");
    let l1_bytes = u64::from(h.l1_size) * 8;
    c.inc(h.l1_table_offset, l1_bytes, "L1 table");
    let allocated = walk_l1(r, &r.l1, true, &mut c, &mut copied, h.l1_table_offset)?;
    walk_snapshots(r, &mut c)?;
    walk_bitmaps(r, &mut c)?;
    c.inc(
        h.refcount_table_offset,
        u64::from(h.refcount_table_clusters) * cs,
        "refcount table",
    );
    if h.refcount_table_offset % cs == 0 {
        let rt_len = u64::from(h.refcount_table_clusters) * cs;
        if h.refcount_table_offset
            .checked_add(rt_len)
            .is_some_and(|e| e <= flen)
        {
            let table = parse_be_u64(&r.file.read_vec(
                h.refcount_table_offset,
                rt_len,
                super::header::MAX_REFTABLE_BYTES,
                "refcount table",
            )?);
            for (i, e) in table.iter().enumerate() {
                if e & REFTABLE_RESERVED_MASK != 0 {
                    c.report.corruptions.push(format!(
                        "refcount table entry {i}: reserved bits are set ({e:#x})"
                    ));
                }
                let off = e & REFTABLE_OFFSET_MASK;
                if off == 0 {
                    continue;
                }
                if off % cs != 0 {
                    c.report.corruptions.push(format!(
                        "refcount table entry {i}: refcount block offset {off:#x} is not aligned to a cluster"
                    ));
                    continue;
                }
                c.inc(off, cs, "refcount block");
            }
        }
    }
    let refs = std::mem::take(&mut c.refs);
    for (i, (&s, &computed)) in stored.iter().zip(&refs).enumerate() {
        if s < computed {
            report.corruptions.push(format!(
                "cluster {i} (offset {:#x}): refcount={s} but {computed} references",
                i as u64 * cs
            ));
        } else if s > computed {
            report.leaks.push(format!(
                "leaked cluster {i} (offset {:#x}): refcount={s}, references={computed}",
                i as u64 * cs
            ));
        }
    }
    for cp in copied {
        let s = stored.get((cp.host / cs) as usize).copied().unwrap_or(0);
        if (s == 1) != cp.flag {
            report.corruptions.push(format!(
                "{} entry at {:#x}: copied flag {} but refcount={s}",
                cp.what,
                cp.at,
                if cp.flag { "set" } else { "clear" }
            ));
        }
    }
    report.allocated_clusters = allocated;
    Ok(report)
}
