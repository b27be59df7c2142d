//! Content-defined chunking of a disk file into artifact layers.
//!
//! FastCDC cuts the file into pieces of 1–16 MiB (4 MiB on average) at places chosen by the
//! content; a layer ends after a piece whose gear hash has its low [`LAYER_BITS`] bits zero, so
//! layers average 64 MiB and their boundaries move with the content. An edit in the middle of a
//! disk changes the layers around it, not every layer after it, and a push uploads only those.

use std::io::Read;

use fastcdc::v2020::StreamCDC;

use crate::error::{Error, Result};

const MIN_PIECE: u32 = 1 << 20;
const AVG_PIECE: u32 = 4 << 20;
const MAX_PIECE: u32 = 16 << 20;
/// A layer ends after a piece whose hash has this many low bits zero (1 in 16 pieces).
const LAYER_BITS: u32 = 4;
/// No layer grows beyond this, whatever the content.
const MAX_LAYER: u64 = 256 << 20;

/// What [`split`] hands to its sink: data, in order, and the end of each layer.
pub(crate) enum Piece<'a> {
    /// The next bytes of the current layer.
    Data(&'a [u8]),
    /// The current layer is complete.
    End,
}

/// Splits `source` (named `name` in errors) into content-defined layers.
pub(crate) fn split<R: Read>(
    name: &str,
    source: R,
    sink: impl FnMut(Piece<'_>) -> Result<()>,
) -> Result<()> {
    split_with(name, source, LAYER_BITS, sink)
}

/// [`split`] with layers ending after 1 in 2^`layer_bits` pieces.
fn split_with<R: Read>(
    name: &str,
    source: R,
    layer_bits: u32,
    mut sink: impl FnMut(Piece<'_>) -> Result<()>,
) -> Result<()> {
    let mut in_layer = 0u64;
    for piece in StreamCDC::new(source, MIN_PIECE, AVG_PIECE, MAX_PIECE) {
        let piece = piece.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => Error::io("read", name, e),
            other => Error::io("read", name, std::io::Error::other(other.to_string())),
        })?;
        sink(Piece::Data(&piece.data))?;
        in_layer += piece.length as u64;
        if piece.hash & ((1 << layer_bits) - 1) == 0 || in_layer >= MAX_LAYER {
            sink(Piece::End)?;
            in_layer = 0;
        }
    }
    if in_layer > 0 {
        sink(Piece::End)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn layers(data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = vec![Vec::new()];
        // One layer in two pieces keeps the test small; the rule is the same.
        split_with("test", data, 1, |p| {
            match p {
                Piece::Data(d) => out.last_mut().unwrap().extend_from_slice(d),
                Piece::End => out.push(Vec::new()),
            }
            Ok(())
        })
        .unwrap();
        assert!(out.pop().unwrap().is_empty());
        out
    }

    #[test]
    fn layers_concatenate_to_the_input_and_survive_an_insertion() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut data = vec![0u8; 64 << 20];
        rng.fill(&mut data[..]);
        let before = layers(&data);
        assert!(before.len() > 2, "{} layers", before.len());
        assert_eq!(before.concat(), data);
        // Insert a few bytes near the start: the layers after the edit are the same bytes.
        data.splice(1000..1000, *b"inserted");
        let after = layers(&data);
        assert_eq!(after.concat(), data);
        let same = after.iter().filter(|l| before.contains(l)).count();
        assert!(
            same + 2 >= after.len(),
            "{same} of {} layers kept",
            after.len()
        );
    }

    #[test]
    fn empty_input_has_no_layers() {
        assert!(layers(&[]).is_empty());
    }
}
