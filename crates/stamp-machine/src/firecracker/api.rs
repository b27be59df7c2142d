//! Firecracker's API requests: bodies named and shaped after its swagger definition,
//! `src/firecracker/swagger/firecracker.yaml` of firecracker-microvm/firecracker (API version
//! 1.17.0-dev, commit 004d935399ba6062240af269638635d54229f5bf), and the sequence that
//! configures and starts a machine.
//!
//! Firecracker deserializes request bodies with `deny_unknown_fields`, so every field here is
//! spelled as in the definition and optional fields are left out rather than sent as `null`.
//! The unit tests check each request against a copy of those definitions
//! (`swagger-definitions.json`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::spec::{MachineSpec, Source};
use crate::{Error, Result};

/// Most vCPUs a Firecracker machine has (`MachineConfiguration.vcpu_count`: minimum 1,
/// maximum 32).
pub const MAX_VCPUS: u32 = 32;

/// Longest kernel command line Firecracker accepts on x86_64 (the boot protocol's 2048 bytes,
/// including the terminating NUL and the `root=` that Firecracker appends itself).
pub const MAX_BOOT_ARGS: usize = 2048 - 1 - 64;

/// The guest's vsock context id (CIDs 0-2 are reserved: hypervisor, local, host).
pub const GUEST_CID: u32 = 3;

/// The id of the root drive (`PUT /drives/rootfs`).
pub const ROOT_DRIVE_ID: &str = "rootfs";

/// The kernel parameters every Firecracker guest gets: the serial console (Firecracker's stdout,
/// the console log), a reboot through the keyboard controller (Firecracker exits when the guest
/// reboots, which is how `SendCtrlAltDel` stops it) and a reboot one second after a panic.
pub const FIRECRACKER_ARGS: [(&str, &str); 3] =
    [("console", "ttyS0"), ("reboot", "k"), ("panic", "1")];

/// An HTTP method of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// PUT (pre-boot configuration and actions).
    Put,
    /// PATCH (changes to a running machine).
    Patch,
}

impl Method {
    /// The method as HTTP writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

/// One call to Firecracker's API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    /// The method.
    pub method: Method,
    /// The path (`/boot-source`, `/drives/rootfs`).
    pub path: String,
    /// The swagger definition the body follows (`BootSource`, `Drive`).
    pub definition: &'static str,
    /// The JSON body.
    pub body: serde_json::Value,
}

impl ApiRequest {
    fn new(
        method: Method,
        path: impl Into<String>,
        definition: &'static str,
        body: &impl Serialize,
    ) -> ApiRequest {
        ApiRequest {
            method,
            path: path.into(),
            definition,
            // These bodies are plain structs of strings, numbers and booleans: serializing
            // them cannot fail.
            body: serde_json::to_value(body).unwrap_or_default(),
        }
    }

    /// `METHOD /path`, as error messages name the request.
    pub fn describe(&self) -> String {
        format!("{} {}", self.method.as_str(), self.path)
    }
}

/// `MachineConfiguration` (PUT /machine-config): required `vcpu_count` and `mem_size_mib`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfiguration {
    /// Number of vCPUs, 1 to 32.
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
}

/// `BootSource` (PUT /boot-source): required `kernel_image_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Host path of the kernel (an uncompressed ELF vmlinux on x86_64, a PE Image on aarch64).
    pub kernel_image_path: String,
    /// The kernel command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of the initrd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `Drive` (PUT /drives/{drive_id}): required `drive_id` and `is_root_device`; a virtio-block
/// drive also needs `path_on_host` and `is_read_only`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The id, equal to the path's `{drive_id}`.
    pub drive_id: String,
    /// Host path of the raw disk image.
    pub path_on_host: String,
    /// The guest's root (Firecracker appends `root=/dev/vda rw` to the command line).
    pub is_root_device: bool,
    /// Attach read-only.
    pub is_read_only: bool,
}

/// `NetworkInterface` (PUT /network-interfaces/{iface_id}): required `iface_id` and
/// `host_dev_name` (a tap device on the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The id, equal to the path's `{iface_id}`.
    pub iface_id: String,
    /// The host's tap device.
    pub host_dev_name: String,
    /// The guest's MAC address (`aa:bb:cc:dd:ee:ff`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

/// `Vsock` (PUT /vsock): required `guest_cid` (at least 3) and `uds_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest's context id.
    pub guest_cid: u32,
    /// The host's Unix socket that proxies vsock connections.
    pub uds_path: String,
}

/// `InstanceActionInfo.action_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boots the configured machine.
    InstanceStart,
    /// Presses Ctrl-Alt-Del on the guest's keyboard (x86_64).
    SendCtrlAltDel,
    /// Flushes the metrics.
    FlushMetrics,
}

/// `InstanceActionInfo` (PUT /actions): required `action_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// The action.
    pub action_type: ActionType,
}

/// `Vm.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// vCPUs frozen.
    Paused,
    /// vCPUs running again.
    Resumed,
}

/// `Vm` (PATCH /vm): required `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// The state asked for.
    pub state: VmState,
}

/// `Error`: the body of every failed request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Fault {
    /// What went wrong, in Firecracker's words.
    #[serde(default)]
    pub fault_message: String,
}

/// PUT /machine-config.
pub fn machine_config(cpus: u32, memory: u64) -> Result<ApiRequest> {
    if cpus == 0 || cpus > MAX_VCPUS {
        return Err(Error::Invalid(format!(
            "--cpus {cpus} is not valid for Firecracker (use 1 to {MAX_VCPUS})"
        )));
    }
    let mem_size_mib = memory.div_ceil(1 << 20);
    Ok(ApiRequest::new(
        Method::Put,
        "/machine-config",
        "MachineConfiguration",
        &MachineConfiguration {
            vcpu_count: cpus,
            mem_size_mib,
        },
    ))
}

/// PUT /boot-source.
pub fn boot_source(kernel: &Path, initrd: Option<&Path>, boot_args: &str) -> Result<ApiRequest> {
    Ok(ApiRequest::new(
        Method::Put,
        "/boot-source",
        "BootSource",
        &BootSource {
            kernel_image_path: utf8(kernel, "kernel")?,
            boot_args: Some(boot_args.to_string()),
            initrd_path: initrd.map(|p| utf8(p, "initrd")).transpose()?,
        },
    ))
}

/// PUT /drives/{id}.
pub fn drive(id: &str, path: &Path, root: bool, read_only: bool) -> Result<ApiRequest> {
    Ok(ApiRequest::new(
        Method::Put,
        format!("/drives/{id}"),
        "Drive",
        &Drive {
            drive_id: id.to_string(),
            path_on_host: utf8(path, "disk")?,
            is_root_device: root,
            is_read_only: read_only,
        },
    ))
}

/// PUT /network-interfaces/{id}, attached to the host's tap device `tap`.
pub fn network_interface(id: &str, tap: &str, mac: Option<&str>) -> ApiRequest {
    ApiRequest::new(
        Method::Put,
        format!("/network-interfaces/{id}"),
        "NetworkInterface",
        &NetworkInterface {
            iface_id: id.to_string(),
            host_dev_name: tap.to_string(),
            guest_mac: mac.map(str::to_string),
        },
    )
}

/// PUT /vsock.
pub fn vsock(uds_path: &Path) -> Result<ApiRequest> {
    Ok(ApiRequest::new(
        Method::Put,
        "/vsock",
        "Vsock",
        &Vsock {
            guest_cid: GUEST_CID,
            uds_path: utf8(uds_path, "vsock socket")?,
        },
    ))
}

/// PUT /actions.
pub fn action(action_type: ActionType) -> ApiRequest {
    ApiRequest::new(
        Method::Put,
        "/actions",
        "InstanceActionInfo",
        &InstanceActionInfo { action_type },
    )
}

/// PATCH /vm.
pub fn vm_state(state: VmState) -> ApiRequest {
    ApiRequest::new(Method::Patch, "/vm", "Vm", &Vm { state })
}

/// Where the machine's files are, as Firecracker is to see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths<'a> {
    /// The machine's copy of the root disk.
    pub root_disk: &'a Path,
    /// The vsock socket.
    pub vsock: &'a Path,
}

/// The requests that configure a machine and boot it, in order: machine-config, boot-source,
/// the root drive, vsock, InstanceStart. Ports are refused: Firecracker has no user-mode
/// network, only tap devices on the host (see [`ports_unsupported`]).
pub fn start_sequence(spec: &MachineSpec, paths: &Paths<'_>) -> Result<Vec<ApiRequest>> {
    let Source::Kernel {
        kernel,
        initrd,
        root,
        cmdline,
    } = &spec.source
    else {
        return Err(not_a_kernel(spec));
    };
    if !spec.ports.is_empty() {
        return Err(ports_unsupported(spec));
    }
    let args = boot_args(cmdline, &spec.env, &spec.cmd)?;
    let mut seq = vec![
        machine_config(spec.cpus, spec.memory)?,
        boot_source(kernel, initrd.as_deref(), &args)?,
    ];
    if root.is_some() {
        seq.push(drive(ROOT_DRIVE_ID, paths.root_disk, true, false)?);
    }
    seq.push(vsock(paths.vsock)?);
    seq.push(action(ActionType::InstanceStart));
    Ok(seq)
}

/// The error for a machine that is not a kernel boot.
pub fn not_a_kernel(spec: &MachineSpec) -> Error {
    Error::Invalid(format!(
        "{}: Firecracker boots a kernel and a raw root filesystem, not {} (use --platform qemu for disk images, --platform podman for containers)",
        spec.image,
        match &spec.source {
            Source::Disk { format, .. } => format!("a {format} disk image"),
            Source::Container { .. } => "a container image".to_string(),
            Source::Kernel { .. } => "this".to_string(),
        }
    ))
}

/// The error for `-p` on Firecracker.
pub fn ports_unsupported(spec: &MachineSpec) -> Error {
    let ports: Vec<String> = spec.ports.iter().map(|p| p.to_string()).collect();
    Error::Invalid(format!(
        "-p {}: Firecracker cannot forward ports: it has no user-mode network, only tap devices on the host (which need root, an address in the guest and NAT rules to reach); use --platform qemu for port forwards",
        ports.join(" -p ")
    ))
}

/// The kernel command line: the image's, then Firecracker's parameters ([`FIRECRACKER_ARGS`])
/// where the image does not set them, then `-e K=V` (the kernel hands parameters it does not
/// know to init as its environment), then the command. All before a `--` in the image's line
/// (what follows it is init's arguments).
pub fn boot_args(cmdline: &str, env: &[(String, String)], cmd: &[String]) -> Result<String> {
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    let split = words.iter().position(|w| *w == "--").unwrap_or(words.len());
    let (kernel, init) = words.split_at(split);
    let mut out: Vec<String> = kernel.iter().map(|w| w.to_string()).collect();
    for (key, value) in FIRECRACKER_ARGS {
        let set = if key == "console" {
            // Other consoles may stay; the serial one must be there.
            kernel.iter().any(|w| *w == format!("{key}={value}"))
        } else {
            kernel.iter().any(|w| w.starts_with(&format!("{key}=")))
        };
        if !set {
            out.push(format!("{key}={value}"));
        }
    }
    for (k, v) in env {
        let name_ok = !k.is_empty()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !k.as_bytes()[0].is_ascii_digit();
        let value_ok = !v.is_empty() && !v.bytes().any(|b| b.is_ascii_whitespace() || b == b'"');
        if !name_ok || !value_ok {
            return Err(Error::Invalid(format!(
                "-e {k}={v}: Firecracker passes the environment on the kernel command line, which takes NAME=VALUE with a name of letters, digits and '_' and a non-empty value without spaces or quotes"
            )));
        }
        out.push(format!("{k}={v}"));
    }
    out.extend(init.iter().map(|w| w.to_string()));
    out.extend(cmd.iter().cloned());
    let line = out.join(" ");
    if line.len() > MAX_BOOT_ARGS {
        return Err(Error::Invalid(format!(
            "the kernel command line is {} bytes, more than the {MAX_BOOT_ARGS} Firecracker can pass on x86_64",
            line.len()
        )));
    }
    Ok(line)
}

/// `path` as the JSON string Firecracker takes.
fn utf8(path: &Path, what: &str) -> Result<String> {
    path.to_str().map(str::to_string).ok_or_else(|| {
        Error::Invalid(format!(
            "the {what} path {} is not UTF-8, which Firecracker's JSON API cannot carry",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Platform, PortForward};
    use serde_json::{Map, Value};

    /// Firecracker's swagger definitions and the paths stamp calls, copied from
    /// firecracker.yaml (see the module documentation) as JSON.
    const SWAGGER: &str = include_str!("swagger-definitions.json");

    fn swagger() -> Value {
        serde_json::from_str(SWAGGER).unwrap()
    }

    /// Checks `value` against the swagger schema `schema`; returns every violation.
    fn check(defs: &Map<String, Value>, schema: &Value, value: &Value, at: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/definitions/");
            let Some(def) = defs.get(name) else {
                return vec![format!("{at}: unknown definition {name}")];
            };
            return check(defs, def, value, at);
        }
        let ty = schema
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("object");
        match ty {
            "object" => {
                let Some(obj) = value.as_object() else {
                    return vec![format!("{at}: not an object: {value}")];
                };
                let props = schema.get("properties").and_then(Value::as_object);
                let free = schema.get("additionalProperties") == Some(&Value::Bool(true));
                for req in schema
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let req = req.as_str().unwrap();
                    if !obj.contains_key(req) {
                        errors.push(format!("{at}: required field {req} is missing"));
                    }
                }
                for (k, v) in obj {
                    match props.and_then(|p| p.get(k)) {
                        Some(s) => errors.extend(check(defs, s, v, &format!("{at}.{k}"))),
                        None if free => {}
                        // Firecracker rejects unknown fields (serde's deny_unknown_fields).
                        None => errors.push(format!("{at}: unknown field {k}")),
                    }
                }
            }
            "string" => match value.as_str() {
                None => errors.push(format!("{at}: not a string: {value}")),
                Some(s) => {
                    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
                        if !allowed.iter().any(|a| a.as_str() == Some(s)) {
                            errors.push(format!("{at}: '{s}' is not one of {allowed:?}"));
                        }
                    }
                }
            },
            "integer" => match value.as_i64().or(value.as_u64().map(|_| i64::MAX)) {
                None => errors.push(format!("{at}: not an integer: {value}")),
                Some(n) => {
                    if let Some(min) = schema.get("minimum").and_then(Value::as_i64) {
                        if n < min {
                            errors.push(format!("{at}: {n} is below the minimum {min}"));
                        }
                    }
                    if let Some(max) = schema.get("maximum").and_then(Value::as_i64) {
                        if n > max {
                            errors.push(format!("{at}: {n} is above the maximum {max}"));
                        }
                    }
                }
            },
            "boolean" => {
                if !value.is_boolean() {
                    errors.push(format!("{at}: not a boolean: {value}"));
                }
            }
            other => errors.push(format!("{at}: the checker does not know type {other}")),
        }
        errors
    }

    /// Checks a request: its method and path are in the API, with a body of the definition
    /// the API names for them, and the body follows that definition.
    fn check_request(req: &ApiRequest) -> Vec<String> {
        let sw = swagger();
        let defs = sw["definitions"].as_object().unwrap();
        let paths = sw["paths"].as_object().unwrap();
        let method = req.method.as_str().to_ascii_lowercase();
        let found = paths.iter().find(|(template, _)| {
            let t: Vec<&str> = template.split('/').collect();
            let p: Vec<&str> = req.path.split('/').collect();
            t.len() == p.len()
                && t.iter().zip(&p).all(|(t, p)| {
                    *t == *p || (t.starts_with('{') && t.ends_with('}') && !p.is_empty())
                })
        });
        let Some((template, ops)) = found else {
            return vec![format!("{}: no such path in the API", req.describe())];
        };
        let Some(def) = ops.get(&method).and_then(Value::as_str) else {
            return vec![format!(
                "{}: the API has no {method} on {template}",
                req.describe()
            )];
        };
        if def != req.definition {
            return vec![format!(
                "{}: the API takes a {def}, the request says {}",
                req.describe(),
                req.definition
            )];
        }
        let mut errors = check(defs, &defs[def], &req.body, def);
        // The id in the path and in the body must agree (Firecracker checks).
        if let Some(param) = template
            .split('/')
            .find(|s| s.starts_with('{'))
            .map(|s| &s[1..s.len() - 1])
        {
            let id = req.path.rsplit('/').next().unwrap();
            if req.body.get(param).and_then(Value::as_str) != Some(id) {
                errors.push(format!(
                    "{}: body {param} differs from the path",
                    req.describe()
                ));
            }
        }
        errors
    }

    fn spec(source: Source) -> MachineSpec {
        MachineSpec {
            cpus: 2,
            memory: 512 << 20,
            ..MachineSpec::new("fc", "vmlinux", Platform::Firecracker, source)
        }
    }

    fn kernel_source() -> Source {
        Source::Kernel {
            kernel: "/images/vmlinux".into(),
            initrd: Some("/images/initrd.img".into()),
            root: Some("/images/rootfs.ext4".into()),
            cmdline: "quiet".into(),
        }
    }

    fn paths() -> Paths<'static> {
        Paths {
            root_disk: Path::new("/m/fc/rootfs.ext4"),
            vsock: Path::new("/m/fc/vsock.sock"),
        }
    }

    #[test]
    fn every_request_follows_the_schema() {
        let mut all = start_sequence(&spec(kernel_source()), &paths()).unwrap();
        all.extend([
            action(ActionType::SendCtrlAltDel),
            vm_state(VmState::Paused),
            vm_state(VmState::Resumed),
            network_interface("eth0", "tap0", Some("06:00:ac:10:00:02")),
            network_interface("eth0", "tap0", None),
            drive("data", Path::new("/d.img"), false, true).unwrap(),
            machine_config(MAX_VCPUS, 128 << 20).unwrap(),
            boot_source(Path::new("/k"), None, "").unwrap(),
        ]);
        for req in &all {
            let errors = check_request(req);
            assert!(errors.is_empty(), "{}: {errors:#?}", req.body);
        }
    }

    #[test]
    fn the_checker_catches_what_firecracker_rejects() {
        let bad = |path: &str, method: Method, def: &'static str, body: Value| ApiRequest {
            method,
            path: path.into(),
            definition: def,
            body,
        };
        let cases = [
            // A required field missing.
            bad(
                "/machine-config",
                Method::Put,
                "MachineConfiguration",
                serde_json::json!({"vcpu_count": 1}),
            ),
            // A misspelt field.
            bad(
                "/boot-source",
                Method::Put,
                "BootSource",
                serde_json::json!({"kernel_image_path": "/k", "boot_arg": "x"}),
            ),
            // A wrong type and an out-of-range number.
            bad(
                "/machine-config",
                Method::Put,
                "MachineConfiguration",
                serde_json::json!({"vcpu_count": 33, "mem_size_mib": "128"}),
            ),
            // A value outside the enum.
            bad(
                "/actions",
                Method::Put,
                "InstanceActionInfo",
                serde_json::json!({"action_type": "Reboot"}),
            ),
            // The path's id differs from the body's.
            bad(
                "/drives/rootfs",
                Method::Put,
                "Drive",
                serde_json::json!({"drive_id": "root", "is_root_device": true}),
            ),
            // A path or method the API does not have.
            bad(
                "/vm",
                Method::Put,
                "Vm",
                serde_json::json!({"state": "Paused"}),
            ),
            bad("/reboot", Method::Put, "Vm", serde_json::json!({})),
            // A guest CID below 3.
            bad(
                "/vsock",
                Method::Put,
                "Vsock",
                serde_json::json!({"guest_cid": 2, "uds_path": "/v"}),
            ),
        ];
        for req in &cases {
            assert!(!check_request(req).is_empty(), "accepted {req:?}");
        }
    }

    #[test]
    fn the_start_sequence_is_ordered_and_complete() {
        let seq = start_sequence(&spec(kernel_source()), &paths()).unwrap();
        let names: Vec<String> = seq.iter().map(ApiRequest::describe).collect();
        assert_eq!(
            names,
            [
                "PUT /machine-config",
                "PUT /boot-source",
                "PUT /drives/rootfs",
                "PUT /vsock",
                "PUT /actions"
            ]
        );
        assert_eq!(
            seq[0].body,
            serde_json::json!({"vcpu_count": 2, "mem_size_mib": 512})
        );
        assert_eq!(
            seq[1].body,
            serde_json::json!({
                "kernel_image_path": "/images/vmlinux",
                "initrd_path": "/images/initrd.img",
                "boot_args": "quiet console=ttyS0 reboot=k panic=1",
            })
        );
        assert_eq!(
            seq[2].body,
            serde_json::json!({
                "drive_id": "rootfs",
                "path_on_host": "/m/fc/rootfs.ext4",
                "is_root_device": true,
                "is_read_only": false,
            })
        );
        assert_eq!(
            seq[3].body,
            serde_json::json!({"guest_cid": 3, "uds_path": "/m/fc/vsock.sock"})
        );
        assert_eq!(
            seq[4].body,
            serde_json::json!({"action_type": "InstanceStart"})
        );

        // No root disk, no initrd: no drive and no initrd_path.
        let s = spec(Source::Kernel {
            kernel: "/k".into(),
            initrd: None,
            root: None,
            cmdline: String::new(),
        });
        let seq = start_sequence(&s, &paths()).unwrap();
        assert!(seq.iter().all(|r| r.definition != "Drive"));
        assert!(seq[1].body.get("initrd_path").is_none());
    }

    #[test]
    fn memory_is_rounded_up_to_mib_and_cpus_are_bounded() {
        assert_eq!(
            machine_config(1, (64 << 20) + 1).unwrap().body["mem_size_mib"],
            65
        );
        for bad in [0, 33] {
            let e = machine_config(bad, 1 << 30).unwrap_err().to_string();
            assert!(e.contains("1 to 32"), "{e}");
        }
    }

    #[test]
    fn ports_and_other_sources_are_refused_clearly() {
        let mut s = spec(kernel_source());
        s.ports = vec!["8080:80".parse::<PortForward>().unwrap()];
        let e = start_sequence(&s, &paths()).unwrap_err().to_string();
        assert!(e.contains("-p 8080:80/tcp"), "{e}");
        assert!(e.contains("tap"), "{e}");
        assert!(e.contains("--platform qemu"), "{e}");
        let s = spec(Source::Disk {
            path: "/d.qcow2".into(),
            format: "qcow2".into(),
        });
        let e = start_sequence(&s, &paths()).unwrap_err().to_string();
        assert!(e.contains("a qcow2 disk image"), "{e}");
    }

    #[test]
    fn boot_args_keep_the_image_line_and_add_what_firecracker_needs() {
        assert_eq!(
            boot_args("", &[], &[]).unwrap(),
            "console=ttyS0 reboot=k panic=1"
        );
        // The image's own reboot/panic settings stay; a second console is added.
        assert_eq!(
            boot_args("console=tty0 panic=10 reboot=t ro", &[], &[]).unwrap(),
            "console=tty0 panic=10 reboot=t ro console=ttyS0"
        );
        // Parameters go before `--`, the environment too; the command at the end.
        let env = vec![("GREETING".to_string(), "hello".to_string())];
        assert_eq!(
            boot_args("ro -- single", &env, &["extra".into()]).unwrap(),
            "ro console=ttyS0 reboot=k panic=1 GREETING=hello -- single extra"
        );
        for (k, v) in [
            ("A B", "1"),
            ("X", "two words"),
            ("", "v"),
            ("1X", "v"),
            ("Q", "\""),
        ] {
            let env = vec![(k.to_string(), v.to_string())];
            assert!(boot_args("", &env, &[]).is_err(), "{k}={v}");
        }
        let long = "x".repeat(MAX_BOOT_ARGS);
        let e = boot_args(&long, &[], &[]).unwrap_err().to_string();
        assert!(e.contains("kernel command line"), "{e}");
    }

    #[test]
    fn non_utf8_paths_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/k\xff"));
        let e = boot_source(p, None, "").unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn faults_parse() {
        let f: Fault = serde_json::from_str(r#"{"fault_message":"Invalid kernel path"}"#).unwrap();
        assert_eq!(f.fault_message, "Invalid kernel path");
    }
}
