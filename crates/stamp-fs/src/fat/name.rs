//! FAT names: validation of long names, 8.3 short names with numeric tails, VFAT long-name
//! entries and their checksum.

use std::collections::{HashMap, HashSet};

use crate::{Error, Result};

/// Characters a short name may hold besides `A-Z` and `0-9`.
const SHORT_EXTRA: &[u8] = b"$%'-_@~`!(){}^#&";

/// The longest long name, in UTF-16 code units.
const MAX_LFN: usize = 255;

/// Checks that `name` is a valid FAT long name and returns it as a string.
pub(crate) fn long_name<'n>(path: &[u8], name: &'n [u8]) -> Result<&'n str> {
    let bad = |detail: &str| Error::BadPath {
        source_name: "fat".into(),
        path: String::from_utf8_lossy(path).into_owned(),
        detail: detail.into(),
    };
    let s = std::str::from_utf8(name).map_err(|_| bad("a FAT name must be UTF-8"))?;
    if s.is_empty() || s == "." || s == ".." {
        return Err(bad("empty or dot name"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| (*c as u32) < 0x20 || "\\/:*?\"<>|".contains(*c))
    {
        return Err(bad(&format!("FAT names cannot hold {c:?}")));
    }
    if s.ends_with('.') || s.ends_with(' ') {
        return Err(bad("FAT names cannot end with '.' or ' '"));
    }
    if s.encode_utf16().count() > MAX_LFN {
        return Err(bad("longer than 255 UTF-16 units"));
    }
    Ok(s)
}

/// The short names given in one directory.
#[derive(Debug, Default)]
pub(crate) struct ShortNames {
    used: HashSet<[u8; 11]>,
    /// For each basis name, the numeric tail to try next (all lower ones are taken), so that
    /// thousands of similar names cost no more than a few.
    next: HashMap<[u8; 11], u32>,
}

impl ShortNames {
    fn insert(&mut self, s: [u8; 11]) -> bool {
        self.used.insert(s)
    }
}

/// The 11-byte short name for `name`, unique among `used` (which it joins), and whether a long
/// name is needed to keep `name` exactly.
pub(crate) fn short_name(name: &str, used: &mut ShortNames) -> Result<([u8; 11], bool)> {
    // Exactly a valid upper-case 8.3 name: stored as is, no long name.
    if let Some(exact) = exact_short(name)
        && used.insert(exact)
    {
        return Ok((exact, false));
    }
    let upper: String = name.to_uppercase();
    let mut lossy = false;
    let trimmed = upper.trim_start_matches('.');
    lossy |= trimmed.len() != upper.len();
    let mut conv = |part: &str, max: usize| -> Vec<u8> {
        let mut out = Vec::new();
        for c in part.chars() {
            if c == ' ' || c == '.' {
                lossy = true;
                continue;
            }
            let b = if c.is_ascii_uppercase()
                || c.is_ascii_digit()
                || (c.is_ascii() && SHORT_EXTRA.contains(&(c as u8)))
            {
                c as u8
            } else {
                lossy = true;
                b'_'
            };
            if out.len() < max {
                out.push(b);
            } else {
                lossy = true;
            }
        }
        out
    };
    let (base, ext) = match trimmed.rfind('.') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (trimmed, ""),
    };
    let mut base = conv(base, 8);
    let ext = conv(ext, 3);
    if base.is_empty() {
        base.push(b'_');
        lossy = true;
    }
    let make = |base: &[u8]| -> [u8; 11] {
        let mut s = [b' '; 11];
        s[..base.len()].copy_from_slice(base);
        s[8..8 + ext.len()].copy_from_slice(&ext);
        s
    };
    if !lossy {
        let s = make(&base);
        if used.insert(s) {
            return Ok((s, true));
        }
    }
    let basis = make(&base);
    let first = used.next.get(&basis).copied().unwrap_or(1);
    for n in first..1_000_000u32 {
        let tail = format!("~{n}");
        let keep = base.len().min(8 - tail.len());
        let mut b = base[..keep].to_vec();
        b.extend_from_slice(tail.as_bytes());
        let s = make(&b);
        if used.insert(s) {
            used.next.insert(basis, n + 1);
            return Ok((s, true));
        }
    }
    Err(Error::InvalidOption(format!(
        "no free 8.3 name left for '{name}'"
    )))
}

/// `name` as an 11-byte short name if it already is a valid upper-case 8.3 name.
fn exact_short(name: &str) -> Option<[u8; 11]> {
    let ok = |p: &str, max: usize| {
        !p.is_empty()
            && p.len() <= max
            && p.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || SHORT_EXTRA.contains(&b))
    };
    let (base, ext) = match name.split_once('.') {
        Some((b, e)) => {
            if !ok(e, 3) {
                return None;
            }
            (b, e)
        }
        None => (name, ""),
    };
    if !ok(base, 8) {
        return None;
    }
    let mut s = [b' '; 11];
    s[..base.len()].copy_from_slice(base.as_bytes());
    s[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(s)
}

/// The checksum of a short name that every long-name entry carries.
pub(crate) fn checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |s, c| s.rotate_right(1).wrapping_add(*c))
}

/// The long-name entries for `name` in on-disk order (last part first).
pub(crate) fn lfn_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    if units.len() % 13 != 0 {
        units.push(0);
        while units.len() % 13 != 0 {
            units.push(0xFFFF);
        }
    }
    let sum = checksum(short);
    let n = units.len() / 13;
    let mut out = Vec::with_capacity(n);
    for i in (0..n).rev() {
        let mut e = [0u8; 32];
        e[0] = (i + 1) as u8 | if i + 1 == n { 0x40 } else { 0 };
        e[11] = 0x0F;
        e[13] = sum;
        let part = &units[i * 13..i * 13 + 13];
        let slots = (0..5)
            .map(|k| 1 + 2 * k)
            .chain((0..6).map(|k| 14 + 2 * k))
            .chain((0..2).map(|k| 28 + 2 * k));
        for (u, at) in part.iter().zip(slots) {
            e[at..at + 2].copy_from_slice(&u.to_le_bytes());
        }
        out.push(e);
    }
    out
}

/// How many long-name entries `name` needs.
pub(crate) fn lfn_count(name: &str) -> usize {
    name.encode_utf16().count().div_ceil(13)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s(n: &[u8; 11]) -> String {
        String::from_utf8_lossy(n).into_owned()
    }

    #[test]
    fn short_names_follow_the_windows_pattern() {
        let mut used = ShortNames::default();
        assert_eq!(
            short_name("BOOTX64.EFI", &mut used).unwrap(),
            (*b"BOOTX64 EFI", false)
        );
        let (a, lfn) = short_name("bootx64.efi", &mut used).unwrap();
        assert!(lfn);
        assert_eq!(s(&a), "BOOTX6~1EFI");
        let (b, _) = short_name("Long File Name.txt", &mut used).unwrap();
        assert_eq!(s(&b), "LONGFI~1TXT");
        let (c, _) = short_name("long file name.txt", &mut used).unwrap();
        assert_eq!(s(&c), "LONGFI~2TXT");
        let (d, _) = short_name("readme", &mut used).unwrap();
        assert_eq!(s(&d), "README     ");
        let (e, _) = short_name("ünï.cødé", &mut used).unwrap();
        assert_eq!(s(&e), "_N_~1   C_D");
        let (f, _) = short_name(".hidden", &mut used).unwrap();
        assert_eq!(s(&f), "HIDDEN~1   ");
    }

    #[test]
    fn many_similar_names_get_distinct_tails_quickly() {
        let mut used = ShortNames::default();
        let mut seen = HashSet::new();
        for i in 0..50_000 {
            let (s, lfn) = short_name(&format!("file number {i}.dat"), &mut used).unwrap();
            assert!(lfn && seen.insert(s));
        }
        assert!(seen.contains(b"FILE~999DAT") && seen.contains(b"FI~49999DAT"));
    }

    #[test]
    fn lfn_entries_carry_the_checksum_and_padding() {
        let short = *b"LONGFI~1TXT";
        let es = lfn_entries("Long File Name.txt", &short);
        assert_eq!(es.len(), 2);
        assert_eq!(es[0][0], 0x42);
        assert_eq!(es[1][0], 0x01);
        assert!(
            es.iter()
                .all(|e| e[13] == checksum(&short) && e[11] == 0x0F)
        );
        // 18 units: the second entry holds 5 and a terminator, then 0xFFFF.
        assert_eq!(&es[0][1..3], &[b'e', 0]);
        assert_eq!(&es[0][14..16], &[0, 0]);
        assert_eq!(&es[0][16..18], &[0xFF, 0xFF]);
        assert_eq!(lfn_count("Long File Name.txt"), 2);
    }
}
