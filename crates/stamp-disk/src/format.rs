//! Disk formats by name, and detection of a file's format from its content.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::file::ImageFile;
use crate::{Error, Result};

/// A virtual disk format that stamp reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A plain image of the disk, byte for byte (sparse where the filesystem allows).
    Raw,
    /// QEMU copy-on-write v2 and v3.
    Qcow2,
    /// VMware virtual disk (descriptor plus sparse, stream-optimized or flat extents).
    Vmdk,
    /// Microsoft Virtual PC / Hyper-V VHD (fixed, dynamic, differencing).
    Vhd,
    /// Hyper-V VHDX.
    Vhdx,
    /// VirtualBox disk image.
    Vdi,
    /// Open Virtualization Appliance: a tar holding an OVF descriptor, a manifest and disks.
    Ova,
    /// Google Compute Engine image: a gzip-compressed GNU tar holding `disk.raw` (written only).
    Gce,
}

impl Format {
    /// Every format, in the order `stamp --help` lists them.
    pub const ALL: [Format; 8] = [
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Vhd,
        Format::Vhdx,
        Format::Vdi,
        Format::Ova,
        Format::Gce,
    ];

    /// The name used by `-f`/`-O` (and by qemu-img where it has the format; qemu calls VHD "vpc").
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
            Format::Ova => "ova",
            Format::Gce => "gce",
        }
    }

    /// The output format a file name asks for by its extension, if it names one: a format's
    /// name (`.qcow2`, `.vhd`, `.gce`, ...), `.vpc`, `.img` and `.raw`, and `.tar.gz` for
    /// [`Format::Gce`] (a disk written under that name can only be meant for GCE; `.tgz` and
    /// `.gz` alone are not taken).
    pub fn from_extension(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".tar.gz") && name.len() > ".tar.gz".len() {
            return Some(Format::Gce);
        }
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "img" | "raw" => Some(Format::Raw),
            other => other.parse().ok(),
        }
    }

    /// The name qemu-img uses for this format (`vpc` for VHD), if qemu-img has it.
    pub fn qemu_name(self) -> Option<&'static str> {
        match self {
            Format::Vhd => Some("vpc"),
            Format::Ova | Format::Gce => None,
            other => Some(other.name()),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "vpc" => return Ok(Format::Vhd),
            "img" => return Ok(Format::Raw),
            _ => {}
        }
        Format::ALL
            .into_iter()
            .find(|f| f.name() == lower)
            .ok_or_else(|| {
                Error::InvalidOption(format!(
                    "unknown format '{s}' (expected one of: raw, qcow2, vmdk, vhd, vhdx, vdi, ova, gce)"
                ))
            })
    }
}

/// Bytes read from the start of a file for detection.
const HEAD_LEN: usize = 4096;

/// Detects the format of an open image from its content (never from its name).
///
/// Anything that matches no signature is raw, as with qemu-img.
pub fn detect(file: &ImageFile) -> Result<Format> {
    let len = file.len();
    let mut head = vec![0u8; HEAD_LEN.min(len as usize)];
    file.read_exact_at(&mut head, 0, "format signature")?;
    let mut footer = [0u8; 512];
    let tail = if len >= 512 {
        file.read_exact_at(&mut footer, len - 512, "VHD footer")?;
        Some(&footer[..])
    } else {
        None
    };
    Ok(detect_bytes(&head, tail))
}

/// Detects the format from the first bytes of a file and its last 512 bytes.
pub fn detect_bytes(head: &[u8], tail: Option<&[u8]>) -> Format {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(b"QFI\xfb") {
        return Format::Qcow2;
    }
    if starts(b"vhdxfile") {
        return Format::Vhdx;
    }
    if starts(b"KDMV") || starts(b"COWD") || is_vmdk_descriptor(head) {
        return Format::Vmdk;
    }
    if head.len() >= 0x44 && head[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe] {
        return Format::Vdi;
    }
    if starts(b"conectix") {
        return Format::Vhd;
    }
    if let Some(tail) = tail {
        // A fixed VHD has only the footer; old Virtual PC wrote a 511-byte footer.
        if tail.starts_with(b"conectix") || tail.get(1..9) == Some(&b"conectix"[..]) {
            return Format::Vhd;
        }
    }
    if is_ova(head) {
        return Format::Ova;
    }
    if crate::gce::is_gce(head) {
        return Format::Gce;
    }
    Format::Raw
}

/// Returns true if and only if `head` starts like a VMDK text descriptor.
fn is_vmdk_descriptor(head: &[u8]) -> bool {
    let text = &head[..head.len().min(1024)];
    let Ok(text) = std::str::from_utf8(text.split(|b| *b == 0).next().unwrap_or(&[])) else {
        return false;
    };
    text.trim_start().starts_with("# Disk DescriptorFile")
        || text.lines().take(8).any(|l| {
            l.trim_start()
                .to_ascii_lowercase()
                .starts_with("createtype")
        })
}

/// Returns true if and only if `head` is a tar header whose first member is an `.ovf` file.
fn is_ova(head: &[u8]) -> bool {
    if head.len() < 512 || &head[257..262] != b"ustar" {
        return false;
    }
    let name = &head[..100];
    let name = name.split(|b| *b == 0).next().unwrap_or(&[]);
    name.to_ascii_lowercase().ends_with(b".ovf")
}

/// Detects the format of the file at `path`.
pub fn detect_path(path: &Path) -> Result<Format> {
    detect(&ImageFile::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_name_formats_and_tar_gz_is_gce() {
        let f = |s: &str| Format::from_extension(Path::new(s));
        assert_eq!(f("a/disk.tar.gz"), Some(Format::Gce));
        assert_eq!(f("DISK.TAR.GZ"), Some(Format::Gce));
        assert_eq!(f("x.gce"), Some(Format::Gce));
        assert_eq!(f("x.qcow2"), Some(Format::Qcow2));
        assert_eq!(f("x.vpc"), Some(Format::Vhd));
        assert_eq!(f("x.img"), Some(Format::Raw));
        assert_eq!(f(".tar.gz"), None);
        assert_eq!(f("x.gz"), None);
        assert_eq!(f("x.tgz"), None);
        assert_eq!(f("x"), None);
    }

    #[test]
    fn names_parse_back() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().ok(), Some(f));
        }
        assert!("tar".parse::<Format>().is_err());
    }
}
