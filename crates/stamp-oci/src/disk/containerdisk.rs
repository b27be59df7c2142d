//! The layer of a KubeVirt containerDisk: the disk file under `/disk/`, owned by 107:107 (the qemu
//! user of KubeVirt's virt-launcher), exactly what `ADD --chown=107:107 disk.qcow2 /disk/` makes.

use std::io::{Read, Write};

use oci_spec::image::Descriptor;
use serde_json::json;

use super::artifact::{Reassembly, parts};
use crate::error::{Error, Result};
use crate::image::{Image, manifest_bytes};
use crate::media;
use crate::store::{Store, descriptor};

/// The uid and gid KubeVirt runs qemu as.
pub const KUBEVIRT_QEMU_ID: u64 = 107;

/// Makes a containerDisk image in the store from the disk artifact `disk`; returns its manifest
/// descriptor (unnamed: push it, or name it with [`Store::set_name`] while holding a write guard).
///
/// The layer's entries are dated `mtime` (SOURCE_DATE_EPOCH or 0), so the same disk always
/// gives the same digests.
pub fn build(store: &Store, disk: &Image, mtime: u64) -> Result<Descriptor> {
    let _guard = store.write_guard()?;
    let (config, layers) = parts(disk)?;
    let file_name = match config.format.as_str() {
        "raw" => "disk.img".to_string(),
        other => format!("disk.{other}"),
    };
    let mut reader = Reassembly::open(store, &layers)?;
    let mut w = store.blob_writer()?;
    write_layer(
        &mut reader,
        &config.file_name,
        &file_name,
        config.file_size,
        mtime,
        &mut w,
    )?;
    reader.finish(&config)?;
    let (layer, layer_size) = w.commit(None)?;
    let image_config = json!({
        "architecture": config.architecture.as_deref().unwrap_or("amd64"),
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer] },
    });
    let config_bytes = serde_json::to_vec(&image_config)
        .map_err(|e| Error::malformed(config.file_name.clone(), "image config", e.to_string()))?;
    let config_digest = store.put_bytes(&config_bytes)?;
    let bytes = manifest_bytes(
        &config.file_name,
        &descriptor(media::OCI_CONFIG, &config_digest, config_bytes.len() as u64)?,
        &[descriptor(media::OCI_LAYER_TAR, &layer, layer_size)?],
        None,
        None,
    )?;
    let digest = store.put_bytes(&bytes)?;
    descriptor(media::OCI_MANIFEST, &digest, bytes.len() as u64)
}

/// Writes an uncompressed layer tar holding `disk/` and `disk/<file_name>` with `len` bytes from
/// `disk`; `mtime` is the time of both entries (SOURCE_DATE_EPOCH or 0, for reproducible digests).
///
/// The layer stays uncompressed: a qcow2 stores no zero clusters already, and gzip of a
/// multi-gigabyte disk on one core would dominate the push.
fn write_layer(
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
    b.append_data(&mut dir, "disk/", std::io::empty())
        .map_err(io)?;
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
            [
                ("disk/".to_string(), 0),
                ("disk/disk.qcow2".to_string(), 5000)
            ]
        );
    }

    #[test]
    fn a_short_disk_is_an_error() {
        let data = [0u8; 10];
        let err = write_layer(&data[..], "d.raw", "disk.img", 5000, 0, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("d.raw"), "{err}");
    }
}
