//! The driver against a fake Firecracker API server on a Unix socket, and its preparation of
//! a machine's directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use serde_json::{Value, json};

use super::*;
use crate::spec::{Platform, PortForward};
use crate::store::MachineStore;

/// One request the fake server received.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    path: String,
    body: Value,
}

impl Seen {
    fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Reads one request from `conn`; `None` when the client closed without sending one.
fn read_request(conn: &mut UnixStream) -> Option<Seen> {
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{line}");
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').unwrap();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).unwrap();
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    Some(Seen { method, path, body })
}

/// A fake Firecracker API on `socket`: records each request and answers 204 No Content as
/// Firecracker does, or 400 with a fault for the request `fault_on` (`"PUT /boot-source"`).
/// Returns what it saw after `expect` requests.
fn fake_firecracker(
    socket: &Path,
    fault_on: Option<&'static str>,
    expect: usize,
) -> JoinHandle<Vec<Seen>> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let Some(req) = read_request(&mut conn) else {
                continue; // a connection that only probed for the socket
            };
            let reply = if fault_on == Some(req.describe().as_str()) {
                let body = r#"{"fault_message":"Invalid kernel path: No such file or directory (os error 2)"}"#;
                format!(
                    "HTTP/1.1 400 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n".into()
            };
            conn.write_all(reply.as_bytes()).unwrap();
            seen.push(req);
            if seen.len() == expect {
                break;
            }
        }
        seen
    })
}

struct Fixture {
    _tmp: tempfile::TempDir,
    images: PathBuf,
    store: MachineStore,
}

impl Fixture {
    /// A kernel (an ELF header), an initrd and a 4 MiB raw root disk with data at 1 MiB.
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let images = tmp.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let mut kernel = b"\x7fELF\x02\x01\x01".to_vec();
        kernel.resize(4096, 0);
        std::fs::write(images.join("vmlinux"), kernel).unwrap();
        std::fs::write(images.join("initrd.img"), b"070701").unwrap();
        let root = std::fs::File::create(images.join("rootfs.ext4")).unwrap();
        root.set_len(4 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        root.write_all_at(b"the root filesystem", 1 << 20).unwrap();
        let store = MachineStore::new(tmp.path().join("machines"));
        Fixture {
            _tmp: tmp,
            images,
            store,
        }
    }

    fn spec(&self, name: &str) -> MachineSpec {
        MachineSpec {
            cpus: 2,
            memory: 256 << 20,
            ..MachineSpec::new(
                name,
                self.images.join("vmlinux").display().to_string(),
                Platform::Firecracker,
                Source::Kernel {
                    kernel: self.images.join("vmlinux"),
                    initrd: Some(self.images.join("initrd.img")),
                    root: Some(self.images.join("rootfs.ext4")),
                    cmdline: "quiet".into(),
                },
            )
        }
    }

    fn create(&self, spec: &MachineSpec) -> Result<MachineDir> {
        let fc = Firecracker::new();
        self.store.create(spec, |d| fc.prepare(spec, d))
    }

    /// Machines and leftovers in the store.
    fn store_entries(&self) -> usize {
        std::fs::read_dir(self.store.root()).map_or(0, |d| d.count())
    }
}

#[test]
fn without_the_binary_available_says_what_to_install() {
    let fc = Firecracker::with_program("stamp-test-no-such-firecracker");
    let e = fc.available().unwrap_err().to_string();
    assert!(e.contains("firecracker is not installed"), "{e}");
    assert!(
        e.contains("github.com/firecracker-microvm/firecracker/releases"),
        "{e}"
    );
    assert!(e.contains("--platform qemu"), "{e}");
    let e = Firecracker::with_program("/nonexistent/firecracker")
        .available()
        .unwrap_err();
    assert!(matches!(e, Error::Driver(_)), "{e}");
    // This host has no firecracker: the default driver says so too.
    if which("firecracker").is_none() {
        assert!(Firecracker::new().available().is_err());
    }
    // A binary that is there is found, by name or path.
    Firecracker::with_program("sh").available().unwrap();
    Firecracker::with_program("/bin/sh").available().unwrap();
}

#[test]
fn the_whole_start_sequence_against_a_fake_api() {
    let f = Fixture::new();
    let spec = f.spec("web_1.test");
    let dir = f.create(&spec).unwrap();
    let fc = Firecracker::new();
    let server = fake_firecracker(&dir.api_socket(), None, 8);
    fc.started(&spec, &dir, std::process::id()).unwrap();
    fc.pause(&spec, &dir).unwrap();
    fc.resume(&spec, &dir).unwrap();
    fc.shutdown(&spec, &dir).unwrap();
    let seen = server.join().unwrap();
    let order: Vec<String> = seen.iter().map(Seen::describe).collect();
    assert_eq!(
        order,
        [
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /vsock",
            "PUT /actions",
            "PATCH /vm",
            "PATCH /vm",
            "PUT /actions",
        ]
    );
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let bodies: Vec<&Value> = seen.iter().map(|s| &s.body).collect();
    assert_eq!(
        bodies,
        [
            &json!({"vcpu_count": 2, "mem_size_mib": 256}),
            &json!({
                "kernel_image_path": f.images.join("vmlinux").to_str().unwrap(),
                "initrd_path": f.images.join("initrd.img").to_str().unwrap(),
                "boot_args": "quiet console=ttyS0 reboot=k panic=1",
            }),
            &json!({
                "drive_id": "rootfs",
                "path_on_host": path(ROOT_DISK),
                "is_root_device": true,
                "is_read_only": false,
            }),
            &json!({"guest_cid": 3, "uds_path": path(VSOCK_SOCKET)}),
            &json!({"action_type": "InstanceStart"}),
            &json!({"state": "Paused"}),
            &json!({"state": "Resumed"}),
            &json!({"action_type": "SendCtrlAltDel"}),
        ]
    );
}

#[test]
fn a_fault_becomes_an_error_naming_the_request() {
    let f = Fixture::new();
    let spec = f.spec("m");
    let dir = f.create(&spec).unwrap();
    let server = fake_firecracker(&dir.api_socket(), Some("PUT /boot-source"), 2);
    let e = Firecracker::new()
        .started(&spec, &dir, std::process::id())
        .unwrap_err();
    let seen = server.join().unwrap();
    assert_eq!(seen.len(), 2, "nothing is sent after the fault");
    let msg = e.to_string();
    assert!(matches!(e, Error::Driver(_)), "{msg}");
    assert!(msg.contains("PUT /boot-source"), "{msg}");
    assert!(msg.contains("HTTP 400"), "{msg}");
    assert!(msg.contains("Invalid kernel path"), "{msg}");
}

#[test]
fn a_firecracker_that_exits_early_is_reported_not_waited_for() {
    let f = Fixture::new();
    let spec = f.spec("m");
    let dir = f.create(&spec).unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let e = Firecracker::new()
        .started(&spec, &dir, pid)
        .unwrap_err()
        .to_string();
    assert!(e.contains("exited before it opened its API socket"), "{e}");
}

#[test]
fn control_without_a_running_firecracker_is_an_error() {
    let f = Fixture::new();
    let spec = f.spec("m");
    let dir = f.create(&spec).unwrap();
    let e = Firecracker::new()
        .pause(&spec, &dir)
        .unwrap_err()
        .to_string();
    assert!(e.contains("PATCH /vm"), "{e}");
    assert!(e.contains("api.sock"), "{e}");
}

#[test]
fn prepare_copies_the_root_disk_and_leaves_the_image_alone() {
    let f = Fixture::new();
    let mut spec = f.spec("m");
    spec.disk_size = Some(8 << 20);
    let dir = f.create(&spec).unwrap();
    let copy = dir.path().join(ROOT_DISK);
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), 8 << 20);
    let data = std::fs::read(&copy).unwrap();
    assert_eq!(&data[1 << 20..(1 << 20) + 19], b"the root filesystem");
    // Writing to the machine's disk does not change the image.
    use std::os::unix::fs::FileExt;
    let w = std::fs::File::options().write(true).open(&copy).unwrap();
    w.write_all_at(b"changed", 1 << 20).unwrap();
    let image = std::fs::read(f.images.join("rootfs.ext4")).unwrap();
    assert_eq!(image.len(), 4 << 20);
    assert_eq!(&image[1 << 20..(1 << 20) + 19], b"the root filesystem");
}

#[test]
fn bad_machines_are_refused_at_creation_and_leave_nothing() {
    let f = Fixture::new();
    let source = |kernel: &str, root: Option<&str>| Source::Kernel {
        kernel: f.images.join(kernel),
        initrd: None,
        root: root.map(|r| f.images.join(r)),
        cmdline: String::new(),
    };
    std::fs::write(f.images.join("notes.txt"), b"hello").unwrap();
    let mut bz = vec![0u8; 0x300];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(f.images.join("bzImage"), bz).unwrap();
    let mut qcow = b"QFI\xfb\0\0\0\x03".to_vec();
    qcow.resize(4096, 0);
    std::fs::write(f.images.join("root.qcow2"), qcow).unwrap();

    let mut cases: Vec<(MachineSpec, &str)> = Vec::new();
    let mut s = f.spec("a");
    s.source = source("missing-vmlinux", Some("rootfs.ext4"));
    cases.push((s, "cannot open the kernel"));
    let mut s = f.spec("b");
    s.source = source("vmlinux", Some("missing.ext4"));
    cases.push((s, "cannot open the root disk"));
    if cfg!(target_arch = "x86_64") {
        let mut s = f.spec("c");
        s.source = source("bzImage", Some("rootfs.ext4"));
        cases.push((s, "compressed bzImage"));
        let mut s = f.spec("d");
        s.source = source("notes.txt", Some("rootfs.ext4"));
        cases.push((s, "not an ELF file"));
    }
    let mut s = f.spec("e");
    s.source = source("vmlinux", Some("root.qcow2"));
    cases.push((s, "stamp convert -O raw"));
    let mut s = f.spec("f");
    s.source = source("vmlinux", None);
    cases.push((s, "needs a root disk or an initrd"));
    let mut s = f.spec("g");
    s.ports = vec!["8080:80".parse::<PortForward>().unwrap()];
    cases.push((s, "cannot forward ports"));
    let mut s = f.spec("h");
    s.cpus = 64;
    cases.push((s, "1 to 32"));
    let mut s = f.spec("i");
    s.disk_size = Some(1 << 20);
    cases.push((s, "disks only grow"));
    let mut s = f.spec("j");
    s.source = Source::Container {
        reference: "alpine".into(),
    };
    cases.push((s, "--platform podman"));
    for (spec, want) in cases {
        let e = f.create(&spec).unwrap_err().to_string();
        assert!(e.contains(want), "{}: {e}", spec.name);
        assert_eq!(f.store_entries(), 0, "{} left something", spec.name);
    }
}

#[test]
fn launch_runs_firecracker_with_its_socket_and_id() {
    let f = Fixture::new();
    let spec = f.spec("web_1.test");
    let dir = f.create(&spec).unwrap();
    // A stale socket from an earlier run would make firecracker fail to bind.
    std::fs::write(dir.api_socket(), b"").unwrap();
    let launch = Firecracker::with_program("/bin/true")
        .launch(&spec, &dir)
        .unwrap();
    assert!(!dir.api_socket().exists());
    assert!(launch.output_is_console);
    assert!(!launch.workload_exit);
    let args: Vec<String> = launch
        .command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let api = dir.api_socket().display().to_string();
    assert_eq!(args[..4], ["--api-sock", &api, "--id", "web-1-test"]);
    assert!(dir.path().join(VMM_LOG).exists());
    assert_eq!(launch.command.get_current_dir(), Some(dir.path()));
}

#[test]
fn instance_ids_are_what_firecracker_accepts() {
    assert_eq!(instance_id("db.main_2"), "db-main-2");
    assert_eq!(instance_id("x"), "x");
    let long = instance_id(&"n".repeat(100));
    assert_eq!(long.len(), 64);
}

#[test]
fn long_socket_paths_are_passed_relative_to_the_machine_directory() {
    let long = Path::new("/").join("d".repeat(120)).join("api.sock");
    assert_eq!(socket_arg(&long), Path::new("api.sock"));
    let short = Path::new("/tmp/m/api.sock");
    assert_eq!(socket_arg(short), short);
}
