//! Hashed directories (dir_index): a dx root, optionally one level of dx nodes, and leaf blocks
//! of entries sorted by the half-MD4 hash of their names, seeded by the superblock's hash seed.

use super::dir::{self, Dirent};
use super::{csum, put16, put32};

/// `i_flags`: the directory is hashed.
pub const INDEX_FL: u32 = 0x1000;

const DEFAULT_SEED: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// Packs name bytes into `num` words as the kernel's `str2hashbuf` (signed chars).
fn str2hashbuf(msg: &[u8], num: usize) -> [u32; 8] {
    let mut out = [0u32; 8];
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let mut val = pad;
    let n = msg.len().min(num * 4);
    let mut k = 0;
    for (i, &c) in msg[..n].iter().enumerate() {
        val = (c as i8 as i32 as u32).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[k] = val;
            k += 1;
            val = pad;
        }
    }
    if k < num {
        out[k] = val;
        k += 1;
    }
    while k < num {
        out[k] = pad;
        k += 1;
    }
    out
}

fn half_md4(buf: &mut [u32; 4], x: &[u32; 8]) {
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! r {
        ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a
                .wrapping_add($f($b, $c, $d))
                .wrapping_add($x)
                .rotate_left($s);
        };
    }
    r!(f, a, b, c, d, x[0], 3);
    r!(f, d, a, b, c, x[1], 7);
    r!(f, c, d, a, b, x[2], 11);
    r!(f, b, c, d, a, x[3], 19);
    r!(f, a, b, c, d, x[4], 3);
    r!(f, d, a, b, c, x[5], 7);
    r!(f, c, d, a, b, x[6], 11);
    r!(f, b, c, d, a, x[7], 19);
    r!(g, a, b, c, d, x[1].wrapping_add(K2), 3);
    r!(g, d, a, b, c, x[3].wrapping_add(K2), 5);
    r!(g, c, d, a, b, x[5].wrapping_add(K2), 9);
    r!(g, b, c, d, a, x[7].wrapping_add(K2), 13);
    r!(g, a, b, c, d, x[0].wrapping_add(K2), 3);
    r!(g, d, a, b, c, x[2].wrapping_add(K2), 5);
    r!(g, c, d, a, b, x[4].wrapping_add(K2), 9);
    r!(g, b, c, d, a, x[6].wrapping_add(K2), 13);
    r!(h, a, b, c, d, x[3].wrapping_add(K3), 3);
    r!(h, d, a, b, c, x[7].wrapping_add(K3), 9);
    r!(h, c, d, a, b, x[2].wrapping_add(K3), 11);
    r!(h, b, c, d, a, x[6].wrapping_add(K3), 15);
    r!(h, a, b, c, d, x[1].wrapping_add(K3), 3);
    r!(h, d, a, b, c, x[5].wrapping_add(K3), 9);
    r!(h, c, d, a, b, x[0].wrapping_add(K3), 11);
    r!(h, b, c, d, a, x[4].wrapping_add(K3), 15);
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

/// The (major, minor) half-MD4 hash of `name` with `seed`.
pub fn hash(name: &[u8], seed: &[u32; 4]) -> (u32, u32) {
    let mut buf = if seed.iter().all(|w| *w == 0) {
        DEFAULT_SEED
    } else {
        *seed
    };
    let mut p = name;
    loop {
        let x = str2hashbuf(p, 8);
        half_md4(&mut buf, &x);
        if p.len() <= 32 {
            break;
        }
        p = &p[32..];
    }
    let mut h = buf[1] & !1;
    if h == 0x7fff_ffff << 1 {
        h = (0x7fff_ffff - 1) << 1;
    }
    (h, buf[2])
}

/// The seed words of the superblock's 16-byte hash seed.
pub fn seed_words(s: &[u8; 16]) -> [u32; 4] {
    let mut w = [0u32; 4];
    for (i, c) in s.chunks_exact(4).enumerate() {
        w[i] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    w
}

fn dx_csum(b: &mut [u8], count_off: usize, iseed: u32) {
    let limit = usize::from(u16::from_le_bytes([b[count_off], b[count_off + 1]]));
    let count = usize::from(u16::from_le_bytes([b[count_off + 2], b[count_off + 3]]));
    let tail = count_off + limit * 8;
    let c = csum(iseed, &b[..count_off + count * 8]);
    let c = csum(c, &b[tail..tail + 4]);
    let c = csum(c, &[0; 4]);
    put32(b, tail + 4, c);
}

/// Writes dx entries (hash, block) at `off` with `limit`; the first hash slot holds the count.
fn entries(b: &mut [u8], off: usize, limit: usize, ents: &[(u32, u32)]) {
    put16(b, off, limit as u16);
    put16(b, off + 2, ents.len() as u16);
    for (i, (h, blk)) in ents.iter().enumerate() {
        if i > 0 {
            put32(b, off + 8 * i, *h);
        }
        put32(b, off + 8 * i + 4, *blk);
    }
}

/// The blocks of a hashed directory holding `kids` (without `.` and `..`), or `None` if it
/// would need more than two index levels. Blocks are sealed with `iseed`.
pub fn build(
    me: u32,
    parent: u32,
    kids: &[Dirent],
    bs: usize,
    seed: &[u32; 4],
    iseed: u32,
) -> Option<Vec<Vec<u8>>> {
    let mut hashed: Vec<((u32, u32), &Dirent)> =
        kids.iter().map(|d| (hash(&d.name, seed), d)).collect();
    hashed.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    // Leaves: (first hash with the continuation bit, entries).
    let cap = bs - 12;
    let mut leaves: Vec<(u32, Vec<Dirent>)> = Vec::new();
    let mut used = cap;
    let mut prev: Option<u32> = None;
    for ((h, _), d) in &hashed {
        let rl = (8 + d.name.len()).div_ceil(4) * 4;
        if used + rl > cap {
            let start = match prev {
                Some(p) if p == *h => h | 1,
                _ => *h,
            };
            leaves.push((start, Vec::new()));
            used = 0;
        }
        used += rl;
        prev = Some(*h);
        if let Some(l) = leaves.last_mut() {
            l.1.push((*d).clone());
        }
    }
    if leaves.is_empty() {
        leaves.push((0, Vec::new()));
    }
    let root_limit = (bs - 0x20 - 8) / 8;
    let node_limit = (bs - 8 - 8) / 8;
    let n = leaves.len();
    let levels = if n <= root_limit {
        0
    } else if n <= root_limit * node_limit {
        1
    } else {
        return None;
    };
    let nodes = if levels == 0 {
        0
    } else {
        n.div_ceil(node_limit)
    };
    let first_leaf = 1 + nodes;
    let mut root = vec![0u8; bs];
    put32(&mut root, 0, me);
    put16(&mut root, 4, 12);
    root[6] = 1;
    root[7] = 2;
    root[8] = b'.';
    put32(&mut root, 12, parent);
    put16(&mut root, 16, (bs - 12) as u16);
    root[18] = 2;
    root[19] = 2;
    root[20] = b'.';
    root[21] = b'.';
    root[0x1C] = 1; // half_md4
    root[0x1D] = 8;
    root[0x1E] = levels;
    let leaf_ents: Vec<(u32, u32)> = leaves
        .iter()
        .enumerate()
        .map(|(i, (h, _))| (*h, (first_leaf + i) as u32))
        .collect();
    let mut blocks = Vec::new();
    if levels == 0 {
        entries(&mut root, 0x20, root_limit, &leaf_ents);
        dx_csum(&mut root, 0x20, iseed);
        blocks.push(root);
    } else {
        let groups: Vec<&[(u32, u32)]> = leaf_ents.chunks(node_limit).collect();
        let root_ents: Vec<(u32, u32)> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g[0].0, (1 + i) as u32))
            .collect();
        entries(&mut root, 0x20, root_limit, &root_ents);
        dx_csum(&mut root, 0x20, iseed);
        blocks.push(root);
        for g in groups {
            let mut b = vec![0u8; bs];
            put16(&mut b, 4, bs as u16);
            entries(&mut b, 8, node_limit, g);
            dx_csum(&mut b, 8, iseed);
            blocks.push(b);
        }
    }
    for (_, ents) in &leaves {
        let mut b = dir::pack(ents, bs, 1);
        dir::seal(&mut b, iseed);
        blocks.extend(b);
    }
    Some(blocks)
}
