//! The [`Tree`]: a filesystem's metadata in memory, with file contents referred to where they are.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::{Error, Result};

/// Longest name of one path component, in bytes (ext4's and FAT's limit).
pub const MAX_NAME: usize = 255;

/// Deepest directory nesting accepted (a bound on recursion in writers).
pub const MAX_DEPTH: usize = 1024;

/// Most symbolic links followed while resolving one path (Linux's `MAXSYMLINKS`).
pub const MAX_SYMLINKS: usize = 40;

/// Most components waiting to be walked while a path is resolved (bounds link expansion).
const MAX_PENDING: usize = 4096;

/// Where a path leads in a [`Tree`] once its symbolic links are followed
/// ([`Tree::resolve_partial`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The path exists.
    Found {
        /// Its canonical path (`/usr/lib/x`; `/` for the root).
        path: Vec<u8>,
        /// Its node.
        id: NodeId,
    },
    /// The path does not exist (yet): where to create it.
    Missing {
        /// The canonical path of the deepest existing entry reached (`/` for the root).
        existing: Vec<u8>,
        /// Its node: a directory, unless a non-directory was used as one.
        id: NodeId,
        /// The components missing below it, in order (link targets substituted, `.` dropped,
        /// `..` applied); never empty.
        missing: Vec<Vec<u8>>,
    },
}

impl Resolved {
    /// The whole canonical path: the existing part, then the missing components.
    pub fn path(&self) -> Vec<u8> {
        match self {
            Resolved::Found { path, .. } => path.clone(),
            Resolved::Missing {
                existing, missing, ..
            } => {
                let mut p = if existing.as_slice() == b"/" {
                    Vec::new()
                } else {
                    existing.clone()
                };
                for c in missing {
                    p.push(b'/');
                    p.extend_from_slice(c);
                }
                p
            }
        }
    }

    /// The node, if the path exists.
    pub fn node(&self) -> Option<NodeId> {
        match self {
            Resolved::Found { id, .. } => Some(*id),
            Resolved::Missing { .. } => None,
        }
    }
}

/// A point in time: seconds since the Unix epoch (may be negative) and nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since 1970-01-01 UTC.
    pub sec: i64,
    /// Nanoseconds within the second (0..1e9).
    pub nsec: u32,
}

impl Timestamp {
    /// A whole-second timestamp.
    pub fn from_secs(sec: i64) -> Self {
        Timestamp { sec, nsec: 0 }
    }

    /// This timestamp, but no later than `limit` (SOURCE_DATE_EPOCH clamping).
    pub fn clamp_to(self, limit: Option<Timestamp>) -> Self {
        match limit {
            Some(l) if self > l => l,
            _ => self,
        }
    }

    /// The whole seconds as RFC 3339 UTC (`1970-01-01T00:00:00Z`), as OCI configs write times.
    pub fn to_rfc3339(self) -> String {
        let (y, m, d) = civil_from_days(self.sec.div_euclid(86_400));
        let rem = self.sec.rem_euclid(86_400);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Where a regular file's bytes are.
#[derive(Debug, Clone)]
pub enum Content {
    /// In memory (generated files, small files).
    Bytes(Bytes),
    /// `len` bytes at `offset` of a host file (a tar member's data, or a whole file of a directory).
    File {
        /// The host file.
        path: Arc<PathBuf>,
        /// Where the content starts in it.
        offset: u64,
        /// The content's length.
        len: u64,
    },
}

impl Content {
    /// The content's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::File { len, .. } => *len,
        }
    }

    /// Returns true if and only if the content is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads `buf.len()` bytes at `offset` of the content.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len()) {
            return Err(Error::InvalidOption(format!(
                "read of {} bytes at {offset} past the end of a {}-byte file",
                buf.len(),
                self.len()
            )));
        }
        match self {
            Content::Bytes(b) => {
                buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
                Ok(())
            }
            Content::File {
                path, offset: base, ..
            } => {
                let f = std::fs::File::open(path.as_ref())
                    .map_err(|e| Error::io("open", path.as_ref(), e))?;
                f.read_exact_at(buf, base + offset)
                    .map_err(|e| Error::io("read", path.as_ref(), e))
            }
        }
    }
}

/// What an entry is.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A regular file.
    File(Content),
    /// A directory (its children are in the tree).
    Dir,
    /// A symbolic link to this target (bytes, not necessarily UTF-8).
    Symlink(Vec<u8>),
    /// A character device.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

/// One file, directory, link or device: everything but its name(s).
#[derive(Debug, Clone)]
pub struct Entry {
    /// What it is.
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`0o7777`), without the type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Access time (the mtime where the source has none).
    pub atime: Timestamp,
    /// Change time (the mtime where the source has none).
    pub ctime: Timestamp,
    /// Extended attributes by full name (`security.capability`, `user.foo`, ...), sorted.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Entry {
    /// An entry of `kind` with `mode`, owned by root, all times `mtime`, no xattrs.
    pub fn new(kind: Kind, mode: u32, mtime: Timestamp) -> Self {
        Entry {
            kind,
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
            mtime,
            atime: mtime,
            ctime: mtime,
            xattrs: BTreeMap::new(),
        }
    }

    /// Returns true if and only if this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }

    /// The file type bits of `st_mode` for this kind (`S_IFREG`, `S_IFDIR`, ...).
    pub fn type_bits(&self) -> u32 {
        match self.kind {
            Kind::File(_) => 0o100000,
            Kind::Dir => 0o040000,
            Kind::Symlink(_) => 0o120000,
            Kind::CharDevice { .. } => 0o020000,
            Kind::BlockDevice { .. } => 0o060000,
            Kind::Fifo => 0o010000,
            Kind::Socket => 0o140000,
        }
    }

    /// The full `st_mode`: type bits and permission bits.
    pub fn st_mode(&self) -> u32 {
        self.type_bits() | (self.mode & 0o7777)
    }

    /// The size `stat` reports: content length, target length, 0 otherwise (directories are the
    /// writer's business).
    pub fn size(&self) -> u64 {
        match &self.kind {
            Kind::File(c) => c.len(),
            Kind::Symlink(t) => t.len() as u64,
            _ => 0,
        }
    }
}

/// Identifies a node of a [`Tree`]: one inode, which several names may share (hard links).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(u32);

impl NodeId {
    /// The node's index, dense from 0 (the root) in creation order.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug, Clone)]
struct Node {
    entry: Entry,
    /// For directories: names to nodes, sorted by name bytes.
    children: BTreeMap<Vec<u8>, NodeId>,
    /// How many names refer to this node.
    names: u32,
}

/// A filesystem tree: nodes (inodes) and the names that refer to them.
///
/// Names are byte strings without `/`; iteration is always in name order, so every writer lays
/// out the same tree the same way whatever order the source listed it in.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new(Entry::new(Kind::Dir, 0o755, Timestamp::default()))
    }
}

impl Tree {
    /// A tree holding only a root directory with `root`'s metadata.
    pub fn new(root: Entry) -> Self {
        Tree {
            nodes: vec![Node {
                entry: root,
                children: BTreeMap::new(),
                names: 1,
            }],
        }
    }

    /// The root directory.
    pub fn root(&self) -> NodeId {
        NodeId(0)
    }

    /// Number of nodes (inodes), the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Returns true if and only if the tree holds only its root.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    /// The entry of node `id`.
    pub fn entry(&self, id: NodeId) -> &Entry {
        &self.nodes[id.index()].entry
    }

    /// The entry of node `id`, to change.
    pub fn entry_mut(&mut self, id: NodeId) -> &mut Entry {
        &mut self.nodes[id.index()].entry
    }

    /// How many names refer to node `id` (its hard-link count, not counting `.`/`..`).
    pub fn names(&self, id: NodeId) -> u32 {
        self.nodes[id.index()].names
    }

    /// The children of directory `id` in name order (empty for non-directories).
    pub fn children(&self, id: NodeId) -> impl Iterator<Item = (&[u8], NodeId)> {
        self.nodes[id.index()]
            .children
            .iter()
            .map(|(k, v)| (k.as_slice(), *v))
    }

    /// Every node id, in creation order.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len() as u32).map(NodeId)
    }

    /// Looks up `path` (components separated by `/`, leading `/` or `./` ignored).
    pub fn get(&self, path: &[u8]) -> Option<NodeId> {
        let mut cur = self.root();
        for c in components(path) {
            if c == b".".as_slice() {
                continue;
            }
            cur = *self.nodes[cur.index()].children.get(c)?;
        }
        Some(cur)
    }

    /// Resolves `path` the way the kernel would with this tree as `/`: symbolic links are
    /// followed in every component (the last one too if `follow_last`), relative targets from
    /// the link's directory and absolute ones from the root; `..` goes to the canonical parent
    /// and stops at the root. Returns the canonical path (`/usr/lib/x` for `/lib/x` when `/lib`
    /// links to `usr/lib`; `/` for the root) and the node, or `None` when a component is
    /// missing (a dangling link included), a non-directory is used as a directory, or more
    /// than [`MAX_SYMLINKS`] links are followed.
    pub fn resolve(&self, path: &[u8], follow_last: bool) -> Option<(Vec<u8>, NodeId)> {
        match self.resolve_partial(path, follow_last)? {
            Resolved::Found { path, id } => Some((path, id)),
            Resolved::Missing { .. } => None,
        }
    }

    /// [`Tree::resolve`], also telling where a path that does not exist would be created: the
    /// deepest existing entry reached and the components missing after it (through a dangling
    /// link, those of its target). `None` only when more than [`MAX_SYMLINKS`] links are
    /// followed (a loop) or the links expand to more than 4096 components.
    pub fn resolve_partial(&self, path: &[u8], follow_last: bool) -> Option<Resolved> {
        // Components still to walk, in reverse order (the next one last).
        let mut todo: Vec<&[u8]> = components(path).rev().collect();
        if todo.len() > MAX_PENDING {
            return None;
        }
        // The existing canonical prefix, then the missing components after it.
        let mut stack: Vec<(&[u8], NodeId)> = Vec::new();
        let mut missing: Vec<&[u8]> = Vec::new();
        let mut links = 0usize;
        while let Some(c) = todo.pop() {
            match c {
                b"." => continue,
                b".." => {
                    if missing.pop().is_none() {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            if !missing.is_empty() {
                missing.push(c);
                continue;
            }
            let cur = stack.last().map_or(self.root(), |(_, id)| *id);
            // Non-directories have no children: using one as a directory makes the rest missing.
            let Some(&id) = self.nodes[cur.index()].children.get(c) else {
                missing.push(c);
                continue;
            };
            match &self.entry(id).kind {
                Kind::Symlink(target) if follow_last || !todo.is_empty() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return None;
                    }
                    if target.first() == Some(&b'/') {
                        stack.clear();
                    }
                    todo.extend(components(target).rev());
                    if todo.len() > MAX_PENDING {
                        return None;
                    }
                }
                _ => stack.push((c, id)),
            }
        }
        let id = stack.last().map_or(self.root(), |(_, id)| *id);
        let mut canon = Vec::new();
        for (name, _) in &stack {
            canon.push(b'/');
            canon.extend_from_slice(name);
        }
        if canon.is_empty() {
            canon.push(b'/');
        }
        Some(if missing.is_empty() {
            Resolved::Found { path: canon, id }
        } else {
            Resolved::Missing {
                existing: canon,
                id,
                missing: missing.into_iter().map(<[u8]>::to_vec).collect(),
            }
        })
    }

    /// Adds `entry` at `path`, creating missing parent directories (mode 0755, root, time
    /// `entry.mtime`). An existing entry at `path` is replaced, as tar extraction does; a directory
    /// replaced by a directory keeps its children.
    pub fn insert(&mut self, path: &[u8], entry: Entry) -> Result<NodeId> {
        let (parent, name) = self.parent_of(path, entry.mtime)?;
        let Some(name) = name else {
            // The root itself: take the metadata, keep the children.
            if !entry.is_dir() {
                return Err(bad_path(path, "the root can only be a directory"));
            }
            self.nodes[0].entry = entry;
            return Ok(self.root());
        };
        if let Some(&old) = self.nodes[parent.index()].children.get(&name) {
            let old_node = &mut self.nodes[old.index()];
            if old_node.entry.is_dir() && entry.is_dir() {
                old_node.entry = entry;
                return Ok(old);
            }
            self.unname(old);
        }
        let id = self.push(entry);
        self.nodes[parent.index()].children.insert(name, id);
        Ok(id)
    }

    /// Adds a hard link at `path` to the node at `target`.
    pub fn link(&mut self, path: &[u8], target: &[u8]) -> Result<NodeId> {
        let t = self.get(target).ok_or_else(|| Error::MissingLinkTarget {
            link: String::from_utf8_lossy(path).into_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
        })?;
        if self.nodes[t.index()].entry.is_dir() {
            return Err(bad_path(path, "a hard link cannot point to a directory"));
        }
        let mtime = self.nodes[t.index()].entry.mtime;
        let (parent, name) = self.parent_of(path, mtime)?;
        let name = name.ok_or_else(|| bad_path(path, "the root cannot be a hard link"))?;
        if let Some(old) = self.nodes[parent.index()].children.insert(name, t) {
            self.unname(old);
        }
        self.nodes[t.index()].names += 1;
        Ok(t)
    }

    /// Removes the name `path` and, if it is a directory, everything below it, as `rm -rf` does:
    /// every removed name drops one from its node's link count ([`Tree::names`]). Returns the
    /// node the name referred to, or None if there is no such name (a missing component or one
    /// that is not a directory is not an error). Removing the root is an error.
    pub fn remove(&mut self, path: &[u8]) -> Result<Option<NodeId>> {
        let comps = normalize(path)?;
        let Some((last, dirs)) = comps.split_last() else {
            return Err(bad_path(path, "the root cannot be removed"));
        };
        let mut cur = self.root();
        for d in dirs {
            match self.nodes[cur.index()].children.get(*d).copied() {
                Some(id) if self.nodes[id.index()].entry.is_dir() => cur = id,
                _ => return Ok(None),
            }
        }
        let Some(id) = self.nodes[cur.index()].children.remove(*last) else {
            return Ok(None);
        };
        self.unname(id);
        Ok(Some(id))
    }

    /// Removes every child of directory `dir` (and everything below them), as [`Tree::remove`]
    /// does for each; `dir` itself and its metadata stay.
    pub fn clear(&mut self, dir: NodeId) {
        let kids = std::mem::take(&mut self.nodes[dir.index()].children);
        for (_, kid) in kids {
            self.unname(kid);
        }
    }

    /// Makes sure `path` is a directory the way an overlay upper layer does: missing components
    /// (the last included) are created as directories (mode 0755, root, time `mtime`), existing
    /// directories keep their metadata, and a component that is not a directory (a file, a
    /// symlink, ...) is replaced by a new directory, its name dropped as [`Tree::remove`] does.
    pub fn make_dirs(&mut self, path: &[u8], mtime: Timestamp) -> Result<NodeId> {
        let comps = normalize(path)?;
        if comps.len() > MAX_DEPTH {
            return Err(bad_path(
                path,
                &format!("nested deeper than {MAX_DEPTH} directories"),
            ));
        }
        let mut cur = self.root();
        for c in comps {
            cur = match self.nodes[cur.index()].children.get(c).copied() {
                Some(id) if self.nodes[id.index()].entry.is_dir() => id,
                old => {
                    if let Some(old) = old {
                        self.unname(old);
                    }
                    let id = self.push(Entry::new(Kind::Dir, 0o755, mtime));
                    self.nodes[cur.index()].children.insert(c.to_vec(), id);
                    id
                }
            };
        }
        Ok(cur)
    }

    /// Returns true if and only if some node is no longer reachable from the root (left behind
    /// by a replaced or removed name).
    pub fn has_orphans(&self) -> bool {
        self.nodes.iter().any(|n| n.names == 0)
    }

    /// Drops the nodes no name refers to any more (left by replaced or removed entries), so that
    /// [`Tree::len`] counts only reachable nodes. The remaining nodes keep their creation order,
    /// but their [`NodeId`]s change.
    pub fn compact(&mut self) {
        if !self.has_orphans() {
            return;
        }
        let mut map: Vec<Option<NodeId>> = vec![None; self.nodes.len()];
        let mut next = 0u32;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.names > 0 {
                map[i] = Some(NodeId(next));
                next += 1;
            }
        }
        let nodes = std::mem::take(&mut self.nodes);
        self.nodes = nodes
            .into_iter()
            .filter(|n| n.names > 0)
            .map(|mut n| {
                n.children = std::mem::take(&mut n.children)
                    .into_iter()
                    .filter_map(|(k, v)| map[v.index()].map(|v| (k, v)))
                    .collect();
                n
            })
            .collect();
    }

    /// Drops one name of node `id`; a node left without names is an orphan, and an orphaned
    /// directory loses its children the same way (iteratively, whatever the depth).
    fn unname(&mut self, id: NodeId) {
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            let n = &mut self.nodes[id.index()];
            n.names = n.names.saturating_sub(1);
            if n.names == 0 {
                stack.extend(std::mem::take(&mut n.children).into_values());
            }
        }
    }

    /// Every (path, node) pair in depth-first name order, the root first as an empty path. A node
    /// with several names (hard links) appears once per name.
    pub fn walk(&self) -> Vec<(Vec<u8>, NodeId)> {
        let mut out = vec![(Vec::new(), self.root())];
        let mut stack: Vec<(Vec<u8>, NodeId)> = vec![(Vec::new(), self.root())];
        while let Some((path, id)) = stack.pop() {
            let kids: Vec<_> = self.children(id).collect();
            for (name, kid) in kids.into_iter().rev() {
                let mut p = path.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                if self.entry(kid).is_dir() {
                    stack.push((p.clone(), kid));
                }
                out.push((p, kid));
            }
        }
        // Depth-first by path bytes with '/' first, so parents precede children.
        out.sort_by(|a, b| path_order(&a.0, &b.0));
        out
    }

    fn push(&mut self, entry: Entry) -> NodeId {
        let id = NodeId(self.nodes.len() as u32);
        self.nodes.push(Node {
            entry,
            children: BTreeMap::new(),
            names: 1,
        });
        id
    }

    /// The parent directory of `path` (created as needed) and the last component (None for the
    /// root).
    fn parent_of(&mut self, path: &[u8], mtime: Timestamp) -> Result<(NodeId, Option<Vec<u8>>)> {
        let comps = normalize(path)?;
        if comps.len() > MAX_DEPTH {
            return Err(bad_path(
                path,
                &format!("nested deeper than {MAX_DEPTH} directories"),
            ));
        }
        let Some((last, dirs)) = comps.split_last() else {
            return Ok((self.root(), None));
        };
        let mut cur = self.root();
        for d in dirs {
            cur = match self.nodes[cur.index()].children.get(*d).copied() {
                Some(id) if self.nodes[id.index()].entry.is_dir() => id,
                Some(_) => {
                    return Err(bad_path(
                        path,
                        &format!("'{}' is not a directory", String::from_utf8_lossy(d)),
                    ));
                }
                None => {
                    let id = self.push(Entry::new(Kind::Dir, 0o755, mtime));
                    self.nodes[cur.index()].children.insert(d.to_vec(), id);
                    id
                }
            };
        }
        Ok((cur, Some(last.to_vec())))
    }
}

/// Orders paths so that a directory comes right before its contents (`a`, `a/b`, `a.txt`).
fn path_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let key = |p: &[u8]| -> Vec<u8> { p.iter().map(|c| if *c == b'/' { 0 } else { *c }).collect() };
    key(a).cmp(&key(b))
}

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|c| *c == b'/').filter(|c| !c.is_empty())
}

/// Splits `path` into components, dropping `.` and empty ones, refusing any that would escape the
/// root (`..` above the top) and names longer than [`MAX_NAME`].
pub fn normalize(path: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in components(path) {
        match c {
            b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(bad_path(path, "'..' escapes the root"));
                }
            }
            c if c.len() > MAX_NAME => {
                return Err(bad_path(
                    path,
                    &format!("a name is {} bytes, longer than {MAX_NAME}", c.len()),
                ));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn bad_path(path: &[u8], detail: &str) -> Error {
    Error::BadPath {
        source_name: "tree".into(),
        path: String::from_utf8_lossy(path).into_owned(),
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &'static [u8]) -> Entry {
        Entry::new(
            Kind::File(Content::Bytes(Bytes::from_static(data))),
            0o644,
            Timestamp::from_secs(1),
        )
    }

    fn link(t: &mut Tree, p: &[u8], target: &[u8]) {
        t.insert(
            p,
            Entry::new(
                Kind::Symlink(target.to_vec()),
                0o777,
                Timestamp::from_secs(1),
            ),
        )
        .unwrap();
    }

    #[test]
    fn resolve_follows_relative_absolute_and_intermediate_links() {
        let mut t = Tree::default();
        t.insert(b"/usr/lib/modules/6.1/vmlinuz", file(b"k"))
            .unwrap();
        t.insert(b"/boot/vmlinuz-6.1", file(b"k2")).unwrap();
        // usrmerge: /lib -> usr/lib.
        link(&mut t, b"/lib", b"usr/lib");
        link(&mut t, b"/vmlinuz", b"boot/vmlinuz-6.1");
        link(&mut t, b"/abs", b"/boot/../boot/./vmlinuz-6.1");
        link(&mut t, b"/usr/lib/modules/cur", b"../modules/6.1");
        link(&mut t, b"/usr/lib/rel", b"../lib/modules/6.1/vmlinuz");
        let k = t.get(b"/usr/lib/modules/6.1/vmlinuz").unwrap();
        assert_eq!(
            t.resolve(b"/lib/modules/6.1/vmlinuz", true),
            Some((b"/usr/lib/modules/6.1/vmlinuz".to_vec(), k))
        );
        assert_eq!(
            t.resolve(b"/vmlinuz", true).unwrap().0,
            b"/boot/vmlinuz-6.1"
        );
        // Relative paths are taken from the root; absolute targets restart there.
        assert_eq!(t.resolve(b"abs", true).unwrap().0, b"/boot/vmlinuz-6.1");
        // Links in the middle of the path, relative to their own directory.
        assert_eq!(
            t.resolve(b"/lib/modules/cur/vmlinuz", true).unwrap(),
            (b"/usr/lib/modules/6.1/vmlinuz".to_vec(), k)
        );
        assert_eq!(t.resolve(b"/lib/rel", true).unwrap().1, k);
        // `..` goes to the canonical parent: /lib/.. is /usr.
        assert_eq!(t.resolve(b"/lib/..", true).unwrap().0, b"/usr");
        // `..` above the root stays at the root.
        assert_eq!(t.resolve(b"/../../boot", true).unwrap().0, b"/boot");
        assert_eq!(t.resolve(b"/", true), Some((b"/".to_vec(), t.root())));
        assert_eq!(t.resolve(b"", true), Some((b"/".to_vec(), t.root())));
        // A file used as a directory, a missing name.
        assert!(t.resolve(b"/vmlinuz/x", true).is_none());
        assert!(t.resolve(b"/lib/nothing", true).is_none());
    }

    #[test]
    fn resolve_without_following_the_last_link() {
        let mut t = Tree::default();
        t.insert(b"/usr/lib/x", file(b"x")).unwrap();
        link(&mut t, b"/lib", b"usr/lib");
        link(&mut t, b"/usr/lib/l", b"x");
        link(&mut t, b"/dangling", b"nowhere");
        let l = t.get(b"/usr/lib/l").unwrap();
        assert_eq!(
            t.resolve(b"/lib/l", false),
            Some((b"/usr/lib/l".to_vec(), l))
        );
        assert_eq!(t.resolve(b"/lib/l", true).unwrap().0, b"/usr/lib/x");
        // Intermediate links are still followed; a dangling last one is found as itself.
        assert_eq!(t.resolve(b"/lib", false).unwrap().0, b"/lib");
        assert_eq!(t.resolve(b"/lib/x", false).unwrap().0, b"/usr/lib/x");
        assert_eq!(t.resolve(b"/dangling", false).unwrap().0, b"/dangling");
        assert!(t.resolve(b"/dangling", true).is_none());
    }

    #[test]
    fn resolve_ends_symlink_loops() {
        let mut t = Tree::default();
        link(&mut t, b"/a", b"b");
        link(&mut t, b"/b", b"/a");
        link(&mut t, b"/self", b"self/self");
        link(&mut t, b"/me", b"me");
        assert!(t.resolve(b"/a", true).is_none());
        assert!(t.resolve(b"/self", true).is_none());
        assert!(t.resolve(b"/me/x", false).is_none());
        assert!(t.resolve_partial(b"/a/x/y", false).is_none());
        // Not following the last link does not loop.
        assert_eq!(t.resolve(b"/me", false).unwrap().0, b"/me");
        // A chain of exactly MAX_SYMLINKS links resolves; one more does not.
        t.insert(b"/end", file(b"e")).unwrap();
        link(&mut t, b"/l0", b"end");
        for i in 1..=MAX_SYMLINKS {
            let name = format!("/l{i}");
            let target = format!("l{}", i - 1);
            link(&mut t, name.as_bytes(), target.as_bytes());
        }
        assert!(
            t.resolve(format!("/l{}", MAX_SYMLINKS - 1).as_bytes(), true)
                .is_some()
        );
        assert!(
            t.resolve(format!("/l{MAX_SYMLINKS}").as_bytes(), true)
                .is_none()
        );
    }

    #[test]
    fn resolve_partial_reports_the_missing_tail() {
        let mut t = Tree::default();
        t.insert(b"/usr/lib/x", file(b"x")).unwrap();
        link(&mut t, b"/lib", b"usr/lib");
        link(&mut t, b"/etc/resolv.conf", b"../run/resolve/stub.conf");
        let lib = t.get(b"/usr/lib").unwrap();
        let r = t.resolve_partial(b"/lib/new/./file", false).unwrap();
        assert_eq!(
            r,
            Resolved::Missing {
                existing: b"/usr/lib".to_vec(),
                id: lib,
                missing: vec![b"new".to_vec(), b"file".to_vec()],
            }
        );
        assert_eq!(r.path(), b"/usr/lib/new/file");
        assert_eq!(r.node(), None);
        // Through a dangling link: where its target would be.
        let r = t.resolve_partial(b"/etc/resolv.conf", true).unwrap();
        assert_eq!(r.path(), b"/run/resolve/stub.conf");
        // Not followed, the link itself exists.
        let r = t.resolve_partial(b"/etc/resolv.conf", false).unwrap();
        assert_eq!(r.path(), b"/etc/resolv.conf");
        assert!(r.node().is_some());
        // `..` in the missing part goes back up, and into existing entries again.
        let r = t.resolve_partial(b"/lib/new/../x", true).unwrap();
        assert_eq!(
            r,
            Resolved::Found {
                path: b"/usr/lib/x".to_vec(),
                id: t.get(b"/usr/lib/x").unwrap()
            }
        );
        // Missing directly below the root.
        let r = t.resolve_partial(b"/srv/a", true).unwrap();
        assert_eq!(r.path(), b"/srv/a");
        // Below a file: the file is the deepest existing entry.
        let r = t.resolve_partial(b"/lib/x/y", true).unwrap();
        let Resolved::Missing { existing, id, .. } = &r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (existing.as_slice(), *id),
            (b"/usr/lib/x".as_slice(), t.get(b"/usr/lib/x").unwrap())
        );
    }

    #[test]
    fn insert_creates_parents_and_replaces_like_tar() {
        let mut t = Tree::default();
        t.insert(b"./etc/hostname", file(b"a")).unwrap();
        let etc = t.get(b"etc").unwrap();
        assert!(t.entry(etc).is_dir());
        t.insert(b"/etc/hostname", file(b"bb")).unwrap();
        let h = t.get(b"etc/hostname").unwrap();
        assert_eq!(t.entry(h).size(), 2);
        assert_eq!(t.children(etc).count(), 1);
        // A directory replaced by a directory keeps its children.
        t.insert(
            b"etc",
            Entry::new(Kind::Dir, 0o700, Timestamp::from_secs(5)),
        )
        .unwrap();
        assert_eq!(t.entry(etc).mode, 0o700);
        assert_eq!(t.children(etc).count(), 1);
    }

    #[test]
    fn hard_links_share_a_node_and_count_names() {
        let mut t = Tree::default();
        let a = t.insert(b"bin/a", file(b"x")).unwrap();
        let b = t.link(b"bin/b", b"bin/a").unwrap();
        assert_eq!(a, b);
        assert_eq!(t.names(a), 2);
        assert!(t.link(b"bin/c", b"bin/missing").is_err());
        assert!(t.link(b"d", b"bin").is_err());
        // Replacing one name drops its count.
        t.insert(b"bin/b", file(b"y")).unwrap();
        assert_eq!(t.names(a), 1);
    }

    #[test]
    fn remove_and_clear_drop_subtrees_and_their_link_counts() {
        let mut t = Tree::default();
        let f = t.insert(b"d/sub/f", file(b"f")).unwrap();
        t.link(b"keep", b"d/sub/f").unwrap();
        t.insert(b"d/g", file(b"g")).unwrap();
        assert_eq!(t.names(f), 2);
        assert_eq!(
            t.remove(b"d/sub").unwrap().map(|id| t.entry(id).is_dir()),
            Some(true)
        );
        assert_eq!(t.names(f), 1);
        assert_eq!(t.get(b"d/sub/f"), None);
        assert_eq!(t.get(b"keep"), Some(f));
        // Missing names and non-directory parents are nothing to remove.
        assert_eq!(t.remove(b"d/nothing").unwrap(), None);
        assert_eq!(t.remove(b"keep/x").unwrap(), None);
        assert!(t.remove(b"/").is_err());
        assert!(t.remove(b"../x").is_err());
        let d = t.get(b"d").unwrap();
        t.clear(d);
        assert_eq!(t.children(d).count(), 0);
        assert!(t.has_orphans());
        t.compact();
        assert!(!t.has_orphans());
        // Root, d and keep.
        assert_eq!(t.len(), 3);
        let keep = t.get(b"keep").unwrap();
        assert_eq!(t.names(keep), 1);
        assert_eq!(t.entry(keep).size(), 1);
    }

    #[test]
    fn replacing_a_directory_by_a_file_drops_the_subtree_links() {
        let mut t = Tree::default();
        let f = t.insert(b"d/f", file(b"f")).unwrap();
        t.link(b"l", b"d/f").unwrap();
        t.insert(b"d", file(b"now a file")).unwrap();
        assert_eq!(t.names(f), 1);
        // A link over a directory does the same.
        let g = t.insert(b"e/g", file(b"g")).unwrap();
        t.link(b"m", b"e/g").unwrap();
        t.link(b"e", b"l").unwrap();
        assert_eq!(t.names(g), 1);
        assert_eq!(t.names(f), 2);
    }

    #[test]
    fn make_dirs_creates_missing_directories_and_replaces_non_directories() {
        let mut t = Tree::default();
        t.insert(b"a", Entry::new(Kind::Dir, 0o700, Timestamp::from_secs(3)))
            .unwrap();
        let c = t.make_dirs(b"a/b/c", Timestamp::from_secs(9)).unwrap();
        assert_eq!(t.get(b"a/b/c"), Some(c));
        assert_eq!(t.entry(t.get(b"a").unwrap()).mode, 0o700);
        assert_eq!(t.entry(c).mode, 0o755);
        assert_eq!(t.entry(c).mtime, Timestamp::from_secs(9));
        assert_eq!(t.make_dirs(b"a/b/c", Timestamp::default()).unwrap(), c);
        assert_eq!(t.make_dirs(b"", Timestamp::default()).unwrap(), t.root());
        let f = t.insert(b"f", file(b"")).unwrap();
        t.link(b"g", b"f").unwrap();
        let d = t.make_dirs(b"f/x", Timestamp::default()).unwrap();
        assert!(t.entry(t.get(b"f").unwrap()).is_dir());
        assert_eq!(t.get(b"f/x"), Some(d));
        assert_eq!(t.names(f), 1);
        assert!(t.make_dirs(b"../x", Timestamp::default()).is_err());
    }

    #[test]
    fn escaping_and_overlong_paths_are_refused() {
        let mut t = Tree::default();
        assert!(t.insert(b"../etc/passwd", file(b"")).is_err());
        assert!(t.insert(b"a/../../b", file(b"")).is_err());
        assert!(t.insert(b"a/../b", file(b"")).is_ok());
        assert!(t.insert(&[b'x'; 256], file(b"")).is_err());
        assert!(t.insert(&[b'x'; 255], file(b"")).is_ok());
        t.insert(b"f", file(b"")).unwrap();
        assert!(t.insert(b"f/g", file(b"")).is_err());
    }

    #[test]
    fn walk_is_in_path_order_whatever_the_insertion_order() {
        let mut a = Tree::default();
        let mut b = Tree::default();
        let paths: [&[u8]; 4] = [b"z/1", b"a.txt", b"a/b", b"a/c/d"];
        for p in paths {
            a.insert(p, file(b"")).unwrap();
        }
        for p in paths.iter().rev() {
            b.insert(p, file(b"")).unwrap();
        }
        let wa: Vec<_> = a.walk().into_iter().map(|(p, _)| p).collect();
        let wb: Vec<_> = b.walk().into_iter().map(|(p, _)| p).collect();
        assert_eq!(wa, wb);
        let s: Vec<String> = wa
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        assert_eq!(s, ["", "a", "a/b", "a/c", "a/c/d", "a.txt", "z", "z/1"]);
    }
}
