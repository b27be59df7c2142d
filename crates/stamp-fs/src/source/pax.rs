//! Values of PAX extended-header records: decimal times, numbers, base64 and percent-encoding.

use crate::Timestamp;

/// Parses a PAX time (`1700000000`, `1700000000.123456789`, `-1.5`) into a timestamp, rounding
/// fractions below a nanosecond down. Returns None for anything else.
pub(crate) fn time(v: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let sec: i64 = int.parse().ok()?;
    let mut nsec: u32 = 0;
    for (i, c) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Some(Timestamp { sec, nsec });
    }
    // -1.5 is 1.5 s before the epoch: sec -2, nsec 0.5e9.
    if nsec == 0 {
        Some(Timestamp { sec: -sec, nsec: 0 })
    } else {
        Some(Timestamp {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        })
    }
}

/// Parses a PAX decimal number.
pub(crate) fn number(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// Decodes standard base64 (with or without padding, whitespace ignored).
pub(crate) fn base64(v: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in v {
        let d = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(d);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Decodes `%XX` escapes (libarchive encodes xattr names so).
pub(crate) fn percent_decode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            let hex = std::str::from_utf8(&v[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(time(b"12"), Some(Timestamp { sec: 12, nsec: 0 }));
        assert_eq!(
            time(b"12.5"),
            Some(Timestamp {
                sec: 12,
                nsec: 500_000_000
            })
        );
        assert_eq!(
            time(b"1.1234567891"),
            Some(Timestamp {
                sec: 1,
                nsec: 123_456_789
            })
        );
        assert_eq!(
            time(b"-1.25"),
            Some(Timestamp {
                sec: -2,
                nsec: 750_000_000
            })
        );
        assert_eq!(time(b"-3"), Some(Timestamp { sec: -3, nsec: 0 }));
        assert_eq!(time(b"x"), None);
        assert_eq!(time(b"1.x"), None);
    }

    #[test]
    fn base64_and_percent() {
        assert_eq!(base64(b"aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64(b"AQIDBA").as_deref(), Some(&[1u8, 2, 3, 4][..]));
        assert_eq!(base64(b"a*"), None);
        assert_eq!(percent_decode(b"user.a%3Db%"), b"user.a=b%");
        assert_eq!(percent_decode(b"%4"), b"%4");
    }
}
