//! Loading a kernel module and its dependencies by name, from `modules.dep`, as `modprobe`
//! does (uncompressed modules only, which is what `finit_module` takes without decompression
//! support).

use std::path::{Path, PathBuf};

use crate::sys;

/// Largest `modules.dep` read (a full distribution kernel's is about 1 MiB).
const MAX_DEP_FILE: u64 = 16 << 20;

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

/// Loads module `name` with its dependencies; one already loaded is not an error.
pub fn load(name: &str) -> Result<(), String> {
    let dir = module_dir()?;
    let dep_path = dir.join("modules.dep");
    let len = std::fs::metadata(&dep_path)
        .map_err(|e| format!("{}: {e}", dep_path.display()))?
        .len();
    if len > MAX_DEP_FILE {
        return Err(format!(
            "{}: {len} bytes, more than {MAX_DEP_FILE}",
            dep_path.display()
        ));
    }
    let dep =
        std::fs::read_to_string(&dep_path).map_err(|e| format!("{}: {e}", dep_path.display()))?;
    let order =
        load_order(&dep, name).ok_or_else(|| format!("{name} is not in {}", dep_path.display()))?;
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
    fn dashes_and_underscores_are_the_same_and_unknown_is_none() {
        assert_eq!(
            load_order(DEP, "virtio_blk").unwrap(),
            vec!["kernel/drivers/block/virtio-blk.ko.xz"]
        );
        assert_eq!(load_order(DEP, "e1000"), None);
        assert_eq!(load_order(DEP, "net"), None);
    }
}
