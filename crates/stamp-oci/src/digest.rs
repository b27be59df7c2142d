//! Content digests (`sha256:<hex>`), the names of everything in the store and in registries.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A SHA-256 content digest, written `sha256:` and 64 lowercase hex digits.
///
/// Parsing accepts only that form, so a digest is always safe to use as a file name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// The digest from raw hash bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The 64 hex digits, without the algorithm (the blob's file name in an OCI layout).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The algorithm, always `sha256`.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The raw hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::BadDigest {
            digest: s.chars().take(100).collect(),
            why: why.to_string(),
        };
        let (alg, hex_part) = s
            .split_once(':')
            .ok_or_else(|| bad("no algorithm prefix"))?;
        if alg != "sha256" {
            return Err(bad("only sha256 digests are supported"));
        }
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("expected 64 lowercase hex digits"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| bad("expected hex digits"))?;
        Ok(Digest(out))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes what passes through it and counts the bytes.
pub struct DigestWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> DigestWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        DigestWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything written, the byte count and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (Digest(self.hasher.finalize().into()), self.len, self.inner)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_sha256() {
        let d = Digest::of(b"");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(s.parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_what_is_not_a_safe_digest() {
        for bad in [
            "",
            "sha256",
            "md5:abc",
            "sha256:../../etc/passwd",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn writer_hashes_what_it_writes() {
        let mut w = DigestWriter::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (d, n, v) = w.finish();
        assert_eq!((d, n), (Digest::of(b"hello world"), 11));
        assert_eq!(v, b"hello world");
    }
}
