//! The busybox test image for podman tests (shared by stamp-machine's and the CLI's tests):
//! made here with `podman import`, no registry.

#![allow(dead_code)]

use std::process::Command;
use std::sync::OnceLock;

use stamp_machine::driver::which;

/// The test image: busybox and a few of its applets. Change the tag when its contents
/// change (it is made only when missing).
pub const IMAGE: &str = "localhost/stamp-test-busybox:1";

pub fn podman_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        if which("podman").is_none() {
            return Err("podman is not installed (apt-get install podman runc)".into());
        }
        // Made once per host: each import would leave another untagged image behind.
        let exists = Command::new("podman")
            .args(["image", "exists", IMAGE])
            .status()
            .is_ok_and(|s| s.success());
        if exists {
            return Ok(());
        }
        let d = tempfile::tempdir().expect("a temporary directory");
        let root = d.path().join("rootfs");
        std::fs::create_dir_all(root.join("bin")).expect("mkdir");
        std::fs::create_dir_all(root.join("www")).expect("mkdir");
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("/bin/busybox (apt-get install busybox-static)");
        for applet in ["sh", "echo", "cat", "sleep", "httpd"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("ln");
        }
        std::fs::write(root.join("www/index.html"), "hello through the port\n").expect("write");
        let tar = d.path().join("rootfs.tar");
        ok(Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        ok(Command::new("podman").arg("import").arg(&tar).arg(IMAGE));
        Ok(())
    });
    match ready {
        Ok(()) => true,
        Err(why) if std::env::var_os("STAMP_REQUIRE_PODMAN").is_some_and(|v| v == "1") => {
            panic!("podman is required (STAMP_REQUIRE_PODMAN=1): {why}")
        }
        Err(why) => {
            eprintln!("skipping the podman test: {why}");
            false
        }
    }
}

/// Runs a command that must succeed.
fn ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
