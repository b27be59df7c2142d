//! Tar archives (ustar, GNU, PAX) into a [`Tree`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tar::EntryType;

use super::spool::{Compression, peek, spool};
use super::{Loaded, SourceOptions, name_source, pax};
use crate::{Content, Entry, Error, Kind, Result, Timestamp, Tree};

/// Reads the tar archive at `path` (`-` for stdin) into a tree.
///
/// The compression (none, gzip, zstd, xz) is detected from the first bytes, not the name. A plain
/// tar file's members are referred to in place (no copy); a compressed tar or stdin is first
/// decompressed into a temporary file held by the returned [`Loaded`], as is a tar read from a
/// pipe or device.
///
/// Ownership, modes, times (PAX times with nanoseconds), device numbers, symlink targets, hard
/// links (in any order), and xattrs (PAX `SCHILY.xattr.*` and `LIBARCHIVE.xattr.*`) are kept. A
/// later entry with the same path replaces an earlier one, as extraction does. Paths escaping the
/// root and GNU sparse members are refused, naming the archive and the entry.
pub fn from_tar(path: &Path, opts: &SourceOptions) -> Result<Loaded> {
    let name = if path == Path::new("-") {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    };
    if path == Path::new("-") {
        let mut input = BufReader::with_capacity(1 << 20, std::io::stdin().lock());
        let c = Compression::detect(&peek(&mut input, path)?, &name)?;
        let tmp = spool(input, c, path)?;
        let tree = read_plain(&tmp, &name, opts)?;
        return Ok(Loaded {
            tree,
            spool: Some(Arc::new(tmp)),
        });
    }
    let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    // A pipe or device (`<(zcat ...)`, /dev/stdin) can be read only once: spool it like stdin.
    let regular = f
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .is_file();
    let mut input = BufReader::with_capacity(1 << 20, f);
    let c = Compression::detect(&peek(&mut input, path)?, &name)?;
    if c == Compression::None && regular {
        drop(input);
        return Ok(Loaded::new(read_plain(path, &name, opts)?));
    }
    let tmp = spool(input, c, path)?;
    let tree = read_plain(&tmp, &name, opts)?;
    Ok(Loaded {
        tree,
        spool: Some(Arc::new(tmp)),
    })
}

/// A hard link seen before its target.
struct PendingLink {
    link: Vec<u8>,
    target: Vec<u8>,
}

/// Reads the uncompressed tar file at `file`; errors name the archive `name`.
fn read_plain(file: &Path, name: &str, opts: &SourceOptions) -> Result<Tree> {
    let mut tree = Tree::default();
    // The root keeps the default metadata unless the archive has a `./` entry, but its time is
    // clamped like every other.
    let root = tree.root();
    let rt = opts.clamp(tree.entry(root).mtime);
    let re = tree.entry_mut(root);
    (re.mtime, re.atime, re.ctime) = (rt, rt, rt);
    let mut pending: Vec<PendingLink> = Vec::new();
    members(file, name, opts, |m| {
        match m.what {
            What::Link(target) => {
                if tree.get(&target).is_some() {
                    tree.link(&m.path, &target)
                        .map_err(|e| name_source(e, name))?;
                } else {
                    pending.push(PendingLink {
                        link: m.path,
                        target,
                    });
                }
            }
            What::Entry(e) => {
                tree.insert(&m.path, e).map_err(|e| name_source(e, name))?;
            }
        }
        Ok(())
    })?;
    // Hard links that came before their targets.
    for p in pending {
        tree.link(&p.link, &p.target)
            .map_err(|e| name_source(e, name))?;
    }
    Ok(tree)
}

/// One member of a tar archive, its header and PAX records parsed.
pub(super) struct Member {
    /// The path as written in the archive (not normalized).
    pub(super) path: Vec<u8>,
    /// What the member makes.
    pub(super) what: What,
}

/// What a tar member makes.
pub(super) enum What {
    /// A file, directory, symlink, device or FIFO with its metadata; a regular file's content is
    /// its region of the archive.
    Entry(Entry),
    /// A hard link to this target path (as written in the archive).
    Link(Vec<u8>),
}

/// The error for the member `path` of the source `name`.
pub(super) fn bad_member(name: &str, path: &[u8], detail: &str) -> Error {
    Error::BadPath {
        source_name: name.to_string(),
        path: String::from_utf8_lossy(path).into_owned(),
        detail: detail.to_string(),
    }
}

/// Calls `each` with every member of the uncompressed tar file at `file`, in archive order,
/// reading headers only (contents are skipped by seeking and referred to as regions of `file`).
/// Global PAX headers are skipped; GNU sparse members and unknown types are errors naming the
/// archive `name` and the member.
pub(super) fn members(
    file: &Path,
    name: &str,
    opts: &SourceOptions,
    mut each: impl FnMut(Member) -> Result<()>,
) -> Result<()> {
    let f = File::open(file).map_err(|e| Error::io("open", file, e))?;
    let data = Arc::new(PathBuf::from(file));
    let mut archive = tar::Archive::new(f);
    let io = |e| Error::io("read tar", PathBuf::from(name), e);
    for entry in archive.entries_with_seek().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let path = entry.path_bytes().into_owned();
        let bad = |detail: &str| bad_member(name, &path, detail);
        let header = entry.header().clone();
        let etype = header.entry_type();
        if matches!(etype, EntryType::XGlobalHeader) {
            continue;
        }
        if etype.is_gnu_sparse() {
            return Err(bad(
                "GNU sparse members are not supported (create the tar without --sparse)",
            ));
        }
        let mut meta = Meta::from_header(&header).map_err(io)?;
        if let Some(exts) = entry.pax_extensions().map_err(io)? {
            for ext in exts {
                let ext = ext.map_err(io)?;
                meta.pax(ext.key_bytes(), ext.value_bytes())
                    .map_err(|d| bad(&d))?;
            }
        }
        if meta.sparse {
            return Err(bad(
                "GNU sparse members are not supported (create the tar without --sparse)",
            ));
        }
        let kind = match etype {
            EntryType::Regular | EntryType::Continuous => {
                if path.ends_with(b"/") {
                    Kind::Dir
                } else {
                    Kind::File(Content::File {
                        path: data.clone(),
                        offset: entry.raw_file_position(),
                        len: entry.size(),
                    })
                }
            }
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("symbolic link without a target"))?;
                Kind::Symlink(target.into_owned())
            }
            EntryType::Char => Kind::CharDevice {
                major: meta.major,
                minor: meta.minor,
            },
            EntryType::Block => Kind::BlockDevice {
                major: meta.major,
                minor: meta.minor,
            },
            EntryType::Fifo => Kind::Fifo,
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("hard link without a target"))?
                    .into_owned();
                each(Member {
                    path,
                    what: What::Link(target),
                })?;
                continue;
            }
            EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader => continue,
            other => {
                return Err(bad(&format!(
                    "unsupported tar entry type '{}'",
                    other.as_byte().escape_ascii()
                )));
            }
        };
        let mtime = opts.clamp(meta.mtime);
        let e = Entry {
            kind,
            mode: meta.mode & 0o7777,
            uid: meta.uid,
            gid: meta.gid,
            mtime,
            atime: opts.clamp(meta.atime.unwrap_or(meta.mtime)),
            ctime: opts.clamp(meta.ctime.unwrap_or(meta.mtime)),
            xattrs: meta.xattrs,
        };
        each(Member {
            path,
            what: What::Entry(e),
        })?;
    }
    Ok(())
}

/// An entry's metadata from its header, overridden by its PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timestamp,
    atime: Option<Timestamp>,
    ctime: Option<Timestamp>,
    major: u32,
    minor: u32,
    xattrs: BTreeMap<String, Vec<u8>>,
    sparse: bool,
}

impl Meta {
    fn from_header(h: &tar::Header) -> std::io::Result<Self> {
        let id = |v: u64| {
            u32::try_from(v).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "uid/gid above 2^32")
            })
        };
        let mtime = h.mtime()?;
        // Device numbers only mean something (and are only reliably filled) for devices.
        let is_dev = matches!(h.entry_type(), EntryType::Char | EntryType::Block);
        let dev = |r: std::io::Result<Option<u32>>| {
            if is_dev {
                r.map(|v| v.unwrap_or(0))
            } else {
                Ok(0)
            }
        };
        Ok(Meta {
            mode: h.mode()?,
            uid: id(h.uid()?)?,
            gid: id(h.gid()?)?,
            mtime: Timestamp::from_secs(i64::try_from(mtime).unwrap_or(i64::MAX)),
            atime: None,
            ctime: None,
            major: dev(h.device_major())?,
            minor: dev(h.device_minor())?,
            xattrs: BTreeMap::new(),
            sparse: false,
        })
    }

    /// Applies one PAX record; an unusable value is an error with this detail.
    fn pax(&mut self, key: &[u8], value: &[u8]) -> std::result::Result<(), String> {
        let bad = || {
            format!(
                "bad PAX record {}={}",
                key.escape_ascii(),
                value.escape_ascii()
            )
        };
        let id = |v: &[u8]| {
            pax::number(v)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(bad)
        };
        match key {
            b"mtime" => self.mtime = pax::time(value).ok_or_else(bad)?,
            b"atime" => self.atime = Some(pax::time(value).ok_or_else(bad)?),
            b"ctime" => self.ctime = Some(pax::time(value).ok_or_else(bad)?),
            b"uid" => self.uid = id(value)?,
            b"gid" => self.gid = id(value)?,
            k if k.starts_with(b"GNU.sparse.") => self.sparse = true,
            k if k.starts_with(b"SCHILY.xattr.") => {
                let n = &k[b"SCHILY.xattr.".len()..];
                let n = String::from_utf8(n.to_vec()).map_err(|_| bad())?;
                self.xattrs.insert(n, value.to_vec());
            }
            k if k.starts_with(b"LIBARCHIVE.xattr.") => {
                let n = pax::percent_decode(&k[b"LIBARCHIVE.xattr.".len()..]);
                let n = String::from_utf8(n).map_err(|_| bad())?;
                let v = pax::base64(value).ok_or_else(bad)?;
                self.xattrs.insert(n, v);
            }
            _ => {}
        }
        Ok(())
    }
}
