//! `stamp run`, `ps`, `start`, `stop`, `pause`, `unpause`, `restart`, `rm`, `logs` and
//! `inspect` of machines: argument handling and output around stamp-machine's
//! [`MachineService`].

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use stamp_machine::qemu::{Qemu, QemuOptions};
use stamp_machine::runtime::{Drivers, Local};
use stamp_machine::spec::{
    DEFAULT_MEMORY, Restart, SystemdSpec, check_name, check_resources, human,
};
use stamp_machine::store::MachineStore;
use stamp_machine::{Machine, MachineService, MachineSpec, Platform, PortForward, Source, State};
use stamp_oci::ImageKind;

use crate::cli::{
    InspectArgs, LogsArgs, MachinesArgs, PsArgs, RmArgs, RunArgs, StartArgs, StopArgs,
};
use crate::dirs::xdg;
use crate::progress::CancelFlag;

/// This stamp binary (absolute: units and monitors run it).
fn stamp_exe() -> Result<std::path::PathBuf> {
    std::env::current_exe().context("cannot find the stamp binary")
}

/// The runtime on this user's machines directory.
fn runtime() -> Result<Local> {
    let state = xdg("XDG_STATE_HOME", ".local/state")?;
    let exe = stamp_exe()?;
    let drivers = Drivers {
        qemu: Box::new(Qemu::new(QemuOptions::from_env(state.clone()))),
        firecracker: Box::new(stamp_machine::firecracker::Firecracker::new()),
        podman: Box::new(stamp_machine::podman::Podman::new(
            stamp_machine::podman::PodmanOptions::from_env(),
        )),
    };
    Ok(Local::new(
        MachineStore::new(state.join("machines")),
        drivers,
        vec![
            exe.into_os_string(),
            "start".into(),
            "--foreground".into(),
            "--detach".into(),
        ],
    ))
}

/// The service for machine `name`: through systemd when it was created with `--systemd` (or
/// `systemd` is asked for), unless this process is that unit's own `ExecStop`, which acts on
/// the machine directly.
fn service_for(local: Local, name: Option<&str>, systemd: bool) -> Result<Box<dyn MachineService>> {
    let unit = match name {
        Some(n) => match local.get(n) {
            Ok(m) => m
                .spec
                .systemd
                .clone()
                .filter(|_| !stamp_machine::systemd::in_own_unit(&m)),
            Err(_) => None,
        },
        None => None,
    };
    match (unit, systemd) {
        (Some(u), _) => Ok(Box::new(stamp_machine::systemd::Systemd::new(
            local,
            u.user,
            stamp_exe()?,
        ))),
        (None, true) => Ok(Box::new(stamp_machine::systemd::Systemd::new(
            local,
            false,
            stamp_exe()?,
        ))),
        (None, false) => Ok(Box::new(local)),
    }
}

pub fn run_run(a: RunArgs, cancel: &CancelFlag) -> Result<u8> {
    let ports = a
        .ports
        .iter()
        .map(|p| p.parse::<PortForward>())
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = Vec::new();
    for e in &a.env {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
            _ => bail!("-e takes KEY=VALUE, not '{e}'"),
        }
    }
    let memory = stamp_disk::parse_size(&a.memory).map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
    let memory = if memory == 0 { DEFAULT_MEMORY } else { memory };
    check_resources(a.cpus, memory)?;
    let disk_size = a
        .disk_size
        .as_deref()
        .map(|s| stamp_disk::parse_size(s).map_err(|e| anyhow::anyhow!("--disk-size: {e}")))
        .transpose()?;
    let platform = a
        .platform
        .as_deref()
        .map(str::parse::<Platform>)
        .transpose()?;
    let systemd = if a.systemd {
        Some(SystemdSpec {
            user: a.user,
            restart: a.restart.parse::<Restart>()?,
            enable: a.enable,
        })
    } else {
        None
    };
    let local = runtime()?;
    let name = match &a.name {
        Some(n) => {
            check_name(n)?;
            n.clone()
        }
        None => fresh_name(local.store(), &a.image)?,
    };
    if local.store().open(&name).is_ok() {
        return Err(stamp_machine::Error::NameInUse(name).into());
    }
    let (platform, source) = resolve(&a.image, platform, &a.store)?;
    let spec = MachineSpec {
        name: name.clone(),
        image: a.image.clone(),
        platform,
        source,
        cpus: a.cpus,
        memory,
        disk_size,
        ports,
        env,
        cmd: a.cmd.clone(),
        remove: a.rm,
        systemd,
        created: stamp_machine::now_rfc3339(),
    };
    if let Some(unit) = &spec.systemd {
        let service = stamp_machine::systemd::Systemd::new(local, unit.user, stamp_exe()?);
        service.create(&spec)?;
        let m = service.start(&name)?;
        println!("{}", m.spec.name);
        return Ok(0);
    }
    local.create(&spec)?;
    if a.detach {
        match local.start(&name) {
            Ok(m) => {
                warn_of(&m);
                println!("{name}");
                Ok(0)
            }
            Err(e) => {
                // A machine that never ran is not kept (nothing half-created).
                if !a.rm {
                    let _ = local.delete(&name, true);
                }
                Err(e.into())
            }
        }
    } else {
        let m = foreground(&local, &name, cancel, false)?;
        if cancel.load(Ordering::SeqCst) {
            return Ok(130);
        }
        Ok(exit_of(&m))
    }
}

/// Runs machine `name` in this process, echoing its console to stdout (when `quiet_ok` is
/// false, or always under systemd so that the journal has it).
fn foreground(local: &Local, name: &str, cancel: &CancelFlag, detached: bool) -> Result<Machine> {
    let console = local.store().open(name)?.console_log();
    let start = std::fs::metadata(&console).map_or(0, |m| m.len());
    let echo = !detached;
    let done = Arc::new(AtomicBool::new(false));
    let tail = echo.then(|| {
        let done = done.clone();
        let console = console.clone();
        std::thread::spawn(move || follow(&console, start, &done))
    });
    let result = local.run_foreground(name, cancel, &|_| {
        let _ = stamp_machine::systemd::notify("READY=1");
    });
    done.store(true, Ordering::SeqCst);
    if let Some(t) = tail {
        let _ = t.join();
    }
    Ok(result?)
}

/// Copies what is appended to `path` from `offset` to stdout until `done` is set.
fn follow(path: &Path, offset: u64, done: &AtomicBool) {
    let mut out = std::io::stdout();
    let mut pos = offset;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let finished = done.load(Ordering::SeqCst);
        if let Ok(mut f) = std::fs::File::open(path) {
            if f.seek(SeekFrom::Start(pos)).is_ok() {
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    pos += n as u64;
                    let _ = out.write_all(&buf[..n]);
                }
                let _ = out.flush();
            }
        }
        if finished {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The exit status for a machine that ended: its own for a stopped one, at least 1 for a
/// failed one.
fn exit_of(m: &Machine) -> u8 {
    let code = m.status.exit_code.unwrap_or(0);
    match m.state() {
        State::Failed => u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1),
        _ => u8::try_from(code).unwrap_or(1),
    }
}

/// Prints the warning the driver gave when the machine started.
fn warn_of(m: &Machine) {
    if let Some(w) = &m.status.warning {
        eprintln!("warning: {w}");
    }
}

/// A name for a machine of `image`: its file or repository name, made unique.
fn fresh_name(store: &MachineStore, image: &str) -> Result<String> {
    let base = image
        .rsplit('/')
        .next()
        .unwrap_or(image)
        .split([':', '@'])
        .next()
        .unwrap_or("machine");
    let base = base.split('.').next().unwrap_or(base);
    let mut clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    clean = clean.trim_matches('-').chars().take(50).collect();
    if clean.is_empty() || !clean.as_bytes()[0].is_ascii_alphanumeric() {
        clean = format!("m-{clean}");
    }
    let taken = store.names()?;
    if !taken.contains(&clean) {
        return Ok(clean);
    }
    (2..10_000)
        .map(|i| format!("{clean}-{i}"))
        .find(|n| !taken.contains(n))
        .context("no free machine name; give one with --name")
}

/// What `image` is, and the platform that runs it: a disk file (qemu), a disk image in the
/// store (reassembled once into the cache), or a container image (podman; for qemu, built
/// into a disk with `stamp build`, cached).
fn resolve(
    image: &str,
    platform: Option<Platform>,
    store_args: &crate::cli::StoreArgs,
) -> Result<(Platform, Source)> {
    let path = Path::new(image);
    if platform == Some(Platform::Podman) {
        return Ok((Platform::Podman, container_source(image, store_args)?));
    }
    if path.is_file() {
        let format = stamp_disk::detect_path(path)
            .with_context(|| format!("cannot read the disk image {image}"))?;
        let platform = platform.unwrap_or(Platform::Qemu);
        if platform == Platform::Firecracker {
            bail!(
                "--platform firecracker boots a kernel and a root filesystem, not a partitioned disk such as {image}; use --platform qemu"
            );
        }
        return Ok((
            platform,
            Source::Disk {
                path: path.to_path_buf(),
                format: format.qemu_name().unwrap_or(format.name()).to_string(),
            },
        ));
    }
    if path.exists() {
        bail!("{image} is not a disk image file");
    }
    let store = crate::commands::registry::open_store(store_args)?;
    let Ok(desc) = store.resolve(image) else {
        if platform.is_none() && looks_like_reference(image) {
            // Not ours: podman may have it or pull it.
            return Ok((Platform::Podman, container_source(image, store_args)?));
        }
        bail!(
            "unknown image {image}: not a disk file and not in the store (`stamp images` lists the store; `stamp pull` adds to it)"
        );
    };
    let img = store.image(&desc, None)?;
    let cache = xdg("XDG_CACHE_HOME", ".cache")?.join("machines");
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create {}", cache.display()))?;
    let key = img.manifest_digest.to_string().replace(':', "-");
    match img.kind {
        ImageKind::Disk => {
            if platform == Some(Platform::Firecracker) {
                bail!(
                    "--platform firecracker cannot boot the disk image {image}; use --platform qemu"
                );
            }
            let (config, layers) = stamp_oci::disk::artifact::parts(&img)?;
            let format = config.format.parse::<stamp_disk::Format>()?;
            let file = cache.join(format!("{key}.{}", format.name()));
            if !file.exists() {
                let mut tmp = tempfile::NamedTempFile::new_in(&cache)?;
                stamp_oci::disk::artifact::write_disk(
                    &store,
                    &config,
                    &layers,
                    tmp.as_file_mut(),
                    &|_| {},
                )
                .with_context(|| format!("cannot reassemble the disk of {image}"))?;
                tmp.persist(&file)
                    .with_context(|| format!("cannot write {}", file.display()))?;
            }
            Ok((
                Platform::Qemu,
                Source::Disk {
                    path: file,
                    format: format.qemu_name().unwrap_or(format.name()).to_string(),
                },
            ))
        }
        _ => match platform {
            None | Some(Platform::Podman) => {
                Ok((Platform::Podman, container_source(image, store_args)?))
            }
            Some(Platform::Qemu) => {
                let file = cache.join(format!("{key}.qcow2"));
                if !file.exists() {
                    build_disk(image, &file, store_args)?;
                }
                Ok((
                    Platform::Qemu,
                    Source::Disk {
                        path: file,
                        format: "qcow2".into(),
                    },
                ))
            }
            Some(Platform::Firecracker) => Ok((
                Platform::Firecracker,
                kernel_source(&store, &img, image, &cache, &key)?,
            )),
        },
    }
}

/// Whether `s` could be a registry reference podman resolves (`busybox`, `quay.io/x/y:1`).
fn looks_like_reference(s: &str) -> bool {
    const DISK_SUFFIXES: [&str; 9] = [
        ".qcow2", ".raw", ".img", ".vmdk", ".vhd", ".vhdx", ".vdi", ".ova", ".iso",
    ];
    !s.is_empty()
        && !DISK_SUFFIXES
            .iter()
            .any(|x| s.to_ascii_lowercase().ends_with(x))
        && !s.starts_with('.')
        && !s.starts_with('/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/:._-@".contains(c))
}

/// The container source of `image`: a store image is exported once to an OCI archive in the
/// cache (`oci-archive:PATH`); anything else is passed to podman as it is.
fn container_source(image: &str, store_args: &crate::cli::StoreArgs) -> Result<Source> {
    let store = crate::commands::registry::open_store(store_args)?;
    let Ok(desc) = store.resolve(image) else {
        return Ok(Source::Container {
            reference: image.to_string(),
        });
    };
    let img = store.image(&desc, None)?;
    if img.kind == ImageKind::Disk {
        bail!("{image} is a disk image: run it with --platform qemu");
    }
    let cache = xdg("XDG_CACHE_HOME", ".cache")?.join("machines");
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create {}", cache.display()))?;
    let file = cache.join(format!(
        "{}.oci.tar",
        img.manifest_digest.to_string().replace(':', "-")
    ));
    if !file.exists() {
        let tmp = tempfile::NamedTempFile::new_in(&cache)?.into_temp_path();
        stamp_oci::archive::export(&store, &desc, &tmp)
            .with_context(|| format!("cannot export {image} for podman"))?;
        tmp.persist(&file)
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(Source::Container {
        reference: format!("oci-archive:{}", file.display()),
    })
}

/// Builds `image` from the store into a bootable qcow2 at `out` with `stamp build`.
fn build_disk(image: &str, out: &Path, store_args: &crate::cli::StoreArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    let tmp = out.with_extension("qcow2.tmp");
    let mut c = std::process::Command::new(exe);
    c.arg("build")
        .arg(image)
        .arg("-o")
        .arg(&tmp)
        .args(["-O", "qcow2"]);
    if let Some(s) = &store_args.store {
        c.arg("--store").arg(s);
    }
    eprintln!("building a disk from {image} (stamp build)...");
    let status = c.status().context("cannot run stamp build")?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!("cannot build a disk from {image} (see the build's messages above)");
    }
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))
}

pub fn run_ps(a: PsArgs) -> Result<u8> {
    let local = runtime()?;
    let service = service_for(local, None, false)?;
    let mut machines = service.list()?;
    if a.systemd {
        machines = with_units(machines)?;
    }
    if !a.all {
        machines.retain(|m| {
            m.state().is_live() || m.unit.as_ref().is_some_and(|u| u.active == "active")
        });
    }
    if a.json {
        let v: Vec<_> = machines.iter().map(Machine::summary).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let mut rows = vec![vec![
        "NAME".to_string(),
        "STATE".into(),
        "PLATFORM".into(),
        "IMAGE".into(),
        "PID".into(),
        "CREATED".into(),
        "PORTS".into(),
    ]];
    if a.systemd {
        rows[0].push("UNIT".into());
    }
    for m in &machines {
        let state = match (m.state(), m.status.exit_code) {
            (State::Stopped, Some(c)) => format!("stopped ({c})"),
            (s, _) => s.to_string(),
        };
        let mut row = vec![
            m.spec.name.clone(),
            state,
            m.spec.platform.to_string(),
            shorten(&m.spec.image, 40),
            m.pid().map(|p| p.to_string()).unwrap_or_default(),
            m.spec.created.clone(),
            m.spec
                .ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ];
        if a.systemd {
            row.push(
                m.unit
                    .as_ref()
                    .map(|u| format!("{} {}/{}", u.name, u.active, u.sub))
                    .unwrap_or_default(),
            );
        }
        rows.push(row);
    }
    print_table(&rows);
    Ok(0)
}

/// Adds the systemd unit status of machines that have a unit.
fn with_units(machines: Vec<Machine>) -> Result<Vec<Machine>> {
    let mut out = Vec::new();
    for m in machines {
        match &m.spec.systemd {
            Some(s) => {
                let local = runtime()?;
                let sys = stamp_machine::systemd::Systemd::new(local, s.user, stamp_exe()?);
                out.push(sys.get(&m.spec.name).unwrap_or(m));
            }
            None => out.push(m),
        }
    }
    Ok(out)
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let tail: String = s
        .chars()
        .rev()
        .take(max - 3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("...{tail}")
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// Runs `f` on each name; reports each failure and returns 1 if any failed (as podman).
fn each(names: &[String], mut f: impl FnMut(&str) -> Result<()>) -> Result<u8> {
    let mut failed = None;
    for n in names {
        if let Err(e) = f(n) {
            if names.len() == 1 {
                return Err(e);
            }
            crate::output::print_error(&e);
            failed = Some(1);
        }
    }
    Ok(failed.unwrap_or(0))
}

pub fn run_start(a: StartArgs, cancel: &CancelFlag) -> Result<u8> {
    if a.foreground {
        let [name] = &a.names[..] else {
            bail!("start --foreground takes one machine");
        };
        if a.detach {
            // The monitor of `run -d`/`start`: its own session, so that the terminal's
            // hangup and Ctrl-C do not reach it.
            let _ = rustix::process::setsid();
        }
        let local = runtime()?;
        let m = foreground(&local, name, cancel, a.detach)?;
        if cancel.load(Ordering::SeqCst) || m.status.reason.as_deref() == Some("stopped on request")
        {
            return Ok(0);
        }
        return Ok(exit_of(&m));
    }
    each(&a.names, |n| {
        let service = service_for(runtime()?, Some(n), a.systemd)?;
        warn_of(&service.start(n)?);
        println!("{n}");
        Ok(())
    })
}

pub fn run_stop(a: StopArgs) -> Result<u8> {
    let timeout = Duration::from_secs(a.timeout);
    each(&a.names, |n| {
        let service = service_for(runtime()?, Some(n), a.systemd)?;
        service.stop(n, timeout)?;
        println!("{n}");
        Ok(())
    })
}

pub fn run_restart(a: StopArgs) -> Result<u8> {
    let timeout = Duration::from_secs(a.timeout);
    each(&a.names, |n| {
        let service = service_for(runtime()?, Some(n), a.systemd)?;
        service.restart(n, timeout)?;
        println!("{n}");
        Ok(())
    })
}

pub fn run_pause(a: MachinesArgs, pause: bool) -> Result<u8> {
    each(&a.names, |n| {
        let local = runtime()?;
        if pause {
            local.pause(n)?;
        } else {
            local.resume(n)?;
        }
        println!("{n}");
        Ok(())
    })
}

pub fn run_rm(a: RmArgs) -> Result<u8> {
    each(&a.names, |n| {
        let service = service_for(runtime()?, Some(n), a.systemd)?;
        service.delete(n, a.force)?;
        println!("{n}");
        Ok(())
    })
}

pub fn run_logs(a: LogsArgs) -> Result<u8> {
    let service = service_for(runtime()?, Some(&a.name), false)?;
    let mut out = std::io::stdout().lock();
    service.logs(&a.name, a.follow, a.since.as_deref(), &mut out)?;
    Ok(0)
}

/// `stamp inspect NAME` of a machine; `None` when NAME is no machine (and no type was forced).
pub fn run_inspect(a: &InspectArgs) -> Result<Option<u8>> {
    let local = runtime()?;
    let m = match a.kind.as_deref() {
        Some("image") => return Ok(None),
        Some("machine") => local.get(&a.reference)?,
        Some(other) => bail!("--type {other}: use machine or image"),
        None => match local.get(&a.reference) {
            Ok(m) => m,
            Err(stamp_machine::Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        },
    };
    let m = if m.spec.systemd.is_some() {
        with_units(vec![m])?.pop().context("machine vanished")?
    } else {
        m
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m.detail())?);
        return Ok(Some(0));
    }
    let s = &m.spec;
    println!("Name:      {}", s.name);
    println!("State:     {}", m.state());
    if let Some(r) = &m.status.reason {
        println!("Reason:    {r}");
    }
    if let Some(c) = m.status.exit_code {
        println!("Exit code: {c}");
    }
    println!(
        "Platform:  {}{}",
        s.platform,
        m.status
            .accel
            .as_deref()
            .map(|a| format!(" ({a})"))
            .unwrap_or_default()
    );
    println!("Image:     {}", s.image);
    println!("CPUs:      {}", s.cpus);
    println!("Memory:    {}", human(s.memory));
    if let Some(pid) = m.pid() {
        println!("PID:       {pid}");
    }
    println!("Created:   {}", s.created);
    if let Some(t) = &m.status.started {
        println!("Started:   {t}");
    }
    if let Some(t) = &m.status.finished {
        println!("Finished:  {t}");
    }
    for p in &s.ports {
        println!("Port:      {p}");
    }
    if let Some(u) = &m.unit {
        println!(
            "Unit:      {} ({}/{}, {})",
            u.name, u.active, u.sub, u.enabled
        );
    }
    Ok(Some(0))
}

/// Firecracker's inputs made from a container image in the store: the image's kernel and
/// initrd, and its root filesystem as a raw ext4 image (`root=/dev/vda`); made once per image
/// digest in the cache (`KEY.kernel/`).
fn kernel_source(
    store: &stamp_oci::Store,
    img: &stamp_oci::Image,
    image: &str,
    cache: &Path,
    key: &str,
) -> Result<Source> {
    let dir = cache.join(format!("{key}.kernel"));
    if !dir.join("root.ext4").is_file() {
        let tmp = tempfile::Builder::new()
            .prefix(".kernel")
            .tempdir_in(cache)
            .with_context(|| format!("cannot create a directory in {}", cache.display()))?;
        let tree = stamp_oci::flatten(store, img, &Default::default())
            .with_context(|| format!("cannot read the layers of {image}"))?;
        let kernel = stamp_build::boot::find_kernel(&tree)?.with_context(|| {
            format!("{image} has no kernel in /boot (apt install linux-image-cloud-amd64 in it)")
        })?;
        copy_out(&tree, &kernel.vmlinuz, &tmp.path().join("kernel"))?;
        if let Some(initrd) = &kernel.initrd {
            copy_out(&tree, initrd, &tmp.path().join("initrd"))?;
        }
        let root = stamp_fs::ext4::ext4(&tree, &stamp_fs::ext4::Ext4Options::default())
            .with_context(|| format!("cannot lay out the root filesystem of {image}"))?;
        let never = std::sync::Arc::new(AtomicBool::new(false));
        super::mkfs::write_image(
            root,
            &tmp.path().join("root.ext4"),
            stamp_disk::Format::Raw,
            false,
            &never,
        )?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(tmp.keep(), &dir)
            .with_context(|| format!("cannot write {}", dir.display()))?;
    }
    let initrd = dir.join("initrd");
    Ok(Source::Kernel {
        kernel: dir.join("kernel"),
        initrd: initrd.is_file().then_some(initrd),
        root: Some(dir.join("root.ext4")),
        cmdline: "root=/dev/vda rw".into(),
    })
}

/// Copies the regular file at `path` of `tree` to the host file `to`.
fn copy_out(tree: &stamp_fs::Tree, path: &str, to: &Path) -> Result<()> {
    let (_, id) = tree
        .resolve(path.as_bytes(), true)
        .with_context(|| format!("{path} is not in the image"))?;
    let stamp_fs::Kind::File(content) = &tree.entry(id).kind else {
        bail!("{path} in the image is not a regular file");
    };
    let mut out =
        std::fs::File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < content.len() {
        let n = buf.len().min((content.len() - at) as usize);
        content.read_at(&mut buf[..n], at)?;
        out.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", to.display()))?;
        at += n as u64;
    }
    Ok(())
}
