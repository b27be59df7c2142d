//! `stamp images --remote aws` and `stamp rmi aws://…` against moto_server (EC2 emulated), with
//! boto3 making and checking the AMI.

use std::process::Command;

use crate::aws_support;

/// Runs a boto3 snippet (moto's RegisterImage keeps only the name and makes its own snapshot, so
/// the test reads the AMI back for it) with `ec2` bound to a client of the moto server; returns its stdout.
fn boto3(url: &str, code: &str) -> String {
    let script = format!(
        "import boto3, botocore\nec2 = boto3.client('ec2', endpoint_url='{url}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n{code}"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs stamp against the moto server with dummy keys.
fn stamp_aws(url: &str, args: &[&str]) -> crate::common::Run {
    Command::new(env!("CARGO_BIN_EXE_stamp"))
        .args(args)
        .args(["--endpoint-url", url])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap()
        .into()
}

#[test]
fn images_lists_the_callers_amis_and_rmi_removes_one_with_its_snapshot() {
    if Command::new("moto_server").arg("--help").output().is_err() {
        eprintln!("skipped: moto_server is not installed (scripts/install-test-deps.sh)");
        return;
    }
    let url = &aws_support::moto().url;
    let name = format!("stamp-cli-{}", std::process::id());
    let ids = boto3(
        url,
        &format!(
            "v = ec2.create_volume(Size=2, AvailabilityZone='us-east-1a')\n\
             s = ec2.create_snapshot(VolumeId=v['VolumeId'])\n\
             i = ec2.register_image(Name='{name}', Architecture='x86_64', RootDeviceName='/dev/xvda', \
             VirtualizationType='hvm', BootMode='uefi', BlockDeviceMappings=[{{'DeviceName': '/dev/xvda', \
             'Ebs': {{'SnapshotId': s['SnapshotId'], 'VolumeSize': 2}}}}])\n\
             d = ec2.describe_images(ImageIds=[i['ImageId']])['Images'][0]\n\
             print(i['ImageId'], d['BlockDeviceMappings'][0]['Ebs']['SnapshotId'], d.get('Architecture', '-'), d.get('CreationDate', '-'))"
        ),
    );
    let fields: Vec<&str> = ids.split(' ').collect();
    let [ami, snap, arch, created] = fields[..] else {
        panic!("{ids}")
    };
    // What boto3 reads from the same answer, "-" for absent.
    let or_absent = |v: &serde_json::Value| match v.as_str() {
        Some("") | None => "-".to_string(),
        Some(s) => s.to_string(),
    };

    let r = stamp_aws(url, &["images", "--remote", "aws://us-east-1", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let listed = v["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == ami)
        .unwrap_or_else(|| panic!("{ami} not listed: {}", r.stdout));
    assert_eq!(listed["name"], name.as_str());
    assert_eq!(listed["snapshot"], snap);
    assert_eq!(or_absent(&listed["architecture"]), arch);
    assert!(
        created.starts_with(&or_absent(&listed["created"])[..10]),
        "{created}"
    );
    let r = stamp_aws(url, &["images", "--remote", "aws://us-east-1"]);
    assert!(
        r.stdout.contains(ami) && r.stdout.contains("IMAGE ID"),
        "{}",
        r.stdout
    );

    let r = stamp_aws(url, &["rmi", &format!("aws://us-east-1/{ami}")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("Deregistered: {ami}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("Deleted: {snap}")),
        "{}",
        r.stdout
    );
    let gone = boto3(
        url,
        &format!(
            "try:\n    n = len(ec2.describe_images(ImageIds=['{ami}'])['Images'])\nexcept botocore.exceptions.ClientError:\n    n = 0\n\
             try:\n    m = len(ec2.describe_snapshots(SnapshotIds=['{snap}'])['Snapshots'])\nexcept botocore.exceptions.ClientError:\n    m = 0\n\
             print(n, m)"
        ),
    );
    assert_eq!(gone, "0 0", "the AMI or its snapshot is still there");

    // An AMI that does not exist: a clear error, exit 1.
    let r = stamp_aws(url, &["rmi", &format!("aws://us-east-1/{ami}")]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    // No credentials anywhere: the message says where stamp looked.
    let r: crate::common::Run = Command::new(env!("CARGO_BIN_EXE_stamp"))
        .args([
            "images",
            "--remote",
            "aws://us-east-1",
            "--endpoint-url",
            url,
        ])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("AWS_ACCESS_KEY_ID"), "{}", r.stderr);
}
