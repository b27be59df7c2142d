//! ImportSnapshot and the whole `--via s3://` path. moto has no VM Import/Export, so a small
//! fake EC2 (support/fake_ec2.rs) answers ImportSnapshot, DescribeImportSnapshotTasks and
//! CancelImportTask as a scenario says, making a real snapshot in moto from the object, and
//! forwards everything else to moto. (`stamp serve` will implement ImportSnapshot for real;
//! these tests move to it then.)
#![allow(clippy::unwrap_used)]

mod support;

use support::boto;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use stamp_aws::Error;
use stamp_aws::import::{
    self, ImportFormat, ImportSpec, ImportStatus, ViaS3Options, ViaS3Progress,
};
use stamp_aws::s3::{self, MultipartOptions};
use support::fake_ec2::{Ending, FakeEc2, TASK};

/// Creates `bucket`; returns a function that says how many objects and uploads it holds.
fn bucket(name: &str) -> impl Fn() -> (String, String) {
    boto(&format!("s3.create_bucket(Bucket='{name}')"));
    let name = name.to_string();
    move || {
        let out = boto(&format!(
            "print(s3.list_objects_v2(Bucket='{name}').get('KeyCount', 0))\n\
             print(len(s3.list_multipart_uploads(Bucket='{name}').get('Uploads', [])))"
        ));
        let mut l = out.lines().map(str::to_string);
        (l.next().unwrap(), l.next().unwrap())
    }
}

/// A 64 MiB sparse raw disk with 12 MiB of incompressible data in three places (so that the
/// VMDK is several 5 MiB parts).
fn make_disk(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(64 << 20).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for (i, off) in [0u64, 20 << 20, (40 << 20) + 4096].into_iter().enumerate() {
        let data: Vec<u8> = (0..(4 << 20) - i * 1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        f.write_all_at(&data, off).unwrap();
    }
}

/// Checks that moto's `snapshot` holds `disk`'s bytes: every block it lists equals the disk
/// there, and every data block of the disk is listed.
fn assert_snapshot_holds(snapshot: &str, disk: &Path) {
    let moto = support::client();
    let list = stamp_aws::ebs::list_snapshot_blocks(&moto, snapshot).unwrap();
    let want = std::fs::read(disk).unwrap();
    let bs = list.block_size as usize;
    let mut listed = Vec::new();
    for b in &list.blocks {
        let got = stamp_aws::ebs::get_snapshot_block(&moto, snapshot, b, list.block_size).unwrap();
        let off = b.index as usize * bs;
        let end = want.len().min(off + bs);
        assert!(off < want.len(), "block {} is past the disk", b.index);
        assert!(
            got[..end - off] == want[off..end],
            "block {} differs",
            b.index
        );
        listed.push(b.index as usize);
    }
    for (i, c) in want.chunks(bs).enumerate() {
        assert!(
            listed.contains(&i) || c.iter().all(|&x| x == 0),
            "data block {i} is missing"
        );
    }
}

fn qemu_img(args: &[&str]) -> (bool, String) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn via_opts(run: &str) -> ViaS3Options {
    ViaS3Options {
        description: Some("stamp test".into()),
        tags: vec![("stamp:run".into(), run.into())],
        run_id: Some(run.into()),
        multipart: MultipartOptions {
            part_size: s3::MIN_PART_SIZE,
            jobs: 2,
            size_hint: None,
        },
        poll_interval: Duration::from_millis(20),
        ..Default::default()
    }
}

#[test]
fn push_via_s3_uploads_a_vmdk_imports_it_and_deletes_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    make_disk(&disk);
    let contents = bucket("stamp-via-ok");
    let fake = FakeEc2::start(Ending::CompletedEmpty, dir.path());
    let reader = stamp_disk::open(&disk, None).unwrap();
    let seen = Mutex::new(Vec::new());
    let report = import::push_via_s3(
        &fake.client(),
        reader.as_ref(),
        "s3://stamp-via-ok/images/",
        ImportFormat::Vmdk,
        &via_opts("run1"),
        &|p| seen.lock().unwrap().push(p.clone()),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(report.task_id, TASK);
    // The fake made the snapshot it names from the object.
    assert_eq!(Some(report.snapshot_id.clone()), fake.snapshot());
    assert_eq!(report.object_key, "images/stamp-run1.vmdk");
    assert_eq!(report.cleanup_warning, None);
    // Deleted afterwards; no upload left.
    assert_eq!(contents(), ("0".into(), "0".into()));

    let log = fake.log.lock().unwrap();
    let req = log.import.clone().unwrap();
    let dc = req.disk_container.unwrap();
    assert_eq!(dc.format.as_deref(), Some("VMDK"));
    let ub = dc.user_bucket.unwrap();
    assert_eq!(ub.s3_bucket.as_deref(), Some("stamp-via-ok"));
    assert_eq!(ub.s3_key.as_deref(), Some("images/stamp-run1.vmdk"));
    assert_eq!(req.client_token.as_deref(), Some("stamp-run1"));
    assert_eq!(
        req.tag_specifications[0].tags[0].value.as_deref(),
        Some("run1")
    );
    // What was uploaded is a sound streamOptimized VMDK with the disk's contents.
    let object = log.object.clone().unwrap();
    assert_eq!(
        std::fs::metadata(&object).unwrap().len(),
        report.bytes_uploaded
    );
    // The 12 MiB of random data do not compress: several parts.
    assert!(report.bytes_uploaded > 2 * s3::MIN_PART_SIZE);
    let (ok, text) = qemu_img(&["check", "-f", "vmdk", object.to_str().unwrap()]);
    assert!(ok, "{text}");
    let (ok, text) = qemu_img(&[
        "compare",
        "-f",
        "vmdk",
        "-F",
        "raw",
        object.to_str().unwrap(),
        disk.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    drop(log);
    assert_eq!(
        fake.actions(),
        [
            "ImportSnapshot",
            "DescribeImportSnapshotTasks",
            "DescribeImportSnapshotTasks",
            "DescribeImportSnapshotTasks",
            "DescribeImportSnapshotTasks"
        ]
    );

    // Progress: the upload counted every allocated byte and every object byte; the import
    // reported active then completed.
    let seen = seen.lock().unwrap();
    let last_upload = seen
        .iter()
        .rev()
        .find_map(|p| match p {
            ViaS3Progress::Upload(u) => Some(*u),
            _ => None,
        })
        .unwrap();
    assert_eq!(last_upload.bytes_uploaded, report.bytes_uploaded);
    assert_eq!(last_upload.source_read, last_upload.source_total);
    assert!(last_upload.source_total >= 12 << 20);
    let statuses: Vec<String> = seen
        .iter()
        .filter_map(|p| match p {
            ViaS3Progress::Import(s) => Some(s.status.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(statuses.first().map(String::as_str), Some("active"));
    assert_eq!(statuses.last().map(String::as_str), Some("completed"));
}

#[test]
fn push_via_s3_raw_uploads_the_whole_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    make_disk(&disk);
    // A qcow2 source: the raw object is its contents, read through stamp-disk.
    let qcow2 = dir.path().join("disk.qcow2");
    let (ok, text) = qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        disk.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let contents = bucket("stamp-via-raw");
    let fake = FakeEc2::start(Ending::CompletedEmpty, dir.path());
    let reader = stamp_disk::open(&qcow2, None).unwrap();
    let report = import::push_via_s3(
        &fake.client(),
        reader.as_ref(),
        "s3://stamp-via-raw",
        ImportFormat::Raw,
        &via_opts("run2"),
        &|_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(report.object_key, "stamp-run2.raw");
    assert_eq!(report.bytes_uploaded, 64 << 20);
    let object = fake.log.lock().unwrap().object.clone().unwrap();
    assert!(std::fs::read(&object).unwrap() == std::fs::read(&disk).unwrap());
    let dc = fake
        .log
        .lock()
        .unwrap()
        .import
        .clone()
        .unwrap()
        .disk_container
        .unwrap();
    assert_eq!(dc.format.as_deref(), Some("RAW"));
    assert_eq!(contents(), ("0".into(), "0".into()));
}

#[test]
fn a_deleted_import_task_is_an_error_with_aws_message_and_the_object_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    make_disk(&disk);
    let contents = bucket("stamp-via-deleted");
    let fake = FakeEc2::start(Ending::Deleted, dir.path());
    let reader = stamp_disk::open(&disk, None).unwrap();
    let e = import::push_via_s3(
        &fake.client(),
        reader.as_ref(),
        "s3://stamp-via-deleted/p",
        ImportFormat::Vmdk,
        &via_opts("run3"),
        &|_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    let Error::Aborted { cause, cleanup } = &e else {
        panic!("{e}")
    };
    let cause = cause.to_string();
    assert!(cause.contains(TASK), "{cause}");
    assert!(cause.contains("Disk validation failed"), "{cause}");
    // The task ended by itself: nothing to cancel; the object is gone.
    assert_eq!(cleanup, "deleted s3://stamp-via-deleted/p/stamp-run3.vmdk");
    assert!(!fake.actions().contains(&"CancelImportTask".to_string()));
    assert_eq!(contents(), ("0".into(), "0".into()));
}

#[test]
fn cancelling_during_the_import_cancels_the_task_and_removes_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    make_disk(&disk);
    let contents = bucket("stamp-via-cancel");
    let fake = FakeEc2::start(Ending::Never, dir.path());
    let reader = stamp_disk::open(&disk, None).unwrap();
    let cancel = AtomicBool::new(false);
    let e = import::push_via_s3(
        &fake.client(),
        reader.as_ref(),
        "s3://stamp-via-cancel/",
        ImportFormat::Vmdk,
        &via_opts("run4"),
        &|p| {
            if matches!(p, ViaS3Progress::Import(s) if s.status == "active") {
                cancel.store(true, Ordering::Relaxed);
            }
        },
        &cancel,
    )
    .unwrap_err();
    let Error::Aborted { cause, cleanup } = &e else {
        panic!("{e}")
    };
    assert!(matches!(**cause, Error::Interrupted), "{cause}");
    assert_eq!(
        cleanup,
        &format!("cancelled import task {TASK}, deleted s3://stamp-via-cancel/stamp-run4.vmdk")
    );
    assert!(fake.log.lock().unwrap().cancelled);
    assert_eq!(contents(), ("0".into(), "0".into()));
}

#[test]
fn cancelling_during_the_upload_aborts_it_before_any_import() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    make_disk(&disk);
    let contents = bucket("stamp-via-cancel-upload");
    let fake = FakeEc2::start(Ending::Completed, dir.path());
    let reader = stamp_disk::open(&disk, None).unwrap();
    let cancel = AtomicBool::new(false);
    let e = import::push_via_s3(
        &fake.client(),
        reader.as_ref(),
        "s3://stamp-via-cancel-upload/x/",
        ImportFormat::Raw,
        &via_opts("run5"),
        &|p| {
            if matches!(p, ViaS3Progress::Upload(u) if u.object_bytes > 0) {
                cancel.store(true, Ordering::Relaxed);
            }
        },
        &cancel,
    )
    .unwrap_err();
    let Error::Aborted { cause, cleanup } = &e else {
        panic!("{e}")
    };
    assert!(matches!(**cause, Error::Interrupted), "{cause}");
    assert!(
        cleanup.starts_with("aborted multipart upload ")
            && cleanup.ends_with(" of s3://stamp-via-cancel-upload/x/stamp-run5.raw"),
        "{cleanup}"
    );
    assert!(fake.actions().is_empty());
    assert_eq!(contents(), ("0".into(), "0".into()));
}

#[test]
fn import_snapshot_alone_polls_until_completed_and_cancels_on_interrupt() {
    let dir = tempfile::tempdir().unwrap();
    let _ = bucket("stamp-import-alone");
    let client = support::client();
    let cancel = AtomicBool::new(false);
    let mut w = s3::MultipartWriter::create(
        &client,
        "stamp-import-alone",
        "d.raw",
        &MultipartOptions::default(),
        &|_| {},
        &cancel,
    )
    .unwrap();
    w.write_all(&[1u8; 4096]).unwrap();
    w.finish().unwrap();
    let spec = ImportSpec {
        bucket: "stamp-import-alone".into(),
        key: "d.raw".into(),
        format: ImportFormat::Raw,
        poll_interval: Duration::from_millis(10),
        ..Default::default()
    };
    let fake = FakeEc2::start(Ending::Completed, dir.path());
    let statuses = Mutex::new(Vec::<ImportStatus>::new());
    let done = import::import_snapshot(
        &fake.client(),
        &spec,
        &|s| statuses.lock().unwrap().push(s.clone()),
        &cancel,
    )
    .unwrap();
    assert_eq!(done.task_id, TASK);
    assert_eq!(Some(done.snapshot_id.clone()), fake.snapshot());
    // The fake imported the object for real: the snapshot holds it.
    let disk = dir.path().join("d.raw");
    std::fs::write(&disk, [1u8; 4096]).unwrap();
    assert_snapshot_holds(&done.snapshot_id, &disk);
    let st = statuses.lock().unwrap();
    assert_eq!(st[0].progress.as_deref(), Some("42"));
    assert_eq!(st[0].message.as_deref(), Some("converting"));

    let fake = FakeEc2::start(Ending::Never, dir.path());
    let e = import::import_snapshot(
        &fake.client(),
        &spec,
        &|_| cancel.store(true, Ordering::Relaxed),
        &cancel,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("interrupted; cancelled import task {TASK}")
    );
    assert!(fake.log.lock().unwrap().cancelled);

    // A timeout cancels too.
    let fake = FakeEc2::start(Ending::Never, dir.path());
    let spec = ImportSpec {
        timeout: Duration::from_millis(100),
        ..spec
    };
    let e = import::import_snapshot(&fake.client(), &spec, &|_| {}, &AtomicBool::new(false))
        .unwrap_err();
    assert!(e.to_string().contains("still active"), "{e}");
    assert!(fake.log.lock().unwrap().cancelled);
}
