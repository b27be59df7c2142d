//! Application images (no init system): a kernel, initrd and modules from a separate image, and
//! stamp's own init, which mounts the essentials, configures the network by DHCP, runs the
//! image's entrypoint and powers off with its exit status.

use stamp_fs::Tree;

use crate::Result;

/// What the container image's config says to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppConfig {
    /// ENTRYPOINT followed by CMD.
    pub argv: Vec<String>,
    /// ENV as `KEY=VALUE`.
    pub env: Vec<String>,
    /// WorkingDir (`/` when empty).
    pub workdir: String,
    /// User (`name`, `uid`, `uid:gid` or `name:group`); root when empty.
    pub user: String,
}

/// Returns true if `tree` has an init system (`/sbin/init`, `/usr/sbin/init`,
/// `/lib/systemd/systemd`, `/usr/lib/systemd/systemd`), i.e. boots as a whole system.
pub fn has_init(tree: &Tree) -> bool {
    [
        "/sbin/init",
        "/usr/sbin/init",
        "/lib/systemd/systemd",
        "/usr/lib/systemd/systemd",
    ]
    .iter()
    .any(|p| tree.get(p.as_bytes()).is_some())
}

/// Makes `app` bootable: copies the kernel, initrd, modules and boot loader files (systemd-stub,
/// systemd-boot) from `kernel_tree`, and installs stamp's init and the app's config. Returns the
/// kernel command-line arguments the init needs (`init=/.stamp/init`, …).
pub fn install(app: &mut Tree, kernel_tree: &Tree, config: &AppConfig) -> Result<Vec<String>> {
    let _ = (app, kernel_tree, config);
    Err(crate::Error::Boot(
        "application images are not written yet".into(),
    ))
}
