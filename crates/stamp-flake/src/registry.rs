//! Where flakes are registered: `/usr/share/flakes` (system) or `$XDG_DATA_HOME/flakes`
//! (`--user`), each app as `NAME.yaml` plus `NAME.d/`, and its host command a symlink to the
//! launcher (the stamp binary, which dispatches on the name it is called by).

use std::path::{Path, PathBuf};

use crate::config::{self, Flake, FlakeFile};
use crate::{Error, Result};

/// The system-wide flakes directory (flake-pilot's).
pub const SYSTEM_DIR: &str = "/usr/share/flakes";

/// A flakes directory.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    /// The registry in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Registry {
        Registry { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The names of the registered apps, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &self.dir, e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".yaml").map(str::to_string)
            })
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Flake `name`.
    pub fn load(&self, name: &str) -> Result<Flake> {
        config::load(&self.dir, name)
    }

    /// Registers `file` (its `host_app_path` names the app) with the host command a symlink
    /// to `launcher`. An existing registration is replaced only with `force`; a host path
    /// that is not a link to the launcher is never touched.
    pub fn register(&self, file: &FlakeFile, launcher: &Path, force: bool) -> Result<Flake> {
        let section = file
            .container
            .as_ref()
            .or(file.vm.as_ref())
            .ok_or_else(|| {
                Error::Invalid("a registration needs a container or vm section".into())
            })?;
        let app = PathBuf::from(
            section
                .host_app_path
                .clone()
                .ok_or_else(|| Error::Invalid("--app is missing".into()))?,
        );
        if !app.is_absolute() {
            return Err(Error::Invalid(format!(
                "--app {}: give the absolute path of the command on the host",
                app.display()
            )));
        }
        let name = app
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty() && n != "stamp" && !n.starts_with('.'))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "--app {}: not a usable command name",
                    app.display()
                ))
            })?;
        let yaml = self.dir.join(format!("{name}.yaml"));
        if yaml.exists() && !force {
            return Err(Error::Invalid(format!(
                "an app named {name} is registered already ({}); `stamp app remove {name}` or --force replaces it",
                yaml.display()
            )));
        }
        if !points_to(&app, launcher) && std::fs::symlink_metadata(&app).is_ok() {
            return Err(Error::Invalid(format!(
                "{} exists and is not a stamp launcher (another package's?): it is not overwritten",
                app.display()
            )));
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("create", &self.dir, e))?;
        let text = serde_yaml_ng::to_string(file).map_err(|e| Error::Config {
            path: yaml.clone(),
            message: e.to_string(),
        })?;
        // Check it the way the launcher will read it before anything is written.
        let flake = config::resolve(&name, &yaml, file.clone())?;
        let tmp = self.dir.join(format!(".{name}.yaml.tmp"));
        std::fs::write(&tmp, text).map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &yaml).map_err(|e| Error::io("write", &yaml, e))?;
        let parts = self.dir.join(format!("{name}.d"));
        let linked = std::fs::create_dir_all(&parts)
            .map_err(|e| Error::io("create", &parts, e))
            .and_then(|()| link(&app, launcher));
        if let Err(e) = linked {
            let _ = std::fs::remove_file(&yaml);
            return Err(e);
        }
        Ok(flake)
    }

    /// Removes app `name`: its files, and its host command if that is a link to `launcher`.
    pub fn remove(&self, name: &str, launcher: &Path) -> Result<Flake> {
        let flake = self.load(name)?;
        if points_to(&flake.host_app, launcher) {
            std::fs::remove_file(&flake.host_app)
                .map_err(|e| Error::io("remove", &flake.host_app, e))?;
        }
        let parts = self.dir.join(format!("{name}.d"));
        if parts.is_dir() {
            std::fs::remove_dir_all(&parts).map_err(|e| Error::io("remove", &parts, e))?;
        }
        std::fs::remove_file(&flake.file).map_err(|e| Error::io("remove", &flake.file, e))?;
        Ok(flake)
    }
}

/// Whether `link` is a symlink that resolves to `target`.
fn points_to(link: &Path, target: &Path) -> bool {
    let is_link = std::fs::symlink_metadata(link).is_ok_and(|m| m.file_type().is_symlink());
    is_link
        && match (std::fs::canonicalize(link), std::fs::canonicalize(target)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
}

/// Makes `app` a symlink to `launcher` (through a temporary name, so an existing link of
/// ours is replaced at once).
fn link(app: &Path, launcher: &Path) -> Result<()> {
    if let Some(dir) = app.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    }
    let tmp = app.with_file_name(format!(
        ".{}.stamp-tmp",
        app.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(launcher, &tmp).map_err(|e| Error::io("link", &tmp, e))?;
    std::fs::rename(&tmp, app).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("link", app, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Section;

    fn file(app: &Path) -> FlakeFile {
        FlakeFile {
            container: Some(Section {
                name: Some("img".into()),
                host_app_path: Some(app.display().to_string()),
                ..Section::default()
            }),
            ..FlakeFile::default()
        }
    }

    #[test]
    fn register_list_load_remove() {
        let d = tempfile::tempdir().unwrap();
        let launcher = d.path().join("stamp");
        std::fs::write(&launcher, "").unwrap();
        let reg = Registry::new(d.path().join("flakes"));
        let app = d.path().join("bin/hello");
        let f = reg.register(&file(&app), &launcher, false).unwrap();
        assert_eq!(f.name, "hello");
        assert!(points_to(&app, &launcher));
        assert_eq!(reg.names().unwrap(), ["hello"]);
        assert_eq!(reg.load("hello").unwrap().image, "img");
        let e = reg.register(&file(&app), &launcher, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        reg.register(&file(&app), &launcher, true).unwrap();
        reg.remove("hello", &launcher).unwrap();
        assert!(reg.names().unwrap().is_empty());
        assert!(std::fs::symlink_metadata(&app).is_err(), "the link is gone");
    }

    #[test]
    fn a_foreign_command_is_never_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let launcher = d.path().join("stamp");
        std::fs::write(&launcher, "").unwrap();
        let app = d.path().join("ls");
        std::fs::write(&app, "a real program").unwrap();
        let reg = Registry::new(d.path().join("flakes"));
        for force in [false, true] {
            let e = reg.register(&file(&app), &launcher, force).unwrap_err();
            assert!(e.to_string().contains("not a stamp launcher"), "{e}");
        }
        assert_eq!(std::fs::read_to_string(&app).unwrap(), "a real program");
        assert!(reg.names().unwrap().is_empty(), "nothing registered");
    }
}
