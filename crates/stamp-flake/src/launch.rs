//! The launcher: a registered command (a symlink to the stamp binary) runs its app in the
//! flake's engine with the caller's arguments, stdin, stdout and stderr, and exits with the
//! app's own status.
//!
//! The podman engine replaces the launcher's process with `podman run` (exec): the terminal's
//! signals reach podman, which forwards them to the app (`--init` makes a signal's default
//! action apply in the container, so Ctrl-C ends the app with status 130), stdout and stderr
//! stay two streams unless the caller is on a terminal, and podman's exit status is the app's.

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

/// The `podman run` that runs `flake`'s app for `call`. A terminal is given to the app only
/// when the caller's stdin and stdout both are terminals (a pipe keeps stdout and stderr
/// apart, whatever the flake's options say).
pub fn podman_command(
    flake: &Flake,
    call: &Call,
    term: Terminal,
    podman: &PodmanEnv,
) -> Result<Command> {
    unsupported(flake, call)?;
    let tty = term.stdin && term.stdout;
    let mut c = Command::new(&podman.program);
    if let Some(r) = &podman.runtime {
        c.args(["--runtime", r]);
    }
    c.args(["run", "--rm", "-i", "--init"]);
    if tty {
        c.arg("-t");
    }
    // podman runs as the caller (rootless when that is not root); `runas` is the user the
    // app runs as inside. root is the image's default user already (and images without
    // /etc/passwd cannot name it).
    if let Some(user) = flake.runas.as_deref().map(|u| u.trim_start_matches('#')) {
        if !matches!(user, "root" | "0") {
            c.args(["--user", user]);
        }
    }
    if flake.runtime.no_net == Some(true) {
        c.args(["--network", "none"]);
    }
    for o in &flake.options {
        match o.as_str() {
            // stamp decides about the terminal (above) and always removes the instance.
            "-t" | "--tty" | "-ti" | "-it" | "-i" | "--interactive" | "--rm" => {}
            _ => {
                c.arg(o);
            }
        }
    }
    c.arg("--").arg(&flake.image).arg(&flake.target);
    c.args(&call.args);
    Ok(c)
}

/// The features of a flake this launcher does not provide yet, as a clear error.
fn unsupported(flake: &Flake, call: &Call) -> Result<()> {
    let mut missing = Vec::new();
    if flake.base.is_some() || !flake.layers.is_empty() {
        missing.push("base_container/layers");
    }
    if !flake.include_tar.is_empty() || !flake.include_path.is_empty() {
        missing.push("include");
    }
    if flake.resume || flake.attach || call.instance.is_some() {
        missing.push("resume/attach/@instances");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Engine(format!(
            "{}: {} are not supported by stamp's launcher yet",
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

/// Runs `flake`'s app for `call`: for podman, replaces this process with `podman run` (so it
/// returns only on failure).
pub fn launch(flake: &Flake, call: &Call) -> Error {
    match flake.engine {
        Engine::Podman => {
            let mut c =
                match podman_command(flake, call, Terminal::detect(), &PodmanEnv::from_env()) {
                    Ok(c) => c,
                    Err(e) => return e,
                };
            if debug() {
                eprintln!("stamp: {}: {:?}", flake.file.display(), c);
            }
            let e = c.exec();
            Error::Engine(format!(
                "cannot run {}: {e} (apt-get install podman)",
                c.get_program().to_string_lossy()
            ))
        }
        Engine::Vm => Error::Engine(format!(
            "{}: the vm engine is not supported by stamp's launcher yet; use a container: section",
            flake.file.display()
        )),
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
