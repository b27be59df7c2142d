//! Reading the image's files for boot: symlinks resolved inside the tree (never on the host),
//! regular files read with a size limit, ESP trees built with reproducible times.

use stamp_fs::{Content, Entry, Kind, NodeId, Timestamp, Tree};

use crate::{Error, Result};

pub use stamp_fs::tree::MAX_SYMLINKS;

/// Resolves `path` in `tree` with every link followed ([`Tree::resolve`]), the canonical path
/// as a string (`/boot/vmlinuz-…`).
fn resolve(tree: &Tree, path: &str) -> Option<(String, NodeId)> {
    let (p, id) = tree.resolve(path.as_bytes(), true)?;
    Some((String::from_utf8_lossy(&p).into_owned(), id))
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
    read_content(c, &p, limit).map(Some)
}

/// Reads the whole of `content` (the file at `path`, for errors), refusing more than `limit`
/// bytes.
fn read_content(content: &Content, path: &str, limit: u64) -> Result<Vec<u8>> {
    let len = content.len();
    if len > limit {
        return Err(Error::BadFile {
            path: path.into(),
            detail: format!("{len} bytes, more than the {limit} accepted"),
        });
    }
    let mut buf = vec![0u8; len as usize];
    content.read_at(&mut buf, 0)?;
    Ok(buf)
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

impl Default for EspBuilder {
    fn default() -> Self {
        Self::new()
    }
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
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;

    /// Test helper: a root-owned regular file of `data` at `p`.
    pub(crate) fn file(t: &mut Tree, p: &str, data: &'static [u8]) {
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

    /// Test helper: a symbolic link at `p` to `target`.
    pub(crate) fn link(t: &mut Tree, p: &str, target: &str) {
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

    // Link resolution itself is tested with `stamp_fs::Tree::resolve`; these test the string
    // paths, the file checks and the size limit on top of it.
    #[test]
    fn files_are_found_through_relative_absolute_and_intermediate_links() {
        let mut t = Tree::default();
        file(&mut t, "usr/lib/modules/6.1/vmlinuz", b"k");
        file(&mut t, "boot/vmlinuz-6.1", b"k2");
        link(&mut t, "lib", "usr/lib");
        link(&mut t, "vmlinuz", "boot/vmlinuz-6.1");
        link(&mut t, "abs", "/boot/../boot/./vmlinuz-6.1");
        link(&mut t, "usr/lib/modules/cur", "../modules/6.1");
        assert_eq!(
            regular(&t, "/lib/modules/6.1/vmlinuz").unwrap().0,
            "/usr/lib/modules/6.1/vmlinuz"
        );
        assert_eq!(regular(&t, "/vmlinuz").unwrap().0, "/boot/vmlinuz-6.1");
        assert_eq!(regular(&t, "abs").unwrap().0, "/boot/vmlinuz-6.1");
        assert_eq!(
            regular(&t, "/lib/modules/cur/vmlinuz").unwrap().0,
            "/usr/lib/modules/6.1/vmlinuz"
        );
        assert_eq!(read(&t, "/vmlinuz", 10).unwrap().unwrap(), b"k2");
        assert!(read(&t, "/vmlinuz", 1).is_err());
        assert_eq!(read(&t, "/missing", 10).unwrap(), None);
        // Directories are not regular files; `..` above the root stays at the root.
        assert!(regular(&t, "/../../boot").is_none());
        assert_eq!(
            list(&t, "/../lib/modules"),
            [
                ("6.1".to_string(), "/usr/lib/modules/6.1".to_string()),
                ("cur".to_string(), "/usr/lib/modules/cur".to_string()),
            ]
        );
        assert_eq!(list(&t, "/")[0], ("abs".to_string(), "/abs".to_string()));
        // A file used as a directory.
        assert!(regular(&t, "/vmlinuz/x").is_none());
        assert!(list(&t, "/vmlinuz").is_empty());
    }

    #[test]
    fn symlink_loops_end() {
        let mut t = Tree::default();
        link(&mut t, "a", "b");
        link(&mut t, "b", "/a");
        link(&mut t, "self", "self/self");
        assert!(regular(&t, "/a").is_none());
        assert_eq!(read(&t, "/self", 10).unwrap(), None);
        assert!(list(&t, "/self").is_empty());
    }
}
