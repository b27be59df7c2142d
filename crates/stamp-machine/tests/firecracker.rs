//! The Firecracker driver under the real runtime ([`Local::run_foreground`], the monitor), with
//! a fake `firecracker`: a Python script that serves the API socket as Firecracker does
//! (204 No Content, 400 with a `fault_message`), records each request, writes a "console" on
//! stdout after InstanceStart and exits when the guest is sent Ctrl-Alt-Del.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use stamp_machine::driver::which;
use stamp_machine::firecracker::Firecracker;
use stamp_machine::runtime::{Drivers, Local};
use stamp_machine::spec::{MachineSpec, Platform, Source};
use stamp_machine::store::MachineStore;
use stamp_machine::{MachineService, State};

const FAKE: &str = r#"
import json, os, socket, sys

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
assert set(args) == {"--api-sock", "--id", "--log-path", "--level"}, sys.argv
assert os.path.exists(args["--log-path"]), "the log file must exist"
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(args["--api-sock"])
srv.listen(8)
configured = set()

def answer(conn, status, fault=None):
    if fault is None:
        conn.sendall(b"HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n")
    else:
        body = json.dumps({"fault_message": fault}).encode()
        conn.sendall(b"HTTP/1.1 %d \r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (status, len(body)) + body)

while True:
    conn, _ = srv.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    if not data:
        conn.close()
        continue
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    method, path, _ = lines[0].split(" ")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(4096)
    req = json.loads(body) if body else None
    with open("requests.jsonl", "a") as f:
        f.write(json.dumps({"method": method, "path": path, "body": req}) + "\n")
    action = (req or {}).get("action_type")
    if path == "/boot-source" and not os.path.exists(req["kernel_image_path"]):
        answer(conn, 400, "Invalid kernel path: No such file or directory (os error 2)")
    elif path.startswith("/drives/") and not os.path.exists(req["path_on_host"]):
        answer(conn, 400, "Unable to open the drive file: No such file or directory (os error 2)")
    elif method == "PUT" and path != "/actions":
        configured.add(path)
        answer(conn, 204)
    elif action == "InstanceStart":
        if "/boot-source" not in configured:
            answer(conn, 400, "Cannot start microvm without kernel configuration.")
        else:
            answer(conn, 204)
            print("Linux version 6.1.0 (fake)\nfake login:", flush=True)
    elif action == "SendCtrlAltDel":
        answer(conn, 204)
        print("reboot: Restarting system", flush=True)
        sys.exit(0)
    elif method == "PATCH" and path == "/vm":
        answer(conn, 204)
    else:
        answer(conn, 400, "unexpected request")
    conn.close()
"#;

/// Writes the fake firecracker into `dir`; `None` when this host has no python3.
fn fake_firecracker(dir: &Path) -> Option<PathBuf> {
    let python = which("python3")?;
    let path = dir.join("firecracker");
    std::fs::write(&path, format!("#!{}\n{FAKE}", python.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(path)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < end, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_machine_runs_pauses_and_stops_through_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(program) = fake_firecracker(tmp.path()) else {
        eprintln!("skipped: no python3 for the fake firecracker");
        return;
    };
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let mut kernel = b"\x7fELF\x02\x01\x01".to_vec();
    kernel.resize(4096, 0);
    std::fs::write(images.join("vmlinux"), kernel).unwrap();
    std::fs::write(images.join("rootfs.ext4"), vec![0u8; 1 << 20]).unwrap();

    let fc = || Box::new(Firecracker::with_program(&program));
    let local = Arc::new(Local::new(
        MachineStore::new(tmp.path().join("machines")),
        Drivers {
            qemu: fc(),
            firecracker: fc(),
            podman: fc(),
        },
        vec!["unused".into()],
    ));
    let spec = MachineSpec {
        name: "fc1".into(),
        image: "vmlinux".into(),
        platform: Platform::Firecracker,
        source: Source::Kernel {
            kernel: images.join("vmlinux"),
            initrd: None,
            root: Some(images.join("rootfs.ext4")),
            cmdline: "ro".into(),
        },
        cpus: 1,
        memory: 128 << 20,
        disk_size: None,
        ports: vec![],
        env: vec![],
        cmd: vec![],
        remove: false,
        systemd: None,
        created: "2026-01-01T00:00:00Z".into(),
    };
    assert_eq!(local.create(&spec).unwrap().state(), State::Created);

    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (local, stop) = (local.clone(), stop.clone());
        std::thread::spawn(move || local.run_foreground("fc1", &stop, &|_| {}))
    };
    wait_until("the machine to be up", || {
        let m = local.get("fc1").unwrap();
        m.state() == State::Running && m.status.ready
    });
    let dir = local.store().open("fc1").unwrap();
    wait_until("the console", || {
        std::fs::read_to_string(dir.console_log()).is_ok_and(|l| l.contains("fake login:"))
    });
    assert_eq!(local.pause("fc1").unwrap().state(), State::Paused);
    assert_eq!(local.resume("fc1").unwrap().state(), State::Running);

    stop.store(true, Ordering::SeqCst);
    let ended = monitor.join().unwrap().unwrap();
    assert_eq!(ended.state(), State::Stopped);
    assert_eq!(ended.status.exit_code, Some(0));

    let log = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap();
    let seen: Vec<String> = log
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let action = v["body"]["action_type"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let state = v["body"]["state"].as_str().unwrap_or_default().to_string();
            format!(
                "{} {} {action}{state}",
                v["method"].as_str().unwrap(),
                v["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            "PUT /machine-config ",
            "PUT /boot-source ",
            "PUT /drives/rootfs ",
            "PUT /vsock ",
            "PUT /actions InstanceStart",
            "PATCH /vm Paused",
            "PATCH /vm Resumed",
            "PUT /actions SendCtrlAltDel",
        ]
    );
    assert!(
        std::fs::read_to_string(dir.console_log())
            .unwrap()
            .contains("reboot: Restarting system")
    );
}

#[test]
fn a_rejected_configuration_fails_the_machine_with_firecrackers_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(program) = fake_firecracker(tmp.path()) else {
        eprintln!("skipped: no python3 for the fake firecracker");
        return;
    };
    let kernel = tmp.path().join("vmlinux");
    let mut k = b"\x7fELF".to_vec();
    k.resize(64, 0);
    std::fs::write(&kernel, k).unwrap();
    std::fs::write(tmp.path().join("initrd"), b"x").unwrap();
    let fc = || Box::new(Firecracker::with_program(&program));
    let local = Local::new(
        MachineStore::new(tmp.path().join("machines")),
        Drivers {
            qemu: fc(),
            firecracker: fc(),
            podman: fc(),
        },
        vec!["unused".into()],
    );
    let spec = MachineSpec {
        name: "fc2".into(),
        image: "vmlinux".into(),
        platform: Platform::Firecracker,
        source: Source::Kernel {
            kernel: kernel.clone(),
            initrd: Some(tmp.path().join("initrd")),
            root: None,
            cmdline: String::new(),
        },
        cpus: 1,
        memory: 128 << 20,
        disk_size: None,
        ports: vec![],
        env: vec![],
        cmd: vec![],
        remove: false,
        systemd: None,
        created: "2026-01-01T00:00:00Z".into(),
    };
    local.create(&spec).unwrap();
    // The kernel disappears after the machine was created: Firecracker refuses the boot source.
    std::fs::remove_file(&kernel).unwrap();
    let e = local
        .run_foreground("fc2", &AtomicBool::new(false), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("PUT /boot-source"), "{e}");
    assert!(e.contains("Invalid kernel path"), "{e}");
    let m = local.get("fc2").unwrap();
    assert_eq!(m.state(), State::Failed);
    assert!(m.status.reason.unwrap().contains("Invalid kernel path"));
    assert!(m.status.vmm.is_none(), "the fake firecracker was killed");
}
