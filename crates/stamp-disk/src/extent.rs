//! Extents: the unit in which disk contents move between readers and writers.

use bytes::Bytes;

/// A run of a disk's contents: bytes of data, or a run of zeros that is never materialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extent {
    /// `bytes` at `offset`.
    Data {
        /// Byte offset in the virtual disk.
        offset: u64,
        /// The data.
        bytes: Bytes,
    },
    /// `len` zero bytes at `offset`.
    Zero {
        /// Byte offset in the virtual disk.
        offset: u64,
        /// Number of zero bytes.
        len: u64,
    },
}

impl Extent {
    /// Where the extent starts in the virtual disk.
    pub fn offset(&self) -> u64 {
        match self {
            Extent::Data { offset, .. } | Extent::Zero { offset, .. } => *offset,
        }
    }

    /// The extent's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Extent::Data { bytes, .. } => bytes.len() as u64,
            Extent::Zero { len, .. } => *len,
        }
    }

    /// Returns true if and only if the extent covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the extent ends (exclusive).
    pub fn end(&self) -> u64 {
        self.offset() + self.len()
    }
}

/// Returns true if and only if every byte of `buf` is zero.
#[inline]
pub fn is_zero(buf: &[u8]) -> bool {
    let chunks = buf.chunks_exact(16);
    let rest = chunks.remainder();
    chunks
        .map(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])))
        .all(|w| w == 0)
        && rest.iter().all(|b| *b == 0)
}

/// Checks that a writer receives extents in ascending order within the virtual size; writers call
/// it first in `write_extent`.
#[derive(Debug, Clone)]
pub struct ExtentOrder {
    next: u64,
    size: u64,
}

impl ExtentOrder {
    /// A checker for a disk of `size` bytes.
    pub fn new(size: u64) -> Self {
        ExtentOrder { next: 0, size }
    }

    /// Accepts `e` if it starts at or after the end of the previous extent and ends within the disk.
    pub fn accept(&mut self, e: &Extent) -> crate::Result<()> {
        let bad = |detail: String| crate::Error::BadExtent {
            offset: e.offset(),
            len: e.len(),
            detail,
        };
        if e.offset() < self.next {
            return Err(bad(format!("previous extent ended at {:#x}", self.next)));
        }
        let end = e
            .offset()
            .checked_add(e.len())
            .ok_or_else(|| bad("offset + length overflows".into()))?;
        if end > self.size {
            return Err(bad(format!("virtual size is {}", self.size)));
        }
        self.next = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_sees_a_single_set_byte_anywhere() {
        for len in [0usize, 1, 15, 16, 17, 4096, 4099] {
            let mut buf = vec![0u8; len];
            assert!(is_zero(&buf));
            for i in 0..len {
                buf[i] = 1;
                assert!(!is_zero(&buf), "len {len} byte {i}");
                buf[i] = 0;
            }
        }
    }

    #[test]
    fn order_refuses_overlap_and_overrun() {
        let mut o = ExtentOrder::new(100);
        o.accept(&Extent::Zero { offset: 0, len: 10 }).unwrap();
        assert!(o.accept(&Extent::Zero { offset: 5, len: 1 }).is_err());
        o.accept(&Extent::Zero {
            offset: 20,
            len: 80,
        })
        .unwrap();
        let mut o = ExtentOrder::new(100);
        assert!(
            o.accept(&Extent::Zero {
                offset: 90,
                len: 11
            })
            .is_err()
        );
    }
}
