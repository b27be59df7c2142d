//! A real systemd as PID 1 for tests: [`SystemdContainer`] runs systemd in a podman
//! container whose root is the host's own root through an overlay (`--rootfs /:O`), so
//! systemd and every program of the host (qemu-system-x86, OVMF, qemu-img) are there and
//! nothing is downloaded. It boots to basic.target (about a second; the host's own services
//! are not started in it), runs commands in it, and is removed when dropped, also when a test
//! fails. podman runs with runc, no default rlimits and private storage in a temporary
//! directory (see TESTING.md). Shared by stamp-machine's and stamp's tests.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A command's exit code and output.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Ran {
    fn from(o: std::process::Output) -> Self {
        Ran {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A running container with systemd as PID 1, removed when dropped.
pub struct SystemdContainer {
    name: String,
    dir: tempfile::TempDir,
    /// `VAR=value` for every command run in the container.
    env: Vec<String>,
    /// One container at a time in a process: podman cannot remove a container whose /dev/shm
    /// mount another one, started at the same moment, still sees.
    _serial: std::sync::MutexGuard<'static, ()>,
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl SystemdContainer {
    /// Boots the container with `binds` (host path, container path) mounted read-only (`env`
    /// is set for the commands run in it: `VAR=value`), and
    /// waits until `systemctl is-system-running` says running or degraded. `None` (after
    /// saying why) when podman, runc or systemd is missing.
    pub fn start(binds: &[(&Path, &str)], env: &[&str]) -> Option<SystemdContainer> {
        let required = std::env::var_os("STAMP_REQUIRE_SYSTEMD").is_some_and(|v| v == "1");
        for tool in ["podman", "runc"] {
            let found = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                assert!(
                    !required,
                    "{tool} is not installed (STAMP_REQUIRE_SYSTEMD=1)"
                );
                eprintln!("skipped: {tool} is not installed (scripts/install-test-deps.sh)");
                return None;
            }
        }
        if !Path::new("/lib/systemd/systemd").exists() {
            assert!(
                !required,
                "systemd is not installed (STAMP_REQUIRE_SYSTEMD=1)"
            );
            eprintln!("skipped: /lib/systemd/systemd is not installed");
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "stamp-systemd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::tempdir().unwrap();
        // podman on these machines: runc (crun refuses hybrid cgroups), no default rlimits;
        // events in a file (without a journal podman cannot find an exec session's end).
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = []\n[engine]\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{}\"\n",
                dir.path().join("events.log").display()
            ),
        )
        .unwrap();
        let c = SystemdContainer {
            name,
            dir,
            env: env.iter().map(|s| s.to_string()).collect(),
            _serial: serial,
        };
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &c.name,
            "--systemd=always",
            // The host's /tmp and /run hold sockets that podman's copy-up cannot copy.
            "--tmpfs",
            "/tmp:rw,notmpcopyup",
            "--tmpfs",
            "/run:rw,notmpcopyup",
            "--tmpfs",
            "/run/lock:rw,notmpcopyup",
        ]
        .map(String::from)
        .to_vec();
        for (host, inside) in binds {
            args.push("-v".into());
            args.push(format!("{}:{inside}:ro", host.display()));
        }
        // --rootfs takes the next argument as the root; what follows is the command.
        args.extend(
            [
                "--rootfs",
                "/:O",
                "/lib/systemd/systemd",
                "systemd.unit=basic.target",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = c.podman(&args);
        assert_eq!(r.code, 0, "podman {args:?}: {}\n{}", r.stderr, r.stdout);
        // `--wait` waits for the boot to finish, once systemd's bus exists: until then
        // systemctl fails at once and prints nothing.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let r = c.exec(&["timeout", "120", "systemctl", "is-system-running", "--wait"]);
            let state = r.stdout.trim();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(
                state.is_empty() && std::time::Instant::now() < end,
                "systemd in the container is {state:?}: {}",
                r.stderr
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Some(c)
    }

    /// Runs `podman ARGS` with this container's configuration.
    pub fn podman(&self, args: &[&str]) -> Ran {
        let d = self.dir.path();
        Command::new("podman")
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--runtime", "runc"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    }

    /// Runs `cmd` in the container (as root, with the machines' state directory set).
    pub fn exec(&self, cmd: &[&str]) -> Ran {
        let mut args = vec!["exec"];
        for e in &self.env {
            args.extend(["-e", e.as_str()]);
        }
        args.push(self.name.as_str());
        args.extend_from_slice(cmd);
        self.podman(&args)
    }

    /// Runs `cmd` in the container and returns its stdout; panics (with the unit's journal)
    /// unless it succeeds.
    pub fn ok(&self, cmd: &[&str]) -> String {
        let r = self.exec(cmd);
        assert_eq!(
            r.code,
            0,
            "{cmd:?} in the container: {}\n{}\n{}",
            r.stderr,
            r.stdout,
            self.diagnostics()
        );
        r.stdout
    }

    /// Runs a shell script in the container.
    pub fn sh(&self, script: &str) -> Ran {
        self.exec(&["sh", "-c", script])
    }

    /// `systemctl show -p PROP UNIT`'s value.
    pub fn show(&self, unit: &str, prop: &str) -> String {
        let out = self.ok(&["systemctl", "show", "-p", prop, "--value", unit]);
        out.trim().to_string()
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// podman's private storage for it (removed with it).
    pub fn storage(&self) -> &Path {
        self.dir.path()
    }

    /// What went on, for failure messages: every stamp unit's state and journal, and the
    /// machines' logs (under `$XDG_STATE_HOME` when the container's commands get one).
    pub fn diagnostics(&self) -> String {
        let r = self.sh("systemctl --no-pager status 'stamp-*' 2>&1 | head -40; \
             journalctl --no-pager -o short-precise -u 'stamp-*' 2>&1 | tail -60; \
             for f in \"${XDG_STATE_HOME:-/root/.local/state}\"/stamp/machines/*/*.log; do \
             [ -e \"$f\" ] || continue; echo \"== $f\"; tail -c 2000 \"$f\"; done");
        format!("--- in the container:\n{}{}", r.stdout, r.stderr)
    }
}

impl Drop for SystemdContainer {
    fn drop(&mut self) {
        let r = self.podman(&["rm", "-f", "-t", "0", &self.name]);
        if r.code != 0 {
            eprintln!("cannot remove container {}: {}", self.name, r.stderr);
        }
        // Not `podman system reset`: even on private storage it removes the lock memory that
        // every podman of the host shares, and other stores' running containers then show
        // as created with their processes orphaned. `rm` unmounts all this container had.
    }
}
