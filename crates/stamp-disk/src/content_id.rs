//! Deterministic image UUIDs derived from a disk's contents, so the same input always gives the
//! same bytes and different disks get different UUIDs (VirtualBox refuses two media with one
//! UUID). Used by the VHD and VDI writers.

use sha1::{Digest, Sha1};

use crate::is_zero;

/// Granularity of the content hash: the disk is hashed as 1 MiB units, units of zeros skipped,
/// so how the data arrives (extent boundaries) does not change the result.
const UNIT: u64 = 1 << 20;

/// Zeros fed to the CRC for gaps inside a unit.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// A running hash of a disk's contents, fed in ascending order.
#[derive(Debug)]
pub(crate) struct ContentId {
    sha: Sha1,
    /// The unit being hashed: index, CRC so far, bytes fed so far, whether any was non-zero.
    cur: Option<(u64, crc32fast::Hasher, u64, bool)>,
}

impl ContentId {
    /// A hash for a disk labelled `label` (format and subformat) of `size` bytes.
    pub(crate) fn new(label: &str, size: u64) -> Self {
        let mut sha = Sha1::new();
        sha.update(label.as_bytes());
        sha.update(size.to_le_bytes());
        ContentId { sha, cur: None }
    }

    /// Feeds `bytes` at disk `offset` (at or after the end of what was fed before).
    pub(crate) fn feed(&mut self, mut offset: u64, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let unit = offset / UNIT;
            let in_unit = offset % UNIT;
            if self.cur.as_ref().is_none_or(|c| c.0 != unit) {
                self.close_unit();
                self.cur = Some((unit, crc32fast::Hasher::new(), 0, false));
            }
            let n = ((UNIT - in_unit) as usize).min(bytes.len());
            let (piece, rest) = bytes.split_at(n);
            if let Some((_, crc, pos, nonzero)) = self.cur.as_mut() {
                pad(crc, pos, in_unit);
                crc.update(piece);
                *pos += n as u64;
                *nonzero |= !is_zero(piece);
            }
            offset += n as u64;
            bytes = rest;
        }
    }

    /// Pads the current unit with zeros and adds it to the hash if it held data.
    fn close_unit(&mut self) {
        if let Some((unit, mut crc, mut pos, true)) = self.cur.take() {
            pad(&mut crc, &mut pos, UNIT);
            self.sha.update(unit.to_le_bytes());
            self.sha.update(crc.finalize().to_le_bytes());
        }
    }

    /// The UUID (RFC 4122 version 5, big-endian bytes) for everything fed.
    pub(crate) fn finish(mut self) -> [u8; 16] {
        self.close_unit();
        let digest = self.sha.finalize();
        *uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &digest).as_bytes()
    }
}

/// Feeds zeros to `crc` until `pos` reaches `to`.
fn pad(crc: &mut crc32fast::Hasher, pos: &mut u64, to: u64) {
    while *pos < to {
        let n = (to - *pos).min(ZEROS.len() as u64) as usize;
        crc.update(&ZEROS[..n]);
        *pos += n as u64;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn same_content_in_different_pieces_gives_the_same_id() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut a = ContentId::new("x", 8 << 20);
        a.feed(100, &data);
        let mut b = ContentId::new("x", 8 << 20);
        for (i, c) in data.chunks(77_777).enumerate() {
            b.feed(100 + (i * 77_777) as u64, c);
        }
        let mut z = ContentId::new("x", 8 << 20);
        z.feed(0, &[0; 100]);
        z.feed(100, &data);
        let ida = a.finish();
        assert_eq!(ida, b.finish());
        assert_eq!(ida, z.finish());
        let mut c = ContentId::new("x", 8 << 20);
        c.feed(101, &data);
        assert_ne!(ida, c.finish());
        assert_ne!(ida, ContentId::new("x", 8 << 20).finish());
    }
}
