//! Planning: inode numbers, directory contents, xattrs and sparse file runs from the tree, then
//! a layout (geometry, block allocation, bitmaps, descriptors, superblocks) for a given size.

use bytes::Bytes;

use super::dir::{self, Dirent};
use super::extent::{self, Ext, MAX_LEN};
use super::geometry::{Alloc, Geometry, INODE_SIZE, MAX_BLOCKS};
use super::htree;
use super::inode::{self, EXTENTS_FL, Inode};
use super::superblock::{self, COMPAT_HAS_JOURNAL, GroupCounts, Super};
use super::xattr::{self, Attr};
use super::{Ext4Options, put32};
use crate::{Content, Error, Kind, NodeId, Result, Timestamp, Tree};

/// Something to write at a place in the image, in ascending order.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// Bytes at a byte offset.
    Mem {
        /// Byte offset.
        offset: u64,
        /// The bytes.
        bytes: Bytes,
    },
    /// `count` blocks of a regular file from its logical block `lblk`, at block `block`.
    File {
        /// First physical block.
        block: u64,
        /// Number of blocks.
        count: u64,
        /// The file's node.
        node: NodeId,
        /// First logical block.
        lblk: u64,
    },
}

impl Chunk {
    fn offset(&self, bs: u64) -> u64 {
        match self {
            Chunk::Mem { offset, .. } => *offset,
            Chunk::File { block, .. } => block * bs,
        }
    }
}

/// What an inode's data blocks hold.
#[derive(Debug)]
enum Payload {
    /// Nothing beyond the inode (empty files, devices, fast symlinks).
    None,
    /// Non-zero runs (logical block, count) of a regular file.
    Runs(NodeId, Vec<(u64, u64)>),
    /// Blocks held in memory (directories, slow symlinks).
    Blocks(Vec<Vec<u8>>),
}

#[derive(Debug)]
struct Pending {
    ino: u32,
    inode: Inode,
    payload: Payload,
    /// Attributes for an xattr block (those that do not fit in the inode).
    block_attrs: Vec<Attr>,
}

/// A laid-out filesystem ready to stream.
#[derive(Debug)]
pub struct Plan {
    /// Bytes in the image.
    pub image_size: u64,
    /// Block size.
    pub bs: u64,
    /// Everything to write, sorted by offset.
    pub chunks: Vec<Chunk>,
}

const FIRST_INO: u32 = 11;

fn clamp(t: Timestamp, sde: Option<i64>) -> Timestamp {
    t.clamp_to(sde.map(Timestamp::from_secs))
}

fn ftype(k: &Kind) -> u8 {
    match k {
        Kind::File(_) => 1,
        Kind::Dir => 2,
        Kind::CharDevice { .. } => 3,
        Kind::BlockDevice { .. } => 4,
        Kind::Fifo => 5,
        Kind::Socket => 6,
        Kind::Symlink(_) => 7,
    }
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Fnv {
    fn eat(&mut self, b: &[u8]) {
        for &c in b {
            self.0 ^= u64::from(c);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 16 bytes derived from the tree's metadata, the seed and a purpose tag.
fn derive(tree: &Tree, seed: Option<u64>, tag: &[u8]) -> [u8; 16] {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.eat(tag);
    h.eat(&seed.unwrap_or(0).to_le_bytes());
    for (path, id) in tree.walk() {
        let e = tree.entry(id);
        h.eat(&path);
        h.eat(&[0]);
        h.eat(&e.st_mode().to_le_bytes());
        h.eat(&e.uid.to_le_bytes());
        h.eat(&e.gid.to_le_bytes());
        h.eat(&e.size().to_le_bytes());
        h.eat(&e.mtime.sec.to_le_bytes());
        h.eat(&e.mtime.nsec.to_le_bytes());
    }
    let mut s = h.0;
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&splitmix(&mut s).to_le_bytes());
    out[8..].copy_from_slice(&splitmix(&mut s).to_le_bytes());
    out
}

/// The non-zero block runs of `c` in blocks of `bs` bytes.
fn runs(c: &Content, bs: u64) -> Result<Vec<(u64, u64)>> {
    const BUF: u64 = 1 << 20;
    let len = c.len();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; len.min(BUF) as usize];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(BUF);
        let b = &mut buf[..n as usize];
        c.read_at(b, off)?;
        for (i, blk) in b.chunks(bs as usize).enumerate() {
            if stamp_disk::is_zero(blk) {
                continue;
            }
            let l = off / bs + i as u64;
            match out.last_mut() {
                Some((s, k)) if *s + *k == l => *k += 1,
                _ => out.push((l, 1)),
            }
        }
        off += n;
    }
    Ok(out)
}

/// Blocks mke2fs gives the journal of a filesystem of `blocks` blocks (0: none).
fn journal_blocks(blocks: u64) -> u64 {
    match blocks {
        0..2048 => 0,
        2048..32768 => 1024,
        32768..262144 => 4096,
        262144..524288 => 8192,
        524288..4194304 => 16384,
        4194304..8388608 => 32768,
        8388608..16777216 => 65536,
        16777216..33554432 => 131072,
        _ => 262144,
    }
}

/// The planned inodes, before any geometry.
struct Prep {
    pending: Vec<Pending>,
    last_ino: u32,
    uuid: [u8; 16],
    hash_seed: [u8; 16],
    label: [u8; 16],
    time: i64,
    /// Data blocks needed (without journal and metadata).
    data_blocks: u64,
}

fn prepare(tree: &Tree, opts: &Ext4Options) -> Result<Prep> {
    let bs = u64::from(opts.block_size);
    let sde = opts.source_date_epoch;
    let uuid = match opts.uuid {
        Some(u) => u,
        None => {
            let mut u = derive(tree, opts.seed, b"ext4 uuid");
            u[6] = (u[6] & 0x0F) | 0x40;
            u[8] = (u[8] & 0x3F) | 0x80;
            u
        }
    };
    let hash_seed = derive(tree, opts.seed, b"ext4 hash seed");
    let mut label = [0u8; 16];
    if let Some(l) = &opts.label {
        if l.len() > 16 {
            return Err(Error::InvalidOption(format!(
                "ext4 label '{l}' is longer than 16 bytes"
            )));
        }
        label[..l.len()].copy_from_slice(l.as_bytes());
    }
    let time = sde.unwrap_or(0);
    let fs_seed = superblock::fs_seed(&uuid);

    // Inode numbers: root 2, lost+found 11, then first use in walk order.
    let mut ino = vec![0u32; tree.len()];
    let root = tree.root();
    ino[root.index()] = 2;
    let lf_node = tree
        .children(root)
        .find(|(n, id)| *n == b"lost+found" && tree.entry(*id).is_dir())
        .map(|(_, id)| id);
    if let Some(id) = lf_node {
        ino[id.index()] = FIRST_INO;
    }
    if lf_node.is_none() && tree.children(root).any(|(n, _)| n == b"lost+found") {
        return Err(Error::InvalidOption(
            "'/lost+found' is not a directory; ext4 needs it to be one".into(),
        ));
    }
    let mut next = FIRST_INO + 1;
    for (_, id) in tree.walk() {
        if ino[id.index()] == 0 {
            ino[id.index()] = next;
            next += 1;
        }
    }
    let mut by_ino: Vec<(u32, Option<NodeId>)> =
        tree.ids().map(|id| (ino[id.index()], Some(id))).collect();
    let create_lf = lf_node.is_none();
    if create_lf {
        by_ino.push((FIRST_INO, None));
    }
    by_ino.retain(|(i, _)| *i != 0);
    by_ino.sort_by_key(|(i, _)| *i);

    let mut parent = vec![root; tree.len()];
    for id in tree.ids() {
        for (_, kid) in tree.children(id) {
            if tree.entry(kid).is_dir() {
                parent[kid.index()] = id;
            }
        }
    }

    let mut pending = Vec::new();
    let mut data_blocks = 0u64;
    for (i, node) in by_ino {
        let iseed = inode::seed(fs_seed, i);
        let Some(id) = node else {
            // The lost+found we create.
            let mut blocks = dir::pack(
                &[
                    Dirent {
                        ino: i,
                        ftype: 2,
                        name: b".".to_vec(),
                    },
                    Dirent {
                        ino: 2,
                        ftype: 2,
                        name: b"..".to_vec(),
                    },
                ],
                bs as usize,
                (16384 / bs) as usize,
            );
            dir::seal(&mut blocks, iseed);
            data_blocks += blocks.len() as u64;
            let t = Timestamp::from_secs(time);
            pending.push(Pending {
                ino: i,
                inode: Inode {
                    mode: 0o40700,
                    links: 2,
                    size: blocks.len() as u64 * bs,
                    atime: t,
                    ctime: t,
                    mtime: t,
                    crtime: t,
                    ..Inode::default()
                },
                payload: Payload::Blocks(blocks),
                block_attrs: Vec::new(),
            });
            continue;
        };
        let e = tree.entry(id);
        let mtime = clamp(e.mtime, sde);
        let mut inode = Inode {
            mode: e.st_mode() as u16,
            uid: e.uid,
            gid: e.gid,
            links: tree.names(id).min(65000) as u16,
            size: e.size(),
            atime: clamp(e.atime, sde),
            ctime: clamp(e.ctime, sde),
            mtime,
            crtime: mtime,
            ..Inode::default()
        };
        let attrs = xattr::attrs(&e.xattrs)?;
        // As many as fit in the inode body (in name order), the rest in one xattr block.
        let mut in_inode: Vec<Attr> = Vec::new();
        let mut block_attrs = Vec::new();
        for a in attrs {
            in_inode.push(a);
            if xattr::inline(&in_inode).is_none() {
                block_attrs.extend(in_inode.pop());
            }
        }
        if let Some(area) = xattr::inline(&in_inode) {
            inode.inline_xattrs = area;
        }
        if !block_attrs.is_empty() {
            if !xattr::fits_block(&block_attrs, bs as usize) {
                return Err(Error::InvalidOption(format!(
                    "the xattrs of inode {i} do not fit in the inode and one {bs}-byte block"
                )));
            }
            data_blocks += 1;
        }
        let payload = match &e.kind {
            Kind::File(c) => {
                let r = runs(c, bs)?;
                data_blocks += r.iter().map(|(_, n)| n).sum::<u64>();
                Payload::Runs(id, r)
            }
            Kind::Dir => {
                let mut ents = vec![
                    Dirent {
                        ino: i,
                        ftype: 2,
                        name: b".".to_vec(),
                    },
                    Dirent {
                        ino: ino[parent[id.index()].index()],
                        ftype: 2,
                        name: b"..".to_vec(),
                    },
                ];
                let mut kids: Vec<Dirent> = tree
                    .children(id)
                    .map(|(n, k)| Dirent {
                        ino: ino[k.index()],
                        ftype: ftype(&tree.entry(k).kind),
                        name: n.to_vec(),
                    })
                    .collect();
                if id == root && create_lf {
                    kids.push(Dirent {
                        ino: FIRST_INO,
                        ftype: 2,
                        name: b"lost+found".to_vec(),
                    });
                    kids.sort_by(|a, b| a.name.cmp(&b.name));
                }
                let subdirs = kids.iter().filter(|d| d.ftype == 2).count() as u64;
                inode.links = if subdirs + 2 >= 65000 {
                    1
                } else {
                    subdirs as u16 + 2
                };
                let parent_ino = ents[1].ino;
                ents.extend_from_slice(&kids);
                let min = if Some(id) == lf_node {
                    (16384 / bs) as usize
                } else {
                    1
                };
                let mut blocks = dir::pack(&ents, bs as usize, min);
                dir::seal(&mut blocks, iseed);
                if blocks.len() > 1 && Some(id) != lf_node {
                    let seed = htree::seed_words(&hash_seed);
                    if let Some(b) = htree::build(i, parent_ino, &kids, bs as usize, &seed, iseed) {
                        blocks = b;
                        inode.flags |= htree::INDEX_FL;
                    }
                }
                inode.size = blocks.len() as u64 * bs;
                data_blocks += blocks.len() as u64;
                Payload::Blocks(blocks)
            }
            Kind::Symlink(t) if t.is_empty() => {
                return Err(Error::InvalidOption(format!(
                    "inode {i} is a symlink with an empty target"
                )));
            }
            Kind::Symlink(t) if t.len() < 60 => {
                inode.iblock[..t.len()].copy_from_slice(t);
                Payload::None
            }
            Kind::Symlink(t) => {
                if t.len() >= 4096 {
                    return Err(Error::InvalidOption(format!(
                        "a symlink target of {} bytes is longer than ext4 allows",
                        t.len()
                    )));
                }
                let blocks: Vec<Vec<u8>> = t
                    .chunks(bs as usize)
                    .map(|c| {
                        let mut b = c.to_vec();
                        b.resize(bs as usize, 0);
                        b
                    })
                    .collect();
                data_blocks += blocks.len() as u64;
                Payload::Blocks(blocks)
            }
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                if *major > 0xfff || *minor > 0xf_ffff {
                    return Err(Error::InvalidOption(format!(
                        "device {major}:{minor} does not fit ext4's 12-bit major, 20-bit minor"
                    )));
                }
                if *major < 256 && *minor < 256 {
                    put32(&mut inode.iblock, 0, (major << 8) | minor);
                } else {
                    let v = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
                    put32(&mut inode.iblock, 4, v);
                }
                Payload::None
            }
            Kind::Fifo | Kind::Socket => Payload::None,
        };
        pending.push(Pending {
            ino: i,
            inode,
            payload,
            block_attrs,
        });
    }
    Ok(Prep {
        pending,
        last_ino: next - 1,
        uuid,
        hash_seed,
        label,
        time,
        data_blocks,
    })
}

/// Allocates `n` blocks as extents from logical block `lblk`, appending to `exts`.
fn alloc_extents(alloc: &mut Alloc, mut lblk: u64, mut n: u64, exts: &mut Vec<Ext>) -> Result<()> {
    while n > 0 {
        let (p, got) = alloc.run(n.min(MAX_LEN)).ok_or_else(no_space)?;
        match exts.last_mut() {
            Some(e) if e.lblk + e.len == lblk && e.pblk + e.len == p && e.len + got <= MAX_LEN => {
                e.len += got
            }
            _ => exts.push(Ext {
                lblk,
                len: got,
                pblk: p,
            }),
        }
        lblk += got;
        n -= got;
    }
    Ok(())
}

fn no_space() -> Error {
    Error::NoSpace {
        what: "ext4 content".into(),
        needed: 0,
        available: 0,
    }
}

/// Finishes an inode's extent tree over `exts`, allocating leaves; returns its leaf chunks.
fn finish_extents(
    alloc: &mut Alloc,
    geo: &Geometry,
    inode: &mut Inode,
    exts: &[Ext],
    data: u64,
    iseed: u32,
) -> Result<Vec<Chunk>> {
    let nl = extent::blocks_needed(exts.len(), geo.bs);
    let mut tree_blocks = Vec::with_capacity(nl);
    for _ in 0..nl {
        tree_blocks.push(alloc.run(1).ok_or_else(no_space)?.0);
    }
    let (root, blocks) = extent::build(exts, &tree_blocks, geo.bs, iseed);
    inode.iblock = root;
    inode.flags |= EXTENTS_FL;
    inode.sectors += (data + nl as u64) * (geo.bs / 512);
    Ok(blocks
        .into_iter()
        .map(|(b, l)| Chunk::Mem {
            offset: b * geo.bs,
            bytes: Bytes::from(l),
        })
        .collect())
}

fn journal_super(bs: u64, len: u64, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; bs as usize];
    let be = |b: &mut [u8], off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_be_bytes());
    be(&mut b, 0x0, 0xC03B_3998);
    be(&mut b, 0x4, 4);
    be(&mut b, 0xC, bs as u32);
    be(&mut b, 0x10, len as u32);
    be(&mut b, 0x14, 1);
    be(&mut b, 0x18, 1);
    b[0x30..0x40].copy_from_slice(uuid);
    be(&mut b, 0x40, 1);
    b
}

/// Lays out `prep` on `geo`.
fn layout(prep: &Prep, geo: &Geometry) -> Result<Vec<Chunk>> {
    let bs = geo.bs;
    if u64::from(prep.last_ino) > geo.inodes() {
        return Err(Error::NoSpace {
            what: "ext4 inodes".into(),
            needed: u64::from(prep.last_ino),
            available: geo.inodes(),
        });
    }
    let fs_seed = superblock::fs_seed(&prep.uuid);
    let mut alloc = Alloc::new(geo);
    let mut chunks = Vec::new();
    let mut inodes: Vec<(u32, Inode)> = Vec::new();

    let jblocks = journal_blocks(geo.blocks);
    let mut jnl = None;
    if jblocks > 0 {
        let mut exts = Vec::new();
        alloc_extents(&mut alloc, 0, jblocks, &mut exts)?;
        let t = Timestamp::from_secs(prep.time);
        let mut ji = Inode {
            mode: 0o100600,
            links: 1,
            size: jblocks * bs,
            atime: t,
            ctime: t,
            mtime: t,
            crtime: t,
            ..Inode::default()
        };
        chunks.push(Chunk::Mem {
            offset: exts[0].pblk * bs,
            bytes: Bytes::from(journal_super(bs, jblocks, &prep.uuid)),
        });
        chunks.extend(finish_extents(
            &mut alloc,
            geo,
            &mut ji,
            &exts,
            jblocks,
            inode::seed(fs_seed, 8),
        )?);
        let mut j = [0u32; 17];
        for (k, w) in ji.iblock.chunks_exact(4).enumerate() {
            j[k] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        }
        j[15] = (ji.size >> 32) as u32;
        j[16] = ji.size as u32;
        jnl = Some(j);
        inodes.push((8, ji));
    }

    for p in &prep.pending {
        let mut inode = p.inode.clone();
        let iseed = inode::seed(fs_seed, p.ino);
        if !p.block_attrs.is_empty() {
            let (b, _) = alloc.run(1).ok_or_else(no_space)?;
            chunks.push(Chunk::Mem {
                offset: b * bs,
                bytes: Bytes::from(xattr::block(&p.block_attrs, bs as usize, b, fs_seed)),
            });
            inode.file_acl = b;
            inode.sectors += bs / 512;
        }
        match &p.payload {
            Payload::None => {
                if matches!(inode.mode & 0o170000, 0o100000) {
                    inode.iblock = extent::build(&[], &[], bs, iseed).0;
                    inode.flags |= EXTENTS_FL;
                }
            }
            Payload::Runs(node, runs) => {
                let mut exts: Vec<Ext> = Vec::new();
                for &(l, n) in runs {
                    let mut piece = Vec::new();
                    alloc_extents(&mut alloc, l, n, &mut piece)?;
                    for e in &piece {
                        chunks.push(Chunk::File {
                            block: e.pblk,
                            count: e.len,
                            node: *node,
                            lblk: e.lblk,
                        });
                    }
                    for e in piece {
                        match exts.last_mut() {
                            Some(x)
                                if x.lblk + x.len == e.lblk
                                    && x.pblk + x.len == e.pblk
                                    && x.len + e.len <= MAX_LEN =>
                            {
                                x.len += e.len
                            }
                            _ => exts.push(e),
                        }
                    }
                }
                let data = runs.iter().map(|(_, n)| n).sum();
                chunks.extend(finish_extents(
                    &mut alloc, geo, &mut inode, &exts, data, iseed,
                )?);
            }
            Payload::Blocks(blocks) => {
                let mut exts = Vec::new();
                alloc_extents(&mut alloc, 0, blocks.len() as u64, &mut exts)?;
                for e in &exts {
                    let mut v = Vec::with_capacity((e.len * bs) as usize);
                    for b in &blocks[e.lblk as usize..(e.lblk + e.len) as usize] {
                        v.extend_from_slice(b);
                    }
                    chunks.push(Chunk::Mem {
                        offset: e.pblk * bs,
                        bytes: Bytes::from(v),
                    });
                }
                chunks.extend(finish_extents(
                    &mut alloc,
                    geo,
                    &mut inode,
                    &exts,
                    blocks.len() as u64,
                    iseed,
                )?);
            }
        }
        inodes.push((p.ino, inode));
    }
    inodes.sort_by_key(|(i, _)| *i);

    // Inode tables, bitmaps and descriptors, group by group.
    let last = u64::from(prep.last_ino);
    let mut counts = Vec::new();
    let mut next_inode = inodes.iter().peekable();
    let mut free_blocks = 0u64;
    let mut free_inodes = 0u64;
    for g in 0..geo.ngroups {
        let first = g * geo.ipg + 1;
        let used_inodes = last.saturating_sub(g * geo.ipg).min(geo.ipg);
        let mut table = Vec::with_capacity((used_inodes * INODE_SIZE) as usize);
        let mut dirs = 0u64;
        for n in first..first + used_inodes {
            let enc = match next_inode.peek() {
                Some((i, ino)) if u64::from(*i) == n => {
                    if ino.mode & 0o170000 == 0o040000 {
                        dirs += 1;
                    }
                    let e = ino.encode(fs_seed, *i);
                    next_inode.next();
                    e
                }
                _ => Inode::default().encode(fs_seed, n as u32),
            };
            table.extend_from_slice(&enc);
        }
        if !table.is_empty() {
            chunks.push(Chunk::Mem {
                offset: geo.inode_table(g) * bs,
                bytes: Bytes::from(table),
            });
        }
        let (bb, used_blocks) = alloc.bitmap(g);
        let mut ib = vec![0xFFu8; bs as usize];
        ib[..(geo.ipg / 8) as usize].fill(0);
        for bit in 0..used_inodes {
            ib[(bit / 8) as usize] |= 1 << (bit % 8);
        }
        let c = GroupCounts {
            free_blocks: geo.group_len(g) - used_blocks,
            free_inodes: geo.ipg - used_inodes,
            dirs,
            itable_unused: geo.ipg - used_inodes,
            bb_csum: super::csum(fs_seed, &bb[..(geo.bpg / 8) as usize]),
            ib_csum: super::csum(fs_seed, &ib[..(geo.ipg / 8) as usize]),
        };
        free_blocks += c.free_blocks;
        free_inodes += c.free_inodes;
        chunks.push(Chunk::Mem {
            offset: geo.block_bitmap(g) * bs,
            bytes: Bytes::from(bb),
        });
        chunks.push(Chunk::Mem {
            offset: geo.inode_bitmap(g) * bs,
            bytes: Bytes::from(ib),
        });
        counts.push(c);
    }
    let mut gdt = Vec::with_capacity((geo.gdt_blocks * bs) as usize);
    for (g, c) in counts.iter().enumerate() {
        gdt.extend_from_slice(&superblock::descriptor(geo, g as u64, c, fs_seed));
    }
    let gdt = Bytes::from(gdt);
    let s = Super {
        free_blocks,
        free_inodes,
        uuid: prep.uuid,
        label: prep.label,
        hash_seed: prep.hash_seed,
        time: prep.time,
        compat: if jnl.is_some() { COMPAT_HAS_JOURNAL } else { 0 },
        jnl_blocks: jnl,
    };
    for g in (0..geo.ngroups).filter(|g| geo.has_super(*g)) {
        let off = if g == 0 {
            1024
        } else {
            geo.group_start(g) * bs
        };
        chunks.push(Chunk::Mem {
            offset: off,
            bytes: Bytes::copy_from_slice(&superblock::superblock(geo, &s, g)),
        });
        chunks.push(Chunk::Mem {
            offset: (geo.group_start(g) + 1) * bs,
            bytes: gdt.clone(),
        });
    }
    chunks.sort_by_key(|c| c.offset(bs));
    Ok(chunks)
}

impl Plan {
    /// Plans `tree` with `opts`.
    pub fn new(tree: &Tree, opts: &Ext4Options) -> Result<Self> {
        let bs = u64::from(opts.block_size);
        if !matches!(bs, 1024 | 2048 | 4096) {
            return Err(Error::InvalidOption(format!(
                "ext4 block size {bs} is not 1024, 2048 or 4096"
            )));
        }
        if opts.inodes.is_some_and(|n| n > u64::from(u32::MAX)) {
            return Err(Error::InvalidOption(
                "ext4 holds at most 2^32 - 1 inodes".into(),
            ));
        }
        let prep = prepare(tree, opts)?;
        let needed_inodes = u64::from(prep.last_ino);
        let inodes_for = |blocks: u64, extra: u64| {
            opts.inodes.unwrap_or(
                (blocks * bs / 16384).max(needed_inodes.saturating_mul(100 + extra) / 100 + 16),
            )
        };
        if let Some(size) = opts.size {
            let blocks = size / bs;
            let geo = Geometry::new(bs, blocks, inodes_for(blocks, 0))?;
            let chunks = layout(&prep, &geo).map_err(|e| match e {
                Error::NoSpace { what, .. } => Error::NoSpace {
                    what,
                    needed: prep.data_blocks * bs,
                    available: size,
                },
                e => e,
            })?;
            return Ok(Plan {
                image_size: size,
                bs,
                chunks,
            });
        }
        let extra = u64::from(opts.extra_space_percent);
        let fits = |blocks: u64, extra: u64| -> Result<Option<Plan>> {
            let geo = match Geometry::new(bs, blocks, inodes_for(blocks, extra)) {
                Ok(g) => g,
                Err(Error::NoSpace { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            match layout(&prep, &geo) {
                Ok(chunks) => Ok(Some(Plan {
                    image_size: geo.blocks * bs,
                    bs,
                    chunks,
                })),
                Err(Error::NoSpace { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        // The smallest size that fits (growing, then bisecting), then the extra space on top.
        let mut lo = 0u64;
        let mut hi = prep.data_blocks + prep.data_blocks / 50 + 64;
        let mut blocks = hi;
        for _ in 0..200 {
            if hi > MAX_BLOCKS {
                break;
            }
            if fits(hi, extra)?.is_some() {
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if fits(mid, extra)?.is_some() {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                blocks = hi.saturating_mul(100 + extra) / 100;
                for _ in 0..200 {
                    if blocks > MAX_BLOCKS {
                        break;
                    }
                    if let Some(p) = fits(blocks, extra)? {
                        return Ok(p);
                    }
                    blocks += (blocks / 64).max(16);
                }
                break;
            }
            lo = hi;
            hi += (hi / 8).max(16);
            blocks = hi;
        }
        Err(Error::NoSpace {
            what: "ext4 content".into(),
            needed: prep.data_blocks * bs,
            available: blocks * bs,
        })
    }
}
