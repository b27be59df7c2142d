//! Virtual disk formats for stamp: read, write, convert, inspect, check and compare disk images.
//!
//! This crate knows raw, qcow2, VMDK, VHD, VHDX, VDI and OVA images, and writes GCE images. It opens any of them through
//! one entry point that detects the format from content ([`open`]), gives random access and an
//! allocation map through [`DiskReader`], and writes any of them from a stream of [`Extent`]s
//! through [`DiskWriter`] ([`create`]). [`convert()`] joins the two without an intermediate raw copy:
//! only allocated data is read, zero blocks are never written, and memory stays bounded.
//!
//! It does not know filesystems or partition tables (that is `stamp-fs`) nor where images come
//! from (that is `stamp-oci` and `stamp-aws`).
//!
//! ```no_run
//! use stamp_disk::{convert, create, open, CreateOptions, Format, NoProgress};
//!
//! let src = open("disk.vmdk".as_ref(), None)?;
//! let dst = create("disk.qcow2".as_ref(), Format::Qcow2, src.virtual_size(), &CreateOptions::default())?;
//! convert::convert(src.as_ref(), vec![dst], &NoProgress)?;
//! # Ok::<(), stamp_disk::Error>(())
//! ```
#![deny(missing_docs)]

pub mod compare;
pub mod compress;
mod content_id;
pub mod convert;
mod error;
mod extent;
pub mod file;
mod format;
mod mapping;
mod reader;
mod writer;

pub mod gce;
pub mod ova;
pub mod qcow2;
pub mod raw;
pub mod vdi;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

use std::path::{Path, PathBuf};

pub use convert::{NoProgress, Progress};
pub use error::{Ctx, Error, Result};
pub use extent::{Extent, ExtentOrder, is_zero};
pub use file::{ImageFile, OutputFile};
pub use format::{Format, detect, detect_bytes, detect_path};
pub use reader::{CheckReport, DiskReader, ImageInfo};
pub use writer::{Compression, CreateOptions, DiskSummary, DiskWriter, parse_size};

/// Deepest backing chain (qcow2 backing files, VMDK and VHD parents) that [`open`] follows; deeper
/// chains are almost certainly a loop.
pub const MAX_CHAIN_DEPTH: u32 = 64;

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Force this format instead of detecting it. By default, detected from content.
    pub format: Option<Format>,
    /// How many images up the backing chain this one is (0 for the image opened by the user).
    pub depth: u32,
    /// Open for `check`: formats that refuse inconsistent tables at open (as qemu does) let them
    /// through so that [`DiskReader::check`] can report them. By default, off.
    pub for_check: bool,
}

/// Opens the image at `path`, detecting its format from content unless `format` forces one.
pub fn open(path: &Path, format: Option<Format>) -> Result<Box<dyn DiskReader>> {
    open_with(
        path,
        &OpenOptions {
            format,
            ..Default::default()
        },
    )
}

/// Opens the image at `path` with `opts`.
pub fn open_with(path: &Path, opts: &OpenOptions) -> Result<Box<dyn DiskReader>> {
    check_depth(path, opts)?;
    open_file(ImageFile::open(path)?, opts)
}

/// Refuses chains deeper than [`MAX_CHAIN_DEPTH`].
fn check_depth(path: &Path, opts: &OpenOptions) -> Result<()> {
    if opts.depth > MAX_CHAIN_DEPTH {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            format: opts.format.unwrap_or(Format::Raw),
            feature: format!(
                "backing chain deeper than {MAX_CHAIN_DEPTH} images (is there a loop?)"
            ),
        });
    }
    Ok(())
}

/// Opens an already open image file (or a window of one, such as a disk inside an OVA).
pub fn open_file(file: ImageFile, opts: &OpenOptions) -> Result<Box<dyn DiskReader>> {
    let format = match opts.format {
        Some(f) => f,
        None => detect(&file)?,
    };
    match format {
        Format::Raw => raw::open(file, opts),
        Format::Qcow2 => qcow2::open(file, opts),
        Format::Vmdk => vmdk::open(file, opts),
        Format::Vhd => vhd::open(file, opts),
        Format::Vhdx => vhdx::open(file, opts),
        Format::Vdi => vdi::open(file, opts),
        Format::Ova => ova::open(file, opts),
        Format::Gce => gce::open(file, opts),
    }
}

/// Opens a backing file or parent named `name` by the image at `image`: a relative name is taken
/// relative to the image's directory, as qemu does.
pub fn open_backing(
    image: &Path,
    name: &str,
    format: Option<Format>,
    depth: u32,
    what: &'static str,
) -> Result<Box<dyn DiskReader>> {
    let resolved = resolve_relative(image, name);
    if !resolved.exists() {
        return Err(Error::Missing {
            path: image.to_path_buf(),
            what,
            missing: resolved,
        });
    }
    open_with(
        &resolved,
        &OpenOptions {
            format,
            depth: depth + 1,
            for_check: false,
        },
    )
}

/// Resolves `name` relative to the directory of `image` (absolute names stay as they are).
pub fn resolve_relative(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    image
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(p))
        .unwrap_or_else(|| p.to_path_buf())
}

/// Creates an image of `format` and `virtual_size` at `path`, ready for extents.
pub fn create(
    path: &Path,
    format: Format,
    virtual_size: u64,
    opts: &CreateOptions,
) -> Result<Box<dyn DiskWriter>> {
    match format {
        Format::Raw => raw::create(path, virtual_size, opts),
        Format::Qcow2 => qcow2::create(path, virtual_size, opts),
        Format::Vmdk => vmdk::create(path, virtual_size, opts),
        Format::Vhd => vhd::create(path, virtual_size, opts),
        Format::Vhdx => vhdx::create(path, virtual_size, opts),
        Format::Vdi => vdi::create(path, virtual_size, opts),
        Format::Ova => ova::create(path, virtual_size, opts),
        Format::Gce => gce::create(path, virtual_size, opts),
    }
}

/// Describes the image at `path` (format detected unless forced).
pub fn info(path: &Path, format: Option<Format>) -> Result<ImageInfo> {
    Ok(open(path, format)?.info())
}
