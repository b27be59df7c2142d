//! EBS direct upload and download against a real moto_server.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use stamp_aws::Error;
use stamp_aws::config::{AwsConfig, ConfigOptions, CredentialSource};
use stamp_aws::ebs::{self, Transfer, UploadOptions};
use stamp_aws::http::Client;
use stamp_disk::{CreateOptions, Format};

const GIB: u64 = 1 << 30;

/// Writes a 1 GiB sparse raw disk with a known pattern in a few places, one all-zero run
/// inside written data, and returns how many 512-byte blocks are not all zeros.
fn make_disk(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(GIB).unwrap();
    let pattern = |off: u64, len: usize| -> Vec<u8> {
        (0..len)
            .map(|i| ((off + i as u64) * 31 % 251) as u8 | 1)
            .collect()
    };
    // 64 KiB at the start, with 2 KiB of written zeros in the middle (4 blocks to skip).
    let mut first = pattern(0, 64 << 10);
    first[16 << 10..18 << 10].fill(0);
    f.write_all(&first).unwrap();
    // 20 KiB in the middle, not block-aligned at either end.
    let mid = 300 * (1 << 20) + 100;
    f.seek(SeekFrom::Start(mid)).unwrap();
    f.write_all(&pattern(mid, 20 << 10)).unwrap();
    // The very last block.
    f.seek(SeekFrom::Start(GIB - 512)).unwrap();
    f.write_all(&pattern(GIB - 512, 512)).unwrap();
    f.sync_all().unwrap();
    // Non-zero blocks: 128 - 4 at the start; mid spans 41 blocks (100 + 20480 bytes from a
    // block boundary); 1 at the end.
    124 + (100 + (20u64 << 10)).div_ceil(512) + 1
}

fn cmp(a: &Path, b: &Path) {
    let out = Command::new("cmp").arg(a).arg(b).output().unwrap();
    assert!(
        out.status.success(),
        "{} and {} differ: {}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Uploads the image at `path` and downloads it into a raw file; returns the report and the
/// downloaded file.
fn round_trip(client: &Client, path: &Path, out: &Path) -> ebs::UploadReport {
    let reader = stamp_disk::open(path, None).unwrap();
    let last = Mutex::new(Transfer::default());
    let report = ebs::upload(
        client,
        reader.as_ref(),
        &UploadOptions {
            description: Some("stamp test".into()),
            tags: vec![("stamp:test".into(), "yes".into())],
            jobs: 8,
            ..Default::default()
        },
        &|t| *last.lock().unwrap() = *t,
        &AtomicBool::new(false),
    )
    .unwrap();
    let last = *last.lock().unwrap();
    assert_eq!(last.blocks_done, report.blocks_sent);
    assert_eq!(last.blocks_skipped, report.blocks_skipped);
    assert_eq!(last.bytes, report.bytes_sent);

    let size = ebs::snapshot_size(client, &report.snapshot_id).unwrap();
    assert_eq!(size, GIB);
    let writer = stamp_disk::create(out, Format::Raw, size, &CreateOptions::default()).unwrap();
    let dl = ebs::download(
        client,
        &report.snapshot_id,
        writer,
        8,
        &|_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(dl.blocks, report.blocks_sent);
    report
}

#[test]
fn upload_sends_only_nonzero_blocks_and_download_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("disk.raw");
    let nonzero = make_disk(&src);
    // Through a recording proxy, to count the PutSnapshotBlock calls on the wire.
    let proxy = support::Proxy::start(Vec::new());
    let client = proxy.client();
    let out = dir.path().join("back.raw");
    let report = round_trip(&client, &src, &out);
    let puts = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT /snapshots/"))
        .count() as u64;
    assert_eq!(puts, nonzero);
    // moto's StartSnapshot says 512-byte blocks (AWS says 512 KiB): the upload follows it.
    assert_eq!(report.block_size, 512);
    assert_eq!(report.volume_size_gib, 1);
    assert_eq!(report.blocks_sent, nonzero);
    assert_eq!(report.bytes_sent, nonzero * 512);
    assert_eq!(report.blocks_skipped, GIB / 512 - nonzero);
    cmp(&src, &out);
    let (state, _) = ebs::ec2_snapshot_state(&client, &report.snapshot_id).unwrap();
    assert_eq!(state, "completed");
}

#[test]
fn a_qcow2_disk_uploads_to_the_same_content() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let nonzero = make_disk(&raw);
    let qcow2 = dir.path().join("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .unwrap();
    assert!(st.success());
    let client = support::client();
    let out = dir.path().join("back.raw");
    let report = round_trip(&client, &qcow2, &out);
    assert_eq!(report.blocks_sent, nonzero);
    cmp(&raw, &out);
}

#[test]
fn cancelling_midway_deletes_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("disk.raw");
    make_disk(&src);
    let client = support::client();
    let reader = stamp_disk::open(&src, None).unwrap();
    let cancel = AtomicBool::new(false);
    let err = ebs::upload(
        &client,
        reader.as_ref(),
        &UploadOptions {
            jobs: 4,
            ..Default::default()
        },
        &|t| {
            if t.blocks_done >= 10 {
                cancel.store(true, Ordering::SeqCst);
            }
        },
        &cancel,
    )
    .unwrap_err();
    let Error::Aborted { cause, cleanup } = &err else {
        panic!("{err}")
    };
    assert!(matches!(**cause, Error::Interrupted), "{cause}");
    let id = cleanup
        .strip_prefix("deleted snapshot ")
        .unwrap_or_else(|| panic!("{cleanup}"));
    match ebs::ec2_snapshot_state(&client, id) {
        Err(Error::Api { code, .. }) => assert_eq!(code, "InvalidSnapshot.NotFound"),
        other => panic!("snapshot {id} still there: {other:?}"),
    }
}

#[test]
fn a_failing_block_deletes_the_snapshot_and_names_the_block() {
    // A reader whose data fails to read partway: the upload stops and cleans up.
    struct Failing;
    impl stamp_disk::DiskReader for Failing {
        fn virtual_size(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> stamp_disk::Result<()> {
            if offset >= 64 << 10 {
                return Err(stamp_disk::Error::InvalidOption(
                    "injected read failure".into(),
                ));
            }
            buf.fill(0xa5);
            Ok(())
        }
        fn allocation(&self) -> stamp_disk::Result<Vec<std::ops::Range<u64>>> {
            Ok(vec![0..1 << 20])
        }
        fn info(&self) -> stamp_disk::ImageInfo {
            stamp_disk::ImageInfo::default()
        }
    }
    let client = support::client();
    let err = ebs::upload(
        &client,
        &Failing,
        &UploadOptions {
            jobs: 2,
            ..Default::default()
        },
        &|_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("injected read failure"), "{msg}");
    assert!(msg.contains("deleted snapshot snap-"), "{msg}");
}

fn start_with(config: &AwsConfig) -> String {
    let client = Client::new(config);
    ebs::start_snapshot(&client, 1, &UploadOptions::default())
        .unwrap()
        .snapshot_id
}

#[test]
fn credentials_from_a_profile_file_the_environment_and_options_all_reach_moto() {
    let moto = support::moto();
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        "[ci]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = s\n",
    )
    .unwrap();
    std::fs::write(
        home.path().join(".aws/config"),
        format!(
            "[profile ci]\nregion = eu-west-1\nendpoint_url = {}\n",
            moto.url
        ),
    )
    .unwrap();
    let h = home.path().to_str().unwrap().to_string();

    // Profile file: region and endpoint from the config file too.
    let env = |k: &str| match k {
        "HOME" => Some(h.clone()),
        "AWS_PROFILE" => Some("ci".into()),
        _ => None,
    };
    let c = AwsConfig::load_with(&ConfigOptions::default(), &env).unwrap();
    assert_eq!(c.region, "eu-west-1");
    assert!(matches!(c.credential_source, CredentialSource::File(_)));
    assert!(start_with(&c).starts_with("snap-"));

    // Environment.
    let url = moto.url.clone();
    let env = |k: &str| match k {
        "HOME" => Some("/nonexistent".into()),
        "AWS_ACCESS_KEY_ID" => Some("AKIDENV".into()),
        "AWS_SECRET_ACCESS_KEY" => Some("s".into()),
        "AWS_DEFAULT_REGION" => Some("us-west-2".into()),
        "AWS_ENDPOINT_URL" => Some(url.clone()),
        _ => None,
    };
    let c = AwsConfig::load_with(&ConfigOptions::default(), &env).unwrap();
    assert_eq!(c.credential_source, CredentialSource::Environment);
    assert!(start_with(&c).starts_with("snap-"));

    // Options.
    let c = support::config();
    assert_eq!(c.credential_source, CredentialSource::Options);
    assert!(start_with(&c).starts_with("snap-"));
}

#[test]
fn missing_credentials_say_where_stamp_looked() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap().to_string();
    let env = |k: &str| match k {
        "HOME" => Some(h.clone()),
        "AWS_REGION" => Some("us-east-1".into()),
        _ => None,
    };
    let err = AwsConfig::load_with(&ConfigOptions::default(), &env).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("no AWS credentials"), "{msg}");
    assert!(
        msg.contains(&format!("{h}/.aws/credentials [default] (no such file)")),
        "{msg}"
    );
    assert!(msg.contains("AWS_ACCESS_KEY_ID"), "{msg}");
}

fn fault(
    matching: &str,
    times: usize,
    status: u16,
    header: Option<(&str, &str)>,
    body: &str,
) -> support::Fault {
    support::Fault {
        matching: matching.into(),
        times,
        status,
        headers: header
            .map(|(k, v)| vec![(k.to_string(), v.to_string())])
            .unwrap_or_default(),
        body: body.into(),
    }
}

#[test]
fn throttling_5xx_and_the_not_yet_visible_snapshot_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("disk.raw");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(GIB).unwrap();
    drop(f);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .write_all(&[7u8; 2048])
        .unwrap();
    let proxy = support::Proxy::start(vec![
        fault("POST /snapshots", 1, 503, None, "busy"),
        fault(
            "PUT /snapshots/",
            2,
            404,
            Some(("x-amzn-ErrorType", "ResourceNotFoundException")),
            r#"{"Message":"The snapshot does not exist yet"}"#,
        ),
        fault(
            "PUT /snapshots/",
            1,
            400,
            Some(("x-amzn-ErrorType", "ThrottlingException")),
            r#"{"Message":"Rate exceeded"}"#,
        ),
        fault(
            "POST /",
            1,
            400,
            None,
            "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>slow down</Message></Error></Errors></Response>",
        ),
    ]);
    let client = proxy.client();
    let reader = stamp_disk::open(&src, None).unwrap();
    let report = ebs::upload(
        &client,
        reader.as_ref(),
        &UploadOptions {
            jobs: 1,
            ..Default::default()
        },
        &|_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(report.blocks_sent, 4);
    assert_eq!(proxy.unused_faults(), 0);
    let puts = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT "))
        .count();
    // 4 blocks, 3 of the attempts answered by the faults.
    assert_eq!(puts, 7, "{:?}", proxy.requests());
}

#[test]
fn a_json_error_is_typed_and_not_retried() {
    let proxy = support::Proxy::start(vec![fault(
        "GET /snapshots/",
        5,
        400,
        Some(("x-amzn-ErrorType", "ValidationException:http://internal")),
        r#"{"Message":"bad snapshot","Reason":"INVALID_PARAMETER"}"#,
    )]);
    let err = ebs::list_snapshot_blocks(&proxy.client(), "snap-0123456789abcdef0").unwrap_err();
    match &err {
        Error::Api {
            service,
            code,
            message,
            ..
        } => {
            assert_eq!(*service, "ebs");
            assert_eq!(code, "ValidationException");
            assert_eq!(message, "bad snapshot (reason: INVALID_PARAMETER)");
        }
        e => panic!("{e}"),
    }
    assert_eq!(proxy.requests().len(), 1);
}

#[test]
fn a_block_with_a_wrong_checksum_fails_the_download_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("disk.raw");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(GIB).unwrap();
    drop(f);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .write_all(&[9u8; 1024])
        .unwrap();
    let client = support::client();
    let reader = stamp_disk::open(&src, None).unwrap();
    let report = ebs::upload(
        &client,
        reader.as_ref(),
        &UploadOptions::default(),
        &|_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    // Block 1 comes back with one byte changed but the original checksum.
    let mut bad = vec![9u8; 512];
    bad[17] = 8;
    let proxy = support::Proxy::start(vec![support::Fault {
        matching: format!("GET /snapshots/{}/blocks/1?", report.snapshot_id),
        times: 1,
        status: 200,
        headers: vec![
            ("x-amz-Checksum".into(), ebs::checksum(&[9u8; 512])),
            ("x-amz-Checksum-Algorithm".into(), "SHA256".into()),
        ],
        body: String::from_utf8(bad).unwrap(),
    }]);
    let out = dir.path().join("back.raw");
    let writer = stamp_disk::create(&out, Format::Raw, GIB, &CreateOptions::default()).unwrap();
    let err = ebs::download(
        &proxy.client(),
        &report.snapshot_id,
        writer,
        4,
        &|_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(!out.exists());
}
