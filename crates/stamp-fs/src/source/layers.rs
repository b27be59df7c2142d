//! Image layers (OCI / Docker changesets) flattened into one [`Tree`], as a container runtime
//! would extract them, but in memory: whiteouts and opaque directories remove lower content, and
//! file contents stay regions of the layer tars.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::archive::{Member, What, bad_member, members};
use super::spool::Compression;
use super::{SourceOptions, name_source};
use crate::{Error, Result, Tree};

/// Prefix of a whiteout name: `.wh.NAME` deletes `NAME` from the lower layers.
const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// Prefix of names reserved for whiteout metadata (AUFS's `.wh..wh.plnk`, `.wh..wh.aufs`).
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";

/// The opaque-directory marker: hides every lower-layer child of the directory holding it.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Applies image layers (uncompressed tar files, lowest first) to an empty tree, as an OCI
/// runtime would extract them: whiteouts and opaque directories remove lower content; contents
/// stay regions of the tars.
///
/// The rules are the OCI image-spec layer changeset rules, as containers/storage (podman)
/// applies them:
///
/// - `.wh.NAME` deletes `NAME` (a file, or a directory with everything below it) from the lower
///   layers; `.wh..wh..opq` hides every lower-layer child of its directory. Whiteouts apply to
///   lower layers only: entries of the same layer stay, wherever the marker is in the tar. A
///   whiteout of a name that does not exist is fine. Markers never appear in the result, and
///   other `.wh..wh.*` names (AUFS metadata) are skipped.
/// - A later entry replaces a lower one: anything but a directory over a directory replaces the
///   whole name (a removed subtree included); a directory over a directory takes the new
///   metadata and keeps the lower children.
/// - Missing parent directories are implied (mode 0755, root, the entry's time); existing ones
///   keep their metadata (podman's overlay view shows the upper layer's implied 0755 directory
///   instead; image builders write parent entries, so this differs only for hand-made layers).
///   Markers imply their directory too. A lower non-directory where a
///   parent directory is implied (a file, or a symlink such as `lib -> usr/lib`) is replaced by
///   the implied directory, as the overlay upper layer of containers/storage makes it; symlinks
///   are never followed.
/// - A hard link refers to its target as the merged tree has it when the link is applied (a
///   lower layer's file, or an earlier entry of the same layer); a link to a target that comes
///   later in the same layer is resolved at the end of the layer. Link counts follow every
///   removal: a whited-out name drops one link. The link's own header metadata is ignored (the
///   node keeps its target's), as GNU tar and umoci do; tar writers record the node's own
///   metadata there, so containers/storage, which applies it, gives the same result.
///
/// Metadata (ownership, modes, nanosecond times, PAX xattrs, devices) comes from the headers as
/// in [`super::from_tar`]; no file content is read. The layers must be plain regular files and
/// must outlive the tree.
///
/// Errors name the layer (its position and path) and the entry: compressed layers, paths
/// escaping the root, whiteouts of `.` or `..`, `.wh.` names used as directories, hard links to
/// targets in no layer or to directories.
pub fn from_layers(layers: &[PathBuf], opts: &SourceOptions) -> Result<Tree> {
    let mut tree = Tree::default();
    let root = tree.root();
    let rt = opts.clamp(tree.entry(root).mtime);
    let re = tree.entry_mut(root);
    (re.mtime, re.atime, re.ctime) = (rt, rt, rt);
    for (i, layer) in layers.iter().enumerate() {
        let name = format!("layer {} of {} ({})", i + 1, layers.len(), layer.display());
        check_plain(layer, &name)?;
        let mut items = Vec::new();
        members(layer, &name, opts, |m| {
            items.push(classify(m, &name)?);
            Ok(())
        })?;
        apply(&mut tree, items, &name)?;
    }
    tree.compact();
    Ok(tree)
}

/// Refuses a layer that is not a regular file or is compressed: its members are referred to by
/// offset, so it must be the decompressed tar itself.
fn check_plain(layer: &Path, name: &str) -> Result<()> {
    let mut f = std::fs::File::open(layer).map_err(|e| Error::io("open", layer, e))?;
    let meta = f.metadata().map_err(|e| Error::io("stat", layer, e))?;
    if !meta.is_file() {
        return Err(Error::InvalidOption(format!(
            "{name}: a layer must be a regular file (an uncompressed tar)"
        )));
    }
    let mut head = [0u8; 8];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", layer, e)),
        }
    }
    if Compression::detect(&head[..n], name)? != Compression::None {
        return Err(Error::InvalidOption(format!(
            "{name}: the layer is compressed; layers must be decompressed tars"
        )));
    }
    Ok(())
}

/// A layer member by its role in the changeset.
enum Item {
    /// An entry or hard link to apply at `path` (normalized).
    Member(Vec<u8>, Member),
    /// `.wh.NAME`: the normalized path of the directory holding it and NAME's full path.
    Whiteout {
        dir: Vec<u8>,
        victim: Vec<u8>,
        member: Member,
    },
    /// `.wh..wh..opq`: the normalized path of the directory it makes opaque.
    Opaque { dir: Vec<u8>, member: Member },
    /// AUFS metadata, ignored.
    Skip,
}

/// Sorts a member into an [`Item`], checking its path.
fn classify(m: Member, name: &str) -> Result<Item> {
    let bad = |detail: &str| bad_member(name, &m.path, detail);
    let comps = crate::tree::normalize(&m.path).map_err(|e| name_source(e, name))?;
    let Some((last, dirs)) = comps.split_last() else {
        return Ok(Item::Member(Vec::new(), m));
    };
    for d in dirs {
        if d.starts_with(WHITEOUT_META_PREFIX) {
            return Ok(Item::Skip);
        }
        if d.starts_with(WHITEOUT_PREFIX) {
            return Err(bad("a whiteout name ('.wh.' prefix) used as a directory"));
        }
    }
    let dir = dirs.join(&b'/');
    if *last == OPAQUE_MARKER {
        return Ok(Item::Opaque { dir, member: m });
    }
    if last.starts_with(WHITEOUT_META_PREFIX) {
        return Ok(Item::Skip);
    }
    if let Some(victim) = last.strip_prefix(WHITEOUT_PREFIX) {
        if victim.is_empty() || victim == b"." || victim == b".." {
            return Err(bad(&format!(
                "whiteout of '{}', which would delete a directory holding it",
                victim.escape_ascii()
            )));
        }
        let mut path = dir.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(victim);
        return Ok(Item::Whiteout {
            dir,
            victim: path,
            member: m,
        });
    }
    let path = comps.join(&b'/');
    Ok(Item::Member(path, m))
}

/// A hard link whose target was not there yet when it was applied.
struct PendingLink {
    /// The link's normalized path.
    path: Vec<u8>,
    /// The member as written (for errors).
    raw: Vec<u8>,
    /// The target's normalized path.
    target: Vec<u8>,
}

/// Applies one layer's items to `tree`: first its whiteouts (to the lower layers only), then
/// its entries in archive order, then the hard links that came before their targets.
fn apply(tree: &mut Tree, items: Vec<Item>, name: &str) -> Result<()> {
    for item in &items {
        match item {
            Item::Whiteout { victim, .. } => {
                tree.remove(victim).map_err(|e| name_source(e, name))?;
            }
            Item::Opaque { dir, .. } => {
                if let Some(id) = tree.get(dir).filter(|id| tree.entry(*id).is_dir()) {
                    tree.clear(id);
                }
            }
            Item::Member(..) | Item::Skip => {}
        }
    }
    // Links waiting for their targets, in archive order (None once a later member took the
    // path), and the index of the one waiting at each path.
    let mut pending: Vec<Option<PendingLink>> = Vec::new();
    let mut pending_at: HashMap<Vec<u8>, usize> = HashMap::new();
    for item in items {
        match item {
            Item::Skip => {}
            Item::Whiteout { dir, member, .. } | Item::Opaque { dir, member } => {
                let mtime = match &member.what {
                    What::Entry(e) => e.mtime,
                    What::Link(_) => tree.entry(tree.root()).mtime,
                };
                tree.make_dirs(&dir, mtime)
                    .map_err(|e| named(e, name, &member.path))?;
            }
            Item::Member(path, member) => {
                // A later member at the same path replaces a link still waiting for its target.
                if let Some(i) = pending_at.remove(&path) {
                    pending[i] = None;
                }
                let mtime = match &member.what {
                    What::Entry(e) => e.mtime,
                    What::Link(_) => tree.entry(tree.root()).mtime,
                };
                tree.make_dirs(parent(&path), mtime)
                    .map_err(|e| named(e, name, &member.path))?;
                match member.what {
                    What::Entry(e) => {
                        tree.insert(&path, e)
                            .map_err(|e| named(e, name, &member.path))?;
                    }
                    What::Link(target) => {
                        let t = crate::tree::normalize(&target)
                            .map_err(|_| {
                                bad_member(
                                    name,
                                    &member.path,
                                    &format!(
                                        "hard link target '{}' escapes the root",
                                        target.escape_ascii()
                                    ),
                                )
                            })?
                            .join(&b'/');
                        if tree.get(&t).is_some() {
                            tree.link(&path, &t)
                                .map_err(|e| named(e, name, &member.path))?;
                        } else {
                            pending_at.insert(path.clone(), pending.len());
                            pending.push(Some(PendingLink {
                                path,
                                raw: member.path,
                                target: t,
                            }));
                        }
                    }
                }
            }
        }
    }
    resolve_pending(tree, pending.into_iter().flatten().collect(), name)
}

/// Applies the hard links that came before their targets, once the rest of the layer is
/// applied: first those whose targets are there, in archive order, then, as each link is
/// made, those waiting for its path (a link to a link). Linear in the number of links.
fn resolve_pending(tree: &mut Tree, pending: Vec<PendingLink>, name: &str) -> Result<()> {
    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut waiting: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (i, p) in pending.iter().enumerate() {
        if tree.get(&p.target).is_some() {
            queue.push_back(i);
        } else {
            waiting.entry(&p.target).or_default().push(i);
        }
    }
    while let Some(i) = queue.pop_front() {
        let p = &pending[i];
        let mtime = tree.entry(tree.root()).mtime;
        tree.make_dirs(parent(&p.path), mtime)
            .map_err(|e| named(e, name, &p.raw))?;
        tree.link(&p.path, &p.target)
            .map_err(|e| named(e, name, &p.raw))?;
        if let Some(w) = waiting.remove(p.path.as_slice()) {
            queue.extend(w);
        }
    }
    if let Some(p) = waiting.values().flatten().min().map(|&i| &pending[i]) {
        return Err(bad_member(
            name,
            &p.raw,
            &format!(
                "hard link to '{}', which is neither in this layer nor in a lower one",
                p.target.escape_ascii()
            ),
        ));
    }
    Ok(())
}

/// The parent directory of a normalized path (`""` for the root's children).
fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|c| *c == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// Names the layer and the member as written in an error from the tree.
fn named(e: Error, name: &str, member: &[u8]) -> Error {
    match e {
        Error::BadPath { detail, .. } => bad_member(name, member, &detail),
        Error::MissingLinkTarget { target, .. } => bad_member(
            name,
            member,
            &format!("hard link to '{target}', which is not in the tree"),
        ),
        e => e,
    }
}
