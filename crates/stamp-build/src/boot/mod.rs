//! Boot files: find the kernel and initrd in the image and make what goes on the EFI System
//! Partition.
//!
//! In order of preference: a Unified Kernel Image built from the image's systemd-stub
//! (`\EFI\BOOT\BOOTX64.EFI`), systemd-boot with a loader entry, or GRUB EFI (shim + signed GRUB,
//! or GRUB alone) with a generated `grub.cfg`.

use stamp_fs::Tree;

use crate::Result;

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
pub fn find_kernel(tree: &Tree) -> Result<Option<Kernel>> {
    let _ = tree;
    Err(crate::Error::Boot("find_kernel: not written yet".into()))
}

/// Makes the ESP's files for `req`. Errors: [`crate::Error::NoKernel`] (with how to add one)
/// when the tree has no kernel; [`crate::Error::Boot`] when it has no stub, systemd-boot or GRUB
/// EFI.
pub fn boot_files(req: &BootRequest<'_>) -> Result<BootFiles> {
    let _ = req;
    Err(crate::Error::Boot("boot_files: not written yet".into()))
}
