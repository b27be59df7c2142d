//! Loading kernel modules with their dependencies, from `modules.dep`, as `modprobe` does:
//! by name, or for the devices present (their `modalias` under `/sys/devices` matched against
//! `modules.alias`, as udev does). Uncompressed modules only, which is what `finit_module`
//! takes without decompression support.

use std::path::{Path, PathBuf};

use crate::sys;

/// Largest `modules.dep` read (a full distribution kernel's is about 1 MiB).
const MAX_DEP_FILE: u64 = 16 << 20;

/// Largest `modules.alias` read.
const MAX_ALIAS_FILE: u64 = 32 << 20;
/// Deepest directory walked under `/sys/devices`, and most `modalias` files read.
const MAX_SYSFS_DEPTH: usize = 24;
const MAX_DEVICES: usize = 20_000;

/// The module directory of the running kernel: `/lib/modules/<release>` or
/// `/usr/lib/modules/<release>`.
fn module_dir() -> Result<PathBuf, String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("reading /proc/sys/kernel/osrelease: {e}"))?;
    let release = release.trim();
    ["/lib/modules", "/usr/lib/modules"]
        .iter()
        .map(|d| Path::new(d).join(release))
        .find(|d| d.join("modules.dep").is_file())
        .ok_or_else(|| format!("no modules.dep for kernel {release}"))
}

/// The files to load for module `name`, dependencies first, from the text of `modules.dep`
/// (`path/name.ko: dep1.ko dep2.ko`, each line listing the module's dependencies with the
/// deepest last). None if the module is not listed.
pub fn load_order(dep: &str, name: &str) -> Option<Vec<String>> {
    let want = name.replace('-', "_");
    dep.lines().find_map(|line| {
        let (module, deps) = line.split_once(':')?;
        let base = module.rsplit('/').next()?;
        let stem = base.split(".ko").next()?.replace('-', "_");
        if stem != want {
            return None;
        }
        let mut order: Vec<String> = deps.split_whitespace().rev().map(str::to_string).collect();
        order.push(module.trim().to_string());
        Some(order)
    })
}

fn read_limited(path: &Path, max: u64) -> Result<String, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > max {
        return Err(format!("{}: {len} bytes, more than {max}", path.display()));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Loads module `name` with its dependencies; one already loaded is not an error.
pub fn load(name: &str) -> Result<(), String> {
    let dir = module_dir()?;
    let dep = read_limited(&dir.join("modules.dep"), MAX_DEP_FILE)?;
    load_with(&dir, &dep, name)
}

/// Loads the modules whose aliases match the `modalias` of a device under `/sys/devices`, as
/// udev's coldplug does. Returns the names of the modules loaded (or already loaded).
pub fn load_for_devices() -> Result<Vec<String>, String> {
    let dir = module_dir()?;
    let dep = read_limited(&dir.join("modules.dep"), MAX_DEP_FILE)?;
    let aliases = read_limited(&dir.join("modules.alias"), MAX_ALIAS_FILE)?;
    let aliases = parse_aliases(&aliases);
    let mut wanted: Vec<String> = Vec::new();
    for modalias in device_modaliases(Path::new("/sys/devices")) {
        for (pattern, module) in &aliases {
            if !wanted.contains(module) && glob(pattern.as_bytes(), modalias.as_bytes()) {
                wanted.push(module.clone());
            }
        }
    }
    let mut loaded = Vec::new();
    for m in wanted {
        if load_with(&dir, &dep, &m).is_ok() {
            loaded.push(m);
        }
    }
    Ok(loaded)
}

/// `(pattern, module)` of each `alias PATTERN MODULE` line of `modules.alias`.
pub fn parse_aliases(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "alias").then_some(())?;
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

/// The contents of every `modalias` file below `root`, bounded in depth and count.
fn device_modaliases(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else {
                continue;
            };
            // Real directories only: sysfs links (subsystem, driver, ...) would loop.
            if ft.is_dir() && depth < MAX_SYSFS_DEPTH {
                stack.push((e.path(), depth + 1));
            } else if ft.is_file() && e.file_name() == "modalias" && out.len() < MAX_DEVICES {
                if let Ok(s) = std::fs::read_to_string(e.path()) {
                    let s = s.trim();
                    if !s.is_empty() {
                        out.push(s.to_string());
                    }
                }
            }
        }
    }
    out
}

/// `fnmatch` without flags, as `modules.alias` patterns use it: `*`, `?` and `[...]` classes
/// (with `!` or `^` negation and ranges). Iterative, backtracking only to the last `*`.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class(pattern, p, text[t]),
            Some(c) if *c == text[t] => Some(p + 1),
            _ => None,
        };
        match (step, star) {
            (Some(np), _) => {
                p = np;
                t += 1;
            }
            (None, Some((sp, st))) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|c| *c == b'*')
}

/// Matches `c` against the class at `pattern[p] == b'['`: the index after the class if it
/// matches; None if it does not, or if the class is unterminated.
fn class(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    let mut i = p + 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *pattern.get(i)?;
        if lo == b']' && !first {
            break;
        }
        first = false;
        match (pattern.get(i + 1), pattern.get(i + 2)) {
            (Some(b'-'), Some(&hi)) if hi != b']' => {
                matched |= lo <= c && c <= hi;
                i += 3;
            }
            _ => {
                matched |= lo == c;
                i += 1;
            }
        }
    }
    (matched != negate).then_some(i + 1)
}

fn load_with(dir: &Path, dep: &str, name: &str) -> Result<(), String> {
    let order = load_order(dep, name)
        .ok_or_else(|| format!("{name} is not in {}/modules.dep", dir.display()))?;
    for rel in order {
        let path = dir.join(&rel);
        let f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        match sys::finit_module(&f) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(format!("loading {}: {e}", path.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/net/core/failover.ko:\n\
        kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
        kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
        kernel/drivers/block/virtio-blk.ko.xz:\n";

    #[test]
    fn dependencies_load_first_deepest_first() {
        assert_eq!(
            load_order(DEP, "virtio_net").unwrap(),
            vec![
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko"
            ]
        );
        assert_eq!(
            load_order(DEP, "failover").unwrap(),
            vec!["kernel/net/core/failover.ko"]
        );
    }

    #[test]
    fn aliases_parse_and_match_like_fnmatch() {
        let a = parse_aliases(
            "# Aliases extracted from modules themselves.\n\
             alias virtio:d00000001v* virtio_net\n\
             alias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_pci\n\
             alias pci:v00008086d0000100[EF]sv*sd*bc*sc*i* e1000\n\
             bogus line\n",
        );
        assert_eq!(a.len(), 3);
        assert_eq!(a[0], ("virtio:d00000001v*".into(), "virtio_net".into()));
        let dev = |s: &str| {
            a.iter()
                .filter(|(p, _)| glob(p.as_bytes(), s.as_bytes()))
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(dev("virtio:d00000001v00001AF4"), vec!["virtio_net"]);
        assert_eq!(dev("virtio:d00000002v00001AF4"), Vec::<&str>::new());
        assert_eq!(
            dev("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"),
            vec!["virtio_pci"]
        );
        assert_eq!(
            dev("pci:v00008086d0000100Esv00008086sd0000001Ebc02sc00i00"),
            vec!["e1000"]
        );
        assert_eq!(
            dev("pci:v00008086d0000100Asv00008086sd0000001Ebc02sc00i00"),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn glob_edge_cases() {
        assert!(glob(b"", b""));
        assert!(glob(b"*", b""));
        assert!(!glob(b"", b"a"));
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"axxbyy"));
        assert!(glob(b"a?c", b"abc"));
        assert!(glob(b"[!a]x", b"bx"));
        assert!(!glob(b"[!a]x", b"ax"));
        assert!(glob(b"[]]", b"]"));
        assert!(!glob(b"[ab", b"a"));
        assert!(glob(b"*[0-9]", b"abc7"));
    }

    proptest::proptest! {
        #[test]
        fn glob_never_panics(p in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
                             t in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let _ = glob(&p, &t);
        }

        #[test]
        fn glob_literal_matches_itself(t in "[a-z0-9:]{0,40}") {
            proptest::prop_assert!(glob(t.as_bytes(), t.as_bytes()));
        }
    }

    #[test]
    fn dashes_and_underscores_are_the_same_and_unknown_is_none() {
        assert_eq!(
            load_order(DEP, "virtio_blk").unwrap(),
            vec!["kernel/drivers/block/virtio-blk.ko.xz"]
        );
        assert_eq!(load_order(DEP, "e1000"), None);
        assert_eq!(load_order(DEP, "net"), None);
    }
}
