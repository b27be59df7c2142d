//! A PE32+ reader and section appender: enough of the Portable Executable format to add
//! sections to an EFI application (systemd-stub) the way systemd's `ukify` does.
//!
//! Every field read is checked against the file's size and the limits below before use, and
//! errors name the file, the structure and its offset.

use stamp_fs::Content;

use crate::{Error, Result};

/// `MZ`.
const DOS_MAGIC: &[u8; 2] = b"MZ";
/// `PE\0\0`.
const PE_MAGIC: &[u8; 4] = b"PE\0\0";
/// The optional header magic of PE32+.
const PE32_PLUS: u16 = 0x20b;
/// Size of the COFF file header.
const COFF_HEADER: usize = 20;
/// Size of one section header.
pub const SECTION_HEADER: usize = 40;
/// The optional header up to (not including) the data directories.
const OPT_FIXED: usize = 112;
/// Most sections accepted (the limit EDK2's and Windows' loaders document for images).
pub const MAX_SECTIONS: usize = 96;
/// Most data directories (the PE format defines 16).
const MAX_DIRECTORIES: u32 = 16;
/// Index of the certificate table (the Authenticode signature) among the data directories.
const SECURITY_DIRECTORY: usize = 4;
/// Largest PE file produced (a UKI is a kernel, an initrd and a few small sections; the PE
/// format's 32-bit sizes allow 4 GiB, EFI loaders far less).
pub const MAX_IMAGE: u64 = 1 << 30;

/// Machine type of x86-64 images.
pub const MACHINE_X86_64: u16 = 0x8664;
/// Machine type of 64-bit ARM images.
pub const MACHINE_ARM64: u16 = 0xaa64;

/// Section flag: contains code.
pub const SCN_CNT_CODE: u32 = 0x20;
/// Section flag: contains initialized data.
pub const SCN_CNT_INITIALIZED_DATA: u32 = 0x40;
/// Section flag: readable.
pub const SCN_MEM_READ: u32 = 0x4000_0000;

/// Offsets in the optional header (from its start).
mod opt {
    pub const SIZE_OF_INITIALIZED_DATA: usize = 8;
    pub const SECTION_ALIGNMENT: usize = 32;
    pub const FILE_ALIGNMENT: usize = 36;
    pub const SIZE_OF_IMAGE: usize = 56;
    pub const SIZE_OF_HEADERS: usize = 60;
    pub const CHECKSUM: usize = 64;
    pub const NUMBER_OF_RVA_AND_SIZES: usize = 108;
}

/// One section header, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionHeader {
    /// The name, NUL padding removed (not necessarily UTF-8).
    pub name: Vec<u8>,
    /// VirtualSize.
    pub virtual_size: u32,
    /// VirtualAddress (relative to the image base).
    pub virtual_address: u32,
    /// SizeOfRawData.
    pub size_of_raw_data: u32,
    /// PointerToRawData.
    pub pointer_to_raw_data: u32,
    /// Characteristics.
    pub characteristics: u32,
}

impl SectionHeader {
    /// The name as text (lossy).
    pub fn name_str(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// One past the last byte of the section in memory (VirtualSize, or the raw size when 0).
    fn virtual_end(&self) -> u64 {
        let size = if self.virtual_size == 0 {
            self.size_of_raw_data
        } else {
            self.virtual_size
        };
        u64::from(self.virtual_address) + u64::from(size)
    }
}

/// The parts of a PE32+ file's headers that adding sections needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pe {
    /// The COFF machine type.
    pub machine: u16,
    /// Offset of the COFF file header (after `PE\0\0`).
    pub coff_offset: usize,
    /// Offset of the optional header.
    pub opt_offset: usize,
    /// Offset of the section table.
    pub section_table: usize,
    /// The sections, in table order.
    pub sections: Vec<SectionHeader>,
    /// SectionAlignment.
    pub section_alignment: u32,
    /// FileAlignment.
    pub file_alignment: u32,
    /// SizeOfImage.
    pub size_of_image: u32,
    /// SizeOfHeaders.
    pub size_of_headers: u32,
    /// The certificate table (file offset, size), if the file is signed.
    pub certificates: Option<(u32, u32)>,
    /// Offset of the certificate table's data directory entry, if there is one.
    pub security_entry: Option<usize>,
}

fn bad(path: &str, detail: String) -> Error {
    Error::BadFile {
        path: path.to_string(),
        detail,
    }
}

fn u16_at(d: &[u8], off: usize, path: &str, what: &str) -> Result<u16> {
    d.get(off..off + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "{what} at {off:#x} is past the end of the {}-byte file",
                    d.len()
                ),
            )
        })
}

fn u32_at(d: &[u8], off: usize, path: &str, what: &str) -> Result<u32> {
    d.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "{what} at {off:#x} is past the end of the {}-byte file",
                    d.len()
                ),
            )
        })
}

fn put16(d: &mut [u8], off: usize, v: u16) {
    d[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(d: &mut [u8], off: usize, v: u32) {
    d[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn round_up(v: u64, align: u32) -> u64 {
    v.next_multiple_of(u64::from(align.max(1)))
}

/// Parses the headers of the PE32+ file `d` (named `path` in errors).
pub fn parse(d: &[u8], path: &str) -> Result<Pe> {
    if d.len() < 64 || &d[..2] != DOS_MAGIC {
        return Err(bad(
            path,
            "DOS header at 0x0: no 'MZ' signature (not a PE file)".into(),
        ));
    }
    let lfanew = u32_at(d, 0x3c, path, "DOS header e_lfanew")? as usize;
    if lfanew < 64
        || lfanew
            .checked_add(4 + COFF_HEADER)
            .is_none_or(|e| e > d.len())
    {
        return Err(bad(
            path,
            format!(
                "DOS header at 0x3c: e_lfanew {lfanew:#x} does not leave room for the PE \
                 headers in the {}-byte file",
                d.len()
            ),
        ));
    }
    if &d[lfanew..lfanew + 4] != PE_MAGIC {
        return Err(bad(
            path,
            format!("PE signature at {lfanew:#x}: not 'PE\\0\\0'"),
        ));
    }
    let coff = lfanew + 4;
    let machine = u16_at(d, coff, path, "COFF Machine")?;
    let nsections = usize::from(u16_at(d, coff + 2, path, "COFF NumberOfSections")?);
    let opt_size = usize::from(u16_at(d, coff + 16, path, "COFF SizeOfOptionalHeader")?);
    if nsections > MAX_SECTIONS {
        return Err(bad(
            path,
            format!(
                "COFF header at {coff:#x}: NumberOfSections {nsections} is more than {MAX_SECTIONS}"
            ),
        ));
    }
    let opt_off = coff + COFF_HEADER;
    if opt_size < OPT_FIXED || opt_off + opt_size > d.len() {
        return Err(bad(
            path,
            format!(
                "optional header at {opt_off:#x}: SizeOfOptionalHeader {opt_size} is below \
                 {OPT_FIXED} or runs past the end of the {}-byte file",
                d.len()
            ),
        ));
    }
    let magic = u16_at(d, opt_off, path, "optional header Magic")?;
    if magic != PE32_PLUS {
        return Err(bad(
            path,
            format!("optional header at {opt_off:#x}: Magic {magic:#x} is not PE32+ (0x20b)"),
        ));
    }
    let f = |o: usize, what: &str| u32_at(d, opt_off + o, path, what);
    let section_alignment = f(opt::SECTION_ALIGNMENT, "SectionAlignment")?;
    let file_alignment = f(opt::FILE_ALIGNMENT, "FileAlignment")?;
    let size_of_image = f(opt::SIZE_OF_IMAGE, "SizeOfImage")?;
    let size_of_headers = f(opt::SIZE_OF_HEADERS, "SizeOfHeaders")?;
    let ndirs = f(opt::NUMBER_OF_RVA_AND_SIZES, "NumberOfRvaAndSizes")?;
    if !file_alignment.is_power_of_two()
        || !(512..=65536).contains(&file_alignment)
        || !section_alignment.is_power_of_two()
        || section_alignment < file_alignment
    {
        return Err(bad(
            path,
            format!(
                "optional header at {opt_off:#x}: SectionAlignment {section_alignment:#x} / \
                 FileAlignment {file_alignment:#x} are not powers of two with 512 <= \
                 FileAlignment <= 64K and FileAlignment <= SectionAlignment"
            ),
        ));
    }
    if ndirs > MAX_DIRECTORIES || OPT_FIXED + 8 * ndirs as usize > opt_size {
        return Err(bad(
            path,
            format!(
                "optional header at {opt_off:#x}: NumberOfRvaAndSizes {ndirs} is more than \
                 {MAX_DIRECTORIES} or does not fit SizeOfOptionalHeader {opt_size}"
            ),
        ));
    }
    let (certificates, security_entry) = if ndirs as usize > SECURITY_DIRECTORY {
        let e = opt_off + OPT_FIXED + 8 * SECURITY_DIRECTORY;
        let off = u32_at(d, e, path, "certificate table entry")?;
        let size = u32_at(d, e + 4, path, "certificate table entry")?;
        ((size != 0).then_some((off, size)), Some(e))
    } else {
        (None, None)
    };
    let table = opt_off + opt_size;
    let table_end = table + nsections * SECTION_HEADER;
    if table_end > d.len() || table_end as u64 > u64::from(size_of_headers) {
        return Err(bad(
            path,
            format!(
                "section table at {table:#x}: {nsections} headers end at {table_end:#x}, past \
                 SizeOfHeaders {size_of_headers:#x} or the {}-byte file",
                d.len()
            ),
        ));
    }
    if u64::from(size_of_headers) > d.len() as u64 {
        return Err(bad(
            path,
            format!(
                "optional header at {opt_off:#x}: SizeOfHeaders {size_of_headers:#x} is past the \
                 end of the {}-byte file",
                d.len()
            ),
        ));
    }
    let mut sections = Vec::with_capacity(nsections);
    for i in 0..nsections {
        let o = table + i * SECTION_HEADER;
        let raw = &d[o..o + SECTION_HEADER];
        let word = |k: usize| u32::from_le_bytes([raw[k], raw[k + 1], raw[k + 2], raw[k + 3]]);
        let name_end = raw[..8].iter().position(|c| *c == 0).unwrap_or(8);
        let s = SectionHeader {
            name: raw[..name_end].to_vec(),
            virtual_size: word(8),
            virtual_address: word(12),
            size_of_raw_data: word(16),
            pointer_to_raw_data: word(20),
            characteristics: word(36),
        };
        let raw_end = u64::from(s.pointer_to_raw_data) + u64::from(s.size_of_raw_data);
        if s.size_of_raw_data > 0 && raw_end > d.len() as u64 {
            return Err(bad(
                path,
                format!(
                    "section header {i} ('{}') at {o:#x}: raw data {:#x}+{:#x} runs past the end \
                     of the {}-byte file",
                    s.name_str(),
                    s.pointer_to_raw_data,
                    s.size_of_raw_data,
                    d.len()
                ),
            ));
        }
        if s.virtual_end() > u64::from(u32::MAX) {
            return Err(bad(
                path,
                format!(
                    "section header {i} ('{}') at {o:#x}: VirtualAddress {:#x} + size overflows",
                    s.name_str(),
                    s.virtual_address
                ),
            ));
        }
        sections.push(s);
    }
    Ok(Pe {
        machine,
        coff_offset: coff,
        opt_offset: opt_off,
        section_table: table,
        sections,
        section_alignment,
        file_alignment,
        size_of_image,
        size_of_headers,
        certificates,
        security_entry,
    })
}

/// What a new section holds.
#[derive(Debug)]
pub enum SectionData<'a> {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A file of the image, read straight into the output (named for errors).
    Content(&'a Content),
}

impl SectionData<'_> {
    fn len(&self) -> u64 {
        match self {
            SectionData::Bytes(b) => b.len() as u64,
            SectionData::Content(c) => c.len(),
        }
    }
}

/// A section to append.
#[derive(Debug)]
pub struct NewSection<'a> {
    /// Its name (at most 8 bytes, `.linux`).
    pub name: &'static str,
    /// Its contents.
    pub data: SectionData<'a>,
    /// Its Characteristics.
    pub characteristics: u32,
}

/// Where an appended section went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The section's name.
    pub name: &'static str,
    /// Its VirtualAddress.
    pub virtual_address: u32,
    /// Its VirtualSize (the content's length).
    pub virtual_size: u32,
    /// Its PointerToRawData.
    pub pointer_to_raw_data: u32,
}

/// Appends `new` sections to the PE32+ image `stub` (named `path` in errors), which must be for
/// `machine`, as `ukify` lays them out: each section's VirtualAddress follows the previous end
/// (the stub's SizeOfImage and every section end first) rounded up to SectionAlignment, its raw
/// data starts at the file's end rounded up to FileAlignment and is padded to it; the headers
/// are updated (NumberOfSections, SizeOfImage, SizeOfInitializedData, SizeOfHeaders) and the
/// checksum recomputed. A signature at the end of the stub is dropped (it would no longer
/// match). Section contents are read straight into the result, the only copy kept.
pub fn append_sections(
    stub: &[u8],
    path: &str,
    machine: u16,
    new: &[NewSection<'_>],
) -> Result<(Vec<u8>, Vec<Placed>)> {
    let pe = parse(stub, path)?;
    if pe.machine != machine {
        return Err(bad(
            path,
            format!(
                "COFF header at {:#x}: Machine {:#x}, not the {machine:#x} wanted",
                pe.coff_offset, pe.machine
            ),
        ));
    }
    for n in new {
        if n.name.len() > 8 {
            return Err(Error::Boot(format!(
                "section name '{}' is longer than 8 bytes",
                n.name
            )));
        }
        if let Some(s) = pe.sections.iter().find(|s| s.name == n.name.as_bytes()) {
            return Err(bad(
                path,
                format!(
                    "the stub already has a '{}' section (at {:#x}); it is not a bare stub",
                    n.name, s.virtual_address
                ),
            ));
        }
    }
    let total = pe.sections.len() + new.len();
    if total > MAX_SECTIONS {
        return Err(bad(
            path,
            format!(
                "{} sections plus {} new are more than {MAX_SECTIONS}",
                pe.sections.len(),
                new.len()
            ),
        ));
    }
    // Room for the new headers before the first section's data.
    let first_raw = pe
        .sections
        .iter()
        .filter(|s| s.size_of_raw_data > 0)
        .map(|s| u64::from(s.pointer_to_raw_data))
        .min()
        .unwrap_or(stub.len() as u64);
    let table_end = (pe.section_table + total * SECTION_HEADER) as u64;
    let headers = round_up(
        u64::from(pe.size_of_headers).max(table_end),
        pe.file_alignment,
    );
    if headers > first_raw {
        return Err(bad(
            path,
            format!(
                "section table at {:#x}: no room for {} more section headers (they would end at \
                 {table_end:#x}, the first section's data starts at {first_raw:#x})",
                pe.section_table,
                new.len()
            ),
        ));
    }
    // The file without a trailing signature.
    let mut body_len = stub.len() as u64;
    if let Some((off, size)) = pe.certificates {
        let end = u64::from(off) + u64::from(size);
        if end.next_multiple_of(8) < body_len || end > body_len || u64::from(off) < first_raw {
            return Err(bad(
                path,
                format!(
                    "certificate table at {off:#x} ({size} bytes) is not at the end of the \
                     {}-byte file; cannot add sections to this signed image",
                    stub.len()
                ),
            ));
        }
        body_len = u64::from(off);
    }
    // Place the sections.
    let mut va = pe
        .sections
        .iter()
        .map(SectionHeader::virtual_end)
        .max()
        .unwrap_or(0)
        .max(u64::from(pe.size_of_image));
    let mut raw = body_len;
    let mut placed = Vec::with_capacity(new.len());
    for n in new {
        let len = n.data.len();
        va = round_up(va, pe.section_alignment);
        raw = round_up(raw, pe.file_alignment);
        let raw_size = round_up(len, pe.file_alignment);
        if va + len > MAX_IMAGE || raw + raw_size > MAX_IMAGE {
            return Err(Error::Boot(format!(
                "{path}: with section {} ({len} bytes) the image would be larger than \
                 {MAX_IMAGE} bytes",
                n.name
            )));
        }
        placed.push(Placed {
            name: n.name,
            virtual_address: va as u32,
            virtual_size: len as u32,
            pointer_to_raw_data: raw as u32,
        });
        va += len;
        raw += raw_size;
    }
    let size_of_image = round_up(va, pe.section_alignment);
    if size_of_image > MAX_IMAGE {
        return Err(Error::Boot(format!(
            "{path}: the image would be larger than {MAX_IMAGE} bytes"
        )));
    }
    // Write: the stub, then each section's data at its place.
    let mut out = Vec::new();
    out.try_reserve_exact(raw as usize).map_err(|e| {
        Error::Boot(format!(
            "cannot allocate {raw} bytes for the image from {path}: {e}"
        ))
    })?;
    out.extend_from_slice(&stub[..body_len as usize]);
    for (n, p) in new.iter().zip(&placed) {
        out.resize(p.pointer_to_raw_data as usize, 0);
        let start = out.len();
        match &n.data {
            SectionData::Bytes(b) => out.extend_from_slice(b),
            SectionData::Content(c) => {
                out.resize(start + p.virtual_size as usize, 0);
                c.read_at(&mut out[start..], 0)?;
            }
        }
        let end = round_up(out.len() as u64, pe.file_alignment) as usize;
        out.resize(end, 0);
    }
    // Headers.
    let mut init = u64::from(u32_at(
        &out,
        pe.opt_offset + opt::SIZE_OF_INITIALIZED_DATA,
        path,
        "SizeOfInitializedData",
    )?);
    for (i, (n, p)) in new.iter().zip(&placed).enumerate() {
        let o = pe.section_table + (pe.sections.len() + i) * SECTION_HEADER;
        let h = &mut out[o..o + SECTION_HEADER];
        h.fill(0);
        h[..n.name.len()].copy_from_slice(n.name.as_bytes());
        put32(h, 8, p.virtual_size);
        put32(h, 12, p.virtual_address);
        put32(
            h,
            16,
            round_up(u64::from(p.virtual_size), pe.file_alignment) as u32,
        );
        put32(h, 20, p.pointer_to_raw_data);
        put32(h, 36, n.characteristics);
        init += u64::from(p.virtual_size);
    }
    put16(&mut out, pe.coff_offset + 2, total as u16);
    let o = pe.opt_offset;
    put32(
        &mut out,
        o + opt::SIZE_OF_INITIALIZED_DATA,
        init.min(u64::from(u32::MAX)) as u32,
    );
    put32(&mut out, o + opt::SIZE_OF_IMAGE, size_of_image as u32);
    put32(&mut out, o + opt::SIZE_OF_HEADERS, headers as u32);
    if let Some(e) = pe.security_entry {
        put32(&mut out, e, 0);
        put32(&mut out, e + 4, 0);
    }
    let sum = checksum(&out, o + opt::CHECKSUM);
    put32(&mut out, o + opt::CHECKSUM, sum);
    Ok((out, placed))
}

/// The PE image checksum of `d` (as `imagehlp`'s `CheckSumMappedFile` computes it): the
/// one's-complement-style 16-bit sum of the file with the CheckSum field at `checksum_at`
/// taken as zero, plus the file's length.
pub fn checksum(d: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, w) in d.chunks(2).enumerate() {
        let off = i * 2;
        if off >= checksum_at && off < checksum_at + 4 {
            continue;
        }
        let v = u64::from(w[0]) | (u64::from(*w.get(1).unwrap_or(&0)) << 8);
        sum += v;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum + d.len() as u64) as u32
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// A minimal PE32+ EFI application: 2 sections (.text at 0x1000, .data at 0x2000), file
    /// alignment 0x200, section alignment 0x1000, headers 0x400.
    pub(crate) fn synthetic() -> Vec<u8> {
        let mut d = vec![0u8; 0x800];
        d[..2].copy_from_slice(b"MZ");
        put32(&mut d, 0x3c, 0x80);
        d[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        put16(&mut d, coff, MACHINE_X86_64);
        put16(&mut d, coff + 2, 2);
        put16(&mut d, coff + 16, 240);
        let o = coff + 20;
        put16(&mut d, o, PE32_PLUS);
        put32(&mut d, o + opt::SECTION_ALIGNMENT, 0x1000);
        put32(&mut d, o + opt::FILE_ALIGNMENT, 0x200);
        put32(&mut d, o + opt::SIZE_OF_IMAGE, 0x3000);
        put32(&mut d, o + opt::SIZE_OF_HEADERS, 0x400);
        put32(&mut d, o + opt::NUMBER_OF_RVA_AND_SIZES, 16);
        let t = o + 240;
        for (i, (name, va, raw)) in [(b".text", 0x1000, 0x400), (b".data", 0x2000, 0x600)]
            .iter()
            .enumerate()
        {
            let h = t + i * 40;
            d[h..h + 5].copy_from_slice(*name);
            put32(&mut d, h + 8, 0x100);
            put32(&mut d, h + 12, *va);
            put32(&mut d, h + 16, 0x200);
            put32(&mut d, h + 20, *raw);
            d[*raw as usize] = 0xc3;
        }
        d
    }

    #[test]
    fn parses_the_synthetic_image() {
        let pe = parse(&synthetic(), "stub").unwrap();
        assert_eq!(pe.machine, MACHINE_X86_64);
        assert_eq!(pe.sections.len(), 2);
        assert_eq!(pe.sections[1].name, b".data");
        assert_eq!(pe.sections[1].virtual_address, 0x2000);
        assert_eq!(pe.section_table, 0x84 + 20 + 240);
    }

    #[test]
    fn appends_sections_aligned_and_updates_headers() {
        let stub = synthetic();
        let new = [
            NewSection {
                name: ".cmdline",
                data: SectionData::Bytes(b"quiet\0".to_vec()),
                characteristics: SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ,
            },
            NewSection {
                name: ".linux",
                data: SectionData::Bytes(vec![7u8; 0x1234]),
                characteristics: SCN_CNT_CODE | SCN_MEM_READ,
            },
        ];
        let (out, placed) = append_sections(&stub, "stub", MACHINE_X86_64, &new).unwrap();
        let pe = parse(&out, "out").unwrap();
        assert_eq!(pe.sections.len(), 4);
        let c = &pe.sections[2];
        assert_eq!(c.name, b".cmdline");
        assert_eq!(c.virtual_address, 0x3000);
        assert_eq!(c.virtual_size, 6);
        assert_eq!(c.pointer_to_raw_data, 0x800);
        assert_eq!(c.size_of_raw_data, 0x200);
        let l = &pe.sections[3];
        assert_eq!(l.virtual_address, 0x4000);
        assert_eq!(l.pointer_to_raw_data, 0xa00);
        assert_eq!(l.size_of_raw_data, 0x1400);
        assert_eq!(l.characteristics, SCN_CNT_CODE | SCN_MEM_READ);
        assert_eq!(pe.size_of_image, 0x6000);
        assert_eq!(out.len(), 0xa00 + 0x1400);
        assert_eq!(&out[0x800..0x806], b"quiet\0");
        assert!(out[0xa00..0xa00 + 0x1234].iter().all(|b| *b == 7));
        assert_eq!(placed[1].virtual_address, 0x4000);
        // The checksum is the one over the result.
        let at = pe.opt_offset + opt::CHECKSUM;
        assert_eq!(u32_at(&out, at, "", "").unwrap(), checksum(&out, at));
        // The stub's own bytes are untouched outside the headers.
        assert_eq!(&out[0x400..0x800], &stub[0x400..0x800]);
    }

    #[test]
    fn checksum_matches_a_known_value() {
        // Two words 0x0201, 0x0403 and the length 4: 0x0604 + 4.
        assert_eq!(
            checksum(&[1, 2, 3, 4, 0xff, 0xff, 0xff, 0xff], 4),
            0x0604 + 8
        );
        // Carries fold back in.
        assert_eq!(checksum(&[0xff, 0xff, 0x02, 0x00], 100), 0x0002 + 4);
    }

    #[test]
    fn no_room_for_headers_is_a_clear_error() {
        let mut stub = synthetic();
        // The table at 0x188 holds 2 headers (to 0x1d8); with the first section's data at 0x200
        // there is room for no more than one more.
        let t = 0x84 + 20 + 240;
        put32(&mut stub, t + 20, 0x200);
        put32(&mut stub, 0x84 + 20 + opt::SIZE_OF_HEADERS, 0x200);
        let s = |name| NewSection {
            name,
            data: SectionData::Bytes(vec![1]),
            characteristics: SCN_MEM_READ,
        };
        assert!(append_sections(&stub, "stub.efi", MACHINE_X86_64, &[s(".osrel")]).is_ok());
        let new = [s(".osrel"), s(".uname")];
        let e = append_sections(&stub, "stub.efi", MACHINE_X86_64, &new)
            .unwrap_err()
            .to_string();
        assert!(e.contains("stub.efi") && e.contains("no room"), "{e}");
    }

    #[test]
    fn bad_headers_name_the_structure_and_offset() {
        let good = synthetic();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..32].to_vec(), "MZ"),
            (
                {
                    let mut d = good.clone();
                    put32(&mut d, 0x3c, 0xffff_fff0);
                    d
                },
                "e_lfanew",
            ),
            (
                {
                    let mut d = good.clone();
                    d[0x80] = b'X';
                    d
                },
                "PE signature at 0x80",
            ),
            (
                {
                    let mut d = good.clone();
                    put16(&mut d, 0x86, 200);
                    d
                },
                "NumberOfSections 200",
            ),
            (
                {
                    let mut d = good.clone();
                    put16(&mut d, 0x84 + 20, 0x10b);
                    d
                },
                "not PE32+",
            ),
            (
                {
                    let mut d = good.clone();
                    put32(&mut d, 0x84 + 20 + opt::FILE_ALIGNMENT, 3);
                    d
                },
                "FileAlignment",
            ),
            (
                {
                    let mut d = good.clone();
                    put32(&mut d, 0x84 + 20 + 240 + 20, 0x7ff);
                    d
                },
                "section header 0 ('.text') at 0x188",
            ),
            (good[..0x500].to_vec(), "raw data 0x400+0x200 runs past"),
        ];
        for (d, want) in cases {
            let e = parse(&d, "/usr/lib/x.stub").unwrap_err().to_string();
            assert!(
                e.starts_with("/usr/lib/x.stub: ") && e.contains(want),
                "{want}: {e}"
            );
        }
    }

    #[test]
    fn wrong_machine_and_existing_sections_are_refused() {
        let stub = synthetic();
        let s = |name| NewSection {
            name,
            data: SectionData::Bytes(vec![]),
            characteristics: 0,
        };
        assert!(
            append_sections(&stub, "s", MACHINE_ARM64, &[s(".linux")])
                .unwrap_err()
                .to_string()
                .contains("Machine 0x8664")
        );
        assert!(
            append_sections(&stub, "s", MACHINE_X86_64, &[s(".data")])
                .unwrap_err()
                .to_string()
                .contains("already has a '.data'")
        );
    }

    #[test]
    fn a_trailing_signature_is_dropped() {
        let mut stub = synthetic();
        let e = 0x84 + 20 + OPT_FIXED + 8 * SECURITY_DIRECTORY;
        put32(&mut stub, e, 0x800);
        put32(&mut stub, e + 4, 0x10);
        stub.extend_from_slice(&[0xaa; 0x10]);
        let new = [NewSection {
            name: ".osrel",
            data: SectionData::Bytes(b"ID=x\n".to_vec()),
            characteristics: SCN_MEM_READ,
        }];
        let (out, _) = append_sections(&stub, "s", MACHINE_X86_64, &new).unwrap();
        let pe = parse(&out, "o").unwrap();
        assert_eq!(pe.certificates, None);
        assert_eq!(pe.sections[2].pointer_to_raw_data, 0x800);
        assert!(!out.windows(16).any(|w| w == [0xaa; 16]));
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(d in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = parse(&d, "random");
            let new = [NewSection { name: ".linux", data: SectionData::Bytes(vec![1; 10]), characteristics: 0 }];
            let _ = append_sections(&d, "random", MACHINE_X86_64, &new);
        }

        #[test]
        fn corrupted_headers_never_panic(
            edits in proptest::collection::vec((0usize..0x400, proptest::prelude::any::<u8>()), 1..16),
            cut in 0usize..0x900,
        ) {
            let mut d = synthetic();
            for (at, v) in edits {
                d[at] = v;
            }
            d.truncate(cut);
            let new = [
                NewSection { name: ".osrel", data: SectionData::Bytes(vec![1; 3]), characteristics: 0 },
                NewSection { name: ".linux", data: SectionData::Bytes(vec![2; 700]), characteristics: 0 },
            ];
            if let Ok((out, placed)) = append_sections(&d, "corrupt", MACHINE_X86_64, &new) {
                // Whatever was accepted gives a file that parses, with the sections in it.
                let pe = parse(&out, "out").unwrap();
                let last = pe.sections.last().unwrap();
                proptest::prop_assert_eq!(&last.name, b".linux");
                proptest::prop_assert_eq!(last.virtual_address, placed[1].virtual_address);
                let at = last.pointer_to_raw_data as usize;
                proptest::prop_assert_eq!(&out[at..at + 700], &[2u8; 700][..]);
            }
        }
    }
}
