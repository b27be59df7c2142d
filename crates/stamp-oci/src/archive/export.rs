//! Export: an image from the store as an `oci-archive` (a tar of an OCI image layout).

use std::io::{BufReader, Write};
use std::path::Path;

use oci_spec::image::Descriptor;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::media;
use crate::store::{REF_NAME, Store, one_annotation, ref_name};

/// Writes the image `desc` (a manifest or index in `store`, with everything it references) to
/// `out` as an oci-archive: `oci-layout`, an `index.json` with the one descriptor (annotated
/// with its name when `desc` carries [`REF_NAME`], as descriptors from
/// [`Store::resolve`] and [`Store::list`] do), and `blobs/sha256/*`. Every blob is verified
/// while it is copied. The archive is written to a temp file beside `out` and renamed, so
/// `out` is either the old file or the complete new one. Tar headers are fixed (mtime 0,
/// root-owned), so the same image gives the same archive bytes.
pub fn export(store: &Store, desc: &Descriptor, out: &Path) -> Result<()> {
    let closure = store.closure_of(desc)?;
    if let Some((d, _)) = closure.missing.first() {
        return Err(Error::MissingBlob(*d));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".stamp-export-")
        .tempfile_in(parent)
        .map_err(|e| Error::io("create temp file in", parent, e))?;
    let temp_path = temp.path().to_path_buf();
    let werr = |e: std::io::Error| Error::io("write", &temp_path, e);
    let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(256 << 10, temp));

    let mut top = Descriptor::new(
        desc.media_type().clone(),
        desc.size(),
        desc.digest().clone(),
    );
    if let Some(name) = ref_name(desc) {
        top.set_annotations(Some(one_annotation(REF_NAME, name)));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [top],
    });
    let index_bytes = serde_json::to_vec(&index)
        .map_err(|e| Error::malformed("export", "index.json", e.to_string()))?;
    append_bytes(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(werr)?;
    append_bytes(&mut b, "index.json", &index_bytes).map_err(werr)?;
    append_dir(&mut b, "blobs/").map_err(werr)?;
    append_dir(&mut b, "blobs/sha256/").map_err(werr)?;
    for d in closure.blobs.keys() {
        append_blob(store, &mut b, d, &temp_path)?;
    }
    let w = b.into_inner().map_err(werr)?;
    let temp = w.into_inner().map_err(|e| werr(e.into_error()))?;
    temp.as_file().sync_all().map_err(werr)?;
    temp.persist(out)
        .map_err(|e| Error::io("rename into place", out, e.error))?;
    Ok(())
}

fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(kind);
    h
}

fn append_bytes<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut h = header(bytes.len() as u64, 0o644, tar::EntryType::Regular);
    b.append_data(&mut h, name, bytes)
}

fn append_dir<W: Write>(b: &mut tar::Builder<W>, name: &str) -> std::io::Result<()> {
    let mut h = header(0, 0o755, tar::EntryType::Directory);
    b.append_data(&mut h, name, std::io::empty())
}

/// Appends a blob, hashing it on the way; a blob that does not match is [`Error::Tampered`].
fn append_blob<W: Write>(
    store: &Store,
    b: &mut tar::Builder<W>,
    d: &Digest,
    temp: &Path,
) -> Result<()> {
    let path = store.blob_path(d);
    let file = std::fs::File::open(&path).map_err(|e| Error::io("open", &path, e))?;
    let size = file
        .metadata()
        .map_err(|e| Error::io("stat", &path, e))?
        .len();
    let mut reader = crate::store::HashingFile::new(BufReader::with_capacity(256 << 10, file));
    let mut h = header(size, 0o644, tar::EntryType::Regular);
    b.append_data(&mut h, format!("blobs/sha256/{}", d.hex()), &mut reader)
        .map_err(|e| Error::io("write", temp, e))?;
    let (actual, _) = reader.finish().map_err(|e| Error::io("read", &path, e))?;
    if actual != *d {
        return Err(Error::Tampered {
            digest: *d,
            actual: actual.to_string(),
        });
    }
    Ok(())
}
