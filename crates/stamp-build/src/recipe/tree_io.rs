//! Reading and writing files of the image's [`Tree`] the way the image sees them: paths resolved
//! through the image's own symlinks (`/lib` → `usr/lib`), edits keeping the file's metadata, and
//! every created or edited entry timestamped with SOURCE_DATE_EPOCH (or 0).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use stamp_fs::tree::MAX_SYMLINKS;
use stamp_fs::{Content, Entry, Kind, NodeId, Resolved, Timestamp, Tree};

use super::Origin;
use crate::{Error, Result};

/// Largest image file the recipe reads to edit (`/etc/passwd`, unit files, ...).
pub const MAX_EDIT: u64 = 16 << 20;

/// The tree being changed, with the time and the recipe file for errors.
pub struct Io<'t> {
    /// The tree.
    pub tree: &'t mut Tree,
    /// The timestamp of created and edited entries.
    pub now: Timestamp,
    /// SOURCE_DATE_EPOCH, if any.
    pub epoch: Option<i64>,
    recipe: PathBuf,
}

impl<'t> Io<'t> {
    /// Wraps `tree`.
    pub fn new(tree: &'t mut Tree, epoch: Option<i64>, recipe: &Path) -> Self {
        Io {
            tree,
            now: Timestamp::from_secs(epoch.unwrap_or(0)),
            epoch,
            recipe: recipe.to_path_buf(),
        }
    }

    /// An [`Error::Recipe`] for what was written at `origin`.
    pub fn recipe_err(&self, origin: &Origin, detail: impl Into<String>) -> Error {
        Error::Recipe {
            path: self.recipe.clone(),
            line: origin.line,
            key: origin.key.clone(),
            detail: detail.into(),
        }
    }

    /// Where `path` leads in the image ([`Tree::resolve_partial`]: symlinks followed, the last
    /// one too if `follow_last`); an error when the links loop.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<Resolved> {
        self.tree
            .resolve_partial(path.as_bytes(), follow_last)
            .ok_or_else(|| Error::BadFile {
                path: path.into(),
                detail: format!("more than {MAX_SYMLINKS} symlinks resolving the path"),
            })
    }

    /// The node `path` resolves to (symlinks followed), if any.
    pub fn lookup(&self, path: &str) -> Option<NodeId> {
        self.tree.resolve(path.as_bytes(), true).map(|(_, id)| id)
    }

    /// Returns true if and only if `path` resolves to a regular file.
    pub fn is_file(&self, path: &str) -> bool {
        self.lookup(path)
            .is_some_and(|id| matches!(self.tree.entry(id).kind, Kind::File(_)))
    }

    /// Where to write `path`: its parent resolved through symlinks, its last component kept.
    pub fn write_path(&self, path: &str) -> Result<String> {
        let p = self.resolve(path, false)?.path();
        Ok(String::from_utf8_lossy(&p).into_owned())
    }

    /// The content of the regular file at `path` (symlinks followed), None if there is none;
    /// more than [`MAX_EDIT`] bytes is an error.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        crate::boot::files::read(self.tree, path, MAX_EDIT)
    }

    /// The text of the file at `path`, None if there is none; not UTF-8 is an error.
    pub fn read_text(&self, path: &str) -> Result<Option<String>> {
        match self.read(path)? {
            None => Ok(None),
            Some(b) => String::from_utf8(b).map(Some).map_err(|e| Error::BadFile {
                path: path.into(),
                detail: format!("not UTF-8 text (at byte {})", e.utf8_error().valid_up_to()),
            }),
        }
    }

    /// A new entry of `kind` with `mode`, owned by root, timestamped now.
    pub fn entry(&self, kind: Kind, mode: u32) -> Entry {
        Entry::new(kind, mode, self.now)
    }

    /// Writes a new regular file at `path` (replacing whatever is there), owned by root.
    pub fn write_file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<NodeId> {
        let e = self.entry(Kind::File(Content::Bytes(Bytes::from(data))), mode);
        self.put(path, e)
    }

    /// Replaces the content of the regular file at `path`, keeping its owner, mode and xattrs;
    /// creates it with `mode`, root-owned, if it does not exist.
    pub fn edit_file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<NodeId> {
        if let Some(id) = self.lookup(path)
            && matches!(self.tree.entry(id).kind, Kind::File(_))
        {
            let now = self.now;
            let e = self.tree.entry_mut(id);
            e.kind = Kind::File(Content::Bytes(Bytes::from(data)));
            e.mtime = now;
            e.ctime = now;
            e.atime = now;
            return Ok(id);
        }
        self.write_file(path, data, mode)
    }

    /// Puts `entry` at `path` (parents resolved through symlinks and created as needed).
    pub fn put(&mut self, path: &str, entry: Entry) -> Result<NodeId> {
        let p = self.write_path(path)?;
        Ok(self.tree.insert(p.as_bytes(), entry)?)
    }

    /// Makes a symlink at `path` to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<NodeId> {
        let e = self.entry(Kind::Symlink(target.as_bytes().to_vec()), 0o777);
        self.put(path, e)
    }

    /// Makes sure `path` is a directory (existing ones keep their metadata; new ones are 0755
    /// root). Returns its node.
    pub fn mkdir(&mut self, path: &str) -> Result<NodeId> {
        match self.resolve(path, true)? {
            Resolved::Found { id, .. } if self.tree.entry(id).is_dir() => Ok(id),
            r => Ok(self.tree.make_dirs(&r.path(), self.now)?),
        }
    }

    /// Removes the name `path` (its parent resolved through symlinks; the name itself not
    /// followed). Returns true if and only if there was one.
    pub fn remove(&mut self, path: &str) -> Result<bool> {
        let p = self.write_path(path)?;
        Ok(self.tree.remove(p.as_bytes())?.is_some())
    }

    /// The names in directory `path` (resolved), with their nodes.
    pub fn list(&self, path: &str) -> Vec<(String, NodeId)> {
        match self.lookup(path) {
            Some(id) if self.tree.entry(id).is_dir() => self
                .tree
                .children(id)
                .map(|(n, id)| (String::from_utf8_lossy(n).into_owned(), id))
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_through_usrmerge_symlinks_and_loops_stop() {
        let mut tree = Tree::default();
        let mut io = Io::new(&mut tree, Some(7), Path::new("r.toml"));
        io.write_file("/usr/lib/systemd/system/a.service", b"x".to_vec(), 0o644)
            .unwrap();
        io.symlink("/lib", "usr/lib").unwrap();
        io.symlink("/loop", "/loop").unwrap();
        let r = io.resolve("/lib/systemd/system/a.service", true).unwrap();
        assert_eq!(r.path(), b"/usr/lib/systemd/system/a.service");
        let id = r.node();
        assert!(id.is_some());
        assert_eq!(io.write_path("/lib/x/y").unwrap(), "/usr/lib/x/y");
        assert!(io.resolve("/loop/x", true).is_err());
        assert!(io.write_path("/loop/x").is_err());
        assert!(io.lookup("/loop/x").is_none());
        assert!(io.read("/loop/x").is_err() || io.read("/loop/x").unwrap().is_none());
        io.edit_file("/lib/systemd/system/a.service", b"yy".to_vec(), 0o600)
            .unwrap();
        let e = io.tree.entry(id.unwrap());
        assert_eq!((e.mode, e.size(), e.mtime.sec), (0o644, 2, 7));
        assert!(io.is_file("/lib/systemd/system/a.service"));
    }
}
