//! S3 multipart upload against a real moto_server, checked with boto3 where a second client's
//! view matters (key encoding, uploads left behind).
#![allow(clippy::unwrap_used)]

mod support;

use support::boto;

use std::io::Write;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use stamp_aws::Error;
use stamp_aws::s3::{self, MultipartOptions, MultipartWriter, PartProgress};

const MIB: usize = 1 << 20;

fn make_bucket(name: &str) {
    boto(&format!("s3.create_bucket(Bucket='{name}')"));
}

fn uploads_left(bucket: &str) -> String {
    boto(&format!(
        "print(len(s3.list_multipart_uploads(Bucket='{bucket}').get('Uploads', [])))"
    ))
    .trim()
    .to_string()
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn opts(jobs: usize) -> MultipartOptions {
    MultipartOptions {
        part_size: s3::MIN_PART_SIZE,
        jobs,
        size_hint: None,
    }
}

/// Reads the whole object back with ranged GETs.
fn get_all(client: &stamp_aws::http::Client, bucket: &str, key: &str, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let chunk = s3::get_object_range(client, bucket, key, out.len() as u64, 4 << 20).unwrap();
        assert!(!chunk.is_empty());
        out.extend_from_slice(&chunk);
    }
    out
}

#[test]
fn a_multipart_upload_of_several_parts_round_trips() {
    let bucket = "stamp-s3-round-trip";
    make_bucket(bucket);
    // A key that needs encoding, to check that boto3 sees the same key.
    let key = "dir/a b+c=é.bin";
    let data = pattern(13 * MIB + 123, 1);
    let proxy = support::Proxy::start(Vec::new());
    let client = proxy.client();
    let seen = Mutex::new(Vec::<PartProgress>::new());
    let progress = |p: &PartProgress| seen.lock().unwrap().push(*p);
    let cancel = AtomicBool::new(false);
    let mut w =
        MultipartWriter::create(&client, bucket, key, &opts(2), &progress, &cancel).unwrap();
    assert_eq!(w.part_size(), 5 * MIB as u64);
    // Writes of odd sizes that straddle part boundaries.
    for chunk in data.chunks(MIB + 7) {
        w.write_all(chunk).unwrap();
    }
    assert_eq!(w.bytes_written(), data.len() as u64);
    let info = w.finish().unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.key, key);

    let parts: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("partNumber="))
        .collect();
    assert_eq!(parts.len(), 3, "{parts:?}");
    let last = *seen.lock().unwrap().last().unwrap();
    assert_eq!(last.bytes_uploaded, data.len() as u64);
    assert_eq!(last.bytes_written, data.len() as u64);

    let head = s3::head_object(&client, bucket, key).unwrap();
    assert_eq!(head.size, data.len() as u64);
    assert!(
        get_all(&client, bucket, key, head.size) == data,
        "contents differ"
    );
    let boto_len = boto(&format!(
        "print(s3.head_object(Bucket='{bucket}', Key='{key}')['ContentLength'])"
    ));
    assert_eq!(boto_len.trim(), data.len().to_string());
    assert_eq!(uploads_left(bucket), "0");

    s3::delete_object(&client, bucket, key).unwrap();
    let e = s3::head_object(&client, bucket, key).unwrap_err();
    assert!(
        matches!(&e, Error::Api { code, .. } if code == "NotFound"),
        "{e}"
    );
    // Deleting again is not an error (as S3).
    s3::delete_object(&client, bucket, key).unwrap();
}

#[test]
fn cancelling_or_dropping_aborts_the_upload() {
    let bucket = "stamp-s3-cancel";
    make_bucket(bucket);
    let client = support::client();
    let cancel = AtomicBool::new(false);
    let mut w = MultipartWriter::create(&client, bucket, "k1", &opts(2), &|_| {}, &cancel).unwrap();
    w.write_all(&pattern(6 * MIB, 2)).unwrap();
    assert_eq!(uploads_left(bucket), "1");
    cancel.store(true, Ordering::Relaxed);
    let e = w.write_bytes(b"more").unwrap_err();
    assert!(matches!(e, Error::Interrupted), "{e}");
    // Later writes keep failing.
    assert!(w.write_bytes(b"more").is_err());
    drop(w);
    assert_eq!(uploads_left(bucket), "0");

    // Dropped without finish, no cancel.
    let cancel = AtomicBool::new(false);
    let mut w = MultipartWriter::create(&client, bucket, "k2", &opts(2), &|_| {}, &cancel).unwrap();
    w.write_all(&pattern(MIB, 3)).unwrap();
    drop(w);
    // An explicit abort.
    let w = MultipartWriter::create(&client, bucket, "k3", &opts(2), &|_| {}, &cancel).unwrap();
    w.abort().unwrap();
    assert_eq!(uploads_left(bucket), "0");
    assert!(s3::head_object(&client, bucket, "k2").is_err());
}

#[test]
fn a_failed_part_aborts_the_upload_and_says_so() {
    let bucket = "stamp-s3-part-fails";
    make_bucket(bucket);
    let proxy = support::Proxy::start(vec![support::Fault {
        matching: "partNumber=2&".into(),
        times: 1,
        status: 400,
        headers: vec![("Content-Type".into(), "application/xml".into())],
        body: "<?xml version=\"1.0\"?><Error><Code>InvalidArgument</Code><Message>injected failure</Message></Error>".into(),
    }]);
    let client = proxy.client();
    let cancel = AtomicBool::new(false);
    let mut w =
        MultipartWriter::create(&client, bucket, "obj", &opts(1), &|_| {}, &cancel).unwrap();
    // With one job, writing part 3 waits for part 2 and sees its failure.
    let r = w.write_all(&pattern(12 * MIB, 4));
    let e = match r {
        Err(_) => w.finish().unwrap_err(),
        Ok(()) => w.finish().unwrap_err(),
    };
    let msg = e.to_string();
    match &e {
        Error::Aborted { cleanup, .. } => {
            assert!(cleanup.starts_with("aborted multipart upload"), "{cleanup}");
        }
        e => panic!("{e}"),
    }
    assert_eq!(proxy.unused_faults(), 0);
    assert_eq!(uploads_left(bucket), "0");
    assert!(
        !proxy
            .requests()
            .iter()
            .any(|r| r.contains("uploadId=") && r.starts_with("POST ")),
        "completed anyway"
    );
    // The write error (an io::Error) or finish names the object.
    assert!(msg.contains("s3://stamp-s3-part-fails/obj"), "{msg}");
}

#[test]
fn a_missing_bucket_is_named_in_the_error() {
    let client = support::client();
    let cancel = AtomicBool::new(false);
    let e = MultipartWriter::create(
        &client,
        "stamp-no-such-bucket",
        "x.vmdk",
        &opts(1),
        &|_| {},
        &cancel,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, Error::Api { code, .. } if code == "NoSuchBucket"),
        "{msg}"
    );
    assert!(msg.contains("stamp-no-such-bucket"), "{msg}");
    let e = s3::head_object(&client, "stamp-no-such-bucket", "x").unwrap_err();
    assert!(e.to_string().contains("s3://stamp-no-such-bucket/x"), "{e}");
}

#[test]
fn a_small_object_is_one_part_and_an_empty_one_too() {
    let bucket = "stamp-s3-small";
    make_bucket(bucket);
    let client = support::client();
    let cancel = AtomicBool::new(false);
    let mut w =
        MultipartWriter::create(&client, bucket, "small", &opts(4), &|_| {}, &cancel).unwrap();
    w.write_all(b"hello").unwrap();
    assert_eq!(w.finish().unwrap().size, 5);
    assert_eq!(
        s3::get_object_range(&client, bucket, "small", 0, 100).unwrap(),
        b"hello"
    );
    let w = MultipartWriter::create(&client, bucket, "empty", &opts(4), &|_| {}, &cancel).unwrap();
    assert_eq!(w.finish().unwrap().size, 0);
}

const BOTOCORE_SIGN_PY: &str = r#"
import sys, json, datetime, botocore.auth, botocore.config
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
botocore.auth.get_current_datetime = lambda *a, **k: datetime.datetime(2015, 8, 30, 12, 36, 0)
for c in json.loads(sys.argv[1]):
    req = AWSRequest(method=c['method'], url=c['url'], data=bytes.fromhex(c['body']),
                     headers=dict(c['headers']))
    req.context['client_config'] = botocore.config.Config(s3={'payload_signing_enabled': True})
    botocore.auth.S3SigV4Auth(Credentials('AKIDEXAMPLE', 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY'),
                              's3', 'eu-west-1').add_auth(req)
    print(req.headers['Authorization'])
"#;

/// moto does not check signatures: check ours against botocore's S3 signer for the requests
/// this module makes, virtual-hosted and path-style, with keys and upload ids that need
/// encoding.
#[test]
fn s3_signatures_match_botocore() {
    use stamp_aws::config::{AwsConfig, Credentials};
    let aws = AwsConfig::new(
        "eu-west-1",
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        },
    );
    let local = aws.clone().with_endpoint("http://127.0.0.1:9000");
    let key = "dir/a b+c=é~(1).bin";
    let upload = stamp_aws::ec2::query::percent_encode("2~abc/+=XYZ.def");
    // Method, URL, headers, body.
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, Vec<u8>);
    let mut cases: Vec<Case> = Vec::new();
    for cfg in [&aws, &local] {
        let url = |q: &str| s3::object_url(cfg, "my-bucket", key, q);
        cases.push((
            "POST",
            url("?uploads"),
            vec![("content-type", "application/octet-stream".into())],
            vec![],
        ));
        cases.push((
            "PUT",
            url(&format!("?partNumber=2&uploadId={upload}")),
            vec![],
            b"part data".to_vec(),
        ));
        cases.push((
            "POST",
            url(&format!("?uploadId={upload}")),
            vec![("content-type", "application/xml".into())],
            b"<CompleteMultipartUpload/>".to_vec(),
        ));
        cases.push(("GET", url(""), vec![("range", "bytes=0-99".into())], vec![]));
        cases.push(("HEAD", url(""), vec![], vec![]));
        cases.push((
            "DELETE",
            url(&format!("?uploadId={upload}")),
            vec![],
            vec![],
        ));
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_440_938_160);
    let ours: Vec<String> = cases
        .iter()
        .map(|(m, url, h, body)| {
            let signed = stamp_aws::http::sign_request(&aws, "s3", m, url, h, body, time).unwrap();
            signed
                .into_iter()
                .find(|(k, _)| *k == "authorization")
                .unwrap()
                .1
        })
        .collect();
    let json = serde_json::to_string(
        &cases
            .iter()
            .map(|(m, url, h, body)| {
                serde_json::json!({
                    "method": m,
                    "url": url,
                    "headers": h,
                    "body": body.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                })
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let out = Command::new("python3")
        .args(["-c", BOTOCORE_SIGN_PY, &json])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(theirs.len(), cases.len());
    for ((case, a), b) in cases.iter().zip(&ours).zip(&theirs) {
        assert_eq!(a, b, "{} {}", case.0, case.1);
    }
}
