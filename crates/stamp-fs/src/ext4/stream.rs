//! Streaming a plan: metadata from memory, file contents read a bounded buffer at a time.

use bytes::Bytes;
use stamp_disk::Extent;

use super::layout::Chunk;
use super::plan::Plan;
use crate::{Error, Kind, NodeId, Result, Tree};

/// Blocks read from a file at once.
const READ_BLOCKS: u64 = 256;

/// The iterator of extents of a planned filesystem.
pub struct Stream<'a> {
    tree: &'a Tree,
    bs: u64,
    chunks: std::vec::IntoIter<Chunk>,
    /// A file chunk in progress: (physical block, blocks left, node, logical block).
    file: Option<(u64, u64, NodeId, u64)>,
}

impl<'a> Stream<'a> {
    /// Streams `plan` over `tree`.
    pub fn new(tree: &'a Tree, plan: Plan) -> Self {
        Stream {
            tree,
            bs: plan.bs,
            chunks: plan.chunks.into_iter(),
            file: None,
        }
    }

    fn read(&mut self, block: u64, count: u64, node: NodeId, lblk: u64) -> Result<Extent> {
        let n = count.min(READ_BLOCKS);
        let Kind::File(c) = &self.tree.entry(node).kind else {
            return Err(Error::InvalidOption("planned file is not a file".into()));
        };
        let start = lblk * self.bs;
        let want = (n * self.bs).min(c.len().saturating_sub(start));
        let mut buf = vec![0u8; (n * self.bs) as usize];
        c.read_at(&mut buf[..want as usize], start)?;
        if count > n {
            self.file = Some((block + n, count - n, node, lblk + n));
        }
        Ok(Extent::Data {
            offset: block * self.bs,
            bytes: Bytes::from(buf),
        })
    }
}

impl Iterator for Stream<'_> {
    type Item = Result<Extent>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((block, count, node, lblk)) = self.file.take() {
            return Some(self.read(block, count, node, lblk));
        }
        match self.chunks.next()? {
            Chunk::Mem { offset, bytes } => Some(Ok(Extent::Data { offset, bytes })),
            Chunk::File {
                block,
                count,
                node,
                lblk,
            } => Some(self.read(block, count, node, lblk)),
        }
    }
}
