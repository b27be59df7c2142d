//! Acceptance tests of `stamp serve`, the EC2-compatible VM Import/Export service: the real
//! binary on a free loopback port, driven by boto3 and the AWS CLI; its stored snapshots and
//! exports checked by qemu-img and `stamp compare`; kill -9 mid-conversion on SQLite and
//! PostgreSQL; two processes on one PostgreSQL database; the scratch quota; TLS; objects in S3
//! (moto); a stamp-built Debian disk imported and exported.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::common::{qemu_ok, s, stamp, tmp};
use crate::http_support::http_server;
use crate::pg_support;

/// The access keys every test gives `--credentials`: two tenants.
const CREDS: &str = "AKIDTENANTONE0000001 secret-one tenant-one\n\
                     AKIDTENANTTWO0000002 secret-two tenant-two\n";

/// Client helpers shared by every scenario (prepended to each python script). A scenario gets
/// its arguments as JSON in `A` and prints its findings as JSON with `done(...)`.
const PY: &str = r#"
import boto3, botocore, json, os, subprocess, sys, time, urllib.request
from botocore.config import Config
A = json.loads(sys.argv[1])
KEYS = {1: ("AKIDTENANTONE0000001", "secret-one"), 2: ("AKIDTENANTTWO0000002", "secret-two")}
def client(ep, tenant=1, secret=None, verify=None):
    # verify: the CA bundle of an https endpoint.
    k, s = KEYS[tenant]
    return boto3.client("ec2", endpoint_url=ep, region_name="us-east-1",
        aws_access_key_id=k, aws_secret_access_key=secret or s, verify=verify,
        config=Config(retries={"max_attempts": 1}))
def s3(ep):
    # An S3 client of moto (any keys).
    return boto3.client("s3", endpoint_url=ep, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing")
def code(f, *a, **kw):
    try:
        f(*a, **kw)
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError("no error from %s %s" % (f, kw))
def aws(ep, *args, tenant=1, ca=None):
    # ca: the CA bundle of an https endpoint (AWS_CA_BUNDLE).
    k, s = KEYS[tenant]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=k, AWS_SECRET_ACCESS_KEY=s,
               AWS_DEFAULT_REGION="us-east-1", AWS_MAX_ATTEMPTS="1")
    for v in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
              "AWS_CA_BUNDLE"):
        env.pop(v, None)
    if ca:
        env["AWS_CA_BUNDLE"] = ca
    r = subprocess.run(["aws", "--endpoint-url", ep, "--output", "json", "ec2", *args],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, ("aws", args, r.stdout[-2000:], r.stderr[-2000:])
    return json.loads(r.stdout) if r.stdout.strip() else {}
def until(f, what):
    # Polls f until it returns something; a generous bound so a broken service fails, not hangs.
    end = time.time() + 240
    while True:
        v = f()
        if v is not None:
            return v
        assert time.time() < end, "gave up waiting for " + what
        time.sleep(0.1)
def ended(v, key, words=("completed", "deleted", "cancelled")):
    return v if v.get(key) in words else None
def snap_task(c, t):
    d = c.describe_import_snapshot_tasks(ImportTaskIds=[t])["ImportSnapshotTasks"][0]
    return d
def wait_snap(c, t):
    return until(lambda: (lambda d: d if d["SnapshotTaskDetail"].get("Status") in ("completed", "deleted") else None)(snap_task(c, t)), t)
def wait_image(c, t):
    return until(lambda: ended(c.describe_import_image_tasks(ImportTaskIds=[t])["ImportImageTasks"][0], "Status"), t)
def wait_conv(c, t):
    return until(lambda: ended(c.describe_conversion_tasks(ConversionTaskIds=[t])["ConversionTasks"][0], "State"), t)
def wait_export_image(c, t):
    return until(lambda: ended(c.describe_export_image_tasks(ExportImageTaskIds=[t])["ExportImageTasks"][0], "Status"), t)
def wait_export(c, t):
    return until(lambda: ended(c.describe_export_tasks(ExportTaskIds=[t])["ExportTasks"][0], "State"), t)
def src(bucket, key, fmt):
    return {"Format": fmt, "UserBucket": {"S3Bucket": bucket, "S3Key": key}}
def done(v):
    print("RESULT " + json.dumps(v))
"#;

/// Runs a python scenario (after [`PY`]) with `args`; returns what it passed to `done`.
fn py(script: &str, args: &Value) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{PY}\n{script}"))
        .arg(args.to_string())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python scenario failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT from the scenario: {stdout}"));
    serde_json::from_str(line).unwrap()
}

/// One `stamp serve` process; killed (SIGKILL) and reaped on drop.
struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// kill -9, and wait for it to be gone.
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `sig` (`STOP`, `CONT`) to the process.
    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// A service's directories: objects (buckets are subdirectories), scratch, the credentials.
struct Rig {
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        let dir = tmp();
        for d in ["objects/src", "scratch", "www"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("creds"), CREDS).unwrap();
        Rig { dir }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn objects(&self) -> PathBuf {
        self.path("objects")
    }
    fn sqlite(&self) -> String {
        format!("sqlite:{}", s(&self.path("serve.db")))
    }
    /// Starts `stamp serve` on a free port with `db`, the rig's objects and scratch, `extra`.
    fn serve(&self, db: &str, extra: &[&str]) -> Serve {
        self.serve_with(db, s(&self.objects()), extra, &[])
    }
    /// [`Rig::serve`] with `--objects objects` and `env` set (and the AWS profile variables
    /// removed) in its environment.
    fn serve_with(&self, db: &str, objects: &str, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("serve.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_stamp"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--db",
                db,
                "--objects",
                objects,
                "--credentials",
                s(&self.path("creds")),
                "--scratch",
                s(&self.path("scratch")),
                "--allow-private-urls",
            ])
            .args(extra)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_CONFIG_FILE")
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .env_remove("AWS_SESSION_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start stamp serve");
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let n = reader.read_line(&mut line).unwrap_or(0);
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .map(str::to_string);
        let Some(url) = url.filter(|_| n > 0) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "stamp serve did not start: {line:?}\n{}",
                std::fs::read_to_string(self.path("serve.log")).unwrap_or_default()
            );
        };
        // Keep draining stdout so that the process never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        Serve { child, url }
    }
    /// Puts `file` into bucket `src` as `key`.
    fn put(&self, key: &str, file: &Path) {
        std::fs::copy(file, self.path("objects/src").join(key)).unwrap();
    }
    /// The stored snapshot files: `snap-….qcow2` anywhere under `objects/.stamp-serve`
    /// (the store keeps them as `.stamp-serve/stamp-serve/snapshots/ID.qcow2`).
    fn snapshots(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.objects().join(".stamp-serve")];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if p.is_dir() {
                    stack.push(p);
                } else if name.starts_with("snap-") && name.ends_with(".qcow2") {
                    found.push(p);
                }
            }
        }
        found.sort();
        found
    }
    /// The stored file of snapshot `id`.
    fn snapshot(&self, id: &str) -> PathBuf {
        let name = format!("{id}.qcow2");
        let all = self.snapshots();
        let found: Vec<&PathBuf> = all
            .iter()
            .filter(|p| p.file_name().is_some_and(|n| *n == *name))
            .collect();
        assert_eq!(found.len(), 1, "snapshot {id}: {all:?}");
        found[0].clone()
    }
}

/// The value of the unlabelled `name` in `url`'s /metrics.
fn metric(url: &str, name: &str) -> u64 {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())",
            &format!("{url}/metrics"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics: {text}"))
}

fn sh(script: &str) {
    let st = Command::new("sh").args(["-ec", script]).status().unwrap();
    assert!(st.success(), "{script}");
}

/// `stamp compare A B` says equal.
fn same(a: &Path, b: &Path) {
    let r = stamp(&["compare", s(a), s(b)]);
    assert_eq!(
        r.code,
        0,
        "stamp compare {} {}: {}{}",
        a.display(),
        b.display(),
        r.stdout,
        r.stderr
    );
}

/// A real-world fixture of tests/fixtures/disk-images (see its MANIFEST.tsv), gunzipped into
/// `dir`.
fn shared_fixture(rel: &str, dir: &Path) -> PathBuf {
    let src = crate::common::fixtures().join(rel);
    let name = src.file_name().unwrap().to_str().unwrap();
    if let Some(base) = name.strip_suffix(".gz") {
        let out = dir.join(base);
        sh(&format!("gunzip -c '{}' > '{}'", s(&src), s(&out)));
        out
    } else {
        let out = dir.join(name);
        std::fs::copy(&src, &out).unwrap();
        out
    }
}

/// A raw disk of `mib` MiB of random data.
fn random_raw(path: &Path, mib: u64) {
    sh(&format!("head -c {}M /dev/urandom > '{}'", mib, s(path)));
}

/// A UEFI-bootable disk made by `stamp mkdisk` (VMDK).
fn boot_vmdk(dir: &Path) -> PathBuf {
    let esp = dir.join("espdir");
    let root = dir.join("rootdir");
    std::fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(esp.join("EFI/BOOT/BOOTX64.EFI"), vec![0x4d; 40_000]).unwrap();
    std::fs::write(root.join("etc/hostname"), "served\n").unwrap();
    let out = dir.join("boot.vmdk");
    let r = stamp(&[
        "mkdisk",
        "-o",
        s(&out),
        "-O",
        "vmdk",
        "--part",
        &format!("esp:64M:{}", s(&esp)),
        "--part",
        &format!("root:32M:{}", s(&root)),
    ]);
    assert_eq!(r.code, 0, "mkdisk: {}", r.stderr);
    out
}

/// An import manifest for `raw` cut in `n` parts, served from `www` at `http`.
fn manifest(raw: &Path, www: &Path, http: &str, name: &str, n: usize) -> String {
    let bytes = std::fs::read(raw).unwrap();
    let step = bytes.len().div_ceil(n);
    let mut parts = String::new();
    for i in 0..n {
        let (a, b) = (i * step, ((i + 1) * step).min(bytes.len()));
        std::fs::write(www.join(format!("{name}.part{i}")), &bytes[a..b]).unwrap();
        parts.push_str(&format!(
            "<part index=\"{i}\"><byte-range start=\"{a}\" end=\"{}\"/><key>{name}.part{i}</key>\
             <get-url>{http}/{name}.part{i}</get-url></part>",
            b - 1
        ));
    }
    let xml = format!(
        "<?xml version=\"1.0\"?><manifest><version>2010-11-15</version><file-format>RAW</file-format>\
         <import><size>{}</size><volume-size>1</volume-size><parts count=\"{n}\">{parts}</parts></import></manifest>",
        bytes.len()
    );
    std::fs::write(www.join(format!("{name}.manifest.xml")), xml).unwrap();
    format!("{http}/{name}.manifest.xml")
}

/// The one file under `dir` (recursively) whose name contains `id`.
fn output_of(dir: &Path, id: &str) -> PathBuf {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().contains(id) {
                found.push(p);
            }
        }
    }
    assert_eq!(
        found.len(),
        1,
        "outputs of {id} in {}: {found:?}",
        dir.display()
    );
    found.remove(0)
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

const EVERY_ACTION: &str = r#"
ep = A["ep"]; c = client(ep); out = {}
# Imports: a VMware VMDK by boto3, a VHD by the CLI, a stamp-built UEFI disk by the CLI (ImportImage).
t_vmdk = c.import_snapshot(Description="vmware", DiskContainer=src("src", "ws.vmdk", "VMDK"))["ImportTaskId"]
t_vhd = aws(ep, "import-snapshot", "--disk-container",
            json.dumps(src("src", "ext2.vhd", "VHD")))["ImportTaskId"]
t_vhdx = c.import_snapshot(DiskContainer=src("src", "made.vhdx", "VHDX"))["ImportTaskId"]
t_img = aws(ep, "import-image", "--description", "boot",
            "--disk-containers", json.dumps([src("src", "boot.vmdk", "VMDK")]))["ImportTaskId"]
snaps = {}
for name, t in (("vmdk", t_vmdk), ("vhd", t_vhd), ("vhdx", t_vhdx)):
    d = wait_snap(c, t)
    assert d["SnapshotTaskDetail"]["Status"] == "completed", d
    snaps[name] = d["SnapshotTaskDetail"]["SnapshotId"]
cli = aws(ep, "describe-import-snapshot-tasks", "--import-task-ids", t_vhd)["ImportSnapshotTasks"][0]
assert cli["SnapshotTaskDetail"]["SnapshotId"] == snaps["vhd"], cli
img = wait_image(c, t_img)
assert img["Status"] == "completed", img
ami = img["ImageId"]
snaps["boot"] = img["SnapshotDetails"][0]["SnapshotId"]
cli = aws(ep, "describe-import-image-tasks", "--import-task-ids", t_img)["ImportImageTasks"][0]
assert cli["ImageId"] == ami, cli
images = aws(ep, "describe-images", "--image-ids", ami)["Images"]
assert len(images) == 1 and images[0]["ImageId"] == ami, images
assert c.describe_images(Owners=["self"])["Images"][0]["ImageId"] == ami

# ImportVolume (boto3) and ImportInstance (CLI) from an import manifest on loopback.
v = c.import_volume(AvailabilityZone="us-east-1a", Volume={"Size": 1},
                    Image={"Format": "RAW", "Bytes": A["vol_bytes"], "ImportManifestUrl": A["manifest"]})
t_vol = v["ConversionTask"]["ConversionTaskId"]
# (the AWS CLI no longer has import-instance / import-volume: boto3 for both)
t_inst = c.import_instance(Platform="Linux",
             LaunchSpecification={"Architecture": "x86_64", "InstanceType": "t2.micro"},
             DiskImages=[{"Image": {"Format": "RAW", "Bytes": A["vol_bytes"],
                 "ImportManifestUrl": A["manifest"]}, "Volume": {"Size": 1}}]
             )["ConversionTask"]["ConversionTaskId"]
vol = wait_conv(c, t_vol)
assert vol["State"] == "completed", vol
inst = wait_conv(c, t_inst)
assert inst["State"] == "completed", inst
iid = inst["ImportInstance"]["InstanceId"]
assert iid, inst
listed = aws(ep, "describe-conversion-tasks")["ConversionTasks"]
assert {t["ConversionTaskId"] for t in listed} >= {t_vol, t_inst}, listed

# Exports of the image: VMDK and OVA by boto3, VHD by the CLI.
exports = {}
loc = {"S3Bucket": "exports", "S3Prefix": "out/"}
exports["vmdk"] = c.export_image(ImageId=ami, DiskImageFormat="VMDK", S3ExportLocation=loc)["ExportImageTaskId"]
exports["ova"] = c.export_image(ImageId=ami, DiskImageFormat="OVA", S3ExportLocation=loc)["ExportImageTaskId"]
exports["vhd"] = aws(ep, "export-image", "--image-id", ami, "--disk-image-format", "VHD",
                     "--s3-export-location", "S3Bucket=exports,S3Prefix=out/")["ExportImageTaskId"]
for k, t in exports.items():
    d = wait_export_image(c, t)
    assert d["Status"] == "completed", d
cli = aws(ep, "describe-export-image-tasks", "--export-image-task-ids", exports["vhd"])["ExportImageTasks"][0]
assert cli["Status"] == "completed", cli
# The instance made by ImportInstance, exported (boto3), another cancelled (CLI).
e = c.create_instance_export_task(InstanceId=iid, TargetEnvironment="vmware",
        ExportToS3Task={"DiskImageFormat": "VMDK", "ContainerFormat": "ova", "S3Bucket": "exports", "S3Prefix": "inst/"})
t_exp = e["ExportTask"]["ExportTaskId"]
d = wait_export(c, t_exp)
assert d["State"] == "completed", d
cli = aws(ep, "describe-export-tasks", "--export-task-ids", t_exp)["ExportTasks"][0]
assert cli["State"] == "completed", cli

# Cancelling, deterministically: the one worker (--workers 1) is held by an import whose URL
# source (our own socket) does not answer yet, so the tasks cancelled are still queued: they
# show cancelling/deleting at once and end cancelled/deleted when the worker is free again.
import socket
hold = socket.socket(); hold.bind(("127.0.0.1", 0)); hold.listen(1)
blocker = c.import_snapshot(DiskContainer={"Format": "RAW",
    "Url": "http://127.0.0.1:%d/never.raw" % hold.getsockname()[1]})["ImportTaskId"]
conn, _ = hold.accept()
cancelled = []
t = c.import_volume(AvailabilityZone="us-east-1a", Volume={"Size": 1},
                    Image={"Format": "RAW", "Bytes": A["vol_bytes"], "ImportManifestUrl": A["manifest"]}
                    )["ConversionTask"]["ConversionTaskId"]
aws(ep, "cancel-conversion-task", "--conversion-task-id", t)
assert c.describe_conversion_tasks(ConversionTaskIds=[t])["ConversionTasks"][0]["State"] == "cancelling"
cancelled.append(lambda t=t: wait_conv(c, t)["State"] == "cancelled")
t = c.import_snapshot(DiskContainer=src("src", "ws.vmdk", "VMDK"))["ImportTaskId"]
c.cancel_import_task(ImportTaskId=t)
assert snap_task(c, t)["SnapshotTaskDetail"]["Status"] == "deleting"
cancelled.append(lambda t=t: wait_snap(c, t)["SnapshotTaskDetail"]["Status"] == "deleted")
t = aws(ep, "import-image", "--disk-containers", json.dumps([src("src", "boot.vmdk", "VMDK")]))["ImportTaskId"]
r = aws(ep, "cancel-import-task", "--import-task-id", t)
assert r["ImportTaskId"] == t and r.get("State") in ("deleting", None), r
cancelled.append(lambda t=t: wait_image(c, t)["Status"] == "deleted")
t = aws(ep, "create-instance-export-task", "--instance-id", iid, "--target-environment", "vmware",
        "--export-to-s3-task", "DiskImageFormat=VMDK,S3Bucket=exports,S3Prefix=cancel/")["ExportTask"]["ExportTaskId"]
c.cancel_export_task(ExportTaskId=t)
assert c.describe_export_tasks(ExportTaskIds=[t])["ExportTasks"][0]["State"] == "cancelling"
cancelled.append(lambda t=t: wait_export(c, t)["State"] == "cancelled")
t = c.export_image(ImageId=ami, DiskImageFormat="RAW", S3ExportLocation={"S3Bucket": "exports", "S3Prefix": "cancel/"})["ExportImageTaskId"]
c.cancel_export_task(ExportTaskId=t)
cancelled.append(lambda t=t: wait_export_image(c, t)["Status"] in ("deleted", "cancelled"))
t_cancelled_export = t
# The running blocker cancelled too; then its source's connection and port close: it ends
# deleted with the caller's reason (not the download's failure), the worker is free again.
c.cancel_import_task(ImportTaskId=blocker, CancelReason="stop waiting")
conn.close(); hold.close()
d = wait_snap(c, blocker)["SnapshotTaskDetail"]
assert d["Status"] == "deleted" and d["StatusMessage"] == "stop waiting", d
for ok in cancelled:
    assert ok()
# A second cancel of an ended task is refused.
assert code(c.cancel_export_task, ExportTaskId=t_cancelled_export) == "IncorrectState"
assert code(c.cancel_import_task, ImportTaskId=blocker) == "IncorrectState"
canc = os.path.join(A["objects"], "exports", "cancel")
assert not os.path.exists(canc) or os.listdir(canc) == [], "a cancelled export wrote"

# Tags, by both clients.
c.create_tags(Resources=[ami, t_vmdk], Tags=[{"Key": "team", "Value": "blue"}, {"Key": "x", "Value": "1"}])
aws(ep, "create-tags", "--resources", ami, "--tags", "Key=cli,Value=yes")
tags = {t["Key"]: t["Value"] for t in c.describe_images(ImageIds=[ami])["Images"][0].get("Tags", [])}
assert tags == {"team": "blue", "x": "1", "cli": "yes"}, tags
tagged = c.describe_images(Filters=[{"Name": "tag:team", "Values": ["blue"]}])["Images"]
assert [i["ImageId"] for i in tagged] == [ami], tagged
c.delete_tags(Resources=[ami], Tags=[{"Key": "x"}])
aws(ep, "delete-tags", "--resources", ami, "--tags", "Key=cli")
tags = {t["Key"]: t["Value"] for t in c.describe_images(ImageIds=[ami])["Images"][0].get("Tags", [])}
assert tags == {"team": "blue"}, tags
tags = {t["Key"]: t["Value"] for t in snap_task(c, t_vmdk).get("Tags", [])}
assert tags == {"team": "blue", "x": "1"}, tags

# Paging: MaxResults 1 and NextToken visit every task once; the CLI's own paging agrees.
everything = [t["ImportTaskId"] for t in c.describe_import_snapshot_tasks()["ImportSnapshotTasks"]]
assert len(everything) == 5, everything
paged, token = [], None
while True:
    kw = {"MaxResults": 1}
    if token: kw["NextToken"] = token
    r = c.describe_import_snapshot_tasks(**kw)
    assert len(r["ImportSnapshotTasks"]) <= 1
    paged += [t["ImportTaskId"] for t in r["ImportSnapshotTasks"]]
    token = r.get("NextToken")
    if not token: break
assert sorted(paged) == sorted(everything) and len(set(paged)) == len(paged), (paged, everything)
cli = aws(ep, "describe-import-snapshot-tasks", "--page-size", "1")["ImportSnapshotTasks"]
assert sorted(t["ImportTaskId"] for t in cli) == sorted(everything), cli
p = c.get_paginator("describe_export_image_tasks").paginate(PaginationConfig={"PageSize": 1})
listed = [t["ExportImageTaskId"] for page in p for t in page["ExportImageTasks"]]
assert len(listed) == 4 and set(listed) >= set(exports.values()), listed

# Another tenant sees none of the conversion and export tasks, and cannot export the instance.
other = client(ep, 2)
assert other.describe_conversion_tasks()["ConversionTasks"] == []
assert other.describe_export_tasks()["ExportTasks"] == []
assert other.describe_export_image_tasks()["ExportImageTasks"] == []
assert code(other.describe_conversion_tasks, ConversionTaskIds=[t_vol]).endswith("NotFound")
assert code(other.cancel_conversion_task, ConversionTaskId=t_inst).endswith("NotFound")
assert code(other.describe_export_tasks, ExportTaskIds=[t_exp]).endswith("NotFound")
assert code(other.cancel_export_task, ExportTaskId=exports["vmdk"]).endswith("NotFound")
try:
    stolen = other.create_instance_export_task(InstanceId=iid, TargetEnvironment="vmware",
        ExportToS3Task={"DiskImageFormat": "VMDK", "S3Bucket": "stolen", "S3Prefix": "x/"})["ExportTask"]["ExportTaskId"]
    d = wait_export(other, stolen)
    assert d["State"] == "cancelled", d
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"].endswith("NotFound"), e
stolen_dir = os.path.join(A["objects"], "stolen")
assert not os.path.exists(stolen_dir) or os.listdir(stolen_dir) == [], "another tenant exported the instance"

# Deregister: the image is gone for describe and export.
aws(ep, "deregister-image", "--image-id", ami)
assert c.describe_images(Owners=["self"])["Images"] == []
assert code(c.describe_images, ImageIds=[ami]) == "InvalidAMIID.NotFound"
assert code(c.export_image, ImageId=ami, DiskImageFormat="VMDK", S3ExportLocation=loc) == "InvalidAMIID.NotFound"
out.update(snap_tasks=everything, snaps=snaps, exports=exports, instance_export=t_exp, volume=vol, instance=inst)
done(out)
"#;

/// Every action through boto3 and the AWS CLI; the imported snapshots equal their sources and
/// the exports are valid and equal to the image.
#[test]
fn serve_runs_every_action_for_boto3_and_the_aws_cli() {
    let rig = Rig::new();
    let made = rig.path("made");
    std::fs::create_dir_all(&made).unwrap();
    let vmdk = shared_fixture("vmdk/vmware-ws-streamOptimized.vmdk", &made);
    let vhd = shared_fixture("vhd/qemu-dynamic-ext2.vhd.gz", &made);
    let boot = boot_vmdk(&made);
    rig.put("ws.vmdk", &vmdk);
    rig.put("ext2.vhd", &vhd);
    rig.put("boot.vmdk", &boot);
    // No real-world VHDX among the fixtures: one made by qemu-img from the VMware disk.
    let vhdx = made.join("made.vhdx");
    qemu_ok(&["convert", "-O", "vhdx", s(&vmdk), s(&vhdx)]);
    rig.put("made.vhdx", &vhdx);
    let vol = made.join("vol.raw");
    random_raw(&vol, 12);
    let http = http_server(&rig.path("www"));
    let manifest_url = manifest(&vol, &rig.path("www"), &http.url, "vol", 3);

    let serve = rig.serve(&rig.sqlite(), &["--lease", "5", "--workers", "1"]);
    let out = py(
        EVERY_ACTION,
        &serde_json::json!({
            "ep": serve.url,
            "objects": s(&rig.objects()),
            "manifest": manifest_url,
            "vol_bytes": 12 << 20,
        }),
    );

    // `stamp tasks` lists the same tasks through the same API.
    let r: crate::common::Run = Command::new(env!("CARGO_BIN_EXE_stamp"))
        .args([
            "tasks",
            "--endpoint-url",
            &serve.url,
            "--region",
            "us-east-1",
        ])
        .args(["list", "--json"])
        .env("AWS_ACCESS_KEY_ID", "AKIDTENANTONE0000001")
        .env("AWS_SECRET_ACCESS_KEY", "secret-one")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "stamp tasks list: {}", r.stderr);
    let listed: Value = serde_json::from_str(&r.stdout).unwrap();
    let listed = listed["tasks"].as_array().unwrap();
    for id in out["snap_tasks"].as_array().unwrap() {
        let t = listed
            .iter()
            .find(|t| t["id"] == *id)
            .unwrap_or_else(|| panic!("{id} not in stamp tasks list: {listed:?}"));
        assert_eq!(t["kind"], "import-snapshot");
    }
    for id in out["exports"].as_object().unwrap().values() {
        let t = listed.iter().find(|t| t["id"] == *id).unwrap();
        assert_eq!(t["status"], "completed", "{t}");
    }

    // The stored snapshots are the sources' content.
    for (name, source) in [
        ("vmdk", &vmdk),
        ("vhd", &vhd),
        ("vhdx", &vhdx),
        ("boot", &boot),
    ] {
        same(source, &rig.snapshot(str_of(&out["snaps"], name)));
    }
    // Snapshots: 4 imports + the volume + the instance's volume (none of the cancelled or
    // failed tasks); the volumes hold the manifest's disk.
    let snapshots = rig.snapshots();
    assert_eq!(snapshots.len(), 6, "{snapshots:?}");
    let of_vol = snapshots
        .iter()
        .filter(|p| stamp(&["compare", s(&vol), s(p)]).code == 0)
        .count();
    assert_eq!(of_vol, 2, "the volume and the instance each have the disk");

    // Exports: valid for qemu-img, content equal to the image.
    let exports = rig.objects().join("exports");
    let v = output_of(&exports.join("out"), str_of(&out["exports"], "vmdk"));
    assert!(v.to_str().unwrap().ends_with(".vmdk"), "{v:?}");
    qemu_ok(&["check", s(&v)]);
    same(&boot, &v);
    let v = output_of(&exports.join("out"), str_of(&out["exports"], "vhd"));
    let info = qemu_ok(&["info", "--output=json", s(&v)]);
    assert!(info.contains("\"vpc\""), "{info}");
    same(&boot, &v);
    let ova = output_of(&exports.join("out"), str_of(&out["exports"], "ova"));
    let unpacked = rig.path("ova");
    std::fs::create_dir_all(&unpacked).unwrap();
    sh(&format!("tar -xf '{}' -C '{}'", s(&ova), s(&unpacked)));
    let names: Vec<String> = std::fs::read_dir(&unpacked)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(".ovf")), "{names:?}");
    let disk = names
        .iter()
        .find(|n| n.ends_with(".vmdk"))
        .expect("a vmdk in the OVA");
    qemu_ok(&["check", s(&unpacked.join(disk))]);
    same(&boot, &unpacked.join(disk));
    // The instance export holds the instance's volume.
    let inst = output_of(&exports.join("inst"), str_of(&out, "instance_export"));
    if inst.extension().is_some_and(|e| e == "vmdk") {
        qemu_ok(&["check", s(&inst)]);
        same(&vol, &inst);
    } else {
        let d = rig.path("inst-ova");
        std::fs::create_dir_all(&d).unwrap();
        sh(&format!("tar -xf '{}' -C '{}'", s(&inst), s(&d)));
        let disk = output_of(&d, ".vmdk");
        qemu_ok(&["check", s(&disk)]);
        same(&vol, &disk);
    }
    drop(serve);
}

const ERRORS: &str = r#"
ep = A["ep"]; c = client(ep); other = client(ep, 2)
# Wrong secret; unsigned.
bad = client(ep, 1, secret="not-the-secret")
assert code(bad.describe_import_snapshot_tasks) in ("AuthFailure", "SignatureDoesNotMatch")
assert code(bad.import_snapshot, DiskContainer=src("src", "ws.vmdk", "VMDK")) in ("AuthFailure", "SignatureDoesNotMatch")
unsigned = boto3.client("ec2", endpoint_url=ep, region_name="us-east-1",
                        config=Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1}))
assert code(unsigned.describe_images) in ("AuthFailure", "MissingAuthenticationToken", "IncompleteSignature"), "unsigned"
r = urllib.request.Request(ep + "/", data=b"Action=DescribeImages&Version=2016-11-15", method="POST")
try:
    urllib.request.urlopen(r); raise AssertionError("an unsigned POST was answered")
except urllib.error.HTTPError as e:
    body = e.read().decode()
    assert e.code in (400, 401, 403) and "<Code>" in body, (e.code, body)

# Tenant one's task and image; tenant two sees none of it.
t = c.import_snapshot(DiskContainer=src("src", "ws.vmdk", "VMDK"))["ImportTaskId"]
assert wait_snap(c, t)["SnapshotTaskDetail"]["Status"] == "completed"
ti = c.import_image(DiskContainers=[src("src", "boot.vmdk", "VMDK")])["ImportTaskId"]
ami = wait_image(c, ti)["ImageId"]
assert other.describe_import_snapshot_tasks()["ImportSnapshotTasks"] == []
assert other.describe_import_image_tasks()["ImportImageTasks"] == []
assert other.describe_images()["Images"] == []
assert other.describe_images(Owners=["self"])["Images"] == []
assert code(other.describe_import_snapshot_tasks, ImportTaskIds=[t]).endswith("NotFound")
assert code(other.describe_import_image_tasks, ImportTaskIds=[ti]).endswith("NotFound")
assert code(other.describe_images, ImageIds=[ami]) == "InvalidAMIID.NotFound"
assert code(other.cancel_import_task, ImportTaskId=t).endswith("NotFound")
assert code(other.deregister_image, ImageId=ami).endswith("NotFound")
assert code(other.export_image, ImageId=ami, DiskImageFormat="VMDK",
            S3ExportLocation={"S3Bucket": "exports"}) == "InvalidAMIID.NotFound"
other_code = code(other.create_tags, Resources=[ami], Tags=[{"Key": "k", "Value": "v"}])
assert other_code.endswith("NotFound"), other_code
# ... and tenant one still has it, untouched.
assert c.describe_images(ImageIds=[ami])["Images"][0].get("Tags", []) == []

# Malformed parameters.
assert code(c.import_snapshot, DiskContainer=src("src", "ws.vmdk", "VMDX")) == "InvalidParameterValue"
assert code(c.import_image, DiskContainers=[src("src", "boot.vmdk", "ZIP")]) == "InvalidParameterValue"
assert code(c.import_snapshot, DiskContainer=src("b", "ws.vmdk", "VMDK")) == "InvalidParameterValue"
assert code(c.import_snapshot, DiskContainer=src("Not_A_Bucket", "ws.vmdk", "VMDK")) == "InvalidParameterValue"
assert code(c.import_snapshot, DiskContainer={"Format": "VMDK", "UserBucket": {"S3Bucket": "src"}}) == "MissingParameter"
assert code(c.export_image, ImageId=ami, DiskImageFormat="VMDK",
            S3ExportLocation={"S3Bucket": "../etc"}) == "InvalidParameterValue"
assert code(c.import_snapshot) == "MissingParameter"
assert code(c.import_image) == "MissingParameter"
assert code(c.describe_import_snapshot_tasks, MaxResults=0) == "InvalidParameterValue"
assert code(c.describe_import_image_tasks, MaxResults=0) == "InvalidParameterValue"
assert code(c.export_image, ImageId=ami, DiskImageFormat="PNG",
            S3ExportLocation={"S3Bucket": "exports"}) == "InvalidParameterValue"
assert code(c.describe_import_snapshot_tasks, NextToken="not-a-token") == "InvalidParameterValue"
assert code(c.create_instance_export_task, InstanceId="i-0123456789abcdef0", TargetEnvironment="xen",
            ExportToS3Task={"DiskImageFormat": "VMDK", "S3Bucket": "exports"}) == "InvalidParameterValue"

# Unknown ids.
assert code(c.describe_import_snapshot_tasks, ImportTaskIds=["import-snap-0123456789abcdef0"]) == "InvalidConversionTaskId.NotFound"
assert code(c.describe_import_image_tasks, ImportTaskIds=["import-ami-0123456789abcdef0"]) == "InvalidConversionTaskId.NotFound"
assert code(c.describe_conversion_tasks, ConversionTaskIds=["import-vol-0123456789abcdef0"]) == "InvalidConversionTaskId.NotFound"
assert code(c.describe_export_image_tasks, ExportImageTaskIds=["export-ami-0123456789abcdef0"]).endswith("NotFound")
assert code(c.describe_export_tasks, ExportTaskIds=["export-i-0123456789abcdef0"]).endswith("NotFound")
assert code(c.describe_images, ImageIds=["ami-0123456789abcdef0"]) == "InvalidAMIID.NotFound"
assert code(c.cancel_import_task, ImportTaskId="import-snap-0123456789abcdef0").endswith("NotFound")
assert code(c.cancel_conversion_task, ConversionTaskId="import-vol-0123456789abcdef0").endswith("NotFound")
assert code(c.cancel_export_task, ExportTaskId="export-i-0123456789abcdef0").endswith("NotFound")
assert code(c.deregister_image, ImageId="ami-0123456789abcdef0").endswith("NotFound")

# Corrupt sources: the task ends deleted with a ClientError message.
bad_tasks = {}
for key, fmt in A["bad"]:
    bad_tasks[key] = c.import_snapshot(DiskContainer=src("src", key, fmt))["ImportTaskId"]
msgs = {}
for key, t in bad_tasks.items():
    d = wait_snap(c, t)["SnapshotTaskDetail"]
    assert d["Status"] == "deleted", (key, d)
    assert d.get("StatusMessage", "").startswith("ClientError"), (key, d)
    msgs[key] = d["StatusMessage"]
# A missing object, too.
t = c.import_snapshot(DiskContainer=src("src", "no-such-key.vmdk", "VMDK"))["ImportTaskId"]
d = wait_snap(c, t)["SnapshotTaskDetail"]
assert d["Status"] == "deleted" and d.get("StatusMessage", "").startswith("ClientError"), d

# Still answering.
assert len(c.describe_import_snapshot_tasks()["ImportSnapshotTasks"]) == 2 + len(bad_tasks)
assert c.describe_images()["Images"][0]["ImageId"] == ami
done({"messages": msgs})
"#;

/// Authentication failures, tenant isolation, malformed parameters, unknown ids and corrupt
/// sources all answer AWS errors botocore parses; the service keeps answering.
#[test]
fn serve_answers_errors_as_aws_does_and_keeps_tenants_apart() {
    let rig = Rig::new();
    let made = rig.path("made");
    std::fs::create_dir_all(&made).unwrap();
    rig.put(
        "ws.vmdk",
        &shared_fixture("vmdk/vmware-ws-streamOptimized.vmdk", &made),
    );
    rig.put("boot.vmdk", &boot_vmdk(&made));
    let mut bad = Vec::new();
    for (rel, fmt) in [
        ("vmdk/BAD-qemu-streamOptimized-invalid.img", "VMDK"),
        ("vhd/BAD-qemu-dynamic-bad-footer-checksum.vhd.gz", "VHD"),
        ("ova/BAD-glance-not-tar.ova", "OVA"),
        ("ova/BAD-glance-no-disk.ova", "OVA"),
        ("ova/BAD-forklift-utf8-mangled-vmdk.ova", "OVA"),
        ("vmdk/BAD-missing-extent/monolithicFlat.vmdk", "VMDK"),
    ] {
        let f = shared_fixture(rel, &made);
        let key = f.file_name().unwrap().to_str().unwrap().to_string();
        rig.put(&key, &f);
        bad.push((key, fmt));
    }
    let serve = rig.serve(&rig.sqlite(), &["--lease", "5"]);
    let out = py(ERRORS, &serde_json::json!({"ep": serve.url, "bad": bad}));
    assert_eq!(out["messages"].as_object().unwrap().len(), bad.len());
    // No snapshot was stored for a failed task: the two good imports only.
    assert_eq!(rig.snapshots().len(), 2, "{:?}", rig.snapshots());
    // The process is still alive.
    let mut serve = serve;
    assert!(serve.child.try_wait().unwrap().is_none());
}

/// Submits an import of `key` (RAW) to `ep` and returns once the task shows progress.
const SUBMIT_UNTIL_CONVERTING: &str = r#"
c = client(A["ep"])
t = c.import_snapshot(DiskContainer=src("src", A["key"], "RAW"))["ImportTaskId"]
def converting():
    d = snap_task(c, t)["SnapshotTaskDetail"]
    assert d.get("Status") == "active", d
    p = int(d.get("Progress") or 0)
    return d if p > 0 or "convert" in d.get("StatusMessage", "") else None
d = until(converting, "progress")
done({"task": t, "detail": d})
"#;

/// Waits for import-snapshot tasks `A["tasks"]` to end; their details.
const WAIT_SNAPS: &str = r#"
c = client(A["ep"])
done({t: wait_snap(c, t)["SnapshotTaskDetail"] for t in A["tasks"]})
"#;

/// A raw disk big enough that its conversion takes a few seconds: random data in 1 MiB runs
/// every 2 MiB (sparse elsewhere).
fn big_raw(path: &Path, mib: u64) {
    sh(&format!(
        "python3 -c \"
import os
with open('{p}', 'wb') as f:
    f.truncate({mib} << 20)
    for i in range(0, {mib}, 2):
        f.seek(i << 20); f.write(os.urandom(1 << 20))
\"",
        p = s(path)
    ));
}

/// Held by the tests that run a big conversion and stop it midway, one at a time: on 2 cores
/// a conversion slowed by the others still takes long enough to be caught midway, and the
/// big disks are not all on disk at once.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// kill -9 of `stamp serve` on `db` mid-conversion; a restart on the same database and
/// objects finishes the task: one snapshot, equal to the source.
fn finishes_after_kill_9(db: &str) {
    let _one_at_a_time = heavy();
    let rig = Rig::new();
    let raw = rig.path("objects/src/big.raw");
    big_raw(&raw, 512);
    // A 1 s lease: heartbeats (with the progress) every 250 ms, a quick takeover; the
    // conversion held to 100 MB/s, so that it is surely caught midway (unthrottled it takes
    // a fraction of a second here).
    let first = rig.serve(db, &["--lease", "1", "--convert-rate", "100M"]);
    let got = py(
        SUBMIT_UNTIL_CONVERTING,
        &serde_json::json!({"ep": first.url, "key": "big.raw"}),
    );
    let task = str_of(&got, "task").to_string();
    eprintln!("killing stamp serve at {}", got["detail"]);
    first.kill9();
    let second = rig.serve(db, &["--lease", "1"]);
    let done = py(
        WAIT_SNAPS,
        &serde_json::json!({"ep": second.url, "tasks": [task]}),
    );
    let d = &done[&task];
    assert_eq!(d["Status"], "completed", "{d}");
    let snapshots = rig.snapshots();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_eq!(snapshots[0], rig.snapshot(str_of(d, "SnapshotId")));
    same(&raw, &snapshots[0]);
    // No partial outputs left behind in the objects dir.
    let leftovers: Vec<PathBuf> = walk(&rig.objects().join(".stamp-serve"))
        .into_iter()
        .filter(|p| !snapshots.contains(p))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn serve_on_sqlite_finishes_a_conversion_after_kill_9() {
    let rig_db = tmp();
    finishes_after_kill_9(&format!("sqlite:{}", s(&rig_db.path().join("serve.db"))));
}

/// Cancels a running import mid-conversion (CancelReason given).
const CANCEL_RUNNING: &str = r#"
c = client(A["ep"])
t = c.import_snapshot(DiskContainer=src("src", A["key"], "RAW"))["ImportTaskId"]
def converting():
    d = snap_task(c, t)["SnapshotTaskDetail"]
    assert d.get("Status") == "active", d
    return d if int(d.get("Progress") or 0) > 0 else None
until(converting, "progress")
c.cancel_import_task(ImportTaskId=t, CancelReason="changed my mind")
done(wait_snap(c, t)["SnapshotTaskDetail"])
"#;

/// A running conversion cancelled: the task ends deleted with the caller's reason, nothing is
/// stored and no scratch or partial output is left.
#[test]
fn serve_cancels_a_running_conversion() {
    let _one_at_a_time = heavy();
    let rig = Rig::new();
    let raw = rig.path("objects/src/big.raw");
    // Held to 100 MB/s, the conversion lasts long enough that the cancel (seen by the worker
    // within a heartbeat, 0.25 s here) comes well before its end.
    big_raw(&raw, 512);
    let serve = rig.serve(&rig.sqlite(), &["--lease", "1", "--convert-rate", "100M"]);
    let d = py(
        CANCEL_RUNNING,
        &serde_json::json!({"ep": serve.url, "key": "big.raw"}),
    );
    assert_eq!(d["Status"], "deleted", "{d}");
    assert_eq!(d["StatusMessage"], "changed my mind", "{d}");
    assert!(
        walk(&rig.objects().join(".stamp-serve")).is_empty(),
        "{:?}",
        walk(&rig.objects().join(".stamp-serve"))
    );
    assert!(walk(&rig.path("scratch")).is_empty());
}

#[test]
fn serve_on_postgres_finishes_a_conversion_after_kill_9() {
    let Some(db) = pg_support::database() else {
        return;
    };
    finishes_after_kill_9(&db);
}

/// 20 imports through two endpoints, alternating; all end; both endpoints list the same.
const TWENTY: &str = r#"
cs = [client(ep) for ep in A["eps"]]
ts = [cs[i % 2].import_snapshot(DiskContainer=src("src", A["key"], "VMDK"))["ImportTaskId"] for i in range(20)]
details = {t: wait_snap(cs[i % 2], t)["SnapshotTaskDetail"] for i, t in enumerate(ts)}
lists = []
for c in cs:
    got = {}
    for page in c.get_paginator("describe_import_snapshot_tasks").paginate(PaginationConfig={"PageSize": 7}):
        for t in page["ImportSnapshotTasks"]:
            assert t["ImportTaskId"] not in got, t
            got[t["ImportTaskId"]] = (t["SnapshotTaskDetail"]["Status"], t["SnapshotTaskDetail"].get("SnapshotId"))
    lists.append(got)
assert lists[0] == lists[1], lists
assert set(ts) <= set(lists[0]) and len(lists[0]) == len(ts) + A["before"], (lists[0], ts)
done({"details": details})
"#;

/// Two `stamp serve` processes on one PostgreSQL database and one objects directory share
/// the work, each task done once; when one dies mid-task the other finishes it.
#[test]
fn serve_scales_out_on_one_postgres_database() {
    let Some(db) = pg_support::database() else {
        return;
    };
    let rig = Rig::new();
    let made = rig.path("made");
    std::fs::create_dir_all(&made).unwrap();
    let vmdk = shared_fixture("vmdk/vmware-ws-streamOptimized.vmdk", &made);
    rig.put("ws.vmdk", &vmdk);
    // `a` converts at 100 MB/s at most, so that the big task below is surely caught midway.
    let a = rig.serve(&db, &["--lease", "3", "--convert-rate", "100M"]);
    let b = rig.serve(&db, &["--lease", "3"]);
    // One import first, through `a` while `b` is stopped: the bytes one conversion counts.
    b.signal("STOP");
    let first = py(
        r#"
c = client(A["ep"])
t = c.import_snapshot(DiskContainer=src("src", "ws.vmdk", "VMDK"))["ImportTaskId"]
done(wait_snap(c, t)["SnapshotTaskDetail"])
"#,
        &serde_json::json!({"ep": a.url}),
    );
    b.signal("CONT");
    assert_eq!(first["Status"], "completed", "{first}");
    let one = metric(&a.url, "stamp_bytes_converted_total");
    assert!(one > 0);
    let out = py(
        TWENTY,
        &serde_json::json!({"eps": [a.url, b.url], "key": "ws.vmdk", "before": 1}),
    );
    let details = out["details"].as_object().unwrap();
    assert_eq!(details.len(), 20);
    let mut ids: Vec<&str> = Vec::new();
    for d in details.values() {
        assert_eq!(d["Status"], "completed", "{d}");
        ids.push(str_of(d, "SnapshotId"));
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "each task has its own snapshot");
    let snapshots = rig.snapshots();
    assert_eq!(snapshots.len(), 21, "{snapshots:?}");
    // Each conversion ran once: the two processes together converted 20 tasks' bytes.
    let (in_a, in_b) = (
        metric(&a.url, "stamp_bytes_converted_total"),
        metric(&b.url, "stamp_bytes_converted_total"),
    );
    assert_eq!(
        in_a + in_b,
        21 * one,
        "a: {in_a}, b: {in_b}, one task: {one}"
    );
    for id in &ids {
        same(&vmdk, &rig.snapshot(id));
    }

    // A bigger task taken by `a` (b is stopped meanwhile, so it cannot claim it): kill -9 a
    // mid-conversion, and b finishes it once a's lease lapses.
    let _one_at_a_time = heavy();
    let raw = rig.path("objects/src/big.raw");
    big_raw(&raw, 512);
    b.signal("STOP");
    let got = py(
        SUBMIT_UNTIL_CONVERTING,
        &serde_json::json!({"ep": a.url, "key": "big.raw"}),
    );
    b.signal("CONT");
    let task = str_of(&got, "task").to_string();
    a.kill9();
    let done = py(
        WAIT_SNAPS,
        &serde_json::json!({"ep": b.url, "tasks": [task]}),
    );
    let d = &done[&task];
    assert_eq!(d["Status"], "completed", "{d}");
    let snapshots = rig.snapshots();
    assert_eq!(snapshots.len(), 22, "{snapshots:?}");
    same(&raw, &rig.snapshot(str_of(d, "SnapshotId")));
}

/// Runs imports while sampling the scratch directory's disk use and `/metrics`'
/// `stamp_scratch_bytes` every 50 ms: first one from the local objects (in place), then three
/// from URLs.
const SCRATCH: &str = r#"
c = client(A["ep"])
def du():
    total = 0
    for root, dirs, files in os.walk(A["scratch"]):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total
def metric():
    text = urllib.request.urlopen(A["ep"] + "/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith("stamp_scratch_bytes "):
            return int(line.split()[1])
    raise AssertionError("no stamp_scratch_bytes in /metrics: " + text)
def run(containers):
    ts = [c.import_snapshot(DiskContainer=d)["ImportTaskId"] for d in containers]
    most_du = most_metric = 0
    end = time.time() + 240
    while True:
        most_du = max(most_du, du()); most_metric = max(most_metric, metric())
        states = [snap_task(c, t)["SnapshotTaskDetail"] for t in ts]
        if all(s.get("Status") in ("completed", "deleted") for s in states):
            return {"du": most_du, "metric": most_metric, "tasks": states}
        assert time.time() < end, states
        time.sleep(0.05)
local = run([src("src", "local.raw", "RAW")])
urls = run([{"Format": "RAW", "Url": u} for u in A["urls"]])
done({"local": local, "urls": urls})
"#;

/// Imports from the local objects read in place (no scratch); URL sources are downloaded into
/// scratch, and the scratch in use never exceeds `--scratch-quota`.
#[test]
fn serve_keeps_url_downloads_within_the_scratch_quota() {
    let rig = Rig::new();
    let www = rig.path("www");
    let mut sources = Vec::new();
    for i in 0..3 {
        let p = www.join(format!("disk{i}.raw"));
        random_raw(&p, 64);
        sources.push(p);
    }
    let local = rig.path("objects/src/local.raw");
    random_raw(&local, 64);
    let http = http_server(&www);
    let quota: u64 = 100 << 20;
    let serve = rig.serve(
        &rig.sqlite(),
        &["--lease", "5", "--scratch-quota", "100M", "--workers", "3"],
    );
    let urls: Vec<String> = (0..3)
        .map(|i| format!("{}/disk{i}.raw", http.url))
        .collect();
    let out = py(
        SCRATCH,
        &serde_json::json!({
            "ep": serve.url,
            "scratch": s(&rig.path("scratch")),
            "urls": urls,
        }),
    );
    eprintln!("scratch use: {out}");
    let local_run = &out["local"];
    assert_eq!(local_run["tasks"][0]["Status"], "completed", "{local_run}");
    assert_eq!(
        local_run["du"], 0,
        "a local import used scratch: {local_run}"
    );
    assert_eq!(
        local_run["metric"], 0,
        "a local import reserved scratch: {local_run}"
    );
    same(
        &local,
        &rig.snapshot(str_of(&local_run["tasks"][0], "SnapshotId")),
    );

    let url_run = &out["urls"];
    let (du, metric) = (
        url_run["du"].as_u64().unwrap(),
        url_run["metric"].as_u64().unwrap(),
    );
    assert!(du <= quota, "scratch disk use {du} > quota {quota}");
    assert!(
        metric <= quota,
        "stamp_scratch_bytes {metric} > quota {quota}"
    );
    assert!(metric > 0, "URL sources reserved no scratch: {url_run}");
    for (i, d) in url_run["tasks"].as_array().unwrap().iter().enumerate() {
        assert_eq!(d["Status"], "completed", "{d}");
        same(&sources[i], &rig.snapshot(str_of(d, "SnapshotId")));
    }
    // The downloads are gone once the tasks ended.
    assert!(
        walk(&rig.path("scratch")).is_empty(),
        "{:?}",
        walk(&rig.path("scratch"))
    );
}

/// Over TLS: boto3 (verify=CERT) and the AWS CLI (AWS_CA_BUNDLE) run an import to completion
/// while idle connections that never start their handshake are held open; an unverified
/// client is refused; plain HTTP to the TLS port fails and the service keeps serving.
const TLS: &str = r#"
import socket, ssl
ep = A["ep"]; ca = A["cert"]
host, port = ep[len("https://"):].rsplit(":", 1)
# Connections that never send a byte: a slow or hostile client must not hold up the others.
# (Handshakes one after another would keep a request waiting for 16 x the server's handshake
# timeout, far beyond the 30 s bound below.)
idle = [socket.create_connection((host, int(port))) for _ in range(16)]
ctx = ssl.create_default_context(cafile=ca)
assert urllib.request.urlopen(ep + "/healthz", context=ctx, timeout=30).status == 200
c = client(ep, verify=ca)
t = c.import_snapshot(DiskContainer=src("src", "ws.vmdk", "VMDK"))["ImportTaskId"]
d = wait_snap(c, t)["SnapshotTaskDetail"]
assert d["Status"] == "completed", d
cli = aws(ep, "describe-import-snapshot-tasks", "--import-task-ids", t, ca=ca)["ImportSnapshotTasks"][0]
assert cli["SnapshotTaskDetail"]["Status"] == "completed", cli
assert cli["SnapshotTaskDetail"]["SnapshotId"] == d["SnapshotId"], cli
t2 = aws(ep, "import-snapshot", "--disk-container", json.dumps(src("src", "ws.vmdk", "VMDK")), ca=ca)["ImportTaskId"]
d2 = wait_snap(c, t2)["SnapshotTaskDetail"]
assert d2["Status"] == "completed", d2
# Without the certificate as a CA the client refuses the service.
try:
    client(ep).describe_import_snapshot_tasks()
    raise AssertionError("an unverifiable certificate was accepted")
except botocore.exceptions.SSLError:
    pass
# Plain HTTP to the TLS port: no answer of the service's.
plain = "http://%s:%s" % (host, port)
failures = []
try:
    urllib.request.urlopen(plain + "/healthz", timeout=60)
except Exception as e:
    failures.append(repr(e))
try:
    client(plain).describe_import_snapshot_tasks()
except Exception as e:
    failures.append(repr(e))
assert len(failures) == 2, failures
assert not any("ImportSnapshotTasks" in f for f in failures), failures
# Still serving, over TLS.
assert urllib.request.urlopen(ep + "/healthz", context=ctx, timeout=60).status == 200
listed = {x["ImportTaskId"] for x in c.describe_import_snapshot_tasks()["ImportSnapshotTasks"]}
assert listed == {t, t2}, listed
for s_ in idle:
    s_.close()
done({"snapshots": [d["SnapshotId"], d2["SnapshotId"]], "plain": failures})
"#;

#[test]
fn serve_speaks_tls_to_boto3_and_the_aws_cli() {
    let rig = Rig::new();
    let made = rig.path("made");
    std::fs::create_dir_all(&made).unwrap();
    let vmdk = shared_fixture("vmdk/vmware-ws-streamOptimized.vmdk", &made);
    rig.put("ws.vmdk", &vmdk);
    let (cert, key) = (rig.path("cert.pem"), rig.path("key.pem"));
    sh(&format!(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
         -addext subjectAltName=IP:127.0.0.1 -keyout '{}' -out '{}' 2>/dev/null",
        s(&key),
        s(&cert)
    ));
    let serve = rig.serve(
        &rig.sqlite(),
        &["--lease", "5", "--tls-cert", s(&cert), "--tls-key", s(&key)],
    );
    assert!(serve.url.starts_with("https://127.0.0.1:"), "{}", serve.url);
    let out = py(TLS, &serde_json::json!({"ep": serve.url, "cert": s(&cert)}));
    eprintln!("plain HTTP to the TLS port: {}", out["plain"]);
    for id in out["snapshots"].as_array().unwrap() {
        same(&vmdk, &rig.snapshot(id.as_str().unwrap()));
    }
    let mut serve = serve;
    assert!(serve.child.try_wait().unwrap().is_none());
}

/// Makes the buckets of the S3 scenario in moto and uploads the sources.
const S3_SETUP: &str = r#"
m = s3(A["moto"])
for b in ("stamp-serve", A["src"], A["out"]):
    m.create_bucket(Bucket=b)
for key, path in A["upload"].items():
    m.upload_file(path, A["src"], key)
done({})
"#;

/// With the objects in S3 (moto): imports read from a moto bucket, the service's snapshots
/// are kept under `s3://stamp-serve/store/`, an export lands in a moto bucket; a missing
/// source ends its task deleted.
const S3_OBJECTS: &str = r#"
ep = A["ep"]; m = s3(A["moto"]); c = client(ep)
def keys(bucket, prefix):
    return sorted(o["Key"] for p in m.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                  for o in p.get("Contents", []))
t = c.import_snapshot(DiskContainer=src(A["src"], "ws.vmdk", "VMDK"))["ImportTaskId"]
d = wait_snap(c, t)["SnapshotTaskDetail"]
assert d["Status"] == "completed", d
snap = d["SnapshotId"]
stored = keys("stamp-serve", "store/")
assert len(stored) == 1 and snap in stored[0] and stored[0].endswith(".qcow2"), (snap, stored)
m.download_file("stamp-serve", stored[0], A["snapshot"])

ti = c.import_image(DiskContainers=[src(A["src"], "boot.vmdk", "VMDK")])["ImportTaskId"]
img = wait_image(c, ti)
assert img["Status"] == "completed", img
assert len(keys("stamp-serve", "store/")) == 2, keys("stamp-serve", "store/")
e = c.export_image(ImageId=img["ImageId"], DiskImageFormat="VMDK",
                   S3ExportLocation={"S3Bucket": A["out"], "S3Prefix": "exports/"})["ExportImageTaskId"]
x = wait_export_image(c, e)
assert x["Status"] == "completed", x
exported = keys(A["out"], "")
assert len(exported) == 1 and exported[0].startswith("exports/") and e in exported[0], (e, exported)
assert x["S3ExportLocation"]["S3Bucket"] == A["out"], x
m.download_file(A["out"], exported[0], A["export"])

# The service's own storage is neither a source nor an export target for a tenant.
def refused(submit, wait, status_key):
    try:
        tid = submit()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    d = wait(tid)
    assert d[status_key] in ("deleted", "cancelled") and "own storage" in d.get("StatusMessage", ""), d
    return d["StatusMessage"]
own = refused(lambda: c.import_snapshot(DiskContainer=src("stamp-serve", stored[0], "VMDK"))["ImportTaskId"],
              lambda t: wait_snap(c, t)["SnapshotTaskDetail"], "Status")
own_export = refused(lambda: c.export_image(ImageId=img["ImageId"], DiskImageFormat="VMDK",
                         S3ExportLocation={"S3Bucket": "stamp-serve", "S3Prefix": "store/snapshots/"})["ExportImageTaskId"],
                     lambda t: wait_export_image(c, t), "Status")
assert len(keys("stamp-serve", "store/")) == 2, keys("stamp-serve", "store/")

# A source key that is not there: deleted with a ClientError, nothing stored.
t = c.import_snapshot(DiskContainer=src(A["src"], "no-such-key.vmdk", "VMDK"))["ImportTaskId"]
d = wait_snap(c, t)["SnapshotTaskDetail"]
assert d["Status"] == "deleted" and d.get("StatusMessage", "").startswith("ClientError"), d
assert len(keys("stamp-serve", "store/")) == 2, keys("stamp-serve", "store/")
# The tenant's buckets hold only what it put there and the export.
assert keys(A["src"], "") == ["boot.vmdk", "ws.vmdk"], keys(A["src"], "")
done({"missing": d["StatusMessage"], "stored": stored, "exported": exported, "own": [own, own_export]})
"#;

/// `stamp serve --objects s3://stamp-serve/store --endpoint-url MOTO`: sources, snapshots and
/// exports all in moto's S3; what is stored and exported is the sources' content.
#[test]
fn serve_keeps_its_objects_in_s3() {
    let rig = Rig::new();
    let made = rig.path("made");
    std::fs::create_dir_all(&made).unwrap();
    let vmdk = shared_fixture("vmdk/vmware-ws-streamOptimized.vmdk", &made);
    let boot = boot_vmdk(&made);
    let moto = &crate::aws_support::moto().url;
    let (src_bucket, out_bucket) = ("serve-src", "serve-out");
    py(
        S3_SETUP,
        &serde_json::json!({
            "moto": moto,
            "src": src_bucket,
            "out": out_bucket,
            "upload": {"ws.vmdk": s(&vmdk), "boot.vmdk": s(&boot)},
        }),
    );
    let serve = rig.serve_with(
        &rig.sqlite(),
        "s3://stamp-serve/store",
        &["--lease", "5", "--endpoint-url", moto],
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    assert_ne!(&serve.url, moto);
    let (snapshot, export) = (rig.path("snapshot.qcow2"), rig.path("export.vmdk"));
    let out = py(
        S3_OBJECTS,
        &serde_json::json!({
            "ep": serve.url,
            "moto": moto,
            "src": src_bucket,
            "out": out_bucket,
            "snapshot": s(&snapshot),
            "export": s(&export),
        }),
    );
    eprintln!("{out}");
    same(&vmdk, &snapshot);
    qemu_ok(&["check", s(&export)]);
    same(&boot, &export);
    // Nothing of the service's in the local objects directory (it was not given), and the
    // downloads of the S3 sources are gone from scratch.
    assert!(
        walk(&rig.objects()).is_empty(),
        "{:?}",
        walk(&rig.objects())
    );
    assert!(
        walk(&rig.path("scratch")).is_empty(),
        "{:?}",
        walk(&rig.path("scratch"))
    );
}

/// ImportImage of the stamp-built Debian disk (AWS CLI), then ExportImage to VHD and OVA.
const DEBIAN: &str = r#"
ep = A["ep"]; c = client(ep)
t = aws(ep, "import-image", "--description", "debian",
        "--disk-containers", json.dumps([src("src", "debian.vmdk", "VMDK")]))["ImportTaskId"]
img = wait_image(c, t)
assert img["Status"] == "completed", img
assert img.get("BootMode") == "uefi", img
assert img.get("Platform") == "Linux", img
assert img.get("Architecture") == "x86_64", img
ami = img["ImageId"]
described = c.describe_images(ImageIds=[ami])["Images"][0]
assert described["Architecture"] == "x86_64", described
loc = {"S3Bucket": "exports", "S3Prefix": "debian/"}
exports = {f: c.export_image(ImageId=ami, DiskImageFormat=f, S3ExportLocation=loc)["ExportImageTaskId"]
           for f in ("VHD", "OVA")}
for f, e in exports.items():
    x = wait_export_image(c, e)
    assert x["Status"] == "completed", (f, x)
# The same disk as an image of the service's stamp store (stamp build --tag).
t = c.import_image(DiskContainers=[{"Url": "stamp://debian-disk"}])["ImportTaskId"]
stored = wait_image(c, t)
assert stored["Status"] == "completed" and stored.get("BootMode") == "uefi", stored
t = c.import_snapshot(DiskContainer={"Url": "stamp://no-such-image"})["ImportTaskId"]
missing = wait_snap(c, t)["SnapshotTaskDetail"]
assert missing["Status"] == "deleted" and "no-such-image" in missing["StatusMessage"], missing
done({"task": img, "snapshot": img["SnapshotDetails"][0]["SnapshotId"], "exports": exports,
      "from_store": stored["SnapshotDetails"][0]["SnapshotId"]})
"#;

/// A Debian disk made by `stamp build` (UEFI, systemd-boot) imported as an image: detected as
/// a UEFI x86_64 Linux image, stored unchanged; its VHD and OVA exports hold the same disk.
#[test]
fn serve_imports_and_exports_a_stamp_built_debian_disk() {
    let Some(tar) = crate::common::debian_tar() else {
        eprintln!("skipped: no Debian rootfs tar (set STAMP_DEBIAN_TAR)");
        return;
    };
    let rig = Rig::new();
    let disk = rig.path("objects/src/debian.vmdk");
    let r = stamp(&[
        "build",
        "--store",
        s(&rig.path("store")),
        &format!("rootfs:{}", s(&tar)),
        "-o",
        s(&disk),
        "--tag",
        "debian-disk",
    ]);
    assert_eq!(r.code, 0, "stamp build: {}{}", r.stdout, r.stderr);
    let serve = rig.serve(
        &rig.sqlite(),
        &["--lease", "5", "--store", s(&rig.path("store"))],
    );
    let out = py(DEBIAN, &serde_json::json!({"ep": serve.url}));
    eprintln!("{}", out["task"]);
    // DiskImageSize is the source object's length (as AWS reports it), not the disk's
    // virtual size.
    let size = std::fs::metadata(&disk).unwrap().len() as f64;
    let reported = out["task"]["SnapshotDetails"][0]["DiskImageSize"]
        .as_f64()
        .unwrap();
    assert_eq!(
        reported, size,
        "DiskImageSize {reported}, the file is {size} bytes"
    );
    same(&disk, &rig.snapshot(str_of(&out, "snapshot")));
    same(&disk, &rig.snapshot(str_of(&out, "from_store")));
    let exports = rig.objects().join("exports/debian");
    let vhd = output_of(&exports, str_of(&out["exports"], "VHD"));
    let info = qemu_ok(&["info", "--output=json", s(&vhd)]);
    assert!(info.contains("\"vpc\""), "{info}");
    same(&disk, &vhd);
    let ova = output_of(&exports, str_of(&out["exports"], "OVA"));
    let unpacked = rig.path("ova");
    std::fs::create_dir_all(&unpacked).unwrap();
    sh(&format!("tar -xf '{}' -C '{}'", s(&ova), s(&unpacked)));
    let vmdk = output_of(&unpacked, ".vmdk");
    qemu_ok(&["check", s(&vmdk)]);
    same(&disk, &vmdk);
}

const THROTTLE: &str = r#"
c = client(A["ep"])
codes = []
for _ in range(12):
    try:
        c.describe_import_snapshot_tasks()
        codes.append("ok")
    except botocore.exceptions.ClientError as e:
        codes.append(e.response["Error"]["Code"])
time.sleep(2.5)
c.describe_import_snapshot_tasks()
other = client(A["ep"], tenant=2).describe_import_snapshot_tasks()
done({"codes": codes})
"#;

/// A `--config` file sets the options (here a rate limit of one request per 2 s per tenant, one
/// worker, one thread): a burst beyond it gets RequestLimitExceeded, then requests pass again,
/// and another tenant is not affected.
#[test]
fn serve_reads_a_config_file_and_throttles_a_tenant_as_ec2_does() {
    let rig = Rig::new();
    let config = rig.path("serve.toml");
    std::fs::write(
        &config,
        "rate-limit = 0.5\nworkers = 1\nthreads = 1\nlease = 5\n",
    )
    .unwrap();
    let serve = rig.serve(&rig.sqlite(), &["--config", s(&config)]);
    let out = py(THROTTLE, &serde_json::json!({"ep": serve.url}));
    let codes: Vec<&str> = out["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    // The first passes (a burst of one); the bucket then refills at one token per 2 s, far
    // slower than twelve back-to-back calls.
    assert_eq!(codes[0], "ok", "{codes:?}");
    let throttled = codes
        .iter()
        .filter(|c| **c == "RequestLimitExceeded")
        .count();
    assert!(throttled >= 6, "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| *c == "ok" || *c == "RequestLimitExceeded"),
        "{codes:?}"
    );
}
