//! The OVF descriptor (DMTF DSP0243, OVF 0.9, 1.x and 2.x): the XML envelope that names the
//! package's files and disks. Only what reading the disks needs is parsed: the file references,
//! the disk section, the OVF version and the virtual system's name.

use quick_xml::events::{BytesStart, Event};

/// Largest descriptor read. Real descriptors are a few KiB to a few hundred KiB (VirtualBox
/// embeds its whole machine configuration); this bounds memory on a hostile archive.
pub const MAX_DESCRIPTOR_LEN: u64 = 16 << 20;

/// Most `File` references accepted in one descriptor.
pub const MAX_ENTRIES: usize = 4096;

/// Most `Disk` entries accepted in one descriptor (each is opened): more than any hypervisor
/// attaches to one machine (VMware: 4×15 SCSI + 4×30 SATA + 4×15 NVMe = 240).
pub const MAX_DISKS: usize = 256;

/// Deepest element nesting accepted (real descriptors nest fewer than 10 levels).
pub const MAX_DEPTH: usize = 256;

/// A `References/File` entry: a file of the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// `ovf:id`, what disks refer to.
    pub id: String,
    /// `ovf:href`, the file's name in the archive (a relative URL).
    pub href: String,
    /// `ovf:size`, if given.
    pub size: Option<u64>,
    /// `ovf:compression` (`gzip`), if given.
    pub compression: Option<String>,
    /// `ovf:chunkSize`, if given (the file is split in chunks).
    pub chunk_size: Option<u64>,
}

/// A `DiskSection/Disk` entry: a virtual disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// `ovf:diskId`.
    pub id: String,
    /// `ovf:fileRef`: the [`FileRef::id`] of its content; none for a blank disk.
    pub file_ref: Option<String>,
    /// Capacity in bytes (`ovf:capacity` times `ovf:capacityAllocationUnits`); `None` when the
    /// capacity is a `${property}` reference.
    pub capacity: Option<u64>,
    /// `ovf:format`, a URL naming the disk format.
    pub format: Option<String>,
    /// `ovf:populatedSize`, if given.
    pub populated_size: Option<u64>,
}

/// What the descriptor says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// OVF version: `ovf:version` of the envelope, or from its namespace (`1.0`, `2.0`, `0.9`).
    pub version: String,
    /// The package's files.
    pub files: Vec<FileRef>,
    /// The virtual disks, in order.
    pub disks: Vec<Disk>,
    /// The first virtual system's `Name` (or its `ovf:id`).
    pub system_name: Option<String>,
}

/// A descriptor that could not be parsed: what is wrong, and the byte position in the
/// descriptor (from which the caller computes line and column and the offset in the archive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the descriptor.
    pub position: u64,
    /// What is wrong.
    pub message: String,
}

impl ParseError {
    fn new(position: u64, message: impl Into<String>) -> Self {
        ParseError {
            position,
            message: message.into(),
        }
    }
}

/// The 1-based line and column of byte `pos` in `text`.
pub fn line_column(text: &[u8], pos: u64) -> (usize, usize) {
    let pos = (pos as usize).min(text.len());
    let before = &text[..pos];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = pos
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, col)
}

/// Multiplier of an OVF `capacityAllocationUnits` value: `byte`, `byte * 2^20`, `byte * 10^9`,
/// `byte * 1024`, or the older `KiloBytes`/`MegaBytes`/`GigaBytes`/`TeraBytes` (powers of 1024,
/// as VirtualBox means them).
pub fn allocation_units(units: &str) -> Option<u64> {
    let compact: String = units.chars().filter(|c| !c.is_whitespace()).collect();
    match compact.to_ascii_lowercase().as_str() {
        "" | "byte" | "bytes" => return Some(1),
        "kilobytes" | "kb" => return Some(1 << 10),
        "megabytes" | "mb" => return Some(1 << 20),
        "gigabytes" | "gb" => return Some(1 << 30),
        "terabytes" | "tb" => return Some(1 << 40),
        _ => {}
    }
    let rest = compact.strip_prefix("byte*")?;
    if let Some((base, exp)) = rest.split_once('^') {
        let base: u64 = base.parse().ok()?;
        let exp: u32 = exp.parse().ok()?;
        return base.checked_pow(exp);
    }
    rest.parse().ok()
}

/// Parses a capacity and its units into bytes: `Ok(None)` for a property reference.
fn capacity_bytes(value: &str, units: Option<&str>) -> Result<Option<u64>, String> {
    let v = value.trim();
    if v.starts_with("${") {
        return Ok(None);
    }
    let n: u64 = v
        .parse()
        .map_err(|_| format!("disk capacity '{v}' is not a number"))?;
    let unit_str = units.unwrap_or("byte");
    let mult = allocation_units(unit_str)
        .ok_or_else(|| format!("capacity allocation units '{unit_str}' are not understood"))?;
    n.checked_mul(mult)
        .map(Some)
        .ok_or_else(|| format!("disk capacity {v} × {unit_str} overflows"))
}

/// The attributes of `e` as (local name, unescaped value) pairs: `ovf:href` and `href` alike.
fn attributes(e: &BytesStart<'_>, pos: u64) -> Result<Vec<(String, String)>, ParseError> {
    let mut out = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| ParseError::new(pos, format!("bad attribute: {err}")))?;
        let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
        let value = a
            .unescape_value()
            .map_err(|err| ParseError::new(pos, format!("bad attribute value: {err}")))?
            .into_owned();
        out.push((key, value));
    }
    Ok(out)
}

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn number(
    attrs: &[(String, String)],
    name: &str,
    element: &str,
    pos: u64,
) -> Result<Option<u64>, ParseError> {
    attr(attrs, name)
        .map(|v| {
            v.trim().parse().map_err(|_| {
                ParseError::new(pos, format!("{element} {name}='{v}' is not a number"))
            })
        })
        .transpose()
}

/// Returns true if and only if `name` is a valid XML name (letters, digits, `.`, `-`, `_`, `:`
/// and any non-ASCII character, not starting with a digit, `.` or `-`).
fn valid_name(name: &[u8]) -> bool {
    let ok =
        |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':') || *b >= 0x80;
    match name.first() {
        Some(b) if b.is_ascii_digit() || matches!(b, b'.' | b'-') => false,
        Some(_) => name.iter().all(ok),
        None => false,
    }
}

/// Checks that `text` is well-formed XML (every tag closed in order, one root element), so
/// that illegal XML is reported as such before anything about its content.
fn check_well_formed(text: &[u8]) -> Result<(), ParseError> {
    let mut reader = quick_xml::Reader::from_reader(text);
    // Open elements: name and where the start tag is.
    let mut open: Vec<(String, u64)> = Vec::new();
    let mut roots = 0usize;
    loop {
        let mut pos = reader.buffer_position();
        while text.get(pos as usize).is_some_and(u8::is_ascii_whitespace) {
            pos += 1;
        }
        let ev = reader.read_event();
        let name = match &ev {
            Ok(Event::Start(e) | Event::Empty(e)) => Some(e.name()),
            Ok(Event::End(e)) => Some(e.name()),
            _ => None,
        };
        if let Some(n) = name.filter(|n| !valid_name(n.as_ref())) {
            return Err(ParseError::new(
                pos,
                format!(
                    "illegal XML: '{}' is not a valid element name",
                    String::from_utf8_lossy(n.as_ref())
                ),
            ));
        }
        match ev {
            Err(e) => {
                return Err(ParseError::new(
                    reader.error_position(),
                    format!("illegal XML: {e}"),
                ));
            }
            Ok(Event::Start(e)) => {
                if open.is_empty() {
                    roots += 1;
                }
                if open.len() >= MAX_DEPTH {
                    return Err(ParseError::new(
                        pos,
                        format!("elements nest deeper than {MAX_DEPTH} levels"),
                    ));
                }
                open.push((String::from_utf8_lossy(e.name().as_ref()).into_owned(), pos));
            }
            Ok(Event::Empty(_)) if open.is_empty() => roots += 1,
            Ok(Event::End(_)) => {
                open.pop();
            }
            Ok(Event::Text(t)) if open.is_empty() && !t.iter().all(u8::is_ascii_whitespace) => {
                return Err(ParseError::new(
                    pos,
                    "illegal XML: text outside the root element",
                ));
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
        }
        if roots > 1 {
            return Err(ParseError::new(
                pos,
                "illegal XML: more than one root element",
            ));
        }
    }
    if let Some((name, pos)) = open.last() {
        return Err(ParseError::new(
            *pos,
            format!("illegal XML: element <{name}> is never closed (the document ends first)"),
        ));
    }
    if roots == 0 {
        return Err(ParseError::new(
            0,
            "no XML element at all (empty descriptor)",
        ));
    }
    Ok(())
}

/// Parses a descriptor.
pub fn parse(text: &[u8]) -> Result<Descriptor, ParseError> {
    let bom = if text.starts_with(b"\xef\xbb\xbf") {
        3
    } else {
        0
    };
    parse_content(&text[bom..]).map_err(|mut e| {
        e.position += bom as u64;
        e
    })
}

/// Parses a descriptor without a byte-order mark.
fn parse_content(text: &[u8]) -> Result<Descriptor, ParseError> {
    check_well_formed(text)?;
    let mut reader = quick_xml::Reader::from_reader(text);
    reader.config_mut().trim_text(true);
    let mut d = Descriptor::default();
    let mut stack: Vec<String> = Vec::new();
    let mut root_seen = false;
    let mut in_system = 0usize;
    let mut system_id: Option<String> = None;
    let mut name_text: Option<String> = None;
    loop {
        let mut pos = reader.buffer_position();
        // Point at the event itself, not the whitespace before it.
        while text.get(pos as usize).is_some_and(u8::is_ascii_whitespace) {
            pos += 1;
        }
        let ev = reader
            .read_event()
            .map_err(|e| ParseError::new(reader.error_position(), format!("illegal XML: {e}")))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(ev, Event::Empty(_));
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if stack.is_empty() {
                    if root_seen {
                        return Err(ParseError::new(
                            pos,
                            format!("illegal XML: second root element <{local}>"),
                        ));
                    }
                    root_seen = true;
                    if local != "Envelope" {
                        return Err(ParseError::new(
                            pos,
                            format!("root element is <{local}>, not an OVF <Envelope>"),
                        ));
                    }
                    let attrs = attributes(e, pos)?;
                    d.version = attr(&attrs, "version")
                        .map(str::to_string)
                        .or_else(|| {
                            attrs
                                .iter()
                                .find(|(k, _)| k == "xmlns")
                                .and_then(|(_, ns)| version_from_namespace(ns))
                        })
                        .unwrap_or_default();
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(ParseError::new(
                        pos,
                        format!("elements nest deeper than {MAX_DEPTH} levels"),
                    ));
                }
                let parent = stack.last().map(String::as_str);
                match (parent, local.as_str()) {
                    (Some("References"), "File") => {
                        let a = attributes(e, pos)?;
                        let href = attr(&a, "href").ok_or_else(|| {
                            ParseError::new(pos, "References/File has no ovf:href")
                        })?;
                        let id = attr(&a, "id").unwrap_or(href);
                        if d.files.len() >= MAX_ENTRIES {
                            return Err(ParseError::new(
                                pos,
                                format!("more than {MAX_ENTRIES} file references"),
                            ));
                        }
                        d.files.push(FileRef {
                            id: id.to_string(),
                            href: href.to_string(),
                            size: number(&a, "size", "File", pos)?,
                            compression: attr(&a, "compression")
                                .filter(|c| !c.is_empty() && *c != "identity")
                                .map(str::to_string),
                            chunk_size: number(&a, "chunkSize", "File", pos)?,
                        });
                    }
                    (Some("DiskSection" | "Section"), "Disk") => {
                        let a = attributes(e, pos)?;
                        let id = attr(&a, "diskId").unwrap_or_default().to_string();
                        let capacity = match attr(&a, "capacity") {
                            Some(c) => capacity_bytes(c, attr(&a, "capacityAllocationUnits"))
                                .map_err(|m| ParseError::new(pos, format!("Disk '{id}': {m}")))?,
                            None => {
                                return Err(ParseError::new(
                                    pos,
                                    format!("Disk '{id}' has no ovf:capacity"),
                                ));
                            }
                        };
                        if d.disks.len() >= MAX_DISKS {
                            return Err(ParseError::new(
                                pos,
                                format!("more than {MAX_DISKS} disks"),
                            ));
                        }
                        d.disks.push(Disk {
                            id,
                            file_ref: attr(&a, "fileRef")
                                .filter(|f| !f.is_empty())
                                .map(str::to_string),
                            capacity,
                            format: attr(&a, "format").map(str::to_string),
                            populated_size: number(&a, "populatedSize", "Disk", pos)?,
                        });
                    }
                    (_, "VirtualSystem") => {
                        in_system += 1;
                        if system_id.is_none() {
                            let a = attributes(e, pos)?;
                            system_id = attr(&a, "id").map(str::to_string);
                        }
                        if empty {
                            in_system -= 1;
                        }
                    }
                    _ => {}
                }
                if !empty {
                    stack.push(local);
                }
            }
            Event::End(_) => {
                let Some(closed) = stack.pop() else {
                    return Err(ParseError::new(pos, "illegal XML: end tag without a start"));
                };
                if closed == "VirtualSystem" {
                    in_system = in_system.saturating_sub(1);
                }
            }
            Event::Text(t)
                if in_system > 0
                    && name_text.is_none()
                    && stack.len() >= 2
                    && stack[stack.len() - 2..] == ["VirtualSystem", "Name"] =>
            {
                let s = t
                    .unescape()
                    .map_err(|e| ParseError::new(pos, format!("illegal XML: {e}")))?;
                name_text = Some(s.trim().to_string());
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(open) = stack.last() {
        return Err(ParseError::new(
            text.len() as u64,
            format!("illegal XML: the document ends with <{open}> still open"),
        ));
    }
    if !root_seen {
        return Err(ParseError::new(
            0,
            "no XML element at all (empty descriptor)",
        ));
    }
    d.system_name = name_text.or(system_id);
    Ok(d)
}

/// The OVF version an envelope namespace stands for.
fn version_from_namespace(ns: &str) -> Option<String> {
    Some(
        match ns.trim_end_matches('/') {
            "http://schemas.dmtf.org/ovf/envelope/1" => "1.0",
            "http://schemas.dmtf.org/ovf/envelope/2" => "2.0",
            "http://www.vmware.com/schema/ovf/1/envelope" => "0.9",
            _ => return None,
        }
        .to_string(),
    )
}

impl Descriptor {
    /// The file reference with id `id`.
    pub fn file(&self, id: &str) -> Option<&FileRef> {
        self.files.iter().find(|f| f.id == id)
    }
}

/// Escapes `s` for XML text and attribute values.
pub fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// What a descriptor written by stamp describes: one virtual system with one disk.
#[derive(Debug, Clone)]
pub struct Appliance<'a> {
    /// The virtual system's name.
    pub name: &'a str,
    /// The disk file's name in the archive.
    pub disk_file: &'a str,
    /// The disk file's size in bytes.
    pub disk_file_size: u64,
    /// The virtual disk's size in bytes.
    pub capacity: u64,
    /// Bytes of data stored in the disk.
    pub populated_size: u64,
}

/// The streamOptimized VMDK format URL of OVF `Disk` entries.
pub const VMDK_STREAM_FORMAT: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

/// An OVF 1.0 descriptor for `a`: one virtual system with 1 CPU, 1 GiB of memory, an LSI Logic
/// SCSI controller holding the disk, and an E1000 NIC on "VM Network", in the shape VMware's
/// ovftool and open-vmdk write (vmx-14 hardware, which vSphere 6.7+, VirtualBox and AWS
/// ImportImage all accept).
pub fn render(a: &Appliance<'_>) -> String {
    let name = escape(a.name);
    let file = escape(a.disk_file);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{file}" ovf:id="file1" ovf:size="{file_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="{format}" ovf:populatedSize="{populated}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest">
      <Info>The kind of installed guest operating system</Info>
      <Description>Other Linux (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>1 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>1024MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1024</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>E1000 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Ethernet 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#,
        file_size = a.disk_file_size,
        capacity = a.capacity,
        format = VMDK_STREAM_FORMAT,
        populated = a.populated_size,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn units_are_understood() {
        assert_eq!(allocation_units("byte"), Some(1));
        assert_eq!(allocation_units("byte * 2^20"), Some(1 << 20));
        assert_eq!(allocation_units("byte*2^30"), Some(1 << 30));
        assert_eq!(allocation_units("byte * 10^9"), Some(1_000_000_000));
        assert_eq!(allocation_units("byte * 1024"), Some(1024));
        assert_eq!(allocation_units("MegaBytes"), Some(1 << 20));
        assert_eq!(allocation_units("byte * 2^99"), None);
        assert_eq!(allocation_units("furlongs"), None);
        assert_eq!(
            capacity_bytes("30", Some("byte * 2^20")),
            Ok(Some(30 << 20))
        );
        assert_eq!(capacity_bytes("${disk.size}", None), Ok(None));
        assert!(capacity_bytes("99999999999999", Some("byte * 2^30")).is_err());
        assert!(capacity_bytes("-1", None).is_err());
    }

    #[test]
    fn what_we_write_parses_back() {
        let text = render(&Appliance {
            name: "a&b",
            disk_file: "a&b-disk1.vmdk",
            disk_file_size: 1234,
            capacity: 64 << 20,
            populated_size: 99,
        });
        let d = parse(text.as_bytes()).unwrap();
        assert_eq!(d.version, "1.0");
        assert_eq!(d.system_name.as_deref(), Some("a&b"));
        assert_eq!(
            d.files,
            [FileRef {
                id: "file1".into(),
                href: "a&b-disk1.vmdk".into(),
                size: Some(1234),
                compression: None,
                chunk_size: None,
            }]
        );
        assert_eq!(d.disks.len(), 1);
        assert_eq!(d.disks[0].capacity, Some(64 << 20));
        assert_eq!(d.disks[0].file_ref.as_deref(), Some("file1"));
        assert_eq!(d.disks[0].populated_size, Some(99));
        assert_eq!(d.disks[0].format.as_deref(), Some(VMDK_STREAM_FORMAT));
    }

    #[test]
    fn version_comes_from_the_attribute_or_the_namespace() {
        let v2 = br#"<Envelope ovf:version="2.0" xmlns="http://schemas.dmtf.org/ovf/envelope/2" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2"><References/></Envelope>"#;
        assert_eq!(parse(v2).unwrap().version, "2.0");
        let v09 = br#"<Envelope xmlns="http://www.vmware.com/schema/ovf/1/envelope"><Section xsi:type="ovf:DiskSection_Type"><Disk ovf:diskId="d" ovf:capacity="1"/></Section></Envelope>"#;
        let d = parse(v09).unwrap();
        assert_eq!(d.version, "0.9");
        assert_eq!(d.disks.len(), 1);
    }

    #[test]
    fn bad_xml_is_located() {
        let text = b"<?xml version=\"1.0\"?>\n<OpenTag> does not match <<ClosingTag>>\n";
        let e = parse(text).unwrap_err();
        let (line, _) = line_column(text, e.position);
        assert_eq!(line, 2, "{e:?}");
        assert!(
            e.message
                .contains("'<ClosingTag' is not a valid element name"),
            "{e:?}"
        );
        assert_eq!(line_column(text, e.position), (2, 26));
        let e = parse(b"<Envelope><a></b></Envelope>").unwrap_err();
        assert!(e.message.contains("illegal XML"), "{e:?}");
        let e = parse(b"<Envelope><a>").unwrap_err();
        assert!(e.message.contains("never closed"), "{e:?}");
        let e = parse(b"<html/>").unwrap_err();
        assert!(e.message.contains("not an OVF"), "{e:?}");
        assert!(parse(b"").is_err());
        let e =
            parse(b"<Envelope><DiskSection><Disk ovf:capacity=\"x\"/></DiskSection></Envelope>")
                .unwrap_err();
        assert!(e.message.contains("not a number"), "{e:?}");
        assert_eq!(line_column(b"ab\ncd", 4), (2, 2));
    }
}
