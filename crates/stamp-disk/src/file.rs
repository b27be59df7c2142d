//! Files under an image: [`ImageFile`] for positioned reads that name the file and the structure
//! on error, and [`OutputFile`] for outputs written under a temporary name and renamed on success.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Error, Result};

/// A read-only image file with its path and length, read by position (thread-safe, no seek state).
///
/// It may also be a window onto part of a larger file (a disk inside an OVA tar): offsets are
/// then relative to the window's start and reads never leave it.
#[derive(Debug, Clone)]
pub struct ImageFile {
    file: Arc<File>,
    path: PathBuf,
    base: u64,
    len: u64,
}

impl ImageFile {
    /// Opens `path` for reading.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
        if meta.is_dir() {
            return Err(Error::io(
                "open",
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "is a directory"),
            ));
        }
        Ok(ImageFile {
            file: Arc::new(file),
            path: path.to_path_buf(),
            base: 0,
            len: meta.len(),
        })
    }

    /// A window of `len` bytes at `offset` of this file, named `name` in errors (for example
    /// `appliance.ova/disk1.vmdk`). Fails if the window does not lie within this file.
    pub fn window(&self, offset: u64, len: u64, name: PathBuf) -> Result<ImageFile> {
        self.check_within(offset, len, &name.display().to_string())?;
        Ok(ImageFile {
            file: self.file.clone(),
            path: name,
            base: self.base + offset,
            len,
        })
    }

    /// Where this file (or window) starts in the underlying file: 0 unless it is a window.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length in bytes, as it was when opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Returns true if and only if the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Bytes the file occupies on disk (`st_blocks * 512`; the window's length for a window).
    pub fn allocated_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        if self.base != 0 {
            return self.len;
        }
        self.file.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
    }

    /// Refuses `len` bytes of `what` at `offset` that do not lie within the file ("file is
    /// truncated: ...").
    fn check_within(&self, offset: u64, len: u64, what: &str) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::io(
                "read",
                &self.path,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "file is truncated: {what} at offset {offset:#x} ({len} bytes) ends past the end of the file ({} bytes)",
                        self.len
                    ),
                ),
            ));
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes at `offset`; `what` names the structure being read, so a
    /// short file gives "truncated ... reading L1 table at 0x...".
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        self.check_within(offset, buf.len() as u64, what)?;
        self.file
            .read_exact_at(buf, self.base + offset)
            .map_err(|e| Error::io("read", &self.path, e))
    }

    /// Reads up to `buf.len()` bytes at `offset`, zero-filling what lies past the end of the file.
    pub fn read_at_zero_fill(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let avail = self.len.saturating_sub(offset).min(buf.len() as u64) as usize;
        if avail > 0 {
            self.file
                .read_exact_at(&mut buf[..avail], self.base + offset)
                .map_err(|e| Error::io("read", &self.path, e))?;
        }
        buf[avail..].fill(0);
        Ok(())
    }

    /// Reads `len` bytes at `offset` into a new vector, refusing lengths over `limit` (a sanity
    /// bound the caller names) before allocating.
    pub fn read_vec(&self, offset: u64, len: u64, limit: u64, what: &str) -> Result<Vec<u8>> {
        if len > limit {
            return Err(Error::io(
                "read",
                &self.path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{what} at offset {offset:#x} is {len} bytes, over the limit of {limit}"
                    ),
                ),
            ));
        }
        let mut v = vec![0u8; len as usize];
        self.read_exact_at(&mut v, offset, what)?;
        Ok(v)
    }
}

/// An output file written under a temporary name in its destination directory and renamed into
/// place by [`OutputFile::commit`]; dropped without commit, the temporary file is removed.
#[derive(Debug)]
pub struct OutputFile {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl OutputFile {
    /// Creates a temporary file beside `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(0o644))
            .tempfile_in(dir)
            .map_err(|e| Error::io("create", path, e))?;
        Ok(OutputFile {
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file being written.
    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file()
            .write_all_at(buf, offset)
            .map_err(|e| Error::io("write", &self.path, e))
    }

    /// Sets the file's length (extending with a hole).
    pub fn set_len(&self, len: u64) -> Result<()> {
        self.file()
            .set_len(len)
            .map_err(|e| Error::io("truncate", &self.path, e))
    }

    /// Appends `buf` at the current position of the sequential write cursor.
    pub fn append(&mut self, buf: &[u8]) -> Result<()> {
        self.tmp
            .as_file_mut()
            .write_all(buf)
            .map_err(|e| Error::io("write", &self.path, e))
    }

    /// The current position of the sequential write cursor.
    pub fn position(&mut self) -> Result<u64> {
        self.tmp
            .as_file_mut()
            .stream_position()
            .map_err(|e| Error::io("seek", &self.path, e))
    }

    /// Moves the sequential write cursor.
    pub fn seek(&mut self, pos: u64) -> Result<()> {
        self.tmp
            .as_file_mut()
            .seek(SeekFrom::Start(pos))
            .map(|_| ())
            .map_err(|e| Error::io("seek", &self.path, e))
    }

    /// Renames the file into place.
    ///
    /// The data is not forced to stable storage first (as with cp and qemu-img, the page cache
    /// writes it back): the rename protects against interruption and errors, not power loss.
    pub fn commit(self) -> Result<()> {
        let OutputFile { tmp, path } = self;
        tmp.persist(&path)
            .map_err(|e| Error::io("rename into place", &path, e.error))?;
        Ok(())
    }
}

/// Copies the file `src` to `dst` (through a temporary name, renamed on success), keeping holes
/// as holes: only the ranges SEEK_DATA reports are copied, in the kernel where it can
/// (`copy_file_range`, which may share blocks on filesystems with reflinks). Returns the bytes
/// copied.
pub fn copy_sparse(src: &Path, dst: &Path) -> Result<u64> {
    let input = ImageFile::open(src)?;
    let out = OutputFile::create(dst)?;
    let mut copied = 0u64;
    for range in crate::raw::data_ranges(&input) {
        let mut off_in = range.start;
        let mut off_out = range.start;
        while off_in < range.end {
            let want = usize::try_from(range.end - off_in)
                .unwrap_or(1 << 30)
                .min(1 << 30);
            let n = rustix::fs::copy_file_range(
                input.file(),
                Some(&mut off_in),
                out.file(),
                Some(&mut off_out),
                want,
            )
            .map_err(|e| Error::io("copy", dst, e.into()))?;
            if n == 0 {
                return Err(Error::io(
                    "copy",
                    src,
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                ));
            }
            copied += n as u64;
        }
    }
    out.set_len(input.len())?;
    out.commit()?;
    Ok(copied)
}
