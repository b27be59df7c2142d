//! The podman driver: a [`Source::Container`] machine is a podman container named
//! `stamp-NAME`, run through the podman CLI (no API socket).
//!
//! The machine's process is `podman run` in the foreground (no `-d`): the monitor is its
//! parent, its exit status is the container's and its stdout and stderr are the container's
//! output, which the runtime writes to the console log. Control goes through the other podman
//! commands by the container's name: `podman pause`, `unpause`, `stop`, `kill` and `rm`.
//!
//! Containers run with `--rm` (their output is in the console log, so nothing is lost) and
//! `--replace` (a container left over by a killed monitor does not block the next start).

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::driver::{Driver, Launch, which};
use crate::spec::{MachineSpec, Source};
use crate::status::Process;
use crate::store::MachineDir;
use crate::{Error, Result};

/// The prefix of the container's name: machine `web` is container `stamp-web`.
pub const CONTAINER_PREFIX: &str = "stamp-";

/// The label every machine's container carries, with the machine's name as its value
/// (`podman ps --filter label=stamp.machine`).
pub const LABEL: &str = "stamp.machine";

/// How long [`Driver::started`] waits for `podman run` to create and start the container.
/// Loading a large `oci-archive:` image comes first, so this is generous; it stays below
/// the runtime's own start timeout so that this error, which says what is slow, comes first.
pub const STARTED_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a podman control command (inspect, pause, kill, rm) may take before it is
/// killed: podman waits for its locks, and a wedged podman must not hang `stamp`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The grace period of `podman stop` when no stop timeout was recorded (a monitor asked to
/// stop by SIGTERM, as systemd does): podman's and Docker's default.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of a podman command's stdout or stderr that is kept (the rest is read and
/// dropped): its output is a state or an error message.
const MAX_OUTPUT: u64 = 1 << 20;

/// The most of podman's stderr that goes into an error message.
const MAX_MESSAGE: usize = 1000;

/// The file, in the machine's directory, where `podman run --cidfile` writes the container's ID.
const CIDFILE: &str = "container.id";

/// Longest container ID file accepted (an ID is 64 hex digits).
const MAX_CIDFILE: u64 = 256;

/// How the driver runs podman.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodmanOptions {
    /// The podman program: a name looked up on `PATH`, or a path. By default, `podman`.
    pub program: PathBuf,
    /// The OCI runtime (`podman --runtime X`), e.g. `runc` where crun does not work. By
    /// default, podman's own choice.
    pub runtime: Option<String>,
    /// A `containers.conf` for podman (set as `CONTAINERS_CONF` on every podman command).
    /// By default, none: podman reads `CONTAINERS_CONF` from the environment itself.
    pub containers_conf: Option<PathBuf>,
}

impl Default for PodmanOptions {
    fn default() -> PodmanOptions {
        PodmanOptions {
            program: PathBuf::from("podman"),
            runtime: None,
            containers_conf: None,
        }
    }
}

impl PodmanOptions {
    /// The options from the environment: `STAMP_PODMAN` (the program) and
    /// `STAMP_PODMAN_RUNTIME` (the OCI runtime); empty values count as unset.
    pub fn from_env() -> PodmanOptions {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        PodmanOptions {
            program: var("STAMP_PODMAN").map_or_else(|| PathBuf::from("podman"), PathBuf::from),
            runtime: var("STAMP_PODMAN_RUNTIME").map(|v| v.to_string_lossy().into_owned()),
            containers_conf: None,
        }
    }
}

/// The podman driver.
#[derive(Debug, Clone)]
pub struct Podman {
    opts: PodmanOptions,
}

impl Podman {
    /// A driver that runs podman as `opts` say.
    pub fn new(opts: PodmanOptions) -> Podman {
        Podman { opts }
    }

    /// The options it was made with.
    pub fn options(&self) -> &PodmanOptions {
        &self.opts
    }

    /// The name of machine `machine`'s container (`stamp-NAME`).
    pub fn container_name(machine: &str) -> String {
        format!("{CONTAINER_PREFIX}{machine}")
    }

    /// The arguments of the `podman run` that runs `spec` (after the program and the global
    /// options), writing the container's ID to `cidfile`.
    pub fn run_args(&self, spec: &MachineSpec, cidfile: &Path) -> Result<Vec<OsString>> {
        let reference = reference(spec)?;
        check_env(spec)?;
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |a: &dyn AsRef<OsStr>| args.push(a.as_ref().to_os_string());
        push(&"run");
        push(&"--name");
        push(&Podman::container_name(&spec.name));
        push(&"--replace");
        push(&"--rm");
        // No pull progress in the console log: it holds the container's output only.
        push(&"--quiet");
        push(&"--cidfile");
        push(&cidfile);
        push(&"--label");
        push(&format!("{LABEL}={}", spec.name));
        // An image that podman must fetch says so (`docker://`); any other was checked at
        // create and must not turn into a registry search if it went away since.
        push(&if reference.starts_with("docker://") {
            "--pull=missing"
        } else {
            "--pull=never"
        });
        for p in &spec.ports {
            push(&"-p");
            push(&p.to_string());
        }
        for (k, v) in &spec.env {
            push(&"-e");
            push(&format!("{k}={v}"));
        }
        push(&"--cpus");
        push(&spec.cpus.to_string());
        push(&"--memory");
        push(&spec.memory.to_string());
        // The reference and the command are never read as options.
        push(&"--");
        push(&reference);
        for c in &spec.cmd {
            push(c);
        }
        Ok(args)
    }

    /// A podman command with the global options and environment.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.opts.program);
        if let Some(runtime) = &self.opts.runtime {
            cmd.arg("--runtime").arg(runtime);
        }
        if let Some(conf) = &self.opts.containers_conf {
            cmd.env("CONTAINERS_CONF", conf);
        }
        cmd
    }

    /// Runs `podman ARGS` and returns its output, whatever its exit status; killed after
    /// `timeout`. `what` names the operation for errors ("pause container stamp-web").
    fn output(&self, args: &[&OsStr], what: &str, timeout: Duration) -> Result<Output> {
        let mut cmd = self.command();
        cmd.args(args);
        run_bounded(cmd, timeout).map_err(|e| match e {
            RunError::Spawn(e) => Error::Driver(format!(
                "cannot {what}: cannot run {}: {e} (`apt-get install podman`)",
                self.opts.program.display()
            )),
            RunError::Wait(e) => Error::Driver(format!(
                "cannot {what}: waiting for {}: {e}",
                self.opts.program.display()
            )),
            RunError::Timeout => Error::Driver(format!(
                "cannot {what}: podman did not answer within {}s",
                timeout.as_secs()
            )),
        })
    }

    /// Runs a podman command that must succeed; its failure names `what` and podman's words.
    fn must(&self, args: &[&OsStr], what: &str, timeout: Duration) -> Result<Output> {
        let out = self.output(args, what, timeout)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(failure(what, &out))
        }
    }

    /// The state podman reports for container `id` (`created`, `running`, `paused`,
    /// `exited`...), or `None` when there is no such container.
    pub fn container_state(&self, id: &str) -> Result<Option<String>> {
        let what = format!("inspect container {id}");
        let out = self.output(
            &[
                "container".as_ref(),
                "inspect".as_ref(),
                "--format".as_ref(),
                "{{.State.Status}}".as_ref(),
                id.as_ref(),
            ],
            &what,
            COMMAND_TIMEOUT,
        )?;
        if out.status.success() {
            return Ok(Some(
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            ));
        }
        if is_missing(&out.stderr) {
            return Ok(None);
        }
        Err(failure(&what, &out))
    }

    /// Whether podman has image `reference` in its store.
    fn image_exists(&self, reference: &str) -> Result<bool> {
        let what = format!("look up image {reference}");
        let out = self.output(
            &["image".as_ref(), "exists".as_ref(), reference.as_ref()],
            &what,
            COMMAND_TIMEOUT,
        )?;
        match out.status.code() {
            Some(0) => Ok(true),
            // Exit 1 without a message is "no such image"; with one, podman itself failed
            // (a bad containers.conf, storage trouble).
            Some(1) if out.stderr.iter().all(u8::is_ascii_whitespace) => Ok(false),
            _ => Err(failure(&what, &out)),
        }
    }
}

impl Driver for Podman {
    fn available(&self) -> Result<()> {
        let program = &self.opts.program;
        let found = if program.components().count() > 1 {
            use std::os::unix::fs::PermissionsExt;
            program
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        } else {
            which(&program.to_string_lossy()).is_some()
        };
        if found {
            Ok(())
        } else {
            Err(Error::Driver(format!(
                "{} is not installed: containers need podman (`apt-get install podman`)",
                program.display()
            )))
        }
    }

    fn prepare(&self, spec: &MachineSpec, _dir: &MachineDir) -> Result<()> {
        let reference = reference(spec)?;
        check_env(spec)?;
        if let Some((transport, path)) = archive_path(reference) {
            if !path.exists() {
                return Err(Error::Invalid(format!(
                    "container image {reference}: {} does not exist (no {transport} there)",
                    path.display()
                )));
            }
            return Ok(());
        }
        if reference.starts_with("docker://") {
            // podman pulls it when the machine starts.
            return Ok(());
        }
        if !self.image_exists(reference)? {
            return Err(Error::Invalid(format!(
                "podman has no image {reference} (`podman images` lists them; `podman pull {reference}` fetches one, or name it docker://{reference} to pull it at start)"
            )));
        }
        Ok(())
    }

    fn launch(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<Launch> {
        let cidfile = dir.path().join(CIDFILE);
        // podman refuses to overwrite a container ID file: remove the last run's.
        match std::fs::remove_file(&cidfile) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &cidfile, e)),
        }
        let mut command = self.command();
        command.args(self.run_args(spec, &cidfile)?);
        Ok(Launch {
            command,
            accel: None,
            warning: None,
            output_is_console: true,
            workload_exit: true,
            clean_exit: "exited with status 0",
        })
    }

    fn started(&self, spec: &MachineSpec, dir: &MachineDir, pid: u32) -> Result<()> {
        let cidfile = dir.path().join(CIDFILE);
        let name = Podman::container_name(&spec.name);
        let end = Instant::now() + STARTED_TIMEOUT;
        let mut last: Option<String> = None;
        loop {
            // `podman run` exited already (it is an unreaped child of the monitor, which
            // Process::of does not count): the runtime records how it ended.
            if Process::of(pid).is_none() {
                return Ok(());
            }
            if let Some(id) = read_cid(&cidfile)? {
                match self.container_state(&id) {
                    // Removed (--rm): it ran and exited.
                    Ok(None) => return Ok(()),
                    Ok(Some(state))
                        if matches!(
                            state.as_str(),
                            "running" | "paused" | "exited" | "stopped" | "stopping"
                        ) =>
                    {
                        return Ok(());
                    }
                    Ok(Some(state)) => last = Some(format!("it is {state}")),
                    Err(e) => last = Some(e.to_string()),
                }
            }
            if Instant::now() >= end {
                let now = last.unwrap_or_else(|| "podman has not created it yet".into());
                return Err(Error::Driver(format!(
                    "container {name} did not start within {}s ({now}; podman run is pid {pid}, its messages are in {})",
                    STARTED_TIMEOUT.as_secs(),
                    dir.console_log().display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pause(&self, spec: &MachineSpec, _dir: &MachineDir) -> Result<()> {
        let name = Podman::container_name(&spec.name);
        let what = format!("pause container {name}");
        let out = self.output(&["pause".as_ref(), name.as_ref()], &what, COMMAND_TIMEOUT)?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("freezer") {
            return Err(Error::Driver(format!(
                "cannot {what}: the cgroup freezer is not available on this host, so podman cannot pause containers here (podman says: {})",
                summary(&out.stderr)
            )));
        }
        Err(failure(&what, &out))
    }

    fn resume(&self, spec: &MachineSpec, _dir: &MachineDir) -> Result<()> {
        let name = Podman::container_name(&spec.name);
        self.must(
            &["unpause".as_ref(), name.as_ref()],
            &format!("unpause container {name}"),
            COMMAND_TIMEOUT,
        )
        .map(drop)
    }

    fn shutdown(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<()> {
        let name = Podman::container_name(&spec.name);
        // The grace period asked for (`stamp stop -t`), else podman's default; podman sends
        // the image's stop signal, then SIGKILL when the period is over.
        let grace = dir
            .status()
            .ok()
            .filter(|s| s.stopping)
            .and_then(|s| s.stop_timeout_ms)
            .map_or(DEFAULT_STOP_TIMEOUT, Duration::from_millis);
        let secs = grace.as_millis().div_ceil(1000).to_string();
        self.must(
            &[
                "stop".as_ref(),
                "--ignore".as_ref(),
                "-t".as_ref(),
                secs.as_ref(),
                name.as_ref(),
            ],
            &format!("stop container {name}"),
            COMMAND_TIMEOUT.saturating_add(grace),
        )
        .map(drop)
    }

    fn kill(&self, spec: &MachineSpec, _dir: &MachineDir) -> Result<()> {
        let name = Podman::container_name(&spec.name);
        let what = format!("kill container {name}");
        let out = self.output(&["kill".as_ref(), name.as_ref()], &what, COMMAND_TIMEOUT)?;
        // Gone or no longer running: the end asked for is there already.
        if out.status.success()
            || is_missing(&out.stderr)
            || String::from_utf8_lossy(&out.stderr).contains("state improper")
        {
            return Ok(());
        }
        Err(failure(&what, &out))
    }

    fn cleanup(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<()> {
        let name = Podman::container_name(&spec.name);
        self.must(
            &[
                "rm".as_ref(),
                "--force".as_ref(),
                "--ignore".as_ref(),
                "--time".as_ref(),
                "0".as_ref(),
                name.as_ref(),
            ],
            &format!("remove container {name}"),
            COMMAND_TIMEOUT,
        )?;
        let cidfile = dir.path().join(CIDFILE);
        match std::fs::remove_file(&cidfile) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("remove", &cidfile, e))
            }
            _ => Ok(()),
        }
    }
}

/// The container image reference of a container machine.
fn reference(spec: &MachineSpec) -> Result<&str> {
    match &spec.source {
        Source::Container { reference } if reference.is_empty() => Err(Error::Invalid(format!(
            "machine {}: the container image reference is empty",
            spec.name
        ))),
        Source::Container { reference } => Ok(reference),
        _ => Err(Error::Invalid(format!(
            "machine {}: {} is not a container image; the podman platform runs container images (use --platform qemu for a disk image)",
            spec.name, spec.image
        ))),
    }
}

/// Checks the environment variables: `-e K=V` needs a name without `=`.
fn check_env(spec: &MachineSpec) -> Result<()> {
    match spec
        .env
        .iter()
        .find(|(k, _)| k.is_empty() || k.contains('='))
    {
        Some((k, v)) => Err(Error::Invalid(format!(
            "machine {}: invalid environment variable '{k}={v}' (use -e NAME=VALUE with a NAME without '=')",
            spec.name
        ))),
        None => Ok(()),
    }
}

/// The file or directory of a reference in a local transport (`oci-archive:PATH[:REF]`,
/// `docker-archive:`, `oci:`, `dir:`), with the transport's name.
fn archive_path(reference: &str) -> Option<(&'static str, PathBuf)> {
    const LOCAL: [(&str, &str, bool); 4] = [
        ("oci-archive:", "OCI archive", true),
        ("docker-archive:", "docker archive", true),
        ("oci:", "OCI layout", true),
        ("dir:", "image directory", false),
    ];
    LOCAL.iter().find_map(|&(prefix, what, tagged)| {
        let rest = reference.strip_prefix(prefix)?;
        let whole = PathBuf::from(rest);
        // `PATH:REF` names one image in the archive; a path may itself hold ':'.
        let path = match rest.rsplit_once(':') {
            Some((p, _)) if tagged && !whole.exists() => PathBuf::from(p),
            _ => whole,
        };
        Some((what, path))
    })
}

/// The container ID in `podman run --cidfile`'s file, once it is there and complete.
fn read_cid(path: &Path) -> Result<Option<String>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let mut text = String::new();
    // Not UTF-8 or too long: not (yet) an ID.
    if file
        .by_ref()
        .take(MAX_CIDFILE)
        .read_to_string(&mut text)
        .is_err()
    {
        return Ok(None);
    }
    let id = text.trim();
    let valid = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
    Ok(valid.then(|| id.to_string()))
}

/// Whether podman's stderr says the container does not exist.
fn is_missing(stderr: &[u8]) -> bool {
    let s = String::from_utf8_lossy(stderr);
    s.contains("no such container") || s.contains("no container with name or ID")
}

/// The error for a podman command that failed: the operation, the status and podman's words.
fn failure(what: &str, out: &Output) -> Error {
    Error::Driver(format!(
        "cannot {what}: podman failed ({}): {}",
        out.status,
        summary(&out.stderr)
    ))
}

/// podman's stderr for an error message: its last non-empty lines, at most [`MAX_MESSAGE`]
/// bytes.
fn summary(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return "it printed no message".into();
    }
    let joined = lines[lines.len().saturating_sub(3)..].join(" / ");
    if joined.len() <= MAX_MESSAGE {
        return joined;
    }
    let mut start = joined.len() - MAX_MESSAGE;
    while !joined.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &joined[start..])
}

/// A finished podman command.
#[derive(Debug)]
struct Output {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Why a command could not be run to its end.
#[derive(Debug)]
enum RunError {
    Spawn(std::io::Error),
    Wait(std::io::Error),
    Timeout,
}

/// Runs `cmd` with stdin closed, keeping up to [`MAX_OUTPUT`] bytes of its stdout and
/// stderr; kills it after `timeout`.
fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output, RunError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Spawn)?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.by_ref().take(MAX_OUTPUT).read_to_end(&mut kept);
                // Keep draining so that the child never blocks on a full pipe.
                let _ = std::io::copy(&mut pipe, &mut std::io::sink());
            }
            kept
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= end => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(RunError::Timeout);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(RunError::Wait(e));
            }
        }
    };
    // The pipes close when the child (and whatever inherited them) exits; a grandchild that
    // keeps them open would hold the reader threads, so they are joined only on success.
    let status = status?;
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Platform, PortForward};
    use crate::store::MachineStore;
    use std::os::unix::fs::PermissionsExt;

    fn spec(name: &str, source: Source) -> MachineSpec {
        MachineSpec {
            cpus: 2,
            memory: 256 << 20,
            ..MachineSpec::new(name, "img", Platform::Podman, source)
        }
    }

    fn container(reference: &str) -> Source {
        Source::Container {
            reference: reference.into(),
        }
    }

    /// A fake podman: a shell script with `body`.
    fn fake(dir: &Path, body: &str) -> Podman {
        let path = dir.join("podman");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Podman::new(PodmanOptions {
            program: path,
            runtime: Some("runc".into()),
            containers_conf: None,
        })
    }

    #[test]
    fn run_arguments() {
        let mut s = spec("web", container("localhost/app:1"));
        s.ports = vec![
            "8080:80".parse::<PortForward>().unwrap(),
            "127.0.0.1:5353:53/udp".parse().unwrap(),
        ];
        s.env = vec![("A".into(), "b c".into()), ("EMPTY".into(), String::new())];
        s.cmd = vec!["--not-an-option".into(), "x y".into()];
        let args = Podman::new(PodmanOptions::default())
            .run_args(&s, Path::new("/m/container.id"))
            .unwrap();
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "run",
                "--name",
                "stamp-web",
                "--replace",
                "--rm",
                "--quiet",
                "--cidfile",
                "/m/container.id",
                "--label",
                "stamp.machine=web",
                "--pull=never",
                "-p",
                "8080:80/tcp",
                "-p",
                "127.0.0.1:5353:53/udp",
                "-e",
                "A=b c",
                "-e",
                "EMPTY=",
                "--cpus",
                "2",
                "--memory",
                "268435456",
                "--",
                "localhost/app:1",
                "--not-an-option",
                "x y",
            ]
        );
        let remote = spec("r", container("docker://quay.io/x/y"));
        let args = Podman::new(PodmanOptions::default())
            .run_args(&remote, Path::new("c"))
            .unwrap();
        assert!(args.iter().any(|a| a == "--pull=missing"));
    }

    #[test]
    fn global_options_come_first() {
        let d = tempfile::tempdir().unwrap();
        let p = Podman::new(PodmanOptions {
            program: "podman".into(),
            runtime: Some("runc".into()),
            containers_conf: Some(d.path().join("c.conf")),
        });
        let store = MachineStore::new(d.path());
        let s = spec("g", container("localhost/x"));
        let dir = store.create(&s, |_| Ok(())).unwrap();
        std::fs::write(dir.path().join(CIDFILE), "stale").unwrap();
        let launch = p.launch(&s, &dir).unwrap();
        assert!(
            !dir.path().join(CIDFILE).exists(),
            "a stale ID file is removed"
        );
        let args: Vec<_> = launch.command.get_args().collect();
        assert_eq!(args[..3], ["--runtime", "runc", "run"]);
        let conf = launch
            .command
            .get_envs()
            .find(|(k, _)| *k == "CONTAINERS_CONF")
            .and_then(|(_, v)| v);
        assert_eq!(conf, Some(d.path().join("c.conf").as_os_str()));
        assert!(launch.output_is_console && launch.workload_exit);
    }

    #[test]
    fn bad_specs_are_refused() {
        let p = Podman::new(PodmanOptions::default());
        let disk = spec(
            "d",
            Source::Disk {
                path: "/x.qcow2".into(),
                format: "qcow2".into(),
            },
        );
        let e = p.run_args(&disk, Path::new("c")).unwrap_err().to_string();
        assert!(e.contains("not a container image"), "{e}");
        let e = p
            .run_args(&spec("e", container("")), Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        let mut s = spec("v", container("x"));
        s.env = vec![("A=B".into(), "c".into())];
        let e = p.run_args(&s, Path::new("c")).unwrap_err().to_string();
        assert!(e.contains("invalid environment variable 'A=B=c'"), "{e}");
    }

    #[test]
    fn archive_references() {
        let d = tempfile::tempdir().unwrap();
        let tar = d.path().join("img.tar");
        std::fs::write(&tar, b"").unwrap();
        let t = tar.display();
        assert_eq!(
            archive_path(&format!("oci-archive:{t}")),
            Some(("OCI archive", tar.clone()))
        );
        assert_eq!(
            archive_path(&format!("oci-archive:{t}:app:1")).map(|a| a.1),
            Some(d.path().join("img.tar:app"))
        );
        assert_eq!(
            archive_path(&format!("docker-archive:{t}:app")).map(|a| a.1),
            Some(tar.clone())
        );
        assert_eq!(archive_path("localhost/app:1"), None);
        assert_eq!(archive_path("docker://a/b"), None);

        let p = Podman::new(PodmanOptions {
            program: "/nonexistent/podman".into(),
            ..PodmanOptions::default()
        });
        let store = MachineStore::new(d.path().join("m"));
        let dir = store
            .create(&spec("a", container("x")), |_| Ok(()))
            .unwrap();
        p.prepare(&spec("a", container(&format!("oci-archive:{t}"))), &dir)
            .unwrap();
        let e = p
            .prepare(&spec("a", container("oci-archive:/no/such.tar")), &dir)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/no/such.tar does not exist (no OCI archive there)"),
            "{e}"
        );
    }

    #[test]
    fn container_ids() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("cid");
        assert_eq!(read_cid(&f).unwrap(), None);
        std::fs::write(&f, "abc").unwrap();
        assert_eq!(read_cid(&f).unwrap(), None);
        let id = "0123456789abcdef".repeat(4);
        std::fs::write(&f, format!("{id}\n")).unwrap();
        assert_eq!(read_cid(&f).unwrap(), Some(id.clone()));
        std::fs::write(&f, id.repeat(10)).unwrap();
        assert_eq!(read_cid(&f).unwrap(), None);
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert_eq!(read_cid(&f).unwrap(), None);
    }

    #[test]
    fn missing_podman_says_what_to_install() {
        let p = Podman::new(PodmanOptions {
            program: "/nonexistent/podman".into(),
            ..PodmanOptions::default()
        });
        let e = p.available().unwrap_err().to_string();
        assert!(e.contains("apt-get install podman"), "{e}");
        let p = Podman::new(PodmanOptions {
            program: "no-such-podman-here".into(),
            ..PodmanOptions::default()
        });
        assert!(p.available().is_err());
    }

    #[test]
    fn failures_name_the_container_and_podmans_words() {
        let d = tempfile::tempdir().unwrap();
        let p = fake(
            d.path(),
            "echo 'some warning' >&2; echo 'Error: cgroup is frozen solid' >&2; exit 125",
        );
        let store = MachineStore::new(d.path().join("m"));
        let s = spec("web", container("x"));
        let dir = store.create(&s, |_| Ok(())).unwrap();
        for e in [
            p.resume(&s, &dir).unwrap_err(),
            p.shutdown(&s, &dir).unwrap_err(),
            p.kill(&s, &dir).unwrap_err(),
            p.cleanup(&s, &dir).unwrap_err(),
        ] {
            let e = e.to_string();
            assert!(e.contains("container stamp-web"), "{e}");
            assert!(e.contains("Error: cgroup is frozen solid"), "{e}");
            assert!(e.contains("exit status: 125"), "{e}");
        }
        let e = p.prepare(&s, &dir).unwrap_err().to_string();
        assert!(e.contains("look up image x"), "{e}");
        let p = fake(
            d.path(),
            "echo 'Error: runc: pause failed: freezer not supported' >&2; exit 125",
        );
        let e = p.pause(&s, &dir).unwrap_err().to_string();
        assert!(e.contains("cgroup freezer is not available"), "{e}");
        assert!(e.contains("stamp-web"), "{e}");
    }

    #[test]
    fn kill_of_a_gone_container_is_not_an_error() {
        let d = tempfile::tempdir().unwrap();
        let store = MachineStore::new(d.path().join("m"));
        let s = spec("web", container("x"));
        let dir = store.create(&s, |_| Ok(())).unwrap();
        for msg in [
            "Error: no container with name or ID \\\"stamp-web\\\" found: no such container",
            "Error: can only kill running containers. x is in state exited: container state improper",
        ] {
            let p = fake(d.path(), &format!("echo \"{msg}\" >&2; exit 125"));
            p.kill(&s, &dir).unwrap();
        }
    }

    #[test]
    fn unknown_image_fails_prepare() {
        let d = tempfile::tempdir().unwrap();
        let store = MachineStore::new(d.path().join("m"));
        let s = spec("web", container("localhost/nope"));
        let p = fake(
            d.path(),
            "case \"$*\" in '--runtime runc image exists localhost/nope') exit 1;; esac; exit 0",
        );
        let e = store.create(&s, |dir| p.prepare(&s, dir)).unwrap_err();
        assert!(
            e.to_string().contains("podman has no image localhost/nope"),
            "{e}"
        );
        assert!(store.names().unwrap().is_empty());
        let ok = spec("ok", container("localhost/yes"));
        store.create(&ok, |dir| p.prepare(&ok, dir)).unwrap();
    }

    #[test]
    fn started_returns_when_podman_run_is_gone() {
        let d = tempfile::tempdir().unwrap();
        let p = fake(d.path(), "exit 125");
        let store = MachineStore::new(d.path().join("m"));
        let s = spec("web", container("x"));
        let dir = store.create(&s, |_| Ok(())).unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        p.started(&s, &dir, child.id()).unwrap();
    }

    #[test]
    fn a_hung_podman_is_killed() {
        let d = tempfile::tempdir().unwrap();
        let p = fake(d.path(), "exec sleep 30");
        let e = p
            .output(
                &["ps".as_ref()],
                "list containers",
                Duration::from_millis(200),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not answer"), "{e}");
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(5000);
        let s = summary(format!("a\n\n{long}\n").as_bytes());
        assert!(s.len() <= MAX_MESSAGE + 3 && s.starts_with("..."), "{s}");
        assert_eq!(summary(b"one\ntwo\n\n"), "one / two");
        assert_eq!(summary(b""), "it printed no message");
    }
}
