//! Bodies of the `aws_*` fuzz targets, shared with the seed test (tests/aws_seeds.rs).
#![allow(dead_code)]

use stamp_aws::ec2::{self, Request};

/// Arbitrary bytes as an EC2 Query API form body (what `stamp serve` reads): decoding must
/// end in a request or an AWS error, and a decoded request must encode and decode to itself.
pub fn ec2_request(data: &[u8]) {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(params) = ec2::form_decode(body) else {
        return;
    };
    if let Ok(req) = Request::decode(&params) {
        let again = Request::decode(&req.encode()).expect("a decoded request re-encodes");
        assert_eq!(again, req);
    }
}

/// Arbitrary bytes as an EC2 XML response (what `stamp push` and `stamp images` read from a
/// server): parsing ends in a value or an error.
pub fn ec2_response(data: &[u8]) {
    let xml = String::from_utf8_lossy(data);
    let _ = ec2::parse_response::<ec2::DescribeImagesResult>(&xml);
    let _ = ec2::parse_response::<ec2::RegisterImageResult>(&xml);
    let _ = ec2::parse_response::<ec2::DescribeSnapshotsResult>(&xml);
    let _ = ec2::parse_response::<ec2::DescribeImportSnapshotTasksResult>(&xml);
}

/// Arbitrary bytes as a signed request to `stamp serve` (Authorization header, body): the
/// signature check and the API answer with an HTTP status and AWS's XML, never a panic.
pub fn serve_request(data: &[u8]) {
    use std::sync::{Arc, OnceLock};
    static SERVICE: OnceLock<stamp_serve::api::Service> = OnceLock::new();
    let svc = SERVICE.get_or_init(|| {
        let store = stamp_serve::db::SqliteStore::open_in_memory().expect("in-memory store");
        let keys = stamp_serve::api::Keys::parse("AKIDFUZZ secret fuzz\n", "keys").expect("keys");
        stamp_serve::api::Service::new(Arc::new(store), keys)
    });
    let text = String::from_utf8_lossy(data);
    let (auth, body) = text.split_once('\n').unwrap_or((&text, ""));
    let req = stamp_serve::api::HttpRequest {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: vec![
            ("host".into(), "127.0.0.1".into()),
            ("x-amz-date".into(), "20261207T000000Z".into()),
            ("authorization".into(), auth.to_string()),
        ],
        body: body.as_bytes().to_vec(),
    };
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_601_600);
    let r = svc.handle(&req, now);
    assert!(r.body.starts_with("<?xml"), "{}: {}", r.status, r.body);
}

/// Arbitrary bytes as an EC2 import manifest (ImportVolume): parsed or refused.
pub fn serve_manifest(data: &[u8]) {
    let _ = stamp_serve::worker::manifest::parse(data);
}
