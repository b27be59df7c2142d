//! The plan of a volume: one item per name of the tree, its directory entries, its clusters,
//! and the directories' bytes.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::layout::{FatType, Layout};
use super::name::{ShortNames, lfn_count, lfn_entries, long_name, short_name};
use super::time::fat_time;
use crate::{Content, Entry, Error, Kind, Result, Tree};

/// The largest file FAT holds.
const MAX_FILE: u64 = u32::MAX as u64;

/// Most entries in a directory (FAT's 16-bit entry index).
const MAX_ENTRIES: u64 = 65_536;

/// Attribute bits.
const ATTR_READ_ONLY: u8 = 0x01;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;

/// End of a cluster chain.
const EOC: u32 = 0x0FFF_FFFF;

/// One name of the tree (item 0 is the root).
struct Item<'t> {
    parent: usize,
    entry: &'t Entry,
    name: String,
    short: [u8; 11],
    lfn: bool,
    /// For directories: children in name order, and the number of 32-byte entries.
    children: Vec<usize>,
    entries: u64,
    /// First cluster (0 if none) and cluster count.
    first: u64,
    clusters: u64,
}

impl Item<'_> {
    fn is_dir(&self) -> bool {
        self.entry.is_dir()
    }

    fn content(&self) -> Option<&Content> {
        match &self.entry.kind {
            Kind::File(c) => Some(c),
            _ => None,
        }
    }
}

/// What goes at an offset of the data area: a directory's bytes or a file's content.
pub(crate) enum Run {
    /// A directory (or the FAT12/16 root region).
    Dir(Bytes),
    /// A regular file.
    File(Content),
}

/// Every item of a volume with its names and, once allocated, its clusters.
pub(crate) struct Plan<'t> {
    items: Vec<Item<'t>>,
}

impl<'t> Plan<'t> {
    /// Names every entry of `tree`; `label` reserves a root entry for the volume label.
    pub fn new(tree: &'t Tree, label: bool) -> Result<Self> {
        let walk = tree.walk();
        let mut items: Vec<Item<'t>> = Vec::with_capacity(walk.len());
        let mut dirs: HashMap<&[u8], usize> = HashMap::new();
        for (path, id) in &walk {
            let entry = tree.entry(*id);
            let bad = |detail: String| Error::BadPath {
                source_name: "fat".into(),
                path: String::from_utf8_lossy(path).into_owned(),
                detail,
            };
            match &entry.kind {
                Kind::Dir => {}
                Kind::File(c) if c.len() > MAX_FILE => {
                    return Err(bad(format!(
                        "a {}-byte file is larger than FAT's limit of {MAX_FILE} bytes",
                        c.len()
                    )));
                }
                Kind::File(_) => {}
                _ => {
                    return Err(bad(
                        "FAT holds only directories and regular files; symlinks, devices, FIFOs \
                         and sockets are refused"
                            .into(),
                    ));
                }
            }
            let (parent, name) = if path.is_empty() {
                (0, String::new())
            } else {
                let (dir, name) = match path.iter().rposition(|c| *c == b'/') {
                    Some(i) => (&path[..i], &path[i + 1..]),
                    None => (&path[..0], &path[..]),
                };
                let parent = *dirs
                    .get(dir)
                    .ok_or_else(|| bad("parent directory missing from the walk".into()))?;
                (parent, long_name(path, name)?.to_owned())
            };
            let idx = items.len();
            if entry.is_dir() {
                dirs.insert(path.as_slice(), idx);
            }
            if idx > 0 {
                items[parent].children.push(idx);
            }
            items.push(Item {
                parent,
                entry,
                name,
                short: [b' '; 11],
                lfn: false,
                children: Vec::new(),
                entries: 0,
                first: 0,
                clusters: 0,
            });
        }
        for d in 0..items.len() {
            if !items[d].is_dir() {
                continue;
            }
            let mut count = if d == 0 { u64::from(label) } else { 2 };
            let mut used = ShortNames::default();
            let mut folded = HashSet::new();
            for k in items[d].children.clone() {
                let name = items[k].name.clone();
                if !folded.insert(name.to_lowercase()) {
                    return Err(Error::BadPath {
                        source_name: "fat".into(),
                        path: name,
                        detail: "another name in the same directory differs only in case, and \
                                 FAT names are case-insensitive"
                            .into(),
                    });
                }
                let (short, lfn) = short_name(&name, &mut used)?;
                count += 1 + if lfn { lfn_count(&name) as u64 } else { 0 };
                items[k].short = short;
                items[k].lfn = lfn;
            }
            if count > MAX_ENTRIES {
                return Err(Error::InvalidOption(format!(
                    "directory '{}' needs {count} entries, more than FAT's {MAX_ENTRIES}",
                    items[d].name
                )));
            }
            items[d].entries = count;
        }
        Ok(Plan { items })
    }

    /// Entries the root directory needs.
    pub fn root_entries(&self) -> u64 {
        self.items[0].entries
    }

    /// Clusters item `i` takes on a volume with `l`.
    fn clusters_of(&self, i: usize, l: &Layout) -> u64 {
        let it = &self.items[i];
        let cb = l.cluster_bytes();
        if i == 0 && l.kind != FatType::Fat32 {
            0
        } else if it.is_dir() {
            (it.entries * 32).div_ceil(cb).max(1)
        } else {
            it.content().map_or(0, |c| c.len().div_ceil(cb))
        }
    }

    /// Clusters the whole content takes on a volume with `l`.
    pub fn clusters_needed(&self, l: &Layout) -> u64 {
        (0..self.items.len()).map(|i| self.clusters_of(i, l)).sum()
    }

    /// A first guess of the bytes the content takes (in 512-byte units, the smallest cluster).
    pub fn bytes_estimate(&self) -> u64 {
        self.items
            .iter()
            .map(|it| {
                let b = if it.is_dir() {
                    it.entries * 32
                } else {
                    it.content().map_or(0, Content::len)
                };
                b.next_multiple_of(512)
            })
            .sum()
    }

    /// Gives every item its run of clusters in walk order; returns the first free cluster.
    pub fn allocate(&mut self, l: &Layout) -> u64 {
        let mut next = 2;
        for i in 0..self.items.len() {
            let n = self.clusters_of(i, l);
            let it = &mut self.items[i];
            it.clusters = n;
            it.first = if n == 0 { 0 } else { next };
            next += n;
        }
        next
    }

    /// The FAT's entries up to the first free cluster (entries 0 and 1 left for the caller).
    pub fn fat_entries(&self) -> Vec<u32> {
        let end = self
            .items
            .iter()
            .map(|it| it.first + it.clusters)
            .max()
            .unwrap_or(2)
            .max(2);
        let mut fat = vec![0u32; end as usize];
        for it in &self.items {
            for c in it.first..it.first + it.clusters {
                fat[c as usize] = if c + 1 == it.first + it.clusters {
                    EOC
                } else {
                    (c + 1) as u32
                };
            }
        }
        fat
    }

    /// The data area's runs in ascending offset order (after [`Plan::allocate`]).
    pub fn runs(&self, l: &Layout, sde: Option<i64>, label: Option<&[u8; 11]>) -> Vec<(u64, Run)> {
        let mut out = Vec::new();
        for (i, it) in self.items.iter().enumerate() {
            if it.is_dir() {
                let (offset, len) = if i == 0 && l.kind != FatType::Fat32 {
                    (l.root_offset(), l.root_entries * 32)
                } else {
                    (l.cluster_offset(it.first), it.clusters * l.cluster_bytes())
                };
                let mut b = Vec::with_capacity(len as usize);
                if i == 0 {
                    if let Some(label) = label {
                        b.extend_from_slice(&short_entry(
                            label,
                            ATTR_VOLUME_ID,
                            0,
                            0,
                            it.entry,
                            sde,
                        ));
                    }
                } else {
                    let parent = &self.items[it.parent];
                    let up = if it.parent == 0 { 0 } else { parent.first };
                    b.extend_from_slice(&short_entry(
                        b".          ",
                        ATTR_DIRECTORY,
                        it.first,
                        0,
                        it.entry,
                        sde,
                    ));
                    b.extend_from_slice(&short_entry(
                        b"..         ",
                        ATTR_DIRECTORY,
                        up,
                        0,
                        parent.entry,
                        sde,
                    ));
                }
                for &k in &it.children {
                    let c = &self.items[k];
                    if c.lfn {
                        for e in lfn_entries(&c.name, &c.short) {
                            b.extend_from_slice(&e);
                        }
                    }
                    let mut attr = if c.is_dir() {
                        ATTR_DIRECTORY
                    } else {
                        ATTR_ARCHIVE
                    };
                    if c.entry.mode & 0o222 == 0 {
                        attr |= ATTR_READ_ONLY;
                    }
                    let size = c.content().map_or(0, Content::len);
                    b.extend_from_slice(&short_entry(&c.short, attr, c.first, size, c.entry, sde));
                }
                b.resize(len as usize, 0);
                out.push((offset, Run::Dir(Bytes::from(b))));
            } else if let Some(c) = it.content()
                && it.clusters > 0
            {
                out.push((l.cluster_offset(it.first), Run::File(c.clone())));
            }
        }
        out.sort_by_key(|(o, _)| *o);
        out
    }
}

/// A short (8.3) directory entry.
fn short_entry(
    name: &[u8; 11],
    attr: u8,
    cluster: u64,
    size: u64,
    e: &Entry,
    sde: Option<i64>,
) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..11].copy_from_slice(name);
    b[11] = attr;
    let m = fat_time(e.mtime, sde);
    let a = fat_time(e.atime, sde);
    b[13] = m.tenths;
    b[14..16].copy_from_slice(&m.time.to_le_bytes());
    b[16..18].copy_from_slice(&m.date.to_le_bytes());
    b[18..20].copy_from_slice(&a.date.to_le_bytes());
    b[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    b[22..24].copy_from_slice(&m.time.to_le_bytes());
    b[24..26].copy_from_slice(&m.date.to_le_bytes());
    b[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    b[28..32].copy_from_slice(&(size as u32).to_le_bytes());
    b
}
