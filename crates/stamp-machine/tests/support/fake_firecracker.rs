//! A fake `firecracker` (python3) for tests: serves the API socket, records each request in
//! `requests.jsonl` in its working directory, refuses a missing kernel or drive as Firecracker
//! does, prints a login prompt on InstanceStart and exits on SendCtrlAltDel.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use stamp_machine::driver::which;

pub const FAKE: &str = r#"
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
pub fn fake_firecracker(dir: &Path) -> Option<PathBuf> {
    let python = which("python3")?;
    let path = dir.join("firecracker");
    std::fs::write(&path, format!("#!{}\n{FAKE}", python.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(path)
}
