//! `stamp app`: host commands that run inside a container, against real podman (runc) and a
//! busybox image made here. The registered command is a symlink to the stamp binary.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::common::*;

/// A private flakes directory ($XDG_DATA_HOME/flakes) and bin directory, and more variables
/// for every command.
struct Env {
    dir: tempfile::TempDir,
    extra: Vec<(&'static str, PathBuf)>,
}

impl Env {
    fn new() -> Env {
        let dir = tmp();
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .unwrap();
        Env {
            dir,
            extra: Vec::new(),
        }
    }

    /// Sets `var` to the directory `name` in the environment's directory (made here).
    fn with_dir(mut self, var: &'static str, name: &str) -> Env {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        self.extra.push((var, p));
        self
    }

    fn vars(&self, c: &mut Command) {
        c.env("XDG_DATA_HOME", self.dir.path().join("data"))
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env("STAMP_PODMAN_RUNTIME", "runc")
            .env_remove("STAMP_DEBUG")
            .env_remove("PILOT_DEBUG");
        for (k, v) in &self.extra {
            c.env(k, v);
        }
    }

    fn stamp(&self, args: &[&str]) -> Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_stamp"));
        c.args(args);
        self.vars(&mut c);
        c.output().unwrap().into()
    }

    fn app(&self, name: &str) -> PathBuf {
        self.dir.path().join("bin").join(name)
    }

    /// Runs the registered command `name` with `args` (and `stdin`).
    fn call(&self, name: &str, args: &[&str], stdin: &[u8]) -> Run {
        let mut c = Command::new(self.app(name));
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.vars(&mut c);
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap().into()
    }

    fn register(&self, name: &str, target: &str) {
        let app = self.app(name);
        let r = self.stamp(&[
            "app",
            "register",
            "--user",
            "--app",
            s(&app),
            "--image",
            crate::busybox::IMAGE,
            "--target",
            target,
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
}

#[test]
fn a_busybox_flake_keeps_its_streams_apart_streams_them_and_exits_as_the_app() {
    if !crate::busybox::podman_ready() {
        return;
    }
    let env = Env::new();
    env.register("bsh", "/bin/sh");

    // stdout and stderr through two pipes, the app's exit status.
    let r = env.call("bsh", &["-c", "echo to-out; echo to-err >&2; exit 3"], b"");
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(r.stdout, "to-out\n");
    assert_eq!(r.stderr, "to-err\n");
    let r = env.call("bsh", &["-c", "true"], b"");
    assert_eq!((r.code, r.stdout.as_str(), r.stderr.as_str()), (0, "", ""));

    // stdin passes through; arguments arrive unchanged.
    let r = env.call(
        "bsh",
        &["-c", "cat; echo \"[$1]\"", "sh", "two words"],
        b"x\n",
    );
    assert_eq!(r.stdout, "x\n[two words]\n", "{}", r.stderr);

    // Output streams while the app runs; Ctrl-C (SIGINT) ends it with 130.
    let mut c = Command::new(env.app("bsh"));
    c.args(["-c", "echo started; exec sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    env.vars(&mut c);
    let started = Instant::now();
    let mut child = c.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first line came only at the end"
    );
    eprintln!("first line after {:?}", started.elapsed());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let status = interrupt(&mut child);
    assert_eq!(status.code(), Some(130));

    // list and remove.
    let list: serde_json::Value =
        serde_json::from_str(&env.stamp(&["app", "list", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["name"], "bsh");
    assert_eq!(list[0]["engine"], "podman");
    assert_eq!(env.stamp(&["app", "remove", "bsh"]).code, 0);
    assert!(std::fs::symlink_metadata(env.app("bsh")).is_err());
    assert_eq!(env.stamp(&["app", "list", "--json"]).stdout.trim(), "[]");
}

#[test]
fn a_flake_pilot_yaml_written_by_hand_is_launched() {
    if !crate::busybox::podman_ready() {
        return;
    }
    let env = Env::new();
    let flakes = env.dir.path().join("data/flakes");
    std::fs::create_dir_all(flakes.join("hello.d")).unwrap();
    let app = env.app("hello");
    // As flake-pilot's podman-pilot(8) documents it.
    std::fs::write(
        flakes.join("hello.yaml"),
        format!(
            "container:\n  name: {}\n  target_app_path: /bin/echo\n  host_app_path: {}\n  runtime:\n    runas: root\n    resume: false\n    attach: false\n    podman:\n      - --rm\n      - -ti\n",
            crate::busybox::IMAGE,
            app.display()
        ),
    )
    .unwrap();
    // A part in hello.d overrides a key.
    std::fs::write(
        flakes.join("hello.d/extra.yaml"),
        "container:\n  runtime:\n    podman:\n      - --env GREETING=hi\n",
    )
    .unwrap();
    std::fs::create_dir_all(app.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stamp"), &app).unwrap();
    let r = env.call("hello", &["from", "flake-pilot"], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "from flake-pilot\n");
}

#[test]
fn bad_registrations_and_flakes_are_refused_clearly() {
    let env = Env::new();
    // A vm flake needs the image whose kernel boots it.
    let r = env.stamp(&[
        "app",
        "register",
        "--user",
        "--engine",
        "vm",
        "--app",
        s(&env.app("v")),
        "--image",
        "oci-archive:/nonexistent.tar",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("--engine vm needs --kernel"),
        "{}",
        r.stderr
    );
    assert!(std::fs::symlink_metadata(env.app("v")).is_err());
    // An app path that is another program is never overwritten.
    let foreign = env.dir.path().join("ls");
    std::fs::write(&foreign, "a real program").unwrap();
    if crate::busybox::podman_ready() {
        let r = env.stamp(&[
            "app",
            "register",
            "--user",
            "--app",
            s(&foreign),
            "--image",
            crate::busybox::IMAGE,
        ]);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("not a stamp launcher"), "{}", r.stderr);
        assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "a real program");

        // An unknown image.
        let r = env.stamp(&[
            "app",
            "register",
            "--user",
            "--app",
            s(&env.app("x")),
            "--image",
            "localhost/no-such-image:1",
        ]);
        assert_eq!(r.code, 1);
        assert!(
            r.stderr.contains("unknown image localhost/no-such-image:1"),
            "{}",
            r.stderr
        );
        assert!(std::fs::symlink_metadata(env.app("x")).is_err());
    }

    // A malformed flake file: the launcher names the file and the line.
    let flakes = env.dir.path().join("data/flakes");
    std::fs::create_dir_all(&flakes).unwrap();
    std::fs::write(
        flakes.join("broken.yaml"),
        "container:\n  name: x\n  host_app_path: /usr/bin/broken\n  runtime: [oops\n",
    )
    .unwrap();
    let app = env.app("broken");
    std::fs::create_dir_all(app.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stamp"), &app).unwrap();
    let r = env.call("broken", &[], b"");
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains(&format!("{}", flakes.join("broken.yaml").display()))
            && r.stderr.contains("line"),
        "{}",
        r.stderr
    );
    // A command of that name with no registration.
    let stray = env.app("stray");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stamp"), &stray).unwrap();
    let r = env.call("stray", &[], b"");
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no app named stray"), "{}", r.stderr);
}

#[test]
fn a_resume_flake_runs_calls_in_one_instance_per_name() {
    if !crate::busybox::podman_ready() {
        return;
    }
    let env = Env::new();
    let app = env.app("rsh");
    let r = env.stamp(&[
        "app",
        "register",
        "--user",
        "--resume",
        "--app",
        s(&app),
        "--image",
        crate::busybox::IMAGE,
        "--target",
        "/bin/sh",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // State written by the first call is seen by the second, in the same instance.
    let r = env.call("rsh", &["@a", "-c", "echo kept > /state"], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = env.call("rsh", &["@a", "-c", "cat /state; exit 5"], b"");
    assert_eq!((r.code, r.stdout.as_str()), (5, "kept\n"), "{}", r.stderr);
    // @b is another instance.
    let r = env.call("rsh", &["@b", "-c", "cat /state"], b"");
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("/state"), "{}", r.stderr);
    let list: serde_json::Value =
        serde_json::from_str(&env.stamp(&["app", "list", "--json"]).stdout).unwrap();
    assert_eq!(
        list[0]["instances"],
        serde_json::json!(["stamp-app-rsh-a", "stamp-app-rsh-b"])
    );
    // %remove ends the instance after the call.
    let r = env.call("rsh", &["@b", "%remove", "-c", "echo last"], b"");
    assert_eq!((r.code, r.stdout.as_str()), (0, "last\n"), "{}", r.stderr);
    // Removing the app removes its instances.
    assert_eq!(env.stamp(&["app", "remove", "rsh"]).code, 0);
    let left = Command::new("podman")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=stamp.app=rsh",
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "");
}

/// Sends SIGINT to a launcher (Ctrl-C) and waits for it to end (a minute at most).
fn interrupt(child: &mut std::process::Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("SIGINT did not end the app within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A root filesystem tar with busybox's sh and cat and `files` (path, content).
fn rootfs_tar(dir: &std::path::Path, name: &str, busybox: bool, files: &[(&str, &str)]) -> PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    if busybox {
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for a in ["sh", "cat"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
    }
    for (path, content) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    let tar = dir.join(format!("{name}.tar"));
    tar_dir(&root, &tar);
    tar
}

/// podman's images of the composed app `name`.
fn composed_images(name: &str) -> Vec<String> {
    let out = Command::new("podman")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("localhost/stamp-app-{name}:")))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_flake_is_provisioned_from_a_base_a_layer_and_a_host_file_and_cached() {
    if !crate::busybox::podman_ready() {
        return;
    }
    let env = Env::new();
    let d = env.dir.path();
    let base = rootfs_tar(
        d,
        "base",
        true,
        &[("etc/base-file", "base\n"), ("etc/override", "from-base\n")],
    );
    let layer = rootfs_tar(d, "layer", false, &[("etc/override", "from-layer\n")]);
    let app = rootfs_tar(d, "app", false, &[("app-file", "app\n")]);
    for (name, tar) in [("base", &base), ("layer", &layer), ("app", &app)] {
        let r = env.stamp(&[
            "import",
            "--name",
            &format!("localhost/prov-{name}:1"),
            s(tar),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let host_file = d.join("host-file");
    std::fs::write(&host_file, "host\n").unwrap();

    // A base that is not in the store is refused at registration.
    let r = env.stamp(&[
        "app",
        "register",
        "--user",
        "--app",
        s(&env.app("prov")),
        "--image",
        "localhost/prov-app:1",
        "--base",
        "localhost/prov-missing:1",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("unknown image localhost/prov-missing:1"),
        "{}",
        r.stderr
    );

    let r = env.stamp(&[
        "app",
        "register",
        "--user",
        "--app",
        s(&env.app("prov")),
        "--image",
        "localhost/prov-app:1",
        "--base",
        "localhost/prov-base:1",
        "--layer",
        "localhost/prov-layer:1",
        "--include-path",
        s(&host_file),
        "--target",
        "/bin/sh",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let script = format!(
        "cat /etc/base-file /etc/override /app-file {}",
        host_file.display()
    );
    let t = Instant::now();
    let r = env.call("prov", &["-c", &script], b"");
    let first = t.elapsed();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "base\nfrom-layer\napp\nhost\n");
    let made = composed_images("prov");
    assert_eq!(made.len(), 1, "{made:?}");

    // The second launch finds the composed image: nothing is composed again.
    let t = Instant::now();
    let r = env.call("prov", &["-c", &script], b"");
    let second = t.elapsed();
    assert_eq!(r.stdout, "base\nfrom-layer\napp\nhost\n", "{}", r.stderr);
    assert_eq!(composed_images("prov"), made);
    eprintln!("first launch (composes the image) {first:?}, second launch (cached) {second:?}");

    // A changed host file is a new image with the new content.
    std::fs::write(&host_file, "host, changed\n").unwrap();
    let r = env.call(
        "prov",
        &["-c", &format!("cat {}", host_file.display())],
        b"",
    );
    assert_eq!(r.stdout, "host, changed\n", "{}", r.stderr);
    for image in composed_images("prov") {
        let _ = Command::new("podman").args(["rmi", "-f", &image]).output();
    }
}

#[test]
fn a_non_root_user_registers_and_runs_a_flake_with_rootless_podman() {
    if !crate::busybox::podman_ready() {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: switching to another user needs root");
        return;
    }
    // A home for nobody (65534), outside the root-only test directory.
    let home = tempfile::Builder::new()
        .prefix("stamp-nobody")
        .tempdir_in("/tmp")
        .unwrap();
    let h = home.path();
    std::fs::create_dir_all(h.join("run")).unwrap();
    std::fs::create_dir_all(h.join("bin")).unwrap();
    std::fs::write(
        h.join("containers.conf"),
        "[containers]\ndefault_ulimits = []\n",
    )
    .unwrap();
    let image = h.join("busybox.tar");
    let out = Command::new("podman")
        .args([
            "save",
            "--format",
            "oci-archive",
            "-o",
            s(&image),
            crate::busybox::IMAGE,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let chown = Command::new("chown")
        .args(["-R", "65534:65534", s(h)])
        .status()
        .unwrap();
    assert!(chown.success());
    std::fs::set_permissions(
        h.join("run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let as_nobody = |program: &str, args: &[&str]| -> Run {
        Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ])
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", h)
            .env("XDG_RUNTIME_DIR", h.join("run"))
            .env("XDG_DATA_HOME", h.join("data"))
            .env("CONTAINERS_CONF", h.join("containers.conf"))
            .env("STAMP_PODMAN_RUNTIME", "runc")
            .current_dir(h)
            .output()
            .unwrap()
            .into()
    };
    // nobody's own podman storage gets the image (rootless: no sudo anywhere).
    let r = as_nobody("podman", &["load", "-q", "-i", s(&image)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let app = h.join("bin/nsh");
    // --no-net: this sandbox gives no /dev/net/tun to rootless podman's slirp4netns.
    let r = as_nobody(
        env!("CARGO_BIN_EXE_stamp"),
        &[
            "app",
            "register",
            "--user",
            "--no-net",
            "--app",
            s(&app),
            "--image",
            crate::busybox::IMAGE,
            "--target",
            "/bin/sh",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = as_nobody(s(&app), &["-c", "echo out-$(id -u); echo err >&2; exit 4"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert_eq!(r.stdout, "out-0\n", "root inside nobody's user namespace");
    assert!(r.stderr.ends_with("err\n"), "{}", r.stderr);
    // nobody's podman storage is removed with the directory (all of it is nobody's).
    let _ = as_nobody("podman", &["system", "prune", "-a", "-f"]);
}

#[test]
fn an_attach_flake_attaches_a_second_call_to_the_running_instance() {
    if !crate::busybox::podman_ready() {
        return;
    }
    let env = Env::new();
    let app = env.app("ash");
    let r = env.stamp(&[
        "app",
        "register",
        "--user",
        "--attach",
        "--app",
        s(&app),
        "--image",
        crate::busybox::IMAGE,
        "--target",
        "/bin/sh",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The first call runs the app in the named instance...
    let mut c = Command::new(&app);
    c.args(["-c", "echo first; sleep 3; echo done; exit 6"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    env.vars(&mut c);
    let mut first = c.spawn().unwrap();
    let mut out = BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "first\n");
    // ...a second call while it runs attaches to it: it sees the rest and its exit status.
    let second = env.call("ash", &["-c", "echo never-run"], b"");
    assert!(
        second.stdout.contains("done"),
        "{}{}",
        second.stdout,
        second.stderr
    );
    assert!(!second.stdout.contains("never-run"));
    assert_eq!(second.code, 6);
    assert_eq!(first.wait().unwrap().code(), Some(6));
    // The ended instance is replaced by the next call, and goes with the app.
    let third = env.call("ash", &["-c", "echo again"], b"");
    assert_eq!(
        (third.code, third.stdout.as_str()),
        (0, "again\n"),
        "{}",
        third.stderr
    );
    assert_eq!(env.stamp(&["app", "remove", "ash"]).code, 0);
    let left = Command::new("podman")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=stamp.app=ash",
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "");
}

/// The application image and the Debian tar the vm tests boot, when they and QEMU are there.
fn vm_inputs() -> Option<(PathBuf, PathBuf)> {
    let (Some(app), Some(kernel)) = (crate::qemu::app_oci(), debian_tar()) else {
        eprintln!("skipped: no application image (scripts/debian-image.sh --app) or Debian tar");
        return None;
    };
    crate::qemu::available().then_some((app, kernel))
}

/// The vm engine under QEMU (TCG here): the busybox application image booted with the Debian
/// kernel, stamp-init as the guest agent. One boot per call, so the checks are combined into
/// three calls.
#[test]
fn a_vm_flake_keeps_its_streams_apart_streams_them_and_exits_as_the_app() {
    let Some((app, kernel)) = vm_inputs() else {
        return;
    };
    let env = Env::new()
        .with_dir("XDG_CACHE_HOME", "cache")
        .with_dir("TMPDIR", "tmp");
    let tmpdir = env.dir.path().join("tmp");
    let vars = |c: &mut Command| env.vars(c);
    let bin = env.app("vsh");
    let mut c = Command::new(env!("CARGO_BIN_EXE_stamp"));
    c.args(["app", "register", "--user", "--engine", "vm", "--no-net"])
        .args(["--memory", "512M", "--app", s(&bin), "--target", "/bin/sh"])
        .arg("--image")
        .arg(format!("oci-archive:{}", s(&app)))
        .arg("--kernel")
        .arg(format!("rootfs:{}", s(&kernel)));
    vars(&mut c);
    let r: Run = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let show = env.stamp(&["app", "show", "vsh"]);
    assert!(show.stdout.contains("kernel: rootfs:"), "{}", show.stdout);

    let spawn = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        vars(&mut c);
        c.spawn().unwrap()
    };
    // 1: the first line comes while the app runs (it waits for stdin), stdin passes through,
    // stdout and stderr stay two streams, the arguments arrive unchanged, exit status 3.
    // The first call also builds the disk.
    let t = Instant::now();
    let mut child = spawn(&[
        "-c",
        "echo first; busybox cat; echo \"[$1]\"; echo to-err >&2; exit 3",
        "sh",
        "two words",
    ]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "first\n");
    eprintln!(
        "vm engine, first call (disk built): first output after {:?}",
        t.elapsed()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first line came only at the end"
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"x\n").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(rest, "x\n[two words]\n", "stderr: {err}");
    assert_eq!(err, "to-err\n");
    assert_eq!(status.code(), Some(3));

    // 2: exit status 0, no output, and no kernel message in either stream; the app runs with
    // the image's User, WorkingDir and ENV, and --no-net leaves the guest without a NIC.
    let t = Instant::now();
    let out = spawn(&[
        "-c",
        "[ \"$(busybox id -u):$PWD:$GREETING\" = 1000:/srv:hello-from-stamp ] && ! busybox grep -q enp /proc/net/dev",
    ])
    .wait_with_output()
    .unwrap();
    eprintln!("vm engine, cached disk: whole call {:?}", t.elapsed());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b""[..], &b""[..])
    );

    // 3: on a terminal (script(1) gives the launcher one), the app gets a terminal of its own.
    let mut c = Command::new("script");
    c.arg("-qec")
        .arg(format!(
            "{} -c 'busybox tty; busybox stty size; echo to-err >&2; exit 4'",
            s(&bin)
        ))
        .arg("/dev/null")
        .stdin(Stdio::null());
    vars(&mut c);
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("to-err"), "{text}");
    assert!(!text.contains("stamp-init"), "{text}");
    assert_eq!(out.status.code(), Some(4), "{text}");

    // 4: Ctrl-C (SIGINT to the launcher) reaches the app, which ends with 130.
    let t = Instant::now();
    // Its stdin gets endless input the app never reads: the signal still gets through.
    let mut child = spawn(&["-c", "echo started; exec busybox sleep 600"]);
    let mut input = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let chunk = vec![b'y'; 64 * 1024];
        while input.write_all(&chunk).is_ok() {}
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    eprintln!(
        "vm engine, cached disk: call to first output {:?}",
        t.elapsed()
    );
    let status = interrupt(&mut child);
    assert_eq!(status.code(), Some(130));
    // 5: Ctrl-C while the machine still boots ends the call at once with 130.
    let mut child = spawn(&["-c", "echo never"]);
    drop(child.stdin.take());
    std::thread::sleep(std::time::Duration::from_secs(1));
    let t = Instant::now();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(out.stdout.is_empty());
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    // No temporary directory (QEMU's socket, console log, firmware variables) is left behind.
    let left: Vec<_> = std::fs::read_dir(&tmpdir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The vm engine's provisioning and instances: a flake composed from a base, a layer and a
/// host file boots the composed image; `--resume` keeps one machine per instance name across
/// calls; `%remove` and `stamp app remove` take everything away; an `--attach` flake's app
/// outlives its caller and the next call joins it.
#[test]
fn a_vm_flake_is_provisioned_resumes_in_its_instance_and_attaches() {
    let Some((app, kernel)) = vm_inputs() else {
        return;
    };
    let env = Env::new()
        .with_dir("XDG_CACHE_HOME", "cache")
        .with_dir("XDG_RUNTIME_DIR", "run");
    let d = env.dir.path();
    let (cache, runtime) = (d.join("cache"), d.join("run"));
    let _machines = Instances(runtime.join("stamp/app-vm"));
    let vars = |c: &mut Command| env.vars(c);
    let stamp = |args: &[&str]| env.stamp(args);
    let call = |name: &str, args: &[&str], stdin: &[u8]| env.call(name, args, stdin);
    let layer = rootfs_tar(d, "layer", false, &[("etc/override", "from-layer\n")]);
    let top = rootfs_tar(d, "top", false, &[("app-file", "app\n")]);
    for (name, src) in [("vbase", &app), ("vlayer", &layer), ("vtop", &top)] {
        let r = stamp(&["import", "--name", &format!("localhost/{name}:1"), s(src)]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    // Under /tmp, which the guest's init would otherwise hide under a tmpfs.
    let host_dir = tempfile::tempdir_in("/tmp").unwrap();
    let host_file = host_dir.path().join("host-file");
    std::fs::write(&host_file, "host\n").unwrap();
    let kernel_ref = format!("rootfs:{}", s(&kernel));
    let register = |name: &str, image: &str, more: &[&str]| {
        let app = env.app(name);
        let mut args = vec!["app", "register", "--user", "--engine", "vm", "--no-net"];
        args.extend(["--memory", "512M", "--app", s(&app), "--target", "/bin/sh"]);
        args.extend(["--image", image, "--kernel", &kernel_ref]);
        args.extend(more);
        let r = stamp(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
    };
    register(
        "vres",
        "localhost/vtop:1",
        &[
            "--resume",
            "--base",
            "localhost/vbase:1",
            "--layer",
            "localhost/vlayer:1",
            "--include-path",
            s(&host_file),
            "--overlay-size",
            "1G",
        ],
    );

    // The composed root: the base's programs, the layer's file, the image's and the host's.
    let t = Instant::now();
    let script = format!(
        "busybox cat /app-file /etc/override {}; echo kept > /state; echo err >&2; exit 3",
        host_file.display()
    );
    let r = call("vres", &["-c", &script], b"");
    let first = t.elapsed();
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (3, "app\nfrom-layer\nhost\n", "err\n")
    );
    // --overlay-size makes the machine's disk that large.
    let disks: Vec<_> = std::fs::read_dir(cache.join("stamp/app-vm/vres"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(disks.len(), 1, "{disks:?}");
    let info = stamp(&["info", "--json", s(&disks[0])]);
    assert!(info.stdout.contains("1073741824"), "{}", info.stdout);

    // The second call runs in the same machine: it sees the first call's file, and boots
    // nothing.
    let t = Instant::now();
    let r = call("vres", &["-c", "busybox cat /state"], b"");
    let second = t.elapsed();
    assert_eq!((r.code, r.stdout.as_str()), (0, "kept\n"), "{}", r.stderr);
    eprintln!("vm resume: first call (composes, builds, boots) {first:?}, second call {second:?}");
    let list = stamp(&["app", "list", "--json"]);
    assert!(
        list.stdout.contains("\"stamp-app-vres\""),
        "{}",
        list.stdout
    );

    // @b is another machine, and %remove stops it after the call.
    let r = call(
        "vres",
        &["@b", "%remove", "-c", "test ! -e /state && echo fresh"],
        b"",
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "fresh\n"), "{}", r.stderr);
    let instances = std::fs::read_dir(runtime.join("stamp/app-vm"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert_eq!(instances, ["stamp-app-vres"]);

    // `stamp app remove` stops the instance and removes the composed image and the disks.
    let record =
        std::fs::read_to_string(runtime.join("stamp/app-vm/stamp-app-vres/instance.json")).unwrap();
    let pid = serde_json::from_str::<serde_json::Value>(&record).unwrap()["qemu"]["pid"]
        .as_u64()
        .unwrap();
    // QEMU does not inherit the launcher's blocked signals: SIGTERM stops it.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let blocked = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(
        blocked & (1 << (15 - 1)),
        0,
        "SIGTERM blocked in QEMU: {blocked:x}"
    );
    let r = stamp(&["app", "remove", "vres"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("removed image localhost/stamp-app-vres:"),
        "{}",
        r.stderr
    );
    let gone = |p: &std::path::Path| !p.exists();
    assert!(ended(pid), "QEMU {pid} still runs");
    assert!(gone(&runtime.join("stamp/app-vm/stamp-app-vres")));
    assert!(gone(&cache.join("stamp/app-vm/vres")));
    assert!(gone(&env.app("vres")));
    let images = stamp(&["images"]);
    assert!(
        !images.stdout.contains("stamp-app-vres"),
        "{}",
        images.stdout
    );

    // --attach: the app outlives a caller that goes away; the next call joins it, gives it
    // input and gets its output and exit status; then the machine is gone.
    register("vatt", "localhost/vbase:1", &["--attach"]);
    let mut c = Command::new(env.app("vatt"));
    c.args(["-c", "echo started; read x; echo \"got $x\"; exit 5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    vars(&mut c);
    let mut first = c.spawn().unwrap();
    let mut out = BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    first.kill().unwrap();
    first.wait().unwrap();
    let r = call("vatt", &[], b"hello\n");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (5, "got hello\n"),
        "{}",
        r.stderr
    );
    let left = std::fs::read_dir(runtime.join("stamp/app-vm"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(left.is_empty(), "{left:?}");
}

/// True if process `pid` is gone or a zombie (this sandbox's init may not reap at once).
fn ended(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
}

/// The vsock transport (Firecracker's hybrid vsock protocol, spoken here to vhost-device-vsock,
/// a user-space vsock device, under QEMU): a call's streams and exit status, Ctrl-C while the
/// machine boots, and a `--resume` instance whose device process `stamp app remove` ends.
#[test]
fn a_vm_flake_over_vsock_keeps_its_streams_and_its_instance() {
    let Some((app, kernel)) = vm_inputs() else {
        return;
    };
    let device = Command::new("vhost-device-vsock")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !device {
        let required = std::env::var("STAMP_REQUIRE_QEMU").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "vhost-device-vsock is missing and STAMP_REQUIRE_QEMU=1; run scripts/install-test-deps.sh"
        );
        eprintln!("skipped: vhost-device-vsock is missing; run scripts/install-test-deps.sh");
        return;
    }
    let env = Env::new()
        .with_dir("XDG_CACHE_HOME", "cache")
        .with_dir("XDG_RUNTIME_DIR", "run")
        .with_dir("TMPDIR", "tmp");
    let d = env.dir.path();
    let runtime = d.join("run/stamp/app-vm");
    let _machines = Instances(runtime.clone());
    let call = |name: &str, args: &[&str], stdin: &[u8]| env.call(name, args, stdin);
    let register = |name: &str, more: &[&str]| {
        let app_ref = format!("oci-archive:{}", s(&app));
        let kernel_ref = format!("rootfs:{}", s(&kernel));
        let bin = env.app(name);
        let mut args = vec!["app", "register", "--user", "--engine", "vm", "--no-net"];
        args.extend([
            "--transport",
            "vsock",
            "--memory",
            "512M",
            "--target",
            "/bin/sh",
        ]);
        args.extend([
            "--app",
            s(&bin),
            "--image",
            &app_ref,
            "--kernel",
            &kernel_ref,
        ]);
        args.extend(more);
        let r = env.stamp(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
    };

    // One call, one machine: stdin in, stdout and stderr apart, the app's exit status.
    register("vso", &[]);
    let r = call(
        "vso",
        &["-c", "echo out; echo err >&2; busybox cat; exit 3"],
        b"in\n",
    );
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (3, "out\nin\n", "err\n")
    );
    // Ctrl-C while the machine boots (the guest does not listen yet) ends the call with 130.
    let mut c = Command::new(env.app("vso"));
    c.args(["-c", "echo never"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    env.vars(&mut c);
    let mut child = c.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let t = Instant::now();
    assert_eq!(interrupt(&mut child).code(), Some(130));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    // Neither QEMU's nor the device's files are left.
    let left: Vec<_> = std::fs::read_dir(d.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // A resume instance keeps its machine and its device between calls.
    register("vsr", &["--resume"]);
    let r = call("vsr", &["-c", "echo kept > /tmp/state"], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = call("vsr", &["-c", "busybox cat /tmp/state; exit 4"], b"");
    assert_eq!((r.code, r.stdout.as_str()), (4, "kept\n"), "{}", r.stderr);
    let record = std::fs::read_to_string(runtime.join("stamp-app-vsr/instance.json")).unwrap();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    let pids = ["qemu", "vsock"].map(|p| record[p]["pid"].as_u64().unwrap());
    assert!(pids.iter().all(|p| !ended(*p)), "{record}");
    let r = env.stamp(&["app", "remove", "vsr"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(pids.iter().all(|p| ended(*p)), "still running: {pids:?}");
    assert!(!runtime.join("stamp-app-vsr").exists());
}

/// Kills the QEMU of every vm instance recorded under a directory when dropped (a failed test
/// leaves no machine running).
struct Instances(PathBuf);

impl Drop for Instances {
    fn drop(&mut self) {
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let record =
                std::fs::read_to_string(e.path().join("instance.json")).unwrap_or_default();
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&record) else {
                continue;
            };
            for pid in ["qemu", "vsock"]
                .map(|p| v[p]["pid"].as_u64())
                .into_iter()
                .flatten()
            {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}
