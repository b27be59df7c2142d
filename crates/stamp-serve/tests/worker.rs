//! The conversion work of tasks, on real inputs: real-world disk images from other tools
//! (../shared/fixtures/disk-images, see its MANIFEST.tsv for sources and licences), disks made
//! with sgdisk/sfdisk/mkfs/mtools, a real moto_server for S3, python's http.server for URL
//! sources and import manifests; qemu-img as the oracle for content and format checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod http_support;
#[path = "../../stamp-aws/tests/support/mod.rs"]
mod support;

use http_support::http_server;
use support::boto;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stamp_disk::NoProgress;
use stamp_disk::compare::{Comparison, compare};
use stamp_serve::Error;
use stamp_serve::db::TaskUpdate;
use stamp_serve::objects::{LocalDir, ObjectStore, S3Store, UrlPolicy};
use stamp_serve::task::SnapshotRecord;
use stamp_serve::worker::scratch::Scratch;
use stamp_serve::worker::validate::{NO_VALID_PARTITIONS, UNSUPPORTED_BOOTLOADER};
use stamp_serve::worker::{
    DiskInput, DiskSource, Env, ExportFormat, ExportTarget, Limits, Outcome, Storage, TaskRef,
    export, import_image, import_snapshot, import_volume,
};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/disk-images"
);
const MIB: u64 = 1 << 20;

fn fixtures() -> PathBuf {
    let p = PathBuf::from(FIXTURES);
    if p.exists() {
        p
    } else {
        PathBuf::from("/work/shared/fixtures/disk-images")
    }
}

fn sh(script: &str) {
    let out = Command::new("sh").args(["-ec", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A service's worker surroundings: objects, storage, scratch, the updates it reported.
struct Rig {
    _dir: tempfile::TempDir,
    root: PathBuf,
    objects: Arc<dyn ObjectStore>,
    storage: Storage,
    scratch: Scratch,
    scratch_dir: PathBuf,
    updates: Mutex<Vec<TaskUpdate>>,
    cancel: AtomicBool,
    /// Set `cancel` once this many progress updates arrived.
    cancel_after: Option<usize>,
    /// Which URLs the worker may fetch (loopback servers here).
    urls: UrlPolicy,
}

impl Rig {
    fn local(quota: u64) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let objects: Arc<dyn ObjectStore> = Arc::new(LocalDir::new(&root.join("objects")).unwrap());
        let store: Arc<dyn ObjectStore> = Arc::new(LocalDir::new(&root.join("store")).unwrap());
        Rig::with(dir, root, objects, store, quota)
    }

    /// Objects and storage in moto's S3 (buckets `src-NAME` and `store-NAME`).
    fn s3(name: &str, quota: u64) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        boto(&format!(
            "s3.create_bucket(Bucket='src-{name}'); s3.create_bucket(Bucket='store-{name}')"
        ));
        let s3: Arc<dyn ObjectStore> = Arc::new(S3Store::new(&support::config()));
        let mut rig = Rig::with(dir, root, s3.clone(), s3, quota);
        rig.storage.bucket = format!("store-{name}");
        rig
    }

    fn with(
        dir: tempfile::TempDir,
        root: PathBuf,
        objects: Arc<dyn ObjectStore>,
        store: Arc<dyn ObjectStore>,
        quota: u64,
    ) -> Rig {
        let scratch_dir = root.join("scratch");
        std::fs::create_dir_all(&scratch_dir).unwrap();
        Rig {
            _dir: dir,
            objects,
            storage: Storage {
                store,
                bucket: "stamp".into(),
                prefix: "svc/".into(),
            },
            scratch: Scratch::new(quota),
            scratch_dir,
            root,
            updates: Mutex::new(Vec::new()),
            cancel: AtomicBool::new(false),
            cancel_after: None,
            urls: UrlPolicy::Any,
        }
    }

    fn run<T>(&self, f: impl FnOnce(&Env<'_>) -> T) -> T {
        self.updates.lock().unwrap().clear();
        let progress = |u: &TaskUpdate| {
            let mut all = self.updates.lock().unwrap();
            all.push(u.clone());
            if self
                .cancel_after
                .is_some_and(|n| all.iter().filter(|u| u.progress.is_some()).count() >= n)
            {
                self.cancel.store(true, Ordering::Relaxed);
            }
        };
        let env = Env {
            objects: self.objects.as_ref(),
            storage: &self.storage,
            scratch: &self.scratch,
            scratch_dir: &self.scratch_dir,
            progress: &progress,
            cancel: &self.cancel,
            limits: Limits {
                urls: self.urls,
                ..Limits::default()
            },
        };
        f(&env)
    }

    /// Puts the file at `path` as `bucket/key` in the objects.
    fn put(&self, bucket: &str, key: &str, path: &Path) -> DiskSource {
        self.objects
            .put_file(bucket, key, path, &AtomicBool::new(false))
            .unwrap();
        DiskSource::Object {
            bucket: bucket.into(),
            key: key.into(),
        }
    }

    /// A local path to the stored snapshot (downloaded for S3).
    fn stored(&self, s: &SnapshotRecord) -> (PathBuf, Option<stamp_serve::objects::Fetched>) {
        let f = self
            .storage
            .store
            .fetch(
                &self.storage.bucket,
                &s.object_key,
                &self.root,
                u64::MAX,
                &AtomicBool::new(false),
            )
            .unwrap();
        (f.path().to_path_buf(), Some(f))
    }

    fn statuses(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for u in self.updates.lock().unwrap().iter() {
            if let Some(s) = &u.status_message
                && v.last() != Some(s)
            {
                v.push(s.clone());
            }
        }
        v
    }

    fn percents(&self) -> Vec<u8> {
        self.updates
            .lock()
            .unwrap()
            .iter()
            .filter_map(|u| u.progress)
            .collect()
    }

    /// Files under the service's storage directory and the scratch directory (local rigs).
    fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = files(&self.root.join("store"));
        out.extend(files(&self.scratch_dir));
        out
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Bytes the files under `dir` occupy on disk.
fn disk_usage(dir: &Path) -> u64 {
    files(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn task(id: &str) -> TaskRef<'_> {
    TaskRef { id, tenant: "t1" }
}

fn disk(source: DiskSource, format: Option<&str>) -> DiskInput {
    DiskInput {
        source,
        format: format.map(str::to_string),
        description: Some("test".into()),
    }
}

/// Copies fixture `rel` (gunzipped if `.gz`) into `dir`; returns the copy.
fn fixture(rel: &str, dir: &Path) -> PathBuf {
    let src = fixtures().join(rel);
    let name = src.file_name().unwrap().to_str().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    if let Some(base) = name.strip_suffix(".gz") {
        let dst = dir.join(base);
        sh(&format!(
            "gzip -dc '{}' > '{}'",
            src.display(),
            dst.display()
        ));
        dst
    } else {
        let dst = dir.join(name);
        std::fs::copy(&src, &dst).unwrap();
        dst
    }
}

fn assert_same(a: &Path, b: &Path) {
    let ra = stamp_disk::open(a, None).unwrap();
    let rb = stamp_disk::open(b, None).unwrap();
    match compare(ra.as_ref(), rb.as_ref(), &NoProgress).unwrap() {
        Comparison::Identical { .. } => {}
        other => panic!("{} and {} differ: {other:?}", a.display(), b.display()),
    }
}

/// qemu-img compare (the independent oracle) for formats qemu reads.
fn qemu_same(a: &Path, b: &Path) {
    let out = Command::new("qemu-img")
        .arg("compare")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img check` (`info` for VHD, which qemu cannot check).
fn qemu_check(fmt: &str, p: &Path) {
    let op = if fmt == "vpc" { "info" } else { "check" };
    let out = Command::new("qemu-img")
        .args([op, "-f", fmt])
        .arg(p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img {op} -f {fmt} {}: {}{}",
        p.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn real_world_disks_import_to_qcow2_equal_to_their_source() {
    let rig = Rig::local(64 * MIB);
    let src = rig.root.join("objects/user/disks");
    // (fixture, its companions next to it, qemu reads it)
    let cases: &[(&str, &[&str], bool)] = &[
        ("vmdk/vmware-ws-streamOptimized.vmdk", &[], true),
        ("vmdk/open-vmdk-streamOptimized-markers.vmdk", &[], true),
        ("vmdk/vmware-ws-monolithicSparse.vmdk.gz", &[], true),
        (
            "vmdk/vmware-ws-twoGbMaxExtentSparse/twoGbMaxExtentSparse.vmdk",
            &["vmdk/vmware-ws-twoGbMaxExtentSparse/twoGbMaxExtentSparse-s001.vmdk.gz"],
            true,
        ),
        (
            "vmdk/esxi-vmfs/vmfs_thick.vmdk",
            &["vmdk/esxi-vmfs/vmfs_thick-flat.vmdk.gz"],
            true,
        ),
        ("vmdk/qemu-monolithicSparse-ext2.vmdk", &[], true),
        ("vmdk/stream-generated-stream.vmdk", &[], true),
        ("ovf/virtualbox-ovf2/ubuntu.2.0-disk1.vmdk", &[], true),
        ("vhd/qemu-dynamic-ext2.vhd.gz", &[], true),
        ("qcow2/qcow2-v2-compressed.qcow2", &[], true),
        ("qcow2/qcow2-v2-compressed-ntfs-vss.qcow2", &[], true),
        ("ova/virtualbox-testserver.ova", &[], false),
    ];
    for (i, (rel, companions, qemu)) in cases.iter().enumerate() {
        for c in *companions {
            fixture(c, &src);
        }
        let local = fixture(rel, &src);
        let key = format!("disks/{}", local.file_name().unwrap().to_str().unwrap());
        let id = format!("import-snap-{i:017x}");
        let out = rig
            .run(|env| {
                import_snapshot(
                    env,
                    &task(&id),
                    &disk(
                        DiskSource::Object {
                            bucket: "user".into(),
                            key,
                        },
                        None,
                    ),
                    None,
                )
            })
            .unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(out.snapshots.len(), 1, "{rel}");
        let snap = &out.snapshots[0];
        assert!(snap.id.starts_with("snap-"));
        assert_eq!(snap.object_key, format!("svc/snapshots/{}.qcow2", snap.id));
        assert_eq!(snap.task_id, id);
        let (stored, _f) = rig.stored(snap);
        assert_same(&local, &stored);
        if *qemu {
            qemu_same(&local, &stored);
            qemu_check("qcow2", &stored);
        }
        let statuses = rig.statuses();
        assert_eq!(statuses, ["converting", "validating"], "{rel}");
        let pct = rig.percents();
        assert!(pct.windows(2).all(|w| w[0] <= w[1]), "{rel}: {pct:?}");
        assert_eq!(pct.last(), Some(&100));
        assert_eq!(out.result["bytes_converted"], snap.size);
        let want = match rel.split('/').next().unwrap() {
            "ovf" => "VMDK".to_string(),
            other => other.to_ascii_uppercase(),
        };
        let detail = &out.result["snapshots"][0];
        assert_eq!(detail["format"], want.as_str(), "{rel}");
        assert_eq!(detail["device_name"], "/dev/sda1");
        assert_eq!(detail["s3_bucket"], "user");
        assert!(detail["disk_image_size"].as_u64().unwrap() > 0);
        assert!(
            files(&rig.scratch_dir).is_empty(),
            "{rel}: scratch left behind"
        );
    }
}

#[test]
fn malformed_disks_fail_with_a_reason_and_leave_nothing() {
    let rig = Rig::local(256 * MIB);
    let src = rig.root.join("objects/user/bad");
    let bad = [
        "vmdk/BAD-missing-extent/monolithicFlat.vmdk",
        "vmdk/BAD-qemu-streamOptimized-invalid.img",
        "vmdk/esxi-vmfs/vmfs_thick-000001.vmdk",
        "vhd/win10-differencing-fat.vhd.gz",
        "ova/BAD-ovftool-ttylinux-truncated.ova",
        "ova/BAD-glance-bad-ovf.ova",
        "ova/BAD-glance-no-disk.ova",
        "ova/BAD-glance-not-tar.ova",
        "ova/BAD-forklift-utf8-mangled-vmdk.ova",
        "vhd/BAD-qemu-dynamic-bad-footer-checksum.vhd.gz",
    ];
    let mut failures = Vec::new();
    for rel in bad {
        let local = fixture(rel, &src);
        let key = format!("bad/{}", local.file_name().unwrap().to_str().unwrap());
        let r = rig.run(|env| {
            import_snapshot(
                env,
                &task("import-snap-0000000000000000b"),
                &disk(
                    DiskSource::Object {
                        bucket: "user".into(),
                        key,
                    },
                    None,
                ),
                None,
            )
        });
        match r {
            Ok(_) if rel.contains("not-tar") => {
                // Not a tar: nothing says it is not a raw disk, as qemu-img would read it.
            }
            Ok(_) => failures.push(format!("{rel}: imported")),
            Err(Error::Invalid(m)) => {
                assert!(m.starts_with("ClientError: "), "{rel}: {m}");
                assert!(
                    !m.contains(&rig.root.display().to_string()),
                    "{rel}: the message names the service's files: {m}"
                );
            }
            Err(e) => failures.push(format!("{rel}: not a client error: {e}")),
        }
        let left: Vec<_> = files(&rig.root.join("store"));
        // A successful raw import (the PNG) stores a snapshot; remove it for the next case.
        for p in left {
            std::fs::remove_file(p).unwrap();
        }
        assert!(files(&rig.scratch_dir).is_empty(), "{rel}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_format_that_does_not_match_the_content_is_a_client_error() {
    let rig = Rig::local(64 * MIB);
    let local = fixture(
        "vhd/qemu-dynamic-ext2.vhd.gz",
        &rig.root.join("objects/user"),
    );
    let source = rig.put("user", "ext2.vhd", &local);
    let err = rig
        .run(|env| {
            import_snapshot(
                env,
                &task("import-snap-1"),
                &disk(source.clone(), Some("VMDK")),
                None,
            )
        })
        .unwrap_err();
    let m = err.to_string();
    assert!(
        m.starts_with("ClientError:") && m.contains("VMDK") && m.contains("VHD"),
        "{m}"
    );
    assert!(
        rig.leftovers()
            .iter()
            .all(|p| !p.starts_with(rig.root.join("store")))
    );
    // The right format (any case) is accepted.
    rig.run(|env| {
        import_snapshot(
            env,
            &task("import-snap-2"),
            &disk(source.clone(), Some("vhd")),
            None,
        )
    })
    .unwrap();
    // The service's own snapshots cannot be named as a source.
    let rig2 = Rig::s3("owns", 64 * MIB);
    let own = DiskSource::Object {
        bucket: "store-owns".into(),
        key: "svc/snapshots/snap-1.qcow2".into(),
    };
    let err = rig2
        .run(|env| import_snapshot(env, &task("import-snap-7"), &disk(own, None), None))
        .unwrap_err();
    assert!(err.to_string().contains("service's own storage"), "{err}");
    let missing = DiskSource::Object {
        bucket: "user".into(),
        key: "nope.vmdk".into(),
    };
    let err = rig
        .run(|env| import_snapshot(env, &task("import-snap-3"), &disk(missing, None), None))
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// A 16 MiB GPT disk: an ESP (FAT, with `\EFI\BOOT\BOOTX64.EFI` if `loader`) and an ext4 root.
fn gpt_disk(dir: &Path, loader: bool) -> PathBuf {
    let p = dir.join(if loader {
        "gpt-esp.raw"
    } else {
        "gpt-noboot.raw"
    });
    let esp = dir.join("esp.img");
    let _ = std::fs::remove_file(&esp);
    let copy = if loader {
        format!(
            "printf 'MZ fake loader' > {d}/loader; mcopy -i {esp} {d}/loader ::/EFI/BOOT/BOOTX64.EFI",
            d = dir.display(),
            esp = esp.display()
        )
    } else {
        String::new()
    };
    sh(&format!(
        "truncate -s 16M {p}
         sgdisk -n1:2048:+6M -t1:ef00 -n2:0:0 -t2:8300 {p} >/dev/null
         mkfs.vfat -C {esp} 6144 >/dev/null
         mmd -i {esp} ::/EFI ::/EFI/BOOT
         {copy}
         dd if={esp} of={p} bs=512 seek=2048 conv=notrunc status=none
         mkfs.ext4 -q -F -E offset=$((14336*512)) {p} 8M",
        p = p.display(),
        esp = esp.display()
    ));
    p
}

/// An 8 MiB MBR disk with an ext4 partition and boot code.
fn mbr_disk(dir: &Path) -> PathBuf {
    let p = dir.join("mbr.raw");
    sh(&format!(
        "truncate -s 8M {p}
         echo 'start=2048, type=83' | sfdisk -q {p}
         mkfs.ext4 -q -F -E offset=1048576 {p} 7M
         printf '\\372\\353\\376' | dd of={p} conv=notrunc status=none",
        p = p.display()
    ));
    p
}

fn import_image_of(rig: &Rig, path: &Path, key: &str) -> stamp_serve::Result<Outcome> {
    let source = rig.put("user", key, path);
    rig.run(|env| {
        import_image(
            env,
            &task("import-ami-00000000000000001"),
            &[disk(source, None)],
            None,
        )
    })
}

#[test]
fn import_image_validates_partitions_filesystems_and_bootloaders() {
    let rig = Rig::local(64 * MIB);
    let dir = rig.root.join("made");
    std::fs::create_dir_all(&dir).unwrap();

    // UEFI: GPT + ESP with the fallback loader, handed over as a streamOptimized VMDK.
    let raw = gpt_disk(&dir, true);
    let vmdk = dir.join("gpt-esp.vmdk");
    sh(&format!(
        "qemu-img convert -O vmdk -o subformat=streamOptimized {} {}",
        raw.display(),
        vmdk.display()
    ));
    let out = import_image_of(&rig, &vmdk, "uefi.vmdk").unwrap();
    let v = out.validation.clone().unwrap();
    assert_eq!(v.format, "vmdk");
    assert_eq!(v.partition_table.as_deref(), Some("gpt"));
    assert_eq!(v.boot_mode.as_deref(), Some("uefi"));
    assert_eq!(v.bootloader.as_deref(), Some("\\EFI\\BOOT\\BOOTX64.EFI"));
    assert_eq!(v.architecture.as_deref(), Some("x86_64"));
    assert_eq!(v.platform.as_deref(), Some("Linux"));
    let fs: Vec<_> = v
        .partitions
        .iter()
        .map(|p| (p.kind.as_str(), p.filesystem.as_deref()))
        .collect();
    assert_eq!(fs, [("esp", Some("fat")), ("linux", Some("ext4"))]);
    assert_eq!(out.result["validation"]["boot_mode"], "uefi");
    let (stored, _f) = rig.stored(&out.snapshots[0]);
    qemu_same(&raw, &stored);
    assert_eq!(rig.statuses(), ["converting", "validating"]);

    // BIOS: MBR with boot code.
    let mbr = mbr_disk(&dir);
    let v = import_image_of(&rig, &mbr, "bios.raw")
        .unwrap()
        .validation
        .unwrap();
    assert_eq!(v.partition_table.as_deref(), Some("mbr"));
    assert_eq!(v.boot_mode.as_deref(), Some("legacy-bios"));
    assert_eq!(v.bootloader.as_deref(), Some("mbr boot code"));
    assert_eq!(v.partitions[0].filesystem.as_deref(), Some("ext4"));

    // A blank disk, and a GPT disk whose ESP has no loader: refused, nothing stored.
    for p in files(&rig.root.join("store")) {
        std::fs::remove_file(p).unwrap();
    }
    let blank = dir.join("blank.raw");
    sh(&format!("truncate -s 8M {}", blank.display()));
    match import_image_of(&rig, &blank, "blank.raw") {
        Err(Error::Invalid(m)) => assert_eq!(m, NO_VALID_PARTITIONS),
        other => panic!("blank disk: {other:?}"),
    }
    let noboot = gpt_disk(&dir, false);
    match import_image_of(&rig, &noboot, "noboot.raw") {
        Err(Error::Invalid(m)) => assert!(m.starts_with(UNSUPPORTED_BOOTLOADER), "{m}"),
        other => panic!("no bootloader: {other:?}"),
    }
    assert!(
        files(&rig.root.join("store")).is_empty(),
        "refused imports leave no snapshot"
    );
    // ImportSnapshot takes any readable disk.
    let source = rig.put("user", "blank2.raw", &blank);
    rig.run(|env| import_snapshot(env, &task("import-snap-4"), &disk(source, None), None))
        .unwrap();
}

#[test]
fn exports_pass_qemu_img_check_and_equal_the_snapshot() {
    let rig = Rig::local(64 * MIB);
    let dir = rig.root.join("made");
    std::fs::create_dir_all(&dir).unwrap();
    let raw = gpt_disk(&dir, true);
    let snap = import_image_of(&rig, &raw, "gpt.raw")
        .unwrap()
        .snapshots
        .remove(0);
    for (i, (fmt, qemu_fmt)) in [
        (ExportFormat::Vmdk, Some("vmdk")),
        (ExportFormat::Vhd, Some("vpc")),
        (ExportFormat::Raw, None),
        (ExportFormat::Qcow2, Some("qcow2")),
        (ExportFormat::Ova, None),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("export-ami-{i:017x}");
        let target = ExportTarget {
            bucket: "exports".into(),
            prefix: "out/".into(),
            format: fmt,
        };
        let out = rig
            .run(|env| export(env, &task(&id), &snap, &target))
            .unwrap();
        let key = format!("out/{id}.{}", fmt.extension());
        assert_eq!(out.result["s3_key"], key);
        let file = rig.root.join("objects/exports").join(&key);
        assert!(file.exists(), "{}", file.display());
        if let Some(q) = qemu_fmt {
            qemu_check(q, &file);
        }
        if fmt != ExportFormat::Ova {
            qemu_same(&raw, &file);
        }
        assert_same(&raw, &file);
        if fmt == ExportFormat::Vmdk {
            let info = stamp_disk::info(&file, None).unwrap();
            assert_eq!(info.subformat.as_deref(), Some("streamOptimized"));
        }
    }
    assert!(files(&rig.scratch_dir).is_empty());
}

#[test]
fn s3_objects_and_storage_round_trip_and_export() {
    let rig = Rig::s3("roundtrip", 128 * MIB);
    let local = fixture("vmdk/vmware-ws-streamOptimized.vmdk", &rig.root.join("in"));
    let source = rig.put("src-roundtrip", "in/disk.vmdk", &local);
    let out = rig
        .run(|env| {
            import_snapshot(
                env,
                &task("import-snap-5"),
                &disk(source, Some("VMDK")),
                None,
            )
        })
        .unwrap();
    let snap = &out.snapshots[0];
    let stored_size = rig
        .storage
        .store
        .head("store-roundtrip", &snap.object_key)
        .unwrap();
    assert!(stored_size.is_some_and(|n| n > 0));
    let (stored, _f) = rig.stored(snap);
    qemu_same(&local, &stored);
    let target = ExportTarget {
        bucket: "src-roundtrip".into(),
        prefix: "exports/".into(),
        format: ExportFormat::Vmdk,
    };
    rig.run(|env| export(env, &task("export-ami-1"), snap, &target))
        .unwrap();
    let back = rig
        .objects
        .fetch(
            "src-roundtrip",
            "exports/export-ami-1.vmdk",
            &rig.root,
            u64::MAX,
            &AtomicBool::new(false),
        )
        .unwrap();
    qemu_check("vmdk", back.path());
    qemu_same(&local, back.path());
    assert!(files(&rig.scratch_dir).is_empty());
    assert_eq!(rig.scratch.in_use(), 0);
}

/// A 16 MiB raw disk with 8 MiB of random data.
fn random_disk(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(dir).unwrap();
    sh(&format!(
        "truncate -s 16M {p}; head -c 8388608 /dev/urandom | dd of={p} bs=1M seek=4 conv=notrunc status=none",
        p = p.display()
    ));
    p
}

#[test]
fn the_scratch_quota_is_never_exceeded_and_a_task_too_large_fails_at_once() {
    // Each import downloads 16 MiB and writes an 8 MiB qcow2 (plus tables) before uploading
    // it: about 28 MiB each; the quota holds one at a time, not two.
    let quota = 40 * MIB;
    let rig = Arc::new(Rig::s3("quota", quota));
    let dir = rig.root.join("in");
    let a = random_disk(&dir, "a.raw");
    let b = random_disk(&dir, "b.raw");
    let sa = rig.put("src-quota", "a.raw", &a);
    let sb = rig.put("src-quota", "b.raw", &b);
    let done = Arc::new(AtomicBool::new(false));
    let max_used = Arc::new(AtomicU64::new(0));
    let max_disk = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (rig, done, max_used, max_disk) = (
            rig.clone(),
            done.clone(),
            max_used.clone(),
            max_disk.clone(),
        );
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                max_used.fetch_max(rig.scratch.in_use(), Ordering::Relaxed);
                max_disk.fetch_max(disk_usage(&rig.scratch_dir), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let outs: Vec<Outcome> = std::thread::scope(|s| {
        let h: Vec<_> = [("import-snap-a", sa), ("import-snap-b", sb)]
            .into_iter()
            .map(|(id, src)| {
                let rig = rig.clone();
                s.spawn(move || {
                    rig.run(|env| import_snapshot(env, &task(id), &disk(src, Some("RAW")), None))
                        .unwrap()
                })
            })
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).collect()
    });
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let used = max_used.load(Ordering::Relaxed);
    let on_disk = max_disk.load(Ordering::Relaxed);
    assert!(used > 16 * MIB, "the imports used scratch ({used})");
    assert!(used <= quota, "reserved {used} > quota {quota}");
    assert!(
        on_disk <= quota,
        "scratch files took {on_disk} > quota {quota}"
    );
    assert_eq!(rig.scratch.in_use(), 0);
    for (o, src) in outs.iter().zip([&a, &b]) {
        let (stored, _f) = rig.stored(&o.snapshots[0]);
        qemu_same(src, &stored);
    }

    let small = Rig::s3("toolarge", 4 * MIB);
    let s = small.put("src-toolarge", "a.raw", &a);
    match small.run(|env| import_snapshot(env, &task("import-snap-c"), &disk(s, None), None)) {
        Err(Error::TooLarge { needed, quota }) => {
            assert_eq!(quota, 4 * MIB);
            assert!(needed >= 16 * MIB);
        }
        other => panic!("{other:?}"),
    }
    assert!(files(&small.scratch_dir).is_empty());
}

#[test]
fn cancelling_mid_conversion_leaves_no_object_and_no_scratch_file() {
    let mut rig = Rig::local(64 * MIB);
    let a = random_disk(&rig.root.join("in"), "a.raw");
    let src = rig.put("user", "a.raw", &a);
    rig.cancel_after = Some(2);
    let r =
        rig.run(|env| import_snapshot(env, &task("import-snap-d"), &disk(src.clone(), None), None));
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert!(rig.leftovers().is_empty(), "{:?}", rig.leftovers());

    let mut s3 = Rig::s3("cancel", 64 * MIB);
    let src = s3.put("src-cancel", "a.raw", &a);
    s3.cancel_after = Some(2);
    let r = s3.run(|env| import_snapshot(env, &task("import-snap-e"), &disk(src, None), None));
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert!(files(&s3.scratch_dir).is_empty());
    let listed = boto("print(s3.list_objects_v2(Bucket='store-cancel').get('KeyCount', 0))");
    assert_eq!(listed.trim(), "0");
    assert_eq!(s3.scratch.in_use(), 0);
}

#[test]
fn a_restarted_import_image_skips_the_disks_its_checkpoint_records() {
    let rig = Rig::local(64 * MIB);
    let dir = rig.root.join("made");
    std::fs::create_dir_all(&dir).unwrap();
    let raw = gpt_disk(&dir, true);
    let data = random_disk(&dir, "data.raw");
    let disks = [
        disk(rig.put("user", "root.raw", &raw), None),
        disk(rig.put("user", "data.raw", &data), None),
    ];
    let mut rig = rig;
    let first = rig
        .run(|env| import_image(env, &task("import-ami-2"), &disks, None))
        .unwrap();
    let checkpoints: Vec<_> = rig
        .updates
        .lock()
        .unwrap()
        .iter()
        .filter_map(|u| u.checkpoint.clone())
        .collect();
    // The checkpoint after the first disk: it holds disk 0's snapshot and the validation.
    let after_first = checkpoints
        .iter()
        .find(|c| c["done"].as_array().is_some_and(|d| d.len() == 1) && c["current"].is_null())
        .unwrap()
        .clone();
    assert_eq!(
        after_first["done"][0][1]["id"],
        first.snapshots[0].id.as_str()
    );
    // Remove disk 1's snapshot as if the process died while converting it, leaving the
    // writer's temporary file; resume.
    let key1 = &first.snapshots[1].object_key;
    rig.storage.store.delete("stamp", key1).unwrap();
    let mut after_first = after_first;
    let id1 = "snap-00000000000000abc";
    // Disk 1 of the request is checkpoint unit 1024 (room for the disks of an OVA).
    after_first["current"] = serde_json::json!([1024, id1]);
    let stale = rig
        .root
        .join(format!("store/stamp/svc/snapshots/.{id1}.qcow2.XyZ123.tmp"));
    std::fs::write(&stale, b"half a disk").unwrap();
    rig.cancel_after = None;
    let again = rig
        .run(|env| import_image(env, &task("import-ami-2"), &disks, Some(&after_first)))
        .unwrap();
    assert_eq!(
        again.snapshots[0], first.snapshots[0],
        "disk 0 was not converted again"
    );
    assert_eq!(
        again.snapshots[1].id, id1,
        "the interrupted disk keeps its snapshot id"
    );
    assert!(
        !stale.exists(),
        "the killed writer's temporary file is gone"
    );
    let converting = rig.statuses().iter().filter(|s| *s == "converting").count();
    assert_eq!(converting, 1, "only disk 1 converted: {:?}", rig.statuses());
    let (stored, _f) = rig.stored(&again.snapshots[1]);
    qemu_same(&data, &stored);
    assert_eq!(again.validation.unwrap().boot_mode.as_deref(), Some("uefi"));
    // The skipped disk's details come from the checkpoint.
    assert_eq!(again.result["snapshots"][0], first.result["snapshots"][0]);
    assert_eq!(again.result["snapshots"][1]["device_name"], "/dev/sdb");
    assert_eq!(again.result["snapshots"][1]["format"], "RAW");
}

#[test]
fn url_sources_and_import_manifests_are_fetched_into_scratch() {
    let rig = Rig::local(64 * MIB);
    let www = rig.root.join("www");
    let vhd = fixture("vhd/qemu-dynamic-ext2.vhd.gz", &www);
    let raw = random_disk(&www, "vol.raw");
    // The manifest's parts: the raw disk cut in three.
    let bytes = std::fs::read(&raw).unwrap();
    let cuts = [0usize, 5 << 20, 11 << 20, bytes.len()];
    let mut parts = String::new();
    for i in 0..3 {
        std::fs::write(
            www.join(format!("vol.raw.part{i}")),
            &bytes[cuts[i]..cuts[i + 1]],
        )
        .unwrap();
        parts.push_str(&format!(
            "<part index=\"{i}\"><byte-range start=\"{}\" end=\"{}\"/><key>vol.raw.part{i}</key>\
             <get-url>URL/vol.raw.part{i}?X-Amz-Signature=abc&amp;x=1</get-url></part>",
            cuts[i],
            cuts[i + 1] - 1
        ));
    }
    let http = http_server(&www);
    let manifest = format!(
        "<?xml version=\"1.0\"?><manifest><version>2010-11-15</version><file-format>RAW</file-format>\
         <import><size>{}</size><volume-size>1</volume-size><parts count=\"3\">{}</parts></import></manifest>",
        bytes.len(),
        parts.replace("URL", &http.url)
    );
    std::fs::write(www.join("vol.manifest.xml"), manifest).unwrap();

    let url = DiskSource::Url(format!("{}/qemu-dynamic-ext2.vhd", http.url));
    let out = rig
        .run(|env| import_snapshot(env, &task("import-snap-f"), &disk(url, Some("VHD")), None))
        .unwrap();
    let (stored, _f) = rig.stored(&out.snapshots[0]);
    qemu_same(&vhd, &stored);

    let out = rig
        .run(|env| {
            import_volume(
                env,
                &task("import-vol-1"),
                &format!("{}/vol.manifest.xml", http.url),
                None,
            )
        })
        .unwrap();
    let (stored, _f) = rig.stored(&out.snapshots[0]);
    qemu_same(&raw, &stored);
    assert_eq!(out.result["volume_size_gib"], 1);
    assert!(files(&rig.scratch_dir).is_empty());

    // A manifest whose file-format is not what the parts hold.
    let wrong = std::fs::read_to_string(www.join("vol.manifest.xml"))
        .unwrap()
        .replace("<file-format>RAW", "<file-format>VMDK");
    std::fs::write(www.join("wrong.manifest.xml"), wrong).unwrap();
    let err = rig
        .run(|env| {
            import_volume(
                env,
                &task("import-vol-3"),
                &format!("{}/wrong.manifest.xml", http.url),
                None,
            )
        })
        .unwrap_err();
    assert!(err.to_string().starts_with("ClientError:"), "{err}");
    assert!(files(&rig.scratch_dir).is_empty());

    // A part shorter than its range fails the task.
    std::fs::write(www.join("vol.raw.part1"), b"short").unwrap();
    let err = rig
        .run(|env| {
            import_volume(
                env,
                &task("import-vol-2"),
                &format!("{}/vol.manifest.xml", http.url),
                None,
            )
        })
        .unwrap_err();
    assert!(err.to_string().contains("part 1"), "{err}");
    assert!(files(&rig.scratch_dir).is_empty());

    // By default a tenant cannot make the service fetch from loopback.
    let mut rig = rig;
    rig.urls = UrlPolicy::PublicOnly;
    let url = DiskSource::Url(format!("{}/qemu-dynamic-ext2.vhd", http.url));
    let err = rig
        .run(|env| import_snapshot(env, &task("import-snap-g"), &disk(url, None), None))
        .unwrap_err();
    assert!(err.to_string().contains("not a public address"), "{err}");
    let err = rig
        .run(|env| {
            import_volume(
                env,
                &task("import-vol-4"),
                &format!("{}/vol.manifest.xml", http.url),
                None,
            )
        })
        .unwrap_err();
    assert!(err.to_string().contains("not a public address"), "{err}");
}

#[test]
fn import_image_of_an_ova_makes_a_snapshot_of_each_of_its_disks() {
    let rig = Rig::local(64 * MIB);
    let dir = rig.root.join("made");
    std::fs::create_dir_all(&dir).unwrap();
    let root = gpt_disk(&dir, true);
    let data = random_disk(&dir, "data.raw");
    let disk_xml = |n: u32, size: u64| {
        format!(
            "<Disk ovf:capacity=\"{size}\" ovf:capacityAllocationUnits=\"byte\" ovf:diskId=\"vmdisk{n}\" \
             ovf:fileRef=\"file{n}\" ovf:format=\"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized\"/>"
        )
    };
    let ovf = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" \
         xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\"><References>\
         <File ovf:href=\"disk1.vmdk\" ovf:id=\"file1\"/><File ovf:href=\"disk2.vmdk\" ovf:id=\"file2\"/>\
         </References><DiskSection><Info>Disks</Info>{}{}</DiskSection>\
         <VirtualSystem ovf:id=\"vm\"><Info>A machine</Info></VirtualSystem></Envelope>\n",
        disk_xml(1, 16 * MIB),
        disk_xml(2, 16 * MIB)
    );
    std::fs::write(dir.join("vm.ovf"), ovf).unwrap();
    sh(&format!(
        "cd {d}
         qemu-img convert -O vmdk -o subformat=streamOptimized gpt-esp.raw disk1.vmdk
         qemu-img convert -O vmdk -o subformat=streamOptimized data.raw disk2.vmdk
         tar --format=ustar -cf vm.ova vm.ovf disk1.vmdk disk2.vmdk",
        d = dir.display()
    ));
    let source = rig.put("user", "vm.ova", &dir.join("vm.ova"));
    let out = rig
        .run(|env| {
            import_image(
                env,
                &task("import-ami-3"),
                &[disk(source.clone(), Some("OVA"))],
                None,
            )
        })
        .unwrap();
    assert_eq!(out.snapshots.len(), 2);
    for (snap, want) in out.snapshots.iter().zip([&root, &data]) {
        let (stored, _f) = rig.stored(snap);
        qemu_same(want, &stored);
    }
    assert_eq!(out.result["snapshots"][1]["device_name"], "/dev/sdb");
    assert_eq!(out.validation.unwrap().boot_mode.as_deref(), Some("uefi"));
    // ImportSnapshot of an OVA takes its first disk.
    let out = rig
        .run(|env| import_snapshot(env, &task("import-snap-9"), &disk(source, None), None))
        .unwrap();
    assert_eq!(out.snapshots.len(), 1);
}
