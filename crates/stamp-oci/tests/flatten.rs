//! Flattening images that podman built and pushed to a real registry: the tree stamp gets from
//! `pull` + `flatten` is what `podman export` of a container of the same image holds, and a
//! multi-platform index gives each platform its own image.
//!
//! These tests need podman (as root, with runc) and `docker-registry` (see TESTING.md); the
//! whiteout test also needs the Debian root filesystem tar (`STAMP_DEBIAN_TAR`, else
//! `~/.cache/stamp-dev/debian-rootfs.tar`). Without them they print a note and pass.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use oci_spec::image::{Arch, ImageIndex, Os, Platform};
use stamp_fs::source::SourceOptions;
use stamp_fs::{Kind, Tree};
use stamp_oci::distribution::{self, Quiet};
use stamp_oci::registry::{Client, RegistryOptions};
use stamp_oci::{Digest, DigestWriter, Error, Reference, Store, flatten};
use support::{Flavour, registry, unique_repo};

/// A podman with a private store (and its own `containers.conf`) in a temporary directory,
/// removed with everything podman mounted there when dropped.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    /// A private podman, or `None` (with a note) when podman cannot run here.
    fn new() -> Option<Podman> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let have = Command::new("podman").arg("--version").output().is_ok()
            && Command::new("docker-registry")
                .arg("--version")
                .output()
                .is_ok();
        if !(root && have) {
            eprintln!("skipped: podman (as root) and docker-registry are needed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // TESTING.md: the default rlimits are refused on these machines.
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .unwrap();
        Some(Podman { dir })
    }

    fn command(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--storage-driver", "overlay"])
            // No bind mount of the store over itself, which would outlive the test.
            .args(["--storage-opt", "overlay.skip_mount_home=true"]);
        c
    }

    /// Runs podman with `args`; returns its trimmed stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Builds `containerfile` (with `files` beside it in the context) as `tag`.
    fn build(&self, tag: &str, extra: &[&str], containerfile: &str, files: &[(&str, &[u8])]) {
        let ctx = self
            .dir
            .path()
            .join(format!("ctx-{}", tag.replace(['/', ':'], "-")));
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Containerfile"), containerfile).unwrap();
        for (name, data) in files {
            std::fs::write(ctx.join(name), data).unwrap();
        }
        let ctx = ctx.to_str().unwrap();
        let mut args = vec!["build", "-q", "--isolation", "chroot", "-t", tag];
        args.extend_from_slice(extra);
        args.push(ctx);
        self.run(&args);
    }

    /// The listing of what `podman export` writes for a container of `image` (created, never
    /// started), read from the export stream.
    fn export_listing(&self, image: &str) -> BTreeMap<String, Row> {
        let cid = self.run(&["create", "--runtime", "runc", image, "/bin/true"]);
        let mut child = self
            .command()
            .args(["export", &cid])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rows = tar_listing(child.stdout.take().unwrap());
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(child.wait().unwrap().success(), "podman export: {err}");
        self.run(&["rm", "-f", &cid]);
        rows
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command().args(["rm", "-a", "-f"]).output();
        // Whatever is still mounted under the store (a failed test), deepest first, so that
        // the temporary directory can be removed.
        let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
            return;
        };
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| Path::new(m).starts_with(self.dir.path()))
            .collect();
        points.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in points {
            let _ = Command::new("umount").arg(m).output();
        }
    }
}

/// One path of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    /// `-`, `d`, `l`, `c`, `b`, `p`.
    kind: char,
    /// Permission bits with setuid, setgid and sticky.
    mode: u32,
    uid: u64,
    gid: u64,
    /// Content length of a file (0 otherwise).
    size: u64,
    /// A symlink's target.
    target: Vec<u8>,
    /// A device's (major, minor).
    rdev: (u32, u32),
    /// A file's content digest.
    content: Option<Digest>,
    /// Modification time (seconds) of anything but a directory.
    mtime: Option<i64>,
    /// The smallest path of the hard-link group the path belongs to (itself when alone).
    group: String,
}

fn hash(mut r: impl Read) -> (Digest, u64) {
    let mut w = DigestWriter::new(std::io::sink());
    std::io::copy(&mut r, &mut w).unwrap();
    w.flush().unwrap();
    let (d, n, _) = w.finish();
    (d, n)
}

/// Sets every row's `group` to the smallest path among the rows whose `group` names the
/// same first path.
fn normalise_groups(rows: &mut BTreeMap<String, Row>) {
    let mut smallest: BTreeMap<String, String> = BTreeMap::new();
    for (p, r) in rows.iter() {
        let s = smallest.entry(r.group.clone()).or_insert_with(|| p.clone());
        if p < s {
            *s = p.clone();
        }
    }
    for r in rows.values_mut() {
        r.group = smallest[&r.group].clone();
    }
}

/// The listing of a tar stream (hard links take their target's row; contents are hashed).
fn tar_listing(r: impl Read) -> BTreeMap<String, Row> {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut archive = tar::Archive::new(r);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let raw = entry.path_bytes().into_owned();
        let path = String::from_utf8(raw).unwrap();
        let path = path
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        if path.is_empty() || path == "." {
            continue;
        }
        let h = entry.header().clone();
        let t = h.entry_type();
        if t.is_hard_link() {
            let target = entry.link_name_bytes().unwrap().into_owned();
            let target = String::from_utf8(target).unwrap();
            let target = target.trim_start_matches("./").trim_start_matches('/');
            let row = rows
                .get(target)
                .unwrap_or_else(|| panic!("{path}: hard link to missing {target}"))
                .clone();
            rows.insert(path, row);
            continue;
        }
        let kind = if t.is_dir() {
            'd'
        } else if t.is_file() {
            '-'
        } else if t.is_symlink() {
            'l'
        } else if t.is_character_special() {
            'c'
        } else if t.is_block_special() {
            'b'
        } else if t.is_fifo() {
            'p'
        } else {
            panic!("{path}: unexpected entry type {t:?}")
        };
        let (content, size) = if kind == '-' {
            let (d, n) = hash(&mut entry);
            (Some(d), n)
        } else {
            (None, 0)
        };
        let rdev = if matches!(kind, 'c' | 'b') {
            (
                h.device_major().unwrap().unwrap_or(0),
                h.device_minor().unwrap().unwrap_or(0),
            )
        } else {
            (0, 0)
        };
        let target = if kind == 'l' {
            entry.link_name_bytes().unwrap().into_owned()
        } else {
            Vec::new()
        };
        rows.insert(
            path.clone(),
            Row {
                kind,
                mode: h.mode().unwrap() & 0o7777,
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                size,
                target,
                rdev,
                content,
                mtime: (kind != 'd').then(|| h.mtime().unwrap() as i64),
                group: path,
            },
        );
    }
    normalise_groups(&mut rows);
    rows
}

/// Reads a tree's file content as a stream.
struct ContentReader<'a> {
    c: &'a stamp_fs::Content,
    off: u64,
}

impl Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.c.len() - self.off).min(buf.len() as u64) as usize;
        self.c
            .read_at(&mut buf[..n], self.off)
            .map_err(std::io::Error::other)?;
        self.off += n as u64;
        Ok(n)
    }
}

/// The same listing of a flattened tree.
fn tree_listing(t: &Tree) -> BTreeMap<String, Row> {
    let mut first: BTreeMap<stamp_fs::NodeId, String> = BTreeMap::new();
    let mut rows = BTreeMap::new();
    for (p, id) in t.walk().into_iter().skip(1) {
        let p = String::from_utf8(p).unwrap();
        let e = t.entry(id);
        let (kind, target, rdev) = match &e.kind {
            Kind::Dir => ('d', Vec::new(), (0, 0)),
            Kind::File(_) => ('-', Vec::new(), (0, 0)),
            Kind::Symlink(s) => ('l', s.clone(), (0, 0)),
            Kind::CharDevice { major, minor } => ('c', Vec::new(), (*major, *minor)),
            Kind::BlockDevice { major, minor } => ('b', Vec::new(), (*major, *minor)),
            Kind::Fifo => ('p', Vec::new(), (0, 0)),
            Kind::Socket => ('s', Vec::new(), (0, 0)),
        };
        let (content, size) = match &e.kind {
            Kind::File(c) => {
                let (d, n) = hash(ContentReader { c, off: 0 });
                assert_eq!(n, c.len(), "{p}");
                (Some(d), n)
            }
            _ => (None, 0),
        };
        let group = first.entry(id).or_insert_with(|| p.clone()).clone();
        rows.insert(
            p,
            Row {
                kind,
                mode: e.mode & 0o7777,
                uid: e.uid.into(),
                gid: e.gid.into(),
                size,
                target,
                rdev,
                content,
                mtime: (kind != 'd').then_some(e.mtime.sec),
                group,
            },
        );
    }
    normalise_groups(&mut rows);
    rows
}

/// A client with fast retries that reads no credentials file of the user's.
fn client() -> Client {
    static NO_CREDS: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = NO_CREDS.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("auth.json"), "{}").unwrap();
        d
    });
    Client::new(RegistryOptions {
        backoff: Duration::from_millis(5),
        auth_file: Some(dir.path().join("auth.json")),
        ..RegistryOptions::default()
    })
    .unwrap()
}

fn debian_tar() -> Option<PathBuf> {
    let p = std::env::var_os("STAMP_DEBIAN_TAR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/stamp-dev/debian-rootfs.tar"))
        })?;
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipped: no {} (set STAMP_DEBIAN_TAR)", p.display());
        None
    }
}

fn platform(os: Os, arch: Arch) -> Platform {
    let mut p = Platform::default();
    p.set_os(os);
    p.set_architecture(arch);
    p
}

/// Pulls `r` into a new store under `dir` and flattens it.
fn pull_and_flatten(
    dir: &Path,
    r: &Reference,
    p: Option<&Platform>,
) -> (Store, oci_spec::image::Descriptor, Tree) {
    let store = Store::open(dir).unwrap();
    let desc = distribution::pull(&store, &client(), r, p, &Quiet).unwrap();
    let image = store.image(&desc, None).unwrap();
    let tree = flatten(&store, &image, &SourceOptions::default()).unwrap();
    assert!(store.fsck().unwrap().is_clean());
    (store, desc, tree)
}

/// The content of the file at `path` in `t`.
fn file_content(t: &Tree, path: &str) -> Vec<u8> {
    let id = t
        .get(path.as_bytes())
        .unwrap_or_else(|| panic!("no {path}"));
    let Kind::File(c) = &t.entry(id).kind else {
        panic!("{path} is not a file")
    };
    let mut out = Vec::new();
    ContentReader { c, off: 0 }.read_to_end(&mut out).unwrap();
    out
}

/// The layer `podman build` adds on top of the Debian root filesystem: deletes a file and a
/// directory tree (whiteouts), replaces a directory's contents (an opaque directory), adds a
/// hard link to a lower-layer file, and changes owners and modes of lower and new files.
const WHITEOUT_LAYER: &str = "FROM localhost/stamp-flatten-base:1
RUN rm /etc/issue.net && rm -rf /usr/share/doc/apt \\
 && rm -rf /var/cache/apt && mkdir /var/cache/apt && echo new > /var/cache/apt/new \\
 && ln /usr/bin/bash /usr/local/bin/bash-hard \\
 && chown 1234:5678 /etc/debian_version && chmod 0600 /etc/debian_version \\
 && chmod 4755 /usr/bin/mawk && ln -s ../stamp/f /opt/link \\
 && mkdir -p /opt/stamp && echo hi > /opt/stamp/f && chown -R 42:43 /opt/stamp \\
 && chmod 0750 /opt/stamp
";

/// Acceptance item 2 of issue 4: the Debian root filesystem with a `podman build` layer that
/// makes whiteouts, an opaque directory, a cross-layer hard link and ownership changes, pushed
/// by podman to a registry, pulled and flattened by stamp, lists exactly as `podman export`
/// of a container of that image (path, type, mode, uid, gid, size, symlink target, device
/// numbers, hard-link groups, mtime of non-directories and every file's content digest).
///
/// `podman export` of a created (never started) container adds nothing to the image's
/// files: the `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname` and `/run/.containerenv`
/// podman injects are bind mounts of a running container, absent from a created one's
/// rootfs. (The empty `/etc/hosts` and the `/run` directory that *are* in the export come
/// from the built layer: buildah commits the mount points of its RUN step, and stamp has
/// them too.) So nothing is excluded.
#[test]
fn podman_built_whiteout_image_flattens_as_podman_exports_it() {
    let Some(base) = debian_tar() else { return };
    let Some(podman) = Podman::new() else { return };
    let reg = registry(Flavour::Plain);
    podman.run(&[
        "import",
        "-q",
        base.to_str().unwrap(),
        "localhost/stamp-flatten-base:1",
    ]);
    let image = "localhost/stamp-flatten-wh:1";
    podman.build(image, &[], WHITEOUT_LAYER, &[]);
    let repo = unique_repo("flatten-wh");
    let remote = format!("{}/{repo}:1", reg.host);
    podman.run(&[
        "push",
        "-q",
        "--tls-verify=false",
        image,
        &format!("docker://{remote}"),
    ]);

    let t = tempfile::tempdir().unwrap();
    let r: Reference = remote.parse().unwrap();
    let (store, desc, tree) = pull_and_flatten(&t.path().join("store"), &r, None);
    // The pulled image is podman's: two layers with podman's diff_ids.
    let pulled = store.image(&desc, None).unwrap();
    let ids: Vec<String> = pulled
        .diff_ids()
        .unwrap()
        .iter()
        .map(|d| d.to_string())
        .collect();
    let theirs = podman.run(&[
        "image",
        "inspect",
        "--format",
        "{{range .RootFS.Layers}}{{.}} {{end}}",
        image,
    ]);
    assert_eq!(ids, theirs.split_whitespace().collect::<Vec<_>>());
    assert_eq!(ids.len(), 2);

    let ours = tree_listing(&tree);
    let exported = podman.export_listing(image);
    let only_ours: Vec<_> = ours.keys().filter(|k| !exported.contains_key(*k)).collect();
    let only_theirs: Vec<_> = exported.keys().filter(|k| !ours.contains_key(*k)).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "only in stamp's tree: {only_ours:?}\nonly in podman's export: {only_theirs:?}"
    );
    let differ: Vec<_> = ours
        .iter()
        .filter(|(p, r)| exported[*p] != **r)
        .map(|(p, r)| format!("{p}:\n  stamp  {r:?}\n  podman {:?}", exported[p]))
        .collect();
    assert!(
        differ.is_empty(),
        "{} differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
    assert!(ours.len() > 5000, "{} entries", ours.len());

    // And the listing shows the layer's changes (the comparison above is not vacuous).
    assert!(!ours.contains_key("etc/issue.net"));
    assert!(ours.contains_key("etc/issue"));
    assert!(!ours.contains_key("usr/share/doc/apt"));
    assert!(ours.keys().any(|k| k.starts_with("usr/share/doc/")));
    let apt_cache: Vec<_> = ours
        .keys()
        .filter(|k| k.starts_with("var/cache/apt/"))
        .collect();
    assert_eq!(apt_cache, ["var/cache/apt/new"]);
    assert_eq!(ours["usr/local/bin/bash-hard"].group, "usr/bin/bash");
    assert_eq!(ours["usr/bin/bash"].group, "usr/bin/bash");
    let dv = &ours["etc/debian_version"];
    assert_eq!((dv.uid, dv.gid, dv.mode), (1234, 5678, 0o600));
    assert_eq!(ours["usr/bin/mawk"].mode, 0o4755);
    let opt = &ours["opt/stamp"];
    assert_eq!((opt.kind, opt.uid, opt.gid, opt.mode), ('d', 42, 43, 0o750));
    assert_eq!(ours["opt/link"].target, b"../stamp/f");
    assert_eq!(file_content(&tree, "opt/stamp/f"), b"hi\n");
}

/// Two `FROM scratch` images for linux/amd64 and linux/arm64 in an index pushed by
/// `podman manifest push --all`: pulling with no platform gets the host's, with linux/arm64
/// the arm64 one (told apart by a file's content after flattening), and a platform the index
/// lacks is a NotFound naming the platforms it has, with nothing named in the store.
#[test]
fn multi_arch_index_pulls_the_requested_platform() {
    let Some(podman) = Podman::new() else { return };
    let reg = registry(Flavour::Plain);
    for arch in ["amd64", "arm64"] {
        podman.build(
            &format!("localhost/stamp-flatten-{arch}:1"),
            &["--platform", &format!("linux/{arch}")],
            "FROM scratch\nCOPY arch.txt /etc/arch.txt\n",
            &[("arch.txt", format!("arch={arch}\n").as_bytes())],
        );
    }
    let list = "localhost/stamp-flatten-list:1";
    podman.run(&["manifest", "create", list]);
    for arch in ["amd64", "arm64"] {
        podman.run(&[
            "manifest",
            "add",
            list,
            &format!("containers-storage:localhost/stamp-flatten-{arch}:1"),
        ]);
    }
    let repo = unique_repo("flatten-multi");
    let remote = format!("{}/{repo}:1", reg.host);
    podman.run(&[
        "manifest",
        "push",
        "-q",
        "--all",
        "--tls-verify=false",
        list,
        &format!("docker://{remote}"),
    ]);
    let r: Reference = remote.parse().unwrap();

    // The index as the registry has it: which manifest is whose.
    let index = client().get_manifest(&r).unwrap();
    let index: ImageIndex = serde_json::from_slice(&index.bytes).unwrap();
    let manifest_of = |arch: &str| {
        index
            .manifests()
            .iter()
            .find(|m| {
                m.platform()
                    .as_ref()
                    .is_some_and(|p| p.architecture().to_string() == arch)
            })
            .unwrap()
            .digest()
            .to_string()
    };

    let host = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => {
            eprintln!("skipped: host architecture {other} is in no test index");
            return;
        }
    };
    let t = tempfile::tempdir().unwrap();
    let (store, desc, tree) = pull_and_flatten(&t.path().join("default"), &r, None);
    assert_eq!(desc.digest().to_string(), manifest_of(host));
    assert_eq!(
        file_content(&tree, "etc/arch.txt"),
        format!("arch={host}\n").as_bytes()
    );
    let image = store.image(&desc, None).unwrap();
    assert_eq!(
        image.config.unwrap().architecture().to_string(),
        host.to_string()
    );

    let arm = platform(Os::Linux, Arch::ARM64);
    let (store, desc, tree) = pull_and_flatten(&t.path().join("arm64"), &r, Some(&arm));
    assert_eq!(desc.digest().to_string(), manifest_of("arm64"));
    assert_eq!(file_content(&tree, "etc/arch.txt"), b"arch=arm64\n");
    let image = store.image(&desc, None).unwrap();
    assert_eq!(image.config.unwrap().architecture(), &Arch::ARM64);
    assert_eq!(
        store.resolve(&r.to_string()).unwrap().digest(),
        desc.digest()
    );

    let s390x = platform(Os::Linux, Arch::s390x);
    let store = Store::open(&t.path().join("s390x")).unwrap();
    let err = distribution::pull(&store, &client(), &r, Some(&s390x), &Quiet).unwrap_err();
    let Error::NotFound(msg) = &err else {
        panic!("{err:?}")
    };
    for want in ["linux/s390x", "linux/amd64", "linux/arm64"] {
        assert!(msg.contains(want), "{want} not in: {err}");
    }
    assert!(store.list().unwrap().is_empty());
    assert!(store.fsck().unwrap().is_clean());
}
