//! Media types of OCI and Docker manifests, configs and layers.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-platform).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI empty config (`{}`), for artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// OCI uncompressed tar layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer (rare, but valid).
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// The artifact type of a stamp disk image stored as an OCI artifact.
pub const STAMP_DISK_ARTIFACT: &str = "application/vnd.stamp.disk.v1";
/// The config of a stamp disk artifact (format, virtual size, boot mode, architecture, source).
pub const STAMP_DISK_CONFIG: &str = "application/vnd.stamp.disk.config.v1+json";
/// One chunk of a stamp disk artifact.
pub const STAMP_DISK_CHUNK: &str = "application/vnd.stamp.disk.chunk.v1";

/// How a layer's tar stream is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// The compression of a layer media type, or `None` when it is not a layer type we know.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        OCI_LAYER_TAR | DOCKER_LAYER_TAR => Some(Compression::None),
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Some(Compression::Gzip),
        OCI_LAYER_ZSTD => Some(Compression::Zstd),
        // Non-distributable ("foreign") layers are the same bytes with another name.
        "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// Whether `media_type` is a single-image manifest (OCI or Docker).
pub fn is_manifest(media_type: &str) -> bool {
    matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST)
}

/// Whether `media_type` is a multi-platform index (OCI index or Docker manifest list).
pub fn is_index(media_type: &str) -> bool {
    matches!(media_type, OCI_INDEX | DOCKER_MANIFEST_LIST)
}
