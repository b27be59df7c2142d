//! Shared by the `oci_*` fuzz targets (and by `tests/oci_seeds.rs`, which runs them once over
//! seed inputs): each body feeds arbitrary bytes to a public entry point of `stamp-oci` and
//! checks what must hold whatever the input (no panic, a consistent store).
#![allow(dead_code)]

use stamp_oci::archive::{self, ImportOptions, Source};
use stamp_oci::{Digest, Reference, Store, media};

/// Parses the input (as UTF-8, lossily) as a registry reference and as a source; a reference
/// that parses prints as a string that parses back to itself.
pub fn reference(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(r) = s.parse::<Reference>() {
        let _ = r.api_host();
        let _ = r.manifest_selector();
        let printed = r.to_string();
        let again: Reference = printed
            .parse()
            .unwrap_or_else(|e| panic!("{s:?} parsed as {printed:?}, which does not parse: {e}"));
        assert_eq!(again, r, "{s:?} printed as {printed:?}");
        if let Some(d) = r.digest {
            let _ = r.with_digest(d);
        }
        let _ = r.with_tag("t");
    }
    // Source::parse looks paths up on the host: harmless, it only stats them.
    let _ = Source::parse(&s);
}

/// The number of entries in the store's `tmp/`.
fn tmp_entries(store: &Store) -> usize {
    std::fs::read_dir(store.root().join("tmp")).map_or(0, |d| d.count())
}

/// Writes the input to a file and imports it as an oci-archive, as a docker-archive and as
/// whatever `Source::detect` says it is, into one store: a failed import leaves nothing in
/// `tmp/`, an image that imports is readable (and flattened), and the store passes fsck with
/// every imported image named. Returns how many imports succeeded.
pub fn archive(data: &[u8]) -> usize {
    let Ok(dir) = tempfile::tempdir() else {
        return 0;
    };
    let path = dir.path().join("input.tar");
    if std::fs::write(&path, data).is_err() {
        return 0;
    }
    let Ok(store) = Store::open(&dir.path().join("store")) else {
        return 0;
    };
    let mut imported_count = 0;
    let mut sources = vec![
        Source::OciArchive {
            path: path.clone(),
            tag: None,
        },
        Source::DockerArchive {
            path: path.clone(),
            tag: None,
        },
    ];
    if let Ok(s) = Source::detect(&path)
        && !sources.contains(&s)
    {
        sources.push(s);
    }
    for (i, source) in sources.iter().enumerate() {
        let result = archive::import(&store, source, &ImportOptions::default());
        assert_eq!(tmp_entries(&store), 0, "{source:?} left files in tmp/");
        let Ok(imported) = result else { continue };
        imported_count += 1;
        store
            .set_name(&format!("localhost/fuzz:{i}"), &imported.descriptor)
            .unwrap_or_else(|e| panic!("{source:?} imported, but cannot be named: {e}"));
        if let Ok(image) = store.image(&imported.descriptor, None) {
            let _ = image.size();
            let _ = image.created();
            let _ = stamp_oci::flatten(&store, &image, &stamp_fs::source::SourceOptions::default());
        }
    }
    check_store(&store);
    imported_count
}

/// Asserts that fsck finds the store clean.
fn check_store(store: &Store) {
    match store.fsck() {
        Ok(report) => assert!(report.is_clean(), "fsck: {report:?}"),
        Err(e) => panic!("fsck failed: {e}"),
    }
}

/// Most blobs a manifest input carries (see [`manifest`]).
const MAX_PARTS: usize = 8;

/// Feeds the input to `Store::image` as a manifest or index of every media type (and of an
/// unknown one, which is sniffed). The input is split at NUL bytes: the first part is the
/// manifest, the others (up to [`MAX_PARTS`]) are stored as blobs too, and `@N@` in the
/// manifest becomes the digest of part N, so that inputs can reach configs and layers.
/// Returns how many (media type, platform) pairs gave an image.
pub fn manifest(data: &[u8]) -> usize {
    let Ok(dir) = tempfile::tempdir() else {
        return 0;
    };
    let Ok(store) = Store::open(&dir.path().join("store")) else {
        return 0;
    };
    let mut parts = data.split(|b| *b == 0);
    let Some(template) = parts.next() else {
        return 0;
    };
    let mut text = template.to_vec();
    for (i, part) in parts.take(MAX_PARTS).enumerate() {
        let Ok(d) = store.put_bytes(part) else {
            return 0;
        };
        text = replace(
            &text,
            format!("@{}@", i + 1).as_bytes(),
            d.to_string().as_bytes(),
        );
    }
    let Ok(digest) = store.put_bytes(&text) else {
        return 0;
    };
    let mut images = 0;
    assert_eq!(digest, Digest::of(&text));
    let arm64 = {
        let mut p = oci_spec::image::Platform::default();
        p.set_os(oci_spec::image::Os::Linux);
        p.set_architecture(oci_spec::image::Arch::ARM64);
        p
    };
    for media_type in [
        media::OCI_MANIFEST,
        media::OCI_INDEX,
        media::DOCKER_MANIFEST,
        media::DOCKER_MANIFEST_LIST,
        "application/octet-stream",
    ] {
        let Ok(desc) = stamp_oci::store::descriptor(media_type, &digest, text.len() as u64) else {
            continue;
        };
        for platform in [None, Some(&arm64)] {
            if let Ok(image) = store.image(&desc, platform) {
                images += 1;
                let _ = image.diff_ids();
                let _ = image.size();
                let _ = image.created();
            }
        }
    }
    check_store(&store);
    images
}

/// `haystack` with every `from` replaced by `to`.
fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}
