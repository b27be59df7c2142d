//! `[[files]]` and `[[directories]]`: inline text, host files and whole host directories,
//! symlinks and directories put into the image with their mode and owner.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use stamp_fs::{Content, Kind, NodeId};

use super::tree_io::Io;
use super::{FileSource, FileSpec, Owner, Recipe, users};
use crate::{Error, Result};

/// Most entries copied from one host directory.
const MAX_HOST_ENTRIES: usize = 1_000_000;
/// Deepest host directory copied.
const MAX_HOST_DEPTH: usize = 256;

/// Applies the recipe's files and directories, in order.
pub fn apply(r: &Recipe, io: &mut Io<'_>) -> Result<()> {
    for f in &r.files {
        apply_one(r, f, io)?;
    }
    Ok(())
}

fn resolve(
    r: &Recipe,
    io: &Io<'_>,
    f: &FileSpec,
    o: Option<&Owner>,
    file: &'static str,
) -> Result<u32> {
    match o {
        None => Ok(0),
        Some(Owner::Id(i)) => Ok(*i),
        Some(Owner::Name(n)) => users::id_of(io, file, n)?.ok_or_else(|| {
            let what = if file == "/etc/passwd" {
                "owner"
            } else {
                "group"
            };
            let mut o = r.origin(&format!("{}.{what}", f.origin.key));
            if o.line == 0 {
                o.line = f.origin.line;
            }
            io.recipe_err(&o, format!("no {what} {n:?} in the image's {file}"))
        }),
    }
}

fn apply_one(r: &Recipe, f: &FileSpec, io: &mut Io<'_>) -> Result<()> {
    let uid = resolve(r, io, f, f.owner.as_ref(), "/etc/passwd")?;
    let gid = resolve(r, io, f, f.group.as_ref(), "/etc/group")?;
    let set = |io: &mut Io<'_>, id: NodeId, mode: Option<u32>| {
        let e = io.tree.entry_mut(id);
        if let Some(m) = mode {
            e.mode = m;
        }
        e.uid = uid;
        e.gid = gid;
    };
    match &f.source {
        FileSource::Inline(text) => {
            let id = io.write_file(&f.path, text.as_bytes().to_vec(), f.mode.unwrap_or(0o644))?;
            set(io, id, None);
        }
        FileSource::Symlink(t) => {
            let id = io.symlink(&f.path, t)?;
            set(io, id, None);
        }
        FileSource::Dir => {
            let id = io.mkdir(&f.path)?;
            set(io, id, Some(f.mode.unwrap_or(0o755)));
        }
        FileSource::Host(src) => {
            let meta = std::fs::symlink_metadata(src).map_err(|e| Error::io("stat", src, e))?;
            if meta.is_dir() {
                let id = io.mkdir(&f.path)?;
                set(
                    io,
                    id,
                    Some(f.mode.unwrap_or(meta.permissions().mode() & 0o7777)),
                );
                let mut count = 0;
                copy_dir(io, src, &f.path, uid, gid, 0, &mut count)?;
            } else {
                let id = host_entry(io, src, &f.path)?;
                set(io, id, f.mode);
            }
        }
    }
    Ok(())
}

/// Puts host file, symlink or empty directory `src` at `dst` with the host's mode.
fn host_entry(io: &mut Io<'_>, src: &Path, dst: &str) -> Result<NodeId> {
    let meta = std::fs::symlink_metadata(src).map_err(|e| Error::io("stat", src, e))?;
    let mode = meta.mode() & 0o7777;
    let kind = if meta.file_type().is_symlink() {
        let t = std::fs::read_link(src).map_err(|e| Error::io("readlink", src, e))?;
        Kind::Symlink(t.into_os_string().into_encoded_bytes())
    } else if meta.is_file() {
        if meta.len() <= 64 << 10 {
            let data = std::fs::read(src).map_err(|e| Error::io("read", src, e))?;
            Kind::File(Content::Bytes(Bytes::from(data)))
        } else {
            Kind::File(Content::File {
                path: Arc::new(src.to_path_buf()),
                offset: 0,
                len: meta.len(),
            })
        }
    } else if meta.is_dir() {
        Kind::Dir
    } else {
        return Err(Error::BadFile {
            path: src.display().to_string(),
            detail: "only regular files, directories and symlinks can be copied from the host"
                .into(),
        });
    };
    let e = io.entry(kind, mode);
    io.put(dst, e)
}

fn copy_dir(
    io: &mut Io<'_>,
    src: &Path,
    dst: &str,
    uid: u32,
    gid: u32,
    depth: usize,
    count: &mut usize,
) -> Result<()> {
    if depth > MAX_HOST_DEPTH {
        return Err(Error::BadFile {
            path: src.display().to_string(),
            detail: format!("nested deeper than {MAX_HOST_DEPTH} directories"),
        });
    }
    let rd = std::fs::read_dir(src).map_err(|e| Error::io("read directory", src, e))?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io("read directory", src, e))?;
        names.push(e.file_name());
    }
    names.sort();
    for name in names {
        *count += 1;
        if *count > MAX_HOST_ENTRIES {
            return Err(Error::BadFile {
                path: src.display().to_string(),
                detail: format!("more than {MAX_HOST_ENTRIES} entries to copy"),
            });
        }
        let s = src.join(&name);
        let d = format!("{dst}/{}", name.to_string_lossy());
        let id = host_entry(io, &s, &d)?;
        let e = io.tree.entry_mut(id);
        e.uid = uid;
        e.gid = gid;
        if e.is_dir() {
            copy_dir(io, &s, &d, uid, gid, depth + 1, count)?;
        }
    }
    Ok(())
}
