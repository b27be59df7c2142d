//! The real Debian root filesystem (mmdebstrap's tar, from `scripts/debian-image.sh --tar`) through
//! `stamp mkfs ext4`, judged by e2fsprogs against the tar's own headers: e2fsck finds the image
//! clean; debugfs shows every path with the type, mode, owner, size, mtime, link target, device
//! numbers, xattrs, hard links and contents the tar gives it; and the image is byte-identical when
//! built again and when built by an unprivileged user.
//!
//! The tar is `$STAMP_DEBIAN_TAR` (scripts/test.sh sets it), else the cache of
//! `scripts/debian-image.sh --tar`; without either the test says it is skipped.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

use super::common::*;

/// How many mismatches a failure message lists (the count covers all of them).
const SHOWN_MISMATCHES: usize = 40;

/// The uid and gid of `nobody` on Debian.
const NOBODY: u32 = 65534;

#[test]
fn debian_rootfs_image_matches_its_tar_and_is_identical_when_rebuilt_as_root_or_nobody() {
    let Some(tar) = debian_tar() else {
        eprintln!("skipped: no Debian rootfs tar; run scripts/debian-image.sh --tar");
        return;
    };
    let d = tmp();
    let img = d.path().join("a.img");
    mkfs(&tar, &img);
    let digest = sha256(&img);
    e2fsck_is_clean(&img);

    let expected = read_tar(&tar);
    let has = |f: fn(&Expected) -> bool| expected.values().any(f);
    assert!(
        has(|e| e.kind == Type::Regular && e.mode & 0o4000 != 0)
            && has(|e| matches!(e.kind, Type::Char | Type::Block))
            && has(|e| e.uid == 0),
        "{}: the rootless check needs setuid files, device nodes and root-owned files",
        tar.display()
    );

    // Every path of the tar, as debugfs shows it.
    let shown = stat_every_path(d.path(), &img, &expected);
    let mut mismatches = metadata_mismatches(&expected, &shown);
    mismatches.extend(hard_link_mismatches(&expected, &shown));
    mismatches.extend(directory_mismatches(d.path(), &img, &expected, &shown));
    mismatches.extend(symlink_mismatches(d.path(), &img, &expected, &shown));
    mismatches.extend(xattr_mismatches(d.path(), &img, &expected, &shown));
    mismatches.extend(content_mismatches(d.path(), &img, &expected));
    assert!(
        mismatches.is_empty(),
        "{} mismatches between {} and the image, the first ones:\n{}",
        mismatches.len(),
        tar.display(),
        mismatches[..mismatches.len().min(SHOWN_MISMATCHES)].join("\n")
    );

    // Same input, same bytes: again, and as a user who cannot own files as root.
    let again = d.path().join("b.img");
    mkfs(&tar, &again);
    assert_eq!(sha256(&again), digest, "a second build differs");

    if is_root(d.path()) {
        let rootless = mkfs_as_nobody(d.path(), &tar);
        assert_eq!(sha256(&rootless), digest, "the build as nobody differs");
    } else {
        eprintln!("skipped the build as nobody: setpriv needs root");
    }
}

/// `stamp mkfs ext4 --from TAR -o OUT` with default options, run as `user` (uid and gid) when
/// given. SOURCE_DATE_EPOCH is removed: the image must keep the tar's own times.
fn mkfs_command(stamp: &Path, tar: &Path, out: &Path, user: Option<u32>) -> Output {
    let mut cmd = match user {
        None => Command::new(stamp),
        Some(id) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={id}"))
                .arg(format!("--regid={id}"))
                .args(["--clear-groups", "--"])
                .arg(stamp);
            c
        }
    };
    cmd.args(["mkfs", "ext4", "--from", s(tar), "-o", s(out)])
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("run stamp mkfs")
}

/// Builds `tar` into `out` with the built binary, as the current user; panics unless it succeeds.
fn mkfs(tar: &Path, out: &Path) {
    let o = mkfs_command(Path::new(env!("CARGO_BIN_EXE_stamp")), tar, out, None);
    assert!(
        o.status.success(),
        "stamp mkfs ext4 --from {}: {}",
        tar.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Builds `tar` as user nobody, who has no way into a private home or cache directory: the tar is
/// linked (or copied) and, if nobody cannot run it where it is, the binary copied into a
/// world-readable directory under `dir`, where nobody also writes the image. Returns its path.
fn mkfs_as_nobody(dir: &Path, tar: &Path) -> PathBuf {
    let shared = dir.join("nobody");
    std::fs::create_dir(&shared).unwrap();
    chmod(dir, 0o755);
    chmod(&shared, 0o777);
    let shared_tar = shared.join("debian.tar");
    let world_readable = std::fs::metadata(tar).unwrap().mode() & 0o004 != 0;
    if !world_readable || std::fs::hard_link(tar, &shared_tar).is_err() {
        std::fs::copy(tar, &shared_tar).unwrap();
        chmod(&shared_tar, 0o644);
    }
    let mut stamp = PathBuf::from(env!("CARGO_BIN_EXE_stamp"));
    let probe = Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .args(["--clear-groups", "--"])
        .arg(&stamp)
        .arg("--version")
        .output()
        .expect("run setpriv");
    if !probe.status.success() {
        let copy = shared.join("stamp");
        std::fs::copy(&stamp, &copy).unwrap();
        chmod(&copy, 0o755);
        stamp = copy;
    }
    let out = shared.join("c.img");
    let o = mkfs_command(&stamp, &shared_tar, &out, Some(NOBODY));
    assert!(
        o.status.success(),
        "stamp mkfs ext4 as nobody: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::metadata(&out).unwrap().uid(), NOBODY);
    out
}

/// Sets the permission bits of `path`.
fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Returns true if and only if this process runs as root, judged by who owns the directory `dir`
/// it just created.
fn is_root(dir: &Path) -> bool {
    std::fs::metadata(dir).unwrap().uid() == 0
}

/// Runs `e2fsck -fn` and asserts it exits 0.
fn e2fsck_is_clean(img: &Path) {
    let o = Command::new("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .expect("run e2fsck");
    assert!(
        o.status.success(),
        "e2fsck -fn exited {:?}:\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A file type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    Regular,
    Directory,
    Symlink,
    Char,
    Block,
    Fifo,
}

impl Type {
    /// The word debugfs `stat` prints after `Type:`.
    fn debugfs_name(self) -> &'static str {
        match self {
            Type::Regular => "regular",
            Type::Directory => "directory",
            Type::Symlink => "symlink",
            Type::Char => "character special",
            Type::Block => "block special",
            Type::Fifo => "FIFO",
        }
    }
}

/// What the tar says one path is, after hard links are resolved and a later entry for the same
/// path has replaced an earlier one (as extraction does).
#[derive(Clone, Debug)]
struct Expected {
    /// The tar entry that made the file: paths with the same node are hard links of one file.
    node: usize,
    kind: Type,
    /// Permission bits with setuid, setgid and sticky.
    mode: u32,
    uid: u64,
    gid: u64,
    /// The content's length (the target's for a symlink; directories are not compared).
    size: u64,
    /// Seconds and nanoseconds.
    mtime: (i64, u32),
    target: Option<Vec<u8>>,
    device: Option<(u32, u32)>,
    /// From PAX `SCHILY.xattr.*` records.
    xattrs: BTreeMap<String, Vec<u8>>,
    /// Of a regular file's content.
    sha256: Option<[u8; 32]>,
}

/// Reads every member of `tar` (PAX and GNU long names, hard links, `./` prefixes, duplicates)
/// into the path → file map that extracting it would give, hashing contents as it goes.
fn read_tar(tar: &Path) -> BTreeMap<String, Expected> {
    let file = std::io::BufReader::new(std::fs::File::open(tar).unwrap());
    let mut archive = tar::Archive::new(file);
    let mut paths: BTreeMap<String, Expected> = BTreeMap::new();
    for (node, entry) in archive.entries().unwrap().enumerate() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let path = image_path(&entry.path_bytes());
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let mut pax: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        if let Some(records) = entry.pax_extensions().unwrap() {
            for r in records {
                let r = r.unwrap();
                pax.insert(r.key().unwrap().to_string(), r.value_bytes().to_vec());
            }
        }
        let kind = match header.entry_type() {
            tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::Link => {
                let target = image_path(&link.expect("hard link without a target"));
                let file = paths
                    .get(&target)
                    .unwrap_or_else(|| panic!("{path}: hard link to {target}, not seen before"))
                    .clone();
                paths.insert(path, file);
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => Type::Regular,
            tar::EntryType::Directory => Type::Directory,
            tar::EntryType::Symlink => Type::Symlink,
            tar::EntryType::Char => Type::Char,
            tar::EntryType::Block => Type::Block,
            tar::EntryType::Fifo => Type::Fifo,
            other => panic!("{path}: tar entry type {other:?} is not handled by this test"),
        };
        let number = |key: &str| {
            pax.get(key)
                .map(|v| std::str::from_utf8(v).unwrap().parse::<u64>().unwrap())
        };
        let mtime = match pax.get("mtime") {
            Some(v) => pax_time(std::str::from_utf8(v).unwrap()),
            None => (header.mtime().unwrap() as i64, 0),
        };
        let xattrs = pax
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("SCHILY.xattr.")?.to_string(), v.clone())))
            .collect();
        let (mut size, mut sha256) = (0, None);
        if kind == Type::Regular {
            let mut h = Sha256::new();
            size = std::io::copy(&mut entry, &mut h).unwrap();
            sha256 = Some(h.finalize().into());
        }
        let target = (kind == Type::Symlink).then(|| link.expect("symlink without a target"));
        if let Some(t) = &target {
            size = t.len() as u64;
        }
        let device = match kind {
            Type::Char | Type::Block => Some((
                header.device_major().unwrap().unwrap(),
                header.device_minor().unwrap().unwrap(),
            )),
            _ => None,
        };
        let file = Expected {
            node,
            kind,
            mode: header.mode().unwrap() & 0o7777,
            uid: number("uid").unwrap_or_else(|| header.uid().unwrap()),
            gid: number("gid").unwrap_or_else(|| header.gid().unwrap()),
            size,
            mtime,
            target,
            device,
            xattrs,
            sha256,
        };
        paths.insert(path, file);
    }
    paths
}

/// A tar member name as an absolute path in the image: `./usr/bin/` is `/usr/bin`, `./` is `/`.
fn image_path(name: &[u8]) -> String {
    let name = std::str::from_utf8(name).expect("a UTF-8 member name");
    let parts: Vec<&str> = name
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    assert!(!parts.contains(&".."), "{name}: `..` in a member name");
    format!("/{}", parts.join("/"))
}

/// A PAX time (`SECONDS[.FRACTION]`, possibly negative) as seconds and nanoseconds.
fn pax_time(v: &str) -> (i64, u32) {
    let (neg, v) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (sec, frac) = v.split_once('.').unwrap_or((v, ""));
    let sec: i64 = sec.parse().unwrap();
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nsec: u32 = digits.parse().unwrap();
    match (neg, nsec) {
        (false, _) => (sec, nsec),
        (true, 0) => (-sec, 0),
        (true, n) => (-sec - 1, 1_000_000_000 - n),
    }
}

/// `path` as one debugfs argument.
fn quoted(path: &str) -> String {
    assert!(
        !path.contains(['"', '\n']),
        "{path:?}: debugfs cannot take this name in a command file"
    );
    format!("\"{path}\"")
}

/// Runs one debugfs process on `img` with `commands` (a command file in `dir`) and returns each
/// command's output, in order. Errors (such as a missing path) go to stderr, so a failed command
/// has an empty output.
fn debugfs_batch(dir: &Path, img: &Path, commands: &[String]) -> Vec<String> {
    if commands.is_empty() {
        return Vec::new();
    }
    let cmdfile = dir.join("debugfs.cmd");
    std::fs::write(&cmdfile, commands.join("\n") + "\n").unwrap();
    let o = Command::new("debugfs")
        .arg("-f")
        .arg(&cmdfile)
        .arg(img)
        .output()
        .expect("run debugfs");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "debugfs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut outputs: Vec<String> = Vec::with_capacity(commands.len());
    for line in stdout.lines() {
        if line.starts_with("debugfs: ") {
            outputs.push(String::new());
        } else if let Some(out) = outputs.last_mut() {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_eq!(
        outputs.len(),
        commands.len(),
        "debugfs echoed {} of {} commands: {}",
        outputs.len(),
        commands.len(),
        String::from_utf8_lossy(&o.stderr)
    );
    outputs
}

/// What debugfs `stat` shows for one path.
#[derive(Debug)]
struct Shown {
    inode: u64,
    kind: String,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    links: u64,
    mtime: (i64, u32),
    /// A fast symlink's target; a slow one's is in its data block.
    fast_link: Option<Vec<u8>>,
    device: Option<(u32, u32)>,
    xattr_names: Vec<String>,
}

/// `stat` of every path in one debugfs run; a path debugfs cannot find is absent from the map.
fn stat_every_path(
    dir: &Path,
    img: &Path,
    expected: &BTreeMap<String, Expected>,
) -> BTreeMap<String, Shown> {
    let commands: Vec<String> = expected
        .keys()
        .map(|p| format!("stat {}", quoted(p)))
        .collect();
    let outputs = debugfs_batch(dir, img, &commands);
    expected
        .keys()
        .zip(outputs)
        .filter_map(|(p, out)| Some((p.clone(), parse_stat(&out)?)))
        .collect()
}

/// The line of `out` that starts with `prefix` (after leading spaces).
fn line_with<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines().find(|l| l.trim_start().starts_with(prefix))
}

/// The value after `key` in a debugfs line such as `Inode: 12   Type: character special   Mode:
/// 0666`: up to the next run of two spaces or the end of the line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line[line.find(key)? + key.len()..].trim_start();
    Some(rest.split("  ").next().unwrap_or(rest).trim_end())
}

/// Parses debugfs `stat` output; `None` if it shows no inode.
fn parse_stat(out: &str) -> Option<Shown> {
    let first = line_with(out, "Inode:")?;
    let owner = line_with(out, "User:")?;
    let num = |line: &str, key: &str| -> u64 { field(line, key).unwrap().parse().unwrap() };
    let mtime = field(line_with(out, "mtime:")?, "mtime:")?;
    let (lo, extra) = match mtime.split_once(':') {
        Some((lo, rest)) => (lo, rest.split(' ').next().unwrap()),
        None => (mtime.split(' ').next().unwrap(), "0"),
    };
    let lo = u32::from_str_radix(lo.trim_start_matches("0x"), 16).unwrap();
    let extra = u32::from_str_radix(extra, 16).unwrap();
    let fast_link = line_with(out, "Fast link dest:").map(|l| {
        let (a, b) = (l.find('"').unwrap(), l.rfind('"').unwrap());
        l.as_bytes()[a + 1..b].to_vec()
    });
    let device = line_with(out, "Device major/minor number:").map(|l| {
        let v = field(l, "number:").unwrap();
        let (major, minor) = v.split(' ').next().unwrap().split_once(':').unwrap();
        (major.parse().unwrap(), minor.parse().unwrap())
    });
    let xattr_names = out
        .lines()
        .skip_while(|l| !l.starts_with("Extended attributes:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim_start().split(" (").next().unwrap().to_string())
        .collect();
    Some(Shown {
        inode: num(first, "Inode:"),
        kind: field(first, "Type:")?.to_string(),
        mode: u32::from_str_radix(field(first, "Mode:")?, 8).unwrap(),
        uid: num(owner, "User:"),
        gid: num(owner, "Group:"),
        size: num(owner, "Size:"),
        links: num(line_with(out, "Links:")?, "Links:"),
        // The extra field holds two more epoch bits and the nanoseconds.
        mtime: (
            i64::from(lo as i32) + (i64::from(extra & 3) << 32),
            extra >> 2,
        ),
        fast_link,
        device,
        xattr_names,
    })
}

/// Every path whose type, mode, owner, size, mtime, device numbers or xattr names differ from the
/// tar's, or that debugfs does not find.
fn metadata_mismatches(
    expected: &BTreeMap<String, Expected>,
    shown: &BTreeMap<String, Shown>,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (path, e) in expected {
        let Some(s) = shown.get(path) else {
            bad.push(format!("{path}: not in the image"));
            continue;
        };
        let mut differ = |what: &str, tar: String, image: String| {
            if tar != image {
                bad.push(format!(
                    "{path}: {what} {tar} in the tar, {image} in the image"
                ));
            }
        };
        differ("type", e.kind.debugfs_name().into(), s.kind.clone());
        differ("mode", format!("{:04o}", e.mode), format!("{:04o}", s.mode));
        differ("uid", e.uid.to_string(), s.uid.to_string());
        differ("gid", e.gid.to_string(), s.gid.to_string());
        if e.kind != Type::Directory {
            differ("size", e.size.to_string(), s.size.to_string());
        }
        differ("mtime", format!("{:?}", e.mtime), format!("{:?}", s.mtime));
        differ(
            "device",
            format!("{:?}", e.device),
            format!("{:?}", s.device),
        );
        let names: Vec<String> = e.xattrs.keys().cloned().collect();
        differ(
            "xattrs",
            format!("{names:?}"),
            format!("{:?}", s.xattr_names),
        );
    }
    bad
}

/// Hard links that are not one inode with as many links as names, and distinct files that share
/// an inode.
fn hard_link_mismatches(
    expected: &BTreeMap<String, Expected>,
    shown: &BTreeMap<String, Shown>,
) -> Vec<String> {
    let mut bad = Vec::new();
    let mut names: HashMap<usize, Vec<&str>> = HashMap::new();
    for (path, e) in expected {
        names.entry(e.node).or_default().push(path);
    }
    let mut inode_owner: HashMap<u64, usize> = HashMap::new();
    for (path, e) in expected {
        let Some(s) = shown.get(path) else { continue };
        let want = names[&e.node].len() as u64;
        if e.kind != Type::Directory && s.links != want {
            bad.push(format!(
                "{path}: {} links in the image, {want} names",
                s.links
            ));
        }
        let owner = *inode_owner.entry(s.inode).or_insert(e.node);
        if owner != e.node {
            bad.push(format!(
                "{path}: inode {} also holds {:?}, which is another file",
                s.inode, names[&owner]
            ));
        }
    }
    bad
}

/// Names that the image's directories hold and the tar does not (other than `/lost+found`), and
/// directories whose link count is not 2 plus their subdirectories, from `ls -p` of every
/// directory in one debugfs run.
fn directory_mismatches(
    dir: &Path,
    img: &Path,
    expected: &BTreeMap<String, Expected>,
    shown: &BTreeMap<String, Shown>,
) -> Vec<String> {
    let dirs: Vec<&String> = expected
        .iter()
        .filter(|(p, e)| e.kind == Type::Directory && shown.contains_key(*p))
        .map(|(p, _)| p)
        .collect();
    let commands: Vec<String> = dirs
        .iter()
        .map(|p| format!("ls -p {}", quoted(p)))
        .collect();
    let outputs = debugfs_batch(dir, img, &commands);
    let mut bad = Vec::new();
    for (path, out) in dirs.into_iter().zip(outputs) {
        let mut subdirs = 0;
        // `/INODE/MODE/UID/GID/NAME/SIZE/`
        for line in out.lines().filter(|l| l.starts_with('/')) {
            let fields: Vec<&str> = line.split('/').collect();
            let (mode, name) = (fields[2], fields[5]);
            if name == "." || name == ".." {
                continue;
            }
            if mode.starts_with("04") {
                subdirs += 1;
            }
            let child = if path == "/" {
                format!("/{name}")
            } else {
                format!("{path}/{name}")
            };
            if !expected.contains_key(&child) && child != "/lost+found" {
                bad.push(format!("{child}: in the image, not in the tar"));
            }
        }
        let links = shown[path].links;
        if links != 2 + subdirs {
            bad.push(format!("{path}: {links} links, {subdirs} subdirectories"));
        }
    }
    bad
}

/// Symlinks whose target differs: a fast symlink's from `stat`, a slow one's read with `dump`.
fn symlink_mismatches(
    dir: &Path,
    img: &Path,
    expected: &BTreeMap<String, Expected>,
    shown: &BTreeMap<String, Shown>,
) -> Vec<String> {
    let out = dir.join("slow-links");
    std::fs::create_dir(&out).unwrap();
    let mut slow = Vec::new();
    let mut bad = Vec::new();
    for (path, e) in expected {
        let (Some(target), Some(s)) = (&e.target, shown.get(path)) else {
            continue;
        };
        match &s.fast_link {
            Some(fast) if fast != target => bad.push(format!(
                "{path}: symlink to {:?} in the tar, {:?} in the image",
                String::from_utf8_lossy(target),
                String::from_utf8_lossy(fast)
            )),
            Some(_) => {}
            None => slow.push((path, target)),
        }
    }
    let commands: Vec<String> = (0..slow.len())
        .map(|i| {
            format!(
                "dump {} {}",
                quoted(slow[i].0),
                quoted(s(&out.join(i.to_string())))
            )
        })
        .collect();
    debugfs_batch(dir, img, &commands);
    for (i, (path, target)) in slow.into_iter().enumerate() {
        let got = std::fs::read(out.join(i.to_string())).unwrap_or_default();
        if &got != target {
            bad.push(format!(
                "{path}: slow symlink to {:?} in the tar, {:?} in the image",
                String::from_utf8_lossy(target),
                String::from_utf8_lossy(&got)
            ));
        }
    }
    bad
}

/// Xattr values that differ, read with `ea_get -x` in one debugfs run (names are checked with
/// the rest of the metadata). POSIX ACLs compare as ACLs: debugfs converts ext4's on-disk form
/// back to the xattr form with 0 where the tar has -1 as the unused qualifier of `USER_OBJ`,
/// `GROUP_OBJ`, `MASK` and `OTHER`.
fn xattr_mismatches(
    dir: &Path,
    img: &Path,
    expected: &BTreeMap<String, Expected>,
    shown: &BTreeMap<String, Shown>,
) -> Vec<String> {
    let wanted: Vec<(&String, &String, &Vec<u8>)> = expected
        .iter()
        .filter(|(p, _)| shown.contains_key(*p))
        .flat_map(|(p, e)| e.xattrs.iter().map(move |(n, v)| (p, n, v)))
        .collect();
    let commands: Vec<String> = wanted
        .iter()
        .map(|(p, n, _)| format!("ea_get -x {} {}", quoted(p), quoted(n)))
        .collect();
    let outputs = debugfs_batch(dir, img, &commands);
    let mut bad = Vec::new();
    for ((path, name, tar), out) in wanted.into_iter().zip(outputs) {
        let image = parse_hex_xattr(&out);
        let same = match (name.starts_with("system.posix_acl_"), &image) {
            (true, Some(v)) => acl_entries(tar).is_some() && acl_entries(tar) == acl_entries(v),
            (_, Some(v)) => v == tar,
            (_, None) => false,
        };
        if !same {
            bad.push(format!(
                "{path}: xattr {name} is {tar:02x?} in the tar, {image:02x?} in the image"
            ));
        }
    }
    bad
}

/// The value in `ea_get -x` output (`NAME (LEN) = 0a 1b ...`); `None` if there is none.
fn parse_hex_xattr(out: &str) -> Option<Vec<u8>> {
    let line = out.lines().find(|l| !l.trim().is_empty())?;
    let Some((_, hex)) = line.split_once(" = ") else {
        return line.ends_with(" (0)").then(Vec::new);
    };
    hex.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect()
}

/// A POSIX ACL in the xattr form (version 2, then 8-byte tag/perm/id entries) as (tag, perm, id)
/// with the id kept only where it means something: named users (tag 2) and groups (tag 8).
fn acl_entries(v: &[u8]) -> Option<Vec<(u16, u16, Option<u32>)>> {
    let le16 = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
    let body = v.strip_prefix(&[2, 0, 0, 0])?;
    if body.len() % 8 != 0 {
        return None;
    }
    Some(
        body.chunks(8)
            .map(|e| {
                let tag = le16(&e[0..]);
                let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
                (tag, le16(&e[2..]), matches!(tag, 2 | 8).then_some(id))
            })
            .collect(),
    )
}

/// Regular files whose content differs from the tar member's: each file (one name per hard-linked
/// set) is dumped in one debugfs run into `dir`, then hashed and deleted.
fn content_mismatches(
    dir: &Path,
    img: &Path,
    expected: &BTreeMap<String, Expected>,
) -> Vec<String> {
    let out = dir.join("contents");
    std::fs::create_dir(&out).unwrap();
    let mut files: BTreeMap<usize, (&String, [u8; 32])> = BTreeMap::new();
    for (path, e) in expected {
        if let Some(h) = e.sha256 {
            files.entry(e.node).or_insert((path, h));
        }
    }
    let commands: Vec<String> = files
        .iter()
        .map(|(node, (path, _))| {
            format!(
                "dump {} {}",
                quoted(path),
                quoted(s(&out.join(node.to_string())))
            )
        })
        .collect();
    debugfs_batch(dir, img, &commands);
    let mut bad = Vec::new();
    for (node, (path, want)) in files {
        let dumped = out.join(node.to_string());
        if !dumped.exists() {
            bad.push(format!("{path}: debugfs could not dump it"));
            continue;
        }
        if sha256(&dumped) != want {
            bad.push(format!("{path}: content differs from the tar member"));
        }
        std::fs::remove_file(&dumped).unwrap();
    }
    bad
}
