//! `stamp push DISK aws://NAME` against moto_server (EC2 and EBS direct emulated) through a
//! recording proxy: what is uploaded, what RegisterImage carries, what is cleaned up, and where
//! credentials come from. boto3 is the independent reader.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::aws::{boto3, boto3_in, have_moto};
use crate::aws_support::{self, Fault, Proxy};
use crate::common::{Run, stamp};

/// `stamp ARGS` with dummy keys in the environment and no profile files.
pub(crate) fn stamp_env(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stamp"));
    c.args(args)
        .env("HOME", home)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", aws_support::REGION);
    for k in [
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_SESSION_TOKEN",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// `stamp ARGS --endpoint-url PROXY` as [`stamp_env`] runs it.
fn at(proxy: &Proxy, home: &Path, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend(["--endpoint-url", &proxy.url]);
    run(stamp_env(home, &all, &[]))
}

fn run(mut c: Command) -> Run {
    c.output().unwrap().into()
}

/// Whether moto still has `snapshot` (DescribeSnapshots), as boto3 sees it.
fn snapshot_exists(url: &str, snapshot: &str) -> bool {
    boto3(
        url,
        &format!(
            "try:\n    ec2.describe_snapshots(SnapshotIds=['{snapshot}'])\n    print('yes')\n\
             except botocore.exceptions.ClientError as e:\n    print(e.response['Error']['Code'])"
        ),
    ) == "yes"
}

/// Writes `snapshot` (every block boto3's ListSnapshotBlocks names, fetched with
/// GetSnapshotBlock) into a raw file of `size` bytes.
pub(crate) fn download_with_boto3(url: &str, snapshot: &str, out: &Path, size: u64) {
    boto3(
        url,
        &format!(
            "f = open('{out}', 'wb'); f.truncate({size})\n\
             kw2 = dict(SnapshotId='{snapshot}')\n\
             while True:\n\
             \x20   r = ebs.list_snapshot_blocks(**kw2)\n\
             \x20   for b in r['Blocks']:\n\
             \x20       d = ebs.get_snapshot_block(SnapshotId='{snapshot}', BlockIndex=b['BlockIndex'], BlockToken=b['BlockToken'])['BlockData'].read()\n\
             \x20       if b['BlockIndex'] * r['BlockSize'] < {size}:\n\
             \x20           f.seek(b['BlockIndex'] * r['BlockSize']); f.write(d[:{size} - b['BlockIndex'] * r['BlockSize']])\n\
             \x20   if not r.get('NextToken'): break\n\
             \x20   kw2['NextToken'] = r['NextToken']\n\
             f.close()",
            out = out.display()
        ),
    );
}

/// An 8 MiB raw disk: 1 MiB of data at 0, one 512-byte block at 3 MiB + 512, 256 KiB of
/// written zeros at 5 MiB (allocated, never sent), and the last 512 bytes. Returns the path and
/// the number of non-zero 512-byte blocks.
fn pattern_disk(dir: &Path) -> (PathBuf, u64) {
    const MIB: usize = 1 << 20;
    let mut d = vec![0u8; 8 * MIB];
    for (i, b) in d[..MIB].iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    d[3 * MIB + 512..3 * MIB + 1024].fill(0xA5);
    let end = d.len();
    d[end - 512..].fill(0x5A);
    let path = dir.join("pattern.raw");
    std::fs::write(&path, &d).unwrap();
    let nonzero = d.chunks(512).filter(|c| c.iter().any(|&b| b != 0)).count() as u64;
    assert_eq!(nonzero, 2048 + 2);
    // Punch the holes back so the raw file is sparse where the disk is zero, except the
    // explicitly written zeros at 5 MiB.
    let out = Command::new("fallocate")
        .args(["--dig-holes", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; 256 << 10], 5 * MIB as u64).unwrap();
    (path, nonzero)
}

fn json(r: &Run) -> serde_json::Value {
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

#[test]
fn push_uploads_only_data_blocks_registers_as_asked_and_reads_back_equal() {
    if !have_moto() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (raw, nonzero) = pattern_disk(tmp.path());
    // Push a qcow2 of it: any stamp-disk format is read as the raw byte stream.
    let qcow = tmp.path().join("pattern.qcow2");
    let r = stamp(&[
        "convert",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let proxy = Proxy::start(Vec::new());
    let name = format!("stamp-push-{}", std::process::id());
    let target = format!("aws://us-east-1/{name}");
    let r = at(
        &proxy,
        tmp.path(),
        &[
            "push",
            qcow.to_str().unwrap(),
            &target,
            "--arch",
            "arm64",
            "--boot-mode",
            "uefi",
            "--ena",
            "--tpm",
            "--imds-v2",
            "--volume-size",
            "3",
            "--tag",
            "team=infra",
            "--json",
        ],
    );
    let v = json(&r);
    let snap = v["snapshot_id"].as_str().unwrap().to_string();
    let ami = v["image_id"].as_str().unwrap().to_string();
    assert!(ami.starts_with("ami-") && snap.starts_with("snap-"), "{v}");
    assert_eq!(v["reused"], false);

    // 2. Only the non-zero blocks went up: the written zeros and the holes did not.
    let puts = proxy
        .requests()
        .iter()
        .filter(|l| l.starts_with("PUT /snapshots/") && l.contains("/blocks/"))
        .count() as u64;
    assert_eq!(puts, nonzero, "PutSnapshotBlock calls");
    assert_eq!(v["upload"]["blocks_sent"], nonzero);
    let allocated = std::fs::metadata(&qcow).unwrap().len();
    assert!(v["upload"]["bytes_sent"].as_u64().unwrap() <= allocated);

    // 3. RegisterImage carried what was asked, on our snapshot.
    let forms = proxy.forms("RegisterImage");
    assert_eq!(forms.len(), 1, "{forms:?}");
    let form = &forms[0];
    for want in [
        format!("Name={name}"),
        "Architecture=arm64".into(),
        "BootMode=uefi".into(),
        "EnaSupport=true".into(),
        "TpmSupport=v2.0".into(),
        "ImdsSupport=v2.0".into(),
        "VirtualizationType=hvm".into(),
        "RootDeviceName=%2Fdev%2Fxvda".into(),
        "BlockDeviceMapping.1.DeviceName=%2Fdev%2Fxvda".into(),
        format!("BlockDeviceMapping.1.Ebs.SnapshotId={snap}"),
        "BlockDeviceMapping.1.Ebs.VolumeSize=3".into(),
        "BlockDeviceMapping.1.Ebs.VolumeType=gp3".into(),
        "BlockDeviceMapping.1.Ebs.DeleteOnTermination=true".into(),
        "TagSpecification.1.ResourceType=image".into(),
        "Value=infra".into(),
    ] {
        assert!(form.contains(&want), "RegisterImage lacks {want}: {form}");
    }
    // Marked incomplete until the end, then unmarked on the AMI and the snapshot.
    assert!(form.contains("Key=stamp%3Aincomplete"), "{form}");
    let untag = proxy.forms("DeleteTags");
    assert!(
        untag
            .iter()
            .any(|f| f.contains(&ami) && f.contains(&snap) && f.contains("stamp%3Aincomplete")),
        "{untag:?}"
    );
    let tags = boto3(
        &proxy.url,
        &format!(
            "s = ec2.describe_snapshots(SnapshotIds=['{snap}'])['Snapshots'][0]\n\
             print(sorted((t['Key'], t['Value']) for t in s.get('Tags', [])))"
        ),
    );
    assert!(tags.contains("('team', 'infra')"), "{tags}");
    assert!(tags.contains("stamp:run"), "{tags}");
    assert!(!tags.contains("stamp:incomplete"), "{tags}");

    // 1. The catalog lists it; the snapshot reads back equal to the disk.
    let r = at(&proxy, tmp.path(), &["images", "--remote", "aws", "--json"]);
    let listing = json(&r);
    assert!(
        listing["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == ami.as_str() && i["name"] == name.as_str()),
        "{listing}"
    );
    let back = tmp.path().join("back.raw");
    download_with_boto3(&proxy.url, &snap, &back, 8 << 20);
    let r = stamp(&["compare", raw.to_str().unwrap(), back.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // And through `stamp pull` into another format.
    let pulled = tmp.path().join("pulled.vhdx");
    let r = at(
        &proxy,
        tmp.path(),
        &[
            "pull",
            &format!("aws://us-east-1/{snap}"),
            "-o",
            pulled.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = stamp(&["compare", raw.to_str().unwrap(), pulled.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // The same name again fails before uploading anything, unless --reuse.
    let before = proxy.requests().len();
    let r = at(
        &proxy,
        tmp.path(),
        &["push", raw.to_str().unwrap(), &target],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("already exists") && r.stderr.contains("--reuse"),
        "{}",
        r.stderr
    );
    assert!(
        !proxy.requests()[before..]
            .iter()
            .any(|l| l.contains("/snapshots")),
        "nothing is uploaded for a name that exists"
    );
    let r = at(
        &proxy,
        tmp.path(),
        &["push", raw.to_str().unwrap(), &target, "--reuse", "--json"],
    );
    let v = json(&r);
    assert_eq!(v["image_id"], ami.as_str());
    assert_eq!(v["reused"], true);

    // 6. stamp rmi removes the AMI.
    let r = at(
        &proxy,
        tmp.path(),
        &["rmi", &format!("aws://us-east-1/{ami}")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let left = boto3(
        &proxy.url,
        &format!(
            "print(len(ec2.describe_images(Owners=['self'], Filters=[{{'Name': 'name', 'Values': ['{name}']}}])['Images']))"
        ),
    );
    assert_eq!(left, "0");
}

#[test]
fn push_shares_and_copies_to_other_regions() {
    if !have_moto() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("small.raw");
    let mut d = vec![0u8; 1 << 20];
    d[..4096].fill(7);
    std::fs::write(&disk, &d).unwrap();
    let proxy = Proxy::start(Vec::new());
    let name = format!("stamp-copy-{}", std::process::id());
    let r = at(
        &proxy,
        tmp.path(),
        &[
            "push",
            disk.to_str().unwrap(),
            &format!("aws://{name}"),
            "--grant",
            "123456789012",
            "--copy-to",
            "eu-west-1",
            "--json",
        ],
    );
    let v = json(&r);
    let ami = v["image_id"].as_str().unwrap();
    let copy = &v["copies"][0];
    assert_eq!(copy["region"], "eu-west-1");
    let copy_id = copy["image_id"].as_str().unwrap();
    let modify = proxy.forms("ModifyImageAttribute");
    assert!(
        modify
            .iter()
            .any(|f| f.contains(ami) && f.contains("LaunchPermission.Add.1.UserId=123456789012")),
        "{modify:?}"
    );
    let snap_perm = proxy.forms("ModifySnapshotAttribute");
    assert!(
        snap_perm
            .iter()
            .any(|f| f.contains("CreateVolumePermission.Add.1.UserId=123456789012")),
        "{snap_perm:?}"
    );
    // CopyImage was sent to eu-west-1 (the region signed into the request) naming the source.
    let copies: Vec<_> = proxy
        .recorded()
        .into_iter()
        .filter(|r| r.action() == Some("CopyImage"))
        .collect();
    assert_eq!(copies.len(), 1);
    assert!(
        copies[0].credential.contains("/eu-west-1/ec2/"),
        "{copies:?}"
    );
    assert!(copies[0].form.contains(&format!("SourceImageId={ami}")));
    assert!(copies[0].form.contains("SourceRegion=us-east-1"));
    let there = boto3_in(
        &proxy.url,
        "eu-west-1",
        &format!("print(ec2.describe_images(ImageIds=['{copy_id}'])['Images'][0]['Name'])"),
    );
    assert_eq!(there, name);
}

/// Waits until `cond` holds (or panics after a minute).
pub(crate) fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The snapshot id in the first PutSnapshotBlock the proxy saw.
fn first_put_snapshot(proxy: &Proxy) -> Option<String> {
    proxy.requests().iter().find_map(|l| {
        let rest = l.strip_prefix("PUT /snapshots/")?;
        Some(rest.split('/').next()?.to_string())
    })
}

#[test]
fn interrupted_or_failed_push_deletes_its_snapshot() {
    if !have_moto() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("data.raw");
    std::fs::write(&disk, vec![0x11u8; 2 << 20]).unwrap();
    let d = disk.to_str().unwrap();

    // 4a. SIGINT and SIGTERM during the upload (each block held 20 ms by the proxy).
    for signal in ["INT", "TERM"] {
        let proxy = Proxy::start_with(
            Vec::new(),
            vec![("PUT /snapshots/".into(), Duration::from_millis(20))],
        );
        let name = format!("stamp-sig{signal}-{}", std::process::id());
        let mut c = stamp_env(
            tmp.path(),
            &[
                "push",
                d,
                &format!("aws://{name}"),
                "--endpoint-url",
                &proxy.url,
                "--jobs",
                "2",
            ],
            &[],
        );
        let child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for("the first block", || first_put_snapshot(&proxy).is_some());
        let snap = first_put_snapshot(&proxy).unwrap();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let r: Run = child.wait_with_output().unwrap().into();
        assert_eq!(r.code, 130, "SIG{signal}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!("deleted snapshot {snap}")),
            "SIG{signal}: {}",
            r.stderr
        );
        assert!(
            !snapshot_exists(&proxy.url, &snap),
            "{snap} is left after SIG{signal}"
        );
        assert!(proxy.forms("RegisterImage").is_empty());
    }

    // A SIGKILL leaves the snapshot, tagged incomplete with the run; `stamp rmi --incomplete`
    // finds and removes it. (A region of its own: no other test's push is touched.)
    let proxy = Proxy::start_with(
        Vec::new(),
        vec![("PUT /snapshots/".into(), Duration::from_millis(20))],
    );
    let mut c = stamp_env(
        tmp.path(),
        &[
            "push",
            d,
            "aws://ap-northeast-1/stamp-killed",
            "--endpoint-url",
            &proxy.url,
            "--jobs",
            "2",
        ],
        &[],
    );
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the first block", || first_put_snapshot(&proxy).is_some());
    child.kill().unwrap();
    child.wait().unwrap();
    let snap = first_put_snapshot(&proxy).unwrap();
    let tags = boto3_in(
        &proxy.url,
        "ap-northeast-1",
        &format!(
            "s = ec2.describe_snapshots(SnapshotIds=['{snap}'])['Snapshots'][0]\n\
             print(sorted(t['Key'] + '=' + t['Value'] for t in s.get('Tags', [])))"
        ),
    );
    assert!(
        tags.contains("stamp:incomplete=true") && tags.contains("stamp:run="),
        "{tags}"
    );
    let r = at(
        &proxy,
        tmp.path(),
        &["rmi", "--incomplete", "aws://ap-northeast-1"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(&snap), "{}", r.stdout);
    let gone = boto3_in(
        &proxy.url,
        "ap-northeast-1",
        &format!(
            "try:\n    ec2.describe_snapshots(SnapshotIds=['{snap}'])\n    print('left')\n\
             except botocore.exceptions.ClientError as x:\n    print(x.response['Error']['Code'])"
        ),
    );
    assert_eq!(gone, "InvalidSnapshot.NotFound");

    // 4b. RegisterImage fails: the uploaded snapshot is deleted and the error says so.
    let proxy = Proxy::start(vec![Fault {
        matching: "Action=RegisterImage".into(),
        times: 1,
        status: 400,
        headers: Vec::new(),
        body: "<Response><Errors><Error><Code>InvalidParameterValue</Code><Message>injected by the test</Message></Error></Errors><RequestID>x</RequestID></Response>".into(),
    }]);
    let name = format!("stamp-regfail-{}", std::process::id());
    let r = at(&proxy, tmp.path(), &["push", d, &format!("aws://{name}")]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(proxy.unused_faults(), 0);
    let snap = first_put_snapshot(&proxy).unwrap();
    assert!(r.stderr.contains("injected by the test"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("deleted snapshot {snap}")),
        "{}",
        r.stderr
    );
    assert!(
        !snapshot_exists(&proxy.url, &snap),
        "{snap} is left after a failed RegisterImage"
    );
}

#[test]
fn credentials_and_region_come_from_flags_environment_and_profiles() {
    if !have_moto() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let aws = home.path().join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s\n\
         [ops]\naws_access_key_id = AKIDOPS\naws_secret_access_key = s\n",
    )
    .unwrap();
    std::fs::write(
        aws.join("config"),
        "[default]\nregion = us-east-1\n[profile ops]\nregion = eu-west-3\n",
    )
    .unwrap();
    let proxy = Proxy::start(Vec::new());
    // Each case: extra args, whether the environment has keys, extra environment, and the
    // key and region the request must be signed with.
    type Case<'a> = (
        &'a [&'a str],
        bool,
        &'a [(&'a str, &'a str)],
        &'a str,
        &'a str,
    );
    let cases: [Case; 5] = [
        // The environment's keys and region.
        (&[], true, &[], "testing", "us-east-1"),
        // Flags beat the environment.
        (
            &[
                "--access-key",
                "AKIDFLAG",
                "--secret-key",
                "s",
                "--region",
                "ap-south-1",
            ],
            true,
            &[],
            "AKIDFLAG",
            "ap-south-1",
        ),
        // The default profile's keys and its region from ~/.aws/config.
        (&[], false, &[], "AKIDDEFAULT", "us-east-1"),
        // --profile and AWS_PROFILE pick another profile; its region comes with it.
        (&["--profile", "ops"], false, &[], "AKIDOPS", "eu-west-3"),
        (
            &[],
            false,
            &[("AWS_PROFILE", "ops")],
            "AKIDOPS",
            "eu-west-3",
        ),
    ];
    for (args, env_keys, env, key, region) in cases {
        let before = proxy.recorded().len();
        let mut all = vec!["images", "--remote", "aws", "--endpoint-url", &proxy.url];
        all.extend_from_slice(args);
        let mut c = stamp_env(home.path(), &all, env);
        if !env_keys {
            c.env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env_remove("AWS_REGION");
        }
        let r = run(c);
        assert_eq!(r.code, 0, "{args:?} {env:?}: {}", r.stderr);
        let cred = proxy.recorded()[before].credential.clone();
        assert!(
            cred.starts_with(&format!("{key}/")) && cred.contains(&format!("/{region}/ec2/")),
            "{args:?} {env:?}: signed with {cred}, not {key} in {region}"
        );
    }
    // No credentials anywhere: a clear message naming where stamp looked, exit 1.
    let empty = tempfile::tempdir().unwrap();
    let mut c = stamp_env(
        empty.path(),
        &["images", "--remote", "aws", "--endpoint-url", &proxy.url],
        &[],
    );
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let r = run(c);
    assert_eq!(r.code, 1, "{}", r.stderr);
    for want in [
        "AWS_ACCESS_KEY_ID",
        ".aws/credentials",
        "--access-key",
        "aws configure",
    ] {
        assert!(r.stderr.contains(want), "lacks {want}: {}", r.stderr);
    }
}
