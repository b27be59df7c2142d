//! A host directory into a [`Tree`].

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{SourceOptions, name_source};
use crate::{Content, Entry, Error, Kind, Result, Timestamp, Tree};

/// Reads the directory `path` into a tree, its root taking the directory's own metadata.
///
/// Everything is `lstat`ed (symbolic links are kept as links, never followed), names are read in
/// byte order, hard links are detected by (device, inode), and file contents are referred to by
/// host path (read when the image is written, so the files must stay in place and readable).
/// Ownership and modes are the host's: a directory prepared by a non-root user gives that user's
/// uid and gid (use a tar made with `--owner=0 --group=0` for root-owned images). Extended
/// attributes are read where the host filesystem and permissions allow; others are skipped.
pub fn from_dir(path: &Path, opts: &SourceOptions) -> Result<Tree> {
    let source_name = path.display().to_string();
    let root_meta = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    if !root_meta.is_dir() {
        return Err(Error::InvalidOption(format!(
            "{source_name}: not a directory"
        )));
    }
    let mut root = entry(&root_meta, Kind::Dir, opts);
    root.xattrs = xattrs(path);
    let mut tree = Tree::new(root);
    let mut seen: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    // (host path, path in the tree) of directories still to read.
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(path.to_path_buf(), Vec::new())];
    while let Some((host, rel)) = stack.pop() {
        let mut names = Vec::new();
        for d in std::fs::read_dir(&host).map_err(|e| Error::io("read directory", &host, e))? {
            let d = d.map_err(|e| Error::io("read directory", &host, e))?;
            names.push(d.file_name());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        // Pushed in reverse so that directories are read in name order.
        let mut subdirs = Vec::new();
        for n in names {
            let hp = host.join(&n);
            let mut tp = rel.clone();
            if !tp.is_empty() {
                tp.push(b'/');
            }
            tp.extend_from_slice(n.as_bytes());
            let m = std::fs::symlink_metadata(&hp).map_err(|e| Error::io("stat", &hp, e))?;
            let ft = m.file_type();
            if !ft.is_dir() && m.nlink() > 1 {
                if let Some(first) = seen.get(&(m.dev(), m.ino())) {
                    tree.link(&tp, first)
                        .map_err(|e| name_source(e, &source_name))?;
                    continue;
                }
                seen.insert((m.dev(), m.ino()), tp.clone());
            }
            let kind = kind(&hp, &m)?;
            let mut e = entry(&m, kind, opts);
            e.xattrs = xattrs(&hp);
            tree.insert(&tp, e)
                .map_err(|e| name_source(e, &source_name))?;
            if ft.is_dir() {
                subdirs.push((hp, tp));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(tree)
}

fn kind(path: &Path, m: &Metadata) -> Result<Kind> {
    use std::os::unix::fs::FileTypeExt;
    let ft = m.file_type();
    let rdev = m.rdev();
    // Linux's encoding of dev_t (glibc's gnu_dev_major/minor).
    let major = (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as u32;
    let minor = ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as u32;
    Ok(if ft.is_file() {
        Kind::File(Content::File {
            path: Arc::new(path.to_path_buf()),
            offset: 0,
            len: m.len(),
        })
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        let t = std::fs::read_link(path).map_err(|e| Error::io("read link", path, e))?;
        Kind::Symlink(t.as_os_str().as_bytes().to_vec())
    } else if ft.is_char_device() {
        Kind::CharDevice { major, minor }
    } else if ft.is_block_device() {
        Kind::BlockDevice { major, minor }
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        Kind::Socket
    })
}

fn entry(m: &Metadata, kind: Kind, opts: &SourceOptions) -> Entry {
    let ts = |sec: i64, nsec: i64| {
        opts.clamp(Timestamp {
            sec,
            nsec: u32::try_from(nsec).unwrap_or(0).min(999_999_999),
        })
    };
    let mut e = Entry::new(kind, m.mode(), ts(m.mtime(), m.mtime_nsec()));
    e.uid = m.uid();
    e.gid = m.gid();
    e.atime = ts(m.atime(), m.atime_nsec());
    e.ctime = ts(m.ctime(), m.ctime_nsec());
    e
}

/// The xattrs of `path` (not following symlinks) that can be read; none where unsupported.
fn xattrs(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(names) = xattr::list(path) else {
        return out;
    };
    for n in names {
        let Some(s) = n.to_str() else { continue };
        if let Ok(Some(v)) = xattr::get(path, &n) {
            out.insert(s.to_string(), v);
        }
    }
    out
}
