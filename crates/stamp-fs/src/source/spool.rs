//! The spool: a compressed tar (or a tar on stdin) decompressed once into a temporary file, so
//! that members can be referred to by offset like in a plain tar.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use crate::{Error, Result};

/// The compression of a tar stream, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// Not compressed.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// Zstandard (`28 b5 2f fd`).
    Zstd,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
}

impl Compression {
    /// Detects the compression from the first bytes; bzip2 and lzip are refused by name.
    pub(crate) fn detect(head: &[u8], name: &str) -> Result<Self> {
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if head.starts_with(b"BZh") || head.starts_with(b"LZIP") {
            return Err(Error::InvalidOption(format!(
                "{name}: bzip2 and lzip compressed tars are not supported (use gzip, zstd or xz)"
            )));
        } else {
            Compression::None
        })
    }
}

/// Reads the first bytes of `r` without consuming them.
pub(crate) fn peek<R: Read>(r: &mut BufReader<R>, name: &Path) -> Result<Vec<u8>> {
    let buf = r.fill_buf().map_err(|e| Error::io("read", name, e))?;
    Ok(buf[..buf.len().min(8)].to_vec())
}

/// Decompresses `input` (compressed as `c`) into a new temporary file and returns its path.
pub(crate) fn spool<R: Read>(
    input: BufReader<R>,
    c: Compression,
    name: &Path,
) -> Result<tempfile::TempPath> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".stamp-spool-")
        .suffix(".tar")
        .tempfile()
        .map_err(|e| Error::io("create a temporary file for", name, e))?;
    let copied = {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let r = match c {
            Compression::None => copy(input, &mut out),
            Compression::Gzip => copy(flate2::bufread::MultiGzDecoder::new(input), &mut out),
            Compression::Xz => copy(xz2::bufread::XzDecoder::new_multi_decoder(input), &mut out),
            Compression::Zstd => {
                zstd::stream::read::Decoder::with_buffer(input).and_then(|d| copy(d, &mut out))
            }
        };
        r.and_then(|_| out.flush())
    };
    copied.map_err(|e| Error::io("decompress", name, e))?;
    Ok(tmp.into_temp_path())
}

fn copy<R: Read, W: Write>(mut r: R, w: &mut W) -> std::io::Result<u64> {
    std::io::copy(&mut r, w)
}
