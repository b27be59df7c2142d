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
