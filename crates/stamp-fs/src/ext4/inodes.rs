//! The inodes of a tree: numbers (root 2, lost+found 11, then first use in walk order),
//! directory blocks, xattr placement, symlinks, devices and the non-zero runs of regular files.

use super::dir::{self, Dirent};
use super::htree;
use super::inode::{self, Inode};
use super::superblock;
use super::xattr::{self, Attr};
use super::{Ext4Options, put32};
use crate::{Content, Error, Kind, NodeId, Result, Timestamp, Tree};

/// What an inode's data blocks hold.
#[derive(Debug)]
pub(super) enum Payload {
    /// Nothing beyond the inode (empty files, devices, fast symlinks).
    None,
    /// Non-zero runs (logical block, count) of a regular file.
    Runs(NodeId, Vec<(u64, u64)>),
    /// Blocks held in memory (directories, slow symlinks).
    Blocks(Vec<Vec<u8>>),
}

#[derive(Debug)]
pub(super) struct Pending {
    pub(super) ino: u32,
    pub(super) inode: Inode,
    pub(super) payload: Payload,
    /// Attributes for an xattr block (those that do not fit in the inode).
    pub(super) block_attrs: Vec<Attr>,
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

/// The planned inodes, before any geometry.
pub(super) struct Prep {
    pub(super) pending: Vec<Pending>,
    pub(super) last_ino: u32,
    pub(super) uuid: [u8; 16],
    pub(super) hash_seed: [u8; 16],
    pub(super) label: [u8; 16],
    pub(super) time: i64,
    /// Data blocks needed (without journal and metadata).
    pub(super) data_blocks: u64,
}

pub(super) fn prepare(tree: &Tree, opts: &Ext4Options) -> Result<Prep> {
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
