//! Extended attributes: in the inode body when they fit, else in one xattr block.

use super::{csum, put16, put32, put64};
use crate::{Error, Result};
use std::collections::BTreeMap;

/// Room for xattrs in a 256-byte inode with 32 bytes of extra fields.
pub const INLINE_SPACE: usize = 256 - 160;
const MAGIC: u32 = 0xEA02_0000;

/// One attribute, its name split into the prefix index and the rest.
#[derive(Debug, Clone)]
pub struct Attr {
    index: u8,
    name: Vec<u8>,
    value: Vec<u8>,
}

fn split(full: &str) -> Result<(u8, &str)> {
    const PREFIXES: [(&str, u8); 6] = [
        ("system.posix_acl_access", 2),
        ("system.posix_acl_default", 3),
        ("user.", 1),
        ("trusted.", 4),
        ("security.", 6),
        ("system.", 7),
    ];
    for (p, i) in PREFIXES {
        if let Some(rest) = full.strip_prefix(p) {
            if (i == 2 || i == 3) && !rest.is_empty() {
                continue;
            }
            return Ok((i, rest));
        }
    }
    Err(Error::InvalidOption(format!(
        "xattr '{full}' has a namespace ext4 cannot store"
    )))
}

/// Converts a POSIX ACL from the VFS xattr format (version 2) to ext4's (version 1).
fn acl_to_disk(v: &[u8]) -> Result<Vec<u8>> {
    let bad = || Error::InvalidOption("malformed POSIX ACL xattr".into());
    if v.len() < 4 || (v.len() - 4) % 8 != 0 || v[..4] != 2u32.to_le_bytes() {
        return Err(bad());
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in v[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        out.extend_from_slice(&e[..4]);
        if tag == 2 || tag == 8 {
            out.extend_from_slice(&e[4..8]);
        }
    }
    Ok(out)
}

/// The attributes of `xattrs`, in the order ext4 keeps them (index, name length, name).
pub fn attrs(xattrs: &BTreeMap<String, Vec<u8>>) -> Result<Vec<Attr>> {
    let mut v = Vec::new();
    for (k, val) in xattrs {
        let (index, name) = split(k)?;
        if name.len() > 255 {
            return Err(Error::InvalidOption(format!("xattr name '{k}' too long")));
        }
        let value = if index == 2 || index == 3 {
            acl_to_disk(val)?
        } else {
            val.clone()
        };
        v.push(Attr {
            index,
            name: name.as_bytes().to_vec(),
            value,
        });
    }
    v.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    Ok(v)
}

fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

fn entry_len(a: &Attr) -> usize {
    pad4(16 + a.name.len())
}

fn value_len(a: &Attr) -> usize {
    pad4(a.value.len())
}

fn entry_hash(a: &Attr) -> u32 {
    let mut h: u32 = 0;
    for &c in &a.name {
        h = (h << 5) ^ (h >> 27) ^ (c as i8 as i32 as u32);
    }
    if !a.value.is_empty() {
        let mut padded = a.value.clone();
        padded.resize(value_len(a), 0);
        for w in padded.chunks_exact(4) {
            h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        }
    }
    h
}

/// Writes entries from `base + first` and values down from `base + end`; value offsets are
/// relative to `base + rel`. Returns the entry hashes.
fn lay(b: &mut [u8], attrs: &[Attr], first: usize, end: usize, rel: usize) -> Vec<u32> {
    let mut e = first;
    let mut v = end;
    let mut hashes = Vec::new();
    for a in attrs {
        v -= value_len(a);
        b[v..v + a.value.len()].copy_from_slice(&a.value);
        let h = entry_hash(a);
        hashes.push(h);
        b[e] = a.name.len() as u8;
        b[e + 1] = a.index;
        put16(
            b,
            e + 2,
            if a.value.is_empty() {
                0
            } else {
                (v - rel) as u16
            },
        );
        put32(b, e + 8, a.value.len() as u32);
        put32(b, e + 12, h);
        b[e + 16..e + 16 + a.name.len()].copy_from_slice(&a.name);
        e += entry_len(a);
    }
    hashes
}

fn space(attrs: &[Attr]) -> usize {
    attrs
        .iter()
        .map(|a| entry_len(a) + value_len(a))
        .sum::<usize>()
        + 4
}

/// The in-inode area for `attrs` if they all fit in it.
pub fn inline(attrs: &[Attr]) -> Option<Vec<u8>> {
    if attrs.is_empty() || 4 + space(attrs) > INLINE_SPACE {
        return None;
    }
    let mut b = vec![0u8; INLINE_SPACE];
    put32(&mut b, 0, MAGIC);
    lay(&mut b, attrs, 4, INLINE_SPACE, 4);
    Some(b)
}

/// Whether `attrs` fit in one block of `bs` bytes.
pub fn fits_block(attrs: &[Attr], bs: usize) -> bool {
    32 + space(attrs) <= bs
}

/// The xattr block for `attrs` at block number `blocknr`, checksummed with `fs_seed`.
pub fn block(attrs: &[Attr], bs: usize, blocknr: u64, fs_seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; bs];
    put32(&mut b, 0, MAGIC);
    put32(&mut b, 4, 1);
    put32(&mut b, 8, 1);
    let hashes = lay(&mut b, attrs, 32, bs, 0);
    let mut h: u32 = 0;
    for eh in hashes {
        if eh == 0 {
            // The kernel's rule: an entry without a hash leaves the block unhashed.
            h = 0;
            break;
        }
        h = (h << 16) ^ (h >> 16) ^ eh;
    }
    put32(&mut b, 12, h);
    let mut nr = [0u8; 8];
    put64(&mut nr, 0, blocknr);
    let c = csum(csum(fs_seed, &nr), &b);
    put32(&mut b, 16, c);
    b
}
