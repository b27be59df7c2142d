//! stamp's machine runtime: run images as machines (QEMU, Firecracker) or containers
//! (podman), behind one [`MachineService`] interface, and as systemd services.
//!
//! - [`spec`]: what a machine is asked to be ([`MachineSpec`]); [`status`]: what it is
//!   doing ([`State`], [`Status`], [`Machine`]).
//! - [`store`]: machines on disk under `$XDG_STATE_HOME/stamp/machines/NAME/`.
//! - [`runtime::Local`]: runs machines itself, a monitor process per machine;
//!   [`driver::Driver`]: what each platform does ([`qemu`], [`firecracker`], [`podman`]).
//! - [`systemd::Systemd`]: the same interface with systemd owning each machine's monitor.

pub mod accel;
pub mod driver;
mod error;
pub mod firecracker;
pub mod podman;
pub mod qemu;
pub mod qmp;
pub mod runtime;
pub mod service;
pub mod spec;
pub mod status;
pub mod store;
pub mod systemd;

pub use error::{Error, Result};
pub use service::MachineService;
pub use spec::{MachineSpec, Platform, PortForward, Source};
pub use status::{Machine, State, Status};

/// Now, as RFC 3339 UTC with whole seconds.
pub fn now_rfc3339() -> String {
    let sec = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    stamp_fs::Timestamp::from_secs(sec).to_rfc3339()
}
