//! The Unified Kernel Image: the image's systemd-stub with `.osrel`, `.cmdline`, `.uname`,
//! `.initrd` and `.linux` sections appended, installed as the removable-media boot file.

use stamp_fs::{Content, Timestamp, Tree};

use super::files::{EspBuilder, content, read, regular};
use super::pe::{self, NewSection, SCN_CNT_CODE, SCN_CNT_INITIALIZED_DATA, SCN_MEM_READ};
use super::{Arch, BootRequest, Kernel};
use crate::{Error, Result};

/// Largest os-release file read.
const MAX_OS_RELEASE: u64 = 64 << 10;
/// Largest stub read (systemd's are about 100 KiB).
const MAX_STUB: u64 = 16 << 20;

/// Where systemd-stub is in an image.
pub fn stub_path(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
        Arch::Aarch64 => "/usr/lib/systemd/boot/efi/linuxaa64.efi.stub",
    }
}

/// The image's os-release (`/etc/os-release`, else `/usr/lib/os-release`), if any.
pub fn os_release(tree: &Tree) -> Result<Option<Vec<u8>>> {
    if let Some(b) = read(tree, "/etc/os-release", MAX_OS_RELEASE)? {
        return Ok(Some(b));
    }
    read(tree, "/usr/lib/os-release", MAX_OS_RELEASE)
}

/// The file content and mtime of `path` (a regular file, symlinks resolved), or an error
/// naming what is missing.
pub(crate) fn file<'t>(tree: &'t Tree, path: &str, what: &str) -> Result<(&'t Content, Timestamp)> {
    let (_, e) = regular(tree, path)
        .ok_or_else(|| Error::Boot(format!("{what} {path} is missing or not a regular file")))?;
    let c = content(e).ok_or_else(|| Error::Boot(format!("{what} {path} is not a file")))?;
    Ok((c, e.mtime))
}

/// Builds the UKI for `kernel` from the stub and installs it in `esp` as
/// `EFI/BOOT/BOOTX64.EFI` (`BOOTAA64.EFI`). Its mtime is the newest of its inputs'.
pub fn install(req: &BootRequest<'_>, kernel: &Kernel, esp: &mut EspBuilder) -> Result<()> {
    let tree = req.tree;
    let path = stub_path(req.arch);
    let stub = read(tree, path, MAX_STUB)?
        .ok_or_else(|| Error::Boot(format!("systemd-stub {path} is missing")))?;
    let (_, stub_entry) = regular(tree, path)
        .ok_or_else(|| Error::Boot(format!("systemd-stub {path} is missing")))?;
    let (linux, linux_mtime) = file(tree, &kernel.vmlinuz, "the kernel")?;
    let mut mtime = stub_entry.mtime.max(linux_mtime);
    let data = SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ;
    let mut sections = Vec::new();
    if let Some(osrel) = os_release(tree)? {
        sections.push(NewSection {
            name: ".osrel",
            data: pe::SectionData::Bytes(osrel),
            characteristics: data,
        });
    }
    let mut cmdline = req.cmdline.clone().into_bytes();
    cmdline.push(0);
    sections.push(NewSection {
        name: ".cmdline",
        data: pe::SectionData::Bytes(cmdline),
        characteristics: data,
    });
    sections.push(NewSection {
        name: ".uname",
        data: pe::SectionData::Bytes(kernel.version.clone().into_bytes()),
        characteristics: data,
    });
    if let Some(initrd) = &kernel.initrd {
        let (c, t) = file(tree, initrd, "the initrd")?;
        mtime = mtime.max(t);
        sections.push(NewSection {
            name: ".initrd",
            data: pe::SectionData::Content(c),
            characteristics: data,
        });
    }
    // Last, as ukify places it: room after it for kernels that decompress in place.
    sections.push(NewSection {
        name: ".linux",
        data: pe::SectionData::Content(linux),
        characteristics: SCN_CNT_CODE | SCN_MEM_READ,
    });
    let machine = match req.arch {
        Arch::X86_64 => pe::MACHINE_X86_64,
        Arch::Aarch64 => pe::MACHINE_ARM64,
    };
    let (image, _) = pe::append_sections(&stub, path, machine, &sections)?;
    drop(stub);
    esp.file(
        &format!("EFI/BOOT/{}", super::removable_name(req.arch)),
        Content::Bytes(image.into()),
        mtime,
    )
}
