//! `stamp push DISK aws://NAME --via s3://BUCKET/PREFIX` end to end: the disk goes to moto's
//! S3 as a streamOptimized VMDK, a fake EC2 (stamp-aws's tests/support/fake_ec2.rs) answers
//! ImportSnapshot by importing the object into a real moto snapshot, and the AMI is registered
//! in moto. boto3 is the independent reader of the snapshot, its tags and the bucket.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::aws::have_moto;
use crate::aws_push::{download_with_boto3, stamp_env, wait_for};
use crate::aws_support::{self, fake_ec2::Ending, fake_ec2::FakeEc2, fake_ec2::TASK};
use crate::common::{Run, stamp};

/// Runs a boto3 snippet with `s3`, `ec2` and `ebs` clients of moto itself (not the fake);
/// returns its stdout.
fn boto3(code: &str) -> String {
    crate::aws::boto3(&aws_support::moto().url, code)
}

/// Creates `bucket` in moto; returns a function giving the number of objects and of
/// multipart uploads in progress in it.
fn bucket(name: &str) -> impl Fn() -> (u64, u64) {
    boto3(&format!("s3.create_bucket(Bucket='{name}')"));
    let name = name.to_string();
    move || {
        let out = boto3(&format!(
            "print(s3.list_objects_v2(Bucket='{name}').get('KeyCount', 0))\n\
             print(len(s3.list_multipart_uploads(Bucket='{name}').get('Uploads', [])))"
        ));
        let mut l = out.lines().map(|x| x.parse::<u64>().unwrap());
        (l.next().unwrap(), l.next().unwrap())
    }
}

/// An 8 MiB sparse raw disk with a little data (moto's EBS takes 512-byte blocks, one request
/// each): 64 KiB at 0, 512 bytes at 3 MiB + 512, 4 KiB at 5 MiB + 4 KiB and the last 512 bytes;
/// holes elsewhere.
fn pattern_disk(dir: &Path) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let path = dir.join("pattern.raw");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(8 << 20).unwrap();
    let data: Vec<u8> = (0..64 << 10).map(|i: u32| (i % 251) as u8 | 1).collect();
    f.write_all_at(&data, 0).unwrap();
    f.write_all_at(&[0xA5; 512], (3 << 20) + 512).unwrap();
    f.write_all_at(&data[..4096], (5 << 20) + 4096).unwrap();
    f.write_all_at(&[0x5A; 512], (8 << 20) - 512).unwrap();
    path
}

/// The pattern disk as qcow2 (made by stamp; any stamp-disk format is pushed as its raw bytes).
fn pattern_qcow2(dir: &Path) -> (PathBuf, PathBuf) {
    let raw = pattern_disk(dir);
    let qcow = dir.join("pattern.qcow2");
    let r = stamp(&[
        "convert",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    (raw, qcow)
}

/// Position of `action` in `actions` (panics if absent).
fn position(actions: &[String], action: &str) -> usize {
    actions
        .iter()
        .position(|a| a == action)
        .unwrap_or_else(|| panic!("no {action} in {actions:?}"))
}

#[test]
fn push_via_s3_imports_the_disk_registers_it_and_empties_the_bucket() {
    if !have_moto() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (raw, qcow) = pattern_qcow2(tmp.path());
    let contents = bucket("stamp-cli-via-ok");
    let fake = FakeEc2::start(Ending::Completed, tmp.path());
    let name = format!("stamp-via-{}", std::process::id());
    let r: Run = stamp_env(
        tmp.path(),
        &[
            "push",
            qcow.to_str().unwrap(),
            &format!("aws://us-east-1/{name}"),
            "--endpoint-url",
            &fake.url,
            "--via",
            "s3://stamp-cli-via-ok/images/x",
            "--tag",
            "team=infra",
            "--json",
        ],
        &[],
    )
    .output()
    .unwrap()
    .into();
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let ami = v["image_id"].as_str().unwrap().to_string();
    let snap = v["snapshot_id"].as_str().unwrap().to_string();
    assert!(ami.starts_with("ami-"), "{v}");
    // The snapshot is the one the import made from the uploaded object.
    assert_eq!(Some(&snap), fake.snapshot().as_ref(), "{v}");
    let via = &v["via_s3"];
    assert_eq!(via["task_id"], TASK, "{v}");
    assert_eq!(via["snapshot_id"], snap.as_str(), "{v}");
    assert_eq!(via["bucket"], "stamp-cli-via-ok", "{v}");
    let key = via["object_key"].as_str().unwrap();
    assert!(
        key.starts_with("images/x/stamp-") && key.ends_with(".vmdk"),
        "{v}"
    );
    assert_eq!(via["cleanup_warning"], serde_json::Value::Null, "{v}");
    assert!(v.get("upload").is_none(), "{v}");
    let (import, object) = {
        let log = fake.log.lock().unwrap();
        (log.import.clone().unwrap(), log.object.clone().unwrap())
    };
    assert_eq!(
        via["bytes_uploaded"].as_u64(),
        Some(std::fs::metadata(&object).unwrap().len())
    );
    let dc = import.disk_container.unwrap();
    assert_eq!(dc.format.as_deref(), Some("VMDK"));
    let ub = dc.user_bucket.unwrap();
    assert_eq!(ub.s3_bucket.as_deref(), Some("stamp-cli-via-ok"));
    assert_eq!(ub.s3_key.as_deref(), Some(key));

    // The snapshot, read back by boto3's EBS client, is the disk.
    let back = tmp.path().join("back.raw");
    download_with_boto3(&aws_support::moto().url, &snap, &back, 8 << 20);
    let r = stamp(&["compare", raw.to_str().unwrap(), back.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // The imported snapshot was tagged incomplete (with the user's tags) before RegisterImage,
    // which names it, and untagged at the end.
    let actions = fake.actions();
    let create_tags = fake.forms("CreateTags");
    assert!(
        create_tags.iter().any(|f| f.contains(&snap)
            && f.contains("stamp%3Aincomplete")
            && f.contains("Value=infra")),
        "{create_tags:?}"
    );
    let register = fake.forms("RegisterImage");
    assert_eq!(register.len(), 1, "{actions:?}");
    assert!(
        register[0].contains(&format!("BlockDeviceMapping.1.Ebs.SnapshotId={snap}"))
            && register[0].contains(&format!("Name={name}")),
        "{}",
        register[0]
    );
    assert!(position(&actions, "ImportSnapshot") < position(&actions, "CreateTags"));
    assert!(position(&actions, "CreateTags") < position(&actions, "RegisterImage"));
    assert!(position(&actions, "RegisterImage") < position(&actions, "DeleteTags"));
    assert!(!actions.contains(&"CancelImportTask".to_string()));
    let tags = boto3(&format!(
        "s = ec2.describe_snapshots(SnapshotIds=['{snap}'])['Snapshots'][0]\n\
         print(sorted(t['Key'] + '=' + t['Value'] for t in s.get('Tags', [])))"
    ));
    assert!(tags.contains("'team=infra'"), "{tags}");
    assert!(tags.contains("'stamp:run="), "{tags}");
    assert!(!tags.contains("stamp:incomplete"), "{tags}");
    // (moto's RegisterImage ignores the block device mapping: only the name is checked.)
    let image = boto3(&format!(
        "print(ec2.describe_images(ImageIds=['{ami}'])['Images'][0]['Name'])"
    ));
    assert_eq!(image, name);

    // Nothing is left in the bucket: no object, no multipart upload.
    assert_eq!(contents(), (0, 0));
}

#[test]
fn a_failed_import_is_an_error_with_aws_message_and_removes_the_object() {
    if !have_moto() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, qcow) = pattern_qcow2(tmp.path());
    let contents = bucket("stamp-cli-via-deleted");
    let fake = FakeEc2::start(Ending::Deleted, tmp.path());
    let r: Run = stamp_env(
        tmp.path(),
        &[
            "push",
            qcow.to_str().unwrap(),
            "aws://stamp-via-deleted",
            "--endpoint-url",
            &fake.url,
            "--via",
            "s3://stamp-cli-via-deleted/p",
        ],
        &[],
    )
    .output()
    .unwrap()
    .into();
    assert_eq!(r.code, 1, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    // AWS's message, the task, and what was removed.
    assert!(
        r.stderr
            .contains("Disk validation failed [Unsupported VMDK File Format]"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(TASK), "{}", r.stderr);
    let key = fake.log.lock().unwrap().import.clone().unwrap();
    let key = key
        .disk_container
        .unwrap()
        .user_bucket
        .unwrap()
        .s3_key
        .unwrap();
    assert!(
        r.stderr
            .contains(&format!("deleted s3://stamp-cli-via-deleted/{key}")),
        "{}",
        r.stderr
    );
    let actions = fake.actions();
    for never in ["RegisterImage", "CreateTags", "CancelImportTask"] {
        assert!(!actions.iter().any(|a| a == never), "{never}: {actions:?}");
    }
    assert_eq!(contents(), (0, 0));
}

#[test]
fn sigint_during_the_import_cancels_the_task_and_removes_the_object() {
    if !have_moto() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, qcow) = pattern_qcow2(tmp.path());
    let contents = bucket("stamp-cli-via-sigint");
    let fake = FakeEc2::start(Ending::Never, tmp.path());
    let child = stamp_env(
        tmp.path(),
        &[
            "push",
            qcow.to_str().unwrap(),
            "aws://stamp-via-sigint",
            "--endpoint-url",
            &fake.url,
            "--via",
            "s3://stamp-cli-via-sigint",
        ],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // The task is active once it has been polled.
    wait_for("the import task to be polled", || {
        fake.log.lock().unwrap().polls >= 1
    });
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 130, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    let log_key = fake.log.lock().unwrap().import.clone().unwrap();
    let key = log_key
        .disk_container
        .unwrap()
        .user_bucket
        .unwrap()
        .s3_key
        .unwrap();
    assert!(fake.log.lock().unwrap().cancelled);
    assert!(
        r.stderr.contains(&format!("cancelled import task {TASK}"))
            && r.stderr
                .contains(&format!("deleted s3://stamp-cli-via-sigint/{key}")),
        "{}",
        r.stderr
    );
    let actions = fake.actions();
    assert!(
        !actions
            .iter()
            .any(|a| a == "RegisterImage" || a == "CreateTags"),
        "{actions:?}"
    );
    assert_eq!(contents(), (0, 0));
}

#[test]
fn a_failed_registration_after_the_import_deletes_the_imported_snapshot() {
    if !have_moto() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, qcow) = pattern_qcow2(tmp.path());
    let contents = bucket("stamp-cli-via-regfail");
    let fake = FakeEc2::start(Ending::Completed, tmp.path());
    fake.fail_once(
        "RegisterImage",
        "InvalidParameterValue",
        "injected by the test",
    );
    let r: Run = stamp_env(
        tmp.path(),
        &[
            "push",
            qcow.to_str().unwrap(),
            "aws://stamp-via-regfail",
            "--endpoint-url",
            &fake.url,
            "--via",
            "s3://stamp-cli-via-regfail/p/",
        ],
        &[],
    )
    .output()
    .unwrap()
    .into();
    assert_eq!(r.code, 1, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    let snap = fake.snapshot().unwrap();
    assert!(r.stderr.contains("injected by the test"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("deleted snapshot {snap}")),
        "{}",
        r.stderr
    );
    assert!(fake.log.lock().unwrap().faults.is_empty());
    let gone = boto3(&format!(
        "try:\n    ec2.describe_snapshots(SnapshotIds=['{snap}'])\n    print('left')\n\
         except botocore.exceptions.ClientError as x:\n    print(x.response['Error']['Code'])"
    ));
    assert_eq!(gone, "InvalidSnapshot.NotFound");
    assert_eq!(contents(), (0, 0));
}
