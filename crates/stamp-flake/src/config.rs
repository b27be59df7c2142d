//! Flake registrations in flake-pilot's schema: `DIR/NAME.yaml`, extended by
//! `DIR/NAME.d/*.yaml` read in name order, later files overriding earlier ones key by key.
//!
//! ```yaml
//! container:
//!   name: IMAGE                  # the image in the local registry (podman) or stamp's store
//!   target_app_path: /usr/bin/x  # the program inside
//!   host_app_path: /usr/bin/x    # the command on the host
//!   base_container: BASE         # optional: IMAGE is a delta on BASE
//!   layers: [A, B]               # optional: more layers on top of BASE
//!   runtime:
//!     runas: USER
//!     resume: false
//!     attach: false
//!     podman: ["--storage-opt size=10G", "--rm", "-ti"]
//! include:
//!   tar: [FILE.tar]
//!   path: [/etc/hosts]
//! ```
//!
//! A `vm:` section instead of `container:` runs the app in a microVM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::{Error, Result};

/// One flake file as written (every key optional: `NAME.d/` files carry parts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlakeFile {
    /// Run in a container (podman).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Section>,
    /// Run in a microVM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<Section>,
    /// Host files brought into the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Include>,
}

/// The `container:` or `vm:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// The image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The program inside the instance (`/` means "the app path itself").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_app_path: Option<String>,
    /// The command on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_app_path: Option<String>,
    /// The base image the app image is a delta on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_container: Option<String>,
    /// Further layers on top of the base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<String>>,
    /// How to run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// The image whose kernel, initrd and modules boot a `vm:` flake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
}

/// `runtime:`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// The user the app runs as inside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runas: Option<String>,
    /// Keep the instance and run each call inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<bool>,
    /// Attach to the running instance instead of running the app again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<bool>,
    /// Extra podman options, each entry one option with its value (`--memory 1g`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub podman: Option<Vec<String>>,
    /// microVM settings (`vm:` flakes): flake-pilot's `firecracker:` block, and stamp's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firecracker: Option<BTreeMap<String, Value>>,
    /// microVM memory (`1G`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// microVM CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// The instance's writable overlay size (`20G`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_size: Option<String>,
    /// No network in the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_net: Option<bool>,
    /// How the launcher talks to the guest agent (vm): `serial` (virtio-serial, the default)
    /// or `vsock` (Firecracker's transport; under QEMU through `vhost-device-vsock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
}

/// `runtime.transport`: the vm engine's channel to the guest agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A virtio-serial port (QEMU).
    #[default]
    Serial,
    /// virtio-vsock, spoken through a Unix socket with Firecracker's `CONNECT PORT` handshake.
    Vsock,
}

/// `include:`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Include {
    /// Tar archives unpacked over the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tar: Option<Vec<String>>,
    /// Host files and directories copied in at the same path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Vec<String>>,
}

/// The engine a flake runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// podman.
    Podman,
    /// A microVM.
    Vm,
}

/// A flake as the launcher uses it: the files merged and checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flake {
    /// The app's name (the host command's file name).
    pub name: String,
    /// The main file.
    pub file: PathBuf,
    /// Where it runs.
    pub engine: Engine,
    /// The image.
    pub image: String,
    /// The program inside.
    pub target: String,
    /// The command on the host.
    pub host_app: PathBuf,
    /// The base image, if the image is a delta.
    pub base: Option<String>,
    /// Layers on top of the base.
    pub layers: Vec<String>,
    /// The user inside.
    pub runas: Option<String>,
    /// Keep the instance and run each call inside it.
    pub resume: bool,
    /// Attach to a running instance.
    pub attach: bool,
    /// Extra engine options, split into arguments.
    pub options: Vec<String>,
    /// Tars to unpack over the root.
    pub include_tar: Vec<PathBuf>,
    /// Host paths to bring in.
    pub include_path: Vec<PathBuf>,
    /// The kernel image (`vm:` flakes).
    pub kernel: Option<String>,
    /// The raw runtime section (microVM settings).
    #[serde(skip)]
    pub runtime: Runtime,
}

/// Largest flake file read (flake-pilot's are a few hundred bytes).
pub const MAX_FILE: u64 = 1 << 20;

/// Reads one flake file, checking it against the schema; errors name the file, the line and
/// the key.
pub fn read_file(path: &Path) -> Result<(FlakeFile, Value)> {
    let f = std::fs::File::open(path).map_err(|e| Error::io("read", path, e))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_FILE + 1), &mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(Error::Config {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_FILE} bytes; is this a flake file?"),
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        message: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
    })?;
    parse(path, &text)
}

/// Parses the text of flake file `path`: the typed file and the raw value (for merging).
pub fn parse(path: &Path, text: &str) -> Result<(FlakeFile, Value)> {
    let bad = |e: serde_yaml_ng::Error| Error::Config {
        path: path.to_path_buf(),
        message: match e.location() {
            Some(l) => format!("line {}, column {}: {e}", l.line(), l.column()),
            None => e.to_string(),
        },
    };
    if text.trim().is_empty() {
        return Ok((FlakeFile::default(), Value::Mapping(Default::default())));
    }
    let value: Value = serde_yaml_ng::from_str(text).map_err(bad)?;
    let file: FlakeFile = serde_yaml_ng::from_str(text).map_err(bad)?;
    Ok((file, value))
}

/// Loads flake `name` from `dir`: `NAME.yaml`, then `NAME.d/*.yaml` in name order.
pub fn load(dir: &Path, name: &str) -> Result<Flake> {
    let main = dir.join(format!("{name}.yaml"));
    if !main.is_file() {
        return Err(Error::NotFound(name.to_string()));
    }
    let (_, mut merged) = read_file(&main)?;
    let extra = dir.join(format!("{name}.d"));
    if extra.is_dir() {
        let mut parts: Vec<PathBuf> = std::fs::read_dir(&extra)
            .map_err(|e| Error::io("read", &extra, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        parts.sort();
        for p in parts {
            let (_, v) = read_file(&p)?;
            merge(&mut merged, v);
        }
    }
    let file: FlakeFile = serde_yaml_ng::from_value(merged).map_err(|e| Error::Config {
        path: main.clone(),
        message: format!("with its {name}.d/ files: {e}"),
    })?;
    resolve(name, &main, file)
}

/// Deep merge: mappings key by key, anything else replaced.
fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(old) => merge(old, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

impl Flake {
    /// A setting of flake-pilot's `runtime.firecracker:` block.
    fn firecracker(&self, key: &str) -> Option<&Value> {
        self.runtime.firecracker.as_ref()?.get(key)
    }

    /// The vm engine's channel to the guest agent.
    pub fn transport(&self) -> Transport {
        self.runtime.transport.unwrap_or_default()
    }

    /// The microVM's memory: `runtime.memory`, or flake-pilot's `firecracker.mem_size_mib`.
    pub fn memory(&self) -> Option<String> {
        self.runtime.memory.clone().or_else(|| {
            self.firecracker("mem_size_mib")
                .and_then(Value::as_u64)
                .map(|m| format!("{m}M"))
        })
    }

    /// The microVM's CPUs: `runtime.cpus`, or flake-pilot's `firecracker.vcpu_count`.
    pub fn cpus(&self) -> Option<u32> {
        self.runtime.cpus.or_else(|| {
            self.firecracker("vcpu_count")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok())
        })
    }

    /// The microVM's disk size: `runtime.overlay_size`, or flake-pilot's
    /// `firecracker.overlay_size` (`20GiB` is read as `20G`).
    pub fn overlay_size(&self) -> Option<String> {
        self.runtime
            .overlay_size
            .clone()
            .or_else(|| {
                self.firecracker("overlay_size")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .map(|s| {
                s.trim()
                    .trim_end_matches("iB")
                    .trim_end_matches('B')
                    .to_string()
            })
    }
}

/// A name made of `[A-Za-z0-9_.-]` (other characters become `-`), for container, image and
/// directory names derived from app and instance names.
pub fn clean_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Checks a merged file and turns it into a [`Flake`].
pub fn resolve(name: &str, path: &Path, file: FlakeFile) -> Result<Flake> {
    let missing = |key: &str| Error::Config {
        path: path.to_path_buf(),
        message: format!("`{key}` is missing"),
    };
    let (engine, section) = match (file.container, file.vm) {
        (Some(c), None) => (Engine::Podman, c),
        (None, Some(v)) => (Engine::Vm, v),
        (Some(_), Some(_)) => {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: "has both `container:` and `vm:`; a flake runs on one engine".into(),
            });
        }
        (None, None) => return Err(missing("container: (or vm:)")),
    };
    let key = match engine {
        Engine::Podman => "container",
        Engine::Vm => "vm",
    };
    let image = section
        .name
        .clone()
        .ok_or_else(|| missing(&format!("{key}.name")))?;
    let host_app = section
        .host_app_path
        .clone()
        .map(PathBuf::from)
        .ok_or_else(|| missing(&format!("{key}.host_app_path")))?;
    let target = match section.target_app_path.as_deref() {
        None | Some("/") => host_app.display().to_string(),
        Some(t) => t.to_string(),
    };
    let runtime = section.runtime.clone().unwrap_or_default();
    let mut options = Vec::new();
    for o in runtime.podman.iter().flatten() {
        options.extend(o.split_whitespace().map(str::to_string));
    }
    let include = file.include.unwrap_or_default();
    Ok(Flake {
        name: name.to_string(),
        file: path.to_path_buf(),
        engine,
        image,
        target,
        host_app,
        base: section.base_container.clone(),
        layers: section.layers.clone().unwrap_or_default(),
        runas: runtime.runas.clone(),
        resume: runtime.resume.unwrap_or(false),
        attach: runtime.attach.unwrap_or(false),
        options,
        include_tar: include
            .tar
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        include_path: include
            .path
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        kernel: section.kernel.clone(),
        runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flake-pilot configuration as its manual page documents it (podman flavour).
    const PILOT: &str = "container:
  name: joe
  target_app_path: /usr/bin/joe
  host_app_path: /usr/bin/joe
  base_container: basesystem
  layers:
    - layer_A
  runtime:
    runas: root
    resume: false
    attach: false
    podman:
      - --storage-opt size=10G
      - --rm
      - -ti
include:
  tar:
    - /srv/extra.tar
";

    #[test]
    fn flake_pilot_files_load_and_parts_override() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("joe.yaml"), PILOT).unwrap();
        std::fs::create_dir(d.path().join("joe.d")).unwrap();
        std::fs::write(
            d.path().join("joe.d/10-resume.yaml"),
            "container:\n  runtime:\n    resume: true\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("joe.d/20-user.yaml"),
            "container:\n  runtime:\n    runas: alice\n",
        )
        .unwrap();
        let f = load(d.path(), "joe").unwrap();
        assert_eq!(f.engine, Engine::Podman);
        assert_eq!(f.image, "joe");
        assert_eq!(f.target, "/usr/bin/joe");
        assert_eq!(f.base.as_deref(), Some("basesystem"));
        assert_eq!(f.layers, ["layer_A"]);
        assert_eq!(f.runas.as_deref(), Some("alice"), "the later part wins");
        assert!(f.resume);
        assert!(!f.attach);
        assert_eq!(f.options, ["--storage-opt", "size=10G", "--rm", "-ti"]);
        assert_eq!(f.include_tar, [PathBuf::from("/srv/extra.tar")]);
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.yaml");
        std::fs::write(&p, "container:\n  name: x\n  host_app_path: [unclosed\n").unwrap();
        let e = load(d.path(), "bad").unwrap_err().to_string();
        assert!(e.contains("bad.yaml") && e.contains("line"), "{e}");
        std::fs::write(&p, "container:\n  name: x\n  hots_app_path: /x\n").unwrap();
        let e = load(d.path(), "bad").unwrap_err().to_string();
        assert!(e.contains("bad.yaml") && e.contains("hots_app_path"), "{e}");
        std::fs::write(&p, "container:\n  name: x\n").unwrap();
        let e = load(d.path(), "bad").unwrap_err().to_string();
        assert!(e.contains("container.host_app_path"), "{e}");
        assert!(matches!(load(d.path(), "none"), Err(Error::NotFound(_))));
    }

    #[test]
    fn flake_pilot_firecracker_settings_size_the_machine() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("fc.yaml"),
            "vm:\n  name: img\n  host_app_path: /usr/bin/fc\n  runtime:\n    firecracker:\n      mem_size_mib: 4096\n      vcpu_count: 2\n      overlay_size: 20GiB\n",
        )
        .unwrap();
        let f = load(d.path(), "fc").unwrap();
        assert_eq!(
            (f.memory(), f.cpus(), f.overlay_size()),
            (Some("4096M".into()), Some(2), Some("20G".into()))
        );
        // stamp's own keys win.
        let mut f = f;
        f.runtime.memory = Some("1G".into());
        f.runtime.overlay_size = Some("5G".into());
        assert_eq!(
            (f.memory(), f.overlay_size()),
            (Some("1G".into()), Some("5G".into()))
        );
        assert_eq!(clean_name("a b/c@d"), "a-b-c-d");
    }

    #[test]
    fn target_slash_means_the_host_path() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("a.yaml"),
            "container:\n  name: img\n  host_app_path: /usr/bin/a\n  target_app_path: /\n",
        )
        .unwrap();
        assert_eq!(load(d.path(), "a").unwrap().target, "/usr/bin/a");
    }

    #[test]
    fn every_cut_and_flipped_byte_of_a_pilot_file_is_an_error_or_a_flake() {
        let path = Path::new("/usr/share/flakes/joe.yaml");
        let b = PILOT.as_bytes();
        let flips = (0..b.len()).map(|i| {
            let mut v = b.to_vec();
            v[i] ^= 0x20;
            v
        });
        for v in (0..b.len()).map(|n| b[..n].to_vec()).chain(flips) {
            if let Ok(text) = std::str::from_utf8(&v) {
                if let Ok((file, _)) = parse(path, text) {
                    let _ = resolve("joe", path, file);
                }
            }
        }
    }

    #[test]
    fn a_huge_or_binary_file_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let big = d.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_FILE as usize + 1]).unwrap();
        let e = read_file(&big).unwrap_err().to_string();
        assert!(e.contains("big.yaml") && e.contains("larger than"), "{e}");
        let bin = d.path().join("bin.yaml");
        std::fs::write(&bin, b"container:\n  name: \xff\n").unwrap();
        let e = read_file(&bin).unwrap_err().to_string();
        assert!(
            e.contains("bin.yaml") && e.contains("not UTF-8 text (byte 19)"),
            "{e}"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_an_error_or_a_flake_never_a_panic(text in "\\PC{0,200}") {
            let d = tempfile::tempdir().unwrap();
            std::fs::write(d.path().join("p.yaml"), &text).unwrap();
            let _ = load(d.path(), "p");
        }
    }
}
