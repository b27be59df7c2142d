//! systemd-boot: the image's loader as the removable-media boot file, a Boot Loader
//! Specification (type 1) entry, and the kernel and initrd copied to the ESP.

use bytes::Bytes;
use stamp_fs::{Content, Timestamp, Tree};

use super::files::EspBuilder;
use super::uki::{file, os_release};
use super::{Arch, BootRequest, Kernel};
use crate::Result;

/// Where systemd-boot is in an image.
pub fn loader_path(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        Arch::Aarch64 => "/usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
    }
}

/// The directory on the ESP holding the kernels (`/stamp/<version>/linux`).
pub const ENTRY_TOKEN: &str = "stamp";

/// The `PRETTY_NAME` (else `NAME`) of an os-release file, unquoted.
pub fn pretty_name(os_release: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(os_release);
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            let v: String = v.chars().filter(|c| !c.is_control()).collect();
            (!v.is_empty()).then_some(v)
        })
    };
    get("PRETTY_NAME").or_else(|| get("NAME"))
}

/// The entry's title: the image's os-release name, or `Linux`.
pub fn title(tree: &Tree) -> Result<String> {
    Ok(os_release(tree)?
        .and_then(|o| pretty_name(&o))
        .unwrap_or_else(|| "Linux".into()))
}

/// Installs systemd-boot, its configuration and `kernel` in `esp`.
pub fn install(req: &BootRequest<'_>, kernel: &Kernel, esp: &mut EspBuilder) -> Result<()> {
    let tree = req.tree;
    let path = loader_path(req.arch);
    let (loader, t) = file(tree, path, "systemd-boot")?;
    let name = path.rsplit('/').next().unwrap_or_default();
    esp.file(
        &format!("EFI/BOOT/{}", super::removable_name(req.arch)),
        loader.clone(),
        t,
    )?;
    esp.file(&format!("EFI/systemd/{name}"), loader.clone(), t)?;
    let dir = format!("{ENTRY_TOKEN}/{}", kernel.version);
    let (linux, t) = file(tree, &kernel.vmlinuz, "the kernel")?;
    esp.file(&format!("{dir}/linux"), linux.clone(), t)?;
    let mut entry = format!(
        "title {}\nversion {}\nlinux /{dir}/linux\n",
        title(tree)?,
        kernel.version
    );
    if let Some(initrd) = &kernel.initrd {
        let (c, t) = file(tree, initrd, "the initrd")?;
        esp.file(&format!("{dir}/initrd"), c.clone(), t)?;
        entry.push_str(&format!("initrd /{dir}/initrd\n"));
    }
    let cmdline: String = req.cmdline.chars().filter(|c| *c != '\n').collect();
    entry.push_str(&format!("options {cmdline}\n"));
    let text = |s: String| Content::Bytes(Bytes::from(s));
    esp.file(
        "loader/loader.conf",
        text(format!("default {ENTRY_TOKEN}.conf\ntimeout 0\n")),
        Timestamp::default(),
    )?;
    esp.file(
        &format!("loader/entries/{ENTRY_TOKEN}.conf"),
        text(entry),
        Timestamp::default(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pretty_name_is_unquoted() {
        let o = b"NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            pretty_name(o).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(pretty_name(b"NAME=Fedora\n").as_deref(), Some("Fedora"));
        assert_eq!(pretty_name(b"ID=x\n"), None);
    }
}
