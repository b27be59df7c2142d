//! The layer of a KubeVirt containerDisk: the disk file under `/disk/`, owned by 107:107 (the qemu
//! user of KubeVirt's virt-launcher), exactly what `ADD --chown=107:107 disk.qcow2 /disk/` makes.

use std::io::{Read, Write};

use crate::error::{Error, Result};

/// The uid and gid KubeVirt runs qemu as.
pub const KUBEVIRT_QEMU_ID: u64 = 107;

/// Writes an uncompressed layer tar holding `disk/` and `disk/<file_name>` with `len` bytes from
/// `disk`; `mtime` is the time of both entries (SOURCE_DATE_EPOCH or 0, for reproducible digests).
///
/// The layer stays uncompressed: a qcow2 stores no zero clusters already, and gzip of a
/// multi-gigabyte disk on one core would dominate the push.
pub(crate) fn write_layer(
    disk: impl Read,
    disk_name: &str,
    file_name: &str,
    len: u64,
    mtime: u64,
    out: impl Write,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io("write containerDisk layer for", disk_name, e);
    let mut b = tar::Builder::new(out);
    let mut dir = header(tar::EntryType::Directory, 0o755, 0, mtime);
    b.append_data(&mut dir, "disk/", std::io::empty()).map_err(io)?;
    let mut file = header(tar::EntryType::Regular, 0o644, len, mtime);
    let mut limited = disk.take(len);
    b.append_data(&mut file, format!("disk/{file_name}"), &mut limited)
        .map_err(io)?;
    if limited.limit() != 0 {
        return Err(Error::io(
            "read",
            disk_name,
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the disk file shrank"),
        ));
    }
    b.into_inner().map_err(io)?.flush().map_err(io)
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(KUBEVIRT_QEMU_ID);
    h.set_gid(KUBEVIRT_QEMU_ID);
    h.set_size(size);
    h.set_mtime(mtime);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_has_the_disk_under_disk_owned_by_107() {
        let data = vec![0x42u8; 5000];
        let mut tar_bytes = Vec::new();
        write_layer(&data[..], "d.qcow2", "disk.qcow2", 5000, 0, &mut tar_bytes).unwrap();
        let mut a = tar::Archive::new(&tar_bytes[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (107, 107));
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            seen.push((path, body.len()));
        }
        assert_eq!(
            seen,
            [("disk/".to_string(), 0), ("disk/disk.qcow2".to_string(), 5000)]
        );
    }

    #[test]
    fn a_short_disk_is_an_error() {
        let data = vec![0u8; 10];
        let err = write_layer(&data[..], "d.raw", "disk.img", 5000, 0, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("d.raw"), "{err}");
    }
}
