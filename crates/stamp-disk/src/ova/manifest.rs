//! The OVF manifest (`.mf`): one line per file, `SHA256(name)= hex` (ovftool also writes
//! `SHA1 (name) = hex`), and the digests that check it.

use std::fmt;

use sha1::Digest as _;

use crate::Result;
use crate::file::ImageFile;

/// Largest manifest read: a line per file, a few KiB at most in practice.
pub const MAX_MANIFEST_LEN: u64 = 1 << 20;

/// Bytes hashed at a time when verifying a file (bounded memory whatever the file's size).
pub const HASH_CHUNK: usize = 4 << 20;

/// A digest algorithm of OVF manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// SHA-1 (OVF 1.x, older ovftool and VirtualBox).
    Sha1,
    /// SHA-256 (OVF 2.0, VirtualBox 5+, ovftool for hardware 13+).
    Sha256,
    /// SHA-512 (ovftool `--shaAlgorithm=SHA512`).
    Sha512,
}

impl Algorithm {
    /// The name used in manifest lines.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "SHA1" => Some(Algorithm::Sha1),
            "SHA256" => Some(Algorithm::Sha256),
            "SHA512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    /// Length of a digest in hex digits.
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 40,
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The file's name in the archive.
    pub name: String,
    /// The expected digest, lower-case hex.
    pub digest: String,
    /// 1-based line number in the manifest.
    pub line: usize,
}

/// Parses a manifest. Blank lines are skipped; anything else that is not
/// `ALGORITHM(name)= hex` is an error naming the line.
pub fn parse(text: &[u8]) -> std::result::Result<Vec<Entry>, String> {
    let text = std::str::from_utf8(text).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || format!("line {n} is not 'ALGORITHM(name)= digest': '{line}'");
        let open = line.find('(').ok_or_else(bad)?;
        let eq = line.rfind('=').ok_or_else(bad)?;
        let close = line[..eq].rfind(')').ok_or_else(bad)?;
        if close < open || !line[close + 1..eq].trim().is_empty() {
            return Err(bad());
        }
        let alg_name = line[..open].trim();
        let algorithm = Algorithm::from_name(alg_name).ok_or_else(|| {
            format!("line {n}: digest algorithm '{alg_name}' is not SHA1, SHA256 or SHA512")
        })?;
        let digest = line[eq + 1..].trim().to_ascii_lowercase();
        if digest.len() != algorithm.hex_len() || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "line {n}: '{digest}' is not a {algorithm} digest ({} hex digits)",
                algorithm.hex_len()
            ));
        }
        out.push(Entry {
            algorithm,
            name: line[open + 1..close].to_string(),
            digest,
            line: n,
        });
    }
    Ok(out)
}

/// A running digest.
enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(a: Algorithm) -> Self {
        match a {
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn hex(self) -> String {
        match self {
            Hasher::Sha1(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// Chunks read ahead of the hashing (memory: this × [`HASH_CHUNK`] per file hashed).
const READ_AHEAD: usize = 2;

/// The `algorithm` digest (lower-case hex) of `len` bytes at `offset` of `file`, read in
/// [`HASH_CHUNK`] pieces on one thread and hashed on another, so reading and hashing overlap.
pub fn digest_of(file: &ImageFile, offset: u64, len: u64, algorithm: Algorithm) -> Result<String> {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(READ_AHEAD);
        let reader = s.spawn(move || -> Result<()> {
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(HASH_CHUNK as u64) as usize;
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, offset + done, "file listed in the manifest")?;
                if tx.send(buf).is_err() {
                    break;
                }
                done += n as u64;
            }
            Ok(())
        });
        let mut h = Hasher::new(algorithm);
        for chunk in rx {
            h.update(&chunk);
        }
        match reader.join() {
            Ok(r) => r.map(|()| h.hex()),
            Err(_) => Err(crate::Error::io(
                "read",
                file.path(),
                std::io::Error::other("the reading thread failed"),
            )),
        }
    })
}

/// The SHA-256 digest of `data`, lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// A manifest line as stamp writes it (the form of VirtualBox and open-vmdk).
pub fn line(algorithm: Algorithm, name: &str, digest: &str) -> String {
    format!("{algorithm}({name})= {digest}\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_spellings() {
        let m = parse(
            b"SHA1 (tty.ovf) = 06271F767E0D5671C67E4EDEAA2C157CABB66C2B\n\n\
              SHA256(a (1).vmdk)= 4a218c15a1e8aed26cb0a2a533562e85a9f28956a6666181d0c9bb7ba58b5b06\r\n",
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].algorithm, Algorithm::Sha1);
        assert_eq!(m[0].name, "tty.ovf");
        assert_eq!(m[0].digest, "06271f767e0d5671c67e4edeaa2c157cabb66c2b");
        assert_eq!(m[1].algorithm, Algorithm::Sha256);
        assert_eq!(m[1].name, "a (1).vmdk");
        assert_eq!(m[1].line, 3);
    }

    #[test]
    fn refuses_bad_lines() {
        assert!(parse(b"MD5(a)= d41d8cd98f00b204e9800998ecf8427e").is_err());
        assert!(parse(b"SHA1(a)= 1234").is_err());
        assert!(parse(b"garbage").is_err());
        assert!(parse(b"SHA1)a(= 06271f767e0d5671c67e4edeaa2c157cabb66c2b").is_err());
        assert!(parse(b"\xff\xfe").is_err());
    }

    #[test]
    fn digests_match_known_values() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"xxabcyy").unwrap();
        let f = ImageFile::open(&p).unwrap();
        assert_eq!(
            digest_of(&f, 2, 3, Algorithm::Sha1).unwrap(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            digest_of(&f, 2, 3, Algorithm::Sha256).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            digest_of(&f, 2, 3, Algorithm::Sha256).unwrap()
        );
        assert!(
            digest_of(&f, 2, 3, Algorithm::Sha512)
                .unwrap()
                .starts_with("ddaf35a1")
        );
        assert_eq!(
            line(Algorithm::Sha256, "x.ovf", "00"),
            "SHA256(x.ovf)= 00\n"
        );
    }
}
