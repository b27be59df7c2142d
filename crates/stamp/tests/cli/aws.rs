//! `stamp images --remote aws`, `stamp rmi aws://…`, `stamp rmi --incomplete` and
//! `stamp pull aws://…` against moto_server (EC2 and EBS direct emulated), with boto3 making and
//! checking AMIs and snapshots. Each test that lists or removes by tag works in a region of its
//! own: moto is shared by every test of this binary (the push tests too).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::aws_support;
use crate::common::{Run, s, temp_leftovers, tmp};

/// Whether moto_server is installed (the tests are skipped without it).
pub(crate) fn have_moto() -> bool {
    if Command::new("moto_server").arg("--help").output().is_err() {
        eprintln!("skipped: moto_server is not installed (scripts/install-test-deps.sh)");
        return false;
    }
    true
}

/// Runs a boto3 snippet in `region` with `ec2`, `ebs` and `s3` bound to clients of the moto server;
/// returns its stdout.
pub(crate) fn boto3_in(url: &str, region: &str, code: &str) -> String {
    let script = format!(
        "import boto3, botocore\n\
         kw = dict(endpoint_url='{url}', region_name='{region}', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
         ec2 = boto3.client('ec2', **kw)\nebs = boto3.client('ebs', **kw)\ns3 = boto3.client('s3', **kw)\n{code}"
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

/// [`boto3_in`] us-east-1 (moto's RegisterImage keeps only the name and makes its own
/// snapshot, so the tests read the AMI back for it).
pub(crate) fn boto3(url: &str, code: &str) -> String {
    boto3_in(url, "us-east-1", code)
}

/// Runs stamp against `url` with dummy keys and the AMI listing cache in `cache`.
fn stamp_cached(url: &str, cache: &Path, args: &[&str]) -> Run {
    Command::new(env!("CARGO_BIN_EXE_stamp"))
        .args(args)
        .args(["--endpoint-url", url])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("XDG_CACHE_HOME", cache)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .output()
        .unwrap()
        .into()
}

/// Runs stamp against the moto server with dummy keys (and a throw-away listing cache).
fn stamp_aws(url: &str, args: &[&str]) -> Run {
    let cache = tmp();
    stamp_cached(url, cache.path(), args)
}

/// A TCP forwarder to moto that can be stopped (its port then refuses connections), rewrite
/// one byte string of the answers into another of the same length, slow answers down, and
/// count the GetSnapshotBlock requests it passed.
struct Forwarder {
    url: String,
    stop: Arc<AtomicBool>,
    block_gets: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    fn start(rewrite: Option<(String, String)>, delay: Duration) -> Forwarder {
        if let Some((a, b)) = &rewrite {
            assert_eq!(a.len(), b.len(), "rewrites keep Content-Length");
        }
        let upstream = aws_support::moto()
            .url
            .trim_start_matches("http://")
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let block_gets = Arc::new(AtomicUsize::new(0));
        let (stop2, gets) = (stop.clone(), block_gets.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        let (up, rw, g) = (upstream.clone(), rewrite.clone(), gets.clone());
                        std::thread::spawn(move || forward(conn, &up, rw, delay, &g));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // The listener is dropped here: new connections are refused.
        });
        Forwarder {
            url,
            stop,
            block_gets,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies one connection both ways; see [`Forwarder`].
fn forward(
    client: TcpStream,
    upstream: &str,
    rewrite: Option<(String, String)>,
    delay: Duration,
    block_gets: &AtomicUsize,
) {
    let Ok(up) = TcpStream::connect(upstream) else {
        return;
    };
    let (mut from_client, mut to_up) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    std::thread::scope(|sc| {
        sc.spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match from_client.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                let gets = chunk
                    .windows(b"/blocks/".len())
                    .filter(|w| w == b"/blocks/")
                    .count();
                block_gets.fetch_add(gets, Ordering::SeqCst);
                if to_up.write_all(chunk).is_err() {
                    break;
                }
            }
            let _ = to_up.shutdown(std::net::Shutdown::Write);
        });
        let (mut from_up, mut to_client) = (up, client);
        let mut buf = vec![0u8; 1 << 16];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = match from_up.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            let mut keep = 0;
            if let Some((a, b)) = &rewrite {
                let (a, b) = (a.as_bytes(), b.as_bytes());
                let mut i = 0;
                while i + a.len() <= pending.len() {
                    if &pending[i..i + a.len()] == a {
                        pending[i..i + a.len()].copy_from_slice(b);
                        i += a.len();
                    } else {
                        i += 1;
                    }
                }
                // Hold back a tail that may be the start of `a` split across reads.
                keep = (1..a.len())
                    .rev()
                    .find(|&k| k <= pending.len() && pending.ends_with(&a[..k]))
                    .unwrap_or(0);
            }
            let send = pending.len() - keep;
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            if to_client.write_all(&pending[..send]).is_err() {
                break;
            }
            pending.drain(..send);
        }
        let _ = to_client.write_all(&pending);
        let _ = to_client.shutdown(std::net::Shutdown::Write);
    });
}

/// Writes a 1 GiB sparse raw disk with a known pattern in a few places (64 KiB at the start
/// with 2 KiB of zeros inside, 20 KiB unaligned in the middle, the last 512 bytes); returns
/// how many 512-byte blocks (moto's EBS block size) are not all zeros.
fn make_disk(path: &Path) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(1 << 30).unwrap();
    let pattern = |off: u64, len: usize| -> Vec<u8> {
        (0..len)
            .map(|i| ((off + i as u64) * 31 % 251) as u8 | 1)
            .collect()
    };
    let mut first = pattern(0, 64 << 10);
    first[16 << 10..18 << 10].fill(0);
    f.write_all_at(&first, 0).unwrap();
    let mid = 300 * (1 << 20) + 100;
    f.write_all_at(&pattern(mid, 20 << 10), mid).unwrap();
    f.write_all_at(&pattern((1 << 30) - 512, 512), (1 << 30) - 512)
        .unwrap();
    124 + (100 + (20u64 << 10)).div_ceil(512) + 1
}

/// Uploads `disk` into a new EBS snapshot in us-east-1 (stamp-aws's EBS direct upload);
/// returns its id.
fn upload(disk: &Path) -> String {
    let reader = stamp_disk::open(disk, None).unwrap();
    let report = stamp_aws::ebs::upload(
        &aws_support::client(),
        reader.as_ref(),
        &stamp_aws::ebs::UploadOptions::default(),
        &|_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    report.snapshot_id
}

/// `stamp compare a b` says identical.
fn assert_same(a: &Path, b: &Path) {
    let r = crate::common::stamp(&["compare", s(a), s(b)]);
    assert_eq!(
        r.code,
        0,
        "{} and {} differ: {}{}",
        a.display(),
        b.display(),
        r.stdout,
        r.stderr
    );
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

#[test]
fn pull_writes_a_snapshot_or_an_ami_as_the_disk_that_was_uploaded() {
    if !have_moto() {
        return;
    }
    let url = &aws_support::moto().url;
    let d = tmp();
    let src = d.path().join("src.raw");
    let nonzero = make_disk(&src);
    let snap = upload(&src);

    // To qcow2 (from the extension): the same content, a clean image.
    let qcow2 = d.path().join("back.qcow2");
    let r = stamp_aws(
        url,
        &["pull", &format!("aws://us-east-1/{snap}"), "-o", s(&qcow2)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout.trim(),
        format!(
            "Pulled {snap} (1 GiB, {nonzero} blocks) to {}",
            qcow2.display()
        )
    );
    let check = crate::common::qemu_img(&["check", s(&qcow2)]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    let info = crate::common::qemu_ok(&["info", "--output=json", s(&qcow2)]);
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
    assert_same(&src, &qcow2);

    // To raw, forced with -O whatever the name; --json reports what was fetched.
    let raw = d.path().join("back.bin");
    let r = stamp_aws(
        url,
        &[
            "pull",
            &format!("aws://{snap}"),
            "--region",
            "us-east-1",
            "-O",
            "raw",
            "-o",
            s(&raw),
            "--json",
            "--jobs",
            "3",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["snapshot_id"], snap.as_str());
    assert_eq!(v["image_id"], serde_json::Value::Null);
    assert_eq!(v["format"], "raw");
    assert_eq!(v["virtual_size"], 1u64 << 30);
    assert_eq!(v["blocks"], nonzero);
    assert_eq!(v["bytes"], nonzero * 512);
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 1 << 30);
    assert_same(&src, &raw);

    // An AMI: its root device's snapshot. moto's RegisterImage ignores the block device
    // mapping and makes a snapshot of its own, so a forwarder puts ours in its place in the
    // answers, as AWS would give it.
    let ids = boto3(
        url,
        &format!(
            "i = ec2.register_image(Name='stamp-pull-{}', RootDeviceName='/dev/xvda', \
             BlockDeviceMappings=[{{'DeviceName': '/dev/xvda', 'Ebs': {{'SnapshotId': '{snap}'}}}}])\n\
             d = ec2.describe_images(ImageIds=[i['ImageId']])['Images'][0]\n\
             print(i['ImageId'], d['BlockDeviceMappings'][0]['Ebs']['SnapshotId'])",
            std::process::id()
        ),
    );
    let (ami, moto_snap) = ids.split_once(' ').unwrap();
    let fwd = Forwarder::start(Some((moto_snap.to_string(), snap.clone())), Duration::ZERO);
    let vmdk = d.path().join("ami.vmdk");
    let r = stamp_aws(
        &fwd.url,
        &["pull", &format!("aws://us-east-1/{ami}"), "-o", s(&vmdk)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout.trim(),
        format!(
            "Pulled {ami} ({snap}, 1 GiB, {nonzero} blocks) to {}",
            vmdk.display()
        )
    );
    assert!(fwd.block_gets.load(Ordering::SeqCst) >= nonzero as usize);
    assert_same(&src, &vmdk);
    assert!(temp_leftovers(d.path()).is_empty());
}

#[test]
fn pull_refuses_bad_ids_and_a_missing_output_without_writing_anything() {
    if !have_moto() {
        return;
    }
    let url = &aws_support::moto().url;
    let d = tmp();
    let out = d.path().join("o.qcow2");
    let o = s(&out);
    for (reference, says) in [
        (
            "aws://us-east-1/snap-0123456789abcdef0",
            "snap-0123456789abcdef0",
        ),
        (
            "aws://us-east-1/ami-0123456789abcdef0",
            "ami-0123456789abcdef0",
        ),
        ("aws://us-east-1/vol-0123", "is not an AMI id"),
        ("aws://us-east-1", "aws://[REGION/]ami-"),
    ] {
        let r = stamp_aws(url, &["pull", reference, "-o", o]);
        assert_eq!(r.code, 1, "{reference}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(says), "{reference}: {}", r.stderr);
    }
    // -o is required for aws://: a usage error.
    let r = stamp_aws(url, &["pull", "aws://us-east-1/snap-0123456789abcdef0"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("-o OUT"), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
}

#[test]
fn interrupting_a_pull_exits_130_and_leaves_no_file() {
    if !have_moto() {
        return;
    }
    let d = tmp();
    let src = d.path().join("src.raw");
    make_disk(&src);
    let snap = upload(&src);
    // One block at a time through a slow forwarder: the pull takes tens of seconds.
    let fwd = Forwarder::start(None, Duration::from_millis(150));
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let cache = tmp();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stamp"))
        .args([
            "pull",
            &format!("aws://us-east-1/{snap}"),
            "--jobs",
            "1",
            "-o",
        ])
        .arg(out.join("o.qcow2"))
        .args(["--endpoint-url", &fwd.url])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("XDG_CACHE_HOME", cache.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until blocks are being fetched, then Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fwd.block_gets.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        assert!(child.try_wait().unwrap().is_none(), "stamp ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 130, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("interrupted"), "{}", r.stderr);
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn the_listing_is_cached_for_offline_use_and_for_when_aws_is_unreachable() {
    if !have_moto() {
        return;
    }
    // A region of its own: the listing holds only this test's AMIs.
    const REGION: &str = "eu-north-1";
    let url = &aws_support::moto().url;
    let cache = tmp();
    let ids = boto3_in(
        url,
        REGION,
        "a = ec2.register_image(Name='stamp-cache-a')['ImageId']\n\
         b = ec2.register_image(Name='stamp-cache-b')['ImageId']\n\
         print(a, b)",
    );
    let (a, b) = ids.split_once(' ').unwrap();
    let mut fwd = Forwarder::start(None, Duration::ZERO);
    let location = format!("aws://{REGION}");
    let listed = |r: &Run| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };

    let r = stamp_cached(
        &fwd.url,
        cache.path(),
        &["images", "--remote", &location, "--json"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut both = [a, b];
    both.sort();
    assert_eq!(listed(&r), both);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let port = fwd.url.rsplit(':').next().unwrap();
    let file = cache
        .path()
        .join(format!("stamp/aws/127.0.0.1_{port}/{REGION}.json"));
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved["region"], REGION);
    assert_eq!(saved["images"].as_array().unwrap().len(), 2);

    // rmi takes the AMI out of the cached listing too.
    let r = stamp_cached(
        &fwd.url,
        cache.path(),
        &["rmi", &format!("aws://{REGION}/{a}")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    // --offline: no network and no credentials needed.
    let offline = |args: &[&str]| -> Run {
        Command::new(env!("CARGO_BIN_EXE_stamp"))
            .args(args)
            .args(["--endpoint-url", &fwd.url])
            .env("XDG_CACHE_HOME", cache.path())
            .env("HOME", "/nonexistent")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .output()
            .unwrap()
            .into()
    };
    let r = offline(&["images", "--remote", &location, "--offline", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(listed(&r), [b]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["cached_at"], saved["fetched"]);
    // A region never listed: nothing cached, said so.
    let r = offline(&["images", "--remote", "aws://eu-south-2", "--offline"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no cached listing"), "{}", r.stderr);

    // AWS unreachable (the forwarder's port refuses connections): the cached listing, with a
    // warning that says when it was fetched.
    fwd.stop();
    let r = stamp_cached(&fwd.url, cache.path(), &["images", "--remote", &location]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(b) && !r.stdout.contains(a),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("AWS cannot be reached")
            && r.stderr.contains(saved["fetched"].as_str().unwrap()),
        "{}",
        r.stderr
    );
    // An API error is not hidden behind the cache: bad credentials fail.
    let r = Command::new(env!("CARGO_BIN_EXE_stamp"))
        .args(["images", "--remote", &location, "--endpoint-url", url])
        .env("XDG_CACHE_HOME", cache.path())
        .env("HOME", "/nonexistent")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
}

#[test]
fn rmi_incomplete_removes_only_what_interrupted_pushes_left() {
    if !have_moto() {
        return;
    }
    // A region of its own: nothing another test (a push in progress) tagged is touched.
    const REGION: &str = "eu-west-3";
    let url = &aws_support::moto().url;
    let tag = "[{'Key': 'stamp:incomplete', 'Value': 'true'}, {'Key': 'stamp:run', 'Value': 'r1'}]";
    let ids = boto3_in(
        url,
        REGION,
        &format!(
            "t = ebs.start_snapshot(VolumeSize=1, Tags={tag})['SnapshotId']\n\
             u = ebs.start_snapshot(VolumeSize=1)['SnapshotId']\n\
             f = ebs.start_snapshot(VolumeSize=1, Tags=[{{'Key': 'stamp:incomplete', 'Value': 'false'}}])['SnapshotId']\n\
             ti = ec2.register_image(Name='stamp-incomplete')['ImageId']\n\
             ec2.create_tags(Resources=[ti], Tags={tag})\n\
             ts = ec2.describe_images(ImageIds=[ti])['Images'][0]['BlockDeviceMappings'][0]['Ebs']['SnapshotId']\n\
             ui = ec2.register_image(Name='stamp-complete')['ImageId']\n\
             print(t, u, f, ti, ts, ui)"
        ),
    );
    let v: Vec<&str> = ids.split(' ').collect();
    let [t, u, f, ti, ts, ui] = v[..] else {
        panic!("{ids}")
    };
    let location = format!("aws://{REGION}");
    let r = stamp_aws(url, &["rmi", "--incomplete", &location, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["deregistered"], serde_json::json!([ti]));
    let mut deleted: Vec<&str> = j["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    deleted.sort();
    let mut expected = vec![t, ts];
    expected.sort();
    assert_eq!(deleted, expected);
    let left = boto3_in(
        url,
        REGION,
        "ims = sorted(i['ImageId'] for i in ec2.describe_images(Owners=['self'])['Images'])\n\
         snaps = sorted(s['SnapshotId'] for s in ec2.describe_snapshots(OwnerIds=['self'])['Snapshots'])\n\
         print(' '.join(ims), '|', ' '.join(snaps))",
    );
    let (images, snaps) = left.split_once(" | ").unwrap();
    assert_eq!(images, ui);
    for kept in [u, f] {
        assert!(snaps.contains(kept), "{kept} was removed: {snaps}");
    }
    for gone in [t, ts] {
        assert!(!snaps.contains(gone), "{gone} is still there: {snaps}");
    }
    // Nothing left to remove: said so, exit 0.
    let r = stamp_aws(url, &["rmi", "--incomplete", &location]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout.trim(),
        format!("No incomplete AMIs or snapshots in {REGION}.")
    );
    // Text output names each removed id.
    boto3_in(
        url,
        REGION,
        &format!("print(ebs.start_snapshot(VolumeSize=1, Tags={tag})['SnapshotId'])"),
    );
    let r = stamp_aws(url, &["rmi", "--incomplete", &location]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("Deleted: snap-"), "{}", r.stdout);
}
