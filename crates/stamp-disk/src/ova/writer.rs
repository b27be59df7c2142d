//! Writing an OVA: the disk goes to a streamOptimized VMDK in a staging directory beside the
//! destination; `finish` then writes the tar — `NAME.ovf`, `NAME-disk1.vmdk`, `NAME.mf` — in
//! one sequential pass, hashing the VMDK as it is copied.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::Digest as _;

use super::archive::{BLOCK, padding, ustar_header};
use super::descriptor::{self, Appliance};
use super::manifest::{self, Algorithm};
use crate::file::OutputFile;
use crate::{CreateOptions, DiskSummary, DiskWriter, Error, Extent, ExtentOrder, Format, Result};

/// Bytes copied from the staged VMDK into the archive at a time.
const COPY_CHUNK: usize = 8 << 20;

/// Chunks in flight between the copy and the hashing thread (memory: this × [`COPY_CHUNK`]).
const HASH_QUEUE: usize = 4;

/// Longest appliance name used for member names (ustar names hold 100 bytes; the longest
/// member is `NAME-disk1.vmdk`).
const MAX_APPLIANCE_NAME: usize = 64;

/// Writes an OVA holding one streamOptimized VMDK.
pub struct OvaWriter {
    path: PathBuf,
    name: String,
    size: u64,
    order: ExtentOrder,
    vmdk: Box<dyn DiskWriter>,
    vmdk_path: PathBuf,
    /// Removed (with the VMDK in it) when the writer is dropped, finished or not.
    staging: tempfile::TempDir,
}

impl std::fmt::Debug for OvaWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OvaWriter")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("size", &self.size)
            .finish()
    }
}

/// The appliance name for an OVA written at `path`: the file's stem, with anything but ASCII
/// letters, digits, `.`, `_` and `-` replaced by `_` (it becomes member names and an OVF
/// identifier), at most [`MAX_APPLIANCE_NAME`] characters, `disk` if nothing is left.
pub fn appliance_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = stem
        .trim_start_matches('.')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_APPLIANCE_NAME)
        .collect();
    if name.is_empty() { "disk".into() } else { name }
}

/// Modification time of the archive's members: `SOURCE_DATE_EPOCH` if set, else 0, so the same
/// disk always gives the same bytes.
fn mtime() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Creates an OVA of a `size`-byte disk at `path`. No options are taken (`-c` is accepted: the
/// VMDK inside is always compressed).
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<Box<dyn DiskWriter>> {
    opts.allow_only(Format::Ova, &["compress"])?;
    let name = appliance_name(path);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".ova.tmp")
        .tempdir_in(dir)
        .map_err(|e| Error::io("create staging directory for", path, e))?;
    let vmdk_path = staging.path().join(format!("{name}-disk1.vmdk"));
    let vmdk = crate::create(
        &vmdk_path,
        Format::Vmdk,
        size,
        &CreateOptions {
            subformat: Some("streamOptimized".into()),
            given: vec!["subformat".into()],
            ..Default::default()
        },
    )?;
    Ok(Box::new(OvaWriter {
        path: path.to_path_buf(),
        name,
        size,
        order: ExtentOrder::new(size),
        vmdk,
        vmdk_path,
        staging,
    }))
}

/// Appends a member holding `data`, padded to a whole block.
fn put_member(out: &mut OutputFile, name: &str, data: &[u8], mtime: u64) -> Result<()> {
    out.append(&ustar_header(name, data.len() as u64, mtime))?;
    out.append(data)?;
    out.append(&[0u8; BLOCK as usize][..padding(data.len() as u64)])
}

/// Copies `len` bytes of `src` to the end of `out`, returning their SHA-256; hashing runs on
/// another thread so it overlaps the reads and writes.
fn copy_hashing(src: &File, src_path: &Path, len: u64, out: &mut OutputFile) -> Result<String> {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(HASH_QUEUE);
        let hasher = s.spawn(move || {
            let mut h = sha2::Sha256::new();
            for chunk in rx {
                h.update(&chunk);
            }
            hex::encode(h.finalize())
        });
        let mut copy = || -> Result<()> {
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(COPY_CHUNK as u64) as usize;
                let mut buf = vec![0u8; n];
                src.read_exact_at(&mut buf, done)
                    .map_err(|e| Error::io("read", src_path, e))?;
                let chunk = Bytes::from(buf);
                // A send fails only if the hashing thread is gone; join reports it below.
                let _ = tx.send(chunk.clone());
                out.append(&chunk)?;
                done += n as u64;
            }
            Ok(())
        };
        let copied = copy();
        drop(tx);
        let digest = hasher.join().map_err(|_| {
            Error::io(
                "hash",
                src_path,
                std::io::Error::other("the hashing thread failed"),
            )
        })?;
        copied.map(|()| digest)
    })
}

impl DiskWriter for OvaWriter {
    fn write_extent(&mut self, e: Extent) -> Result<()> {
        self.order.accept(&e)?;
        self.vmdk.write_extent(e)
    }

    fn finish(self: Box<Self>) -> Result<DiskSummary> {
        let OvaWriter {
            path,
            name,
            size,
            vmdk,
            vmdk_path,
            staging,
            ..
        } = *self;
        let disk = vmdk.finish()?;
        let src = File::open(&vmdk_path).map_err(|e| Error::io("open", &vmdk_path, e))?;
        let disk_len = src
            .metadata()
            .map_err(|e| Error::io("stat", &vmdk_path, e))?
            .len();
        let ovf_name = format!("{name}.ovf");
        let disk_name = format!("{name}-disk1.vmdk");
        let mf_name = format!("{name}.mf");
        let ovf = descriptor::render(&Appliance {
            name: &name,
            disk_file: &disk_name,
            disk_file_size: disk_len,
            capacity: size,
            populated_size: disk.data_bytes,
        });
        let mtime = mtime();
        let mut out = OutputFile::create(&path)?;
        put_member(&mut out, &ovf_name, ovf.as_bytes(), mtime)?;
        out.append(&ustar_header(&disk_name, disk_len, mtime))?;
        let disk_digest = copy_hashing(&src, &vmdk_path, disk_len, &mut out)?;
        out.append(&[0u8; BLOCK as usize][..padding(disk_len)])?;
        let mf = manifest::line(
            Algorithm::Sha256,
            &ovf_name,
            &manifest::sha256_hex(ovf.as_bytes()),
        ) + &manifest::line(Algorithm::Sha256, &disk_name, &disk_digest);
        put_member(&mut out, &mf_name, mf.as_bytes(), mtime)?;
        // End of archive: two zero blocks.
        out.append(&[0u8; 2 * BLOCK as usize])?;
        let file_size = out.position()?;
        out.commit()?;
        drop(src);
        drop(staging);
        Ok(DiskSummary {
            path,
            format: Format::Ova.name().into(),
            virtual_size: size,
            file_size,
            data_bytes: disk.data_bytes,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_member_names() {
        assert_eq!(appliance_name(Path::new("/x/My VM.ova")), "My_VM");
        assert_eq!(appliance_name(Path::new("a.b.ova")), "a.b");
        assert_eq!(appliance_name(Path::new(".ova")), "ova");
        assert_eq!(appliance_name(Path::new("...")), "disk");
        assert_eq!(appliance_name(Path::new("é")), "_");
        assert_eq!(appliance_name(&PathBuf::from("x".repeat(300))).len(), 64);
    }

    #[test]
    fn refuses_options() {
        let d = tempfile::tempdir().unwrap();
        let o = CreateOptions::parse("subformat=streamOptimized").unwrap();
        let Err(e) = create(&d.path().join("a.ova"), 1 << 20, &o) else {
            panic!("subformat accepted");
        };
        assert!(
            e.to_string()
                .contains("ova does not take option 'subformat'"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
