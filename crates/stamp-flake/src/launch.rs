//! The launcher: a registered command (a symlink to the stamp binary) runs its app in the
//! flake's engine with the caller's arguments, stdin, stdout and stderr, and exits with the
//! app's own status.
//!
//! The podman engine replaces the launcher's process with `podman run` (exec): the terminal's
//! signals reach podman, which forwards them to the app (`--init` makes a signal's default
//! action apply in the container, so Ctrl-C ends the app with status 130), stdout and stderr
//! stay two streams unless the caller is on a terminal, and podman's exit status is the app's.
//!
//! The vm engine ([`crate::vm`]) boots the app image under QEMU for each call and relays the
//! streams, signals and exit status over a virtio-serial port (or vsock).

use std::ffi::{OsStr, OsString};
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::config::{Engine, Flake};
use crate::{Error, Result};

/// A call of a registered command, split into the pilot's own arguments and the app's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Call {
    /// `@NAME`: a persistent instance.
    pub instance: Option<String>,
    /// `%remove`: remove the instance after the call.
    pub remove: bool,
    /// `%interactive`: a terminal for the app.
    pub interactive: bool,
    /// The app's arguments, unchanged.
    pub args: Vec<OsString>,
}

/// Splits the arguments: leading `@NAME` and `%OPTION` words are the pilot's (as
/// flake-pilot's); everything from the first other word on is the app's, unchanged (so an app
/// argument such as `curl -d @file` is never taken).
pub fn parse_call(args: impl IntoIterator<Item = OsString>) -> Result<Call> {
    let mut call = Call::default();
    let mut args = args.into_iter().peekable();
    while let Some(a) = args.peek() {
        let text = a.to_string_lossy();
        if let Some(name) = text.strip_prefix('@') {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return Err(Error::Invalid(format!(
                    "'{text}': an instance name is @ and letters, digits, '_', '.' or '-'"
                )));
            }
            call.instance = Some(name.to_string());
        } else if let Some(opt) = text.strip_prefix('%') {
            match opt {
                "remove" => call.remove = true,
                "interactive" => call.interactive = true,
                other => {
                    return Err(Error::Invalid(format!(
                        "unknown pilot option %{other} (%remove, %interactive)"
                    )));
                }
            }
        } else {
            break;
        }
        args.next();
    }
    call.args = args.collect();
    Ok(call)
}

/// The terminals the caller has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Terminal {
    /// stdin is a terminal.
    pub stdin: bool,
    /// stdout is a terminal.
    pub stdout: bool,
}

impl Terminal {
    /// This process's.
    pub fn detect() -> Terminal {
        Terminal {
            stdin: std::io::stdin().is_terminal(),
            stdout: std::io::stdout().is_terminal(),
        }
    }
}

/// podman's settings for launchers.
#[derive(Debug, Clone)]
pub struct PodmanEnv {
    /// The podman program.
    pub program: OsString,
    /// `--runtime` (runc where crun does not work), from `STAMP_PODMAN_RUNTIME`.
    pub runtime: Option<String>,
}

impl PodmanEnv {
    /// `podman` (or `$STAMP_PODMAN`), the runtime from `$STAMP_PODMAN_RUNTIME`.
    pub fn from_env() -> PodmanEnv {
        PodmanEnv {
            program: std::env::var_os("STAMP_PODMAN").unwrap_or_else(|| "podman".into()),
            runtime: std::env::var("STAMP_PODMAN_RUNTIME")
                .ok()
                .filter(|r| !r.is_empty()),
        }
    }
}

/// `podman [--runtime R]`.
fn podman(env: &PodmanEnv) -> Command {
    let mut c = Command::new(&env.program);
    if let Some(r) = &env.runtime {
        c.args(["--runtime", r]);
    }
    c
}

/// The options every instance of `flake` gets: its user, network and own podman options
/// (without the terminal and removal options: stamp decides those).
fn instance_options(flake: &Flake, c: &mut Command) {
    // podman runs as the caller (rootless when that is not root); `runas` is the user the
    // app runs as inside. root is the image's default user already (and images without
    // /etc/passwd cannot name it).
    if let Some(user) = user(flake) {
        c.args(["--user", user]);
    }
    if flake.runtime.no_net == Some(true) {
        c.args(["--network", "none"]);
    }
    for o in &flake.options {
        match o.as_str() {
            "-t" | "--tty" | "-ti" | "-it" | "-i" | "--interactive" | "--rm" => {}
            _ => {
                c.arg(o);
            }
        }
    }
}

/// The user the app runs as inside, unless root.
fn user(flake: &Flake) -> Option<&str> {
    flake
        .runas
        .as_deref()
        .map(|u| u.trim_start_matches('#'))
        .filter(|u| !matches!(*u, "root" | "0"))
}

/// The container name of `flake`'s persistent instance for `call` (`stamp-app-NAME[-INSTANCE]`).
pub fn instance_name(flake: &Flake, call: &Call) -> String {
    let clean = crate::config::clean_name;
    match &call.instance {
        Some(i) => format!("stamp-app-{}-{}", clean(&flake.name), clean(i)),
        None => format!("stamp-app-{}", clean(&flake.name)),
    }
}

/// The label that marks a flake's instances (`stamp.app=NAME`).
pub const LABEL: &str = "stamp.app";

/// The `podman run` that runs `flake`'s app for `call`. A terminal is given to the app only
/// when the caller's stdin and stdout both are terminals (a pipe keeps stdout and stderr
/// apart, whatever the flake's options say). An attach flake's instance is named, so that
/// later calls attach to it.
pub fn podman_command(
    flake: &Flake,
    call: &Call,
    term: Terminal,
    env: &PodmanEnv,
) -> Result<Command> {
    unsupported(flake)?;
    let mut c = podman(env);
    c.arg("run");
    // An attach flake's instance stays after it ends, so that a call attached to it gets its
    // exit status; the next call that finds it ended removes it first.
    if !flake.attach {
        c.arg("--rm");
    }
    c.args(["-i", "--init"]);
    if term.stdin && term.stdout {
        c.arg("-t");
    }
    if flake.attach {
        c.arg("--name").arg(instance_name(flake, call));
        c.arg("--label").arg(format!("{LABEL}={}", flake.name));
    }
    instance_options(flake, &mut c);
    c.arg("--").arg(&flake.image).arg(&flake.target);
    c.args(&call.args);
    Ok(c)
}

/// The state of container `name` (`running`, `exited`, `paused`...), `None` if there is none.
fn container_state(env: &PodmanEnv, name: &str) -> Result<Option<String>> {
    let out = podman(env)
        .args([
            "container",
            "inspect",
            "--format",
            "{{.State.Status}}",
            name,
        ])
        .output()
        .map_err(|e| Error::Engine(format!("cannot run podman: {e} (apt-get install podman)")))?;
    if out.status.success() {
        Ok(Some(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    } else {
        Ok(None)
    }
}

/// Runs a podman command that must succeed.
fn must(c: &mut Command, what: &str) -> Result<()> {
    let out = c
        .output()
        .map_err(|e| Error::Engine(format!("cannot run podman to {what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Engine(format!(
            "cannot {what}: podman: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Makes sure `flake`'s persistent instance for `call` runs (`sleep infinity` under podman's
/// init, so that each call is a `podman exec` in it); returns its name.
pub fn ensure_instance(flake: &Flake, call: &Call, env: &PodmanEnv) -> Result<String> {
    unsupported(flake)?;
    let name = instance_name(flake, call);
    match container_state(env, &name)?.as_deref() {
        Some("running") => {}
        Some("paused") => must(
            podman(env).args(["unpause", &name]),
            &format!("unpause {name}"),
        )?,
        Some(_) => must(podman(env).args(["start", &name]), &format!("start {name}"))?,
        None => {
            let mut c = podman(env);
            c.args(["run", "-d", "--init", "--name", &name]);
            c.arg("--label").arg(format!("{LABEL}={}", flake.name));
            if let Some(i) = &call.instance {
                c.arg("--label").arg(format!("stamp.instance={i}"));
            }
            instance_options(flake, &mut c);
            c.args(["--", &flake.image, "sleep", "infinity"]);
            must(
                &mut c,
                &format!(
                    "start the instance {name} of {} (its image needs a sleep program)",
                    flake.image
                ),
            )?;
        }
    }
    Ok(name)
}

/// The `podman exec` that runs the app in instance `name`.
pub fn exec_command(
    flake: &Flake,
    call: &Call,
    name: &str,
    term: Terminal,
    env: &PodmanEnv,
) -> Command {
    let mut c = podman(env);
    c.args(["exec", "-i"]);
    if term.stdin && term.stdout {
        c.arg("-t");
    }
    if let Some(user) = user(flake) {
        c.args(["--user", user]);
    }
    c.arg(name).arg(&flake.target).args(&call.args);
    c
}

/// Attaches to the running instance `name` until it ends, and returns its exit status
/// (`podman attach` itself exits 0 whatever the app's status was; `podman wait` has it).
fn attach(env: &PodmanEnv, name: &str) -> Result<i32> {
    let mut c = podman(env);
    c.args(["attach", name]);
    if debug() {
        eprintln!("stamp: {c:?}");
    }
    c.status()
        .map_err(|e| Error::Engine(format!("cannot run podman: {e}")))?;
    let out = podman(env)
        .args(["wait", name])
        .output()
        .map_err(|e| Error::Engine(format!("cannot run podman: {e}")))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| {
            Error::Engine(format!(
                "cannot read the exit status of instance {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })
}

/// The names of `flake`'s instances that exist (running or not).
pub fn instances(flake_name: &str, env: &PodmanEnv) -> Result<Vec<String>> {
    let out = podman(env)
        .args(["ps", "-a", "--filter"])
        .arg(format!("label={LABEL}={flake_name}"))
        .args(["--format", "{{.Names}}"])
        .output()
        .map_err(|e| Error::Engine(format!("cannot run podman: {e}")))?;
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    Ok(v)
}

/// Removes `flake`'s instances.
pub fn remove_instances(flake_name: &str, env: &PodmanEnv) -> Result<()> {
    for name in instances(flake_name, env)? {
        must(
            podman(env).args(["rm", "-f", "--time", "0", &name]),
            &format!("remove instance {name}"),
        )?;
    }
    Ok(())
}

/// A flake whose image was not composed yet (see [`crate::provision`]) cannot run as it is.
fn unsupported(flake: &Flake) -> Result<()> {
    let mut missing = Vec::new();
    if flake.base.is_some() || !flake.layers.is_empty() {
        missing.push("base_container/layers");
    }
    if !flake.include_tar.is_empty() || !flake.include_path.is_empty() {
        missing.push("include");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Engine(format!(
            "{}: {} need the composed image (crate::provision) first",
            flake.file.display(),
            missing.join(", ")
        )))
    }
}

/// Whether launcher diagnostics are on (`STAMP_DEBUG=1`, or flake-pilot's `PILOT_DEBUG=1`).
pub fn debug() -> bool {
    ["STAMP_DEBUG", "PILOT_DEBUG"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| x == OsStr::new("1")))
}

/// Runs `flake`'s app for `call`. For podman this replaces the process with podman (`run`,
/// or `exec` in the persistent instance of a resume flake, or `attach` to the running
/// instance of an attach flake), so it returns only on failure, or with the app's status
/// when the instance is removed afterwards (`%remove`).
pub fn launch(flake: &Flake, call: &Call) -> Result<i32> {
    if flake.engine == Engine::Vm {
        return crate::vm::run(flake, call);
    }
    let env = PodmanEnv::from_env();
    let term = Terminal::detect();
    // A flake with a base, layers or includes runs in the image composed from them.
    let provisioned;
    let flake = if crate::provision::needed(flake) {
        let image = crate::provision::image(flake, &stamp_oci::Store::default_root(), &env)?;
        provisioned = Flake {
            image,
            base: None,
            layers: Vec::new(),
            include_tar: Vec::new(),
            include_path: Vec::new(),
            ..flake.clone()
        };
        &provisioned
    } else {
        flake
    };
    let (mut c, instance) = if flake.resume {
        let name = ensure_instance(flake, call, &env)?;
        (exec_command(flake, call, &name, term, &env), Some(name))
    } else if flake.attach {
        let name = instance_name(flake, call);
        match container_state(&env, &name)?.as_deref() {
            Some("running") => return attach(&env, &name),
            state => {
                if state.is_some() {
                    must(
                        podman(&env).args(["rm", "-f", &name]),
                        &format!("remove the ended instance {name}"),
                    )?;
                }
                (podman_command(flake, call, term, &env)?, None)
            }
        }
    } else {
        (podman_command(flake, call, term, &env)?, None)
    };
    if debug() {
        eprintln!("stamp: {}: {:?}", flake.file.display(), c);
    }
    match (call.remove, instance) {
        (true, Some(name)) => {
            let status = c
                .status()
                .map_err(|e| Error::Engine(format!("cannot run podman: {e}")))?;
            must(
                podman(&env).args(["rm", "-f", "--time", "0", &name]),
                &format!("remove instance {name}"),
            )?;
            use std::os::unix::process::ExitStatusExt;
            Ok(status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(1))
        }
        _ => {
            let e = c.exec();
            Err(Error::Engine(format!(
                "cannot run {}: {e} (apt-get install podman)",
                c.get_program().to_string_lossy()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FlakeFile, Runtime, Section, resolve};

    fn flake(options: &[&str]) -> Flake {
        let file = FlakeFile {
            container: Some(Section {
                name: Some("localhost/img:1".into()),
                host_app_path: Some("/usr/bin/hello".into()),
                target_app_path: Some("/bin/hello".into()),
                runtime: Some(Runtime {
                    runas: Some("#1000".into()),
                    podman: Some(options.iter().map(|s| s.to_string()).collect()),
                    ..Runtime::default()
                }),
                ..Section::default()
            }),
            ..FlakeFile::default()
        };
        resolve("hello", std::path::Path::new("/f/hello.yaml"), file).unwrap()
    }

    fn args(c: &Command) -> Vec<String> {
        std::iter::once(c.get_program())
            .chain(c.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn pilot_arguments_are_split_from_the_apps() {
        let c = parse_call(["@a", "%remove", "-x", "@file", "%x"].map(OsString::from)).unwrap();
        assert_eq!(c.instance.as_deref(), Some("a"));
        assert!(c.remove);
        assert_eq!(c.args, ["-x", "@file", "%x"].map(OsString::from));
        assert!(parse_call(["%bogus".into()]).is_err());
        assert!(parse_call(["@".into()]).is_err());
        assert!(parse_call(["@a/b".into()]).is_err());
    }

    #[test]
    fn a_pipe_gets_no_terminal_whatever_the_options() {
        let f = flake(&["-ti", "--rm", "--memory 1g"]);
        let call = parse_call(["x", "y z"].map(OsString::from)).unwrap();
        let env = PodmanEnv {
            program: "podman".into(),
            runtime: Some("runc".into()),
        };
        let piped = args(&podman_command(&f, &call, Terminal::default(), &env).unwrap());
        assert_eq!(
            piped,
            [
                "podman",
                "--runtime",
                "runc",
                "run",
                "--rm",
                "-i",
                "--init",
                "--user",
                "1000",
                "--memory",
                "1g",
                "--",
                "localhost/img:1",
                "/bin/hello",
                "x",
                "y z"
            ]
        );
        let term = Terminal {
            stdin: true,
            stdout: true,
        };
        let tty = args(&podman_command(&f, &call, term, &env).unwrap());
        assert!(tty.contains(&"-t".to_string()));
    }

    #[test]
    fn unsupported_features_are_named() {
        let mut f = flake(&[]);
        f.base = Some("base".into());
        let e = podman_command(
            &f,
            &Call::default(),
            Terminal::default(),
            &PodmanEnv::from_env(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/f/hello.yaml") && e.contains("base_container"),
            "{e}"
        );
    }
}
