//! `dir:PATH`: a directory as one uncompressed layer, written deterministically.
//!
//! Entries are sorted by name (bytes), owners are the numeric uid/gid on disk (no user names),
//! modes and device numbers are as on disk, modification times are clamped to
//! [`ImportOptions::created`] when that is set (not 0), hard links become tar hard links, and
//! sockets are skipped. The same tree gives the same layer digest on any machine.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io::{BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::rootfs::one_layer_image;
use super::{ImportOptions, Imported};
use crate::error::{Error, Result};
use crate::media;
use crate::store::{BlobWriter, Store};

/// Directory nesting limit (a loop through bind mounts must not recurse forever).
const MAX_DEPTH: usize = 256;

pub(crate) fn import_dir(store: &Store, root: &Path, opts: &ImportOptions) -> Result<Imported> {
    let meta = std::fs::metadata(root).map_err(|e| Error::io("stat", root, e))?;
    if !meta.is_dir() {
        return Err(Error::io(
            "read directory",
            root,
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let mut staging = store.staging()?;
    let w = staging.writer()?.with_source(root.display().to_string());
    let mut builder = tar::Builder::new(w);
    let mut state = State {
        links: HashMap::new(),
        clamp: (opts.created > 0).then_some(opts.created),
    };
    add_children(&mut builder, root, "", 0, &mut state)?;
    builder
        .finish()
        .map_err(|e| Error::io("write layer for", root, e))?;
    let mut w = builder
        .into_inner()
        .map_err(|e| Error::io("write layer for", root, e))?;
    w.flush()
        .map_err(|e| Error::io("write layer for", root, e))?;
    let (layer, size) = staging.commit(w, None)?;
    let descriptor = one_layer_image(
        staging,
        media::OCI_LAYER_TAR,
        layer,
        size,
        layer,
        opts,
        "dir",
    )?;
    Ok(Imported {
        descriptor,
        name: None,
    })
}

struct State {
    /// (dev, ino) of files with several links -> the first archive path.
    links: HashMap<(u64, u64), String>,
    clamp: Option<i64>,
}

fn add_children(
    b: &mut tar::Builder<BlobWriter>,
    dir: &Path,
    prefix: &str,
    depth: usize,
    st: &mut State,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::io(
            "read directory",
            dir,
            std::io::Error::other(format!("nested more than {MAX_DEPTH} deep")),
        ));
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("read directory", dir, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io("read directory", dir, e))?;
    entries.sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(Error::io(
                "read",
                &path,
                std::io::Error::other("file name is not UTF-8"),
            ));
        };
        let member = format!("{prefix}{name}");
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
        add_one(b, &path, &member, &meta, st)?;
        if meta.is_dir() {
            add_children(b, &path, &format!("{member}/"), depth + 1, st)?;
        }
    }
    Ok(())
}

fn add_one(
    b: &mut tar::Builder<BlobWriter>,
    path: &Path,
    member: &str,
    meta: &Metadata,
    st: &mut State,
) -> Result<()> {
    let err = |e: std::io::Error| Error::io("add to layer", path, e);
    let ft = meta.file_type();
    let mut h = tar::Header::new_gnu();
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    let mtime = match st.clamp {
        Some(c) => meta.mtime().min(c),
        None => meta.mtime(),
    };
    h.set_mtime(u64::try_from(mtime).unwrap_or(0));
    h.set_size(0);
    if ft.is_dir() {
        h.set_entry_type(tar::EntryType::Directory);
        return b
            .append_data(&mut h, format!("{member}/"), std::io::empty())
            .map_err(err);
    }
    if ft.is_symlink() {
        let target = std::fs::read_link(path).map_err(|e| Error::io("read link", path, e))?;
        h.set_entry_type(tar::EntryType::Symlink);
        return b.append_link(&mut h, member, target).map_err(err);
    }
    if meta.nlink() > 1 {
        let key = (meta.dev(), meta.ino());
        if let Some(first) = st.links.get(&key) {
            h.set_entry_type(tar::EntryType::Link);
            return b.append_link(&mut h, member, first).map_err(err);
        }
        st.links.insert(key, member.to_string());
    }
    if ft.is_file() {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(meta.len());
        let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        return b
            .append_data(&mut h, member, BufReader::with_capacity(256 << 10, file))
            .map_err(err);
    }
    let kind = if ft.is_char_device() {
        tar::EntryType::Char
    } else if ft.is_block_device() {
        tar::EntryType::Block
    } else if ft.is_fifo() {
        tar::EntryType::Fifo
    } else {
        tracing::debug!("skipping socket {}", path.display());
        return Ok(());
    };
    h.set_entry_type(kind);
    if ft.is_char_device() || ft.is_block_device() {
        let rdev = meta.rdev();
        let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
        let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
        h.set_device_major(u32::try_from(major).unwrap_or(0))
            .map_err(err)?;
        h.set_device_minor(u32::try_from(minor).unwrap_or(0))
            .map_err(err)?;
    }
    b.append_data(&mut h, member, std::io::empty()).map_err(err)
}
