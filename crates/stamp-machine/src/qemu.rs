//! The QEMU driver: a disk image booted with UEFI (OVMF) or BIOS, or a kernel booted directly;
//! the machine writes to a qcow2 overlay whose backing file is the image, so the image never
//! changes. User-mode networking with host port forwards, the serial console in the console
//! log, QMP for status, pause, resume and shutdown. KVM when it really works, else TCG.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::accel::{self, Accel};
use crate::driver::{Driver, Launch, which};
use crate::qmp::Qmp;
use crate::spec::{MachineSpec, Source};
use crate::store::MachineDir;
use crate::{Error, Result};

/// OVMF firmware pairs (code, variables template) in the order they are tried.
const OVMF: [(&str, &str); 3] = [
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
];

/// How long QEMU may take to open its QMP socket.
const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// QEMU's settings.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// `qemu-system-x86_64` (or another path).
    pub binary: PathBuf,
    /// Force an accelerator instead of probing.
    pub accel: Option<Accel>,
    /// Where the KVM probe's result is cached.
    pub cache_dir: PathBuf,
}

impl QemuOptions {
    /// `qemu-system-x86_64` from PATH (`STAMP_QEMU` overrides), the accelerator from
    /// `STAMP_ACCEL` (`kvm` or `tcg`) if set.
    pub fn from_env(cache_dir: PathBuf) -> QemuOptions {
        let binary = std::env::var_os("STAMP_QEMU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        let accel = match std::env::var("STAMP_ACCEL").as_deref() {
            Ok("kvm") => Some(Accel::Kvm),
            Ok("tcg") => Some(Accel::Tcg),
            _ => None,
        };
        QemuOptions {
            binary,
            accel,
            cache_dir,
        }
    }
}

/// How the machine's firmware boots it, decided at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Boot {
    Uefi,
    Bios,
    Kernel,
}

/// What `prepare` decided, kept in the machine's directory (`qemu.json`).
#[derive(Debug, Serialize, Deserialize)]
struct Prepared {
    boot: Boot,
    /// OVMF's code file (UEFI).
    ovmf_code: Option<PathBuf>,
}

/// The QEMU driver.
pub struct Qemu {
    opts: QemuOptions,
}

impl Qemu {
    /// A driver with `opts`.
    pub fn new(opts: QemuOptions) -> Qemu {
        Qemu { opts }
    }

    fn binary(&self) -> Result<PathBuf> {
        let b = &self.opts.binary;
        if b.components().count() > 1 {
            return Ok(b.clone());
        }
        which(&b.to_string_lossy()).ok_or_else(|| {
            Error::Driver(format!(
                "{} is not installed (apt-get install qemu-system-x86 ovmf)",
                b.display()
            ))
        })
    }

    fn qmp(&self, dir: &MachineDir) -> Result<Qmp> {
        Qmp::connect(&dir.qmp_socket(), Duration::from_secs(5))
    }

    /// The full command line (also for tests and `stamp inspect`).
    pub fn command(&self, spec: &MachineSpec, dir: &MachineDir, accel: Accel) -> Result<Command> {
        let prepared: Prepared = read_prepared(dir)?;
        let mut c = Command::new(self.binary()?);
        c.args(["-name", &format!("guest={},debug-threads=on", spec.name)]);
        c.args(["-nodefaults", "-no-user-config", "-display", "none"]);
        c.args(["-machine", "q35"]);
        c.args(["-accel", accel.as_str()]);
        c.args(["-cpu", if accel == Accel::Kvm { "host" } else { "max" }]);
        c.args(["-smp", &spec.cpus.to_string()]);
        c.args(["-m", &format!("{}M", spec.memory >> 20)]);
        c.arg("-qmp").arg(format!(
            "unix:{},server=on,wait=off",
            dir.qmp_socket().display()
        ));
        c.arg("-chardev").arg(format!(
            "file,id=console,path={},append=on",
            comma_escaped(&dir.console_log())
        ));
        c.args(["-serial", "chardev:console"]);
        c.args(["-device", "virtio-rng-pci"]);
        let mut netdev = "user,id=net0".to_string();
        for p in &spec.ports {
            let ip = p.host_ip.map(|ip| ip.to_string()).unwrap_or_default();
            netdev.push_str(&format!(
                ",hostfwd={}:{ip}:{}-:{}",
                p.protocol.as_str(),
                p.host,
                p.guest
            ));
        }
        c.args(["-netdev", &netdev]);
        c.args(["-device", "virtio-net-pci,netdev=net0"]);
        if prepared.boot == Boot::Uefi {
            let code = prepared
                .ovmf_code
                .ok_or_else(|| Error::Driver("no OVMF firmware recorded".into()))?;
            c.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                comma_escaped(&code)
            ));
            c.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                comma_escaped(&dir.path().join("vars.fd"))
            ));
        }
        match &spec.source {
            Source::Disk { .. } => {
                c.arg("-drive").arg(format!(
                    "file={},if=virtio,format=qcow2,discard=unmap",
                    comma_escaped(&dir.overlay())
                ));
            }
            Source::Kernel {
                kernel,
                initrd,
                root,
                cmdline,
            } => {
                c.arg("-kernel").arg(kernel);
                if let Some(i) = initrd {
                    c.arg("-initrd").arg(i);
                }
                let mut append = format!("console=ttyS0 {cmdline}");
                if root.is_some() {
                    c.arg("-drive").arg(format!(
                        "file={},if=virtio,format=qcow2",
                        comma_escaped(&dir.overlay())
                    ));
                    if !cmdline.contains("root=") {
                        append.push_str(" root=/dev/vda rw");
                    }
                }
                if !spec.cmd.is_empty() {
                    append.push(' ');
                    append.push_str(&spec.cmd.join(" "));
                }
                c.arg("-append").arg(append.trim());
            }
            Source::Container { .. } => return Err(container_needs_disk()),
        }
        Ok(c)
    }
}

impl Driver for Qemu {
    fn available(&self) -> Result<()> {
        self.binary().map(|_| ())
    }

    fn prepare(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<()> {
        let (base, boot) = match &spec.source {
            Source::Disk { path, .. } => {
                let disk = stamp_disk::open(path, None)?;
                let boot = match stamp_fs::gpt::firmware(&*disk).map_err(|e| {
                    Error::Driver(format!(
                        "cannot read the partition table of {}: {e}",
                        path.display()
                    ))
                })? {
                    Some(stamp_fs::gpt::Firmware::Bios) => Boot::Bios,
                    // UEFI boots both GPT with an ESP and (through CSM-less OVMF) nothing
                    // else; a disk without a recognisable table gets UEFI too.
                    _ => Boot::Uefi,
                };
                (Some((path.clone(), disk.virtual_size())), boot)
            }
            Source::Kernel { root, .. } => (
                match root {
                    Some(r) => Some((r.clone(), stamp_disk::open(r, None)?.virtual_size())),
                    None => None,
                },
                Boot::Kernel,
            ),
            Source::Container { .. } => return Err(container_needs_disk()),
        };
        if let Some((path, size)) = base {
            let path = std::fs::canonicalize(&path).map_err(|e| Error::io("open", &path, e))?;
            let format = stamp_disk::detect_path(&path)?;
            if format.qemu_name().is_none() {
                return Err(Error::Invalid(format!(
                    "{}: QEMU cannot run a {} directly; convert it first (`stamp convert -O qcow2 {} disk.qcow2`)",
                    path.display(),
                    format.name(),
                    path.display()
                )));
            }
            let size = spec.disk_size.unwrap_or(0).max(size);
            let opts = stamp_disk::CreateOptions {
                backing_file: Some(path),
                backing_fmt: Some(format),
                ..Default::default()
            };
            stamp_disk::create(&dir.overlay(), stamp_disk::Format::Qcow2, size, &opts)?.finish()?;
        }
        let ovmf_code = if boot == Boot::Uefi {
            let (code, vars) = OVMF
                .iter()
                .find(|(c, v)| Path::new(c).is_file() && Path::new(v).is_file())
                .ok_or_else(|| {
                    Error::Driver(
                        "this disk boots with UEFI but no OVMF firmware is installed (apt-get install ovmf)"
                            .into(),
                    )
                })?;
            let dst = dir.path().join("vars.fd");
            std::fs::copy(vars, &dst).map_err(|e| Error::io("copy OVMF variables to", &dst, e))?;
            Some(PathBuf::from(code))
        } else {
            None
        };
        let p = dir.path().join("qemu.json");
        let text = serde_json::to_vec_pretty(&Prepared { boot, ovmf_code })
            .map_err(|e| Error::Driver(e.to_string()))?;
        std::fs::write(&p, text).map_err(|e| Error::io("write", &p, e))
    }

    fn launch(&self, spec: &MachineSpec, dir: &MachineDir) -> Result<Launch> {
        let qemu = self.binary()?;
        let (accel, why) = match self.opts.accel {
            Some(a) => (a, None),
            None => accel::choose(&qemu, &self.opts.cache_dir),
        };
        let warning = why.map(|why| {
            format!(
                "{why}: running {} under TCG (software emulation, slow)",
                spec.name
            )
        });
        if let Some(w) = &warning {
            tracing::warn!("{w}");
        }
        let _ = std::fs::remove_file(dir.qmp_socket());
        let check = dir.qmp_socket();
        if check.as_os_str().len() >= 108 {
            return Err(Error::Invalid(format!(
                "{}: the path is too long for a Unix socket (108 bytes); set XDG_STATE_HOME to a shorter directory",
                check.display()
            )));
        }
        Ok(Launch {
            command: self.command(spec, dir, accel)?,
            accel: Some(accel.as_str().to_string()),
            warning,
            output_is_console: false,
            workload_exit: false,
            clean_exit: "the guest powered off",
        })
    }

    fn started(&self, _spec: &MachineSpec, dir: &MachineDir, pid: u32) -> Result<()> {
        let mut q = Qmp::connect(&dir.qmp_socket(), QMP_TIMEOUT).map_err(|e| {
            if crate::status::Process::of(pid).is_none() {
                Error::Driver("QEMU exited before it opened its QMP socket".into())
            } else {
                e
            }
        })?;
        match q.status()?.as_str() {
            "running" => Ok(()),
            other => Err(Error::Driver(format!("QEMU reports {other}, not running"))),
        }
    }

    fn pause(&self, _spec: &MachineSpec, dir: &MachineDir) -> Result<()> {
        self.qmp(dir)?.execute("stop", None).map(|_| ())
    }

    fn resume(&self, _spec: &MachineSpec, dir: &MachineDir) -> Result<()> {
        self.qmp(dir)?.execute("cont", None).map(|_| ())
    }

    /// The ACPI power button, and Ctrl-Alt-Del for guests that do not handle it (no logind
    /// or acpid: systemd still starts ctrl-alt-del.target, a reboot); during a stop a guest
    /// reboot ends QEMU instead (`set-action`).
    fn shutdown(&self, _spec: &MachineSpec, dir: &MachineDir) -> Result<()> {
        let mut q = self.qmp(dir)?;
        if let Err(e) = q.execute("set-action", Some(json!({ "reboot": "shutdown" }))) {
            tracing::debug!("QEMU has no set-action (older than 6.0?): {e}");
        }
        q.execute("system_powerdown", None)?;
        let keys: Vec<_> = ["ctrl", "alt", "delete"]
            .iter()
            .map(|k| json!({ "type": "qcode", "data": k }))
            .collect();
        q.execute("send-key", Some(json!({ "keys": keys })))
            .map(|_| ())
    }

    fn kill(&self, _spec: &MachineSpec, dir: &MachineDir) -> Result<()> {
        match self.qmp(dir)?.execute("quit", None) {
            Ok(_) => Ok(()),
            // QEMU may close the socket before it answers.
            Err(Error::Driver(m)) if m.contains("closed") => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn cleanup(&self, _spec: &MachineSpec, _dir: &MachineDir) -> Result<()> {
        Ok(())
    }
}

fn read_prepared(dir: &MachineDir) -> Result<Prepared> {
    let p = dir.path().join("qemu.json");
    let text = std::fs::read(&p).map_err(|e| Error::io("read", &p, e))?;
    serde_json::from_slice(&text).map_err(|e| Error::Corrupt {
        path: p,
        message: e.to_string(),
    })
}

/// A container image has no disk: the CLI builds one first (or runs it with podman).
fn container_needs_disk() -> Error {
    Error::Invalid(
        "a container image runs under qemu only as a disk: build one with `stamp build IMAGE -o disk.qcow2`, or use --platform podman"
            .into(),
    )
}

/// A path for a QEMU option value: commas doubled, as QEMU's option parser wants.
fn comma_escaped(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Platform, PortForward};
    use crate::store::MachineStore;

    fn spec(name: &str, disk: &Path) -> MachineSpec {
        MachineSpec {
            cpus: 2,
            memory: 512 << 20,
            disk_size: Some(64 << 20),
            ports: vec!["127.0.0.1:8080:80".parse::<PortForward>().unwrap()],
            ..MachineSpec::new(
                name,
                disk.display().to_string(),
                Platform::Qemu,
                Source::Disk {
                    path: disk.to_path_buf(),
                    format: "raw".into(),
                },
            )
        }
    }

    #[test]
    fn prepares_an_overlay_and_a_command_line() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("base.raw");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let before = std::fs::read(&disk).unwrap();
        let q = Qemu::new(QemuOptions {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            accel: Some(Accel::Tcg),
            cache_dir: d.path().into(),
        });
        let store = MachineStore::new(d.path().join("m"));
        let s = spec("vm1", &disk);
        let dir = match store.create(&s, |dir| q.prepare(&s, dir)) {
            Ok(dir) => dir,
            Err(Error::Driver(m)) if m.contains("OVMF") => return,
            Err(e) => panic!("{e}"),
        };
        let overlay = stamp_disk::info(&dir.overlay(), None).unwrap();
        assert_eq!(overlay.virtual_size, 64 << 20, "grown to --disk-size");
        assert_eq!(
            std::fs::read(&disk).unwrap(),
            before,
            "the image is untouched"
        );
        let cmd = q.command(&s, &dir, Accel::Tcg).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for want in [
            "-accel tcg",
            "-cpu max",
            "-smp 2",
            "-m 512M",
            "hostfwd=tcp:127.0.0.1:8080-:80",
            "if=pflash,format=raw,unit=0,readonly=on",
            "format=qcow2",
        ] {
            assert!(joined.contains(want), "{want} missing from {joined}");
        }
    }

    #[test]
    fn a_kernel_boots_directly_with_its_root_on_an_overlay() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root.ext4");
        std::fs::write(&root, vec![0u8; 1 << 20]).unwrap();
        let q = Qemu::new(QemuOptions {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            accel: Some(Accel::Tcg),
            cache_dir: d.path().into(),
        });
        let mut s = MachineSpec::new(
            "k1",
            "app",
            Platform::Qemu,
            Source::Kernel {
                kernel: "/boot/vmlinuz".into(),
                initrd: Some("/boot/initrd.img".into()),
                root: Some(root.clone()),
                cmdline: "quiet".into(),
            },
        );
        s.cmd = vec!["init=/bin/sh".into()];
        let store = MachineStore::new(d.path().join("m"));
        let dir = store.create(&s, |dir| q.prepare(&s, dir)).unwrap();
        assert!(dir.overlay().is_file(), "the root gets an overlay too");
        assert!(
            !dir.path().join("vars.fd").exists(),
            "no firmware for a direct boot"
        );
        let args: Vec<String> = q
            .command(&s, &dir, Accel::Tcg)
            .unwrap()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(at("-kernel"), "/boot/vmlinuz");
        assert_eq!(at("-initrd"), "/boot/initrd.img");
        assert_eq!(
            at("-append"),
            "console=ttyS0 quiet root=/dev/vda rw init=/bin/sh"
        );
        assert!(!args.iter().any(|a| a.contains("pflash")));
    }

    #[test]
    fn commas_are_escaped() {
        assert_eq!(comma_escaped(Path::new("/a,b/c")), "/a,,b/c");
    }

    #[test]
    fn a_container_image_is_refused_with_a_hint() {
        let d = tempfile::tempdir().unwrap();
        let q = Qemu::new(QemuOptions::from_env(d.path().into()));
        let mut s = spec("c", Path::new("/x"));
        s.source = Source::Container {
            reference: "busybox".into(),
        };
        let store = MachineStore::new(d.path().join("m"));
        let e = store.create(&s, |dir| q.prepare(&s, dir)).unwrap_err();
        assert!(e.to_string().contains("stamp build"), "{e}");
        assert!(store.names().unwrap().is_empty());
    }
}
