//! Flattening image layers ([`stamp_fs::source::from_layers`]): the OCI changeset rules
//! (whiteouts, opaque directories, replacement, implied parents, hard links across layers) on
//! layers written with the `tar` crate, explicit cases first, then random layer sequences
//! against a reference model of the rules, then one flattened tree written as ext4 and checked
//! by e2fsck.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use stamp_disk::Format;
use stamp_fs::ext4::{Ext4Options, ext4};
use stamp_fs::source::{SourceOptions, from_layers};
use stamp_fs::{Content, Error, Kind, Tree};

const MTIME: u64 = 1_700_000_000;

/// A layer tar being written.
struct Layer {
    b: tar::Builder<std::fs::File>,
    path: PathBuf,
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writes `name` into the header's name field as is (the crate's setters refuse `..`).
fn raw_name(h: &mut tar::Header, name: &[u8]) {
    let n = &mut h.as_old_mut().name;
    n.fill(0);
    n[..name.len()].copy_from_slice(name);
}

impl Layer {
    fn new(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        Layer {
            b: tar::Builder::new(std::fs::File::create(&path).unwrap()),
            path,
        }
    }

    fn raw(&mut self, name: &str, mut h: tar::Header, data: &[u8]) -> &mut Self {
        raw_name(&mut h, name.as_bytes());
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn file_owned(&mut self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut h = header(tar::EntryType::Regular, data.len() as u64, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        self.raw(name, h, data)
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.file_owned(name, data, 0o644, 0, 0)
    }

    fn dir_mode(&mut self, name: &str, mode: u32) -> &mut Self {
        let h = header(tar::EntryType::Directory, 0, mode);
        self.raw(&format!("{}/", name.trim_end_matches('/')), h, &[])
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.dir_mode(name, 0o755)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = header(tar::EntryType::Symlink, 0, 0o777);
        h.set_link_name(target).unwrap();
        self.raw(name, h, &[])
    }

    fn link(&mut self, name: &str, target: &str) -> &mut Self {
        self.link_mode(name, target, 0o644)
    }

    /// A hard link whose header carries `mode` (tar writers put the inode's own metadata there).
    fn link_mode(&mut self, name: &str, target: &str, mode: u32) -> &mut Self {
        let mut h = header(tar::EntryType::Link, 0, mode);
        raw_link(&mut h, target.as_bytes());
        self.raw(name, h, &[])
    }

    /// `.wh.NAME` next to `path`.
    fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), b"")
    }

    /// `DIR/.wh..wh..opq` (`""` for the root).
    fn opaque(&mut self, dir: &str) -> &mut Self {
        if dir.is_empty() {
            self.file(".wh..wh..opq", b"")
        } else {
            self.file(&format!("{dir}/.wh..wh..opq"), b"")
        }
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.b
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self
    }

    fn finish(self) -> PathBuf {
        self.b.into_inner().unwrap();
        self.path
    }
}

fn raw_link(h: &mut tar::Header, target: &[u8]) {
    let n = &mut h.as_old_mut().linkname;
    n.fill(0);
    n[..target.len()].copy_from_slice(target);
}

fn flatten(layers: &[PathBuf]) -> Tree {
    from_layers(layers, &SourceOptions::default()).unwrap()
}

fn flatten_err(layers: &[PathBuf]) -> String {
    match from_layers(layers, &SourceOptions::default()) {
        Ok(_) => panic!("flattening succeeded, expected an error"),
        Err(e) => e.to_string(),
    }
}

/// The content of the file at `path`.
fn content(t: &Tree, path: &str) -> Vec<u8> {
    let id = t
        .get(path.as_bytes())
        .unwrap_or_else(|| panic!("{path} missing"));
    match &t.entry(id).kind {
        Kind::File(c) => {
            let mut buf = vec![0u8; c.len() as usize];
            c.read_at(&mut buf, 0).unwrap();
            buf
        }
        k => panic!("{path} is not a file: {k:?}"),
    }
}

/// The tar file a file's content is a region of.
fn content_source(t: &Tree, path: &str) -> PathBuf {
    let id = t.get(path.as_bytes()).unwrap();
    match &t.entry(id).kind {
        Kind::File(Content::File { path, .. }) => path.as_ref().clone(),
        k => panic!("{k:?}"),
    }
}

/// Every path but the root, in walk order.
fn paths(t: &Tree) -> Vec<String> {
    t.walk()
        .into_iter()
        .skip(1)
        .map(|(p, _)| String::from_utf8(p).unwrap())
        .collect()
}

fn is_dir(t: &Tree, path: &str) -> bool {
    t.get(path.as_bytes())
        .is_some_and(|id| t.entry(id).is_dir())
}

#[test]
fn whiteout_of_a_file() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.dir("etc").file("etc/a", b"a").file("etc/b", b"b");
    let mut l2 = Layer::new(d.path(), "2.tar");
    l2.dir("etc").whiteout("etc/a").whiteout("etc/never-was");
    let t = flatten(&[l1.finish(), l2.finish()]);
    assert_eq!(paths(&t), ["etc", "etc/b"]);
    assert_eq!(content(&t, "etc/b"), b"b");
    // No orphans: root, etc, etc/b.
    assert_eq!(t.len(), 3);
}

#[test]
fn whiteout_of_a_directory_removes_its_subtree() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.dir("usr")
        .dir("usr/share")
        .dir("usr/share/doc")
        .file("usr/share/doc/x", b"x")
        .dir("usr/share/doc/deep")
        .file("usr/share/doc/deep/y", b"y")
        .file("usr/share/keep", b"k")
        // A hard link from outside the subtree keeps its node alive.
        .link("usr/outside", "usr/share/doc/x");
    let mut l2 = Layer::new(d.path(), "2.tar");
    l2.whiteout("usr/share/doc");
    let t = flatten(&[l1.finish(), l2.finish()]);
    assert_eq!(
        paths(&t),
        ["usr", "usr/outside", "usr/share", "usr/share/keep"]
    );
    let out = t.get(b"usr/outside").unwrap();
    assert_eq!(t.names(out), 1);
    assert_eq!(content(&t, "usr/outside"), b"x");
}

#[test]
fn opaque_directory_hides_lower_children_but_keeps_its_own_layers() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.dir("opt")
        .file("opt/lower1", b"1")
        .dir("opt/sub")
        .file("opt/sub/lower2", b"2")
        .file("opt/same", b"lower")
        .file("outside", b"o");
    let mut l2 = Layer::new(d.path(), "2.tar");
    // Entries of the same layer before and after the marker both stay.
    l2.dir_mode("opt", 0o700)
        .file("opt/before", b"b")
        .opaque("opt")
        .file("opt/after", b"a")
        .file("opt/same", b"upper");
    let t = flatten(&[l1.finish(), l2.finish()]);
    assert_eq!(
        paths(&t),
        ["opt", "opt/after", "opt/before", "opt/same", "outside"]
    );
    assert_eq!(content(&t, "opt/same"), b"upper");
    let opt = t.get(b"opt").unwrap();
    assert_eq!(t.entry(opt).mode, 0o700);
}

#[test]
fn opaque_root_and_marker_without_its_directory_entry() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.file("a", b"a").dir("d").file("d/x", b"x");
    let mut l2 = Layer::new(d.path(), "2.tar");
    // No `new/` entry: the marker implies its directory.
    l2.opaque("").file("b", b"b").opaque("new/dir");
    let t = flatten(&[l1.finish(), l2.finish()]);
    assert_eq!(paths(&t), ["b", "new", "new/dir"]);
    let nd = t.get(b"new/dir").unwrap();
    assert_eq!(t.entry(nd).mode, 0o755);
}

#[test]
fn a_file_replaces_a_directory_and_a_directory_replaces_a_file() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.dir("was-dir")
        .file("was-dir/child", b"c")
        .dir("was-dir/sub")
        .file("was-dir/sub/grandchild", b"g")
        .file("was-file", b"f")
        .link("elsewhere", "was-dir/sub/grandchild");
    let mut l2 = Layer::new(d.path(), "2.tar");
    l2.file("was-dir", b"now a file")
        .dir("was-file")
        .file("was-file/inside", b"i");
    let t = flatten(&[l1.finish(), l2.finish()]);
    assert_eq!(
        paths(&t),
        ["elsewhere", "was-dir", "was-file", "was-file/inside"]
    );
    assert_eq!(content(&t, "was-dir"), b"now a file");
    // The grandchild's node lost one of its two names.
    assert_eq!(t.names(t.get(b"elsewhere").unwrap()), 1);
}

#[test]
fn a_directory_over_a_directory_takes_the_metadata_and_keeps_the_children() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.dir_mode("srv", 0o755).file("srv/old", b"o");
    let mut l2 = Layer::new(d.path(), "2.tar");
    l2.raw(
        "srv/",
        {
            let mut h = header(tar::EntryType::Directory, 0, 0o750);
            h.set_uid(33);
            h.set_gid(34);
            h
        },
        &[],
    )
    .file("srv/new", b"n");
    let t = flatten(&[l1.finish(), l2.finish()]);
    assert_eq!(paths(&t), ["srv", "srv/new", "srv/old"]);
    let e = t.entry(t.get(b"srv").unwrap());
    assert_eq!((e.mode, e.uid, e.gid), (0o750, 33, 34));
}

#[test]
fn implied_parents_are_created_and_existing_ones_keep_their_metadata() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.dir_mode("var", 0o711);
    let mut l2 = Layer::new(d.path(), "2.tar");
    l2.file("var/lib/x/y", b"y");
    let t = flatten(&[l1.finish(), l2.finish()]);
    assert_eq!(t.entry(t.get(b"var").unwrap()).mode, 0o711);
    assert_eq!(t.entry(t.get(b"var/lib").unwrap()).mode, 0o755);
    assert!(is_dir(&t, "var/lib/x"));
}

#[test]
fn an_implied_directory_replaces_a_lower_symlink_or_file() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.dir("usr/lib")
        .file("usr/lib/libc.so", b"libc")
        .symlink("lib", "usr/lib")
        .file("f", b"f")
        .link("f2", "f");
    let mut l2 = Layer::new(d.path(), "2.tar");
    // As in an overlay upper layer: `lib` is a directory there, hiding the lower symlink, which
    // is not followed; a marker implies its directory the same way.
    l2.file("lib/modules/x", b"x").whiteout("f/ghost");
    let t = flatten(&[l1.finish(), l2.finish()]);
    assert_eq!(
        paths(&t),
        [
            "f",
            "f2",
            "lib",
            "lib/modules",
            "lib/modules/x",
            "usr",
            "usr/lib",
            "usr/lib/libc.so"
        ]
    );
    assert!(is_dir(&t, "lib") && is_dir(&t, "f"));
    assert_eq!(t.entry(t.get(b"lib").unwrap()).mode, 0o755);
    // The replaced file lost one of its two names.
    assert_eq!(t.names(t.get(b"f2").unwrap()), 1);
}

#[test]
fn hard_links_across_layers_share_the_lower_node() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.dir("bin").file_owned("bin/busybox", b"BB", 0o755, 0, 0);
    let l1 = l1.finish();
    let mut l2 = Layer::new(d.path(), "2.tar");
    l2.link("bin/sh", "bin/busybox")
        .link("./bin/ls", "./bin/busybox");
    let t = flatten(&[l1.clone(), l2.finish()]);
    let bb = t.get(b"bin/busybox").unwrap();
    assert_eq!(t.get(b"bin/sh"), Some(bb));
    assert_eq!(t.get(b"bin/ls"), Some(bb));
    assert_eq!(t.names(bb), 3);
    assert_eq!(content(&t, "bin/sh"), b"BB");
    // The content stays where it is: a region of the first layer.
    assert_eq!(content_source(&t, "bin/sh"), l1);
}

#[test]
fn a_hard_link_survives_the_whiteout_of_its_original() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.file("orig", b"data").link("copy", "orig");
    let mut l2 = Layer::new(d.path(), "2.tar");
    l2.whiteout("orig");
    let t = flatten(&[l1.finish(), l2.finish()]);
    assert_eq!(paths(&t), ["copy"]);
    assert_eq!(t.names(t.get(b"copy").unwrap()), 1);
    assert_eq!(content(&t, "copy"), b"data");
}

#[test]
fn hard_links_before_their_targets_and_chains_within_a_layer() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.file("target", b"lower");
    let mut l2 = Layer::new(d.path(), "2.tar");
    // `a` links to `b`, which links to `c`, which comes last.
    l2.link("a", "b").link("b", "c").file("c", b"C");
    // Resolved when applied: the lower `target`, not the one this layer writes later.
    l2.link("early", "target").file("target", b"upper");
    // A later member at a pending link's path wins.
    l2.link("replaced", "late")
        .file("replaced", b"R")
        .file("late", b"L");
    let t = flatten(&[l1.finish(), l2.finish()]);
    let c = t.get(b"c").unwrap();
    assert_eq!(t.get(b"a"), Some(c));
    assert_eq!(t.get(b"b"), Some(c));
    assert_eq!(t.names(c), 3);
    assert_eq!(content(&t, "early"), b"lower");
    assert_eq!(content(&t, "target"), b"upper");
    assert_eq!(content(&t, "replaced"), b"R");
    assert_eq!(t.names(t.get(b"late").unwrap()), 1);
}

#[test]
fn three_layers() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.dir("etc")
        .file("etc/os-release", b"v1")
        .file("etc/motd", b"hello")
        .dir("var")
        .dir("var/cache")
        .file("var/cache/big", b"cache")
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC");
    let mut l2 = Layer::new(d.path(), "2.tar");
    l2.file("etc/os-release", b"v2")
        .whiteout("var/cache")
        .file("etc/new", b"n")
        .link("etc/motd2", "etc/motd");
    let mut l3 = Layer::new(d.path(), "3.tar");
    l3.whiteout("etc/motd")
        .opaque("var")
        .file("var/log", b"log")
        .symlink("etc/localtime", "/usr/share/zoneinfo/Europe/Paris");
    let layers = [l1.finish(), l2.finish(), l3.finish()];
    let t = flatten(&layers);
    assert_eq!(
        paths(&t),
        [
            "etc",
            "etc/localtime",
            "etc/motd2",
            "etc/new",
            "etc/os-release",
            "var",
            "var/log"
        ]
    );
    assert_eq!(content(&t, "etc/os-release"), b"v2");
    assert_eq!(content_source(&t, "etc/os-release"), layers[1]);
    assert_eq!(content(&t, "etc/motd2"), b"hello");
    assert_eq!(content_source(&t, "etc/motd2"), layers[0]);
    assert_eq!(t.names(t.get(b"etc/motd2").unwrap()), 1);
    let lt = t.entry(t.get(b"etc/localtime").unwrap());
    assert!(matches!(&lt.kind, Kind::Symlink(s) if s == b"/usr/share/zoneinfo/Europe/Paris"));
    // One layer alone is the tar itself.
    assert_eq!(paths(&flatten(&layers[..1])).len(), 7);
}

#[test]
fn xattrs_ownership_and_times_from_pax_headers_are_carried_through() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.pax(&[
        ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02caps"),
        ("SCHILY.xattr.user.note", b"lower"),
    ])
    .file_owned("usr/bin/ping", b"ping", 0o4755, 0, 0);
    let mut l2 = Layer::new(d.path(), "2.tar");
    l2.pax(&[
        ("uid", b"3000000"),
        ("gid", b"3000001"),
        ("mtime", b"1700000123.456789"),
        ("SCHILY.xattr.user.note", b"upper"),
    ])
    .file_owned("home/user/file", b"f", 0o600, 0, 0)
    .link("usr/bin/ping6", "usr/bin/ping");
    let t = flatten(&[l1.finish(), l2.finish()]);
    let ping = t.entry(t.get(b"usr/bin/ping6").unwrap());
    assert_eq!(ping.mode, 0o4755);
    assert_eq!(
        ping.xattrs.get("security.capability").map(Vec::as_slice),
        Some(&b"\x01\x00\x00\x02caps"[..])
    );
    let f = t.entry(t.get(b"home/user/file").unwrap());
    assert_eq!((f.uid, f.gid, f.mode), (3_000_000, 3_000_001, 0o600));
    assert_eq!((f.mtime.sec, f.mtime.nsec), (1_700_000_123, 456_789_000));
    assert_eq!(
        f.xattrs.get("user.note").map(Vec::as_slice),
        Some(&b"upper"[..])
    );
}

#[test]
fn whiteout_markers_and_aufs_metadata_never_appear() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    // In the lowest layer, markers have nothing to delete but still do not appear.
    l1.file("a", b"a")
        .whiteout("ghost")
        .opaque("x")
        .dir(".wh..wh.plnk")
        .file(".wh..wh.plnk/123.456", b"")
        .file(".wh..wh.aufs", b"");
    let t = flatten(&[l1.finish()]);
    assert_eq!(paths(&t), ["a", "x"]);
}

#[test]
fn source_date_epoch_clamps_layer_times() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.file("f", b"f");
    let opts = SourceOptions {
        source_date_epoch: Some(1_000),
    };
    let t = from_layers(&[l1.finish()], &opts).unwrap();
    let e = t.entry(t.get(b"f").unwrap());
    assert_eq!(e.mtime.sec, 1_000);
}

#[test]
fn bad_layers_are_errors_naming_the_layer_and_the_entry() {
    let d = tempfile::tempdir().unwrap();
    let ok = {
        let mut l = Layer::new(d.path(), "ok.tar");
        l.file("f", b"f").dir("dir");
        l.finish()
    };
    let one = |name: &str, f: &dyn Fn(&mut Layer)| {
        let mut l = Layer::new(d.path(), name);
        f(&mut l);
        let e = flatten_err(&[ok.clone(), l.finish()]);
        assert!(e.contains(name), "{e} does not name the layer");
        assert!(e.contains("layer 2 of 2"), "{e}");
        e
    };
    let e = one("escape.tar", &|l| {
        l.file("a/../../etc/passwd", b"x");
    });
    assert!(
        e.contains("a/../../etc/passwd") && e.contains("escapes"),
        "{e}"
    );
    let e = one("dotdot.tar", &|l| {
        l.file("dir/.wh...", b"");
    });
    assert!(
        e.contains("dir/.wh...") && e.contains("whiteout of '..'"),
        "{e}"
    );
    let e = one("dot.tar", &|l| {
        l.file(".wh..", b"");
    });
    assert!(e.contains("whiteout of '.'"), "{e}");
    let e = one("empty.tar", &|l| {
        l.file("dir/.wh.", b"");
    });
    assert!(e.contains("dir/.wh."), "{e}");
    let e = one("missing.tar", &|l| {
        l.link("dangling", "nowhere");
    });
    assert!(e.contains("dangling") && e.contains("nowhere"), "{e}");
    // A target whited out in the same layer is gone for the layer's links.
    let e = one("gone.tar", &|l| {
        l.whiteout("f").link("g", "f");
    });
    assert!(
        e.contains("'g'") && e.contains("neither in this layer"),
        "{e}"
    );
    let e = one("linkdir.tar", &|l| {
        l.link("l", "dir");
    });
    assert!(e.contains("'l'") && e.contains("directory"), "{e}");
    let e = one("linkescape.tar", &|l| {
        l.link("l", "../../f");
    });
    assert!(e.contains("escapes"), "{e}");
    let e = one("whdir.tar", &|l| {
        l.file(".wh.x/y", b"");
    });
    assert!(e.contains(".wh.x/y"), "{e}");

    // A compressed layer is refused: its members could not be referred to by offset.
    let gz = d.path().join("layer.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::copy(&mut std::fs::File::open(&ok).unwrap(), &mut enc).unwrap();
    enc.finish().unwrap();
    let e = flatten_err(&[gz]);
    assert!(
        e.contains("layer.tar.gz") && e.contains("compressed"),
        "{e}"
    );
    let e = flatten_err(&[d.path().join("absent.tar")]);
    assert!(e.contains("absent.tar"), "{e}");
    assert!(matches!(
        from_layers(&[d.path().to_path_buf()], &SourceOptions::default()),
        Err(Error::InvalidOption(_))
    ));
}

#[test]
fn no_layers_is_an_empty_tree() {
    let t = flatten(&[]);
    assert!(t.is_empty());
}

// The flattened tree as ext4, checked by e2fsprogs.

#[test]
fn a_flattened_multi_layer_tree_writes_a_clean_ext4() {
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.dir("bin")
        .file_owned("bin/tool", &vec![7u8; 70_000], 0o755, 0, 0)
        .link("bin/tool2", "bin/tool")
        .dir("etc")
        .file("etc/config", b"v1")
        .dir("var/lib/pkg")
        .file("var/lib/pkg/a", b"a")
        .file("var/lib/pkg/b", b"b")
        .symlink("etc/alias", "config");
    let mut l2 = Layer::new(d.path(), "2.tar");
    l2.whiteout("bin/tool")
        .file("etc/config", b"v2")
        .opaque("var/lib/pkg")
        .file("var/lib/pkg/c", b"c");
    let mut l3 = Layer::new(d.path(), "3.tar");
    l3.pax(&[("SCHILY.xattr.user.layer", b"3")])
        .file_owned("home/u/notes", b"notes", 0o600, 1000, 1000)
        .link("bin/tool3", "bin/tool2")
        .whiteout("etc/alias");
    let t = flatten(&[l1.finish(), l2.finish(), l3.finish()]);

    let img = d.path().join("flat.img");
    let image = ext4(&t, &Ext4Options::default()).unwrap();
    let w = stamp_disk::create(&img, Format::Raw, image.size, &Default::default()).unwrap();
    image.write_to(vec![w]).unwrap();
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let debugfs = |req: &str| {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(req)
            .arg(&img)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ls = debugfs("ls -p /var/lib/pkg");
    assert!(
        ls.contains("/c/") && !ls.contains("/a/") && !ls.contains("/b/"),
        "{ls}"
    );
    let stat = debugfs("stat /bin/tool3");
    assert!(stat.contains("Links: 2"), "{stat}");
    let root = debugfs("ls -p /bin");
    assert!(!root.contains("/tool/"), "{root}");
    let dump = d.path().join("tool3");
    debugfs(&format!("dump /bin/tool3 {}", dump.display()));
    assert_eq!(std::fs::read(&dump).unwrap(), vec![7u8; 70_000]);
    let notes = debugfs("stat /home/u/notes");
    assert!(notes.contains("User:  1000"), "{notes}");
}

// Random layer sequences against a reference model.

/// One member of a generated layer.
#[derive(Debug, Clone)]
enum Op {
    File { path: String, mode: u32, uid: u32 },
    Dir { path: String, mode: u32 },
    Symlink { path: String },
    Link { path: String, target: String },
    Whiteout { path: String },
    Opaque { dir: String },
}

fn gen_path(max_depth: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..=max_depth)
        .prop_map(|v| v.join("/"))
}

fn gen_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (gen_path(3), prop::sample::select(vec![0o644u32, 0o600, 0o755]), 0u32..3)
            .prop_map(|(path, mode, uid)| Op::File { path, mode, uid }),
        3 => (gen_path(3), prop::sample::select(vec![0o755u32, 0o700]))
            .prop_map(|(path, mode)| Op::Dir { path, mode }),
        1 => gen_path(3).prop_map(|path| Op::Symlink { path }),
        3 => (gen_path(3), gen_path(3)).prop_map(|(path, target)| Op::Link { path, target }),
        2 => gen_path(3).prop_map(|path| Op::Whiteout { path }),
        1 => prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 0..=2)
            .prop_map(|v| Op::Opaque { dir: v.join("/") }),
    ]
}

/// What the model knows of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MKind {
    Dir,
    /// A file whose content is this text.
    File(String),
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MNode {
    kind: MKind,
    mode: u32,
    uid: u32,
}

/// The reference model: names to node numbers, and the nodes. The root is implicit.
#[derive(Default, Clone)]
struct Model {
    names: BTreeMap<String, usize>,
    nodes: Vec<MNode>,
    /// Refuses what other unpackers do differently or not at all (for the umoci comparison):
    /// an implied directory over a non-directory (umoci follows symlinks there), and hard links
    /// to targets not there yet, to themselves, or to something below themselves.
    strict: bool,
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(d, _)| d)
}

impl Model {
    fn is_dir(&self, p: &str) -> bool {
        p.is_empty()
            || self
                .names
                .get(p)
                .is_some_and(|&n| self.nodes[n].kind == MKind::Dir)
    }

    /// Removes `p` and everything below it.
    fn remove(&mut self, p: &str) {
        let below = format!("{p}/");
        self.names.retain(|k, _| k != p && !k.starts_with(&below));
    }

    /// Removes everything below directory `p` (the root for `""`).
    fn clear(&mut self, p: &str) {
        if p.is_empty() {
            self.names.clear();
        } else {
            let below = format!("{p}/");
            self.names.retain(|k, _| !k.starts_with(&below));
        }
    }

    fn new_node(&mut self, n: MNode) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    /// Creates the missing directories of `p` (itself included when `inclusive`).
    fn ensure(&mut self, p: &str, inclusive: bool) -> Result<(), ()> {
        let comps: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
        let n = if inclusive {
            comps.len()
        } else {
            comps.len().saturating_sub(1)
        };
        for i in 1..=n {
            let pre = comps[..i].join("/");
            match self.names.get(&pre).copied() {
                Some(id) if self.nodes[id].kind == MKind::Dir => {}
                old => {
                    // Like an overlay upper layer: an implied directory hides a non-directory.
                    if old.is_some() {
                        if self.strict {
                            return Err(());
                        }
                        self.remove(&pre);
                    }
                    let id = self.new_node(MNode {
                        kind: MKind::Dir,
                        mode: 0o755,
                        uid: 0,
                    });
                    self.names.insert(pre, id);
                }
            }
        }
        Ok(())
    }

    fn put(&mut self, p: &str, n: MNode) -> Result<(), ()> {
        self.ensure(p, false)?;
        if let Some(&old) = self.names.get(p) {
            if self.nodes[old].kind == MKind::Dir && n.kind == MKind::Dir {
                self.nodes[old].mode = n.mode;
                self.nodes[old].uid = n.uid;
                return Ok(());
            }
        }
        self.remove(p);
        let id = self.new_node(n);
        self.names.insert(p.to_string(), id);
        Ok(())
    }

    fn link(&mut self, p: &str, t: &str) -> Result<(), ()> {
        self.ensure(p, false)?;
        let id = *self.names.get(t).ok_or(())?;
        if self.nodes[id].kind == MKind::Dir {
            return Err(());
        }
        self.remove(p);
        self.names.insert(p.to_string(), id);
        Ok(())
    }

    fn apply(&mut self, layer: usize, ops: &[Op]) -> Result<(), Refused> {
        for op in ops {
            match op {
                Op::Whiteout { path } => self.remove(path),
                Op::Opaque { dir } if self.is_dir(dir) => self.clear(dir),
                _ => {}
            }
        }
        if self.strict {
            // umoci keeps a whited-out directory this layer writes into (the spec, podman's
            // overlay and from_layers remove the lower one and imply a new one).
            for op in ops {
                let Op::Whiteout { path: w } = op else {
                    continue;
                };
                let below = format!("{w}/");
                let hit = ops.iter().any(|o| match o {
                    Op::File { path, .. }
                    | Op::Dir { path, .. }
                    | Op::Symlink { path }
                    | Op::Link { path, .. } => path == w || path.starts_with(&below),
                    Op::Whiteout { path } => path.starts_with(&below),
                    Op::Opaque { dir } => dir == w || dir.starts_with(&below),
                });
                if hit {
                    return Err(Refused::Other);
                }
            }
            // Likewise for a lower directory below an opaque one that this layer writes into
            // without its own entry.
            for op in ops {
                let Op::Opaque { dir: o } = op else {
                    continue;
                };
                let below = if o.is_empty() {
                    String::new()
                } else {
                    format!("{o}/")
                };
                let deep = |p: &str| p.strip_prefix(&below).is_some_and(|r| r.contains('/'));
                let hit = ops.iter().any(|x| match x {
                    Op::File { path, .. }
                    | Op::Dir { path, .. }
                    | Op::Symlink { path }
                    | Op::Link { path, .. }
                    | Op::Whiteout { path } => deep(path),
                    Op::Opaque { dir } => deep(&format!("{dir}/x")),
                });
                if hit {
                    return Err(Refused::Other);
                }
            }
        }
        let mut pending: Vec<(String, String)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                // umoci does not create a marker's directory (podman and from_layers do).
                Op::Whiteout { path } | Op::Opaque { dir: path }
                    if self.strict && !self.is_dir(marker_dir(op)) =>
                {
                    let _ = path;
                    return Err(Refused::Other);
                }
                Op::Whiteout { path } => self
                    .ensure(parent(path), true)
                    .map_err(|()| Refused::Other)?,
                Op::Opaque { dir } => self.ensure(dir, true).map_err(|()| Refused::Other)?,
                Op::File { path, mode, uid } => {
                    pending.retain(|(p, _)| p != path);
                    self.put(
                        path,
                        MNode {
                            kind: MKind::File(tag(layer, i)),
                            mode: *mode,
                            uid: *uid,
                        },
                    )
                    .map_err(|()| Refused::Other)?;
                }
                Op::Dir { path, mode } => {
                    pending.retain(|(p, _)| p != path);
                    self.put(
                        path,
                        MNode {
                            kind: MKind::Dir,
                            mode: *mode,
                            uid: 0,
                        },
                    )
                    .map_err(|()| Refused::Other)?;
                }
                Op::Symlink { path } => {
                    pending.retain(|(p, _)| p != path);
                    self.put(
                        path,
                        MNode {
                            kind: MKind::Symlink(tag(layer, i)),
                            mode: 0o777,
                            uid: 0,
                        },
                    )
                    .map_err(|()| Refused::Other)?;
                }
                Op::Link { path, target } => {
                    pending.retain(|(p, _)| p != path);
                    self.ensure(path, false).map_err(|()| Refused::Other)?;
                    if self.strict
                        && (!self.names.contains_key(target)
                            || path == target
                            || target.starts_with(&format!("{path}/")))
                    {
                        return Err(Refused::Other);
                    }
                    if self.names.contains_key(target) {
                        self.link(path, target).map_err(|()| Refused::Other)?;
                    } else {
                        pending.push((path.clone(), target.clone()));
                    }
                }
            }
        }
        // Targets there first, in order, then links waiting for a link's path.
        let mut queue: std::collections::VecDeque<usize> = Default::default();
        let mut waiting: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, (_, t)) in pending.iter().enumerate() {
            if self.names.contains_key(t) {
                queue.push_back(i);
            } else {
                waiting.entry(t.clone()).or_default().push(i);
            }
        }
        while let Some(i) = queue.pop_front() {
            let (p, t) = &pending[i];
            self.link(p, t).map_err(|()| Refused::Other)?;
            if let Some(w) = waiting.remove(p) {
                queue.extend(w);
            }
        }
        if !waiting.is_empty() {
            return Err(Refused::Unresolved(
                waiting
                    .values()
                    .flatten()
                    .map(|&i| pending[i].clone())
                    .collect(),
            ));
        }
        Ok(())
    }
}

/// Why the model refuses a layer.
#[derive(Debug)]
enum Refused {
    /// These hard links (path, target) have targets in no layer.
    Unresolved(Vec<(String, String)>),
    /// Anything else (a parent that is not a directory, a link to a directory).
    Other,
}

/// Drops the ops of `layers` the model refuses, so that most generated sequences are valid:
/// an op is kept if the layer up to it is accepted (hard links still waiting for a target
/// count as accepted); then unresolved links and, failing that, the last ops are dropped until
/// the whole layer is accepted.
fn sanitize(layers: &[Vec<Op>], strict: bool) -> Vec<Vec<Op>> {
    let mut model = Model {
        strict,
        ..Model::default()
    };
    let mut out = Vec::new();
    for (i, ops) in layers.iter().enumerate() {
        let mut kept: Vec<Op> = Vec::new();
        for op in ops {
            let op = match op {
                // Random targets rarely exist: point most links at a file the layers have so
                // far, keeping some (those with 3-byte targets) as they are, possibly forward.
                Op::Link { path, target } if target.len() != 3 => {
                    let mut m = model.clone();
                    let _ = m.apply(i, &kept);
                    let files: Vec<&String> = m
                        .names
                        .iter()
                        .filter(|(_, id)| m.nodes[**id].kind != MKind::Dir)
                        .map(|(p, _)| p)
                        .collect();
                    match files.get((path.len() * 7 + kept.len()) % files.len().max(1)) {
                        Some(t) => Op::Link {
                            path: path.clone(),
                            target: (*t).clone(),
                        },
                        None => op.clone(),
                    }
                }
                op => op.clone(),
            };
            kept.push(op);
            let mut m = model.clone();
            if let Err(Refused::Other) = m.apply(i, &kept) {
                kept.pop();
            }
        }
        loop {
            let mut m = model.clone();
            match m.apply(i, &kept) {
                Ok(()) => {
                    model = m;
                    break;
                }
                Err(Refused::Unresolved(links)) => kept.retain(|op| {
                    !matches!(op, Op::Link { path, target }
                        if links.iter().any(|(p, t)| p == path && t == target))
                }),
                Err(Refused::Other) => {
                    kept.pop();
                }
            }
        }
        out.push(kept);
    }
    out
}

/// The directory a whiteout or opaque marker is in.
fn marker_dir(op: &Op) -> &str {
    match op {
        Op::Whiteout { path } => parent(path),
        Op::Opaque { dir } => dir,
        _ => "",
    }
}

fn tag(layer: usize, i: usize) -> String {
    format!("L{layer}#{i}")
}

fn write_layer(dir: &Path, layer: usize, ops: &[Op]) -> PathBuf {
    let mut l = Layer::new(dir, &format!("{layer}.tar"));
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::File { path, mode, uid } => {
                l.file_owned(path, tag(layer, i).as_bytes(), *mode, u64::from(*uid), 0);
            }
            Op::Dir { path, mode } => {
                l.dir_mode(path, *mode);
            }
            Op::Symlink { path } => {
                l.symlink(path, &tag(layer, i));
            }
            Op::Link { path, target } => {
                l.link(path, target);
            }
            Op::Whiteout { path } => {
                l.whiteout(path);
            }
            Op::Opaque { dir } => {
                l.opaque(dir);
            }
        }
    }
    l.finish()
}

/// A tree's listing as the model sees it: path to (node, names), nodes named by their first
/// path so that hard-link groups compare.
fn tree_view(t: &Tree) -> BTreeMap<String, (MNode, String, u32)> {
    let mut first: BTreeMap<stamp_fs::NodeId, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (p, id) in t.walk().into_iter().skip(1) {
        let p = String::from_utf8(p).unwrap();
        let e = t.entry(id);
        let kind = match &e.kind {
            Kind::Dir => MKind::Dir,
            Kind::File(c) => {
                let mut buf = vec![0u8; c.len() as usize];
                c.read_at(&mut buf, 0).unwrap();
                MKind::File(String::from_utf8(buf).unwrap())
            }
            Kind::Symlink(s) => MKind::Symlink(String::from_utf8(s.clone()).unwrap()),
            k => panic!("unexpected {k:?}"),
        };
        let f = first.entry(id).or_insert_with(|| p.clone()).clone();
        let names = if e.is_dir() { 1 } else { t.names(id) };
        let n = MNode {
            kind,
            mode: e.mode,
            uid: e.uid,
        };
        out.insert(p, (n, f, names));
    }
    out
}

fn model_view(m: &Model) -> BTreeMap<String, (MNode, String, u32)> {
    let mut first: BTreeMap<usize, String> = BTreeMap::new();
    let mut count: BTreeMap<usize, u32> = BTreeMap::new();
    for (p, &id) in &m.names {
        // BTreeMap order is byte order; the tree walks '/' first, so pick the first name by
        // the tree's order: compare with '/' as the lowest byte.
        let key = |s: &str| s.replace('/', "\0");
        first
            .entry(id)
            .and_modify(|f| {
                if key(p) < key(f) {
                    *f = p.clone();
                }
            })
            .or_insert_with(|| p.clone());
        *count.entry(id).or_default() += 1;
    }
    m.names
        .iter()
        .map(|(p, &id)| {
            (
                p.clone(),
                (m.nodes[id].clone(), first[&id].clone(), count[&id]),
            )
        })
        .collect()
}

/// Flattens `layers` with both the model and [`from_layers`] and compares: the same listing
/// (types, modes, owners, contents, symlink targets, hard-link groups and link counts) when the
/// model accepts, an error when it refuses. Returns true if and only if the model accepted.
fn check_against_model(layers: &[Vec<Op>]) -> Result<bool, TestCaseError> {
    let d = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = layers
        .iter()
        .enumerate()
        .map(|(i, ops)| write_layer(d.path(), i, ops))
        .collect();
    let mut model = Model::default();
    let mut expected = Ok(());
    for (i, ops) in layers.iter().enumerate() {
        expected = model.apply(i, ops);
        if expected.is_err() {
            break;
        }
    }
    let got = from_layers(&files, &SourceOptions::default());
    match (expected, got) {
        (Ok(()), Ok(t)) => {
            prop_assert_eq!(tree_view(&t), model_view(&model));
            // Only reachable nodes remain: the root and one per model node still named.
            let live: BTreeSet<usize> = model.names.values().copied().collect();
            prop_assert_eq!(t.len(), live.len() + 1);
            Ok(true)
        }
        (Err(_), Err(_)) => Ok(false),
        (Ok(()), Err(e)) => Err(TestCaseError::fail(format!(
            "model accepted, from_layers said: {e}"
        ))),
        (Err(r), Ok(_)) => Err(TestCaseError::fail(format!(
            "model refused ({r:?}), from_layers accepted"
        ))),
    }
}

fn gen_layers() -> impl Strategy<Value = Vec<Vec<Op>>> {
    prop::collection::vec(prop::collection::vec(gen_op(), 0..12), 1..5)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Valid sequences (ops the model refuses dropped): the trees must be equal.
    #[test]
    fn random_valid_layers_match_the_reference_model(layers in gen_layers()) {
        let layers = sanitize(&layers, false);
        prop_assert!(check_against_model(&layers)?, "sanitized layers refused");
    }

    /// Raw sequences, most of them invalid: both refuse, or both give the same tree.
    #[test]
    fn random_raw_layers_are_refused_exactly_when_the_model_refuses(layers in gen_layers()) {
        check_against_model(&layers)?;
    }
}

// Against umoci, an independent unpacker (as root, so that it keeps ownership).

/// What a listing compares for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    /// `d`, `f`, `l`, `c`, `b`, `p`.
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Device numbers.
    rdev: (u32, u32),
    /// Symlink target, or length and CRC-32 of a file's content.
    data: (Vec<u8>, u64, u32),
    /// Link count (1 for directories) and the first path (in walk order) of the same node.
    nlink: u32,
    first: String,
    /// Modification time in seconds for non-directories (umoci sets directory times as it goes).
    mtime: Option<i64>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn crc_of(mut r: impl std::io::Read) -> (u64, u32) {
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            return (n, h.finalize());
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

/// Reads a tree's content as a stream.
struct ContentReader<'a> {
    c: &'a Content,
    off: u64,
}

impl std::io::Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.c.len() - self.off).min(buf.len() as u64) as usize;
        self.c.read_at(&mut buf[..n], self.off).unwrap();
        self.off += n as u64;
        Ok(n)
    }
}

fn tree_rows(t: &Tree) -> BTreeMap<String, Row> {
    let mut first: BTreeMap<stamp_fs::NodeId, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (p, id) in t.walk().into_iter().skip(1) {
        let p = String::from_utf8(p).unwrap();
        let e = t.entry(id);
        let (kind, rdev, data) = match &e.kind {
            Kind::Dir => ('d', (0, 0), (Vec::new(), 0, 0)),
            Kind::File(c) => {
                let (n, crc) = crc_of(ContentReader { c, off: 0 });
                ('f', (0, 0), (Vec::new(), n, crc))
            }
            Kind::Symlink(s) => ('l', (0, 0), (s.clone(), 0, 0)),
            Kind::CharDevice { major, minor } => ('c', (*major, *minor), (Vec::new(), 0, 0)),
            Kind::BlockDevice { major, minor } => ('b', (*major, *minor), (Vec::new(), 0, 0)),
            Kind::Fifo => ('p', (0, 0), (Vec::new(), 0, 0)),
            Kind::Socket => ('s', (0, 0), (Vec::new(), 0, 0)),
        };
        let f = first.entry(id).or_insert_with(|| p.clone()).clone();
        out.insert(
            p,
            Row {
                kind,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                rdev,
                data,
                nlink: if e.is_dir() { 1 } else { t.names(id) },
                first: f,
                mtime: (!e.is_dir()).then_some(e.mtime.sec),
                xattrs: e.xattrs.clone(),
            },
        );
    }
    out
}

/// The same listing of a directory on the host.
fn host_rows(root: &Path) -> BTreeMap<String, Row> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut all = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            // Overlay lists a whiteout in a directory no lower layer has, but it cannot be
            // looked up: it is not there.
            let Ok(m) = std::fs::symlink_metadata(root.join(&r)) else {
                continue;
            };
            if m.is_dir() {
                stack.push(r.clone());
            }
            all.push((r.to_str().unwrap().to_string(), m));
        }
    }
    let key = |s: &str| s.replace('/', "\0");
    all.sort_by_key(|(p, _)| key(p));
    let mut first: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (p, m) in all {
        let full = root.join(&p);
        let ft = m.file_type();
        let rdev = m.rdev();
        let dev = (
            (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as u32,
            ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as u32,
        );
        let (kind, rdev, data) = if ft.is_dir() {
            ('d', (0, 0), (Vec::new(), 0, 0))
        } else if ft.is_file() {
            let (n, crc) = crc_of(std::fs::File::open(&full).unwrap());
            ('f', (0, 0), (Vec::new(), n, crc))
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&full).unwrap();
            ('l', (0, 0), (t.into_os_string().into_encoded_bytes(), 0, 0))
        } else if ft.is_char_device() {
            ('c', dev, (Vec::new(), 0, 0))
        } else if ft.is_block_device() {
            ('b', dev, (Vec::new(), 0, 0))
        } else if ft.is_fifo() {
            ('p', (0, 0), (Vec::new(), 0, 0))
        } else {
            ('s', (0, 0), (Vec::new(), 0, 0))
        };
        let f = first
            .entry((m.dev(), m.ino()))
            .or_insert_with(|| p.clone())
            .clone();
        let mut xattrs = BTreeMap::new();
        if kind != 'l' {
            for n in xattr::list(&full).unwrap() {
                let n = n.to_str().unwrap().to_string();
                let v = xattr::get(&full, &n).unwrap().unwrap_or_default();
                xattrs.insert(n, v);
            }
        }
        out.insert(
            p,
            Row {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                rdev,
                data,
                nlink: if kind == 'd' { 1 } else { m.nlink() as u32 },
                first: f,
                mtime: (kind != 'd').then_some(m.mtime()),
                xattrs,
            },
        );
    }
    out
}

fn umoci_available() -> bool {
    let root = std::env::var_os("USER").is_some_and(|u| u == "root")
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n");
    let found = Command::new("umoci").arg("--version").output().is_ok();
    if !(root && found) {
        eprintln!("skipped: umoci (as root) is needed");
    }
    root && found
}

fn umoci(args: &[&str], cwd: &Path) {
    let out = Command::new("umoci")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unpacks `layers` with umoci into `dir/bundle/rootfs` and returns that path.
fn umoci_unpack(dir: &Path, layers: &[PathBuf]) -> PathBuf {
    umoci(&["init", "--layout", "oci"], dir);
    umoci(&["new", "--image", "oci:t"], dir);
    for l in layers {
        umoci(
            &["raw", "add-layer", "--image", "oci:t", l.to_str().unwrap()],
            dir,
        );
    }
    umoci(&["unpack", "--image", "oci:t", "bundle"], dir);
    dir.join("bundle/rootfs")
}

/// Flattens `layers` with [`from_layers`] and with umoci and asserts the listings are equal.
fn check_against_umoci(dir: &Path, layers: &[PathBuf]) -> Result<(), TestCaseError> {
    let t = from_layers(layers, &SourceOptions::default()).unwrap();
    let rootfs = umoci_unpack(dir, layers);
    let ours = tree_rows(&t);
    let theirs = host_rows(&rootfs);
    let only_ours: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    let only_theirs: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    prop_assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "only in from_layers: {only_ours:?}\nonly in umoci: {only_theirs:?}"
    );
    for (p, r) in &ours {
        prop_assert_eq!(r, &theirs[p], "{}", p);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Random valid layer sequences (without the cases umoci treats differently, see
    /// [`Model::strict`]) flatten to what umoci unpacks.
    #[test]
    fn random_layers_match_umoci(layers in gen_layers()) {
        if !umoci_available() {
            return Ok(());
        }
        let layers = sanitize(&layers, true);
        let d = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = layers
            .iter()
            .enumerate()
            .map(|(i, ops)| write_layer(d.path(), i, ops))
            .collect();
        check_against_umoci(d.path(), &files)?;
    }
}

/// A Debian root filesystem (see TESTING.md; cached at `~/.cache/stamp-dev/debian-rootfs.tar`)
/// with two layers on top that delete, replace and hard-link files flattens to what umoci
/// unpacks.
#[test]
fn debian_rootfs_with_whiteout_layers_matches_umoci() {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap();
    let base = cache.join("stamp-dev/debian-rootfs.tar");
    if !base.exists() {
        eprintln!("skipped: no {}", base.display());
        return;
    }
    if !umoci_available() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut l2 = Layer::new(d.path(), "2.tar");
    l2.whiteout("usr/share/doc")
        .whiteout("etc/apt/sources.list.d")
        .opaque("var/cache/apt")
        .file("var/cache/apt/new", b"new")
        .file_owned("etc/hostname", b"stamped\n", 0o644, 0, 0)
        .file("etc/os-release", b"ID=stamp\n")
        .link("usr/bin/bash-again", "usr/bin/bash")
        .file("var/log/apt", b"a file where a directory was")
        .dir("usr/local/new")
        .file_owned("usr/local/new/owned", b"x", 0o640, 1234, 5678);
    let mut l3 = Layer::new(d.path(), "3.tar");
    l3.whiteout("usr/bin/bash")
        .whiteout("usr/local/new")
        .pax(&[("SCHILY.xattr.user.stamp", b"yes")])
        .file("etc/motd", b"welcome\n");
    let layers = [base, l2.finish(), l3.finish()];
    check_against_umoci(d.path(), &layers).unwrap();
}

// Against podman (containers/storage with its overlay driver, the acceptance oracle), as root
// with a private store in a temporary directory.

fn podman_available() -> bool {
    let ok = umoci_available() && Command::new("podman").arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipped: podman (as root) is needed");
    }
    ok
}

/// Runs podman with a private store under `dir`; returns its stdout.
fn podman(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("podman")
        .arg("--root")
        .arg(dir.join("podman-root"))
        .arg("--runroot")
        .arg(dir.join("podman-run"))
        .args(["--storage-driver", "overlay"])
        // No bind mount of the store over itself, which would outlive the test.
        .args(["--storage-opt", "overlay.skip_mount_home=true"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Flattens `layers` with [`from_layers`] and with podman (pull of an OCI layout made by umoci,
/// then `podman image mount`) and asserts the listings are equal.
fn check_against_podman(dir: &Path, layers: &[PathBuf]) {
    let t = from_layers(layers, &SourceOptions::default()).unwrap();
    umoci(&["init", "--layout", "oci"], dir);
    umoci(&["new", "--image", "oci:t"], dir);
    for l in layers {
        umoci(
            &["raw", "add-layer", "--image", "oci:t", l.to_str().unwrap()],
            dir,
        );
    }
    // podman names the image after the layout's path, which must be lowercase: point a
    // lowercase symlink at it.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let link = std::env::temp_dir().join(format!("stamp-layers-{}-{nanos:x}", std::process::id()));
    std::os::unix::fs::symlink(dir.join("oci"), &link).unwrap();
    let layout = format!("oci:{}:t", link.display());
    let id = podman(dir, &["pull", "-q", &layout]);
    std::fs::remove_file(&link).unwrap();
    let guard = Unmount(dir.join("podman-root"));
    let mnt = PathBuf::from(podman(dir, &["image", "mount", &id]));
    let theirs = host_rows(&mnt);
    podman(dir, &["image", "unmount", &id]);
    podman(dir, &["rmi", "-f", &id]);
    drop(guard);
    // Overlay's merged view reports a lower file's link count as the lower layer has it, even
    // when an upper whiteout removed one of its names (the extracted filesystem, and this
    // tree, has one less): link counts are checked against umoci and the model instead, hard
    // link groups here.
    let ours = no_nlink(tree_rows(&t));
    let theirs = no_nlink(theirs);
    let only_ours: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    let only_theirs: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "only in from_layers: {only_ours:?}\nonly in podman: {only_theirs:?}"
    );
    for (p, r) in &ours {
        assert_eq!(r, &theirs[p], "{p}");
    }
}

/// Unmounts whatever podman left mounted under a store (also when a test fails), so that the
/// temporary directory can be removed.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
            return;
        };
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| Path::new(m).starts_with(&self.0))
            .collect();
        // Deepest first.
        points.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in points {
            let _ = Command::new("umount").arg(m).output();
        }
    }
}

fn no_nlink(mut rows: BTreeMap<String, Row>) -> BTreeMap<String, Row> {
    for r in rows.values_mut() {
        r.nlink = 0;
    }
    rows
}

#[test]
fn three_layers_match_podman() {
    if !podman_available() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut l1 = Layer::new(d.path(), "1.tar");
    l1.dir("etc")
        .file("etc/a", b"a")
        .file_owned("etc/shadow", b"root:*:", 0o640, 0, 42)
        .dir("usr")
        .dir("usr/lib")
        .file("usr/lib/libc.so", b"libc")
        .symlink("lib", "usr/lib")
        .dir("usr/bin")
        .file_owned("usr/bin/a", b"tool", 0o4755, 0, 0)
        .link_mode("usr/bin/b", "usr/bin/a", 0o4755)
        .link_mode("usr/bin/c", "usr/bin/a", 0o4755)
        .dir("var")
        .dir("var/cache")
        .dir("var/cache/apt")
        .file("var/cache/apt/pkgcache.bin", b"cache")
        .dir("opt")
        .file("opt/inside", b"i")
        .file("srv", b"srv is a file");
    let mut l2 = Layer::new(d.path(), "2.tar");
    l2.dir("etc")
        .whiteout("etc/a")
        .dir("var")
        .dir("var/cache")
        .dir_mode("var/cache/apt", 0o700)
        .opaque("var/cache/apt")
        .file("var/cache/apt/new", b"new")
        .file("opt", b"opt is a file now")
        .dir("srv")
        .file("srv/www", b"www")
        // No `lib/` entry: the lower symlink is replaced by an implied directory.
        .file("lib/modules/x", b"x")
        // A whiteout in a directory no layer has implies it.
        .whiteout("ghost/x")
        .dir("usr")
        .dir("usr/bin")
        .whiteout("usr/bin/a");
    let mut l3 = Layer::new(d.path(), "3.tar");
    l3.raw(
        "etc/",
        {
            let mut h = header(tar::EntryType::Directory, 0, 0o700);
            h.set_uid(5);
            h.set_gid(6);
            h
        },
        &[],
    )
    .pax(&[("SCHILY.xattr.user.origin", b"layer 3")])
    .file("etc/n1", b"n")
    .link("etc/n2", "etc/n1")
    .whiteout("srv")
    .file("usr-less", b"u");
    check_against_podman(d.path(), &[l1.finish(), l2.finish(), l3.finish()]);
}

/// The Debian root filesystem (when cached, see [`debian_rootfs_with_whiteout_layers_matches_umoci`])
/// with a layer that deletes and replaces files flattens to what podman extracts.
#[test]
fn debian_rootfs_with_a_whiteout_layer_matches_podman() {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap();
    let base = cache.join("stamp-dev/debian-rootfs.tar");
    if !base.exists() {
        eprintln!("skipped: no {}", base.display());
        return;
    }
    if !podman_available() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut l2 = Layer::new(d.path(), "2.tar");
    l2.dir("usr")
        .dir("usr/share")
        .whiteout("usr/share/doc")
        .dir("etc")
        .dir("etc/apt")
        .whiteout("etc/apt/sources.list.d")
        .file("etc/hostname", b"stamped\n")
        .file("etc/os-release", b"ID=stamp\n")
        .dir("var")
        .dir("var/cache")
        .dir("var/cache/apt")
        .opaque("var/cache/apt")
        .file("var/cache/apt/new", b"new")
        .dir("var/log")
        .file("var/log/apt", b"a file where a directory was")
        .dir("usr/bin")
        .whiteout("usr/bin/bash");
    check_against_podman(d.path(), &[base, l2.finish()]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Corrupted layers (bytes overwritten anywhere in a valid layer, or the layer truncated)
    /// give a tree or an error, never a panic.
    #[test]
    fn corrupted_layers_never_panic(
        ops in prop::collection::vec(gen_op(), 1..12),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..20),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let d = tempfile::tempdir().unwrap();
        let ops = sanitize(&[ops], false).remove(0);
        let lower = write_layer(d.path(), 0, &ops);
        let upper = write_layer(d.path(), 1, &ops);
        let mut bytes = std::fs::read(&upper).unwrap();
        let headers: Vec<usize> = tar::Archive::new(&bytes[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().raw_header_position() as usize)
            .collect();
        // Flip within the headers and data, not the zero padding after them.
        let used = bytes.iter().rposition(|b| *b != 0).map_or(bytes.len(), |i| i + 1);
        for (i, b) in flips {
            let i = i.index(used);
            bytes[i] = b;
        }
        // Valid checksums, so that the damage reaches the fields (half of the time).
        if cut.is_none() {
            for h in headers {
                let block = &mut bytes[h..h + 512];
                block[148..156].fill(b' ');
                let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
                block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            }
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        std::fs::write(&upper, &bytes).unwrap();
        let _ = from_layers(&[lower, upper], &SourceOptions::default());
    }
}
