//! GRUB EFI: the image's monolithic (signed) GRUB, behind shim when the image has it, with a
//! generated `grub.cfg` that boots the kernel from the root filesystem.
//!
//! Debian's signed GRUB has the prefix `/EFI/debian` on the device it was loaded from and an
//! embedded configuration that sources `$prefix/grub.cfg`, else `$cmdpath/grub.cfg`: the
//! configuration goes in both `EFI/debian/` and `EFI/BOOT/`.

use bytes::Bytes;
use stamp_fs::{Content, Timestamp, Tree};

use super::files::{EspBuilder, list, regular};
use super::systemd_boot::title;
use super::uki::file;
use super::{Arch, BootRequest, Kernel};
use crate::{Error, Result};

/// The GRUB and shim files found in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The monolithic GRUB EFI image.
    pub grub: String,
    /// shim, if the image has it.
    pub shim: Option<String>,
    /// shim's MokManager, if the image has it.
    pub mok_manager: Option<String>,
}

fn names(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::X86_64 => ("x86_64", "x64"),
        Arch::Aarch64 => ("arm64", "aa64"),
    }
}

/// Finds a monolithic GRUB (Debian's signed one, or the unsigned monolithic build) and shim.
/// `Ok(None)` when there is no GRUB EFI at all; [`Error::Boot`] when only GRUB's modules are
/// there (`grub-efi-amd64-bin` without a monolithic image).
pub fn find(tree: &Tree, arch: Arch) -> Result<Option<Found>> {
    let (platform, short) = names(arch);
    let candidates = [
        format!("/usr/lib/grub/{platform}-efi-signed/grub{short}.efi.signed"),
        format!("/usr/lib/grub/{platform}-efi/monolithic/grub{short}.efi"),
    ];
    let Some(grub) = candidates
        .iter()
        .find_map(|p| regular(tree, p).map(|(p, _)| p))
    else {
        let modules = format!("/usr/lib/grub/{platform}-efi");
        if list(tree, &modules)
            .iter()
            .any(|(n, _)| n.ends_with(".mod"))
        {
            return Err(Error::Boot(format!(
                "the image has GRUB's {platform}-efi modules ({modules}) but no monolithic GRUB \
                 EFI image: stamp installs a prebuilt GRUB and does not run grub-mkimage; \
                 install grub-efi-{}-signed (and shim-signed) in the image, or \
                 systemd-boot-efi",
                if arch == Arch::X86_64 {
                    "amd64"
                } else {
                    "arm64"
                }
            )));
        }
        return Ok(None);
    };
    let first = |paths: [String; 2]| paths.iter().find_map(|p| regular(tree, p).map(|(p, _)| p));
    Ok(Some(Found {
        grub,
        shim: first([
            format!("/usr/lib/shim/shim{short}.efi.signed"),
            format!("/usr/lib/shim/shim{short}.efi"),
        ]),
        mok_manager: first([
            format!("/usr/lib/shim/mm{short}.efi.signed"),
            format!("/usr/lib/shim/mm{short}.efi"),
        ]),
    }))
}

/// Quotes `word` for GRUB's shell when it holds anything but plain characters.
fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The generated grub.cfg: serial and screen console, no menu delay, the root filesystem found
/// by UUID, the kernel and initrd loaded from it.
pub fn config(title: &str, root_fs_uuid: &str, cmdline: &str, kernel: &Kernel) -> String {
    let mut linux = format!("linux {}", quote(&kernel.vmlinuz));
    for w in cmdline.split_whitespace() {
        linux.push(' ');
        linux.push_str(&quote(w));
    }
    let mut cfg = format!(
        "set default=0\n\
         set timeout=0\n\
         set timeout_style=hidden\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         search --no-floppy --fs-uuid --set=root {root_fs_uuid}\n\
         menuentry {} {{\n\
         \t{linux}\n",
        quote(title)
    );
    if let Some(initrd) = &kernel.initrd {
        cfg.push_str(&format!("\tinitrd {}\n", quote(initrd)));
    }
    cfg.push_str("}\n");
    cfg
}

/// Installs GRUB (behind shim when there is one) and its configuration in `esp`.
pub fn install(
    req: &BootRequest<'_>,
    kernel: &Kernel,
    found: &Found,
    esp: &mut EspBuilder,
) -> Result<()> {
    let tree = req.tree;
    let uuid = &req.root_fs_uuid;
    if uuid.is_empty() || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(Error::InvalidOption(format!(
            "root filesystem UUID '{uuid}' for GRUB's search --fs-uuid is not a UUID"
        )));
    }
    let (_, short) = names(req.arch);
    let boot = super::removable_name(req.arch);
    let (grub, t) = file(tree, &found.grub, "GRUB")?;
    if let Some(shim) = &found.shim {
        let (s, st) = file(tree, shim, "shim")?;
        esp.file(&format!("EFI/BOOT/{boot}"), s.clone(), st)?;
        esp.file(&format!("EFI/BOOT/grub{short}.efi"), grub.clone(), t)?;
        if let Some(mm) = &found.mok_manager {
            let (m, mt) = file(tree, mm, "MokManager")?;
            esp.file(&format!("EFI/BOOT/mm{short}.efi"), m.clone(), mt)?;
        }
    } else {
        esp.file(&format!("EFI/BOOT/{boot}"), grub.clone(), t)?;
    }
    let cfg = config(&title(tree)?, uuid, &req.cmdline, kernel);
    let cfg = Content::Bytes(Bytes::from(cfg));
    esp.file("EFI/debian/grub.cfg", cfg.clone(), Timestamp::default())?;
    esp.file("EFI/BOOT/grub.cfg", cfg, Timestamp::default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_quotes_what_grub_would_interpret() {
        let k = Kernel {
            version: "6.1".into(),
            vmlinuz: "/boot/vmlinuz-6.1".into(),
            initrd: Some("/boot/initrd.img-6.1".into()),
        };
        let c = config(
            "Debian GNU/Linux 12 (bookworm)",
            "0a1b-2c",
            "root=PARTUUID=x rw console=ttyS0,115200 a=$x;b",
            &k,
        );
        assert!(c.contains("search --no-floppy --fs-uuid --set=root 0a1b-2c\n"));
        assert!(c.contains("menuentry 'Debian GNU/Linux 12 (bookworm)' {\n"));
        assert!(c.contains(
            "\tlinux /boot/vmlinuz-6.1 root=PARTUUID=x rw console=ttyS0,115200 'a=$x;b'\n"
        ));
        assert!(c.contains("\tinitrd /boot/initrd.img-6.1\n"));
        assert!(c.contains("set timeout=0\n"));
        assert!(c.contains("serial --unit=0 --speed=115200\n"));
        assert_eq!(quote("it's"), "'it'\\''s'");
    }
}
