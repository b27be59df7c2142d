//! The VMDK text descriptor: `key=value` settings (CID, parentCID, createType,
//! parentFileNameHint), extent lines and the disk database (`ddb.*`), parsed from a standalone
//! descriptor file or one embedded in a sparse extent, and rendered for the writers.

/// Largest descriptor read, standalone or embedded (the same limit as qemu: 1 MiB).
pub const MAX_DESCRIPTOR_LEN: u64 = (1 << 20) - 1;

/// Most extent lines in one descriptor. A 2 TiB disk in 2 GiB extents needs 1024; this leaves
/// room for larger split disks while bounding the files opened.
pub const MAX_EXTENTS: usize = 16384;

/// Who may access an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    /// `RW`.
    ReadWrite,
    /// `RDONLY`.
    ReadOnly,
    /// `NOACCESS`.
    NoAccess,
}

impl AccessMode {
    /// The keyword as written in the descriptor.
    pub fn keyword(self) -> &'static str {
        match self {
            AccessMode::ReadWrite => "RW",
            AccessMode::ReadOnly => "RDONLY",
            AccessMode::NoAccess => "NOACCESS",
        }
    }
}

/// The type of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentType {
    /// `SPARSE`: a hosted sparse extent (`KDMV`).
    Sparse,
    /// `FLAT`: raw data at an offset in a file.
    Flat,
    /// `ZERO`: reads as zeros, no file.
    Zero,
    /// `VMFS`: an ESX flat extent (raw data from offset 0).
    Vmfs,
    /// `VMFSSPARSE`: an ESX snapshot delta (`COWD`).
    VmfsSparse,
    /// Types that are recognised but not read (`VMFSRAW`, `VMFSRDM`, `SESPARSE`).
    Other,
}

impl ExtentType {
    fn parse(s: &str) -> Option<ExtentType> {
        Some(match s {
            "SPARSE" => ExtentType::Sparse,
            "FLAT" => ExtentType::Flat,
            "ZERO" => ExtentType::Zero,
            "VMFS" => ExtentType::Vmfs,
            "VMFSSPARSE" => ExtentType::VmfsSparse,
            "VMFSRAW" | "VMFSRDM" | "SESPARSE" => ExtentType::Other,
            _ => return None,
        })
    }
}

/// One extent line: `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// Access mode.
    pub access: AccessMode,
    /// Size in sectors.
    pub sectors: u64,
    /// Extent type.
    pub kind: ExtentType,
    /// The type as written.
    pub type_name: String,
    /// The extent file (none for `ZERO`).
    pub file: Option<String>,
    /// Offset in sectors into the file (`FLAT`).
    pub offset: u64,
    /// 1-based line number in the descriptor, for errors.
    pub line: usize,
}

/// A parsed descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// `key=value` settings and `ddb.*` entries in order, quotes removed.
    pub entries: Vec<(String, String)>,
    /// The extent lines, in order.
    pub extents: Vec<ExtentLine>,
}

impl Descriptor {
    /// The value of `key` (case-sensitive, as VMware writes them), last one wins.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `createType`.
    pub fn create_type(&self) -> Option<&str> {
        self.get("createType")
    }

    /// `parentFileNameHint`, if non-empty.
    pub fn parent_hint(&self) -> Option<&str> {
        self.get("parentFileNameHint").filter(|s| !s.is_empty())
    }

    /// Parses descriptor text. Errors are (1-based line number, what is wrong).
    pub fn parse(text: &str) -> Result<Descriptor, (usize, String)> {
        Self::parse_with(text, true)
    }

    /// Parses an embedded descriptor as qemu does: settings only matter, so bad extent lines are
    /// skipped instead of refused.
    pub fn parse_lenient(text: &str) -> Descriptor {
        Self::parse_with(text, false).unwrap_or_default()
    }

    fn parse_with(text: &str, strict: bool) -> Result<Descriptor, (usize, String)> {
        let mut d = Descriptor::default();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            let access = match first {
                "RW" => Some(AccessMode::ReadWrite),
                "RDONLY" => Some(AccessMode::ReadOnly),
                "NOACCESS" => Some(AccessMode::NoAccess),
                _ => None,
            };
            if let Some(access) = access {
                if d.extents.len() >= MAX_EXTENTS {
                    if strict {
                        return Err((line_no, format!("more than {MAX_EXTENTS} extents")));
                    }
                    continue;
                }
                match parse_extent(access, &line[first.len()..], line_no) {
                    Ok(e) => d.extents.push(e),
                    Err(e) if strict => return Err(e),
                    Err(_) => {}
                }
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .map(|s| s.strip_suffix('"').unwrap_or(s))
                    .unwrap_or(v);
                d.entries.push((k.trim().to_string(), v.to_string()));
            }
            // Other lines (unknown keywords) are ignored, as VMware and qemu do.
        }
        Ok(d)
    }
}

/// Parses the part of an extent line after the access keyword.
fn parse_extent(
    access: AccessMode,
    rest: &str,
    line: usize,
) -> Result<ExtentLine, (usize, String)> {
    let bad = |what: String| (line, what);
    let rest = rest.trim_start();
    let (sectors, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let sectors: u64 = sectors.parse().map_err(|_| {
        bad(format!(
            "extent size '{sectors}' is not a number of sectors"
        ))
    })?;
    let rest = rest.trim_start();
    let (type_name, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let kind = ExtentType::parse(type_name)
        .ok_or_else(|| bad(format!("unknown extent type '{type_name}'")))?;
    let rest = rest.trim();
    let (file, rest) = if let Some(q) = rest.strip_prefix('"') {
        let end = q
            .find('"')
            .ok_or_else(|| bad("extent file name has no closing quote".into()))?;
        (Some(q[..end].to_string()), q[end + 1..].trim())
    } else if rest.is_empty() {
        (None, "")
    } else {
        return Err(bad(format!(
            "extent file name must be quoted, found '{rest}'"
        )));
    };
    let offset = if rest.is_empty() {
        None
    } else {
        Some(
            rest.parse::<u64>()
                .map_err(|_| bad(format!("extent offset '{rest}' is not a number of sectors")))?,
        )
    };
    match kind {
        ExtentType::Zero => {}
        _ if file.as_deref().is_none_or(str::is_empty) => {
            return Err(bad(format!("{type_name} extent has no file name")));
        }
        ExtentType::Flat if offset.is_none() => {
            return Err(bad("FLAT extent has no offset".into()));
        }
        ExtentType::Sparse | ExtentType::VmfsSparse | ExtentType::Vmfs if offset.is_some() => {
            return Err(bad(format!("{type_name} extent takes no offset")));
        }
        _ => {}
    }
    if sectors == 0 {
        return Err(bad("extent of 0 sectors".into()));
    }
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        type_name: type_name.to_string(),
        file,
        offset: offset.unwrap_or(0),
        line,
    })
}

/// Checks that descriptor bytes are text: UTF-8 without control characters other than tab, CR
/// and LF (trailing NUL padding is removed first). Returns the text or what is wrong.
pub fn as_text(bytes: &[u8]) -> Result<&str, String> {
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    let bytes = &bytes[..end];
    if let Some(p) = bytes
        .iter()
        .position(|b| *b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n'))
    {
        return Err(format!(
            "not text: control byte {:#04x} at offset {p:#x}",
            bytes[p]
        ));
    }
    std::str::from_utf8(bytes).map_err(|e| format!("not text: {e}"))
}

/// What the writers put in a descriptor.
#[derive(Debug, Clone)]
pub struct DescriptorSpec<'a> {
    /// Content ID.
    pub cid: u32,
    /// Parent content ID (`0xffffffff` for none).
    pub parent_cid: u32,
    /// `createType`.
    pub create_type: &'a str,
    /// The extent lines, each without newline.
    pub extents: Vec<String>,
    /// Virtual size in bytes (for the geometry).
    pub size: u64,
    /// `ddb.adapterType`.
    pub adapter_type: &'a str,
}

/// `ddb.virtualHWVersion` written (qemu's default).
pub const HW_VERSION: &str = "4";

/// `ddb.toolsVersion` written (qemu's default).
pub const TOOLS_VERSION: &str = "2147483647";

/// Renders a descriptor as qemu-img writes it (same keys, order and geometry).
pub fn render(spec: &DescriptorSpec<'_>) -> String {
    // qemu: 16 heads for IDE, 255 for SCSI adapters; 63 sectors per track; cylinders not capped.
    let heads: u64 = if spec.adapter_type == "ide" { 16 } else { 255 };
    let cylinders = spec.size / (63 * heads * 512);
    let mut s = String::new();
    s.push_str("# Disk DescriptorFile\nversion=1\n");
    s.push_str(&format!(
        "CID={:08x}\nparentCID={:08x}\n",
        spec.cid, spec.parent_cid
    ));
    s.push_str(&format!("createType=\"{}\"\n", spec.create_type));
    s.push_str("\n# Extent description\n");
    for e in &spec.extents {
        s.push_str(e);
        s.push('\n');
    }
    s.push_str("\n# The Disk Data Base\n#DDB\n\n");
    s.push_str(&format!("ddb.virtualHWVersion = \"{HW_VERSION}\"\n"));
    s.push_str(&format!("ddb.geometry.cylinders = \"{cylinders}\"\n"));
    s.push_str(&format!("ddb.geometry.heads = \"{heads}\"\n"));
    s.push_str("ddb.geometry.sectors = \"63\"\n");
    s.push_str(&format!("ddb.adapterType = \"{}\"\n", spec.adapter_type));
    s.push_str(&format!("ddb.toolsVersion = \"{TOOLS_VERSION}\"\n"));
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_vmware_descriptor() {
        let text = "# Disk DescriptorFile\nversion=1\nCID=0172e8a4\nparentCID=ffffffff\n\
                    createType=\"vmfs\"\nparentFileNameHint=\"base name.vmdk\"\n\n\
                    RW 4096 VMFS \"vmfs_thick-flat.vmdk\"\nRDONLY 10 FLAT \"a b.vmdk\" 7\n\
                    NOACCESS 5 ZERO\n#DDB\nddb.adapterType = \"lsilogic\"\nddb.geometry.heads=\"64\"\n";
        let d = Descriptor::parse(text).unwrap();
        assert_eq!(d.create_type(), Some("vmfs"));
        assert_eq!(d.get("CID"), Some("0172e8a4"));
        assert_eq!(d.parent_hint(), Some("base name.vmdk"));
        assert_eq!(d.get("ddb.adapterType"), Some("lsilogic"));
        assert_eq!(d.get("ddb.geometry.heads"), Some("64"));
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[0].kind, ExtentType::Vmfs);
        assert_eq!(d.extents[0].sectors, 4096);
        assert_eq!(d.extents[1].file.as_deref(), Some("a b.vmdk"));
        assert_eq!(d.extents[1].offset, 7);
        assert_eq!(d.extents[1].access, AccessMode::ReadOnly);
        assert_eq!(d.extents[2].kind, ExtentType::Zero);
        assert_eq!(d.extents[2].file, None);
    }

    #[test]
    fn refuses_bad_extent_lines() {
        for bad in [
            "RW x SPARSE \"a\"",
            "RW 10 BOGUS \"a\"",
            "RW 10 FLAT \"a\"",
            "RW 10 SPARSE \"a\" 5",
            "RW 10 SPARSE \"a",
            "RW 10 SPARSE a",
            "RW 0 SPARSE \"a\"",
            "RW 10 SPARSE",
            "RW 10 FLAT \"a\" z",
        ] {
            assert!(Descriptor::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_check_refuses_binary() {
        assert_eq!(as_text(b"a=1\n\0\0\0").unwrap(), "a=1\n");
        assert!(as_text(b"a=1\x01\n").is_err());
        assert!(as_text(b"a=\xff\n").is_err());
        assert!(as_text(b"a\0b").is_err());
    }

    #[test]
    fn renders_like_qemu() {
        let s = render(&DescriptorSpec {
            cid: 0x13c9b0b3,
            parent_cid: 0xffffffff,
            create_type: "monolithicSparse",
            extents: vec!["RW 16384 SPARSE \"ms.vmdk\"".into()],
            size: 8 << 20,
            adapter_type: "ide",
        });
        let qemu = "# Disk DescriptorFile\nversion=1\nCID=13c9b0b3\nparentCID=ffffffff\n\
                    createType=\"monolithicSparse\"\n\n# Extent description\n\
                    RW 16384 SPARSE \"ms.vmdk\"\n\n# The Disk Data Base\n#DDB\n\n\
                    ddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"16\"\n\
                    ddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\n\
                    ddb.adapterType = \"ide\"\nddb.toolsVersion = \"2147483647\"\n";
        assert_eq!(s, qemu);
    }
}
