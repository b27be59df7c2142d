//! A fake EC2 for the `--via s3://` path: moto has no VM Import/Export, so this server answers
//! ImportSnapshot, DescribeImportSnapshotTasks and CancelImportTask as an [`Ending`] says and
//! forwards every other request (S3, and EC2 actions such as CreateTags, DescribeSnapshots,
//! RegisterImage, DescribeImages, DeleteTags, DeregisterImage, DeleteSnapshot) to moto.
//!
//! It imports for real: when ImportSnapshot arrives it reads the object from moto's S3 (a copy
//! stays in a file for the tests), opens it with stamp-disk (a streamOptimized VMDK or raw) and
//! uploads it to moto with EBS direct, so a completed task names a snapshot that exists. An
//! object stamp-disk cannot read makes the task end `deleted` with AWS's kind of message.
//! Every EC2 request is logged with its form body. (`stamp serve` will implement ImportSnapshot
//! for real; the tests move to it then.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use stamp_aws::ec2::{
    self, CancelImportTaskResult, DescribeImportSnapshotTasksResult, ErrorResponse,
    ImportSnapshotResult, ImportSnapshotTask, Request, SnapshotTaskDetail,
};
use stamp_aws::http::Client;
use stamp_aws::s3;

/// The id of the fake's import task.
pub const TASK: &str = "import-snap-0123456789abcdef0";

/// How the fake's task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// active twice, then completed (naming the snapshot made from the object), or deleted
    /// if the object is not a disk stamp-disk can read.
    Completed,
    /// As [`Ending::Completed`], but the snapshot (of the disk's size) holds no data: moto's
    /// EBS direct takes 512-byte blocks, too slow for megabytes of data in a test.
    CompletedEmpty,
    /// active, then deleted with a failure message.
    Deleted,
    /// active until cancelled.
    Never,
}

/// What the fake saw and did.
#[derive(Debug, Default)]
pub struct Log {
    /// EC2 actions received, in order (answered or forwarded).
    pub actions: Vec<String>,
    /// Every EC2 request: (action, form body).
    pub forms: Vec<(String, String)>,
    /// The ImportSnapshot request.
    pub import: Option<ec2::ImportSnapshotRequest>,
    /// The object as it was when ImportSnapshot came.
    pub object: Option<PathBuf>,
    /// The snapshot made from the object ([`Ending::Completed`]).
    pub snapshot: Option<String>,
    /// Why the object could not be made a snapshot ([`Ending::Completed`]).
    pub import_error: Option<String>,
    /// DescribeImportSnapshotTasks calls answered.
    pub polls: usize,
    /// Whether CancelImportTask came.
    pub cancelled: bool,
    /// Errors to answer instead of forwarding or faking: (action, code, message), each once.
    pub faults: Vec<(String, String, String)>,
}

/// The fake, listening on loopback until the test process ends.
pub struct FakeEc2 {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// What it saw.
    pub log: Arc<Mutex<Log>>,
}

impl FakeEc2 {
    /// Starts a fake whose task ends as `ending`; the object is copied into `dir`.
    pub fn start(ending: Ending, dir: &Path) -> FakeEc2 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Log::default()));
        let l = log.clone();
        let object = dir.join("imported.object");
        // Start moto now: the handler threads must not race to do it.
        let _ = super::moto();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (l, object) = (l.clone(), object.clone());
                std::thread::spawn(move || {
                    if let Err(e) = handle(conn, ending, &l, &object) {
                        eprintln!("fake EC2: {e}");
                    }
                });
            }
        });
        FakeEc2 { url, log }
    }

    /// A client of the fake (every service).
    pub fn client(&self) -> Client {
        Client::new(&super::config().with_endpoint(&self.url))
    }

    /// The EC2 actions so far.
    pub fn actions(&self) -> Vec<String> {
        self.log.lock().unwrap().actions.clone()
    }

    /// The form bodies of the EC2 requests of `action` so far.
    pub fn forms(&self, action: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .forms
            .iter()
            .filter(|(a, _)| a == action)
            .map(|(_, f)| f.clone())
            .collect()
    }

    /// Answers the next request of `action` with a 400 error of `code` and `message`.
    pub fn fail_once(&self, action: &str, code: &str, message: &str) {
        self.log
            .lock()
            .unwrap()
            .faults
            .push((action.into(), code.into(), message.into()));
    }

    /// The snapshot the completed import made, if any.
    pub fn snapshot(&self) -> Option<String> {
        self.log.lock().unwrap().snapshot.clone()
    }
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn handle(
    mut conn: TcpStream,
    ending: Ending,
    log: &Mutex<Log>,
    object: &Path,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = String::new();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
            if k.eq_ignore_ascii_case("connection") {
                continue;
            }
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let action = (head.starts_with("POST / ") && body.starts_with(b"Action="))
        .then(|| {
            std::str::from_utf8(&body)
                .ok()?
                .split('&')
                .find_map(|kv| kv.strip_prefix("Action="))
                .map(str::to_string)
        })
        .flatten();
    let mut fault = None;
    if let Some(action) = &action {
        let mut l = log.lock().unwrap();
        l.actions.push(action.clone());
        l.forms
            .push((action.clone(), String::from_utf8_lossy(&body).into_owned()));
        if let Some(i) = l.faults.iter().position(|f| &f.0 == action) {
            fault = Some(l.faults.remove(i));
        }
    }
    if let Some((_, code, message)) = fault {
        let (status, xml) = error(400, &code, &message);
        return respond(&mut conn, status, &xml);
    }
    let faked = matches!(
        action.as_deref(),
        Some("ImportSnapshot" | "DescribeImportSnapshotTasks" | "CancelImportTask")
    );
    if !faked {
        // S3 and the rest of EC2: to moto.
        let mut up = TcpStream::connect(super::moto().url.trim_start_matches("http://"))?;
        up.write_all(head.as_bytes())?;
        up.write_all(b"Connection: close\r\n\r\n")?;
        up.write_all(&body)?;
        let mut resp = Vec::new();
        up.read_to_end(&mut resp)?;
        return conn.write_all(&resp);
    }
    let params = ec2::form_decode(std::str::from_utf8(&body).map_err(io_err)?).map_err(io_err)?;
    let req = Request::decode(&params).map_err(io_err)?;
    let (status, xml) = match req {
        Request::ImportSnapshot(r) => match import(&r, ending, log, object) {
            Ok(()) => (
                200,
                ec2::write_response(
                    &ImportSnapshotResult {
                        import_task_id: Some(TASK.into()),
                        snapshot_task_detail: Some(detail("active", Some("pending"), None)),
                        ..Default::default()
                    },
                    "req-1",
                ),
            ),
            Err(e) => error(400, "InvalidParameter", &e),
        },
        Request::DescribeImportSnapshotTasks(r) if r.import_task_ids != [TASK] => error(
            400,
            "InvalidConversionTaskId.Malformed",
            &format!("{:?} is not {TASK}", r.import_task_ids),
        ),
        Request::DescribeImportSnapshotTasks(_) => {
            let mut l = log.lock().unwrap();
            l.polls += 1;
            let failed = l.import_error.as_ref().map(|e| {
                format!(
                    "ClientError: Disk validation failed [{}]",
                    e.replace('&', " ")
                )
            });
            let snapshot = l.snapshot.clone();
            let d = match (ending, l.polls, l.cancelled) {
                (_, _, true) => detail("deleting", Some("canceled"), None),
                (Ending::Completed | Ending::CompletedEmpty, n, _) if n >= 3 => {
                    match (&failed, &snapshot) {
                        (None, Some(s)) => detail("completed", None, Some(s)),
                        (f, _) => detail(
                            "deleted",
                            Some(f.as_deref().unwrap_or("ServerError: no snapshot")),
                            None,
                        ),
                    }
                }
                (Ending::Deleted, n, _) if n >= 2 => detail(
                    "deleted",
                    Some("ClientError: Disk validation failed [Unsupported VMDK File Format]"),
                    None,
                ),
                _ => detail("active", Some("converting"), None),
            };
            (
                200,
                ec2::write_response(
                    &DescribeImportSnapshotTasksResult {
                        import_snapshot_tasks: vec![ImportSnapshotTask {
                            import_task_id: Some(TASK.into()),
                            snapshot_task_detail: Some(d),
                            ..Default::default()
                        }],
                        next_token: None,
                    },
                    "req-2",
                ),
            )
        }
        Request::CancelImportTask(r) if r.import_task_id.as_deref() != Some(TASK) => error(
            400,
            "InvalidConversionTaskId.Malformed",
            &format!("{:?} is not {TASK}", r.import_task_id),
        ),
        Request::CancelImportTask(_) => {
            log.lock().unwrap().cancelled = true;
            (
                200,
                ec2::write_response(
                    &CancelImportTaskResult {
                        import_task_id: Some(TASK.into()),
                        previous_state: Some("active".into()),
                        state: Some("deleting".into()),
                    },
                    "req-3",
                ),
            )
        }
        other => error(400, "InvalidAction", other.action()),
    };
    respond(&mut conn, status, &xml)
}

fn respond(conn: &mut TcpStream, status: u16, xml: &str) -> std::io::Result<()> {
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
        xml.len()
    );
    conn.write_all(resp.as_bytes())
}

fn error(status: u16, code: &str, message: &str) -> (u16, String) {
    (
        status,
        ErrorResponse {
            errors: vec![ec2::ApiError::new(code, message)],
            request_id: "req-x".into(),
        }
        .to_xml(),
    )
}

/// Copies the object into `object` as the importer would read it and, for
/// [`Ending::Completed`], makes it a snapshot in moto (or records why it cannot).
fn import(
    r: &ec2::ImportSnapshotRequest,
    ending: Ending,
    log: &Mutex<Log>,
    object: &Path,
) -> Result<(), String> {
    let ub = r
        .disk_container
        .as_ref()
        .and_then(|d| d.user_bucket.clone())
        .ok_or("no DiskContainer.UserBucket")?;
    let (bucket, key) = (
        ub.s3_bucket.ok_or("no S3Bucket")?,
        ub.s3_key.ok_or("no S3Key")?,
    );
    let moto = super::client();
    let size = s3::head_object(&moto, &bucket, &key)
        .map_err(|e| e.to_string())?
        .size;
    let mut f = std::fs::File::create(object).map_err(|e| e.to_string())?;
    let mut off = 0;
    while off < size {
        let chunk =
            s3::get_object_range(&moto, &bucket, &key, off, 8 << 20).map_err(|e| e.to_string())?;
        if chunk.is_empty() {
            return Err(format!("s3://{bucket}/{key} ended at {off} of {size}"));
        }
        f.write_all(&chunk).map_err(|e| e.to_string())?;
        off += chunk.len() as u64;
    }
    drop(f);
    {
        let mut l = log.lock().unwrap();
        l.import = Some(r.clone());
        l.object = Some(object.to_path_buf());
    }
    if matches!(ending, Ending::Completed | Ending::CompletedEmpty) {
        let made = stamp_disk::open(object, None)
            .map_err(|e| e.to_string())
            .and_then(|disk| make_snapshot(&moto, disk.as_ref(), ending))
            .map_err(|e| format!("{}: {e}", object.display()));
        let mut l = log.lock().unwrap();
        match made {
            Ok(id) => l.snapshot = Some(id),
            Err(e) => l.import_error = Some(e),
        }
    }
    Ok(())
}

/// A snapshot in moto of `disk`'s size: with its data ([`Ending::Completed`]) or none.
fn make_snapshot(
    moto: &Client,
    disk: &dyn stamp_disk::DiskReader,
    ending: Ending,
) -> Result<String, String> {
    use stamp_aws::ebs;
    let opts = ebs::UploadOptions {
        description: Some(format!("Created by AWS-VMImport service for {TASK}")),
        ..Default::default()
    };
    let no = AtomicBool::new(false);
    if ending == Ending::Completed {
        return ebs::upload(moto, disk, &opts, &|_| {}, &no)
            .map(|r| r.snapshot_id)
            .map_err(|e| e.to_string());
    }
    let gib = disk.virtual_size().div_ceil(1 << 30).max(1);
    let snap = ebs::start_snapshot(moto, gib, &opts).map_err(|e| e.to_string())?;
    let id = snap.snapshot_id;
    ebs::complete_snapshot(moto, &id, 0, &ebs::linear_checksum([]))
        .and_then(|_| ebs::wait_completed(moto, &id, std::time::Duration::from_secs(60), &no))
        .map_err(|e| e.to_string())?;
    Ok(id)
}

fn detail(status: &str, message: Option<&str>, snap: Option<&str>) -> SnapshotTaskDetail {
    SnapshotTaskDetail {
        status: Some(status.into()),
        status_message: message.map(Into::into),
        progress: (status == "active").then(|| "42".into()),
        snapshot_id: snap.map(Into::into),
        format: Some("VMDK".into()),
        ..Default::default()
    }
}
