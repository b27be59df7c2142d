//! The VMDK reader: a descriptor (standalone or embedded) and its extents laid end to end, with
//! an optional parent disk for unallocated grains.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::descriptor::{Descriptor, ExtentLine, ExtentType, MAX_DESCRIPTOR_LEN, as_text};
use super::header::{COWD_MAGIC, KDMV_MAGIC, SECTOR};
use super::sparse::{SparseExtent, SparseKind};
use crate::convert::merge_ranges;
use crate::file::ImageFile;
use crate::{
    CheckReport, Ctx, DiskReader, Error, Format, ImageInfo, OpenOptions, Result, resolve_relative,
};

/// createTypes read from a standalone descriptor.
const KNOWN_CREATE_TYPES: &[&str] = &[
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
    "vmfs",
    "vmfsSparse",
    "vmfsThin",
    "vmfsPreallocated",
    "vmfsEagerZeroedThick",
];

/// How one extent stores its part of the disk.
#[derive(Debug)]
enum ExtentData {
    /// Raw bytes at `offset` of `file`.
    Flat { file: ImageFile, offset: u64 },
    /// Zeros.
    Zero,
    /// A sparse extent.
    Sparse(Box<SparseExtent>),
}

/// One extent placed in the virtual disk.
#[derive(Debug)]
struct PlacedExtent {
    /// Byte offset in the virtual disk.
    start: u64,
    /// Length in bytes.
    len: u64,
    data: ExtentData,
    /// Type and file as the descriptor names them, for `info`.
    label: String,
}

/// A VMDK image opened for reading.
pub struct VmdkReader {
    path: PathBuf,
    size: u64,
    extents: Vec<PlacedExtent>,
    desc: Descriptor,
    create_type: String,
    parent: Option<Box<dyn DiskReader>>,
    /// Every file of the image (descriptor and extents), for the size on the host.
    files: Vec<ImageFile>,
}

impl std::fmt::Debug for VmdkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmdkReader")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("extents", &self.extents)
            .field("create_type", &self.create_type)
            .field("parent", &self.parent.as_ref().map(|p| p.info().filename))
            .finish()
    }
}

/// Opens a VMDK image: a sparse extent with its embedded descriptor, or a text descriptor and
/// the extents it names.
pub fn open(file: ImageFile, opts: &OpenOptions) -> Result<Box<dyn DiskReader>> {
    Ok(Box::new(VmdkReader::open(file, opts)?))
}

impl VmdkReader {
    /// Opens the image in `file`.
    pub fn open(file: ImageFile, opts: &OpenOptions) -> Result<VmdkReader> {
        let ctx = Ctx::new(file.path(), Format::Vmdk);
        if file.len() < 4 {
            return Err(ctx.corrupt(
                "descriptor",
                0,
                format!("file is {} bytes: too small to be a VMDK image", file.len()),
            ));
        }
        let mut magic = [0u8; 4];
        file.read_exact_at(&mut magic, 0, "VMDK magic")?;
        let path = file.path().to_path_buf();
        let mut reader = if &magic == KDMV_MAGIC || &magic == COWD_MAGIC {
            let (sparse, desc_bytes) = SparseExtent::open(file.clone())?;
            let desc = desc_bytes
                .map(|b| {
                    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
                    Descriptor::parse_lenient(&String::from_utf8_lossy(&b[..end]))
                })
                .unwrap_or_default();
            if sparse.capacity == 0 && !desc.extents.is_empty() {
                // A sparse header of capacity 0 only carries a descriptor naming other extents.
                Self::from_descriptor(&file, desc)?
            } else {
                let create_type = desc.create_type().map(str::to_string).unwrap_or_else(|| {
                    if sparse.compressed() {
                        "streamOptimized".into()
                    } else if matches!(sparse.kind, SparseKind::Cowd(_)) {
                        "vmfsSparse".into()
                    } else {
                        "monolithicSparse".into()
                    }
                });
                let label = format!(
                    "SPARSE {}",
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                );
                VmdkReader {
                    size: sparse.capacity,
                    extents: vec![PlacedExtent {
                        start: 0,
                        len: sparse.capacity,
                        data: ExtentData::Sparse(Box::new(sparse)),
                        label,
                    }],
                    desc,
                    create_type,
                    parent: None,
                    files: vec![file],
                    path,
                }
            }
        } else {
            if file.len() > MAX_DESCRIPTOR_LEN {
                return Err(ctx.corrupt(
                    "descriptor",
                    0,
                    format!(
                        "not a VMDK descriptor: {} bytes without a sparse extent magic (a descriptor is at most {MAX_DESCRIPTOR_LEN} bytes)",
                        file.len()
                    ),
                ));
            }
            let bytes = file.read_vec(0, file.len(), MAX_DESCRIPTOR_LEN, "descriptor")?;
            let text = as_text(&bytes).map_err(|e| ctx.corrupt("descriptor", 0, e))?;
            let desc = Descriptor::parse(text).map_err(|(line, e)| {
                ctx.corrupt(
                    "descriptor",
                    0,
                    format!("invalid VMDK descriptor: line {line}: {e}"),
                )
            })?;
            Self::from_descriptor(&file, desc)?
        };
        if let Some(hint) = reader.desc.parent_hint() {
            let parent = crate::open_backing(&reader.path, hint, None, opts.depth, "parent disk")?;
            reader.check_parent_cid(hint, parent.as_ref())?;
            reader.parent = Some(parent);
        }
        Ok(reader)
    }

    /// Builds a reader from a standalone descriptor in `file`.
    fn from_descriptor(file: &ImageFile, desc: Descriptor) -> Result<VmdkReader> {
        let path = file.path().to_path_buf();
        let ctx = Ctx::new(&path, Format::Vmdk);
        let create_type = desc
            .create_type()
            .ok_or_else(|| ctx.corrupt("descriptor", 0, "invalid VMDK descriptor: no createType"))?
            .to_string();
        if !KNOWN_CREATE_TYPES.contains(&create_type.as_str()) {
            return Err(ctx.unsupported(format!(
                "createType \"{create_type}\" (known: {})",
                KNOWN_CREATE_TYPES.join(", ")
            )));
        }
        if desc.extents.is_empty() {
            return Err(ctx.corrupt("descriptor", 0, "invalid VMDK descriptor: no extents"));
        }
        let mut files = vec![file.clone()];
        let mut extents = Vec::with_capacity(desc.extents.len());
        let mut start = 0u64;
        for line in &desc.extents {
            let len = line.sectors.checked_mul(SECTOR).ok_or_else(|| {
                ctx.corrupt(
                    "descriptor",
                    0,
                    format!("line {}: extent size overflows", line.line),
                )
            })?;
            let data = Self::open_extent(&path, &ctx, line, len, &mut files)?;
            let label = match &line.file {
                Some(f) => format!("{} {}", line.type_name, f),
                None => line.type_name.clone(),
            };
            extents.push(PlacedExtent {
                start,
                len,
                data,
                label,
            });
            start = start.checked_add(len).ok_or_else(|| {
                ctx.corrupt(
                    "descriptor",
                    0,
                    "extent sizes add up to more than 2^64 bytes",
                )
            })?;
        }
        Ok(VmdkReader {
            path,
            size: start,
            extents,
            desc,
            create_type,
            parent: None,
            files,
        })
    }

    fn open_extent(
        path: &Path,
        ctx: &Ctx,
        line: &ExtentLine,
        len: u64,
        files: &mut Vec<ImageFile>,
    ) -> Result<ExtentData> {
        let open_file = |files: &mut Vec<ImageFile>| -> Result<ImageFile> {
            let name = line.file.as_deref().unwrap_or("");
            let resolved = resolve_relative(path, name);
            if !resolved.exists() {
                return Err(Error::Missing {
                    path: path.to_path_buf(),
                    what: "extent",
                    missing: resolved,
                });
            }
            let f = ImageFile::open(&resolved)?;
            files.push(f.clone());
            Ok(f)
        };
        match line.kind {
            ExtentType::Zero => Ok(ExtentData::Zero),
            ExtentType::Flat | ExtentType::Vmfs => {
                let offset = line.offset.checked_mul(SECTOR).ok_or_else(|| {
                    ctx.corrupt(
                        "descriptor",
                        0,
                        format!("line {}: extent offset overflows", line.line),
                    )
                })?;
                Ok(ExtentData::Flat {
                    file: open_file(files)?,
                    offset,
                })
            }
            ExtentType::Sparse | ExtentType::VmfsSparse => {
                let f = open_file(files)?;
                let (sparse, _) = SparseExtent::open(f)?;
                if sparse.capacity != len {
                    return Err(ctx.corrupt(
                        "descriptor",
                        0,
                        format!(
                            "line {}: extent \"{}\" is {} sectors in the descriptor but {} in its header: the extent sizes do not add up",
                            line.line,
                            line.file.as_deref().unwrap_or(""),
                            line.sectors,
                            sparse.capacity / SECTOR
                        ),
                    ));
                }
                Ok(ExtentData::Sparse(Box::new(sparse)))
            }
            ExtentType::Other => {
                Err(ctx.unsupported(format!("{} extents (line {})", line.type_name, line.line)))
            }
        }
    }

    /// Refuses a VMDK parent whose CID is not the parentCID recorded here: the parent was
    /// modified after this disk was made from it, so its contents no longer match (qemu and
    /// VMware refuse such a chain too).
    fn check_parent_cid(&self, hint: &str, parent: &dyn DiskReader) -> Result<()> {
        let parse = |v: Option<&str>| v.and_then(|v| u32::from_str_radix(v.trim(), 16).ok());
        let info = parent.info();
        if info.format != Format::Vmdk.name() {
            return Ok(());
        }
        let (Some(want), Some(have)) = (
            parse(self.desc.get("parentCID")),
            parse(info.details.get("cid").map(String::as_str)),
        ) else {
            return Ok(());
        };
        if want != have {
            return Err(Error::corrupt(
                &self.path,
                Format::Vmdk,
                "descriptor",
                0,
                format!(
                    "parentCID={want:08x} but parent disk {hint} has CID={have:08x}: the parent was modified after this disk was created from it"
                ),
            ));
        }
        Ok(())
    }

    /// Fills `buf` from the parent at `off`, or with zeros where there is none.
    fn read_parent(&self, buf: &mut [u8], off: u64) -> Result<()> {
        match &self.parent {
            None => buf.fill(0),
            Some(p) => {
                let psize = p.virtual_size();
                let n = psize.saturating_sub(off).min(buf.len() as u64) as usize;
                let (head, tail) = buf.split_at_mut(n);
                if n > 0 {
                    p.read_at(head, off)?;
                }
                tail.fill(0);
            }
        }
        Ok(())
    }

    fn sparse_extents(&self) -> impl Iterator<Item = &SparseExtent> {
        self.extents.iter().filter_map(|e| match &e.data {
            ExtentData::Sparse(s) => Some(s.as_ref()),
            _ => None,
        })
    }
}

impl DiskReader for VmdkReader {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::error::check_read(&self.path, offset, buf.len(), self.size)?;
        let mut idx = self.extents.partition_point(|e| e.start + e.len <= offset);
        let mut pos = 0usize;
        while pos < buf.len() {
            let Some(e) = self.extents.get(idx) else {
                // Unreachable: the extents cover the whole disk.
                buf[pos..].fill(0);
                break;
            };
            let disk_off = offset + pos as u64;
            let ext_off = disk_off - e.start;
            let n = (e.len - ext_off).min((buf.len() - pos) as u64) as usize;
            let chunk = &mut buf[pos..pos + n];
            match &e.data {
                ExtentData::Zero => chunk.fill(0),
                ExtentData::Flat { file, offset: fo } => {
                    // Like qemu, bytes past the end of a flat file read as zeros.
                    file.read_at_zero_fill(chunk, fo.saturating_add(ext_off))?;
                }
                ExtentData::Sparse(s) => {
                    let start = e.start;
                    s.read(chunk, ext_off, &|b: &mut [u8], o: u64| {
                        self.read_parent(b, start + o)
                    })?;
                }
            }
            pos += n;
            idx += 1;
        }
        Ok(())
    }

    fn allocation(&self) -> Result<Vec<Range<u64>>> {
        let mut out = Vec::new();
        for e in &self.extents {
            match &e.data {
                ExtentData::Zero => {}
                ExtentData::Flat { file, offset } => {
                    let lo = *offset;
                    let hi = offset.saturating_add(e.len);
                    for r in crate::raw::data_ranges(file) {
                        let s = r.start.max(lo);
                        let t = r.end.min(hi);
                        if s < t {
                            out.push(e.start + (s - lo)..e.start + (t - lo));
                        }
                    }
                }
                ExtentData::Sparse(s) => {
                    out.extend(
                        s.allocation()?
                            .into_iter()
                            .map(|r| e.start + r.start..e.start + r.end),
                    );
                }
            }
        }
        if let Some(p) = &self.parent {
            // An upper bound: the parent's data shows through wherever the child has no grain.
            out.extend(crate::convert::clip_ranges(p.allocation()?, self.size));
        }
        Ok(merge_ranges(out))
    }

    fn info(&self) -> ImageInfo {
        let mut i = ImageInfo::new(&self.path, Format::Vmdk, self.size);
        i.subformat = Some(self.create_type.clone());
        let mut seen: Vec<(u64, PathBuf)> = Vec::new();
        for f in &self.files {
            let key = (f.base(), f.path().to_path_buf());
            if !seen.contains(&key) {
                i.actual_size += f.allocated_bytes();
                seen.push(key);
            }
        }
        if let Some(s) = self.sparse_extents().next() {
            i.cluster_size = Some(s.grain);
        }
        if self.sparse_extents().any(|s| s.compressed()) {
            i.compression = Some("deflate".into());
        }
        i.backing_file = self.desc.parent_hint().map(str::to_string);
        if let Some(p) = &self.parent {
            let mut pi = p.info();
            let rest = std::mem::take(&mut pi.backing_chain);
            i.backing_chain.push(pi);
            i.backing_chain.extend(rest);
        }
        for (key, name) in [
            ("CID", "cid"),
            ("parentCID", "parent_cid"),
            ("ddb.adapterType", "adapter_type"),
            ("ddb.virtualHWVersion", "hw_version"),
        ] {
            if let Some(v) = self.desc.get(key) {
                i = i.detail(name, v);
            }
        }
        if let Some(s) = self.sparse_extents().next()
            && let SparseKind::Hosted(h) = &s.kind
        {
            i = i.detail("version", h.version);
        }
        for (n, e) in self.extents.iter().enumerate() {
            i = i.detail(&format!("extent.{n}"), &e.label);
        }
        i
    }

    fn check(&self) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let mut grain = None;
        for s in self.sparse_extents() {
            let (corrupt, allocated) = s.check()?;
            report.corruptions.extend(corrupt);
            report.allocated_clusters += allocated;
            grain.get_or_insert(s.grain);
        }
        if let Some(g) = grain {
            report.total_clusters = self.size.div_ceil(g);
        }
        Ok(report)
    }
}
