//! A container image's layers flattened into one [`Tree`]: what `stamp build` puts on disk.

use stamp_fs::Tree;
use stamp_fs::source::{SourceOptions, from_layers};

use crate::error::Result;
use crate::image::Image;
use crate::store::Store;

/// Flattens `image` (a container image in `store`) into a tree, as a container runtime would
/// extract its layers, without extracting anything: each layer is verified and kept as an
/// uncompressed tar in the store (cached by its diff_id), and file contents in the tree are
/// regions of those tars, which must stay in the store while the tree is used.
pub fn flatten(store: &Store, image: &Image, opts: &SourceOptions) -> Result<Tree> {
    let diff_ids = image.diff_ids()?;
    let layers = image
        .manifest
        .layers()
        .iter()
        .zip(&diff_ids)
        .map(|(layer, diff_id)| store.uncompressed_layer(layer, diff_id))
        .collect::<Result<Vec<_>>>()?;
    Ok(from_layers(&layers, opts)?)
}
