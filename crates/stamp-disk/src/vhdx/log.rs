//! The metadata log: finding the active sequence of log entries and replaying it in memory.
//!
//! A VHDX whose header names a log may hold metadata updates (BAT entries, metadata items) that
//! were logged but not yet written in place, for example after a crash of the host. qemu replays
//! them into the file when it opens the image read-write, and refuses a read-only open. Here the
//! replay is done in memory: [`View`] reads the file with the logged updates laid over it, so the
//! image reads as it will after a replay, and the file is never modified.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::file::ImageFile;
use crate::{Ctx, Result};

use super::header::Header;
use super::layout::*;

/// Log sectors are 4 KiB.
pub const LOG_SECTOR: u64 = 4096;
/// Largest log read into memory for a replay. Hyper-V and qemu make 1 MiB logs; a bigger one is
/// refused rather than loaded whole.
pub const MAX_LOG_LENGTH: u64 = 128 * MIB;
/// Log entry header size in bytes.
const ENTRY_HEADER: usize = 64;
/// Descriptor size in bytes.
const DESCRIPTOR: usize = 32;

/// The file as it reads after replaying the log: file bytes, with logged pages and zeroed ranges
/// laid over them, and zeros past the end of the file up to the size the log says it has.
#[derive(Debug, Clone)]
pub struct View {
    file: ImageFile,
    len: u64,
    /// Non-overlapping pieces by start offset: (end, data) where `None` data means zeros.
    overlay: BTreeMap<u64, (u64, Option<Vec<u8>>)>,
    entries: usize,
}

impl View {
    /// The file as it is (no log to replay).
    pub fn plain(file: ImageFile) -> Self {
        View {
            len: file.len(),
            file,
            overlay: BTreeMap::new(),
            entries: 0,
        }
    }

    /// The underlying file.
    pub fn file(&self) -> &ImageFile {
        &self.file
    }

    /// Length of the file after the replay.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Returns true if and only if the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Log entries replayed (0 when there was no log to replay).
    pub fn replayed_entries(&self) -> usize {
        self.entries
    }

    /// Reads exactly `buf.len()` bytes at `offset` of the replayed file; `what` names the
    /// structure for the error when the read ends past the end.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        if self.overlay.is_empty() && self.len == self.file.len() {
            return self.file.read_exact_at(buf, offset, what);
        }
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            // Let the file produce its usual "truncated" error.
            return self.file.read_exact_at(buf, offset.max(self.len), what);
        }
        let end = offset + buf.len() as u64;
        let in_file = self.file.len().saturating_sub(offset).min(buf.len() as u64) as usize;
        if in_file > 0 {
            self.file.read_exact_at(&mut buf[..in_file], offset, what)?;
        }
        buf[in_file..].fill(0);
        let first = self
            .overlay
            .range(..=offset)
            .next_back()
            .filter(|(_, (e, _))| *e > offset)
            .map(|(s, _)| *s)
            .unwrap_or(offset);
        for (&s, (e, data)) in self.overlay.range(first..end) {
            let lo = s.max(offset);
            let hi = (*e).min(end);
            if lo >= hi {
                continue;
            }
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            match data {
                Some(d) => dst.copy_from_slice(&d[(lo - s) as usize..(hi - s) as usize]),
                None => dst.fill(0),
            }
        }
        Ok(())
    }

    /// Lays `data` (or zeros) over `range`, replacing whatever was laid there before.
    fn lay(&mut self, range: Range<u64>, data: Option<Vec<u8>>) {
        let (s, e) = (range.start, range.end);
        if s >= e {
            return;
        }
        let mut hit: Vec<u64> = self
            .overlay
            .range(..s)
            .next_back()
            .filter(|(_, (pe, _))| *pe > s)
            .map(|(k, _)| *k)
            .into_iter()
            .collect();
        hit.extend(self.overlay.range(s..e).map(|(k, _)| *k));
        for k in hit {
            let Some((pe, pd)) = self.overlay.remove(&k) else {
                continue;
            };
            if k < s {
                let left = pd.as_ref().map(|d| d[..(s - k) as usize].to_vec());
                self.overlay.insert(k, (s, left));
            }
            if pe > e {
                let right = pd.as_ref().map(|d| d[(e - k) as usize..].to_vec());
                self.overlay.insert(e, (pe, right));
            }
        }
        self.overlay.insert(s, (e, data));
    }
}

/// A log entry that passed every check, with what it says to do.
#[derive(Debug, Clone)]
struct Entry {
    /// Byte position in the log.
    pos: u64,
    /// Length in bytes.
    length: u64,
    /// Sequence number.
    sequence: u64,
    /// Position of the oldest entry still to replay.
    tail: u64,
    /// The file must be at least this long, or it was truncated.
    flushed_file_offset: u64,
    /// The file's length after the replay.
    last_file_offset: u64,
    /// Updates in order: (file offset, page) or (file offset, zero length).
    ops: Vec<(u64, Op)>,
}

#[derive(Debug, Clone)]
enum Op {
    Data(Vec<u8>),
    Zero(u64),
}

/// Bytes `len` at `pos` of the circular log `log`.
fn circular(log: &[u8], pos: u64, len: u64) -> Vec<u8> {
    let n = log.len() as u64;
    let mut out = Vec::with_capacity(len as usize);
    let mut p = pos % n.max(1);
    let mut left = len;
    while left > 0 && n > 0 {
        let take = left.min(n - p);
        out.extend_from_slice(&log[p as usize..(p + take) as usize]);
        left -= take;
        p = (p + take) % n;
    }
    out
}

/// Parses the entry at `pos` of `log` if it is a valid entry of the log named `guid`.
fn parse_entry(log: &[u8], pos: u64, guid: &[u8; 16]) -> Option<Entry> {
    let n = log.len() as u64;
    let head = circular(log, pos, LOG_SECTOR);
    if &head[..4] != b"loge" {
        return None;
    }
    let length = u64::from(le32(&head, 8));
    let sequence = le64(&head, 16);
    let count = u64::from(le32(&head, 24));
    if length == 0 || length > n || length % LOG_SECTOR != 0 || sequence == 0 {
        return None;
    }
    if guid_at(&head, 32) != *guid {
        return None;
    }
    // Descriptor sectors: the header takes two descriptor slots of the first sector.
    let desc_sectors = (count + 2).div_ceil(128);
    if desc_sectors * LOG_SECTOR > length {
        return None;
    }
    let entry = circular(log, pos, length);
    if le32(&entry, 4) != checksum(&entry, 4) {
        return None;
    }
    let mut ops = Vec::new();
    let mut data_sector = desc_sectors;
    for i in 0..count as usize {
        let d = ENTRY_HEADER + i * DESCRIPTOR;
        let sig = entry.get(d..d + 4)?;
        let file_offset = le64(&entry, d + 16);
        if le64(&entry, d + 24) != sequence || file_offset % LOG_SECTOR != 0 {
            return None;
        }
        if sig == b"zero" {
            let zl = le64(&entry, d + 8);
            if zl % LOG_SECTOR != 0 {
                return None;
            }
            ops.push((file_offset, Op::Zero(zl)));
        } else if sig == b"desc" {
            let s = (data_sector * LOG_SECTOR) as usize;
            let sector = entry.get(s..s + LOG_SECTOR as usize)?;
            let seq = (u64::from(le32(sector, 4)) << 32) | u64::from(le32(sector, 4092));
            if &sector[..4] != b"data" || seq != sequence {
                return None;
            }
            let mut page = sector.to_vec();
            page[..8].copy_from_slice(&entry[d + 8..d + 16]);
            page[4092..].copy_from_slice(&entry[d + 4..d + 8]);
            ops.push((file_offset, Op::Data(page)));
            data_sector += 1;
        } else {
            return None;
        }
    }
    Some(Entry {
        pos,
        length,
        sequence,
        tail: u64::from(le32(&head, 12)),
        flushed_file_offset: le64(&head, 48),
        last_file_offset: le64(&head, 56),
        ops,
    })
}

/// Finds the active sequence in `log`: runs of valid entries with consecutive sequence numbers,
/// the one ending with the highest sequence number whose last entry's tail points into the run;
/// returns its entries from that tail on.
fn active_sequence(log: &[u8], guid: &[u8; 16]) -> Vec<Entry> {
    let n = log.len() as u64;
    let mut valid: BTreeMap<u64, Entry> = BTreeMap::new();
    let mut pos = 0;
    while pos < n {
        if let Some(e) = parse_entry(log, pos, guid) {
            valid.insert(pos, e);
        }
        pos += LOG_SECTOR;
    }
    let next_of = |e: &Entry| {
        let q = (e.pos + e.length) % n;
        valid
            .get(&q)
            .filter(|x| Some(x.sequence) == e.sequence.checked_add(1))
    };
    // Runs start at entries that follow no other valid entry.
    let followed: std::collections::HashSet<u64> = valid
        .values()
        .filter_map(|e| next_of(e).map(|x| x.pos))
        .collect();
    let mut best: Option<Vec<Entry>> = None;
    for start in valid.values().filter(|e| !followed.contains(&e.pos)) {
        let mut run = vec![start.clone()];
        let mut cur = start;
        // Each step raises the sequence number, so the run cannot loop; bound it anyway.
        while let Some(x) = next_of(cur) {
            if run.len() as u64 > n / LOG_SECTOR {
                break;
            }
            run.push(x.clone());
            cur = x;
        }
        let Some(last) = run.last() else { continue };
        let Some(from) = run.iter().position(|e| e.pos == last.tail) else {
            continue;
        };
        let run = run.split_off(from);
        let better = match (&best, run.last()) {
            (Some(b), Some(l)) => b.last().is_none_or(|bl| l.sequence > bl.sequence),
            (None, Some(_)) => true,
            _ => false,
        };
        if better {
            best = Some(run);
        }
    }
    best.unwrap_or_default()
}

/// Reads the log named by `header` and returns the file as it reads after replaying the active
/// sequence (the plain file when there is nothing to replay).
pub fn replay(file: &ImageFile, ctx: &Ctx, header: &Header, header_off: u64) -> Result<View> {
    // qemu checks the log location even when there is no log.
    if header.log_offset < MIB || header.log_offset % MIB != 0 {
        return Err(ctx.corrupt(
            "header",
            header_off + 72,
            format!(
                "log offset {:#x} is not a multiple of 1 MiB past the header section",
                header.log_offset
            ),
        ));
    }
    if header.log_version != 0 {
        return Err(ctx.unsupported(format!(
            "log version {} (only 0 exists)",
            header.log_version
        )));
    }
    if !header.has_log() {
        return Ok(View::plain(file.clone()));
    }
    let len = u64::from(header.log_length);
    if len % MIB != 0 {
        return Err(ctx.corrupt(
            "header",
            header_off + 68,
            format!("log length {len} is not a multiple of 1 MiB"),
        ));
    }
    if len > MAX_LOG_LENGTH {
        return Err(ctx.unsupported(format!(
            "a log of {len} bytes to replay, over the limit of {MAX_LOG_LENGTH}; open the image \
             read-write in Hyper-V or run `qemu-img check -r all` on it first"
        )));
    }
    if header.log_offset.saturating_add(len) > file.len() {
        return Err(ctx.corrupt(
            "header",
            header_off + 72,
            format!(
                "log at {:#x} ({len} bytes) ends past the end of the file ({} bytes)",
                header.log_offset,
                file.len()
            ),
        ));
    }
    let log = file.read_vec(header.log_offset, len, MAX_LOG_LENGTH, "VHDX log")?;
    let entries = active_sequence(&log, &header.log_guid);
    let mut view = View::plain(file.clone());
    for e in &entries {
        let at = header.log_offset + e.pos;
        if e.flushed_file_offset > file.len() {
            return Err(ctx.corrupt(
                "log entry",
                at,
                format!(
                    "sequence {}: the file was flushed to {} bytes but is {} bytes (truncated?)",
                    e.sequence,
                    e.flushed_file_offset,
                    file.len()
                ),
            ));
        }
        let new_len = e
            .last_file_offset
            .checked_next_multiple_of(MIB)
            .unwrap_or(u64::MAX);
        if new_len > view.len {
            if new_len > file.len().saturating_add(MAX_VIRTUAL_SIZE) {
                return Err(ctx.corrupt(
                    "log entry",
                    at + 56,
                    format!("last file offset {:#x} is implausible", e.last_file_offset),
                ));
            }
            view.len = new_len;
        }
        for (off, op) in &e.ops {
            let span = match op {
                Op::Data(_) => LOG_SECTOR,
                Op::Zero(n) => *n,
            };
            let end = off.checked_add(span).filter(|x| *x <= view.len);
            let Some(end) = end else {
                return Err(ctx.corrupt(
                    "log entry",
                    at,
                    format!(
                        "sequence {}: update at {off:#x} ({span} bytes) ends past the file ({} bytes)",
                        e.sequence, view.len
                    ),
                ));
            };
            match op {
                Op::Data(p) => view.lay(*off..end, Some(p.clone())),
                Op::Zero(_) => view.lay(*off..end, None),
            }
        }
        view.entries += 1;
    }
    Ok(view)
}

/// Builds one log entry of the log named `guid` (used by tests to make images with a pending log):
/// `ops` are (file offset, `Some(4 KiB page)` to write, or `None` to zero 4 KiB), `tail` is the
/// log position of the oldest entry to replay and `file_len` the file's length.
pub fn build_entry(
    guid: &[u8; 16],
    sequence: u64,
    tail: u32,
    file_len: u64,
    ops: &[(u64, Option<Vec<u8>>)],
) -> Vec<u8> {
    let count = ops.len() as u64;
    let desc_sectors = (count + 2).div_ceil(128);
    let data = ops.iter().filter(|o| o.1.is_some()).count() as u64;
    let length = (desc_sectors + data) * LOG_SECTOR;
    let mut b = vec![0u8; length as usize];
    put(&mut b, 0, b"loge");
    put(&mut b, 8, &(length as u32).to_le_bytes());
    put(&mut b, 12, &tail.to_le_bytes());
    put(&mut b, 16, &sequence.to_le_bytes());
    put(&mut b, 24, &(count as u32).to_le_bytes());
    put(&mut b, 32, guid);
    put(&mut b, 48, &file_len.to_le_bytes());
    put(&mut b, 56, &file_len.to_le_bytes());
    let mut ds = desc_sectors as usize;
    for (i, (off, page)) in ops.iter().enumerate() {
        let d = ENTRY_HEADER + i * DESCRIPTOR;
        put(&mut b, d + 16, &off.to_le_bytes());
        put(&mut b, d + 24, &sequence.to_le_bytes());
        match page {
            None => {
                put(&mut b, d, b"zero");
                put(&mut b, d + 8, &LOG_SECTOR.to_le_bytes());
            }
            Some(p) => {
                put(&mut b, d, b"desc");
                put(&mut b, d + 4, &p[4092..4096]);
                put(&mut b, d + 8, &p[..8]);
                let s = ds * LOG_SECTOR as usize;
                put(&mut b, s, b"data");
                put(&mut b, s + 4, &((sequence >> 32) as u32).to_le_bytes());
                put(&mut b, s + 8, &p[8..4092]);
                put(&mut b, s + 4092, &(sequence as u32).to_le_bytes());
                ds += 1;
            }
        }
    }
    seal(&mut b, 4);
    b
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_newest_run_from_its_tail() {
        let g = [9u8; 16];
        let page = |v: u8| Some(vec![v; 4096]);
        let mut log = vec![0u8; MIB as usize];
        // An old run (sequence 1..2) and a newer one (5..6) whose tail is its own first entry.
        let e1 = build_entry(&g, 1, 0, 0, &[(0x1000, page(1))]);
        let e2 = build_entry(&g, 2, 0, 0, &[(0x2000, page(2))]);
        let e5 = build_entry(&g, 5, 0x40000, 0, &[(0x1000, page(5))]);
        let e6 = build_entry(&g, 6, 0x40000, 0, &[(0x3000, None)]);
        put(&mut log, 0, &e1);
        put(&mut log, e1.len(), &e2);
        put(&mut log, 0x40000, &e5);
        put(&mut log, 0x40000 + e5.len(), &e6);
        let run = active_sequence(&log, &g);
        assert_eq!(
            run.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            vec![5, 6]
        );
        // Another GUID's entries are not this log's.
        assert!(active_sequence(&log, &[1; 16]).is_empty());
        // A flipped byte breaks an entry's checksum.
        log[0x40000 + 200] ^= 1;
        let run = active_sequence(&log, &g);
        assert_eq!(
            run.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn overlay_pieces_replace_and_split() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![0xaau8; 0x4000]).unwrap();
        let mut v = View::plain(ImageFile::open(&p).unwrap());
        v.len = 0x6000;
        v.lay(0..0x4000, None);
        v.lay(0x1000..0x2000, Some(vec![1; 0x1000]));
        let mut b = vec![0u8; 0x6000];
        v.read_exact_at(&mut b, 0, "t").unwrap();
        assert!(b[..0x1000].iter().all(|x| *x == 0));
        assert!(b[0x1000..0x2000].iter().all(|x| *x == 1));
        assert!(b[0x2000..].iter().all(|x| *x == 0));
        v.lay(0x800..0x1800, Some(vec![2; 0x1000]));
        let mut b = vec![0u8; 0x1000];
        v.read_exact_at(&mut b, 0x1000, "t").unwrap();
        assert!(b[..0x800].iter().all(|x| *x == 2));
        assert!(b[0x800..].iter().all(|x| *x == 1));
        assert!(v.read_exact_at(&mut b, 0x5800, "t").is_err());
    }
}
