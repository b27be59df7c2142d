//! Reading the image's files for boot: symlinks resolved inside the tree (never on the host),
//! regular files read with a size limit, ESP trees built with reproducible times.

use stamp_fs::{Content, Entry, Kind, NodeId, Timestamp, Tree};

use crate::{Error, Result};

/// Most symlinks followed while resolving one path (Linux's limit).
pub const MAX_SYMLINKS: usize = 40;

/// Most components a path may have while it is resolved (a bound on symlink expansion).
const MAX_COMPONENTS: usize = 4096;

/// Resolves `path` inside `tree` the way the kernel would with the tree as `/`: every symlink
/// (intermediate or last, relative or absolute) is followed, `..` stops at the root. Returns the
/// canonical path (`/boot/vmlinuz-…`) and the node, or `None` when a component is missing, a
/// non-directory is used as one, or more than [`MAX_SYMLINKS`] links are followed.
pub fn resolve(tree: &Tree, path: &str) -> Option<(String, NodeId)> {
    // Components still to walk, in reverse order (the next one last).
    let mut todo: Vec<Vec<u8>> = split(path.as_bytes()).rev().collect();
    let mut stack: Vec<(Vec<u8>, NodeId)> = Vec::new();
    let mut links = 0usize;
    while let Some(c) = todo.pop() {
        let cur = stack.last().map_or(tree.root(), |(_, id)| *id);
        match c.as_slice() {
            b"." => continue,
            b".." => {
                stack.pop();
                continue;
            }
            _ => {}
        }
        if !tree.entry(cur).is_dir() {
            return None;
        }
        let (_, id) = tree.children(cur).find(|(n, _)| *n == c.as_slice())?;
        if let Kind::Symlink(target) = &tree.entry(id).kind {
            links += 1;
            if links > MAX_SYMLINKS {
                return None;
            }
            if target.first() == Some(&b'/') {
                stack.clear();
            }
            todo.extend(split(target).rev());
            if todo.len() > MAX_COMPONENTS {
                return None;
            }
        } else {
            stack.push((c, id));
        }
    }
    let id = stack.last().map_or(tree.root(), |(_, id)| *id);
    let mut out = String::new();
    for (name, _) in &stack {
        out.push('/');
        out.push_str(&String::from_utf8_lossy(name));
    }
    if out.is_empty() {
        out.push('/');
    }
    Some((out, id))
}

fn split(p: &[u8]) -> impl DoubleEndedIterator<Item = Vec<u8>> + '_ {
    p.split(|c| *c == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
}

/// The regular file at `path` (symlinks resolved): its canonical path and entry, or `None`
/// when there is none or it is not a regular file.
pub fn regular<'t>(tree: &'t Tree, path: &str) -> Option<(String, &'t Entry)> {
    let (p, id) = resolve(tree, path)?;
    let e = tree.entry(id);
    matches!(e.kind, Kind::File(_)).then_some((p, e))
}

/// The content of a regular file entry.
pub fn content(e: &Entry) -> Option<&Content> {
    match &e.kind {
        Kind::File(c) => Some(c),
        _ => None,
    }
}

/// Reads the whole regular file at `path` (symlinks resolved), refusing files larger than
/// `limit` bytes. `Ok(None)` when there is no such regular file.
pub fn read(tree: &Tree, path: &str, limit: u64) -> Result<Option<Vec<u8>>> {
    let Some((p, e)) = regular(tree, path) else {
        return Ok(None);
    };
    let Some(c) = content(e) else {
        return Ok(None);
    };
    if c.len() > limit {
        return Err(Error::BadFile {
            path: p,
            detail: format!("{} bytes, more than the {limit} accepted", c.len()),
        });
    }
    let mut buf = vec![0u8; c.len() as usize];
    c.read_at(&mut buf, 0)?;
    Ok(Some(buf))
}

/// The names of the entries of directory `path` (symlinks resolved) with their canonical
/// paths, in name order; empty when there is no such directory.
pub fn list(tree: &Tree, path: &str) -> Vec<(String, String)> {
    let Some((p, id)) = resolve(tree, path) else {
        return Vec::new();
    };
    if !tree.entry(id).is_dir() {
        return Vec::new();
    }
    let base = if p == "/" { String::new() } else { p };
    tree.children(id)
        .filter_map(|(n, _)| {
            let n = std::str::from_utf8(n).ok()?;
            Some((n.to_string(), format!("{base}/{n}")))
        })
        .collect()
}

/// Builds an ESP tree: directories get time 0, files the time they are given.
#[derive(Debug)]
pub struct EspBuilder {
    tree: Tree,
}

impl EspBuilder {
    /// An empty ESP (root directory mode 0755, time 0).
    pub fn new() -> Self {
        EspBuilder {
            tree: Tree::new(Entry::new(Kind::Dir, 0o755, Timestamp::default())),
        }
    }

    /// Adds a file at `path` (parents created with time 0).
    pub fn file(&mut self, path: &str, content: Content, mtime: Timestamp) -> Result<()> {
        if let Some((dir, _)) = path.rsplit_once('/') {
            self.tree.make_dirs(dir.as_bytes(), Timestamp::default())?;
        }
        self.tree.insert(
            path.as_bytes(),
            Entry::new(Kind::File(content), 0o644, mtime),
        )?;
        Ok(())
    }

    /// The finished tree.
    pub fn finish(self) -> Tree {
        self.tree
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn file(t: &mut Tree, p: &str, data: &'static [u8]) {
        t.insert(
            p.as_bytes(),
            Entry::new(
                Kind::File(Content::Bytes(Bytes::from_static(data))),
                0o644,
                Timestamp::default(),
            ),
        )
        .unwrap();
    }

    fn link(t: &mut Tree, p: &str, target: &str) {
        t.insert(
            p.as_bytes(),
            Entry::new(
                Kind::Symlink(target.as_bytes().to_vec()),
                0o777,
                Timestamp::default(),
            ),
        )
        .unwrap();
    }

    #[test]
    fn resolves_relative_absolute_and_intermediate_links() {
        let mut t = Tree::default();
        file(&mut t, "usr/lib/modules/6.1/vmlinuz", b"k");
        file(&mut t, "boot/vmlinuz-6.1", b"k2");
        link(&mut t, "lib", "usr/lib");
        link(&mut t, "vmlinuz", "boot/vmlinuz-6.1");
        link(&mut t, "abs", "/boot/../boot/./vmlinuz-6.1");
        link(&mut t, "usr/lib/modules/cur", "../modules/6.1");
        assert_eq!(
            resolve(&t, "/lib/modules/6.1/vmlinuz").unwrap().0,
            "/usr/lib/modules/6.1/vmlinuz"
        );
        assert_eq!(resolve(&t, "/vmlinuz").unwrap().0, "/boot/vmlinuz-6.1");
        assert_eq!(resolve(&t, "abs").unwrap().0, "/boot/vmlinuz-6.1");
        assert_eq!(
            resolve(&t, "/lib/modules/cur/vmlinuz").unwrap().0,
            "/usr/lib/modules/6.1/vmlinuz"
        );
        assert_eq!(read(&t, "/vmlinuz", 10).unwrap().unwrap(), b"k2");
        assert!(read(&t, "/vmlinuz", 1).is_err());
        assert_eq!(read(&t, "/missing", 10).unwrap(), None);
        // `..` above the root stays at the root.
        assert_eq!(resolve(&t, "/../../boot").unwrap().0, "/boot");
        // A file used as a directory.
        assert!(resolve(&t, "/vmlinuz/x").is_none());
    }

    #[test]
    fn symlink_loops_end() {
        let mut t = Tree::default();
        link(&mut t, "a", "b");
        link(&mut t, "b", "/a");
        link(&mut t, "self", "self/self");
        assert!(resolve(&t, "/a").is_none());
        assert!(resolve(&t, "/self").is_none());
    }
}
