//! Archive import and export, against archives made by podman and checked with podman and skopeo.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use oci_spec::image::Descriptor;
use stamp_oci::archive::{self, ImportOptions, Imported, Source};
use stamp_oci::{Digest, Error, ImageKind, Store, media};

fn temp_store(t: &tempfile::TempDir, name: &str) -> Store {
    Store::open(&t.path().join(name)).unwrap()
}

fn digest_of(d: &Descriptor) -> Digest {
    d.digest().to_string().parse().unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts the store holds no blob and no temp file (a failed import left nothing).
fn assert_untouched(store: &Store) {
    for sub in ["blobs/sha256", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(store.root().join(sub)).unwrap().collect();
        assert!(left.is_empty(), "{sub} has {left:?}");
    }
}

/// A small root filesystem tar (with a symlink and a hard link).
fn rootfs_tar(marker: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir.clone(), "etc/", std::io::empty())
        .unwrap();
    b.append_data(&mut dir, "bin/", std::io::empty()).unwrap();
    let mut f = tar::Header::new_gnu();
    f.set_mode(0o644);
    f.set_size(marker.len() as u64);
    f.set_mtime(1_600_000_000);
    b.append_data(&mut f, "etc/marker", marker.as_bytes())
        .unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut f = tar::Header::new_gnu();
    f.set_mode(0o755);
    f.set_size(big.len() as u64);
    b.append_data(&mut f, "bin/tool", &big[..]).unwrap();
    let mut l = tar::Header::new_gnu();
    l.set_entry_type(tar::EntryType::Symlink);
    l.set_size(0);
    l.set_mode(0o777);
    b.append_link(&mut l, "bin/link", "tool").unwrap();
    b.into_inner().unwrap()
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A two-layer podman image (an imported rootfs, then a COPY), removed on drop.
struct PodmanImage {
    name: String,
    _dir: tempfile::TempDir,
}

impl PodmanImage {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let base = format!("localhost/stamp-test-base-{}-{n}:1", std::process::id());
        let name = format!("localhost/stamp-test-{}-{n}:1", std::process::id());
        std::fs::write(dir.path().join("rootfs.tar"), rootfs_tar("base")).unwrap();
        run(Command::new("podman")
            .args(["import", "-q"])
            .arg(dir.path().join("rootfs.tar"))
            .arg(&base));
        std::fs::write(dir.path().join("added"), "second layer\n").unwrap();
        std::fs::write(
            dir.path().join("Containerfile"),
            format!("FROM {base}\nCOPY added /etc/added\n"),
        )
        .unwrap();
        run(Command::new("podman")
            .args(["build", "-q", "--isolation", "chroot", "-t", &name, "-f"])
            .arg(dir.path().join("Containerfile"))
            .arg(dir.path()));
        run(Command::new("podman").args(["rmi", &base]));
        PodmanImage { name, _dir: dir }
    }

    fn save(&self, format: &str, out: &Path) {
        run(Command::new("podman")
            .args(["save", "-q", "--format", format, "-o"])
            .arg(out)
            .arg(&self.name));
    }

    fn id(&self) -> String {
        run(Command::new("podman").args(["image", "inspect", "--format", "{{.Id}}", &self.name]))
            .trim()
            .to_string()
    }
}

impl Drop for PodmanImage {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.name])
            .output();
    }
}

/// The layers of an image, uncompressed, checked against the config's diff_ids.
fn check_image(store: &Store, imported: &Imported) -> Vec<Digest> {
    let image = store.image(&imported.descriptor, None).unwrap();
    assert_eq!(image.kind, ImageKind::Container);
    let diff_ids = image.diff_ids().unwrap();
    for (layer, diff_id) in image.manifest.layers().iter().zip(&diff_ids) {
        let p = store.uncompressed_layer(layer, diff_id).unwrap();
        let mut bytes = Vec::new();
        std::fs::File::open(&p)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(Digest::of(&bytes), *diff_id);
        assert!(media::layer_compression(layer.media_type().as_ref()).is_some());
    }
    assert!(store.fsck().unwrap().is_clean());
    diff_ids
}

fn import(store: &Store, source: &str) -> stamp_oci::Result<Imported> {
    let source = Source::parse(source)?.unwrap();
    archive::import(store, &source, &ImportOptions::default())
}

#[test]
fn podman_archives_import_with_the_same_layers() {
    let img = PodmanImage::new();
    let t = tempfile::tempdir().unwrap();
    let oci = t.path().join("oci.tar");
    let docker = t.path().join("docker.tar");
    let dir = t.path().join("oci-dir");
    img.save("oci-archive", &oci);
    img.save("docker-archive", &docker);
    img.save("oci-dir", &dir);

    let s1 = temp_store(&t, "s1");
    let a = import(&s1, &format!("oci-archive:{}", oci.display())).unwrap();
    assert_eq!(a.name.as_deref(), Some(img.name.as_str()));
    let ids = check_image(&s1, &a);
    assert_eq!(ids.len(), 2);

    let s2 = temp_store(&t, "s2");
    let b = import(&s2, &format!("docker-archive:{}", docker.display())).unwrap();
    assert_eq!(b.name.as_deref(), Some(img.name.as_str()));
    assert_eq!(check_image(&s2, &b), ids);
    // The config is kept byte for byte: its digest is podman's image ID.
    let config = s2.image(&b.descriptor, None).unwrap();
    assert_eq!(digest_of(config.manifest.config()).hex(), img.id());

    let s3 = temp_store(&t, "s3");
    let c = import(&s3, &format!("oci:{}", dir.display())).unwrap();
    assert_eq!(check_image(&s3, &c), ids);

    // Same store, several sources: blobs are shared, not duplicated.
    let again = import(&s1, &format!("oci:{}", dir.display())).unwrap();
    check_image(&s1, &again);
}

#[test]
fn export_then_reimport_gives_identical_digests_and_podman_loads_it() {
    let img = PodmanImage::new();
    let t = tempfile::tempdir().unwrap();
    let oci = t.path().join("oci.tar");
    img.save("oci-archive", &oci);
    let s1 = temp_store(&t, "s1");
    let a = import(&s1, &format!("oci-archive:{}", oci.display())).unwrap();
    let exported_name = format!("{}-exported", img.name.trim_end_matches(":1"));
    let exported_name = format!("{exported_name}:2");
    s1.set_name(&exported_name, &a.descriptor).unwrap();
    let out = t.path().join("out.tar");
    archive::export(&s1, &s1.resolve(&exported_name).unwrap(), &out).unwrap();

    let s2 = temp_store(&t, "s2");
    let b = import(&s2, &format!("oci-archive:{}", out.display())).unwrap();
    assert_eq!(b.descriptor.digest(), a.descriptor.digest());
    assert_eq!(b.name.as_deref(), Some(exported_name.as_str()));
    s2.set_name(&exported_name, &b.descriptor).unwrap();
    let out2 = t.path().join("out2.tar");
    archive::export(&s2, &s2.resolve(&exported_name).unwrap(), &out2).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());

    // podman reads what we wrote.
    let loaded = run(Command::new("podman").args(["load", "-q", "-i"]).arg(&out));
    assert!(loaded.contains(&exported_name), "{loaded}");
    let layers = run(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{range .RootFS.Layers}}{{.}} {{end}}",
        &exported_name,
    ]));
    let ids: Vec<String> = check_image(&s2, &b).iter().map(|d| d.to_string()).collect();
    assert_eq!(layers.split_whitespace().collect::<Vec<_>>(), ids);
    let _ = Command::new("podman")
        .args(["rmi", "-f", &exported_name])
        .output();
}

#[test]
fn skopeo_reads_the_store_as_an_oci_layout() {
    let t = tempfile::tempdir().unwrap();
    let store = temp_store(&t, "s");
    let rootfs = t.path().join("rootfs.tar");
    std::fs::write(&rootfs, rootfs_tar("skopeo")).unwrap();
    let a = import(&store, &format!("rootfs:{}", rootfs.display())).unwrap();
    store
        .set_name("example.org/skopeo:test", &a.descriptor)
        .unwrap();
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        &format!("oci:{}:example.org/skopeo:test", store.root().display()),
    ]));
    assert_eq!(Digest::of(out.as_bytes()), digest_of(&a.descriptor));
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--config",
        &format!("oci:{}:example.org/skopeo:test", store.root().display()),
    ]));
    assert!(out.contains("amd64"), "{out}");
    // podman's storage takes it too (through skopeo), and sees the same layer.
    let name = format!("localhost/stamp-test-skopeo-{}:1", std::process::id());
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        &format!("oci:{}:example.org/skopeo:test", store.root().display()),
        &format!("containers-storage:{name}"),
    ]));
    let id = name.clone();
    let layers = run(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{range .RootFS.Layers}}{{.}}{{end}}",
        id.trim(),
    ]));
    let image = store.image(&a.descriptor, None).unwrap();
    assert_eq!(layers.trim(), image.diff_ids().unwrap()[0].to_string());
    let _ = Command::new("podman")
        .args(["rmi", "-f", id.trim()])
        .output();
}

#[test]
fn an_oci_layout_source_picks_by_name() {
    let t = tempfile::tempdir().unwrap();
    let src = temp_store(&t, "src");
    let root = t.path().join("r.tar");
    std::fs::write(&root, rootfs_tar("one")).unwrap();
    let one = import(&src, &format!("rootfs:{}", root.display())).unwrap();
    std::fs::write(&root, rootfs_tar("two")).unwrap();
    let two = import(&src, &format!("rootfs:{}", root.display())).unwrap();
    src.set_name("one", &one.descriptor).unwrap();
    src.set_name("two", &two.descriptor).unwrap();
    let dst = temp_store(&t, "dst");
    let got = import(&dst, &format!("oci:{}:two", src.root().display())).unwrap();
    assert_eq!(got.descriptor.digest(), two.descriptor.digest());
    assert_eq!(got.name.as_deref(), Some("two"));
    check_image(&dst, &got);
    // Only what "two" references was copied.
    assert!(!dst.has_blob(&digest_of(&one.descriptor)));
    let err = import(&dst, &format!("oci:{}:three", src.root().display())).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}

fn compress(tar: &[u8], how: &str) -> Vec<u8> {
    match how {
        "gz" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        "zst" => zstd::encode_all(tar, 3).unwrap(),
        "xz" => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        _ => tar.to_vec(),
    }
}

#[test]
fn rootfs_tars_in_every_compression() {
    let t = tempfile::tempdir().unwrap();
    let tar = rootfs_tar("rootfs");
    let diff_id = Digest::of(&tar);
    let opts = ImportOptions {
        architecture: "arm64".to_string(),
        created: 1_700_000_000,
    };
    let mut manifests = Vec::new();
    for (ext, layer_type) in [
        ("", media::OCI_LAYER_TAR),
        ("gz", media::OCI_LAYER_GZIP),
        ("zst", media::OCI_LAYER_ZSTD),
        ("xz", media::OCI_LAYER_TAR),
    ] {
        let store = temp_store(&t, &format!("s{ext}"));
        let file = t.path().join(format!("rootfs.tar.{ext}"));
        let bytes = compress(&tar, ext);
        std::fs::write(&file, &bytes).unwrap();
        let got = archive::import(&store, &Source::Rootfs { path: file }, &opts).unwrap();
        let image = store.image(&got.descriptor, None).unwrap();
        let layer = &image.manifest.layers()[0];
        assert_eq!(layer.media_type().to_string(), layer_type);
        if ext == "gz" || ext == "zst" {
            assert_eq!(digest_of(layer), Digest::of(&bytes), "kept as is");
        } else {
            assert_eq!(digest_of(layer), diff_id);
        }
        assert_eq!(image.diff_ids().unwrap(), vec![diff_id]);
        let config = image.config.unwrap();
        assert_eq!(config.architecture().to_string(), "arm64");
        assert_eq!(config.os().to_string(), "linux");
        assert_eq!(config.created().as_deref(), Some("2023-11-14T22:13:20Z"));
        check_image(
            &store,
            &Imported {
                descriptor: got.descriptor.clone(),
                name: None,
            },
        );
        manifests.push(digest_of(&got.descriptor));
    }
    assert_eq!(
        manifests[0], manifests[3],
        "plain and xz give the same image"
    );
    // Reproducible: the same input in another store gives the same digest.
    let again = temp_store(&t, "again");
    let file = t.path().join("rootfs.tar.");
    let got = archive::import(&again, &Source::Rootfs { path: file }, &opts).unwrap();
    assert_eq!(digest_of(&got.descriptor), manifests[0]);
}

#[test]
fn directories_become_reproducible_layers() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("tree");
    std::fs::create_dir_all(src.join("etc/conf.d")).unwrap();
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("etc/b"), "b").unwrap();
    std::fs::write(src.join("etc/a"), "a").unwrap();
    std::fs::write(src.join("etc/conf.d/x.conf"), "x=1\n").unwrap();
    std::fs::write(src.join("bin/tool"), vec![1u8; 10_000]).unwrap();
    std::fs::hard_link(src.join("bin/tool"), src.join("bin/tool2")).unwrap();
    std::os::unix::fs::symlink("tool", src.join("bin/link")).unwrap();
    let opts = ImportOptions::default();
    let s1 = temp_store(&t, "s1");
    let s2 = temp_store(&t, "s2");
    let a = archive::import(&s1, &Source::Dir { path: src.clone() }, &opts).unwrap();
    let b = archive::import(&s2, &Source::Dir { path: src.clone() }, &opts).unwrap();
    assert_eq!(a.descriptor.digest(), b.descriptor.digest());
    let image = s1.image(&a.descriptor, None).unwrap();
    let layer = s1.blob_path(&digest_of(&image.manifest.layers()[0]));
    let mut ar = tar::Archive::new(std::fs::File::open(layer).unwrap());
    let mut seen = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => "d",
            tar::EntryType::Symlink => "l",
            tar::EntryType::Link => "h",
            _ => "f",
        };
        assert_eq!(h.uid().unwrap(), u64::from(nix_uid(&src)));
        seen.push(format!("{kind} {}", e.path().unwrap().display()));
    }
    assert_eq!(
        seen,
        [
            "d bin/",
            "l bin/link",
            "f bin/tool",
            "h bin/tool2",
            "d etc/",
            "f etc/a",
            "f etc/b",
            "d etc/conf.d/",
            "f etc/conf.d/x.conf"
        ]
    );
    check_image(&s1, &a);
}

fn nix_uid(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().uid()
}

/// Rewrites an archive member by member: `edit` gets each (path, data) and returns what to
/// write instead (None drops the member).
fn rewrite(src: &Path, dst: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut ar = tar::Archive::new(std::fs::File::open(src).unwrap());
    let mut b = tar::Builder::new(std::fs::File::create(dst).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if let Some(data) = edit(&path, data) {
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
        }
    }
    b.finish().unwrap();
}

/// A member edit for [`rewrite`].
type Edit<'a> = dyn Fn(&str, Vec<u8>) -> Option<Vec<u8>> + 'a;

/// An oci-archive written by our own export, to break in various ways.
fn good_oci_archive(t: &tempfile::TempDir) -> (PathBuf, Digest) {
    let store = temp_store(t, "origin");
    let rootfs = t.path().join("rootfs.tar");
    std::fs::write(&rootfs, rootfs_tar("good")).unwrap();
    let a = import(&store, &format!("rootfs:{}", rootfs.display())).unwrap();
    let image = store.image(&a.descriptor, None).unwrap();
    let out = t.path().join("good.tar");
    archive::export(&store, &a.descriptor, &out).unwrap();
    (out, digest_of(&image.manifest.layers()[0]))
}

#[test]
fn malformed_oci_archives_are_refused_and_leave_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (good, layer) = good_oci_archive(&t);
    let layer_member = format!("blobs/sha256/{}", layer.hex());
    let layer_name = layer.to_string();
    let cases: Vec<(&str, Box<Edit<'_>>, &str)> = vec![
        (
            "missing blob",
            Box::new(|p: &str, d| (p != layer_member).then_some(d)),
            "not in the archive",
        ),
        (
            "bad index.json",
            Box::new(|p: &str, d| {
                Some(if p == "index.json" {
                    b"{\"schemaVersion\": 2, \"manifests\": [".to_vec()
                } else {
                    d
                })
            }),
            "index.json",
        ),
        (
            "digest mismatch",
            Box::new(|p: &str, mut d: Vec<u8>| {
                if p == layer_member {
                    d[600] ^= 1;
                }
                Some(d)
            }),
            &layer_name,
        ),
        (
            "no oci-layout",
            Box::new(|p: &str, d| (p != "oci-layout").then_some(d)),
            "oci-layout",
        ),
    ];
    for (what, edit, expect) in cases {
        let bad = t.path().join("bad.tar");
        rewrite(&good, &bad, edit);
        let store = temp_store(&t, &format!("s-{}", what.replace(' ', "-")));
        let err = import(&store, &format!("oci-archive:{}", bad.display())).unwrap_err();
        assert!(err.to_string().contains(expect), "{what}: {err}");
        assert_untouched(&store);
    }
    // The good one imports.
    let store = temp_store(&t, "fine");
    import(&store, &format!("oci-archive:{}", good.display())).unwrap();
}

#[test]
fn path_traversal_in_member_names_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (good, _) = good_oci_archive(&t);
    let bad = t.path().join("evil.tar");
    {
        let mut ar = tar::Archive::new(std::fs::File::open(&good).unwrap());
        let mut b = tar::Builder::new(std::fs::File::create(&bad).unwrap());
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..10].copy_from_slice(b"../escaped");
        h.set_size(4);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &b"evil"[..]).unwrap();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut d = Vec::new();
            e.read_to_end(&mut d).unwrap();
            b.append(&h, &d[..]).unwrap();
        }
        b.finish().unwrap();
    }
    let store = temp_store(&t, "s");
    let err = import(&store, &format!("oci-archive:{}", bad.display())).unwrap_err();
    assert!(err.to_string().contains("leaves the archive"), "{err}");
    assert_untouched(&store);
    assert!(!t.path().join("escaped").exists());
}

#[test]
fn malformed_docker_archives_are_refused_and_leave_nothing() {
    let t = tempfile::tempdir().unwrap();
    let layer = rootfs_tar("docker");
    let diff_id = Digest::of(&layer);
    let make = |name: &str, config: serde_json::Value, manifest: &str, with_layer: bool| {
        let path = t.path().join(name);
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let mut add = |p: &str, d: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o444);
            b.append_data(&mut h, p, d).unwrap();
        };
        if with_layer {
            add("abc/layer.tar", &layer);
        }
        add("cfg.json", &serde_json::to_vec(&config).unwrap());
        add("manifest.json", manifest.as_bytes());
        b.into_inner().unwrap();
        path
    };
    let config = |id: &Digest| serde_json::json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[id.to_string()]}});
    let manifest = r#"[{"Config":"cfg.json","RepoTags":["docker.io/library/x:1"],"Layers":["abc/layer.tar"]}]"#;

    let good = make("good.tar", config(&diff_id), manifest, true);
    let store = temp_store(&t, "good");
    let got = import(&store, &format!("docker-archive:{}", good.display())).unwrap();
    assert_eq!(got.name.as_deref(), Some("docker.io/library/x:1"));
    let image = store.image(&got.descriptor, None).unwrap();
    assert_eq!(
        image.manifest.layers()[0].media_type().to_string(),
        media::OCI_LAYER_TAR
    );
    assert_eq!(digest_of(&image.manifest.layers()[0]), diff_id);
    check_image(&store, &got);

    let cases = [
        (
            make(
                "wrong-diff.tar",
                config(&Digest::of(b"other")),
                manifest,
                true,
            ),
            "diff_id",
        ),
        (
            make("no-layer.tar", config(&diff_id), manifest, false),
            "abc/layer.tar",
        ),
        (
            make("bad-json.tar", config(&diff_id), "[{\"Config\":", true),
            "manifest.json",
        ),
        (
            make(
                "two-ids.tar",
                serde_json::json!({"rootfs":{"diff_ids":[diff_id.to_string(), diff_id.to_string()]}}),
                manifest,
                true,
            ),
            "2 diff_ids for 1 layers",
        ),
    ];
    for (path, expect) in cases {
        let store = temp_store(
            &t,
            &format!("s-{}", path.file_name().unwrap().to_string_lossy()),
        );
        let err = import(&store, &format!("docker-archive:{}", path.display())).unwrap_err();
        assert!(
            err.to_string().contains(expect),
            "{}: {err}",
            path.display()
        );
        assert_untouched(&store);
    }
}

#[test]
fn garbage_inputs_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let junk = t.path().join("junk");
    std::fs::write(&junk, vec![0x5au8; 5000]).unwrap();
    for source in [
        format!("oci-archive:{}", junk.display()),
        format!("docker-archive:{}", junk.display()),
        format!("rootfs:{}", junk.display()),
        format!("oci:{}", t.path().display()),
    ] {
        let store = temp_store(&t, "s");
        let err = import(&store, &source).unwrap_err();
        assert!(
            err.to_string().contains(&t.path().display().to_string()),
            "{source}: {err}"
        );
        assert_untouched(&store);
    }
}

#[test]
fn sources_parse() {
    assert_eq!(Source::parse("docker.io/library/debian:12").unwrap(), None);
    assert_eq!(Source::parse("localhost:5000/x:1").unwrap(), None);
    assert_eq!(
        Source::parse("oci:/no/such/dir:v1").unwrap(),
        Some(Source::OciDir {
            path: "/no/such/dir".into(),
            tag: Some("v1".into())
        })
    );
    assert_eq!(
        Source::parse("oci-archive:/tmp/a.tar").unwrap(),
        Some(Source::OciArchive {
            path: "/tmp/a.tar".into(),
            tag: None
        })
    );
    assert_eq!(
        Source::parse("rootfs:/r.tar.zst").unwrap(),
        Some(Source::Rootfs {
            path: "/r.tar.zst".into()
        })
    );
    assert!(Source::parse("dir:").is_err());
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("a.tar");
    std::fs::write(&file, b"").unwrap();
    assert_eq!(
        Source::parse(&format!(
            "oci-archive:{}:localhost:5000/x:1",
            file.display()
        ))
        .unwrap(),
        Some(Source::OciArchive {
            path: file.clone(),
            tag: Some("localhost:5000/x:1".into())
        })
    );
    assert_eq!(
        Source::parse(&format!("docker-archive:{}", file.display())).unwrap(),
        Some(Source::DockerArchive {
            path: file,
            tag: None
        })
    );
}

#[test]
fn docker_archive_layers_may_be_symlinks_and_oci_style_paths() {
    let t = tempfile::tempdir().unwrap();
    let layer = rootfs_tar("links");
    let diff_id = Digest::of(&layer);
    let gz = compress(&layer, "gz");
    let gz_digest = Digest::of(&gz);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string(), diff_id.to_string()]}
    }))
    .unwrap();
    let path = t.path().join("d.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let mut add = |p: &str, d: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(d.len() as u64);
        h.set_mode(0o444);
        b.append_data(&mut h, p, d).unwrap();
    };
    add("flat.tar", &layer);
    add(&format!("blobs/sha256/{}", gz_digest.hex()), &gz);
    add("cfg.json", &config);
    let manifest = format!(
        r#"[{{"Config":"cfg.json","RepoTags":null,"Layers":["id/layer.tar","blobs/sha256/{}"]}}]"#,
        gz_digest.hex()
    );
    add("manifest.json", manifest.as_bytes());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "id/layer.tar", "../flat.tar")
        .unwrap();
    b.into_inner().unwrap();
    let store = temp_store(&t, "s");
    let got = import(&store, &format!("docker-archive:{}", path.display())).unwrap();
    assert_eq!(got.name, None);
    let image = store.image(&got.descriptor, None).unwrap();
    let types: Vec<String> = image
        .manifest
        .layers()
        .iter()
        .map(|l| l.media_type().to_string())
        .collect();
    assert_eq!(types, [media::OCI_LAYER_TAR, media::OCI_LAYER_GZIP]);
    assert_eq!(check_image(&store, &got), vec![diff_id, diff_id]);
}

#[test]
fn import_detects_what_a_path_is() {
    let t = tempfile::tempdir().unwrap();
    let (oci, _) = good_oci_archive(&t);
    let store = Store::open(&t.path().join("origin")).unwrap();
    let detect = |p: &Path| Source::detect(p).unwrap();
    assert!(matches!(detect(&oci), Source::OciArchive { .. }));
    assert!(matches!(detect(store.root()), Source::OciDir { .. }));
    assert!(matches!(detect(t.path()), Source::Dir { .. }));
    let rootfs = t.path().join("r.tar.zst");
    std::fs::write(&rootfs, compress(&rootfs_tar("detect"), "zst")).unwrap();
    assert!(matches!(detect(&rootfs), Source::Rootfs { .. }));
    let docker = t.path().join("d.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&docker).unwrap());
    for name in [
        format!("{}.tar", "a".repeat(64)),
        "manifest.json".to_string(),
        "repositories".to_string(),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        b.append_data(&mut h, name, &b"{}"[..]).unwrap();
    }
    b.finish().unwrap();
    drop(b);
    assert!(matches!(detect(&docker), Source::DockerArchive { .. }));
}

#[test]
fn a_podman_multi_arch_list_imports_exports_and_picks_the_platform() {
    let t = tempfile::tempdir().unwrap();
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let tag = |what: &str| format!("localhost/stamp-test-{what}-{}-{n}:1", std::process::id());
    let (amd, arm, list) = (tag("amd64"), tag("arm64"), tag("list"));
    for (name, arch) in [(&amd, "amd64"), (&arm, "arm64")] {
        let rootfs = t.path().join(format!("{arch}.tar"));
        std::fs::write(&rootfs, rootfs_tar(arch)).unwrap();
        run(Command::new("podman")
            .args(["import", "-q", "--arch", arch])
            .arg(&rootfs)
            .arg(name));
    }
    run(Command::new("podman").args(["manifest", "create", &list]));
    for name in [&amd, &arm] {
        run(Command::new("podman").args([
            "manifest",
            "add",
            &list,
            &format!("containers-storage:{name}"),
        ]));
    }
    let archive_path = t.path().join("list.tar");
    run(Command::new("podman").args([
        "manifest",
        "push",
        "-q",
        "--all",
        &list,
        &format!("oci-archive:{}", archive_path.display()),
    ]));
    let _ = Command::new("podman")
        .args(["manifest", "rm", &list])
        .output();
    let _ = Command::new("podman")
        .args(["rmi", "-f", &amd, &arm])
        .output();

    let store = temp_store(&t, "s");
    let got = import(&store, &format!("oci-archive:{}", archive_path.display())).unwrap();
    assert_eq!(got.descriptor.media_type().to_string(), media::OCI_INDEX);
    let mut arm64 = oci_spec::image::Platform::default();
    arm64.set_architecture(oci_spec::image::Arch::ARM64);
    arm64.set_os(oci_spec::image::Os::Linux);
    let image = store.image(&got.descriptor, Some(&arm64)).unwrap();
    let config = image.config.as_ref().unwrap();
    assert_eq!(config.architecture().to_string(), "arm64");
    check_image(
        &store,
        &Imported {
            descriptor: image.manifest_descriptor.clone(),
            name: None,
        },
    );

    // Export and re-import the whole list.
    store.set_name("multi:1", &got.descriptor).unwrap();
    let gc = store.gc(false).unwrap();
    assert!(gc.removed_blobs.is_empty(), "{gc:?}");
    let out = t.path().join("out.tar");
    archive::export(&store, &store.resolve("multi:1").unwrap(), &out).unwrap();
    let again = temp_store(&t, "again");
    let back = import(&again, &format!("oci-archive:{}", out.display())).unwrap();
    assert_eq!(back.descriptor.digest(), got.descriptor.digest());
    let mut amd64 = arm64.clone();
    amd64.set_architecture(oci_spec::image::Arch::Amd64);
    let image = again.image(&back.descriptor, Some(&amd64)).unwrap();
    assert_eq!(image.config.unwrap().architecture().to_string(), "amd64");
    assert!(again.fsck().unwrap().is_clean());
}

#[test]
fn export_refuses_a_tampered_blob_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let store = temp_store(&t, "s");
    let rootfs = t.path().join("rootfs.tar");
    std::fs::write(&rootfs, rootfs_tar("tamper")).unwrap();
    let a = import(&store, &format!("rootfs:{}", rootfs.display())).unwrap();
    let image = store.image(&a.descriptor, None).unwrap();
    let layer = digest_of(&image.manifest.layers()[0]);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(store.blob_path(&layer))
            .unwrap();
        f.write_all_at(b"X", 1000).unwrap();
    }
    let out = t.path().join("out.tar");
    let err = archive::export(&store, &a.descriptor, &out).unwrap_err();
    assert!(
        matches!(&err, Error::Tampered { digest, .. } if *digest == layer),
        "{err}"
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".stamp-export"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Random bytes as any kind of archive: an error or an image, never a panic, and a
        /// failed import leaves nothing.
        #[test]
        fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096), kind in 0usize..3) {
            let t = tempfile::tempdir().unwrap();
            let file = t.path().join("input");
            std::fs::write(&file, &bytes).unwrap();
            let transport = ["oci-archive", "docker-archive", "rootfs"][kind];
            let store = temp_store(&t, "s");
            if import(&store, &format!("{transport}:{}", file.display())).is_err() {
                assert_untouched(&store);
            }
        }

        /// A valid oci-archive with bytes flipped: an error or a verified image, never a panic.
        #[test]
        fn corrupted_oci_archive(flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6)) {
            let t = tempfile::tempdir().unwrap();
            let (good, _) = good_oci_archive(&t);
            let mut bytes = std::fs::read(&good).unwrap();
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            let bad = t.path().join("bad.tar");
            std::fs::write(&bad, &bytes).unwrap();
            let store = temp_store(&t, "s");
            match import(&store, &format!("oci-archive:{}", bad.display())) {
                Ok(got) => {
                    store.image(&got.descriptor, None).unwrap();
                    assert!(store.fsck().unwrap().is_clean());
                }
                Err(_) => assert_untouched(&store),
            }
        }
    }
}
