//! The acceptance tests of the image store and registry client (issue 4) through the `stamp`
//! binary, against a real `docker-registry` on loopback (plain, htpasswd and TLS flavours, from
//! stamp-oci's test support) and podman with runc: round trips, tampered blobs, a killed pull,
//! containerDisk and disk-artifact layouts, registry failures, and the store verbs.
//!
//! Every test uses its own temporary stores, its own registry (stopped and deleted when the test
//! ends: the shared ones of the support module are never dropped, and the Debian image would
//! fill /tmp) and unique repository names. The Debian tests need the
//! rootfs tar (`$STAMP_DEBIAN_TAR`, else the cache of `scripts/debian-image.sh --tar`) and say
//! they are skipped without it; the podman part says it is skipped without podman and runc.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::common::*;
use super::support::{self, Fault, Flavour, Proxy, Rule};

/// The uid and gid KubeVirt's containerDisk expects (the qemu user).
const QEMU_ID: u64 = 107;

/// How long the kill test waits for a pull to start writing before it gives up waiting.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The kill test kills the pull once its temporary files hold more than this and grow.
const KILL_AFTER: u64 = 1 << 20;

/// A store in a fresh temporary directory.
struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Store {
        Store { dir: tmp() }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Runs `stamp VERB --store DIR ARGS...`.
    fn run(&self, verb: &str, args: &[&str]) -> Run {
        let store = self.path();
        let mut all = vec![verb, "--store", s(&store)];
        all.extend_from_slice(args);
        stamp(&all)
    }

    /// Runs the verb and panics unless it exits 0; returns stdout.
    fn ok(&self, verb: &str, args: &[&str]) -> String {
        let r = self.run(verb, args);
        assert_eq!(
            r.code, 0,
            "stamp {verb} {args:?}: {}\n{}",
            r.stderr, r.stdout
        );
        r.stdout
    }

    /// `stamp pull -q` (with `--tls-verify=false`) and the digest it prints.
    fn pull(&self, reference: &str) -> String {
        self.ok("pull", &["-q", "--tls-verify=false", reference])
            .trim()
            .to_string()
    }

    /// `stamp push -q --tls-verify=false [--as AS] LOCAL REMOTE` and the digest it prints.
    fn push(&self, push_as: &str, local: &str, remote: &str) -> String {
        self.ok(
            "push",
            &["-q", "--tls-verify=false", "--as", push_as, local, remote],
        )
        .trim()
        .to_string()
    }

    fn images(&self) -> Vec<serde_json::Value> {
        let out = self.ok("images", &["--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn inspect(&self, reference: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok("inspect", &["--json", reference])).unwrap()
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// The digests `stamp gc --dry-run` would remove.
    fn gc_dry_run(&self) -> Vec<String> {
        let out = self.ok("gc", &["--dry-run", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["removed_blobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["digest"].as_str().unwrap().to_string())
            .collect()
    }
}

/// The digests an image refers to: manifest, config and layers (from `inspect --json`).
fn referenced(store: &Store, reference: &str) -> Vec<String> {
    let v = store.inspect(reference);
    let mut out = vec![v["digest"].as_str().unwrap().to_string()];
    out.push(
        v["manifest"]["config"]["digest"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    out.extend(layer_digests(&v));
    out
}

fn layer_digests(inspect: &serde_json::Value) -> Vec<String> {
    inspect["manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// A small root filesystem tar: a few directories, files (one of `big` bytes) and a symlink.
fn small_rootfs(path: &Path, tag: &str, big: usize) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        b.append_data(&mut h, name, data).unwrap();
    };
    add("etc/", tar::EntryType::Directory, 0o755, b"", None);
    add("bin/", tar::EntryType::Directory, 0o755, b"", None);
    add(
        "etc/hostname",
        tar::EntryType::Regular,
        0o644,
        tag.as_bytes(),
        None,
    );
    let data: Vec<u8> = (0..big).map(|i| (i * 31 % 251) as u8).collect();
    add("bin/data", tar::EntryType::Regular, 0o755, &data, None);
    add(
        "bin/link",
        tar::EntryType::Symlink,
        0o777,
        b"",
        Some("data"),
    );
    b.into_inner().unwrap();
}

/// A store holding a small image named `name`, and its digest.
fn store_with_small_image(name: &str, big: usize) -> (Store, String) {
    let store = Store::new();
    let tar = store.dir.path().join("rootfs.tar");
    small_rootfs(&tar, name, big);
    let digest = store.pull(&format!("rootfs:{}", s(&tar)));
    store.ok("tag", &[&digest, name]);
    (store, digest)
}

/// A qcow2 of 64 MiB with 1 MiB of 0x5a at offset 0.
fn small_qcow2(path: &Path) {
    qemu_ok(&["create", "-q", "-f", "qcow2", s(path), "64M"]);
    let out = Command::new("qemu-io")
        .args(["-c", "write -P 0x5a 0 1M", s(path)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-io: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// 1. Round trips: stamp -> registry -> stamp, stamp -> podman, podman -> stamp.

#[test]
fn debian_round_trip_through_registry_keeps_the_digest_and_podman_interoperates() {
    let Some(tar) = debian_tar() else {
        eprintln!("skipped: no Debian rootfs tar; run scripts/debian-image.sh --tar");
        return;
    };
    let reg = &support::start(Flavour::Tls);
    let a = Store::new();
    let digest = a.pull(&format!("rootfs:{}", s(&tar)));
    let remote = format!("{}/{}:v1", reg.host, support::unique_repo("debian"));
    a.ok("tag", &[&digest, "localhost/debian:v1"]);
    assert_eq!(a.push("image", "localhost/debian:v1", &remote), digest);
    drop(a);

    let b = Store::new();
    assert_eq!(
        b.pull(&remote),
        digest,
        "pull after push changed the digest"
    );
    assert!(b.ok("fsck", &[]).contains("0 tampered"));
    drop(b);

    podman_interop(&remote, reg);
}

/// Runs podman (runc, private storage, no rlimits) or says why it cannot.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Option<Podman> {
        for tool in ["podman", "runc"] {
            let found = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                eprintln!("skipped the podman part: {tool} is not installed");
                return None;
            }
        }
        let dir = tmp();
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .unwrap();
        Some(Podman { dir })
    }

    fn run(&self, args: &[&str]) -> Run {
        let d = self.dir.path();
        Command::new("podman")
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--runtime", "runc"])
            .args(args)
            .output()
            .unwrap()
            .into()
    }

    fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "podman {args:?}: {}\n{}", r.stderr, r.stdout);
        r.stdout
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Removes what podman made, so the temporary directory can go. Not `system reset`:
        // even on private storage it removes the lock memory every podman of the host
        // shares, orphaning other tests' running containers. The storage's own mounts are
        // lazily unmounted instead.
        let _ = self.run(&["rm", "-a", "-f"]);
        let _ = self.run(&["rmi", "-a", "-f"]);
        let root = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
    }
}

fn podman_interop(remote: &str, reg: &support::Registry) {
    let Some(podman) = Podman::new() else { return };
    podman.ok(&["pull", "-q", "--tls-verify=false", remote]);
    let version = podman.ok(&[
        "run",
        "--rm",
        "--pull=never",
        remote,
        "cat",
        "/etc/debian_version",
    ]);
    assert!(
        version.trim().starts_with(|c: char| c.is_ascii_digit()),
        "podman ran stamp's image and /etc/debian_version says {version:?}"
    );

    // A second layer that deletes and replaces files, so the image carries whiteouts.
    let ctx = podman.dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Containerfile"),
        format!(
            "FROM {remote}\nRUN rm -rf /usr/share/doc /etc/motd && mkdir -p /usr/share/doc && echo replaced > /etc/debian_version\n"
        ),
    )
    .unwrap();
    let built = format!("{}/{}:v2", reg.host, support::unique_repo("podman-built"));
    podman.ok(&[
        "build",
        "-q",
        "--isolation",
        "chroot",
        "--pull=never",
        "-t",
        &built,
        s(&ctx),
    ]);
    let digest_file = podman.dir.path().join("digest");
    podman.ok(&[
        "push",
        "-q",
        "--tls-verify=false",
        "--digestfile",
        s(&digest_file),
        &built,
    ]);
    let podman_digest = std::fs::read_to_string(&digest_file).unwrap();

    let c = Store::new();
    assert_eq!(
        c.pull(&built),
        podman_digest.trim(),
        "stamp's digest of podman's image"
    );
    let inspect = c.inspect(&built);
    let layers = inspect["manifest"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{inspect}");
    assert!(c.ok("fsck", &[]).contains("0 tampered"));

    // The top layer, as stamp stored it, carries the whiteouts of the deleted files.
    let top = &layers[1];
    let file = std::fs::File::open(c.blob(top["digest"].as_str().unwrap())).unwrap();
    let reader: Box<dyn Read> = if top["mediaType"].as_str().unwrap().ends_with("gzip") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let names: Vec<String> = tar::Archive::new(reader)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.trim_start_matches("./") == "etc/.wh.motd"),
        "no whiteout of /etc/motd in podman's layer: {names:?}"
    );
}

// 2. Tamper.

#[test]
fn flipped_byte_in_a_layer_blob_is_reported_as_tampered_by_push_export_and_fsck() {
    let reg = &support::start(Flavour::Plain);
    let (store, digest) = store_with_small_image("localhost/tamper:1", 300_000);
    let layer = layer_digests(&store.inspect(&digest))[0].clone();
    let path = store.blob(&layer);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    // Blobs may be stored read-only.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, &bytes).unwrap();

    let remote = format!("{}/{}:1", reg.host, support::unique_repo("tamper"));
    let push = store.run(
        "push",
        &["--tls-verify=false", "localhost/tamper:1", &remote],
    );
    assert_eq!(push.code, 1, "push of a tampered image: {}", push.stderr);
    assert!(
        push.stderr.contains(&layer) && push.stderr.contains("tampered"),
        "push error: {}",
        push.stderr
    );

    let out = store.dir.path().join("x.tar");
    let export = store.run("export", &["-o", s(&out), "localhost/tamper:1"]);
    assert_eq!(
        export.code, 1,
        "export of a tampered image: {}",
        export.stderr
    );
    assert!(
        export.stderr.contains(&layer) && export.stderr.contains("tampered"),
        "export error: {}",
        export.stderr
    );
    assert!(!out.exists(), "export left {}", out.display());

    let fsck = store.run("fsck", &[]);
    assert_eq!(fsck.code, 1, "fsck: {}{}", fsck.stdout, fsck.stderr);
    assert!(
        fsck.stdout.contains(&layer) && fsck.stdout.contains("tampered"),
        "fsck: {}",
        fsck.stdout
    );
}

// 3. Kill.

#[test]
fn killed_pull_completes_when_run_again_and_leaves_a_consistent_store() {
    let Some(tar) = debian_tar() else {
        eprintln!("skipped: no Debian rootfs tar; run scripts/debian-image.sh --tar");
        return;
    };
    let reg = &support::start(Flavour::Plain);
    let src = Store::new();
    let digest = src.pull(&format!("rootfs:{}", s(&tar)));
    let remote = format!("{}/{}:v1", reg.host, support::unique_repo("kill"));
    assert_eq!(src.push("image", &digest, &remote), digest);
    drop(src);

    let store = Store::new();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stamp"))
        .args(["pull", "-q", "--tls-verify=false", "--store"])
        .arg(store.path())
        .arg(&remote)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a temporary file that grows, then SIGKILL (Child::kill sends SIGKILL).
    let tmpdir = store.path().join("tmp");
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last = 0u64;
    let mut killed_mid_transfer = false;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let size: u64 = std::fs::read_dir(&tmpdir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if size > last && last > KILL_AFTER {
            child.kill().unwrap();
            killed_mid_transfer = true;
            break;
        }
        last = last.max(size);
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = child.wait().unwrap();
    if killed_mid_transfer {
        assert!(!status.success() || status.code().is_none());
        eprintln!("killed the pull mid-transfer after {last} bytes");
    } else {
        eprintln!("the pull finished before it could be killed ({status}); checking the rerun");
    }

    assert_eq!(store.pull(&remote), digest, "the rerun after the kill");
    let fsck = store.run("fsck", &[]);
    assert_eq!(
        fsck.code, 0,
        "fsck after kill: {}{}",
        fsck.stdout, fsck.stderr
    );
    let removed = store.gc_dry_run();
    for d in referenced(&store, &remote) {
        assert!(!removed.contains(&d), "gc would remove referenced {d}");
    }
}

// 4. containerDisk.

#[test]
fn containerdisk_has_one_layer_with_disk_dir_and_one_qcow2_owned_by_107() {
    let reg = &support::start(Flavour::Plain);
    let a = Store::new();
    let qcow = a.dir.path().join("disk.qcow2");
    small_qcow2(&qcow);
    a.ok("import", &["--name", "localhost/cd-disk:1", s(&qcow)]);
    let remote = format!("{}/{}:1", reg.host, support::unique_repo("containerdisk"));
    let pushed = a.push("containerdisk", "localhost/cd-disk:1", &remote);

    let b = Store::new();
    assert_eq!(b.pull(&remote), pushed);
    let layers = layer_digests(&b.inspect(&remote));
    assert_eq!(layers.len(), 1, "a containerDisk has one layer: {layers:?}");
    let archive = b.dir.path().join("x.tar");
    b.ok("export", &["-o", s(&archive), &remote]);

    // The layer, read from the exported OCI archive.
    let mut outer = tar::Archive::new(std::fs::File::open(&archive).unwrap());
    let want = format!("blobs/sha256/{}", layers[0].trim_start_matches("sha256:"));
    let mut layer = None;
    for e in outer.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some(want.as_str()) {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            layer = Some(v);
        }
    }
    let layer = layer.expect("the layer blob in the archive");
    let expected = std::fs::read(&qcow).unwrap();
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    let mut inner = tar::Archive::new(&layer[..]);
    for e in inner.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let h = e.header().clone();
        let (uid, gid) = (h.uid().unwrap(), h.gid().unwrap());
        match h.entry_type() {
            tar::EntryType::Directory => dirs.push((path, uid, gid)),
            tar::EntryType::Regular => {
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                assert!(v == expected, "{path} differs from the qcow2");
                files.push((path, uid, gid));
            }
            other => panic!("unexpected {other:?} entry {path}"),
        }
    }
    let norm = |p: &str| p.trim_start_matches("./").trim_end_matches('/').to_string();
    let dirs: Vec<_> = dirs.iter().map(|(p, u, g)| (norm(p), *u, *g)).collect();
    let files: Vec<_> = files.iter().map(|(p, u, g)| (norm(p), *u, *g)).collect();
    assert_eq!(dirs, vec![("disk".to_string(), QEMU_ID, QEMU_ID)]);
    assert_eq!(
        files,
        vec![("disk/disk.qcow2".to_string(), QEMU_ID, QEMU_ID)]
    );
}

// 5. Disk artifact.

#[test]
fn disk_artifact_round_trips_byte_identical_and_a_changed_mebibyte_uploads_few_layers() {
    let reg = &support::start(Flavour::Plain);
    let a = Store::new();
    let qcow = a.dir.path().join("disk.qcow2");
    small_qcow2(&qcow);
    a.ok("import", &["--name", "localhost/art:1", s(&qcow)]);
    let remote = format!("{}/{}:1", reg.host, support::unique_repo("artifact"));
    let pushed = a.push("artifact", "localhost/art:1", &remote);

    let b = Store::new();
    let back = b.dir.path().join("back.qcow2");
    let r = b.ok(
        "pull",
        &["-q", "--tls-verify=false", "-o", s(&back), &remote],
    );
    assert_eq!(r.trim(), pushed);
    assert_eq!(sha256(&back), sha256(&qcow), "back.qcow2 differs");
    let v = b.inspect(&remote);
    assert_eq!(
        v["manifest"]["artifactType"].as_str(),
        Some("application/vnd.stamp.disk.v1")
    );

    // A bigger raw disk of pseudo-random bytes (layers average 64 MiB), then 1 MiB changed in
    // its middle.
    const SIZE: u64 = 200 << 20;
    let raw = a.dir.path().join("big.raw");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&raw).unwrap());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..SIZE / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f.write_all(&x.to_le_bytes()).unwrap();
        }
        f.flush().unwrap();
    }
    a.ok("import", &["--name", "localhost/big:1", s(&raw)]);
    let repo = support::unique_repo("artifact-big");
    let first = format!("{}/{repo}:1", reg.host);
    a.push("artifact", "localhost/big:1", &first);
    let before = layer_digests(&a.inspect("localhost/big:1"));

    std::fs::OpenOptions::new()
        .write(true)
        .open(&raw)
        .unwrap()
        .write_all_at(&[0xa5; 1 << 20], SIZE / 2)
        .unwrap();
    a.ok("import", &["--name", "localhost/big:2", s(&raw)]);
    // The second push goes through a proxy that logs the requests.
    let proxy = Proxy::start(reg.addr, Vec::new());
    let second = format!("{}/{repo}:2", proxy.host);
    a.push("artifact", "localhost/big:2", &second);
    let after = layer_digests(&a.inspect("localhost/big:2"));
    let changed = after.iter().filter(|d| !before.contains(d)).count();
    assert!(
        before.len() >= 2 && changed > 0 && changed < after.len(),
        "{changed} of {} layers changed ({} before)",
        after.len(),
        before.len()
    );
    let uploads = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST ") && r.contains("/blobs/uploads/"))
        .count();
    eprintln!(
        "disk artifact: {changed} of {} layers changed ({} before), {uploads} uploads",
        after.len(),
        before.len()
    );
    // The changed chunks and the config; the unchanged chunks are skipped.
    assert!(
        uploads <= changed + 1,
        "{uploads} uploads for {changed} changed layers: {:?}",
        proxy.requests()
    );

    let c = Store::new();
    let back = c.dir.path().join("big.raw");
    c.ok(
        "pull",
        &["-q", "--tls-verify=false", "-o", s(&back), &second],
    );
    assert_eq!(sha256(&back), sha256(&raw));
}

// 6. Errors.

#[test]
fn registry_answering_500_twice_then_ok_is_retried() {
    let reg = &support::start(Flavour::Plain);
    let (a, digest) = store_with_small_image("localhost/retry:1", 10_000);
    let repo = support::unique_repo("retry");
    a.push(
        "image",
        "localhost/retry:1",
        &format!("{}/{repo}:1", reg.host),
    );
    let proxy = Proxy::start(
        reg.addr,
        vec![
            Rule::new("GET", "/manifests/", Fault::Status(500), 2),
            Rule::new("GET", "/blobs/", Fault::Status(500), 2),
        ],
    );
    let b = Store::new();
    assert_eq!(b.pull(&format!("{}/{repo}:1", proxy.host)), digest);
    // The two injected 500s of each kind were answered, and the pull went on.
    let count = |kind: &str| {
        proxy
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET ") && r.contains(kind))
            .count()
    };
    assert!(count("/manifests/") >= 3, "{:?}", proxy.requests());
    assert!(count("/blobs/") >= 3, "{:?}", proxy.requests());
    assert_eq!(b.run("fsck", &[]).code, 0);
}

#[test]
fn manifest_with_an_unknown_layer_media_type_names_it_and_stores_nothing() {
    let reg = &support::start(Flavour::Plain);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = format!("sha256:{:x}", Sha256::digest(config));
    let unknown = "application/vnd.example.unknown.layer.v9";
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"{unknown}","digest":"sha256:{}","size":5}}]}}"#,
        config.len(),
        "ab".repeat(32)
    );
    let mt = "application/vnd.oci.image.manifest.v1+json".to_string();
    let proxy = Proxy::start(
        reg.addr,
        vec![
            Rule::new(
                "HEAD",
                "/manifests/",
                Fault::Respond(mt.clone(), manifest.clone().into_bytes()),
                10,
            ),
            Rule::new(
                "GET",
                "/manifests/",
                Fault::Respond(mt, manifest.into_bytes()),
                10,
            ),
            Rule::new(
                "GET",
                &config_digest,
                Fault::Respond("application/octet-stream".into(), config.to_vec()),
                10,
            ),
        ],
    );
    let store = Store::new();
    let remote = format!("{}/{}:1", proxy.host, support::unique_repo("unknown"));
    let r = store.run("pull", &["--tls-verify=false", &remote]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains(unknown), "error: {}", r.stderr);
    if store.path().exists() {
        assert!(store.images().is_empty(), "{:?}", store.images());
    }
}

#[test]
fn pull_of_a_missing_tag_says_not_found() {
    let reg = &support::start(Flavour::Plain);
    let store = Store::new();
    let remote = format!("{}/{}:nope", reg.host, support::unique_repo("missing"));
    let r = store.run("pull", &["--tls-verify=false", &remote]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("not found"), "error: {}", r.stderr);
}

#[test]
fn wrong_credentials_say_authentication() {
    let reg = &support::start(Flavour::Basic);
    let (a, digest) = store_with_small_image("localhost/auth:1", 1000);
    let remote = format!("{}/{}:1", reg.host, support::unique_repo("auth"));
    let good = format!("{}:{}", support::USER, support::PASSWORD);
    let r = a.ok(
        "push",
        &[
            "-q",
            "--tls-verify=false",
            "--creds",
            &good,
            "localhost/auth:1",
            &remote,
        ],
    );
    assert_eq!(r.trim(), digest);

    let b = Store::new();
    let bad = format!("{}:wrong", support::USER);
    let r = b.run("pull", &["--tls-verify=false", "--creds", &bad, &remote]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("authentication"), "error: {}", r.stderr);
    let r = b.ok(
        "pull",
        &["-q", "--tls-verify=false", "--creds", &good, &remote],
    );
    assert_eq!(r.trim(), digest);
}

// 7. Store verbs.

#[test]
fn store_verbs_images_tag_rmi_gc_export_import() {
    let (store, digest) = store_with_small_image("localhost/verbs:1", 50_000);
    let images = store.images();
    let mine = images
        .iter()
        .find(|i| i["name"] == "localhost/verbs:1")
        .unwrap_or_else(|| panic!("{images:?}"));
    assert_eq!(mine["digest"], digest.as_str());
    assert_eq!(mine["kind"], "container image");
    assert!(mine["size"].as_u64().unwrap() > 50_000);

    // STAMP_STORE names the same store as --store.
    let by_env: Run = Command::new(env!("CARGO_BIN_EXE_stamp"))
        .env("STAMP_STORE", store.path())
        .args(["images", "--json"])
        .output()
        .unwrap()
        .into();
    assert_eq!(by_env.code, 0, "{}", by_env.stderr);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&by_env.stdout).unwrap(),
        serde_json::Value::Array(images.clone())
    );

    store.ok("tag", &["localhost/verbs:1", "localhost/verbs:2"]);
    let names: Vec<_> = store
        .images()
        .iter()
        .filter(|i| i["digest"] == digest.as_str())
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names.contains(&"localhost/verbs:2".to_string()),
        "{names:?}"
    );

    // Export, then import into a fresh store: the same digest.
    let archive = store.dir.path().join("verbs.tar");
    store.ok("export", &["-o", s(&archive), "localhost/verbs:1"]);
    let other = Store::new();
    other.ok("import", &["--name", "localhost/imported:1", s(&archive)]);
    assert_eq!(
        other.inspect("localhost/imported:1")["digest"],
        digest.as_str()
    );

    // The digest has several names (verbs:1, verbs:2 and the rootfs import's): -f needed.
    let r = store.run("rmi", &[&digest]);
    assert_eq!(
        r.code, 1,
        "rmi of a digest with several names: {}",
        r.stderr
    );
    assert!(r.stderr.contains("-f"), "{}", r.stderr);
    store.ok("rmi", &["localhost/verbs:2"]);
    assert!(
        store.gc_dry_run().is_empty(),
        "gc would remove blobs still named"
    );
    let blobs = referenced(&store, &digest);
    store.ok("rmi", &["-f", &digest]);
    assert!(store.images().is_empty(), "{:?}", store.images());

    let removed = store.gc_dry_run();
    for b in &blobs {
        assert!(removed.contains(b), "gc --dry-run does not remove {b}");
        assert!(store.blob(b).exists(), "--dry-run removed {b}");
    }
    store.ok("gc", &[]);
    for b in &blobs {
        assert!(!store.blob(b).exists(), "gc left {b}");
    }
    assert_eq!(store.run("fsck", &[]).code, 0);
}

#[test]
fn blob_whose_bytes_do_not_match_its_digest_fails_the_pull_and_stores_nothing() {
    let reg = &support::start(Flavour::Plain);
    let (a, digest) = store_with_small_image("localhost/mismatch:1", 200_000);
    let layer = layer_digests(&a.inspect(&digest))[0].clone();
    let repo = support::unique_repo("mismatch");
    a.push(
        "image",
        "localhost/mismatch:1",
        &format!("{}/{repo}:1", reg.host),
    );
    // Every answer for the layer has its last byte flipped, retries included.
    let proxy = Proxy::start(
        reg.addr,
        vec![Rule::new("GET", &layer, Fault::FlipByte, 1000)],
    );
    let b = Store::new();
    let r = b.run(
        "pull",
        &["--tls-verify=false", &format!("{}/{repo}:1", proxy.host)],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains(&layer), "error: {}", r.stderr);
    eprintln!("{}", r.stderr.trim());
    if b.path().exists() {
        assert!(b.images().is_empty(), "{:?}", b.images());
        assert!(!b.blob(&layer).exists(), "the bad layer was stored");
        let fsck = b.run("fsck", &[]);
        assert_eq!(fsck.code, 0, "{}{}", fsck.stdout, fsck.stderr);
    }
}

#[test]
fn malformed_manifest_is_a_clear_error_and_stores_nothing() {
    let reg = &support::start(Flavour::Plain);
    let mt = "application/vnd.oci.image.manifest.v1+json".to_string();
    for (what, body) in [
        ("not JSON", b"{\"schemaVersion\": 2, \"layers\": [".to_vec()),
        (
            "no config",
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#.to_vec(),
        ),
        (
            "bad digest",
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:../../etc/passwd","size":2},"layers":[]}"#.to_vec(),
        ),
    ] {
        let proxy = Proxy::start(
            reg.addr,
            vec![
                Rule::new(
                    "HEAD",
                    "/manifests/",
                    Fault::Respond(mt.clone(), body.clone()),
                    10,
                ),
                Rule::new("GET", "/manifests/", Fault::Respond(mt.clone(), body), 10),
            ],
        );
        let store = Store::new();
        let remote = format!("{}/{}:1", proxy.host, support::unique_repo("malformed"));
        let r = store.run("pull", &["--tls-verify=false", &remote]);
        assert_eq!(r.code, 1, "{what}: {}{}", r.stdout, r.stderr);
        eprintln!("{what}: {}", r.stderr.trim());
        assert!(
            r.stderr.contains("manifest") && !r.stderr.contains("panicked"),
            "{what}: {}",
            r.stderr
        );
        if store.path().exists() {
            assert!(store.images().is_empty(), "{what}: {:?}", store.images());
        }
    }
}
