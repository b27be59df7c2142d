//! The local store: blobs, names, tamper detection, concurrency, gc and fsck.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;

use oci_spec::image::{Descriptor, MediaType};
use stamp_oci::archive::{self, ImportOptions, Source};
use stamp_oci::media;
use stamp_oci::{Digest, Error, ImageKind, Store};

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    (dir, store)
}

fn tmp_entries(store: &Store) -> Vec<String> {
    std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn flip_a_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x20;
    f.write_all_at(&b, at).unwrap();
}

/// A one-layer image made from a small directory, through the public import path.
fn dir_image(store: &Store, files: &[(&str, &str)]) -> Descriptor {
    let src = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(src.path().join(name), content).unwrap();
    }
    let source = Source::Dir {
        path: src.path().to_path_buf(),
    };
    archive::import(store, &source, &ImportOptions::default())
        .unwrap()
        .descriptor
}

fn digest_of(d: &Descriptor) -> Digest {
    d.digest().to_string().parse().unwrap()
}

#[test]
fn open_creates_an_oci_layout_and_reopens_it() {
    let (_t, store) = temp_store();
    let layout = std::fs::read_to_string(store.root().join("oci-layout")).unwrap();
    assert!(layout.contains("\"imageLayoutVersion\":\"1.0.0\""));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.root().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert!(index["manifests"].as_array().unwrap().is_empty());
    Store::open(store.root()).unwrap();
}

#[test]
fn open_refuses_a_foreign_layout_version() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(
        t.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"2.0.0"}"#,
    )
    .unwrap();
    let err = Store::open(t.path()).unwrap_err();
    assert!(err.to_string().contains("oci-layout"), "{err}");
}

#[test]
fn put_read_and_verify_a_blob() {
    let (_t, store) = temp_store();
    let d = store.put_bytes(b"hello").unwrap();
    assert_eq!(d, Digest::of(b"hello"));
    assert!(store.has_blob(&d));
    assert_eq!(
        store.blob_path(&d),
        store.root().join("blobs/sha256").join(d.hex())
    );
    assert_eq!(store.read_small(&d, 100).unwrap(), b"hello");
    store.verify(&d).unwrap();
    store.verify_cached(&d).unwrap();
    assert!(tmp_entries(&store).is_empty());
    let absent = Digest::of(b"absent");
    assert!(!store.has_blob(&absent));
    assert!(matches!(store.read_small(&absent, 100), Err(Error::MissingBlob(x)) if x == absent));
    assert!(matches!(
        store.read_small(&d, 2),
        Err(Error::Malformed { .. })
    ));
}

#[test]
fn a_flipped_byte_is_reported_as_tampered_naming_the_digest() {
    let (_t, store) = temp_store();
    let d = store.put_bytes(&vec![7u8; 100_000]).unwrap();
    store.verify(&d).unwrap();
    flip_a_byte(&store.blob_path(&d), 4242);
    for err in [
        store.verify(&d).unwrap_err(),
        store.verify_cached(&d).unwrap_err(),
        store.read_small(&d, 1 << 20).unwrap_err(),
    ] {
        match &err {
            Error::Tampered { digest, .. } => assert_eq!(*digest, d),
            other => panic!("expected Tampered, got {other}"),
        }
        assert!(err.to_string().contains(&d.to_string()), "{err}");
    }
}

#[test]
fn a_wrong_digest_leaves_nothing_behind() {
    let (_t, store) = temp_store();
    let mut w = store.blob_writer().unwrap().with_source("test upload");
    w.write_all(b"not what was promised").unwrap();
    let expected = Digest::of(b"promised");
    let err = w.commit(Some(&expected)).unwrap_err();
    match err {
        Error::DigestMismatch {
            expected: e,
            actual,
            size,
            ref source_name,
        } => {
            assert_eq!(e, expected);
            assert_eq!(actual, Digest::of(b"not what was promised"));
            assert_eq!(size, 21);
            assert_eq!(source_name, "test upload");
        }
        other => panic!("{other}"),
    }
    assert!(!store.has_blob(&expected));
    assert!(!store.has_blob(&Digest::of(b"not what was promised")));
    assert!(tmp_entries(&store).is_empty());
}

#[test]
fn temp_files_are_never_visible_as_blobs() {
    let (_t, store) = temp_store();
    let mut w = store.blob_writer().unwrap();
    w.write_all(b"partial").unwrap();
    // While writing, the content is only in tmp/.
    assert_eq!(tmp_entries(&store).len(), 1);
    assert!(
        std::fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .next()
            .is_none()
    );
    drop(w); // an abandoned download
    assert!(tmp_entries(&store).is_empty());
    assert!(
        std::fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn reset_starts_a_blob_over() {
    let (_t, store) = temp_store();
    let mut w = store.blob_writer().unwrap();
    w.write_all(b"garbage from a broken connection").unwrap();
    w.reset().unwrap();
    assert!(w.is_empty());
    w.write_all(b"the real content").unwrap();
    let (d, n) = w.commit(Some(&Digest::of(b"the real content"))).unwrap();
    assert_eq!(n, 16);
    assert_eq!(store.read_small(&d, 100).unwrap(), b"the real content");
}

#[test]
fn concurrent_writers_of_one_blob_in_threads() {
    let (_t, store) = temp_store();
    let content: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected = Digest::of(&content);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let mut w = store.blob_writer().unwrap();
                for chunk in content.chunks(65_536) {
                    w.write_all(chunk).unwrap();
                }
                w.commit(Some(&expected)).unwrap();
            });
        }
    });
    store.verify(&expected).unwrap();
    assert!(tmp_entries(&store).is_empty());
}

/// Not a test on its own: the body of each process of
/// `concurrent_processes_write_blobs_and_names`.
#[test]
fn child_process_writer() {
    let (Ok(root), Ok(id)) = (
        std::env::var("STAMP_TEST_CHILD_STORE"),
        std::env::var("STAMP_TEST_CHILD_ID"),
    ) else {
        return;
    };
    let store = Store::open(Path::new(&root)).unwrap();
    let shared: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    for i in 0..20 {
        let d = store.put_bytes(&shared).unwrap();
        let mine = store.put_bytes(format!("{id}-{i}").as_bytes()).unwrap();
        let desc = Descriptor::new(
            MediaType::ImageManifest,
            shared.len() as u64,
            d.to_string().parse::<oci_spec::image::Digest>().unwrap(),
        );
        store.set_name(&format!("p{id}/img:{i}"), &desc).unwrap();
        assert!(store.has_blob(&mine));
    }
}

#[test]
fn concurrent_processes_write_blobs_and_names() {
    let (_t, store) = temp_store();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|id| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "child_process_writer",
                    "--test-threads=1",
                    "--quiet",
                ])
                .env("STAMP_TEST_CHILD_STORE", store.root())
                .env("STAMP_TEST_CHILD_ID", id.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    // No name lost to a racing index update, no torn blob, no temp file left.
    let names = store.list().unwrap();
    assert_eq!(names.len(), 80);
    for id in 0..4 {
        for i in 0..20 {
            store.resolve(&format!("p{id}/img:{i}")).unwrap();
        }
    }
    let report = store.fsck().unwrap();
    assert!(report.tampered.is_empty(), "{report:?}");
    assert_eq!(report.blobs_checked, 1 + 80);
    assert!(tmp_entries(&store).is_empty());
}

/// Not a test on its own: a writer that is killed mid-blob by `a_killed_writer_leaves_only_a_temp_file`.
#[test]
fn child_process_slow_writer() {
    let Ok(root) = std::env::var("STAMP_TEST_SLOW_STORE") else {
        return;
    };
    let store = Store::open(Path::new(&root)).unwrap();
    let mut w = store.blob_writer().unwrap();
    w.write_all(&vec![1u8; 1 << 20]).unwrap();
    w.flush().unwrap();
    std::fs::write(Path::new(&root).join("ready"), b"").unwrap();
    loop {
        w.write_all(&[2u8; 4096]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_killed_writer_leaves_only_a_temp_file() {
    let (_t, store) = temp_store();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_slow_writer",
            "--test-threads=1",
            "--quiet",
        ])
        .env("STAMP_TEST_SLOW_STORE", store.root())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = store.root().join("ready");
    for _ in 0..1000 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(ready.exists(), "the writer did not start");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        std::fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .next()
            .is_none()
    );
    let temps = tmp_entries(&store);
    assert_eq!(temps.len(), 1, "{temps:?}");
    assert!(store.fsck().unwrap().is_clean());
    // A recent temp file may belong to a live writer: gc keeps it until it is an hour old.
    assert!(store.gc(false).unwrap().removed_temp.is_empty());
    let temp = store.root().join("tmp").join(&temps[0]);
    assert!(
        Command::new("touch")
            .args(["-d", "2 hours ago"])
            .arg(&temp)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(store.gc(false).unwrap().removed_temp, vec![temp]);
    assert!(tmp_entries(&store).is_empty());
    // Doing it again completes.
    let d = store.put_bytes(&vec![1u8; 1 << 20]).unwrap();
    store.verify(&d).unwrap();
}

#[test]
fn names_resolve_exactly_with_latest_and_by_digest_prefix() {
    let (_t, store) = temp_store();
    let a = dir_image(&store, &[("a", "1")]);
    let b = dir_image(&store, &[("b", "2")]);
    store.set_name("localhost:5000/debian:12", &a).unwrap();
    store.set_name("debian:latest", &b).unwrap();
    let got = store.resolve("localhost:5000/debian:12").unwrap();
    assert_eq!(got.digest(), a.digest());
    assert_eq!(store.resolve("debian").unwrap().digest(), b.digest());
    assert!(matches!(
        store.resolve("localhost:5000/debian"),
        Err(Error::NotFound(_))
    ));
    let hex = digest_of(&a).hex();
    assert_eq!(store.resolve(&hex[..12]).unwrap().digest(), a.digest());
    assert_eq!(
        store.resolve(&format!("sha256:{hex}")).unwrap().digest(),
        a.digest()
    );
    // Re-tagging replaces.
    store.set_name("debian:latest", &a).unwrap();
    assert_eq!(store.resolve("debian").unwrap().digest(), a.digest());
    assert_eq!(store.list().unwrap().len(), 2);
    // An unnamed manifest is found by digest too.
    store.remove_name("debian:latest").unwrap();
    store.remove_name("localhost:5000/debian:12").unwrap();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.resolve(&hex[..8]).unwrap().digest(), a.digest());
    assert!(matches!(
        store.remove_name("debian:latest"),
        Err(Error::NotFound(_))
    ));
    // Names must point at something in the store, and be names.
    let ghost = Descriptor::new(
        MediaType::ImageManifest,
        3,
        Digest::of(b"ghost")
            .to_string()
            .parse::<oci_spec::image::Digest>()
            .unwrap(),
    );
    assert!(matches!(
        store.set_name("x:1", &ghost),
        Err(Error::MissingBlob(_))
    ));
    assert!(store.set_name("with space", &a).is_err());
    assert!(store.set_name("", &a).is_err());
}

#[test]
fn the_index_is_readable_as_an_oci_layout() {
    let (_t, store) = temp_store();
    let a = dir_image(&store, &[("a", "1")]);
    store.set_name("example.org/app:v1", &a).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.root().join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"][0];
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"],
        "example.org/app:v1"
    );
    assert_eq!(m["mediaType"], media::OCI_MANIFEST);
    assert_eq!(m["digest"], a.digest().to_string());
}

#[test]
fn image_reads_manifest_and_config() {
    let (_t, store) = temp_store();
    let a = dir_image(&store, &[("a", "1")]);
    let img = store.image(&a, None).unwrap();
    assert_eq!(img.kind, ImageKind::Container);
    assert_eq!(img.manifest_digest, digest_of(&a));
    assert_eq!(img.manifest.layers().len(), 1);
    let config = img.config.as_ref().unwrap();
    assert_eq!(config.architecture().to_string(), "amd64");
    assert_eq!(img.diff_ids().unwrap().len(), 1);
    assert_eq!(
        Digest::of(&img.config_bytes),
        digest_of(img.manifest.config())
    );
}

#[test]
fn image_picks_the_platform_from_an_index() {
    let (_t, store) = temp_store();
    let amd = dir_image(&store, &[("arch", "amd64")]);
    let arm = dir_image(&store, &[("arch", "arm64")]);
    let entry = |d: &Descriptor, arch: &str| {
        serde_json::json!({
            "mediaType": media::OCI_MANIFEST, "digest": d.digest().to_string(), "size": d.size(),
            "platform": {"architecture": arch, "os": "linux"}
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": media::OCI_INDEX,
        "manifests": [entry(&amd, "amd64"), entry(&arm, "arm64")]
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let d = store.put_bytes(&bytes).unwrap();
    let idx = Descriptor::new(
        MediaType::ImageIndex,
        bytes.len() as u64,
        d.to_string().parse::<oci_spec::image::Digest>().unwrap(),
    );
    let mut want = oci_spec::image::Platform::default();
    want.set_architecture(oci_spec::image::Arch::ARM64);
    want.set_os(oci_spec::image::Os::Linux);
    assert_eq!(
        store.image(&idx, Some(&want)).unwrap().manifest_digest,
        digest_of(&arm)
    );
    let host = stamp_oci::image::host_platform();
    if host.architecture().to_string() == "amd64" {
        assert_eq!(
            store.image(&idx, None).unwrap().manifest_digest,
            digest_of(&amd)
        );
    }
    want.set_architecture(oci_spec::image::Arch::s390x);
    let err = store.image(&idx, Some(&want)).unwrap_err();
    assert!(err.to_string().contains("linux/arm64"), "{err}");
}

#[test]
fn uncompressed_layer_decompresses_once_and_verifies() {
    let (_t, store) = temp_store();
    let tar = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "etc/hello", &b"hello"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for (bytes, mt) in [(gz, media::OCI_LAYER_GZIP), (zst, media::OCI_LAYER_ZSTD)] {
        let (_t, store) = temp_store();
        let d = store.put_bytes(&bytes).unwrap();
        let layer = Descriptor::new(
            MediaType::from(mt),
            bytes.len() as u64,
            d.to_string().parse::<oci_spec::image::Digest>().unwrap(),
        );
        let p = store.uncompressed_layer(&layer, &diff_id).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), tar);
        assert_eq!(p, store.blob_path(&diff_id));
        assert_eq!(store.uncompressed_layer(&layer, &diff_id).unwrap(), p);
        // A changed cached copy is caught on the next use.
        flip_a_byte(&p, 600);
        assert!(matches!(
            store.uncompressed_layer(&layer, &diff_id),
            Err(Error::Tampered { digest, .. }) if digest == diff_id
        ));
        // A wrong diff_id is a mismatch, and nothing is stored under it.
        let wrong = Digest::of(b"wrong");
        assert!(matches!(
            store.uncompressed_layer(&layer, &wrong),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(!store.has_blob(&wrong));
    }
    // A tampered compressed layer is never decompressed into the cache.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let d = store.put_bytes(&gz).unwrap();
    flip_a_byte(&store.blob_path(&d), (gz.len() - 3) as u64);
    let layer = Descriptor::new(
        MediaType::ImageLayerGzip,
        gz.len() as u64,
        d.to_string().parse::<oci_spec::image::Digest>().unwrap(),
    );
    assert!(store.uncompressed_layer(&layer, &diff_id).is_err());
    assert!(!store.has_blob(&diff_id));
}

#[test]
fn gc_removes_only_unreferenced_blobs() {
    let (_t, store) = temp_store();
    let kept = dir_image(&store, &[("shared", "same"), ("k", "keep")]);
    let gone = dir_image(&store, &[("shared", "same"), ("g", "gone")]);
    store.set_name("kept:1", &kept).unwrap();
    let stray = store.put_bytes(b"stray").unwrap();
    let kept_closure: Vec<Digest> = {
        let img = store.image(&kept, None).unwrap();
        let mut v = vec![img.manifest_digest, digest_of(img.manifest.config())];
        v.extend(img.manifest.layers().iter().map(digest_of));
        v
    };
    let gone_digest = digest_of(&gone);
    // A stale temp file from a killed process, and a fresh one from a live writer.
    let stale = store.root().join("tmp/blob-stale");
    std::fs::write(&stale, b"half a blob").unwrap();
    assert!(
        Command::new("touch")
            .args(["-d", "3 hours ago"])
            .arg(&stale)
            .status()
            .unwrap()
            .success()
    );
    let fresh = store.root().join("tmp/blob-fresh");
    std::fs::write(&fresh, b"in progress").unwrap();

    let dry = store.gc(true).unwrap();
    assert!(dry.dry_run);
    assert!(dry.removed_blobs.iter().any(|(d, _)| *d == stray));
    assert!(store.has_blob(&stray) && stale.exists());

    let report = store.gc(false).unwrap();
    assert_eq!(report.removed_blobs, dry.removed_blobs);
    let removed: Vec<Digest> = report.removed_blobs.iter().map(|(d, _)| *d).collect();
    assert!(removed.contains(&stray) && removed.contains(&gone_digest));
    assert_eq!(
        report.removed_blobs.len(),
        4,
        "stray + gone's manifest, config and layer"
    );
    assert_eq!(report.removed_temp, vec![stale.clone()]);
    assert!(report.removed_bytes >= 5 + 11);
    for d in &kept_closure {
        assert!(store.has_blob(d), "{d} was referenced");
    }
    assert!(!store.has_blob(&stray) && !store.has_blob(&gone_digest));
    assert!(!stale.exists() && fresh.exists());
    assert!(store.fsck().unwrap().is_clean());
}

#[test]
fn gc_keeps_uncompressed_layers_of_named_images() {
    let (_t, store) = temp_store();
    let t = tempfile::tempdir().unwrap();
    let rootfs = t.path().join("rootfs.tar.gz");
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(&rootfs).unwrap(),
        flate2::Compression::fast(),
    ));
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    b.append_data(&mut h, "x", &b"xy"[..]).unwrap();
    b.into_inner().unwrap().finish().unwrap();
    let img = archive::import(
        &store,
        &Source::Rootfs { path: rootfs },
        &ImportOptions::default(),
    )
    .unwrap();
    store.set_name("r:1", &img.descriptor).unwrap();
    let image = store.image(&img.descriptor, None).unwrap();
    let diff_id = image.diff_ids().unwrap()[0];
    let p = store
        .uncompressed_layer(&image.manifest.layers()[0], &diff_id)
        .unwrap();
    assert!(store.gc(false).unwrap().removed_blobs.is_empty());
    assert!(p.exists());
    store.remove_name("r:1").unwrap();
    assert_eq!(store.gc(false).unwrap().removed_blobs.len(), 4);
    assert!(!p.exists());
}

#[test]
fn gc_waits_for_a_writer_holding_the_guard() {
    let (_t, store) = temp_store();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let guard = store.write_guard().unwrap();
            let a = dir_image(&store, &[("a", "in flight")]);
            tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            store.set_name("late:1", &a).unwrap();
            drop(guard);
            a
        });
        rx.recv().unwrap();
        // Blocks until the writer has named its image, so nothing of it is removed.
        let report = store.gc(false).unwrap();
        assert!(report.removed_blobs.is_empty(), "{report:?}");
        let a = writer.join().unwrap();
        store.image(&a, None).unwrap();
    });
}

#[test]
fn fsck_reports_tampered_and_missing_blobs() {
    let (_t, store) = temp_store();
    let a = dir_image(&store, &[("a", "1")]);
    store.set_name("a:1", &a).unwrap();
    let clean = store.fsck().unwrap();
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!(clean.blobs_checked, 3);
    let img = store.image(&a, None).unwrap();
    let layer = digest_of(&img.manifest.layers()[0]);
    flip_a_byte(&store.blob_path(&layer), 700);
    let r = store.fsck().unwrap();
    assert_eq!(
        r.tampered.iter().map(|t| t.0).collect::<Vec<_>>(),
        vec![layer]
    );
    std::fs::remove_file(store.blob_path(&layer)).unwrap();
    let r = store.fsck().unwrap();
    assert!(r.tampered.is_empty());
    assert_eq!(r.missing, vec![(layer, img.manifest_digest.to_string())]);
    assert!(!r.is_clean());
}

/// Not a test on its own: checks `Store::default_root` against `STAMP_TEST_EXPECT_ROOT` in a
/// process whose environment `default_root_follows_the_environment` chose.
#[test]
fn child_default_root() {
    let Ok(expected) = std::env::var("STAMP_TEST_EXPECT_ROOT") else {
        return;
    };
    assert_eq!(Store::default_root(), Path::new(&expected));
}

#[test]
fn default_root_follows_the_environment() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("STAMP_STORE", "/s"),
                ("XDG_DATA_HOME", "/x"),
                ("HOME", "/h"),
            ],
            "/s",
        ),
        (&[("XDG_DATA_HOME", "/x"), ("HOME", "/h")], "/x/stamp/store"),
        (
            &[("XDG_DATA_HOME", "relative"), ("HOME", "/h")],
            "/h/.local/share/stamp/store",
        ),
        (&[("HOME", "/h")], "/h/.local/share/stamp/store"),
    ];
    for (env, expected) in cases {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "child_default_root", "--quiet"])
            .env_remove("STAMP_STORE")
            .env_remove("XDG_DATA_HOME")
            .env("STAMP_TEST_EXPECT_ROOT", expected)
            .stdout(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        assert!(cmd.status().unwrap().success(), "{env:?} -> {expected}");
    }
}
