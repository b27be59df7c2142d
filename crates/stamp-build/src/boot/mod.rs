//! Boot files: find the kernel and initrd in the image and make what goes on the EFI System
//! Partition.
//!
//! In order of preference: a Unified Kernel Image built from the image's systemd-stub
//! (`\EFI\BOOT\BOOTX64.EFI`), systemd-boot with a loader entry, or GRUB EFI (shim + signed GRUB,
//! or GRUB alone) with a generated `grub.cfg`.

pub mod files;
pub mod grub;
mod kernel;
pub mod pe;
pub mod systemd_boot;
pub mod uki;

use stamp_fs::Tree;

use crate::{Error, Result};

pub use kernel::version_cmp;

/// The CPU architecture the disk boots on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arch {
    /// x86-64 (`BOOTX64.EFI`, `linuxx64.efi.stub`).
    #[default]
    X86_64,
    /// 64-bit ARM (`BOOTAA64.EFI`, `linuxaa64.efi.stub`).
    Aarch64,
}

/// How the disk boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMethod {
    /// A Unified Kernel Image made from the image's systemd-stub.
    Uki,
    /// systemd-boot with a loader entry.
    SystemdBoot,
    /// GRUB EFI (with shim when the image has it) and a generated grub.cfg.
    Grub,
}

/// The kernel and initrd found in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The kernel release (`6.1.0-28-cloud-amd64`), from the file or module directory name.
    pub version: String,
    /// Path of the kernel image in the tree (`/boot/vmlinuz-…` or `/usr/lib/modules/…/vmlinuz`).
    pub vmlinuz: String,
    /// Path of the initrd in the tree, if there is one.
    pub initrd: Option<String>,
}

/// What the boot files are made from.
#[derive(Debug, Clone)]
pub struct BootRequest<'a> {
    /// The image's root filesystem tree (after the recipe was applied).
    pub tree: &'a Tree,
    /// The full kernel command line (`root=PARTUUID=… rw console=…`).
    pub cmdline: String,
    /// The architecture.
    pub arch: Arch,
    /// The root filesystem's UUID (textual, lower case), for GRUB's `search --fs-uuid`.
    pub root_fs_uuid: String,
    /// Force a method instead of the first the image supports.
    pub method: Option<BootMethod>,
}

/// The files of the EFI System Partition, and how they boot.
#[derive(Debug)]
pub struct BootFiles {
    /// The ESP's contents (directories `EFI/BOOT`, … and files), ready for the FAT writer.
    pub esp: Tree,
    /// The method used.
    pub method: BootMethod,
    /// The kernel booted.
    pub kernel: Kernel,
}

/// Finds the kernel and initrd in `tree`: `/boot/vmlinuz-*` with `/boot/initrd.img-*` (or
/// `initramfs-*.img`), or `/usr/lib/modules/*/vmlinuz` with `initramfs.img` beside it. When there
/// are several, the highest version wins. `Ok(None)` when there is none.
///
/// Symlinks are resolved inside the tree (relative and absolute, at most
/// [`files::MAX_SYMLINKS`] per path); the paths returned are canonical (`/vmlinuz` →
/// `/boot/vmlinuz-…`). Without either layout, the `/vmlinuz` and `/initrd.img` links are used.
pub fn find_kernel(tree: &Tree) -> Result<Option<Kernel>> {
    kernel::find_kernel(tree)
}

/// The removable-media boot file name (`BOOTX64.EFI`, `BOOTAA64.EFI`).
pub fn removable_name(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "BOOTX64.EFI",
        Arch::Aarch64 => "BOOTAA64.EFI",
    }
}

/// The methods `tree` supports, in order of preference, and GRUB's files if it has them.
fn available(tree: &Tree, arch: Arch) -> Result<(Vec<BootMethod>, Option<grub::Found>)> {
    let mut methods = Vec::new();
    if files::regular(tree, uki::stub_path(arch)).is_some() {
        methods.push(BootMethod::Uki);
    }
    if files::regular(tree, systemd_boot::loader_path(arch)).is_some() {
        methods.push(BootMethod::SystemdBoot);
    }
    // Only GRUB's modules is an error only when nothing else can boot.
    let found = match grub::find(tree, arch) {
        Ok(f) => f,
        Err(e) if methods.is_empty() => return Err(e),
        Err(_) => None,
    };
    if found.is_some() {
        methods.push(BootMethod::Grub);
    }
    Ok((methods, found))
}

/// Makes the ESP's files for `req`. Errors: [`crate::Error::NoKernel`] (with how to add one)
/// when the tree has no kernel; [`crate::Error::Boot`] when it has no stub, systemd-boot or GRUB
/// EFI.
///
/// The ESP's directories have time 0 and its files the time of the image file they come from
/// (the UKI: the newest of stub, kernel and initrd; generated configuration: 0), so the same
/// tree always gives the same ESP.
pub fn boot_files(req: &BootRequest<'_>) -> Result<BootFiles> {
    let (pkg, grub_pkg) = match req.arch {
        Arch::X86_64 => ("linux-image-cloud-amd64", "grub-efi-amd64-signed"),
        Arch::Aarch64 => ("linux-image-cloud-arm64", "grub-efi-arm64-signed"),
    };
    let kernel = find_kernel(req.tree)?.ok_or_else(|| Error::NoKernel {
        detail: format!(
            "looked for /boot/vmlinuz-* and /usr/lib/modules/*/vmlinuz; install one in the \
             image (`apt install {pkg}`, `dnf install kernel`), or pass `--kernel REF` to take \
             the kernel, initrd and modules from a separate OCI image"
        ),
    })?;
    let (methods, grub_found) = available(req.tree, req.arch)?;
    let method = match req.method {
        Some(m) if methods.contains(&m) => m,
        Some(m) => {
            let what = match m {
                BootMethod::Uki => format!("systemd-stub ({})", uki::stub_path(req.arch)),
                BootMethod::SystemdBoot => {
                    format!("systemd-boot ({})", systemd_boot::loader_path(req.arch))
                }
                BootMethod::Grub => format!("a monolithic GRUB EFI ({grub_pkg})"),
            };
            return Err(Error::Boot(format!(
                "{m:?} was asked for but the image has no {what}; install systemd-boot-efi \
                 (stub and systemd-boot) or {grub_pkg} in the image"
            )));
        }
        None => *methods.first().ok_or_else(|| {
            Error::Boot(format!(
                "the image has kernel {} but nothing to boot it with: no systemd-stub ({}), \
                 systemd-boot ({}) or GRUB EFI; install systemd-boot-efi (for a Unified \
                 Kernel Image), or {grub_pkg} and shim-signed, in the image",
                kernel.version,
                uki::stub_path(req.arch),
                systemd_boot::loader_path(req.arch)
            ))
        })?,
    };
    let mut esp = files::EspBuilder::new();
    match method {
        BootMethod::Uki => uki::install(req, &kernel, &mut esp)?,
        BootMethod::SystemdBoot => systemd_boot::install(req, &kernel, &mut esp)?,
        BootMethod::Grub => {
            let found = grub_found.ok_or_else(|| Error::Boot("GRUB vanished".into()))?;
            grub::install(req, &kernel, &found, &mut esp)?
        }
    }
    Ok(BootFiles {
        esp: esp.finish(),
        method,
        kernel,
    })
}
