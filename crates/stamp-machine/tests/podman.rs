//! The podman driver end to end through the runtime ([`Local`]): real podman, real runc, a
//! busybox image made here (`podman import`, no registry).
//!
//! `Local::start` runs a monitor process per machine. With no stamp binary in a library
//! test, the monitor is this test binary running only [`monitor_entry`], which finds the
//! store in its arguments and the machine's name last. It runs under `sh -c "trap '' TERM;
//! exec ..."`: SIGTERM (which `Local::stop` sends after recording `stopping`) is ignored
//! rather than fatal, and the runtime notices the recorded `stopping` by itself.
//!
//! Without podman these tests print why and pass; `STAMP_REQUIRE_PODMAN=1` makes that a
//! failure. `STAMP_PODMAN_RUNTIME` picks the OCI runtime (by default runc: crun does not
//! work on these hosts).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use stamp_machine::driver::{Driver, Launch};
use stamp_machine::podman::{Podman, PodmanOptions};
use stamp_machine::runtime::{Drivers, Local};
use stamp_machine::spec::{DEFAULT_MEMORY, MachineSpec, Platform, PortForward, Source};
use stamp_machine::store::{MachineDir, MachineStore};
use stamp_machine::{Error, Machine, MachineService, State};

#[path = "support/busybox.rs"]
mod busybox;
use busybox::{IMAGE, podman_ready};

/// The monitor's argument that carries the test's directory.
const ROOT_ARG: &str = "stamp-test-monitor-root=";

/// How long a test waits for a machine to reach a state before it fails.
const WAIT: Duration = Duration::from_secs(90);

/// The platforms these tests do not use.
struct Unused;

impl Driver for Unused {
    fn available(&self) -> stamp_machine::Result<()> {
        Err(Error::Driver("not used in these tests".into()))
    }
    fn prepare(&self, _: &MachineSpec, _: &MachineDir) -> stamp_machine::Result<()> {
        self.available()
    }
    fn launch(&self, _: &MachineSpec, _: &MachineDir) -> stamp_machine::Result<Launch> {
        Err(Error::Driver("not used in these tests".into()))
    }
    fn started(&self, _: &MachineSpec, _: &MachineDir, _: u32) -> stamp_machine::Result<()> {
        self.available()
    }
    fn pause(&self, _: &MachineSpec, _: &MachineDir) -> stamp_machine::Result<()> {
        self.available()
    }
    fn resume(&self, _: &MachineSpec, _: &MachineDir) -> stamp_machine::Result<()> {
        self.available()
    }
    fn shutdown(&self, _: &MachineSpec, _: &MachineDir) -> stamp_machine::Result<()> {
        self.available()
    }
    fn kill(&self, _: &MachineSpec, _: &MachineDir) -> stamp_machine::Result<()> {
        self.available()
    }
    fn cleanup(&self, _: &MachineSpec, _: &MachineDir) -> stamp_machine::Result<()> {
        self.available()
    }
}

/// The podman options of the tests in `root`.
fn options(root: &Path) -> PodmanOptions {
    let mut opts = PodmanOptions::from_env();
    opts.runtime.get_or_insert_with(|| "runc".into());
    opts.containers_conf = Some(root.join("containers.conf"));
    opts
}

/// The runtime of the tests in `root`, whose monitor is this binary's [`monitor_entry`].
fn local(root: &Path) -> Local {
    let exe = std::env::current_exe().expect("the test binary's path");
    let monitor: Vec<OsString> = vec![
        "/bin/sh".into(),
        "-c".into(),
        "trap '' TERM; exec \"$0\" \"$@\"".into(),
        exe.into(),
        "monitor_entry".into(),
        "--exact".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
        format!("{ROOT_ARG}{}", root.display()).into(),
    ];
    Local::new(
        MachineStore::new(root.join("machines")),
        Drivers {
            qemu: Box::new(Unused),
            firecracker: Box::new(Unused),
            podman: Box::new(Podman::new(options(root))),
        },
        monitor,
    )
}

/// The monitor: a no-op in a normal test run; with [`ROOT_ARG`], runs the machine named by
/// the last argument in the foreground until it ends.
#[test]
fn monitor_entry() {
    let args: Vec<String> = std::env::args().collect();
    let Some(root) = args.iter().find_map(|a| a.strip_prefix(ROOT_ARG)) else {
        return;
    };
    let name = args.last().expect("the machine's name");
    let stop = AtomicBool::new(false);
    match local(Path::new(root)).run_foreground(name, &stop, &|_| {}) {
        Ok(m) => eprintln!("monitor: {name} ended: {:?}", m.status.reason),
        Err(e) => panic!("monitor of {name}: {e}"),
    }
}

/// Runs a command that must succeed; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test's directory and runtime; removes its machines (and so their containers) when
/// dropped.
struct Env {
    dir: tempfile::TempDir,
    local: Local,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .expect("write containers.conf");
        let local = local(dir.path());
        Env { dir, local }
    }

    /// A machine spec running `cmd` in the test image; the name is unique to this process.
    fn spec(&self, name: &str, cmd: &[&str]) -> MachineSpec {
        MachineSpec {
            memory: DEFAULT_MEMORY,
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..MachineSpec::new(
                format!("{name}-{}", std::process::id()),
                IMAGE,
                Platform::Podman,
                Source::Container {
                    reference: IMAGE.into(),
                },
            )
        }
    }

    /// Waits until the machine satisfies `cond`.
    fn wait(&self, name: &str, what: &str, cond: impl Fn(&Machine) -> bool) -> Machine {
        let end = Instant::now() + WAIT;
        loop {
            let m = self.local.get(name).expect("the machine");
            if cond(&m) {
                return m;
            }
            assert!(
                Instant::now() < end,
                "{name} did not become {what}: {:?}\nmonitor log: {}",
                m.status,
                std::fs::read_to_string(
                    self.root().join("machines").join(name).join("monitor.log")
                )
                .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the machine has ended.
    fn ended(&self, name: &str) -> Machine {
        self.wait(name, "ended", |m| {
            matches!(m.state(), State::Stopped | State::Failed)
        })
    }

    /// Its console log, through `logs`.
    fn logs(&self, name: &str) -> String {
        let mut out = Vec::new();
        self.local.logs(name, false, None, &mut out).expect("logs");
        String::from_utf8_lossy(&out).into_owned()
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for name in self.local.store().names().unwrap_or_default() {
            if let Err(e) = self.local.delete(&name, true) {
                eprintln!("removing {name}: {e}");
            }
            let _ = Command::new("podman")
                .args(["rm", "-f", "--ignore", "--time", "0"])
                .arg(Podman::container_name(&name))
                .output();
        }
    }
}

/// podman's word on a container: its state, or `None` when there is none.
fn podman_state(name: &str) -> Option<String> {
    let out = Command::new("podman")
        .args(["container", "inspect", "--format", "{{.State.Status}}"])
        .arg(Podman::container_name(name))
        .output()
        .expect("podman container inspect");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn output_is_logged_and_exit_codes_are_recorded() {
    if !podman_ready() {
        return;
    }
    let env = Env::new();
    let mut ok = env.spec(
        "pm-exit0",
        &["sh", "-c", "echo hello from $GREETING; echo to stderr >&2"],
    );
    ok.env = vec![("GREETING".into(), "the container".into())];
    let name = ok.name.clone();
    let m = env.local.create(&ok).unwrap();
    assert_eq!(m.state(), State::Created);
    assert_eq!(podman_state(&name), None, "create makes no container");
    env.local.start(&name).unwrap();
    let m = env.ended(&name);
    assert_eq!(m.state(), State::Stopped, "{:?}", m.status);
    assert_eq!(m.status.exit_code, Some(0));
    assert_eq!(m.status.reason.as_deref(), Some("exited with status 0"));
    let logs = env.logs(&name);
    assert!(logs.contains("hello from the container\n"), "{logs}");
    assert!(logs.contains("to stderr\n"), "{logs}");
    assert_eq!(podman_state(&name), None, "the container is removed");

    // A stopped machine starts again: a second run, a second copy of the output.
    env.local.start(&name).unwrap();
    let m = env.ended(&name);
    assert_eq!(m.status.exit_code, Some(0));
    assert_eq!(
        env.logs(&name).matches("hello from the container").count(),
        2
    );

    let three = env.spec("pm-exit3", &["sh", "-c", "echo bye; exit 3"]);
    env.local.create(&three).unwrap();
    env.local.start(&three.name).unwrap();
    let m = env.ended(&three.name);
    assert_eq!(m.state(), State::Stopped, "{:?}", m.status);
    assert_eq!(m.status.exit_code, Some(3));
    assert_eq!(m.status.reason.as_deref(), Some("exited with status 3"));
    assert!(env.logs(&three.name).contains("bye"));
}

#[test]
fn an_unknown_image_fails_at_create_and_a_missing_command_fails_the_machine() {
    if !podman_ready() {
        return;
    }
    let env = Env::new();
    let mut spec = env.spec("pm-noimage", &["true"]);
    spec.source = Source::Container {
        reference: "localhost/stamp-test-no-such-image".into(),
    };
    let e = env.local.create(&spec).unwrap_err().to_string();
    assert!(
        e.contains("podman has no image localhost/stamp-test-no-such-image"),
        "{e}"
    );
    assert!(env.local.list().unwrap().is_empty(), "nothing is left");

    let spec = env.spec("pm-nocmd", &["no-such-command"]);
    env.local.create(&spec).unwrap();
    // It may fail before or after the runtime saw it up.
    let _ = env.local.start(&spec.name);
    let m = env.ended(&spec.name);
    assert_eq!(m.state(), State::Failed, "{:?}", m.status);
    assert_eq!(m.status.exit_code, Some(127));
    let reason = m.status.reason.unwrap_or_default();
    assert!(reason.contains("no-such-command"), "{reason}");
}

#[test]
fn a_long_running_container_pauses_resumes_and_stops_gracefully() {
    if !podman_ready() {
        return;
    }
    let env = Env::new();
    let mut spec = env.spec(
        "pm-long",
        &[
            "sh",
            "-c",
            "trap 'echo got TERM; exit 0' TERM; echo up; while true; do sleep 1; done",
        ],
    );
    spec.memory = 64 << 20;
    let name = spec.name.clone();
    env.local.create(&spec).unwrap();
    let m = env.local.start(&name).unwrap();
    assert_eq!(m.state(), State::Running);
    assert!(m.status.ready);
    assert_eq!(podman_state(&name).as_deref(), Some("running"));
    let limit = run(Command::new("podman")
        .args(["container", "inspect", "--format", "{{.HostConfig.Memory}}"])
        .arg(Podman::container_name(&name)));
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    env.wait(&name, "up", |_| env.logs(&name).contains("up\n"));

    let m = env.local.pause(&name).unwrap();
    assert_eq!(m.state(), State::Paused);
    assert_eq!(podman_state(&name).as_deref(), Some("paused"));
    let e = env.local.pause(&name).unwrap_err().to_string();
    assert!(e.contains("is paused"), "{e}");

    let m = env.local.resume(&name).unwrap();
    assert_eq!(m.state(), State::Running);
    assert_eq!(podman_state(&name).as_deref(), Some("running"));

    // The container's shell sees SIGTERM and exits by itself, well within the grace period.
    let m = env.local.stop(&name, Duration::from_secs(30)).unwrap();
    assert_eq!(m.state(), State::Stopped, "{:?}", m.status);
    assert_eq!(m.status.reason.as_deref(), Some("stopped on request"));
    assert_eq!(m.status.exit_code, Some(0), "it exited through its trap");
    assert!(env.logs(&name).contains("got TERM"));
    assert_eq!(podman_state(&name), None);
}

#[test]
fn a_paused_container_stops_and_a_stubborn_one_is_killed() {
    if !podman_ready() {
        return;
    }
    let env = Env::new();
    // PID 1 without a handler ignores SIGTERM: only SIGKILL, after the grace period, ends it.
    let spec = env.spec("pm-stubborn", &["sleep", "1000"]);
    let name = spec.name.clone();
    env.local.create(&spec).unwrap();
    env.local.start(&name).unwrap();
    env.local.pause(&name).unwrap();
    let m = env.local.stop(&name, Duration::from_secs(1)).unwrap();
    assert_eq!(m.state(), State::Stopped, "{:?}", m.status);
    assert_eq!(m.status.reason.as_deref(), Some("stopped on request"));
    assert_eq!(m.status.exit_code, Some(137), "SIGKILL");
    assert_eq!(podman_state(&name), None);

    // rm -f of a running one kills it and removes both the machine and the container.
    env.local.start(&name).unwrap();
    assert_eq!(podman_state(&name).as_deref(), Some("running"));
    env.local.delete(&name, true).unwrap();
    assert!(matches!(env.local.get(&name), Err(Error::NotFound(_))));
    assert_eq!(podman_state(&name), None);
}

#[test]
fn a_container_killed_from_outside_is_recorded() {
    if !podman_ready() {
        return;
    }
    let env = Env::new();
    let spec = env.spec("pm-killed", &["sleep", "1000"]);
    let name = spec.name.clone();
    env.local.create(&spec).unwrap();
    env.local.start(&name).unwrap();
    run(Command::new("podman")
        .arg("kill")
        .arg(Podman::container_name(&name)));
    let m = env.ended(&name);
    assert!(!m.state().is_live());
    assert_eq!(m.status.exit_code, Some(137), "{:?}", m.status);
    assert!(m.status.monitor.is_none() && m.status.vmm.is_none());
    assert_eq!(podman_state(&name), None);
}

#[test]
fn ports_are_forwarded() {
    if !podman_ready() {
        return;
    }
    let env = Env::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut spec = env.spec("pm-port", &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    spec.ports = vec![
        format!("127.0.0.1:{port}:8080")
            .parse::<PortForward>()
            .unwrap(),
    ];
    let name = spec.name.clone();
    env.local.create(&spec).unwrap();
    env.local.start(&name).unwrap();
    // httpd may take a moment to listen after the container starts.
    let end = Instant::now() + WAIT;
    let page = loop {
        let got = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
            let mut page = String::new();
            s.read_to_string(&mut page)?;
            Ok(page)
        });
        match got {
            Ok(page) if page.contains("200") => break page,
            other => assert!(Instant::now() < end, "no answer on port {port}: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(page.contains("hello through the port"), "{page}");
    env.local.stop(&name, Duration::from_secs(5)).unwrap();
}

#[test]
fn an_oci_archive_runs() {
    if !podman_ready() {
        return;
    }
    let env = Env::new();
    let archive = env.root().join("image.oci.tar");
    run(Command::new("podman")
        .args(["save", "--format", "oci-archive", "-o"])
        .arg(&archive)
        .arg(IMAGE));
    let mut spec = env.spec("pm-archive", &["echo", "from the archive"]);
    spec.source = Source::Container {
        reference: format!("oci-archive:{}", archive.display()),
    };
    env.local.create(&spec).unwrap();
    env.local.start(&spec.name).unwrap();
    let m = env.ended(&spec.name);
    assert_eq!(m.status.exit_code, Some(0), "{:?}", m.status);
    // Only the container's output: no progress of podman loading the archive.
    assert_eq!(env.logs(&spec.name), "from the archive\n");

    let mut gone = env.spec("pm-noarchive", &["true"]);
    gone.source = Source::Container {
        reference: format!("oci-archive:{}", env.root().join("none.tar").display()),
    };
    let e = env.local.create(&gone).unwrap_err().to_string();
    assert!(e.contains("none.tar does not exist"), "{e}");
}

#[test]
fn a_container_outlives_its_killed_monitor_and_still_stops() {
    if !podman_ready() {
        return;
    }
    let env = Env::new();
    let spec = env.spec(
        "pm-orphan",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 1; done",
        ],
    );
    let name = spec.name.clone();
    env.local.create(&spec).unwrap();
    let m = env.local.start(&name).unwrap();
    let monitor = m.status.monitor.expect("the monitor").pid;
    run(Command::new("kill").args(["-KILL", &monitor.to_string()]));
    env.wait(&name, "without its monitor", |m| {
        !m.status.monitor.is_some_and(|p| p.alive())
    });
    let m = env.local.get(&name).unwrap();
    assert_eq!(
        m.state(),
        State::Running,
        "podman run lives on: {:?}",
        m.status
    );
    assert_eq!(podman_state(&name).as_deref(), Some("running"));
    let m = env.local.stop(&name, Duration::from_secs(20)).unwrap();
    assert_eq!(m.state(), State::Stopped, "{:?}", m.status);
    assert_eq!(podman_state(&name), None);
}

#[test]
fn a_removed_on_stop_machine_leaves_nothing() {
    if !podman_ready() {
        return;
    }
    let env = Env::new();
    let mut spec = env.spec(
        "pm-rm",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 1; done",
        ],
    );
    spec.remove = true;
    let name = spec.name.clone();
    env.local.create(&spec).unwrap();
    env.local.start(&name).unwrap();
    assert_eq!(podman_state(&name).as_deref(), Some("running"));
    // The machine is gone once it has stopped, so stop may not find it to return it.
    match env.local.stop(&name, Duration::from_secs(20)) {
        Ok(m) => assert_eq!(m.state(), State::Stopped),
        Err(Error::NotFound(_)) => {}
        Err(e) => panic!("stop: {e}"),
    }
    let end = Instant::now() + WAIT;
    while env.local.get(&name).is_ok() {
        assert!(Instant::now() < end, "{name} was not removed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(podman_state(&name), None);
    assert!(env.local.store().names().unwrap().is_empty());
}
