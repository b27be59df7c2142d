//! The tar archive around an OVA: walking its members (ustar, GNU and pax headers) without
//! extracting anything, and writing the ustar headers of a new one.
//!
//! A member's data lies at a known offset of the .ova file, so a disk inside is read in place
//! through a window of the file.

use crate::file::ImageFile;
use crate::{Ctx, Result};

/// Size of a tar block: headers are one block, member data is padded to whole blocks.
pub const BLOCK: u64 = 512;

/// Most members (and GNU/pax extension headers) walked in one archive. Real OVAs hold a
/// descriptor, a manifest, perhaps a certificate and a few disks; this bounds the walk of a
/// hostile file made of millions of empty members.
pub const MAX_MEMBERS: usize = 10_000;

/// Longest member name accepted from a GNU long-name or pax header (PATH_MAX on Linux).
pub const MAX_NAME_LEN: u64 = 4096;

/// Largest pax extended header read: real ones hold a path and a size in well under a KiB.
pub const MAX_PAX_LEN: u64 = 1 << 20;

/// One regular file in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name, with any leading `./` removed.
    pub name: String,
    /// Where its (first) header starts in the archive.
    pub header_offset: u64,
    /// Where its data starts in the archive.
    pub offset: u64,
    /// Its length in bytes.
    pub size: u64,
}

/// Parses a tar numeric field: octal digits (space or NUL terminated, possibly space padded
/// in front), or the GNU base-256 form (high bit of the first byte set) for large values.
fn numeric(field: &[u8]) -> Option<u64> {
    let first = *field.first()?;
    if first & 0x80 != 0 {
        // Base-256, big-endian; 0xff marks a negative number, meaningless for sizes and times.
        if first == 0xff {
            return None;
        }
        let mut v = u64::from(first & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let digits = field
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| **b != 0 && **b != b' ');
    let mut v = 0u64;
    for b in digits {
        if !(b'0'..=b'7').contains(b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Returns true if and only if the header's checksum field matches its content (tar writers
/// have summed the bytes as unsigned or, historically, as signed; both are accepted).
fn checksum_ok(h: &[u8; BLOCK as usize]) -> bool {
    let Some(stored) = numeric(&h[148..156]) else {
        return false;
    };
    let mut unsigned = 0u64;
    let mut signed = 0i64;
    for (i, b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

/// A NUL-terminated string field.
fn field_str(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Removes the `./` that some tar writers put before every name.
fn clean_name(name: &str) -> String {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("./") {
        n = rest;
    }
    n.to_string()
}

/// What a pax extended header overrides for the next member.
#[derive(Debug, Default)]
struct Pax {
    path: Option<String>,
    size: Option<u64>,
}

/// Parses pax records (`LEN key=value\n`), keeping `path` and `size`.
fn parse_pax(data: &[u8], ctx: &Ctx, at: u64) -> Result<Pax> {
    let mut pax = Pax::default();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|b| *b == 0) {
            break;
        }
        let bad = |what: &str| ctx.corrupt("tar pax header", at, what.to_string());
        let space = rest
            .iter()
            .position(|b| *b == b' ')
            .ok_or_else(|| bad("record has no length"))?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("record length is not a number"))?;
        if len <= space + 1 || len > rest.len() {
            return Err(bad(&format!(
                "record length {len} does not fit the {} bytes left",
                rest.len()
            )));
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|b| *b == b'=') {
            let key = &record[..eq];
            let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
            match key {
                b"path" => pax.path = Some(value),
                b"size" => {
                    pax.size = Some(
                        value
                            .parse()
                            .map_err(|_| bad(&format!("size '{value}' is not a number")))?,
                    )
                }
                _ => {}
            }
        }
        rest = &rest[len..];
    }
    Ok(pax)
}

/// Walks the archive in `file` and lists its regular files in order.
///
/// Fails if the file is not a tar archive (no valid header at offset 0), if a header is
/// damaged, if a member runs past the end of the file, or if a name appears twice (which copy
/// would be the real one?).
pub fn members(file: &ImageFile, ctx: &Ctx) -> Result<Vec<Member>> {
    let len = file.len();
    let mut out: Vec<Member> = Vec::new();
    let mut pos = 0u64;
    let mut headers = 0usize;
    let mut long_name: Option<String> = None;
    let mut pax = Pax::default();
    let mut pending_header: Option<u64> = None;
    loop {
        if pos >= len {
            // No end-of-archive blocks (or the last member's padding is cut off): accepted,
            // as GNU tar does (with a warning).
            break;
        }
        let mut h = [0u8; BLOCK as usize];
        if pos.checked_add(BLOCK).is_none_or(|end| end > len) {
            if pos == 0 {
                return Err(ctx.corrupt(
                    "tar header",
                    0,
                    format!("not a tar archive: the file is {len} bytes, shorter than one tar header (an OVA is a tar file)"),
                ));
            }
            return Err(ctx.corrupt(
                "tar header",
                pos,
                format!(
                    "archive is cut short: {} bytes left where a 512-byte header should be",
                    len - pos
                ),
            ));
        }
        file.read_exact_at(&mut h, pos, "tar header")?;
        if h.iter().all(|b| *b == 0) {
            break;
        }
        if !checksum_ok(&h) {
            if pos == 0 {
                return Err(ctx.corrupt(
                    "tar header",
                    0,
                    "not a tar archive: the first 512 bytes are not a tar header (bad checksum); an OVA is a tar file",
                ));
            }
            return Err(ctx.corrupt(
                "tar header",
                pos,
                "header checksum does not match (damaged archive)",
            ));
        }
        headers += 1;
        if headers > MAX_MEMBERS {
            return Err(ctx.corrupt(
                "tar header",
                pos,
                format!("more than {MAX_MEMBERS} members; not an OVA"),
            ));
        }
        let typeflag = h[156];
        let header_size = numeric(&h[124..136])
            .ok_or_else(|| ctx.corrupt("tar header", pos + 124, "size field is not a number"))?;
        let size = match (typeflag, pax.size) {
            (b'0' | 0 | b'7', Some(s)) => s,
            _ => header_size,
        };
        let data = pos + BLOCK;
        let end = data.checked_add(size).filter(|e| *e <= len).ok_or_else(|| {
            ctx.corrupt(
                "tar header",
                pos,
                format!(
                    "member of {size} bytes at {data:#x} ends past the end of the file ({len} bytes)"
                ),
            )
        })?;
        // The next header follows the data padded to a whole block (at most len + 511).
        let next = end.div_ceil(BLOCK) * BLOCK;
        let first_header = *pending_header.get_or_insert(pos);
        match typeflag {
            b'L' | b'x' => {
                if size
                    > if typeflag == b'L' {
                        MAX_NAME_LEN
                    } else {
                        MAX_PAX_LEN
                    }
                {
                    return Err(ctx.corrupt(
                        "tar header",
                        pos,
                        format!("extension header of {size} bytes is over the limit"),
                    ));
                }
                let mut buf = vec![0u8; size as usize];
                file.read_exact_at(&mut buf, data, "tar extension header")?;
                if typeflag == b'L' {
                    long_name = Some(String::from_utf8_lossy(field_str(&buf)).into_owned());
                } else {
                    pax = parse_pax(&buf, ctx, pos)?;
                    if pax
                        .path
                        .as_ref()
                        .is_some_and(|p| p.len() as u64 > MAX_NAME_LEN)
                    {
                        return Err(ctx.corrupt(
                            "tar pax header",
                            pos,
                            format!("path is longer than {MAX_NAME_LEN} bytes"),
                        ));
                    }
                }
                pos = next;
                continue;
            }
            b'0' | 0 | b'7' => {
                let name = match (pax.path.take(), long_name.take()) {
                    (Some(p), _) | (None, Some(p)) => p,
                    (None, None) => {
                        let mut n = String::from_utf8_lossy(field_str(&h[..100])).into_owned();
                        if &h[257..263] == b"ustar\0" {
                            let prefix = field_str(&h[345..500]);
                            if !prefix.is_empty() {
                                n = format!("{}/{n}", String::from_utf8_lossy(prefix));
                            }
                        }
                        n
                    }
                };
                let name = clean_name(&name);
                if let Some(prev) = out.iter().find(|m| m.name == name) {
                    return Err(ctx.corrupt(
                        "tar header",
                        pos,
                        format!(
                            "member '{name}' appears twice (first at {:#x}); which one is meant is ambiguous",
                            prev.header_offset
                        ),
                    ));
                }
                out.push(Member {
                    name,
                    header_offset: first_header,
                    offset: data,
                    size,
                });
            }
            // Directories, links, devices, global pax headers: nothing to read.
            _ => {}
        }
        pax = Pax::default();
        long_name = None;
        pending_header = None;
        pos = next;
    }
    Ok(out)
}

/// Writes the octal `value` into `field`, NUL-terminated, zero-padded.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

/// Largest size the 11 octal digits of a ustar size field hold (8 GiB - 1).
const MAX_OCTAL_SIZE: u64 = (1 << 33) - 1;

/// A ustar header for a regular file `name` of `size` bytes: mode 0644, owner 0:0, user and
/// group "someone" (as VirtualBox writes), modification time `mtime`.
///
/// Sizes of 8 GiB and more are written in the GNU base-256 form, as GNU tar and VirtualBox do;
/// names must fit the 100-byte name field (the caller makes them).
pub fn ustar_header(name: &str, size: u64, mtime: u64) -> [u8; BLOCK as usize] {
    let mut h = [0u8; BLOCK as usize];
    let n = name.as_bytes();
    let n = &n[..n.len().min(100)];
    h[..n.len()].copy_from_slice(n);
    put_octal(&mut h[100..108], 0o644);
    put_octal(&mut h[108..116], 0);
    put_octal(&mut h[116..124], 0);
    if size <= MAX_OCTAL_SIZE {
        put_octal(&mut h[124..136], size);
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    put_octal(&mut h[136..148], mtime.min(MAX_OCTAL_SIZE));
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..272].copy_from_slice(b"someone");
    h[297..304].copy_from_slice(b"someone");
    put_octal(&mut h[329..337], 0);
    put_octal(&mut h[337..345], 0);
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    // Six octal digits, NUL, space: the traditional layout.
    let s = format!("{sum:06o}");
    h[148..154].copy_from_slice(&s.as_bytes()[s.len() - 6..]);
    h[154] = 0;
    h[155] = b' ';
    h
}

/// Zero bytes that pad `len` bytes of member data to a whole block.
pub fn padding(len: u64) -> usize {
    ((BLOCK - len % BLOCK) % BLOCK) as usize
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Format;

    fn ctx() -> Ctx {
        Ctx::new(std::path::Path::new("t.ova"), Format::Ova)
    }

    fn archive(dir: &std::path::Path, parts: &[(&str, &[u8])]) -> ImageFile {
        let mut v = Vec::new();
        for (name, data) in parts {
            v.extend_from_slice(&ustar_header(name, data.len() as u64, 0));
            v.extend_from_slice(data);
            v.resize(v.len() + padding(data.len() as u64), 0);
        }
        v.resize(v.len() + 1024, 0);
        let p = dir.join("a.tar");
        std::fs::write(&p, v).unwrap();
        ImageFile::open(&p).unwrap()
    }

    #[test]
    fn numeric_fields_take_octal_and_base256() {
        assert_eq!(numeric(b"00000001750\0"), Some(1000));
        assert_eq!(numeric(b"   1750 \0\0\0\0"), Some(1000));
        assert_eq!(numeric(b"\0\0\0\0"), Some(0));
        assert_eq!(numeric(b"0009\0"), None);
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[4..].copy_from_slice(&(20u64 << 30).to_be_bytes());
        assert_eq!(numeric(&f), Some(20 << 30));
        assert_eq!(numeric(&[0xff; 12]), None);
    }

    #[test]
    fn headers_we_write_are_read_back_and_by_the_tar_crate() {
        let d = tempfile::tempdir().unwrap();
        let f = archive(d.path(), &[("a.ovf", b"<x/>"), ("./b.vmdk", &[7u8; 1000])]);
        let m = members(&f, &ctx()).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "a.ovf");
        assert_eq!((m[0].offset, m[0].size), (512, 4));
        assert_eq!(m[1].name, "b.vmdk");
        assert_eq!((m[1].offset, m[1].size), (1536, 1000));
        let mut ar = tar::Archive::new(std::fs::File::open(d.path().join("a.tar")).unwrap());
        let names: Vec<_> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                assert_eq!(e.header().mode().unwrap(), 0o644);
                e.path().unwrap().display().to_string()
            })
            .collect();
        assert_eq!(names, ["a.ovf", "./b.vmdk"]);
    }

    #[test]
    fn large_sizes_use_base256() {
        let h = ustar_header("big.vmdk", 9 << 30, 0);
        assert!(checksum_ok(&h));
        assert_eq!(numeric(&h[124..136]), Some(9 << 30));
        let h = tar::Header::from_byte_slice(&h);
        assert_eq!(h.entry_size().unwrap(), 9 << 30);
    }

    #[test]
    fn gnu_long_names_and_pax_paths_are_followed() {
        let d = tempfile::tempdir().unwrap();
        let long = "d/".repeat(80) + "disk.vmdk";
        let mut gnu = ustar_header("././@LongLink", long.len() as u64 + 1, 0);
        gnu[156] = b'L';
        gnu[148..156].fill(b' ');
        let sum: u64 = gnu.iter().map(|b| u64::from(*b)).sum();
        gnu[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut v = gnu.to_vec();
        v.extend_from_slice(long.as_bytes());
        v.push(0);
        v.resize(v.len() + padding(long.len() as u64 + 1), 0);
        v.extend_from_slice(&ustar_header("short", 3, 0));
        v.extend_from_slice(b"abc");
        v.resize(v.len() + padding(3) + 1024, 0);
        let p = d.path().join("g.tar");
        std::fs::write(&p, v).unwrap();
        let m = members(&ImageFile::open(&p).unwrap(), &ctx()).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].name, long);
        assert_eq!(m[0].header_offset, 0);
        assert_eq!(m[0].size, 3);

        let pax = parse_pax(b"19 path=x/y/z.vmdk\n11 size=99\n", &ctx(), 0).unwrap();
        assert_eq!(pax.path.as_deref(), Some("x/y/z.vmdk"));
        assert_eq!(pax.size, Some(99));
        assert!(parse_pax(b"999 path=x\n", &ctx(), 0).is_err());
        assert!(parse_pax(b"1 p", &ctx(), 0).is_err());
    }

    #[test]
    fn refuses_non_tar_truncation_and_duplicates() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("png");
        std::fs::write(&p, [0x89u8, b'P', b'N', b'G'].repeat(300)).unwrap();
        let e = members(&ImageFile::open(&p).unwrap(), &ctx()).unwrap_err();
        assert!(e.to_string().contains("not a tar archive"), "{e}");

        let f = archive(d.path(), &[("a", b"1"), ("./a", b"2")]);
        let e = members(&f, &ctx()).unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");

        let mut v = ustar_header("x", 4096, 0).to_vec();
        v.extend_from_slice(&[1u8; 100]);
        std::fs::write(&p, v).unwrap();
        let e = members(&ImageFile::open(&p).unwrap(), &ctx()).unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
    }
}
