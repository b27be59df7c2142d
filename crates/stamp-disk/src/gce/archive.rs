//! The containers around the disk: the GNU tar header of `disk.raw` (oldgnu, as
//! `tar --format=oldgnu` writes it), and the gzip framing of a deflate stream made of
//! independently compressed segments.

use crc32fast::Hasher;
use flate2::{Compress, Compression, FlushCompress};

/// A tar block.
pub const BLOCK: u64 = 512;

/// GNU tar's default record: the archive is padded with zeros to a multiple of this (blocking
/// factor 20).
pub const RECORD: u64 = 20 * BLOCK;

/// Magic and version of an oldgnu header: `"ustar  \0"`.
const GNU_MAGIC: &[u8; 8] = b"ustar  \0";

/// Largest value an 11-digit octal field holds; larger sizes use GNU's base-256 form.
const MAX_OCTAL_11: u64 = 0o777_7777_7777;

/// Writes `value` into a numeric field the way GNU tar does: octal digits and a NUL, or, when it
/// does not fit, base-256 (first byte `0x80`, the value big-endian in the rest).
fn put_number(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let fits = digits >= 22 || value < (1u64 << (3 * digits as u32));
    if fits {
        let s = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        let be = value.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&be);
    }
}

/// The oldgnu header of a regular file `name` (at most 100 bytes) of `size` bytes: mode 0644,
/// owner and group 0 without names, modification time `mtime` (seconds since 1970), as
/// `tar --format=oldgnu --numeric-owner` writes it.
pub fn oldgnu_header(name: &str, size: u64, mtime: u64) -> [u8; BLOCK as usize] {
    let mut h = [0u8; BLOCK as usize];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name.as_bytes()[..n]);
    put_number(&mut h[100..108], 0o644);
    put_number(&mut h[108..116], 0);
    put_number(&mut h[116..124], 0);
    put_number(&mut h[124..136], size);
    // An mtime past the year 2242 is clamped rather than encoded in base-256, which old readers
    // do not take for times.
    put_number(&mut h[136..148], mtime.min(MAX_OCTAL_11));
    h[156] = b'0';
    h[257..265].copy_from_slice(GNU_MAGIC);
    // The checksum is computed with its own field as spaces, then stored as six octal digits,
    // a NUL and a space.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// The gzip member header: deflate, no flags, modification time 0 (so output is reproducible),
/// no extra flags, operating system "Unix".
pub const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];

/// An empty final deflate block (fixed Huffman codes, end-of-block only): ends a stream whose
/// segments all end with a flush.
pub const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// The gzip trailer: CRC-32 and length (modulo 2^32) of the uncompressed data.
pub fn gzip_trailer(crc: &Hasher) -> [u8; 8] {
    let mut t = [0u8; 8];
    t[..4].copy_from_slice(&crc.clone().finalize().to_le_bytes());
    t[4..].copy_from_slice(&(crc.total_len() as u32).to_le_bytes());
    t
}

/// `data` compressed at `level` into deflate blocks that are not final and end with a full
/// flush (an empty stored block, byte-aligned), so that segments compressed independently — in
/// parallel, or once and repeated — concatenate into one valid deflate stream.
pub fn deflate_segment(data: &[u8], level: u32) -> Result<Vec<u8>, String> {
    let mut c = Compress::new(Compression::new(level), false);
    // Deflate's worst case is a few bytes per 16 KiB stored block; the loop grows it if needed.
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 64);
    loop {
        let consumed = usize::try_from(c.total_in()).unwrap_or(data.len());
        c.compress_vec(
            &data[consumed.min(data.len())..],
            &mut out,
            FlushCompress::Full,
        )
        .map_err(|e| format!("deflate failed: {e}"))?;
        // The flush is complete once all input is taken and output space is left over.
        if c.total_in() == data.len() as u64 && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(out.capacity().max(1024));
    }
}

/// The CRC-32 state of `count` runs of zeros, given that of one run (`unit`), by doubling (so a
/// terabyte of zeros costs a few dozen combinations).
pub fn zeros_crc(unit: &Hasher, count: u64) -> Hasher {
    let mut result = Hasher::new();
    let mut power = unit.clone();
    let mut k = count;
    while k > 0 {
        if k & 1 == 1 {
            result.combine(&power);
        }
        k >>= 1;
        if k > 0 {
            let p = power.clone();
            power.combine(&p);
        }
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn header_matches_gnu_tar_byte_for_byte() {
        // `tar --format=oldgnu --numeric-owner --owner=0 --group=0 --mtime=@0` of a 3000-byte
        // disk.raw, first 160 bytes (the rest are zeros and the magic).
        let h = oldgnu_header("disk.raw", 3000, 0);
        assert_eq!(&h[..8], b"disk.raw");
        assert_eq!(&h[100..108], b"0000644\0");
        assert_eq!(&h[108..124], b"0000000\x000000000\0");
        assert_eq!(&h[124..136], b"00000005670\0");
        assert_eq!(&h[136..148], b"00000000000\0");
        assert_eq!(&h[148..156], b"007362\0 ");
        assert_eq!(h[156], b'0');
        assert_eq!(&h[257..265], b"ustar  \0");
        assert!(h[265..].iter().all(|b| *b == 0));
    }

    #[test]
    fn sizes_over_8_gib_use_base_256_as_gnu_tar_does() {
        // GNU tar's header of a 9 GiB file.
        let h = oldgnu_header("big.raw", 9 << 30, 0);
        assert_eq!(&h[124..136], &[0x80, 0, 0, 0, 0, 0, 0, 2, 0x40, 0, 0, 0]);
        assert_eq!(&h[148..156], b"006431\0 ");
        let mut e = [0u8; 12];
        put_number(&mut e, MAX_OCTAL_11);
        assert_eq!(&e, b"77777777777\0");
        put_number(&mut e, MAX_OCTAL_11 + 1);
        assert_eq!(e[0], 0x80);
    }

    #[test]
    fn segments_concatenate_into_one_gzip_stream() {
        let a: Vec<u8> = (0..200_000u32).map(|i| (i / 7) as u8).collect();
        let zeros = vec![0u8; 65536];
        let mut gz = GZIP_HEADER.to_vec();
        let mut crc = Hasher::new();
        let mut expect = Vec::new();
        let z = deflate_segment(&zeros, 6).unwrap();
        let mut zcrc = Hasher::new();
        zcrc.update(&zeros);
        for part in [&a[..], &[][..], &a[..1000]] {
            gz.extend(deflate_segment(part, 6).unwrap());
            let mut h = Hasher::new();
            h.update(part);
            crc.combine(&h);
            expect.extend_from_slice(part);
            gz.extend_from_slice(&z);
            gz.extend_from_slice(&z);
            crc.combine(&zeros_crc(&zcrc, 2));
            expect.extend_from_slice(&zeros);
            expect.extend_from_slice(&zeros);
        }
        gz.extend_from_slice(&FINAL_BLOCK);
        gz.extend_from_slice(&gzip_trailer(&crc));
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, expect);
        assert_eq!(crc.finalize(), crc32fast::hash(&expect));
    }

    #[test]
    fn zero_crcs_by_doubling_match_direct_ones() {
        let mut unit = Hasher::new();
        unit.update(&[0u8; 100]);
        for count in [0u64, 1, 2, 3, 7, 64, 1000] {
            let direct = crc32fast::hash(&vec![0u8; 100 * count as usize]);
            let h = zeros_crc(&unit, count);
            assert_eq!(h.total_len(), 100 * count);
            assert_eq!(h.finalize(), direct, "{count}");
        }
    }

    #[test]
    fn incompressible_segments_grow_their_buffer() {
        let mut x = 0x1234_5678u32;
        let data: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let seg = deflate_segment(&data, 6).unwrap();
        assert!(seg.ends_with(&[0, 0, 0xff, 0xff]));
        let mut full = seg;
        full.extend_from_slice(&FINAL_BLOCK);
        let mut back = Vec::new();
        flate2::read::DeflateDecoder::new(&full[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }
}
