//! `stamp app register|list|show|remove`, and the launcher: a registered command is a symlink
//! to the stamp binary, which recognises the name it was called by.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use stamp_flake::config::{FlakeFile, Include, Runtime, Section, Transport};
use stamp_flake::{Flake, Registry, launch};

use crate::cli::{AppCommand, AppListArgs, AppNameArgs, AppRegisterArgs};

/// The user's flakes directory (`$XDG_DATA_HOME/flakes`).
fn user_registry() -> Result<Registry> {
    let stamp_dir = crate::dirs::xdg("XDG_DATA_HOME", ".local/share")?;
    let base = stamp_dir
        .parent()
        .context("no data directory")?
        .to_path_buf();
    Ok(Registry::new(base.join("flakes")))
}

/// The registries an app is looked up in: the user's, then the system's.
fn registries() -> Vec<Registry> {
    let mut v = Vec::new();
    if let Ok(r) = user_registry() {
        v.push(r);
    }
    v.push(Registry::new(stamp_flake::registry::SYSTEM_DIR));
    v
}

/// The launcher (this binary, by its real path).
fn launcher() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the stamp binary")?;
    Ok(std::fs::canonicalize(&exe).unwrap_or(exe))
}

/// When this binary was called by the name of a registered app, runs the app and returns the
/// exit status to end with; `None` for stamp itself.
pub fn dispatch_argv0() -> Option<u8> {
    let argv0 = std::env::args_os().next()?;
    let name = std::path::Path::new(&argv0)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    if name.starts_with("stamp") {
        return None;
    }
    let mut found = None;
    for r in registries() {
        match r.load(&name) {
            Ok(f) => {
                found = Some(Ok(f));
                break;
            }
            Err(stamp_flake::Error::NotFound(_)) => {}
            Err(e) => {
                found = Some(Err(e));
                break;
            }
        }
    }
    let flake = match found {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            eprintln!("{name}: error: {e}");
            return Some(1);
        }
        None => {
            eprintln!(
                "{name}: error: no app named {name} is registered (this is the stamp binary; `stamp app list` lists the apps)"
            );
            return Some(1);
        }
    };
    let call = match launch::parse_call(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: error: {e}");
            return Some(2);
        }
    };
    // Returns only if the app could not be started, or after `%remove` removed its instance.
    match launch::launch(&flake, &call) {
        Ok(code) => Some(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("{name}: error: {e}");
            Some(1)
        }
    }
}

pub fn run(c: AppCommand) -> Result<u8> {
    match c {
        AppCommand::Register(a) => register(*a),
        AppCommand::List(a) => list(a),
        AppCommand::Show(a) => show(a),
        AppCommand::Remove(a) => remove(a),
    }
}

fn register(a: AppRegisterArgs) -> Result<u8> {
    let runtime = Runtime {
        runas: a.run_as.clone(),
        resume: a.resume.then_some(true),
        attach: a.attach.then_some(true),
        podman: (!a.opts.is_empty()).then(|| a.opts.clone()),
        memory: a.memory.clone(),
        cpus: a.cpus,
        overlay_size: a.overlay_size.clone(),
        no_net: a.no_net.then_some(true),
        transport: match a.transport.as_deref() {
            Some("vsock") => Some(Transport::Vsock),
            Some(_) => Some(Transport::Serial),
            None => None,
        },
        firecracker: None,
    };
    let section = Section {
        name: Some(a.image.clone()),
        target_app_path: a.target.clone(),
        host_app_path: Some(a.app.display().to_string()),
        base_container: a.base.clone(),
        layers: (!a.layers.is_empty()).then(|| a.layers.clone()),
        runtime: (runtime != Runtime::default()).then_some(runtime),
        kernel: a.kernel.clone(),
    };
    let include = (!a.include_tar.is_empty() || !a.include_path.is_empty()).then(|| Include {
        tar: (!a.include_tar.is_empty()).then(|| a.include_tar.clone()),
        path: (!a.include_path.is_empty()).then(|| a.include_path.clone()),
    });
    let file = match a.engine.as_str() {
        "podman" => FlakeFile {
            container: Some(section),
            vm: None,
            include,
        },
        "vm" => FlakeFile {
            container: None,
            vm: Some(section),
            include,
        },
        other => bail!("--engine {other}: use podman or vm"),
    };
    if a.engine == "vm" && a.kernel.is_none() {
        bail!(
            "--engine vm needs --kernel REF: the image whose kernel, initrd and modules boot the app"
        );
    }
    let provisioned = a.base.is_some()
        || !a.layers.is_empty()
        || !a.include_tar.is_empty()
        || !a.include_path.is_empty();
    if provisioned {
        // The image is composed from stamp's store at the first launch.
        let store = stamp_oci::Store::open(&stamp_oci::Store::default_root())
            .context("cannot open stamp's store")?;
        let refs = a
            .base
            .iter()
            .chain(&a.layers)
            .chain(std::iter::once(&a.image));
        for r in refs {
            if store.resolve(r).is_err() {
                bail!(
                    "unknown image {r}: it is not in stamp's store, which --base, --layer and --include-* compose from (`stamp pull {r}` or `stamp import` adds it)"
                );
            }
        }
    } else if a.engine == "podman" {
        image_exists(&a.image)?;
    }
    let registry = if a.user {
        user_registry()?
    } else {
        Registry::new(stamp_flake::registry::SYSTEM_DIR)
    };
    let flake = registry.register(&file, &launcher()?, a.force)?;
    println!("{}", flake.host_app.display());
    Ok(0)
}

/// Fails unless podman has `image` (a registration of an unknown image is refused).
fn image_exists(image: &str) -> Result<()> {
    let podman = std::env::var_os("STAMP_PODMAN").unwrap_or_else(|| "podman".into());
    let out = std::process::Command::new(&podman)
        .args(["image", "exists", image])
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (apt-get install podman)",
                podman.to_string_lossy()
            )
        })?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) if out.stderr.iter().all(u8::is_ascii_whitespace) => bail!(
            "unknown image {image}: podman has no such image (`podman images` lists them; `podman pull {image}` fetches it)"
        ),
        _ => bail!(
            "cannot look up image {image}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// Every registered app, the user's first (a user app hides a system one of the same name).
fn all() -> Result<Vec<(Flake, &'static str)>> {
    let mut out: Vec<(Flake, &'static str)> = Vec::new();
    for (r, scope) in registries().into_iter().zip(["user", "system"]) {
        for name in r.names()? {
            if out.iter().any(|(f, _)| f.name == name) {
                continue;
            }
            out.push((r.load(&name)?, scope));
        }
    }
    Ok(out)
}

fn list(a: AppListArgs) -> Result<u8> {
    let apps = all()?;
    if a.json {
        let v: Vec<serde_json::Value> = apps
            .iter()
            .map(|(f, scope)| {
                let mut v = serde_json::to_value(f).unwrap_or_default();
                v["scope"] = (*scope).into();
                v["instances"] = instances(f).into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!(
        "{:<16} {:<7} {:<7} {:<40} {:<24} INSTANCES",
        "NAME", "ENGINE", "SCOPE", "IMAGE", "TARGET"
    );
    for (f, scope) in apps {
        let engine = match f.engine {
            stamp_flake::Engine::Podman => "podman",
            stamp_flake::Engine::Vm => "vm",
        };
        let running = instances(&f);
        let running = if running.is_empty() {
            "-".to_string()
        } else {
            running.join(",")
        };
        println!(
            "{:<16} {engine:<7} {scope:<7} {:<40} {:<24} {running}",
            f.name, f.image, f.target
        );
    }
    Ok(0)
}

/// The persistent instances of an app (none when podman cannot say).
fn instances(f: &Flake) -> Vec<String> {
    match f.engine {
        stamp_flake::Engine::Podman => {
            launch::instances(&f.name, &launch::PodmanEnv::from_env()).unwrap_or_default()
        }
        stamp_flake::Engine::Vm => stamp_flake::vm::instance::list(&f.name).unwrap_or_default(),
    }
}

fn find(name: &str) -> Result<(Registry, Flake)> {
    for r in registries() {
        match r.load(name) {
            Ok(f) => return Ok((r, f)),
            Err(stamp_flake::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(stamp_flake::Error::NotFound(name.to_string()).into())
}

fn show(a: AppNameArgs) -> Result<u8> {
    let (_, f) = find(&a.name)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&f)?);
    } else {
        print!(
            "{}",
            std::fs::read_to_string(&f.file)
                .with_context(|| format!("cannot read {}", f.file.display()))?
        );
    }
    Ok(0)
}

/// Removes an app: its instances, then (unless `--keep-image`) the images composed for it
/// and its vm disks, then its registration and host command.
fn remove(a: AppNameArgs) -> Result<u8> {
    let (r, f) = find(&a.name)?;
    let env = launch::PodmanEnv::from_env();
    match f.engine {
        stamp_flake::Engine::Podman => launch::remove_instances(&f.name, &env)?,
        stamp_flake::Engine::Vm => stamp_flake::vm::instance::remove_all(&f.name)?,
    }
    if !a.keep_image {
        let composed =
            stamp_flake::provision::remove_images(&f.name, &stamp_oci::Store::default_root(), &env);
        // A vm app never loaded anything into podman, and may run where podman is missing.
        match composed {
            Ok(names) => {
                for n in names {
                    eprintln!("removed image {n}");
                }
            }
            Err(e) if f.engine == stamp_flake::Engine::Podman => return Err(e.into()),
            Err(e) => eprintln!("warning: {e}"),
        }
        let disks = stamp_flake::vm::disk_dir(&f.name)?;
        if disks.is_dir() {
            std::fs::remove_dir_all(&disks)
                .with_context(|| format!("cannot remove {}", disks.display()))?;
        }
    }
    let f = r.remove(&a.name, &launcher()?)?;
    println!("{}", f.name);
    Ok(0)
}
