//! The app's process: its environment, its program found in PATH, and how it is started.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::config::AppConfig;
use crate::sys;
use crate::user::Ids;

/// PATH when the image's ENV has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The app's environment: the image's ENV (later entries win, entries without `=` dropped),
/// with PATH and HOME added when absent, in the image's order.
pub fn environment(env: &[String], home: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for e in env {
        let Some((k, v)) = e.split_once('=') else {
            continue;
        };
        if k.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(ok, _)| ok == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => out.push((k.to_string(), v.to_string())),
        }
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !out.iter().any(|(k, _)| k == "HOME") {
        out.push(("HOME".into(), home.into()));
    }
    out
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds `argv0` as `execvp` would: as given when it has a `/` (relative to `workdir`), else
/// in each directory of `path` (an empty entry being `workdir`). `root` prefixes every path
/// looked at (`/` in the guest; a temporary directory in tests). Returns the path in the guest.
pub fn find_program(
    argv0: &str,
    path: &str,
    workdir: &str,
    root: &Path,
) -> Result<PathBuf, String> {
    if argv0.is_empty() {
        return Err("the command is empty".into());
    }
    let guest = |p: &Path| -> PathBuf {
        match p.strip_prefix("/") {
            Ok(rel) => root.join(rel),
            Err(_) => root.join(p),
        }
    };
    let wd = Path::new(if workdir.is_empty() { "/" } else { workdir });
    if argv0.contains('/') {
        let p = wd.join(argv0);
        return if is_executable(&guest(&p)) {
            Ok(p)
        } else if guest(&p).exists() {
            Err(format!("{} is not an executable file", p.display()))
        } else {
            Err(format!("{} does not exist", p.display()))
        };
    }
    for dir in path.split(':') {
        let dir = if dir.is_empty() {
            wd.to_path_buf()
        } else {
            wd.join(dir)
        };
        let p = dir.join(argv0);
        if is_executable(&guest(&p)) {
            return Ok(p);
        }
    }
    Err(format!("{argv0} was not found in PATH {path}"))
}

/// The app's command: `program` with `config.argv` (its first word as argv[0]), the
/// environment and working directory given.
fn command(config: &AppConfig, program: &Path, env: &[(String, String)]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    if let Some(a0) = config.argv.first() {
        cmd.arg0(a0);
    }
    cmd.args(config.argv.iter().skip(1))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(if config.workdir.is_empty() {
            "/"
        } else {
            &config.workdir
        });
    cmd
}

/// Starts the app: `program` with `config.argv`, the environment, working directory and
/// credentials given.
pub fn spawn(
    config: &AppConfig,
    program: &Path,
    env: &[(String, String)],
    ids: &Ids,
) -> std::io::Result<Child> {
    let mut cmd = command(config, program, env);
    sys::set_credentials(&mut cmd, ids.uid, ids.gid, ids.groups.clone());
    cmd.spawn()
}

/// As [`spawn`], for the agent: stdin, stdout and stderr are pipes, or `tty` (a terminal's
/// slave side, which becomes the app's controlling terminal).
pub fn spawn_piped(
    config: &AppConfig,
    program: &Path,
    env: &[(String, String)],
    ids: &Ids,
    tty: Option<&std::fs::File>,
) -> std::io::Result<Child> {
    use std::process::Stdio;
    let stdio = || -> std::io::Result<Stdio> {
        Ok(match tty {
            Some(t) => Stdio::from(t.try_clone()?),
            None => Stdio::piped(),
        })
    };
    let mut cmd = command(config, program, env);
    cmd.stdin(stdio()?).stdout(stdio()?).stderr(stdio()?);
    if tty.is_some() {
        sys::controlling_terminal(&mut cmd);
    }
    sys::set_credentials(&mut cmd, ids.uid, ids.gid, ids.groups.clone());
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_keeps_order_later_wins_and_adds_defaults() {
        let env = environment(
            &[
                "A=1".into(),
                "B=x=y".into(),
                "A=2".into(),
                "NOEQ".into(),
                "=bad".into(),
            ],
            "/home/app",
        );
        assert_eq!(
            env,
            vec![
                ("A".into(), "2".into()),
                ("B".into(), "x=y".into()),
                ("PATH".into(), DEFAULT_PATH.into()),
                ("HOME".into(), "/home/app".into()),
            ]
        );
        let env = environment(&["PATH=/opt/bin".into(), "HOME=/data".into()], "/root");
        assert_eq!(
            env,
            vec![
                ("PATH".into(), "/opt/bin".into()),
                ("HOME".into(), "/data".into())
            ]
        );
    }

    fn touch(p: &Path, mode: u32) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn program_is_searched_in_path_order_skipping_non_executables() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("usr/local/bin/app"), 0o644);
        touch(&r.join("usr/bin/app"), 0o755);
        touch(&r.join("bin/app"), 0o755);
        assert_eq!(
            find_program("app", "/usr/local/bin:/usr/bin:/bin", "/", r).unwrap(),
            PathBuf::from("/usr/bin/app")
        );
        let e = find_program("nope", "/usr/bin:/bin", "/", r).unwrap_err();
        assert!(
            e.contains("nope was not found in PATH /usr/bin:/bin"),
            "{e}"
        );
    }

    #[test]
    fn slash_means_a_path_relative_to_the_workdir() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("app/run.sh"), 0o755);
        touch(&r.join("app/data.txt"), 0o644);
        assert_eq!(
            find_program("./run.sh", "", "/app", r).unwrap(),
            PathBuf::from("/app/./run.sh")
        );
        assert_eq!(
            find_program("/app/run.sh", "/bin", "/", r).unwrap(),
            PathBuf::from("/app/run.sh")
        );
        assert!(
            find_program("/app/data.txt", "", "/", r)
                .unwrap_err()
                .contains("not an executable")
        );
        assert!(
            find_program("/app/none", "", "/", r)
                .unwrap_err()
                .contains("does not exist")
        );
        // An empty PATH entry is the working directory.
        assert_eq!(
            find_program("run.sh", "/bin:", "/app", r).unwrap(),
            PathBuf::from("/app/run.sh")
        );
        assert!(find_program("", "/bin", "/", r).is_err());
    }
}
