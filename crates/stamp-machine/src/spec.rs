//! What a machine is asked to be: [`MachineSpec`], written once at creation and never changed
//! by running it.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which driver runs a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// QEMU with KVM when it works, else TCG.
    Qemu,
    /// Firecracker (a kernel and an ext4 root filesystem).
    Firecracker,
    /// A podman container.
    Podman,
}

impl Platform {
    /// The name users type (`--platform NAME`).
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Qemu => "qemu",
            Platform::Firecracker => "firecracker",
            Platform::Podman => "podman",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = Error;
    fn from_str(s: &str) -> Result<Platform> {
        match s {
            "qemu" => Ok(Platform::Qemu),
            "firecracker" => Ok(Platform::Firecracker),
            "podman" => Ok(Platform::Podman),
            _ => Err(Error::Invalid(format!(
                "unknown platform '{s}' (use qemu, firecracker or podman)"
            ))),
        }
    }
}

/// What the machine boots or runs, resolved from the image the user named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// A disk image file (any format QEMU reads); the machine writes to an overlay on it.
    Disk {
        path: PathBuf,
        /// QEMU's name of the format (`qcow2`, `raw`, `vmdk`, `vpc`, `vhdx`, `vdi`).
        format: String,
    },
    /// A kernel booted directly, with an optional initrd and a root disk.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        /// The root disk (raw ext4 for Firecracker, any disk for QEMU).
        root: Option<PathBuf>,
        cmdline: String,
    },
    /// A container image, by a reference podman understands.
    Container { reference: String },
}

/// A host port forwarded to a guest port (`-p [IP:]HOST:GUEST[/tcp|/udp]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    /// The host address to listen on (all addresses when absent).
    pub host_ip: Option<IpAddr>,
    pub host: u16,
    pub guest: u16,
    pub protocol: Protocol,
}

/// A port forward's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl FromStr for PortForward {
    type Err = Error;
    fn from_str(s: &str) -> Result<PortForward> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "invalid port spec '{s}': {why} (use [IP:]HOST:GUEST[/tcp|/udp], e.g. 8080:80)"
            ))
        };
        let (ports, protocol) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some((_, other)) => return Err(bad(&format!("unknown protocol '{other}'"))),
            None => (s, Protocol::Tcp),
        };
        let (rest, guest) = ports
            .rsplit_once(':')
            .ok_or_else(|| bad("no ':' between host and guest port"))?;
        let (host_ip, host) = match rest.rsplit_once(':') {
            Some((ip, host)) => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                let ip = ip
                    .parse::<IpAddr>()
                    .map_err(|_| bad(&format!("'{ip}' is not an IP address")))?;
                (Some(ip), host)
            }
            None => (None, rest),
        };
        let port = |p: &str, what: &str| -> Result<u16> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad(&format!("{what} port '{p}' is not 1-65535"))),
                Ok(n) => Ok(n),
            }
        };
        Ok(PortForward {
            host_ip,
            host: port(host, "host")?,
            guest: port(guest, "guest")?,
            protocol,
        })
    }
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(f, "{}:{}/{}", self.host, self.guest, self.protocol.as_str())
    }
}

/// How `--systemd` runs the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemdSpec {
    /// A user unit (`systemctl --user`) rather than a system one.
    pub user: bool,
    /// `Restart=`: `always`, `on-failure` or `no`.
    pub restart: Restart,
    /// Enable the unit (`WantedBy=`) so that it starts at boot.
    pub enable: bool,
}

/// systemd's `Restart=` values that `--restart` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Always,
    OnFailure,
    No,
}

impl Restart {
    /// The value as systemd writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::No => "no",
        }
    }
}

impl FromStr for Restart {
    type Err = Error;
    fn from_str(s: &str) -> Result<Restart> {
        match s {
            "always" => Ok(Restart::Always),
            "on-failure" => Ok(Restart::OnFailure),
            "no" => Ok(Restart::No),
            _ => Err(Error::Invalid(format!(
                "invalid --restart '{s}' (use always, on-failure or no)"
            ))),
        }
    }
}

/// Everything a machine is created with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSpec {
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    pub platform: Platform,
    pub source: Source,
    pub cpus: u32,
    /// Guest memory in bytes.
    pub memory: u64,
    /// Grow the machine's disk (its overlay) to this many bytes.
    pub disk_size: Option<u64>,
    #[serde(default)]
    pub ports: Vec<PortForward>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The command (containers; appended to the kernel command line for a direct-kernel boot).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Remove the machine when it stops (`--rm`).
    #[serde(default)]
    pub remove: bool,
    /// Set when the machine runs as a systemd service.
    #[serde(default)]
    pub systemd: Option<SystemdSpec>,
    /// When it was created (RFC 3339, UTC).
    pub created: String,
}

impl MachineSpec {
    /// A spec with the defaults for the rest: one CPU, [`DEFAULT_MEMORY`], no ports,
    /// environment or command, kept when stopped, not under systemd, created now.
    pub fn new(
        name: impl Into<String>,
        image: impl Into<String>,
        platform: Platform,
        source: Source,
    ) -> MachineSpec {
        MachineSpec {
            name: name.into(),
            image: image.into(),
            platform,
            source,
            cpus: 1,
            memory: DEFAULT_MEMORY,
            disk_size: None,
            ports: Vec::new(),
            env: Vec::new(),
            cmd: Vec::new(),
            remove: false,
            systemd: None,
            created: crate::now_rfc3339(),
        }
    }
}

/// Default guest memory: 1 GiB.
pub const DEFAULT_MEMORY: u64 = 1 << 30;

/// Longest machine name.
pub const MAX_NAME: usize = 63;

/// Checks a machine name: 1 to 63 of `[A-Za-z0-9_.-]`, starting with a letter or digit (it
/// becomes a directory, a unit name and a container name).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid machine name '{name}': use 1 to {MAX_NAME} letters, digits, '_', '.' or '-', starting with a letter or digit"
        )))
    }
}

/// Checks the resources: at least one CPU, at most 255 (QEMU's x86 limit with -smp), and
/// memory from 16 MiB up to the host's total.
pub fn check_resources(cpus: u32, memory: u64) -> Result<()> {
    if cpus == 0 || cpus > 255 {
        return Err(Error::Invalid(format!(
            "--cpus {cpus} is not valid (use 1 to 255)"
        )));
    }
    if memory < 16 << 20 {
        return Err(Error::Invalid(format!(
            "--memory {} is too small (at least 16M)",
            human(memory)
        )));
    }
    if let Some(total) = host_memory() {
        if memory > total {
            return Err(Error::Invalid(format!(
                "--memory {} is more than this host has ({}); ask for less",
                human(memory),
                human(total)
            )));
        }
    }
    Ok(())
}

/// The host's total memory in bytes (`MemTotal` of /proc/meminfo).
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A byte count in binary units (`1G`, `512M`, `1.5G`).
pub fn human(n: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("T", 40), ("G", 30), ("M", 20), ("K", 10)];
    for (unit, shift) in UNITS {
        if n >= 1 << shift {
            let whole = n >> shift;
            return if n % (1 << shift) == 0 {
                format!("{whole}{unit}")
            } else {
                format!("{:.1}{unit}", n as f64 / (1u64 << shift) as f64)
            };
        }
    }
    format!("{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        let p: PortForward = "8080:80".parse().unwrap();
        assert_eq!(
            p,
            PortForward {
                host_ip: None,
                host: 8080,
                guest: 80,
                protocol: Protocol::Tcp
            }
        );
        let p: PortForward = "127.0.0.1:2222:22/tcp".parse().unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.to_string(), "127.0.0.1:2222:22/tcp");
        let p: PortForward = "[::1]:53:53/udp".parse().unwrap();
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.to_string(), "[::1]:53:53/udp");
        for bad in [
            "80",
            "0:80",
            "80:70000",
            "a:80",
            "1.2.3:80:80",
            "80:80/sctp",
            "",
        ] {
            let e = bad.parse::<PortForward>().unwrap_err().to_string();
            assert!(e.contains("invalid port spec"), "{bad}: {e}");
        }
    }

    #[test]
    fn names() {
        for good in ["a", "web-1", "db.main", "x_y", &"n".repeat(63)] {
            check_name(good).unwrap();
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "ä", &"n".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resources() {
        check_resources(1, 64 << 20).unwrap();
        assert!(check_resources(0, 64 << 20).is_err());
        assert!(check_resources(1, 1 << 20).is_err());
        let e = check_resources(1, u64::MAX).unwrap_err().to_string();
        assert!(e.contains("more than this host has"), "{e}");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(1 << 30), "1G");
        assert_eq!(human(1536 << 20), "1.5G");
        assert_eq!(human(512 << 20), "512M");
        assert_eq!(human(100), "100");
    }

    proptest::proptest! {
        #[test]
        fn port_spec_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<PortForward>();
        }

        #[test]
        fn port_spec_round_trips(h in 1u16.., g in 1u16.., udp: bool) {
            let p = PortForward { host_ip: None, host: h, guest: g,
                protocol: if udp { Protocol::Udp } else { Protocol::Tcp } };
            proptest::prop_assert_eq!(p.to_string().parse::<PortForward>().unwrap(), p);
        }
    }
}
