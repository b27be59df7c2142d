//! Runs the bodies of the `aws_*` fuzz targets once over seed inputs (requests and responses
//! in AWS's shapes, cut at every point and with each byte flipped), so that `cargo test` here
//! catches a panic without a fuzzing run.

#[path = "../fuzz_targets/aws_common.rs"]
mod aws_common;

/// Every prefix of `seed`, and `seed` with each byte in turn flipped.
fn mutations(seed: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let cuts = (0..seed.len()).map(|n| seed[..n].to_vec());
    let flips = (0..seed.len()).map(|i| {
        let mut v = seed.to_vec();
        v[i] ^= 0xff;
        v
    });
    cuts.chain(flips)
}

const REQUESTS: &[&str] = &[
    "Action=RegisterImage&Version=2016-11-15&Name=node&Architecture=x86_64&RootDeviceName=%2Fdev%2Fxvda&BlockDeviceMapping.1.DeviceName=%2Fdev%2Fxvda&BlockDeviceMapping.1.Ebs.SnapshotId=snap-1&BlockDeviceMapping.1.Ebs.VolumeSize=8&TagSpecification.1.ResourceType=image&TagSpecification.1.Tag.1.Key=a&TagSpecification.1.Tag.1.Value=b&EnaSupport=true",
    "Action=ImportSnapshot&Version=2016-11-15&DiskContainer.Format=VMDK&DiskContainer.UserBucket.S3Bucket=b&DiskContainer.UserBucket.S3Key=k.vmdk&ClientToken=t",
    "Action=DescribeImages&Version=2016-11-15&Owner.1=self&Filter.1.Name=name&Filter.1.Value.1=x&MaxResults=5&NextToken=abc",
];

const RESPONSES: &[&str] = &[
    r#"<?xml version="1.0" encoding="UTF-8"?><DescribeImagesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r</requestId><imagesSet><item><imageId>ami-1</imageId><name>n</name><imageState>available</imageState><blockDeviceMapping><item><deviceName>/dev/xvda</deviceName><ebs><snapshotId>snap-1</snapshotId><volumeSize>8</volumeSize></ebs></item></blockDeviceMapping><tagSet><item><key>k</key><value>v</value></item></tagSet></item></imagesSet><nextToken>t</nextToken></DescribeImagesResponse>"#,
    r#"<Response><Errors><Error><Code>InvalidAMIID.NotFound</Code><Message>no &amp; such</Message></Error></Errors><RequestID>r</RequestID></Response>"#,
    r#"<DescribeImportSnapshotTasksResponse><importSnapshotTaskSet><item><importTaskId>import-snap-1</importTaskId><snapshotTaskDetail><status>completed</status><snapshotId>snap-1</snapshotId><diskImageSize>1.0</diskImageSize></snapshotTaskDetail></item></importSnapshotTaskSet></DescribeImportSnapshotTasksResponse>"#,
];

#[test]
fn requests_and_their_mutations_never_panic() {
    for seed in REQUESTS {
        aws_common::ec2_request(seed.as_bytes());
        mutations(seed.as_bytes()).for_each(|m| aws_common::ec2_request(&m));
    }
}

#[test]
fn responses_and_their_mutations_never_panic() {
    for seed in RESPONSES {
        aws_common::ec2_response(seed.as_bytes());
        mutations(seed.as_bytes()).for_each(|m| aws_common::ec2_response(&m));
    }
}

const MANIFEST: &str = r#"<?xml version="1.0"?>
<manifest><version>2010-11-15</version><file-format>RAW</file-format>
<importer><name>ec2-upload-disk-image</name></importer>
<import><size>10</size><volume-size>1</volume-size>
<parts count="2">
<part index="1"><byte-range end="9" start="6"/><key>d.part1</key><get-url>http://h/b?x=1&amp;y=2</get-url></part>
<part index="0"><byte-range end="5" start="0"/><key>d.part0</key><get-url>http://h/a</get-url></part>
</parts></import></manifest>"#;

#[test]
fn serve_manifests_and_requests_and_their_mutations_never_panic() {
    aws_common::serve_manifest(MANIFEST.as_bytes());
    mutations(MANIFEST.as_bytes()).for_each(|m| aws_common::serve_manifest(&m));
    let req = format!(
        "AWS4-HMAC-SHA256 Credential=AKIDFUZZ/20261207/us-east-1/ec2/aws4_request, SignedHeaders=host;x-amz-date, Signature={}\n{}",
        "0".repeat(64),
        REQUESTS[0]
    );
    aws_common::serve_request(req.as_bytes());
    mutations(req.as_bytes()).for_each(|m| aws_common::serve_request(&m));
}
