//! Finding the kernel and initrd in an image, and comparing versions like `sort -V`.

use std::cmp::Ordering;

use stamp_fs::Tree;

use super::Kernel;
use super::files::{list, regular};
use crate::Result;

/// A kernel found, with how it ranks against others of the same version.
struct Candidate {
    kernel: Kernel,
    /// Found in `/boot` (preferred over the module directory for the same version).
    in_boot: bool,
}

/// See [`super::find_kernel`].
pub fn find_kernel(tree: &Tree) -> Result<Option<Kernel>> {
    let mut found: Vec<Candidate> = Vec::new();
    for (name, path) in list(tree, "/boot") {
        let Some(version) = name.strip_prefix("vmlinuz-") else {
            continue;
        };
        if version.is_empty() {
            continue;
        }
        let Some((vmlinuz, _)) = regular(tree, &path) else {
            continue;
        };
        let initrd = [
            format!("/boot/initrd.img-{version}"),
            format!("/boot/initramfs-{version}.img"),
            format!("/boot/initrd-{version}"),
        ]
        .iter()
        .find_map(|p| regular(tree, p).map(|(p, _)| p));
        found.push(Candidate {
            kernel: Kernel {
                version: version.to_string(),
                vmlinuz,
                initrd,
            },
            in_boot: true,
        });
    }
    for (version, dir) in list(tree, "/usr/lib/modules") {
        let Some((vmlinuz, _)) = regular(tree, &format!("{dir}/vmlinuz")) else {
            continue;
        };
        let initrd = regular(tree, &format!("{dir}/initramfs.img")).map(|(p, _)| p);
        found.push(Candidate {
            kernel: Kernel {
                version,
                vmlinuz,
                initrd,
            },
            in_boot: false,
        });
    }
    if found.is_empty() {
        // Only the conventional symlinks at the root (`/vmlinuz` → a kernel elsewhere).
        if let Some((vmlinuz, _)) = regular(tree, "/vmlinuz") {
            let name = vmlinuz.rsplit('/').next().unwrap_or_default();
            let version = name.strip_prefix("vmlinuz-").unwrap_or(name).to_string();
            let initrd = regular(tree, "/initrd.img").map(|(p, _)| p);
            found.push(Candidate {
                kernel: Kernel {
                    version,
                    vmlinuz,
                    initrd,
                },
                in_boot: true,
            });
        }
    }
    Ok(found
        .into_iter()
        .max_by(|a, b| {
            version_cmp(&a.kernel.version, &b.kernel.version)
                .then(a.kernel.initrd.is_some().cmp(&b.kernel.initrd.is_some()))
                .then(a.in_boot.cmp(&b.in_boot))
        })
        .map(|c| c.kernel))
}

/// Compares two versions as `sort -V` (GNU filevercmp's `verrevcmp`) does: runs of digits
/// compare as numbers, other runs character by character with `~` before everything (even the
/// end), letters before other characters.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0usize, 0usize);
    while i < a.len() || j < b.len() {
        // Non-digit prefix.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ca = order(a.get(i).copied());
            let cb = order(b.get(j).copied());
            if ca != cb {
                return ca.cmp(&cb);
            }
            i += 1;
            j += 1;
        }
        // Digit run: skip leading zeros, then longer is larger, then lexical.
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let si = i;
        let sj = j;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let (da, db) = (&a[si..i], &b[sj..j]);
        match da.len().cmp(&db.len()).then_with(|| da.cmp(db)) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    Ordering::Equal
}

/// The weight of a character in a non-digit run (`None` is the end of the run or string).
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use stamp_fs::Timestamp;

    use crate::boot::files::tests::link;

    fn file(t: &mut Tree, p: &str) {
        crate::boot::files::tests::file(t, p, b"x");
    }

    #[test]
    fn versions_sort_like_sort_v() {
        let mut v = vec![
            "6.1.0-9-amd64",
            "6.1.0-10-amd64",
            "5.10.0-28-amd64",
            "6.1.0-10-amd64~rc1",
            "6.10.1",
            "6.9.12",
            "6.1.0-rc1",
            "6.1.0",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            [
                "5.10.0-28-amd64",
                "6.1.0",
                "6.1.0-9-amd64",
                "6.1.0-10-amd64~rc1",
                "6.1.0-10-amd64",
                "6.1.0-rc1",
                "6.9.12",
                "6.10.1",
            ]
        );
        assert_eq!(version_cmp("1.02", "1.2"), Ordering::Equal);
    }

    #[test]
    fn highest_boot_kernel_wins_with_its_initrd() {
        let mut t = Tree::default();
        file(&mut t, "boot/vmlinuz-6.1.0-9-cloud-amd64");
        file(&mut t, "boot/initrd.img-6.1.0-9-cloud-amd64");
        file(&mut t, "boot/vmlinuz-6.1.0-10-cloud-amd64");
        file(&mut t, "boot/initrd.img-6.1.0-10-cloud-amd64");
        file(&mut t, "boot/config-6.1.0-28-cloud-amd64");
        link(&mut t, "vmlinuz", "boot/vmlinuz-6.1.0-9-cloud-amd64");
        let k = find_kernel(&t).unwrap().unwrap();
        assert_eq!(k.version, "6.1.0-10-cloud-amd64");
        assert_eq!(k.vmlinuz, "/boot/vmlinuz-6.1.0-10-cloud-amd64");
        assert_eq!(
            k.initrd.as_deref(),
            Some("/boot/initrd.img-6.1.0-10-cloud-amd64")
        );
    }

    #[test]
    fn bootc_layout_in_usr_lib_modules_through_a_symlinked_boot() {
        let mut t = Tree::default();
        file(&mut t, "usr/lib/modules/6.12.0-55.el10.x86_64/vmlinuz");
        file(
            &mut t,
            "usr/lib/modules/6.12.0-55.el10.x86_64/initramfs.img",
        );
        file(&mut t, "usr/lib/modules/6.11.0/vmlinuz");
        // A dangling /boot symlink and a module directory without a kernel are ignored.
        link(&mut t, "boot", "/nowhere");
        t.make_dirs(b"usr/lib/modules/7.0-extra", Timestamp::default())
            .unwrap();
        let k = find_kernel(&t).unwrap().unwrap();
        assert_eq!(k.version, "6.12.0-55.el10.x86_64");
        assert_eq!(k.vmlinuz, "/usr/lib/modules/6.12.0-55.el10.x86_64/vmlinuz");
        assert_eq!(
            k.initrd.as_deref(),
            Some("/usr/lib/modules/6.12.0-55.el10.x86_64/initramfs.img")
        );
    }

    #[test]
    fn kernels_behind_symlinks_and_root_links_only() {
        let mut t = Tree::default();
        file(&mut t, "opt/k/vmlinuz-6.2");
        file(&mut t, "opt/k/initrd.img-6.2");
        link(&mut t, "vmlinuz", "opt/k/vmlinuz-6.2");
        link(&mut t, "initrd.img", "/opt/k/initrd.img-6.2");
        let k = find_kernel(&t).unwrap().unwrap();
        assert_eq!(k.version, "6.2");
        assert_eq!(k.vmlinuz, "/opt/k/vmlinuz-6.2");
        assert_eq!(k.initrd.as_deref(), Some("/opt/k/initrd.img-6.2"));
        // /boot/vmlinuz-X itself a symlink.
        let mut t = Tree::default();
        file(&mut t, "usr/lib/modules/6.3/vmlinuz");
        link(&mut t, "boot/vmlinuz-6.3", "../usr/lib/modules/6.3/vmlinuz");
        file(&mut t, "boot/initramfs-6.3.img");
        let k = find_kernel(&t).unwrap().unwrap();
        assert_eq!(k.vmlinuz, "/usr/lib/modules/6.3/vmlinuz");
        assert_eq!(k.initrd.as_deref(), Some("/boot/initramfs-6.3.img"));
    }

    #[test]
    fn no_kernel_is_none() {
        let mut t = Tree::default();
        file(&mut t, "boot/config-6.1");
        link(&mut t, "vmlinuz", "boot/vmlinuz-6.1");
        assert!(find_kernel(&t).unwrap().is_none());
    }
}
