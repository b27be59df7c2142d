//! The essential filesystems: proc, sysfs, devtmpfs, devpts, shm, /run, /tmp, cgroup2. What is
//! mounted already (the initramfs moves /dev, /proc, /sys and /run into the root) is kept; a
//! mount point that cannot be created (read-only root) is skipped with a warning. An image that
//! ships files in /tmp (a flake's `--include-path /tmp/...`) keeps them: no tmpfs hides them.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::sys;

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// (source, target, type, flags, data), in mount order.
const MOUNTS: [(&str, &str, &str, libc::c_ulong, &str); 8] = [
    ("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", NOSUID | NODEV | NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", NOSUID, "mode=0755"),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        NOSUID | NOEXEC,
        "mode=0620,gid=5,ptmxmode=0666",
    ),
    ("tmpfs", "/dev/shm", "tmpfs", NOSUID | NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", NOSUID | NODEV, "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", NOSUID | NODEV, "mode=1777"),
    (
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID | NODEV | NOEXEC,
        "",
    ),
];

/// Returns true if and only if `path` is a mount point (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    let (Ok(m), Some(Ok(pm))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    m.dev() != pm.dev() || m.ino() == pm.ino()
}

/// Returns true if and only if `dir` is a directory with at least one entry.
fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Mounts what is missing. Returns the warnings (printed by the caller once the console is
/// usable).
pub fn mount_all() -> Vec<String> {
    let mut warnings = Vec::new();
    for (src, target, fstype, flags, data) in MOUNTS {
        let t = Path::new(target);
        if is_mount_point(t) || (target == "/tmp" && has_entries(t)) {
            continue;
        }
        if fstype == "cgroup2" && !t.is_dir() {
            continue; // sysfs makes it; an old kernel without cgroup2 does not
        }
        if let Err(e) = std::fs::create_dir_all(t) {
            warnings.push(format!("warning: cannot create {target}: {e}"));
            continue;
        }
        if let Err(e) = sys::mount(src, target, fstype, flags, data) {
            warnings.push(format!("warning: mounting {fstype} on {target}: {e}"));
        }
    }
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if std::fs::symlink_metadata(link).is_err() {
            let _ = std::os::unix::fs::symlink(to, link);
        }
    }
    warnings
}
