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
    // The VMDK names the controller the descriptor attaches it to (LSI Logic SCSI).
    let vmdk = CreateOptions {
        subformat: Some("streamOptimized".into()),
        adapter_type: Some("lsilogic".into()),
        given: vec!["subformat".into(), "adapter_type".into()],
        ..Default::default()
    };
    create_with(path, size, Format::Vmdk, &vmdk)
}

/// Creates an OVA whose disk is written in `disk_format` with `disk_opts` (always a
/// streamOptimized VMDK, except in tests of the packaging).
fn create_with(
    path: &Path,
    size: u64,
    disk_format: Format,
    disk_opts: &CreateOptions,
) -> Result<Box<dyn DiskWriter>> {
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
    let vmdk = crate::create(&vmdk_path, disk_format, size, disk_opts)?;
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
            // What the VMDK itself says (it may round the size up to whole sectors).
            capacity: disk.virtual_size,
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
            virtual_size: disk.virtual_size,
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

    /// The packaging, checked with a raw disk in place of the VMDK: member order, tar headers,
    /// manifest digests (by sha256sum), descriptor sizes, determinism, and reading back.
    #[test]
    fn packages_a_disk_in_order_with_digests() {
        let d = tempfile::tempdir().unwrap();
        let size = 3 << 20;
        let mut disk = vec![0u8; size];
        disk[5000..9000].fill(0x5a);
        disk[(2 << 20)..(2 << 20) + 100].fill(1);
        let write = |path: &Path| {
            let mut w =
                create_with(path, size as u64, Format::Raw, &CreateOptions::default()).unwrap();
            w.write_extent(Extent::Data {
                offset: 4096,
                bytes: Bytes::copy_from_slice(&disk[4096..12288]),
            })
            .unwrap();
            w.write_extent(Extent::Data {
                offset: 2 << 20,
                bytes: Bytes::copy_from_slice(&disk[(2 << 20)..(2 << 20) + 4096]),
            })
            .unwrap();
            w.finish().unwrap()
        };
        let p = d.path().join("My App.ova");
        let sum = write(&p);
        assert_eq!(sum.file_size, std::fs::metadata(&p).unwrap().len());
        // Nothing but the OVA is left beside it.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);

        let list = std::process::Command::new("tar")
            .args(["tvf", p.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(list.status.success());
        let list = String::from_utf8(list.stdout).unwrap();
        let names: Vec<_> = list
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        assert_eq!(names, ["My_App.ovf", "My_App-disk1.vmdk", "My_App.mf"]);
        assert!(
            list.lines()
                .all(|l| l.starts_with("-rw-r--r-- someone/someone")),
            "{list}"
        );

        let x = d.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let st = std::process::Command::new("tar")
            .args(["xf", p.to_str().unwrap(), "-C", x.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read(x.join("My_App-disk1.vmdk")).unwrap(), disk);
        // The manifest in sha256sum's own check format.
        let mf = std::fs::read_to_string(x.join("My_App.mf")).unwrap();
        let check: String = mf
            .lines()
            .map(|l| {
                let (name, hex) = l
                    .strip_prefix("SHA256(")
                    .unwrap()
                    .split_once(")= ")
                    .unwrap();
                format!("{hex}  {name}\n")
            })
            .collect();
        let mut c = std::process::Command::new("sha256sum")
            .args(["-c", "--strict", "-"])
            .current_dir(&x)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        c.stdin.take().unwrap().write_all(check.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success(), "{mf}");
        assert_eq!(mf.lines().count(), 2);

        let ovf = std::fs::read(x.join("My_App.ovf")).unwrap();
        let desc = descriptor::parse(&ovf).unwrap();
        assert_eq!(desc.files[0].size, Some(size as u64));
        assert_eq!(desc.disks[0].capacity, Some(size as u64));
        assert_eq!(desc.system_name.as_deref(), Some("My_App"));

        let r = crate::open(&p, None).unwrap();
        let mut back = vec![0u8; size];
        r.read_at(&mut back, 0).unwrap();
        assert_eq!(back, disk);
        assert_eq!(r.info().details["manifest"], "My_App.mf (SHA256, verified)");

        // Same input, same bytes.
        let d2 = tempfile::tempdir().unwrap();
        let p2 = d2.path().join("My App.ova");
        write(&p2);
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&p2).unwrap());
    }

    #[test]
    fn an_unfinished_writer_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut w = create_with(
            &d.path().join("a.ova"),
            1 << 20,
            Format::Raw,
            &CreateOptions::default(),
        )
        .unwrap();
        w.write_extent(Extent::Data {
            offset: 0,
            bytes: Bytes::from_static(&[1; 512]),
        })
        .unwrap();
        assert!(
            w.write_extent(Extent::Zero { offset: 0, len: 1 }).is_err(),
            "out of order extent accepted"
        );
        drop(w);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
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
