//! Where machines live: `STATE/machines/NAME/` holds `spec.json`, `status.json`, the console
//! log, the control sockets and the disk overlay. Writes go to a temporary name and are
//! renamed; read-modify-writes of the status hold `lock` (flock).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::spec::{MachineSpec, check_name};
use crate::status::{Machine, State, Status};
use crate::{Error, Result};

/// The machines directory.
#[derive(Debug, Clone)]
pub struct MachineStore {
    root: PathBuf,
}

/// One machine's directory.
#[derive(Debug, Clone)]
pub struct MachineDir {
    name: String,
    path: PathBuf,
}

/// An exclusive lock on a machine's status, released when dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl MachineStore {
    /// The store in `root` (created when the first machine is).
    pub fn new(root: impl Into<PathBuf>) -> MachineStore {
        MachineStore { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the machine `spec.name` with `spec` and a `created` status. The directory
    /// appears complete or not at all: it is prepared under a temporary name and renamed,
    /// and the rename fails when the name is taken. `prepare` runs on the temporary
    /// directory before the rename (overlays, copies); if it fails, nothing is left.
    pub fn create(
        &self,
        spec: &MachineSpec,
        prepare: impl FnOnce(&MachineDir) -> Result<()>,
    ) -> Result<MachineDir> {
        check_name(&spec.name)?;
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io("create", &self.root, e))?;
        let final_path = self.root.join(&spec.name);
        if final_path.exists() {
            return Err(Error::NameInUse(spec.name.clone()));
        }
        let tmp = self
            .root
            .join(format!(".{}.{}.tmp", spec.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        let staged = MachineDir {
            name: spec.name.clone(),
            path: tmp.clone(),
        };
        let built = (|| {
            write_json(&staged.path.join("spec.json"), spec)?;
            write_json(
                &staged.path.join("status.json"),
                &Status {
                    state: Some(State::Created),
                    ..Status::default()
                },
            )?;
            prepare(&staged)
        })();
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // rename(2) of a directory onto an existing non-empty one fails: the name check and
        // the creation are one step.
        match std::fs::rename(&tmp, &final_path) {
            Ok(()) => Ok(MachineDir {
                name: spec.name.clone(),
                path: final_path,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                if final_path.exists() {
                    Err(Error::NameInUse(spec.name.clone()))
                } else {
                    Err(Error::io("create", &final_path, e))
                }
            }
        }
    }

    /// The machine `name`.
    pub fn open(&self, name: &str) -> Result<MachineDir> {
        check_name(name).map_err(|_| Error::NotFound(name.to_string()))?;
        let path = self.root.join(name);
        if !path.join("spec.json").is_file() {
            return Err(Error::NotFound(name.to_string()));
        }
        Ok(MachineDir {
            name: name.to_string(),
            path,
        })
    }

    /// The names of all machines, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &self.root, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read", &self.root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && entry.path().join("spec.json").is_file() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

impl MachineDir {
    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The spec it was created with.
    pub fn spec(&self) -> Result<MachineSpec> {
        read_json(&self.path.join("spec.json"))
    }

    /// The last recorded status (not reconciled: see [`MachineDir::machine`]).
    pub fn status(&self) -> Result<Status> {
        read_json(&self.path.join("status.json"))
    }

    /// Replaces the status (atomically).
    pub fn write_status(&self, status: &Status) -> Result<()> {
        write_json(&self.path.join("status.json"), status)
    }

    /// Takes the status lock (waits for it).
    pub fn lock(&self) -> Result<Lock> {
        let path = self.path.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io("lock", &path, e.into()))?;
        Ok(Lock { _file: file })
    }

    /// Changes the status under the lock and returns the new one.
    pub fn update(&self, f: impl FnOnce(&mut Status)) -> Result<Status> {
        let _lock = self.lock()?;
        let mut s = self.status()?;
        f(&mut s);
        self.write_status(&s)?;
        Ok(s)
    }

    /// The machine with its status reconciled against the processes: a live state whose
    /// monitor and VMM are both gone (a killed monitor, a host crash) becomes `failed` with
    /// the reason, so that nothing claims to run a dead process.
    pub fn machine(&self) -> Result<Machine> {
        let spec = self.spec()?;
        let mut status = self.status()?;
        if status.state().is_live() && !processes_alive(&status) {
            status = self.update(|s| {
                if s.state().is_live() && !processes_alive(s) {
                    s.state = Some(State::Failed);
                    s.reason = Some(
                        "its processes are gone without a trace (killed, or the host restarted)"
                            .to_string(),
                    );
                    s.finished = Some(crate::now_rfc3339());
                    s.monitor = None;
                    s.vmm = None;
                }
            })?;
        }
        Ok(Machine {
            spec,
            status,
            unit: None,
        })
    }

    /// The serial console (or container output) log.
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// QEMU's QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.path.join("qmp.sock")
    }

    /// Firecracker's API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.path.join("api.sock")
    }

    /// The copy-on-write disk the machine writes to.
    pub fn overlay(&self) -> PathBuf {
        self.path.join("disk.qcow2")
    }

    /// Removes the directory.
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.path).map_err(|e| Error::io("remove", &self.path, e))
    }
}

/// Whether a process of the machine still runs.
fn processes_alive(s: &Status) -> bool {
    s.monitor.is_some_and(|p| p.alive()) || s.vmm.is_some_and(|p| p.alive())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    serde_json::from_slice(&text).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        message: format!("not a valid machine record: {e} (remove the machine with `stamp rm -f`)"),
    })
}

/// Writes `value` as JSON to `path` through a temporary file and a rename.
fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    let text = serde_json::to_vec_pretty(value).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    f.write_all(&text)
        .and_then(|()| f.sync_data())
        .map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Platform, Source};
    use crate::status::Process;

    fn spec(name: &str) -> MachineSpec {
        MachineSpec {
            memory: 256 << 20,
            ..MachineSpec::new(
                name,
                "disk.qcow2",
                Platform::Qemu,
                Source::Disk {
                    path: "/nonexistent".into(),
                    format: "qcow2".into(),
                },
            )
        }
    }

    #[test]
    fn create_open_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let store = MachineStore::new(d.path().join("machines"));
        assert!(store.names().unwrap().is_empty());
        let m = store.create(&spec("a"), |_| Ok(())).unwrap();
        assert_eq!(m.status().unwrap().state(), State::Created);
        let e = store.create(&spec("a"), |_| Ok(())).unwrap_err();
        assert!(matches!(e, Error::NameInUse(_)), "{e}");
        store.create(&spec("b"), |_| Ok(())).unwrap();
        assert_eq!(store.names().unwrap(), ["a", "b"]);
        store.open("a").unwrap().remove().unwrap();
        assert!(matches!(store.open("a"), Err(Error::NotFound(_))));
    }

    #[test]
    fn failed_preparation_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let store = MachineStore::new(d.path());
        let e = store
            .create(&spec("x"), |_| Err(Error::Invalid("no".into())))
            .unwrap_err();
        assert_eq!(e.to_string(), "no");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_dead_process_is_reconciled_to_failed() {
        let d = tempfile::tempdir().unwrap();
        let store = MachineStore::new(d.path());
        let m = store.create(&spec("x"), |_| Ok(())).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = Process::of(child.id()).unwrap();
        m.update(|s| {
            s.state = Some(State::Running);
            s.vmm = Some(p);
        })
        .unwrap();
        assert_eq!(m.machine().unwrap().state(), State::Running);
        child.kill().unwrap();
        child.wait().unwrap();
        let now = m.machine().unwrap();
        assert_eq!(now.state(), State::Failed);
        assert!(now.status.reason.unwrap().contains("gone"));
        assert_eq!(
            m.status().unwrap().state(),
            State::Failed,
            "recorded, not only shown"
        );
    }

    #[test]
    fn corrupt_status_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let store = MachineStore::new(d.path());
        let m = store.create(&spec("x"), |_| Ok(())).unwrap();
        std::fs::write(m.path().join("status.json"), "{").unwrap();
        let e = m.machine().unwrap_err().to_string();
        assert!(e.contains("status.json"), "{e}");
    }
}
