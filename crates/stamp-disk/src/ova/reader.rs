//! Reading an OVA: walk the tar, parse the OVF descriptor, verify the manifest, and open the
//! disks in place (each a window of the .ova file) with the reader of their own format.

use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use super::archive::{self, Member};
use super::descriptor::{self, Descriptor, Disk, FileRef, MAX_DESCRIPTOR_LEN};
use super::manifest::{self, Algorithm, MAX_MANIFEST_LEN};
use crate::file::ImageFile;
use crate::{CheckReport, Ctx, DiskReader, Error, Format, ImageInfo, OpenOptions, Result, detect};

/// A disk of the package, opened.
struct OpenDisk {
    /// Its `DiskSection` entry.
    entry: Disk,
    /// The archive member holding it (none for a blank disk).
    member: Option<String>,
    /// Its contents.
    reader: Arc<dyn DiskReader>,
}

/// Faults of the package found at open: refused at once, or, when the package is opened for
/// `check` ([`OpenOptions::for_check`]), kept for [`DiskReader::check`] to report as
/// corruptions.
#[derive(Debug, Default)]
struct Faults(Option<Vec<String>>);

impl Faults {
    /// Refuses `e`, or keeps it when opening for check.
    fn note(&mut self, e: Error) -> Result<()> {
        match &mut self.0 {
            Some(v) => {
                v.push(e.to_string());
                Ok(())
            }
            None => Err(e),
        }
    }

    fn count(&self) -> usize {
        self.0.as_ref().map_or(0, Vec::len)
    }
}

/// An OVA opened for reading: its contents are those of the package's first disk (the first
/// disk of the `DiskSection` that has a file); `info()` lists every disk.
pub struct OvaReader {
    file: ImageFile,
    descriptor_name: String,
    descriptor: Descriptor,
    /// The manifest's name, its algorithms, and whether every digest matched.
    manifest: Option<(String, Vec<Algorithm>, bool)>,
    certificate: Option<String>,
    disks: Vec<OpenDisk>,
    /// The disk read: the first with a file (or the first, if all are blank).
    primary: Arc<dyn DiskReader>,
    primary_id: String,
    /// Faults kept when opened for check (manifest mismatches, missing files, wrong sizes).
    faults: Vec<String>,
}

impl std::fmt::Debug for OvaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OvaReader")
            .field("file", &self.file.path())
            .field("descriptor", &self.descriptor_name)
            .field("disks", &self.disks.len())
            .finish()
    }
}

/// A disk the descriptor declares without a file: it is created empty on import, so it reads
/// as zeros of its capacity.
#[derive(Debug)]
struct BlankDisk {
    name: std::path::PathBuf,
    size: u64,
}

impl DiskReader for BlankDisk {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::error::check_read(&self.name, offset, buf.len(), self.size)?;
        buf.fill(0);
        Ok(())
    }

    fn allocation(&self) -> Result<Vec<Range<u64>>> {
        Ok(Vec::new())
    }

    fn info(&self) -> ImageInfo {
        ImageInfo::new(&self.name, Format::Raw, self.size)
            .detail("blank", "no file: created empty on import")
    }
}

/// Decodes `%XX` escapes of a relative URL (hrefs are URLs: a space may be written `%20`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(v) = escaped {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The member named `name` (as written in the descriptor or the manifest).
fn find<'a>(members: &'a [Member], name: &str) -> Option<&'a Member> {
    let clean = name.trim_start_matches("./");
    members.iter().find(|m| m.name == clean).or_else(|| {
        let decoded = percent_decode(clean);
        members.iter().find(|m| m.name == decoded)
    })
}

/// Has `name` the extension `ext` (case-insensitive)?
fn has_ext(name: &str, ext: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, e)| e.eq_ignore_ascii_case(ext))
}

/// Opens the OVA in `file`.
pub fn open(file: ImageFile, opts: &OpenOptions) -> Result<Box<dyn DiskReader>> {
    Ok(Box::new(OvaReader::open(file, opts)?))
}

impl OvaReader {
    /// Every disk of the package, in the order of its `DiskSection` (a disk without a file
    /// reads as zeros of its capacity).
    pub fn disks(&self) -> Vec<Arc<dyn DiskReader>> {
        self.disks.iter().map(|d| d.reader.clone()).collect()
    }

    /// Opens the OVA in `file`: fails if it is not a tar, has no descriptor, the descriptor is
    /// not valid XML, a file it references is missing, a manifest digest does not match, or a
    /// disk does not open with the reader of its format.
    ///
    /// Opened for check ([`OpenOptions::for_check`]), manifest mismatches, missing files that
    /// are not the disk read, and disk files whose size differs from the descriptor's are let
    /// through and reported by [`DiskReader::check`] as corruptions.
    pub fn open(file: ImageFile, opts: &OpenOptions) -> Result<Self> {
        let ctx = Ctx::new(file.path(), Format::Ova);
        let mut faults = Faults(opts.for_check.then(Vec::new));
        let members = archive::members(&file, &ctx)?;
        let names = || {
            let list: Vec<_> = members.iter().map(|m| m.name.as_str()).take(20).collect();
            if list.is_empty() {
                "the archive is empty".to_string()
            } else {
                format!("members: {}", list.join(", "))
            }
        };
        let ovf = members
            .iter()
            .find(|m| has_ext(&m.name, "ovf"))
            .ok_or_else(|| {
                ctx.corrupt(
                    "tar archive",
                    0,
                    format!("no OVF descriptor (.ovf file) in the archive ({})", names()),
                )
            })?;
        let what = format!("OVF descriptor {}", ovf.name);
        if ovf.size > MAX_DESCRIPTOR_LEN {
            return Err(ctx.corrupt(
                what,
                ovf.offset,
                format!("{} bytes, over the limit of {MAX_DESCRIPTOR_LEN}", ovf.size),
            ));
        }
        let text = file.read_vec(ovf.offset, ovf.size, MAX_DESCRIPTOR_LEN, &what)?;
        let descriptor = descriptor::parse(&text).map_err(|e| {
            let (line, col) = descriptor::line_column(&text, e.position);
            ctx.corrupt(
                &what,
                ovf.offset + e.position.min(ovf.size),
                format!("line {line}, column {col}: {}", e.message),
            )
        })?;

        let before = faults.count();
        let manifest = Self::verify_manifest(&file, &ctx, &members, ovf, &mut faults)?
            .map(|(name, algs)| (name, algs, faults.count() == before));
        let certificate = members
            .iter()
            .find(|m| has_ext(&m.name, "cert"))
            .map(|m| m.name.clone());

        // Every file the descriptor references must be in the archive.
        for f in &descriptor.files {
            let name = match f.chunk_size {
                Some(_) => format!("{}.000000000", f.href),
                None => f.href.clone(),
            };
            if f.href.contains("://") {
                continue; // an external URL: refused below if a disk needs it
            }
            if find(&members, &name).is_none() {
                faults.note(Error::Missing {
                    path: file.path().to_path_buf(),
                    what: "file referenced by the OVF descriptor",
                    missing: file.path().join(&name),
                })?;
            }
        }
        if descriptor.disks.is_empty() {
            return Err(ctx.corrupt(
                &what,
                ovf.offset,
                "the DiskSection declares no disk (nothing to read)",
            ));
        }

        let mut disks = Vec::with_capacity(descriptor.disks.len());
        for d in &descriptor.disks {
            disks.push(Self::open_disk(
                &file,
                &ctx,
                &what,
                ovf,
                &descriptor,
                &members,
                d,
                opts,
                &mut faults,
            )?);
        }
        let first = disks
            .iter()
            .find(|d| d.member.is_some())
            .or(disks.first())
            .ok_or_else(|| ctx.corrupt(&what, ovf.offset, "no disk"))?;
        let primary = first.reader.clone();
        let primary_id = first.entry.id.clone();
        let mine = OvaReader {
            file,
            descriptor_name: ovf.name.clone(),
            descriptor,
            manifest,
            certificate,
            disks,
            primary,
            primary_id,
            faults: faults.0.unwrap_or_default(),
        };
        for d in &mine.disks {
            let size = d.reader.virtual_size();
            if let (Some(cap), Some(m)) = (d.entry.capacity.filter(|c| *c != size), &d.member) {
                tracing::warn!(
                    "{}: the OVF says disk {} ({m}) holds {cap} bytes, the disk itself says {}; using the disk's size",
                    mine.file.path().display(),
                    d.entry.id,
                    size
                );
            }
        }
        Ok(mine)
    }

    /// Finds the manifest (the `.mf` named like the descriptor, or the first one), and checks
    /// every digest it lists. Returns its name and the algorithms it uses.
    fn verify_manifest(
        file: &ImageFile,
        ctx: &Ctx,
        members: &[Member],
        ovf: &Member,
        faults: &mut Faults,
    ) -> Result<Option<(String, Vec<Algorithm>)>> {
        let stem = ovf
            .name
            .rsplit_once('.')
            .map_or(ovf.name.as_str(), |(s, _)| s);
        let mf = members
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case(&format!("{stem}.mf")))
            .or_else(|| members.iter().find(|m| has_ext(&m.name, "mf")));
        let Some(mf) = mf else {
            return Ok(None);
        };
        let what = format!("manifest {}", mf.name);
        if mf.size > MAX_MANIFEST_LEN {
            return Err(ctx.corrupt(
                what,
                mf.offset,
                format!("{} bytes, over the limit of {MAX_MANIFEST_LEN}", mf.size),
            ));
        }
        let text = file.read_vec(mf.offset, mf.size, MAX_MANIFEST_LEN, &what)?;
        let entries = manifest::parse(&text).map_err(|m| ctx.corrupt(&what, mf.offset, m))?;
        let mut targets = Vec::with_capacity(entries.len());
        for e in &entries {
            match find(members, &e.name) {
                Some(m) => targets.push((e, m)),
                None => faults.note(Error::Missing {
                    path: file.path().to_path_buf(),
                    what: "file listed in the manifest",
                    missing: file.path().join(&e.name),
                })?,
            }
        }
        // Digest files in parallel (a multi-disk OVA hashes all its disks at once).
        let results: Vec<Result<String>> = targets
            .par_iter()
            .map(|(e, m)| manifest::digest_of(file, m.offset, m.size, e.algorithm))
            .collect();
        for ((e, m), actual) in targets.iter().zip(results) {
            let actual = actual?;
            if actual != e.digest {
                faults.note(ctx.corrupt(
                    &what,
                    m.offset,
                    format!(
                        "{} of {} is {actual}, but the manifest (line {}) says {}: the file was changed or damaged",
                        e.algorithm, m.name, e.line, e.digest
                    ),
                ))?;
            }
        }
        let mut algs: Vec<Algorithm> = Vec::new();
        for e in &entries {
            if !algs.contains(&e.algorithm) {
                algs.push(e.algorithm);
            }
        }
        Ok(Some((mf.name.clone(), algs)))
    }

    /// Opens one disk of the package in place.
    #[allow(clippy::too_many_arguments)]
    fn open_disk(
        file: &ImageFile,
        ctx: &Ctx,
        what: &str,
        ovf: &Member,
        descriptor: &Descriptor,
        members: &[Member],
        d: &Disk,
        opts: &OpenOptions,
        faults: &mut Faults,
    ) -> Result<OpenDisk> {
        let Some(file_ref) = &d.file_ref else {
            let size = d.capacity.ok_or_else(|| {
                ctx.corrupt(
                    what,
                    ovf.offset,
                    format!("blank disk '{}' has a capacity set by a property", d.id),
                )
            })?;
            return Ok(OpenDisk {
                entry: d.clone(),
                member: None,
                reader: Arc::new(BlankDisk {
                    name: file.path().join(format!("blank disk {}", d.id)),
                    size,
                }),
            });
        };
        let f: &FileRef = descriptor.file(file_ref).ok_or_else(|| {
            ctx.corrupt(
                what,
                ovf.offset,
                format!(
                    "disk '{}' refers to file '{file_ref}', which References does not list",
                    d.id
                ),
            )
        })?;
        if f.href.contains("://") {
            return Err(ctx.unsupported(format!(
                "disk '{}' is an external URL ({}), not a file in the archive",
                d.id, f.href
            )));
        }
        if let Some(c) = &f.compression {
            return Err(ctx.unsupported(format!(
                "disk file {} is {c}-compressed inside the archive (ovf:compression)",
                f.href
            )));
        }
        if f.chunk_size.is_some() {
            return Err(ctx.unsupported(format!(
                "disk file {} is split in chunks (ovf:chunkSize)",
                f.href
            )));
        }
        let m = find(members, &f.href).ok_or_else(|| Error::Missing {
            path: file.path().to_path_buf(),
            what: "disk file referenced by the OVF descriptor",
            missing: file.path().join(&f.href),
        })?;
        if let Some(size) = f.size.filter(|s| *s != m.size) {
            faults.note(ctx.corrupt(
                format!("disk file {}", m.name),
                m.offset,
                format!(
                    "the OVF descriptor says the file is {size} bytes, the archive holds {} (truncated or replaced?)",
                    m.size
                ),
            ))?;
        }
        let window = file.window(m.offset, m.size, file.path().join(&m.name))?;
        let format = detect(&window)?;
        let refuse = |why: String| Err(ctx.unsupported(format!("disk file {}: {why}", m.name)));
        if format == Format::Ova {
            return refuse("an OVA inside an OVA".into());
        }
        if format == Format::Vmdk {
            let mut magic = [0u8; 4];
            window.read_at_zero_fill(&mut magic, 0)?;
            if &magic != b"KDMV" && &magic != b"COWD" {
                return refuse(
                    "a VMDK descriptor whose extents are files outside the archive".into(),
                );
            }
        }
        let reader = crate::open_file(
            window,
            &OpenOptions {
                format: Some(format),
                depth: opts.depth,
                for_check: opts.for_check,
            },
        )?;
        if let Some(b) = reader.info().backing_file {
            return refuse(format!("refers to backing file {b} outside the archive"));
        }
        Ok(OpenDisk {
            entry: d.clone(),
            member: Some(m.name.clone()),
            reader: reader.into(),
        })
    }

    fn disk(&self) -> &dyn DiskReader {
        self.primary.as_ref()
    }
}

impl DiskReader for OvaReader {
    fn virtual_size(&self) -> u64 {
        self.disk().virtual_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.disk().read_at(buf, offset)
    }

    fn allocation(&self) -> Result<Vec<Range<u64>>> {
        self.disk().allocation()
    }

    fn info(&self) -> ImageInfo {
        let mut i = ImageInfo::new(self.file.path(), Format::Ova, self.virtual_size());
        i.actual_size = self.file.allocated_bytes();
        i.details
            .insert("ovf_version".into(), self.descriptor.version.clone());
        i.details
            .insert("descriptor".into(), self.descriptor_name.clone());
        if let Some(n) = &self.descriptor.system_name {
            i.details.insert("virtual_system".into(), n.clone());
        }
        i.details.insert(
            "manifest".into(),
            match &self.manifest {
                Some((name, algs, ok)) => {
                    let a: Vec<_> = algs.iter().map(|a| a.name()).collect();
                    let status = if *ok { "verified" } else { "DOES NOT VERIFY" };
                    format!("{name} ({}, {status})", a.join(", "))
                }
                None => "none".into(),
            },
        );
        if let Some(c) = &self.certificate {
            i.details.insert(
                "certificate".into(),
                format!("{c} (signature not verified)"),
            );
        }
        i.details
            .insert("disk_read".into(), self.primary_id.clone());
        for d in &self.disks {
            let mut di = d.reader.info();
            di.details.insert("ovf_disk_id".into(), d.entry.id.clone());
            if let Some(m) = &d.member {
                di.details.insert("ovf_file".into(), m.clone());
            }
            di.details.insert(
                "ovf_capacity".into(),
                d.entry
                    .capacity
                    .map_or_else(|| "set by a property".into(), |c| c.to_string()),
            );
            if let Some(f) = &d.entry.format {
                di.details.insert("ovf_format".into(), f.clone());
            }
            if let Some(p) = d.entry.populated_size {
                di.details
                    .insert("ovf_populated_size".into(), p.to_string());
            }
            i.disks.push(di);
        }
        i
    }

    fn check(&self) -> Result<CheckReport> {
        // The manifest and the references were checked at open: a package that fails them does
        // not open, unless opened for check, which keeps the faults for this report. The rest
        // is each disk's own metadata.
        let mut report = CheckReport {
            corruptions: self.faults.clone(),
            ..Default::default()
        };
        for d in &self.disks {
            let r = d.reader.check()?;
            let name = d.member.as_deref().unwrap_or(&d.entry.id);
            report
                .corruptions
                .extend(r.corruptions.into_iter().map(|c| format!("{name}: {c}")));
            report
                .leaks
                .extend(r.leaks.into_iter().map(|c| format!("{name}: {c}")));
            report.allocated_clusters += r.allocated_clusters;
            report.total_clusters += r.total_clusters;
        }
        Ok(report)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hrefs_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b.vmdk"), "a b.vmdk");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert!(has_ext("X.OVF", "ovf"));
        assert!(!has_ext("ovf", "ovf"));
    }
}
