//! Block compression shared by the formats that compress (qcow2 clusters, VMDK grains): one codec
//! type, parallel batch compression that keeps input order (so output is deterministic), and
//! bounded decompression.

use rayon::prelude::*;

/// A compression codec as stored in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Raw deflate without header (qcow2 `zlib` clusters).
    Deflate,
    /// Deflate with a zlib header and Adler-32 trailer (VMDK grains).
    Zlib,
    /// Zstandard frames (qcow2 `zstd` clusters).
    Zstd,
}

/// Compression level for deflate: libdeflate's 6 compresses as well as zlib's default and is
/// several times faster.
pub const DEFLATE_LEVEL: i32 = 6;

/// Compression level for zstd (qemu uses zstd's default, 3).
pub const ZSTD_LEVEL: i32 = 3;

/// Compresses `data` with `codec`.
pub fn compress(codec: Codec, data: &[u8]) -> Vec<u8> {
    match codec {
        Codec::Deflate | Codec::Zlib => {
            let lvl = libdeflater::CompressionLvl::new(DEFLATE_LEVEL)
                .unwrap_or_else(|_| libdeflater::CompressionLvl::default());
            let mut c = libdeflater::Compressor::new(lvl);
            let bound = if codec == Codec::Deflate {
                c.deflate_compress_bound(data.len())
            } else {
                c.zlib_compress_bound(data.len())
            };
            let mut out = vec![0u8; bound];
            let n = if codec == Codec::Deflate {
                c.deflate_compress(data, &mut out)
            } else {
                c.zlib_compress(data, &mut out)
            };
            // The bound guarantees space; on the impossible failure, store nothing compressed.
            out.truncate(n.unwrap_or(0));
            out
        }
        Codec::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).unwrap_or_default(),
    }
}

/// Compresses every block of `blocks` in parallel on all cores; results come back in input order.
pub fn compress_batch<B: AsRef<[u8]> + Sync>(codec: Codec, blocks: &[B]) -> Vec<Vec<u8>> {
    blocks
        .par_iter()
        .map(|b| compress(codec, b.as_ref()))
        .collect()
}

/// Decompresses `src` into exactly `dst.len()` bytes. Trailing bytes after the compressed stream
/// are ignored (qcow2 rounds compressed clusters up to sectors); a stream that ends early or is
/// malformed is an error described by the returned string.
pub fn decompress_into(codec: Codec, src: &[u8], dst: &mut [u8]) -> Result<(), String> {
    match codec {
        Codec::Deflate | Codec::Zlib => {
            let mut d = flate2::Decompress::new(codec == Codec::Zlib);
            let status = d
                .decompress(src, dst, flate2::FlushDecompress::Finish)
                .map_err(|e| format!("deflate stream is invalid: {e}"))?;
            let out = d.total_out() as usize;
            match status {
                flate2::Status::StreamEnd if out == dst.len() => Ok(()),
                // Output full before the end marker: qemu accepts this too.
                flate2::Status::Ok | flate2::Status::BufError if out == dst.len() => Ok(()),
                _ => Err(format!(
                    "compressed data decompresses to {out} bytes, expected {}",
                    dst.len()
                )),
            }
        }
        Codec::Zstd => {
            use std::io::Read;
            let mut dec = zstd::stream::read::Decoder::with_buffer(src)
                .map_err(|e| format!("zstd stream is invalid: {e}"))?
                .single_frame();
            let mut filled = 0;
            while filled < dst.len() {
                match dec.read(&mut dst[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => return Err(format!("zstd stream is invalid: {e}")),
                }
            }
            if filled == dst.len() {
                Ok(())
            } else {
                Err(format!(
                    "compressed data decompresses to {filled} bytes, expected {}",
                    dst.len()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_and_tolerates_trailing_bytes() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 100) as u8).collect();
        for codec in [Codec::Deflate, Codec::Zlib, Codec::Zstd] {
            let mut c = compress(codec, &data);
            assert!(c.len() < data.len() / 4, "{codec:?} did not compress");
            c.extend_from_slice(&[0xAA; 300]);
            let mut out = vec![0u8; data.len()];
            decompress_into(codec, &c, &mut out).unwrap();
            assert_eq!(out, data);
            let mut short = vec![0u8; data.len() + 1];
            assert!(decompress_into(codec, &c, &mut short).is_err());
            assert!(decompress_into(codec, &c[..c.len() / 3], &mut out).is_err());
        }
    }

    #[test]
    fn batch_keeps_order_and_is_deterministic() {
        let blocks: Vec<Vec<u8>> = (0..32u8).map(|i| vec![i; 4096]).collect();
        let a = compress_batch(Codec::Deflate, &blocks);
        let b = compress_batch(Codec::Deflate, &blocks);
        assert_eq!(a, b);
        for (i, c) in a.iter().enumerate() {
            let mut out = vec![0u8; 4096];
            decompress_into(Codec::Deflate, c, &mut out).unwrap();
            assert_eq!(out, blocks[i]);
        }
    }
}
