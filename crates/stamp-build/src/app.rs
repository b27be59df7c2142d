//! Application images (no init system): a kernel, initrd and modules from a separate image, and
//! stamp's own init, which mounts the essentials, configures the network by DHCP, runs the
//! image's entrypoint and powers off with its exit status.
//!
//! The init is the `stamp-init` crate, built static by `build.rs` and embedded here
//! ([`INIT`]). In the guest it reads `/.stamp/app.json` ([`AppConfig`] as JSON) and prints
//! `stamp-init: <argv0> exited with status N` on the console before powering off.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use stamp_fs::{Content, Entry, Kind, Timestamp, Tree};

use crate::{Error, Result};

/// The static `stamp-init` executable built with this crate (empty when the build could not
/// make it: then [`init_binary`] looks for it at run time).
pub static INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stamp-init"));

/// Where the init goes in the app's root filesystem.
pub const INIT_PATH: &str = "/.stamp/init";
/// Where the app's config goes.
pub const CONFIG_PATH: &str = "/.stamp/app.json";

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

impl AppConfig {
    /// The app config of an OCI image configuration: ENTRYPOINT + CMD, Env, WorkingDir, User.
    pub fn from_image_config(config: &oci_spec::image::ImageConfiguration) -> Self {
        let Some(c) = config.config() else {
            return AppConfig::default();
        };
        let mut argv = c.entrypoint().clone().unwrap_or_default();
        argv.extend(c.cmd().clone().unwrap_or_default());
        AppConfig {
            argv,
            env: c.env().clone().unwrap_or_default(),
            workdir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
        }
    }

    /// The app config of an OCI image configuration's JSON.
    pub fn from_image_config_json(json: &[u8]) -> Result<Self> {
        let c: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(json).map_err(|e| Error::BadFile {
                path: "image configuration".into(),
                detail: format!("line {} column {}: {e}", e.line(), e.column()),
            })?;
        Ok(Self::from_image_config(&c))
    }
}

/// Returns true if `tree` has an init system, i.e. boots as a whole system: systemd
/// (`/usr/lib/systemd/systemd`, `/lib/systemd/systemd`), or an `/sbin/init` or `/usr/sbin/init`
/// that resolves to a file, except busybox's own init without OpenRC (`/sbin/openrc`), which
/// base images such as Alpine carry but do not boot with: those are application images.
pub fn has_init(tree: &Tree) -> bool {
    let exists = |p: &str| {
        tree.resolve(p.as_bytes(), true)
            .is_some_and(|(_, id)| matches!(tree.entry(id).kind, Kind::File(_)))
    };
    if exists("/usr/lib/systemd/systemd") || exists("/lib/systemd/systemd") {
        return true;
    }
    ["/sbin/init", "/usr/sbin/init"].iter().any(|p| {
        tree.resolve(p.as_bytes(), true).is_some_and(|(canon, id)| {
            matches!(tree.entry(id).kind, Kind::File(_))
                && (!canon.ends_with(b"/busybox") || exists("/sbin/openrc"))
        })
    })
}

/// The init executable to install: `$STAMP_INIT` if set, else the embedded [`INIT`], else
/// `stamp-init` beside the running executable.
pub fn init_binary() -> Result<Content> {
    if let Some(p) = std::env::var_os("STAMP_INIT") {
        return host_file(PathBuf::from(p));
    }
    if !INIT.is_empty() {
        return Ok(Content::Bytes(Bytes::from_static(INIT)));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("stamp-init")));
    match beside {
        Some(p) if p.is_file() => host_file(p),
        _ => Err(Error::Boot(
            "this stamp was built without its init for application images (no static libc \
             when it was built); set STAMP_INIT to a static stamp-init executable"
                .into(),
        )),
    }
}

fn host_file(path: PathBuf) -> Result<Content> {
    let len = std::fs::metadata(&path)
        .map_err(|e| Error::io("stat", &path, e))?
        .len();
    Ok(Content::File {
        path: Arc::new(path),
        offset: 0,
        len,
    })
}

/// Copies the kernel, initrd, modules and boot loader files (systemd-stub, systemd-boot) of
/// `kernel_tree` into `tree`, and its os-release if `tree` has none (the UKI needs one): what
/// `--kernel` gives an image that has an init system but no kernel. Copies keep their metadata
/// and share their contents with `kernel_tree`.
pub fn install_kernel(tree: &mut Tree, kernel_tree: &Tree) -> Result<()> {
    let app = tree;
    let kernel = crate::boot::find_kernel(kernel_tree)?.ok_or_else(|| Error::NoKernel {
        detail: "the kernel image has no /boot/vmlinuz-* nor /usr/lib/modules/*/vmlinuz; \
                 use an image with a kernel package (linux-image-cloud-amd64) as --kernel"
            .into(),
    })?;
    let mtime = app.entry(app.root()).mtime;
    copy_path(kernel_tree, kernel.vmlinuz.as_bytes(), app)?;
    if let Some(initrd) = &kernel.initrd {
        copy_path(kernel_tree, initrd.as_bytes(), app)?;
    }
    let mut have_modules = false;
    for dir in ["/usr/lib/modules/", "/lib/modules/"] {
        let p = format!("{dir}{}", kernel.version);
        if kernel_tree.resolve(p.as_bytes(), true).is_some() {
            copy_path(kernel_tree, p.as_bytes(), app)?;
            have_modules = true;
            break;
        }
    }
    if !have_modules {
        tracing::warn!(version = %kernel.version, "the kernel image has no module directory");
    }
    if kernel_tree
        .resolve(b"/usr/lib/systemd/boot/efi", true)
        .is_some()
    {
        copy_path(kernel_tree, b"/usr/lib/systemd/boot/efi", app)?;
    }
    let has_os_release = |t: &Tree| {
        ["/etc/os-release", "/usr/lib/os-release"]
            .iter()
            .any(|p| t.resolve(p.as_bytes(), true).is_some())
    };
    if !has_os_release(app) {
        for p in ["/usr/lib/os-release", "/etc/os-release"] {
            if let Some((_, id)) = kernel_tree.resolve(p.as_bytes(), true) {
                if matches!(kernel_tree.entry(id).kind, Kind::File(_)) {
                    let dest = place(app, b"/usr/lib/os-release", mtime)?;
                    app.insert(&dest, kernel_tree.entry(id).clone())?;
                    break;
                }
            }
        }
    }

    Ok(())
}

/// Makes `app` bootable: copies the kernel, initrd, modules and boot loader files (systemd-stub,
/// systemd-boot) from `kernel_tree`, and installs stamp's init and the app's config. Returns the
/// kernel command-line arguments the init needs (`init=/.stamp/init`, …).
///
/// Copies keep their metadata and share their contents with `kernel_tree`. The kernel is
/// `/boot/vmlinuz-*` (with `/boot/initrd.img-*`) or `/usr/lib/modules/*/vmlinuz`; its module
/// directory is copied whole; `/usr/lib/systemd/boot/efi` (the stub) too; `os-release` only
/// if the app has none (the UKI needs it); `/etc/hosts` with `localhost` if the app has none.
/// Mount points (`/proc`, `/sys`, `/dev`, `/run`, `/tmp`) and `/dev/console` are created when
/// missing.
pub fn install(app: &mut Tree, kernel_tree: &Tree, config: &AppConfig) -> Result<Vec<String>> {
    install_with(app, kernel_tree, config, init_binary()?)
}

/// [`install`] with the init executable given.
pub fn install_with(
    app: &mut Tree,
    kernel_tree: &Tree,
    config: &AppConfig,
    init: Content,
) -> Result<Vec<String>> {
    install_kernel(app, kernel_tree)?;
    let mtime = app.entry(app.root()).mtime;

    for (dir, mode) in [
        ("/proc", 0o555),
        ("/sys", 0o555),
        ("/dev", 0o755),
        ("/run", 0o755),
        ("/tmp", 0o1777),
    ] {
        if app.resolve(dir.as_bytes(), true).is_none() {
            let dest = place(app, dir.as_bytes(), mtime)?;
            app.insert(&dest, Entry::new(Kind::Dir, mode, mtime))?;
        }
    }
    if app.resolve(b"/dev/console", true).is_none() {
        if let Some((dev, id)) = app.resolve(b"/dev", true) {
            if app.entry(id).is_dir() {
                let mut p = dev;
                p.extend_from_slice(b"/console");
                app.insert(
                    &p,
                    Entry::new(Kind::CharDevice { major: 5, minor: 1 }, 0o600, mtime),
                )?;
            }
        }
    }

    // Container runtimes provide /etc/hosts; many programs expect localhost to resolve.
    if app.resolve(b"/etc/hosts", true).is_none() {
        let dest = place(app, b"/etc/hosts", mtime)?;
        let hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
        app.insert(
            &dest,
            Entry::new(
                Kind::File(Content::Bytes(Bytes::from_static(hosts.as_bytes()))),
                0o644,
                mtime,
            ),
        )?;
    }

    // /.stamp is ours: whatever the image had there is replaced.
    app.remove(b"/.stamp")?;
    app.insert(b"/.stamp", Entry::new(Kind::Dir, 0o755, mtime))?;
    app.insert(
        INIT_PATH.as_bytes(),
        Entry::new(Kind::File(init), 0o755, mtime),
    )?;
    let json = serde_json::to_vec_pretty(config)
        .map_err(|e| Error::InvalidOption(format!("app config: {e}")))?;
    app.insert(
        CONFIG_PATH.as_bytes(),
        Entry::new(Kind::File(Content::Bytes(Bytes::from(json))), 0o644, mtime),
    )?;
    Ok(vec![format!("init={INIT_PATH}"), "panic=-1".into()])
}

/// Where `path` goes in `tree`: its parent resolved through the tree's symbolic links (made as
/// directories where missing), then its last name.
fn place(tree: &mut Tree, path: &[u8], mtime: Timestamp) -> Result<Vec<u8>> {
    let comps = stamp_fs::tree::normalize(path)?;
    let Some((last, dirs)) = comps.split_last() else {
        return Ok(b"/".to_vec());
    };
    let mut parent: Vec<u8> = Vec::new();
    for d in dirs {
        let mut p = parent.clone();
        p.push(b'/');
        p.extend_from_slice(d);
        parent = match tree.resolve(&p, true) {
            Some((canon, id)) if tree.entry(id).is_dir() => canon,
            Some(_) => {
                return Err(Error::BadFile {
                    path: String::from_utf8_lossy(path).into_owned(),
                    detail: format!(
                        "'{}' in the application image is not a directory",
                        String::from_utf8_lossy(&p)
                    ),
                });
            }
            None => {
                // Missing, or a dangling link: make the directory where the link points.
                let at = tree.resolve(&p, false).map_or(p.clone(), |(c, _)| c);
                if let Some((_, id)) = tree.resolve(&at, false) {
                    if let Kind::Symlink(_) = tree.entry(id).kind {
                        return Err(Error::BadFile {
                            path: String::from_utf8_lossy(path).into_owned(),
                            detail: format!(
                                "'{}' in the application image is a dangling link",
                                String::from_utf8_lossy(&p)
                            ),
                        });
                    }
                }
                tree.make_dirs(&at, mtime)?;
                at
            }
        };
        if parent == b"/" {
            parent.clear();
        }
    }
    parent.push(b'/');
    parent.extend_from_slice(last);
    Ok(parent)
}

/// Copies `path` of `from` (resolved through its links), and everything below it if it is a
/// directory, to the same canonical path in `to`. Entries keep their metadata and contents.
fn copy_path(from: &Tree, path: &[u8], to: &mut Tree) -> Result<()> {
    let Some((canon, id)) = from.resolve(path, true) else {
        return Err(Error::BadFile {
            path: String::from_utf8_lossy(path).into_owned(),
            detail: "not found in the kernel image".into(),
        });
    };
    let mtime = from.entry(id).mtime;
    let dest = place(to, &canon, mtime)?;
    // Depth-first with an explicit stack: (source node, destination path).
    let mut stack = vec![(id, dest)];
    while let Some((id, dest)) = stack.pop() {
        to.insert(&dest, from.entry(id).clone())?;
        for (name, kid) in from.children(id) {
            let mut p = dest.clone();
            p.push(b'/');
            p.extend_from_slice(name);
            stack.push((kid, p));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timestamp {
        Timestamp::from_secs(1_700_000_000)
    }

    fn file(data: &'static [u8]) -> Entry {
        Entry::new(
            Kind::File(Content::Bytes(Bytes::from_static(data))),
            0o644,
            t(),
        )
    }

    fn link(target: &str) -> Entry {
        Entry::new(Kind::Symlink(target.as_bytes().to_vec()), 0o777, t())
    }

    fn read(tree: &Tree, path: &str) -> Vec<u8> {
        crate::boot::files::read(tree, path, 1 << 20)
            .unwrap()
            .unwrap_or_else(|| panic!("{path} is not a file"))
    }

    /// A merged-/usr Debian-like kernel image.
    fn kernel_tree() -> Tree {
        let mut k = Tree::default();
        k.insert(b"/lib", link("usr/lib")).unwrap();
        k.insert(b"/bin", link("usr/bin")).unwrap();
        for v in ["6.1.0-9-cloud-amd64", "6.1.0-28-cloud-amd64"] {
            k.insert(format!("/boot/vmlinuz-{v}").as_bytes(), file(b"kernel"))
                .unwrap();
            k.insert(format!("/boot/initrd.img-{v}").as_bytes(), file(b"initrd"))
                .unwrap();
            let m = format!("/usr/lib/modules/{v}");
            k.insert(format!("{m}/modules.dep").as_bytes(), file(b"dep"))
                .unwrap();
            k.insert(
                format!("{m}/kernel/drivers/net/virtio_net.ko").as_bytes(),
                file(b"ko"),
            )
            .unwrap();
            k.insert(
                format!("{m}/build").as_bytes(),
                link("/usr/src/linux-headers"),
            )
            .unwrap();
        }
        k.insert(
            b"/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
            file(b"MZstub"),
        )
        .unwrap();
        k.insert(b"/usr/lib/os-release", file(b"ID=debian\n"))
            .unwrap();
        k.insert(b"/etc/os-release", link("../usr/lib/os-release"))
            .unwrap();
        k.insert(b"/usr/bin/bash", file(b"bash")).unwrap();
        k
    }

    fn config() -> AppConfig {
        AppConfig {
            argv: vec!["/app/run".into(), "--flag".into()],
            env: vec!["A=1".into()],
            workdir: "/app".into(),
            user: "1000".into(),
        }
    }

    #[test]
    fn install_copies_the_newest_kernel_modules_stub_and_adds_init() {
        let mut app = Tree::default();
        app.insert(b"/app/run", file(b"#!/bin/sh\n")).unwrap();
        let init = Content::Bytes(Bytes::from_static(b"\x7fELFinit"));
        let args = install_with(&mut app, &kernel_tree(), &config(), init).unwrap();
        assert_eq!(args, vec!["init=/.stamp/init", "panic=-1"]);

        assert_eq!(read(&app, "/boot/vmlinuz-6.1.0-28-cloud-amd64"), b"kernel");
        assert_eq!(
            read(&app, "/boot/initrd.img-6.1.0-28-cloud-amd64"),
            b"initrd"
        );
        assert!(app.get(b"/boot/vmlinuz-6.1.0-9-cloud-amd64").is_none());
        assert_eq!(
            read(
                &app,
                "/usr/lib/modules/6.1.0-28-cloud-amd64/kernel/drivers/net/virtio_net.ko"
            ),
            b"ko"
        );
        let (_, b) = app
            .resolve(b"/usr/lib/modules/6.1.0-28-cloud-amd64/build", false)
            .unwrap();
        assert!(matches!(&app.entry(b).kind, Kind::Symlink(t) if t == b"/usr/src/linux-headers"));
        assert!(app.get(b"/usr/lib/modules/6.1.0-9-cloud-amd64").is_none());
        assert_eq!(
            read(&app, "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"),
            b"MZstub"
        );
        assert_eq!(read(&app, "/usr/lib/os-release"), b"ID=debian\n");
        assert!(
            app.get(b"/usr/bin/bash").is_none(),
            "only boot files are copied"
        );

        let init = app.get(b"/.stamp/init").unwrap();
        assert_eq!(app.entry(init).mode, 0o755);
        assert_eq!((app.entry(init).uid, app.entry(init).gid), (0, 0));
        assert_eq!(read(&app, "/.stamp/init"), b"\x7fELFinit");
        let back: AppConfig = serde_json::from_slice(&read(&app, "/.stamp/app.json")).unwrap();
        assert_eq!(back, config());
        for d in ["/proc", "/sys", "/dev", "/run", "/tmp"] {
            let id = app.get(d.as_bytes()).unwrap_or_else(|| panic!("{d}"));
            assert!(app.entry(id).is_dir(), "{d}");
        }
        assert_eq!(app.entry(app.get(b"/tmp").unwrap()).mode, 0o1777);
        assert!(
            String::from_utf8(read(&app, "/etc/hosts"))
                .unwrap()
                .starts_with("127.0.0.1\tlocalhost\n")
        );
        let console = app.get(b"/dev/console").unwrap();
        assert!(matches!(
            app.entry(console).kind,
            Kind::CharDevice { major: 5, minor: 1 }
        ));
    }

    #[test]
    fn modules_follow_the_apps_own_lib_link_and_its_os_release_is_kept() {
        let mut app = Tree::default();
        app.insert(b"/lib", link("usr/lib")).unwrap();
        app.insert(b"/usr/lib/.keep", file(b"")).unwrap();
        app.insert(b"/etc/os-release", link("../usr/lib/os-release"))
            .unwrap();
        app.insert(b"/usr/lib/os-release", file(b"ID=alpine\n"))
            .unwrap();
        app.insert(b"/run", link("/var/run")).unwrap();
        app.insert(b"/var/run/.keep", file(b"")).unwrap();
        let mut k = Tree::default();
        // A non-merged kernel image: modules under a real /lib.
        k.insert(b"/boot/vmlinuz-6.6.1", file(b"kernel")).unwrap();
        k.insert(b"/lib/modules/6.6.1/modules.dep", file(b"dep"))
            .unwrap();
        k.insert(b"/usr/lib/os-release", file(b"ID=debian\n"))
            .unwrap();
        install_with(
            &mut app,
            &k,
            &AppConfig::default(),
            Content::Bytes(Bytes::new()),
        )
        .unwrap();
        assert_eq!(read(&app, "/usr/lib/modules/6.6.1/modules.dep"), b"dep");
        assert_eq!(read(&app, "/lib/modules/6.6.1/modules.dep"), b"dep");
        assert_eq!(read(&app, "/etc/os-release"), b"ID=alpine\n");
        // The image's /run link is left alone.
        assert!(matches!(
            app.entry(app.get(b"/run").unwrap()).kind,
            Kind::Symlink(_)
        ));
    }

    #[test]
    fn a_kernel_image_without_a_kernel_is_a_clear_error() {
        let mut app = Tree::default();
        let e = install_with(
            &mut app,
            &Tree::default(),
            &config(),
            Content::Bytes(Bytes::new()),
        )
        .unwrap_err();
        assert!(matches!(e, Error::NoKernel { .. }), "{e}");
        assert!(e.to_string().contains("linux-image"), "{e}");
    }

    #[test]
    fn usr_lib_modules_vmlinuz_layout_is_found() {
        let mut k = Tree::default();
        k.insert(b"/usr/lib/modules/6.8.0/vmlinuz", file(b"k"))
            .unwrap();
        k.insert(b"/usr/lib/modules/6.8.0/initramfs.img", file(b"i"))
            .unwrap();
        let kern = crate::boot::find_kernel(&k).unwrap().unwrap();
        assert_eq!(kern.vmlinuz, "/usr/lib/modules/6.8.0/vmlinuz");
        assert_eq!(
            kern.initrd.as_deref(),
            Some("/usr/lib/modules/6.8.0/initramfs.img")
        );
        assert_eq!(kern.version, "6.8.0");
    }

    /// The embedded init is an x86-64 ELF executable without a program interpreter
    /// (`PT_INTERP`), i.e. static: it must run in images without (or with another) libc.
    #[test]
    fn embedded_init_is_a_static_executable() {
        if INIT.is_empty() {
            panic!("stamp-build was built without its init (see the build script's warning)");
        }
        let u16_at = |o: usize| u16::from_le_bytes([INIT[o], INIT[o + 1]]) as usize;
        let u64_at = |o: usize| u64::from_le_bytes(INIT[o..o + 8].try_into().unwrap()) as usize;
        assert_eq!(&INIT[..4], b"\x7fELF");
        assert_eq!((INIT[4], INIT[5]), (2, 1), "64-bit little-endian");
        assert_eq!(u16_at(18), 62, "x86-64");
        let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
        assert!(phnum > 0);
        for i in 0..phnum {
            let ptype = u32::from_le_bytes(INIT[phoff + i * phentsize..][..4].try_into().unwrap());
            assert_ne!(ptype, 3, "PT_INTERP: the init is dynamically linked");
        }
    }

    #[test]
    fn init_systems_are_recognised_but_bare_busybox_is_an_app() {
        let mut debian = Tree::default();
        debian.insert(b"/sbin", link("usr/sbin")).unwrap();
        debian
            .insert(b"/usr/sbin/init", link("../lib/systemd/systemd"))
            .unwrap();
        debian
            .insert(b"/usr/lib/systemd/systemd", file(b"elf"))
            .unwrap();
        assert!(has_init(&debian));

        let mut alpine = Tree::default();
        alpine.insert(b"/bin/busybox", file(b"elf")).unwrap();
        alpine.insert(b"/sbin/init", link("/bin/busybox")).unwrap();
        assert!(!has_init(&alpine));
        alpine.insert(b"/sbin/openrc", file(b"elf")).unwrap();
        assert!(has_init(&alpine));

        let mut dangling = Tree::default();
        dangling
            .insert(b"/sbin/init", link("/lib/systemd/systemd"))
            .unwrap();
        assert!(!has_init(&dangling));
        assert!(!has_init(&Tree::default()));
    }

    #[test]
    fn image_config_gives_entrypoint_then_cmd() {
        let json =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"Entrypoint":["/bin/app"],"Cmd":["--serve","8080"],"Env":["PATH=/bin","X=1"],
            "WorkingDir":"/srv","User":"app:app"}}"#;
        let c = AppConfig::from_image_config_json(json).unwrap();
        assert_eq!(c.argv, vec!["/bin/app", "--serve", "8080"]);
        assert_eq!(c.env, vec!["PATH=/bin", "X=1"]);
        assert_eq!(c.workdir, "/srv");
        assert_eq!(c.user, "app:app");
        let bare =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert_eq!(
            AppConfig::from_image_config_json(bare).unwrap(),
            AppConfig::default()
        );
        assert!(AppConfig::from_image_config_json(b"{").is_err());
    }
}
