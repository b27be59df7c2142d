//! The legacy import manifest of ImportVolume/ImportInstance (`importManifestUrl`): an XML
//! document listing the parts of a disk, each an object with a byte range of the disk and a
//! URL to GET it.
//!
//! ```xml
//! <manifest>
//!   <version>2010-11-15</version>
//!   <file-format>RAW</file-format>
//!   <import>
//!     <size>10485760</size>
//!     <volume-size>1</volume-size>
//!     <parts count="2">
//!       <part index="0">
//!         <byte-range start="0" end="5242879"/>
//!         <key>disk.raw.part0</key>
//!         <get-url>https://…</get-url>
//!       </part>
//!       …
//!     </parts>
//!   </import>
//! </manifest>
//! ```

use std::fs::File;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use quick_xml::events::{BytesStart, Event};

use crate::objects::{Fetched, UrlPolicy, download_into};
use crate::{Error, Result};

/// Largest manifest accepted.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Most parts accepted.
pub const MAX_PARTS: usize = 100_000;

/// One part of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Its index.
    pub index: u64,
    /// First byte of the disk it holds.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
    /// Its key.
    pub key: String,
    /// Where to GET it.
    pub get_url: String,
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// `RAW`, `VMDK`, `VHD`.
    pub format: String,
    /// Bytes of the disk image file.
    pub size: u64,
    /// The volume size in GiB.
    pub volume_size: Option<u64>,
    /// The parts, by index, covering `0..size` without gaps.
    pub parts: Vec<Part>,
}

fn bad(why: impl Into<String>) -> Error {
    Error::Invalid(format!(
        "ClientError: invalid import manifest: {}",
        why.into()
    ))
}

fn attr(e: &BytesStart<'_>, name: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name)
        .and_then(|a| String::from_utf8(a.value.into_owned()).ok())
}

fn num(s: Option<&str>, what: &str) -> Result<u64> {
    s.map(str::trim)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad(format!("{what} is missing or not a number")))
}

/// A part as read: index, byte-range start and end, key, get-url.
type RawPart = (
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
);

/// Parses a manifest and checks that its parts cover the disk exactly, in order.
pub fn parse(xml: &[u8]) -> Result<Manifest> {
    let mut r = quick_xml::Reader::from_reader(xml);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut buf = Vec::new();
    let (mut format, mut size, mut volume_size) = (None, None, None);
    let mut parts = Vec::new();
    let mut cur: Option<RawPart> = None;
    loop {
        let ev = r
            .read_event_into(&mut buf)
            .map_err(|e| bad(format!("XML at byte {}: {e}", r.buffer_position())))?;
        match ev {
            Event::Start(e) | Event::Empty(e) if path.len() > 64 => {
                let _ = e;
                return Err(bad("nested too deeply"));
            }
            Event::Start(e) => {
                let name = e.name().as_ref().to_vec();
                if name == b"part" {
                    if parts.len() >= MAX_PARTS {
                        return Err(bad(format!("more than {MAX_PARTS} parts")));
                    }
                    cur = Some((attr(&e, b"index"), None, None, String::new(), String::new()));
                } else if name == b"byte-range"
                    && let Some(c) = cur.as_mut()
                {
                    c.1 = attr(&e, b"start");
                    c.2 = attr(&e, b"end");
                }
                path.push(name);
            }
            Event::Empty(e) => {
                if e.name().as_ref() == b"byte-range"
                    && let Some(c) = cur.as_mut()
                {
                    c.1 = attr(&e, b"start");
                    c.2 = attr(&e, b"end");
                }
            }
            Event::Text(t) => {
                let text = t
                    .unescape()
                    .map_err(|e| bad(format!("text: {e}")))?
                    .trim()
                    .to_string();
                match path.last().map(Vec::as_slice) {
                    Some(b"file-format") => format = Some(text),
                    Some(b"size") if path.iter().any(|p| p == b"import") => size = Some(text),
                    Some(b"volume-size") => volume_size = Some(text),
                    Some(b"key") => {
                        if let Some(c) = cur.as_mut() {
                            c.3.push_str(&text)
                        }
                    }
                    Some(b"get-url") => {
                        if let Some(c) = cur.as_mut() {
                            c.4.push_str(&text)
                        }
                    }
                    _ => {}
                }
            }
            Event::End(e) => {
                if e.name().as_ref() == b"part"
                    && let Some((index, start, end, key, url)) = cur.take()
                {
                    parts.push(Part {
                        index: num(index.as_deref(), "a part's index")?,
                        start: num(start.as_deref(), "a part's byte-range start")?,
                        end: num(end.as_deref(), "a part's byte-range end")?,
                        key,
                        get_url: url,
                    });
                }
                path.pop();
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    let format = format.ok_or_else(|| bad("no file-format"))?;
    let size = num(size.as_deref(), "import/size")?;
    let volume_size = volume_size.and_then(|v| v.trim().parse().ok());
    parts.sort_by_key(|p| p.index);
    let mut next = 0u64;
    for p in &parts {
        if p.start != next || p.end < p.start {
            return Err(bad(format!(
                "part {} covers bytes {}..={}, expected to start at {next}",
                p.index, p.start, p.end
            )));
        }
        if p.get_url.is_empty() {
            return Err(bad(format!("part {} has no get-url", p.index)));
        }
        next = p
            .end
            .checked_add(1)
            .ok_or_else(|| bad("a byte range overflows"))?;
    }
    if next != size {
        return Err(bad(format!(
            "the parts cover {next} bytes; the disk is {size}"
        )));
    }
    Ok(Manifest {
        format,
        size,
        volume_size,
        parts,
    })
}

/// Downloads and parses the manifest at `url`.
pub fn fetch(url: &str, policy: UrlPolicy, cancel: &AtomicBool) -> Result<Manifest> {
    let dir = std::env::temp_dir();
    let tmp = dir.join(format!(".manifest.{:016x}", rand::random::<u64>()));
    let mut f = File::create_new(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    let r = download_into(url, &mut f, &tmp, MAX_MANIFEST, policy, cancel)
        .and_then(|_| std::fs::read(&tmp).map_err(|e| Error::io("read", &tmp, e)));
    let _ = std::fs::remove_file(&tmp);
    parse(&r?)
}

/// Fetches every part of `m` in order into one file in `scratch` (removed on drop, or at once
/// on failure); each part must be exactly its byte range.
pub fn download(
    m: &Manifest,
    scratch: &Path,
    policy: UrlPolicy,
    cancel: &AtomicBool,
) -> Result<Fetched> {
    std::fs::create_dir_all(scratch).map_err(|e| Error::io("create directory", scratch, e))?;
    let path = scratch.join(format!(".volume.{:016x}.part", rand::random::<u64>()));
    let mut f = File::create_new(&path).map_err(|e| Error::io("create", &path, e))?;
    // Owned from here: removed on drop.
    let out = Fetched::download(path.clone(), m.size);
    for p in &m.parts {
        let want = p.end - p.start + 1;
        let got = download_into(&p.get_url, &mut f, &path, want, policy, cancel)?;
        if got != want {
            return Err(bad(format!(
                "part {} ({}) is {got} bytes; its byte range is {want}",
                p.index, p.key
            )));
        }
    }
    f.sync_all().map_err(|e| Error::io("sync", &path, e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = r#"<?xml version="1.0"?>
<manifest><version>2010-11-15</version><file-format>RAW</file-format>
<importer><name>ec2-upload-disk-image</name></importer>
<import><size>10</size><volume-size>1</volume-size>
<parts count="2">
<part index="1"><byte-range end="9" start="6"/><key>d.part1</key><get-url>http://h/b?x=1&amp;y=2</get-url></part>
<part index="0"><byte-range end="5" start="0"/><key>d.part0</key><get-url>http://h/a</get-url></part>
</parts></import></manifest>"#;

    #[test]
    fn parts_are_ordered_and_must_cover_the_disk() {
        let m = parse(M.as_bytes()).unwrap();
        assert_eq!(m.format, "RAW");
        assert_eq!(m.size, 10);
        assert_eq!(m.volume_size, Some(1));
        assert_eq!(m.parts[0].get_url, "http://h/a");
        assert_eq!(m.parts[1].get_url, "http://h/b?x=1&y=2");
        assert_eq!(m.parts[1].start, 6);
        let gap = M.replace(r#"end="5" start="0""#, r#"end="4" start="0""#);
        assert!(parse(gap.as_bytes()).is_err());
        assert!(parse(b"<manifest><import>").is_err());
        assert!(parse(b"not xml <<<").is_err());
    }
}
