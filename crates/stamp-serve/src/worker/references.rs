//! Files a source disk refers to, checked before it is opened: a tenant's disk must not make
//! the service read other files of the host (an absolute backing file, a VMDK extent named
//! `/etc/shadow`, a FIFO that would block the open).
//!
//! Differencing disks (qcow2 backing files or external data files, VMDK parents, differencing
//! VHDs) are refused as AWS refuses them; VMDK descriptors may name extents only when the
//! source is read in place (a local objects directory), only as relative names without `..`,
//! and only regular files.

use std::path::{Component, Path};

use stamp_disk::vmdk::{Descriptor, MAX_DESCRIPTOR_LEN};
use stamp_disk::{Format, ImageFile};

use crate::{Error, Result};

fn refuse(why: String) -> Error {
    Error::Invalid(format!("ClientError: Disk validation failed [{why}]"))
}

fn read(file: &ImageFile, offset: u64, len: u64) -> Result<Vec<u8>> {
    Ok(file.read_vec(offset, len, MAX_DESCRIPTOR_LEN + 1, "header")?)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        v.copy_from_slice(s);
    }
    u64::from_be_bytes(v)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        v.copy_from_slice(s);
    }
    u32::from_be_bytes(v)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        v.copy_from_slice(s);
    }
    u64::from_le_bytes(v)
}

/// Checks the files the image at `path` (of `format`, as detected) refers to. `in_place`:
/// the source is read where it lies, so that extents next to it may be used; `shown` names
/// it in messages.
pub fn check(path: &Path, format: Format, in_place: bool, shown: &str) -> Result<()> {
    let file = ImageFile::open(path)?;
    match format {
        Format::Qcow2 => {
            let h = read(&file, 0, file.len().min(104))?;
            if be_u64(&h, 8) != 0 && be_u32(&h, 16) != 0 {
                return Err(refuse(format!(
                    "{shown} is a qcow2 image with a backing file; import the full disk (qemu-img convert)"
                )));
            }
            // Incompatible feature bit 2: an external data file (version 3 headers).
            if be_u32(&h, 4) >= 3 && be_u64(&h, 72) & 4 != 0 {
                return Err(refuse(format!(
                    "{shown} is a qcow2 image with an external data file"
                )));
            }
        }
        Format::Vhd if file.len() >= 512 => {
            let f = read(&file, file.len() - 512, 512)?;
            let footer = if f.starts_with(b"conectix") {
                f
            } else {
                read(&file, 0, 512)?
            };
            if footer.starts_with(b"conectix") && be_u32(&footer, 60) == 4 {
                return Err(refuse(format!(
                    "{shown} is a differencing VHD; import the merged disk"
                )));
            }
        }
        Format::Vmdk => {
            let magic = read(&file, 0, file.len().min(4))?;
            let text = if magic == b"KDMV" {
                let h = read(&file, 0, file.len().min(512))?;
                let capacity = le_u64(&h, 12);
                let off = le_u64(&h, 28).saturating_mul(512);
                let len = le_u64(&h, 36).saturating_mul(512).min(MAX_DESCRIPTOR_LEN);
                if off == 0 || len == 0 || off >= file.len() {
                    return Ok(());
                }
                let b = read(&file, off, len.min(file.len() - off))?;
                let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
                let d = Descriptor::parse_lenient(&String::from_utf8_lossy(&b[..end]));
                check_descriptor(path, &d, in_place, shown, capacity == 0)?;
                return Ok(());
            } else if magic == b"COWD" {
                return Ok(());
            } else {
                read(&file, 0, file.len().min(MAX_DESCRIPTOR_LEN))?
            };
            let d = Descriptor::parse_lenient(&String::from_utf8_lossy(&text));
            check_descriptor(path, &d, in_place, shown, true)?;
        }
        _ => {}
    }
    Ok(())
}

fn check_descriptor(
    path: &Path,
    d: &Descriptor,
    in_place: bool,
    shown: &str,
    extents_used: bool,
) -> Result<()> {
    if d.parent_hint().is_some() {
        return Err(refuse(format!(
            "{shown} is a VMDK snapshot (differencing) disk with a parent; import the consolidated disk"
        )));
    }
    if !extents_used {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    for e in &d.extents {
        let Some(name) = &e.file else { continue };
        if !in_place {
            return Err(refuse(format!(
                "{shown} is a VMDK descriptor naming extent files (\"{name}\"); upload a single-file VMDK (streamOptimized or monolithicSparse) or an OVA"
            )));
        }
        let rel = Path::new(name);
        if name.contains('\\')
            || !rel
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(refuse(format!(
                "{shown} names extent \"{name}\" outside its own folder"
            )));
        }
        let full = dir.join(rel);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_file() => {}
            // A missing extent is reported by the reader with its usual message.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            _ => {
                return Err(refuse(format!(
                    "{shown} names extent \"{name}\", which is not a regular file"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_may_not_name_files_outside_their_folder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.vmdk");
        let desc = |extent: &str| {
            format!(
                "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"{extent}\" 0\n"
            )
        };
        for bad in ["/etc/passwd", "../x-flat.vmdk", "sub/../../x"] {
            std::fs::write(&p, desc(bad)).unwrap();
            let e = check(&p, Format::Vmdk, true, "s3://b/a.vmdk").unwrap_err();
            assert!(
                e.to_string().contains("outside its own folder"),
                "{bad}: {e}"
            );
        }
        std::fs::write(&p, desc("a-flat.vmdk")).unwrap();
        check(&p, Format::Vmdk, true, "s3://b/a.vmdk").unwrap();
        // Downloaded sources have nothing next to them.
        let e = check(&p, Format::Vmdk, false, "s3://b/a.vmdk").unwrap_err();
        assert!(e.to_string().contains("single-file VMDK"), "{e}");
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("a-flat.vmdk")).unwrap();
        assert!(check(&p, Format::Vmdk, true, "s3://b/a.vmdk").is_err());
        let with_parent = desc("a-flat.vmdk") + "parentFileNameHint=\"/etc/passwd\"\n";
        std::fs::write(&p, with_parent).unwrap();
        assert!(check(&p, Format::Vmdk, true, "x").is_err());
    }

    #[test]
    fn qcow2_backing_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.qcow2");
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[8..16].copy_from_slice(&200u64.to_be_bytes());
        h[16..20].copy_from_slice(&11u32.to_be_bytes());
        std::fs::write(&p, &h).unwrap();
        assert!(check(&p, Format::Qcow2, true, "x").is_err());
        h[8..20].fill(0);
        std::fs::write(&p, &h).unwrap();
        check(&p, Format::Qcow2, true, "x").unwrap();
        h[72..80].copy_from_slice(&4u64.to_be_bytes());
        std::fs::write(&p, &h).unwrap();
        assert!(check(&p, Format::Qcow2, true, "x").is_err());
    }
}
