//! `stamp build`: a container image (from the store, a registry, an archive or a Dockerfile)
//! to a bootable disk in every requested format.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::{Context, Result, bail};
use sha2::{Digest as _, Sha256};
use stamp_build::app::{self, AppConfig};
use stamp_build::boot::{Arch, BootMethod};
use stamp_build::cache::Cache;
use stamp_build::pipeline::{self, BuildOptions, Output};
use stamp_build::recipe::Recipe;
use stamp_disk::Format;
use stamp_fs::Tree;
use stamp_fs::source::SourceOptions;
use stamp_oci::{Image, ImageKind, Store};

use super::print_json;
use super::pull::{fetch, parse_platform};
use super::registry::open_store;
use crate::cli::{BootArg, BuildArgs, LoaderArg};
use crate::progress::{Bar, CancelFlag};

pub fn run(a: BuildArgs, cancel: &CancelFlag) -> Result<u8> {
    if let BootArg::Bios | BootArg::Hybrid = a.boot {
        let name = if a.boot == BootArg::Bios {
            "bios"
        } else {
            "hybrid"
        };
        bail!(
            "--boot {name} is not supported yet: stamp builds UEFI disks (--boot uefi); \
             QEMU boots them with OVMF, clouds with their UEFI boot mode"
        );
    }
    let outputs = outputs(&a.outputs, &a.formats)?;
    // Read once: parsed here, and its bytes are part of the build's identity below.
    let recipe_text = match &a.recipe {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the recipe {}", path.display()))?,
        ),
        None => None,
    };
    let mut recipe = match (&a.recipe, &recipe_text) {
        (Some(path), Some(text)) => Recipe::parse(text, path)?,
        _ => Recipe::default(),
    };
    if let Some(size) = &a.size {
        let bytes = stamp_disk::parse_size(size)
            .map_err(|e| anyhow::anyhow!("invalid --size '{size}': {e}"))?;
        recipe.disk_size = Some(bytes);
    }
    let store = open_store(&a.store)?;
    let _guard = store.write_guard()?;
    let platform = a.platform.as_deref().map(parse_platform).transpose()?;
    let (image, name) = match &a.dockerfile {
        Some(dockerfile) => {
            let context = a.context.clone().unwrap_or_else(|| {
                dockerfile
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."))
            });
            let desc = build_dockerfile(&store, dockerfile, &context)?;
            (
                store.image(&desc, platform.as_ref())?,
                dockerfile.display().to_string(),
            )
        }
        None => {
            let source = a.source.as_deref().unwrap_or_default();
            let desc = local_or_fetch(&store, source, &a, platform.as_ref(), cancel)?;
            (store.image(&desc, platform.as_ref())?, source.to_string())
        }
    };
    if image.kind != ImageKind::Container {
        bail!("{name} is not a container image; stamp build needs an image with a root filesystem");
    }
    let sde = stamp_oci::archive::source_date_epoch();
    let source_opts = SourceOptions {
        source_date_epoch: sde,
    };
    let mut tree = stamp_oci::flatten(&store, &image, &source_opts)
        .with_context(|| format!("cannot read the layers of {name}"))?;
    let mut cmdline = a.cmdline.clone();
    let mut seed = Sha256::new();
    seed.update(b"stamp build v1\0");
    seed.update(image.manifest_digest.to_string());
    if let Some(k) = &a.kernel {
        let kdesc = local_or_fetch(&store, k, &a, platform.as_ref(), cancel)?;
        let kimage = store.image(&kdesc, platform.as_ref())?;
        seed.update(kimage.manifest_digest.to_string());
        let ktree = stamp_oci::flatten(&store, &kimage, &source_opts)
            .with_context(|| format!("cannot read the layers of the kernel image {k}"))?;
        if app::has_init(&tree) {
            // A system image without a kernel: its own init boots, with this kernel.
            app::install_kernel(&mut tree, &ktree)?;
        } else {
            let config = image
                .config
                .as_ref()
                .map(AppConfig::from_image_config)
                .unwrap_or_default();
            cmdline.extend(app::install(&mut tree, &ktree, &config)?);
        }
    } else if !app::has_init(&tree) {
        bail!(
            "{name} has no init system (no /sbin/init or systemd): it is an application image; \
             give --kernel REF (an image with a kernel, initrd and modules, such as a Debian image \
             with linux-image-cloud-amd64) to boot its entrypoint with stamp's init"
        );
    }
    if let Some(text) = &recipe_text {
        seed.update(text.as_bytes());
    }
    seed.update(format!(
        "{:?}|{:?}|{:?}|{:?}",
        recipe.disk_size, cmdline, a.loader, sde
    ));
    let esp_size = recipe.esp_size;
    let opts = BuildOptions {
        recipe,
        cmdline,
        boot_method: a.loader.map(|l| match l {
            LoaderArg::Uki => BootMethod::Uki,
            LoaderArg::SystemdBoot => BootMethod::SystemdBoot,
            LoaderArg::Grub => BootMethod::Grub,
        }),
        arch: arch_of(&image),
        esp_size,
        source_date_epoch: sde,
        seed: seed.finalize().into(),
    };
    let bar = Bar::new(a.progress, "writing", cancel);
    let cache = (!a.no_cache).then(|| Cache::new(store.root()));
    let report = build(tree, &opts, &outputs, &bar, cache.as_ref());
    bar.finish();
    let report = report?;
    if let Some(tag) = &a.tag {
        let first = outputs
            .iter()
            .find(|o| o.format == Format::Qcow2)
            .unwrap_or(&outputs[0]);
        let desc = stamp_oci::disk::artifact::store_disk(
            &store,
            &first.path,
            Some("uefi".into()),
            Some(image_arch(&image)),
            Some(image.manifest_digest),
            &|_| {},
        )
        .with_context(|| format!("cannot record {} in the store", first.path.display()))?;
        store.set_name(tag, &desc)?;
    }
    if a.json {
        print_json(&report)?;
    } else {
        for o in &outputs {
            println!("Wrote {} ({})", o.path.display(), o.format);
        }
        println!(
            "Boots with {} (kernel {}), root PARTUUID={}",
            report.boot_method, report.kernel, report.ids.root_partuuid
        );
        if let Some(tag) = &a.tag {
            println!("Recorded in the store as {tag}");
        }
        if report.cached {
            println!("(copied from the build cache; --no-cache builds again)");
        }
    }
    Ok(0)
}

/// Runs the pipeline, with the outputs' paths in the error.
fn build(
    tree: Tree,
    opts: &BuildOptions,
    outputs: &[Output],
    bar: &Bar,
    cache: Option<&Cache>,
) -> Result<pipeline::BuildReport> {
    pipeline::build(tree, opts, outputs, bar, cache).with_context(|| {
        let names: Vec<String> = outputs
            .iter()
            .map(|o| o.path.display().to_string())
            .collect();
        format!("cannot build {}; nothing was written", names.join(", "))
    })
}

/// The outputs from `-o` and `-O`: the n-th `-O` gives the n-th output's format; the others
/// follow their extension.
fn outputs(paths: &[PathBuf], formats: &[String]) -> Result<Vec<Output>> {
    if formats.len() > paths.len() {
        bail!("more -O formats than -o outputs: give one -O per -o (in the same order)");
    }
    paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let format = match formats.get(i) {
                Some(f) => f
                    .parse::<Format>()
                    .with_context(|| format!("invalid format for {}", path.display()))?,
                None => Format::from_extension(path).with_context(|| {
                    format!(
                        "cannot tell the format of {} from its extension; add -O FORMAT",
                        path.display()
                    )
                })?,
            };
            Ok(Output::new(path.clone(), format))
        })
        .collect()
}

/// The architecture the image is for.
fn arch_of(image: &Image) -> Arch {
    if image_arch(image) == "arm64" {
        Arch::Aarch64
    } else {
        Arch::X86_64
    }
}

/// The image `reference` names: the store's when it has one by that name, else pulled from its
/// registry or imported from its archive.
fn local_or_fetch(
    store: &Store,
    reference: &str,
    a: &BuildArgs,
    platform: Option<&oci_spec::image::Platform>,
    cancel: &CancelFlag,
) -> Result<oci_spec::image::Descriptor> {
    match store.resolve(reference) {
        Ok(desc) if stamp_oci::archive::Source::parse(reference)?.is_none() => Ok(desc),
        _ => Ok(fetch(store, reference, &a.registry, platform, true, cancel)?.0),
    }
}

/// The image config's architecture in OCI's words (the host's when it has no config).
fn image_arch(image: &Image) -> String {
    image
        .config
        .as_ref()
        .map(|c| c.architecture().to_string())
        .unwrap_or_else(super::archive::host_arch)
}

/// Builds `dockerfile` with podman (or buildah) and imports the result into the store.
fn build_dockerfile(
    store: &Store,
    dockerfile: &Path,
    context: &Path,
) -> Result<oci_spec::image::Descriptor> {
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let iid = dir.path().join("iid");
    let archive = dir.path().join("image.tar");
    let tool = ["podman", "buildah"]
        .into_iter()
        .find(|t| which(t))
        .context("--dockerfile needs podman or buildah: install one (apt install podman)")?;
    let mut build = Process::new(tool);
    build
        .arg("build")
        .arg("--isolation")
        .arg("chroot")
        .arg("--iidfile")
        .arg(&iid)
        .arg("-f")
        .arg(dockerfile)
        .arg(context);
    let status = build
        .status()
        .with_context(|| format!("cannot run {tool}"))?;
    if !status.success() {
        bail!("{tool} build of {} failed ({status})", dockerfile.display());
    }
    let id = std::fs::read_to_string(&iid).context("cannot read the built image's id")?;
    let id = id.trim();
    let status = if tool == "podman" {
        Process::new(tool)
            .args(["save", "--format", "oci-archive", "-o"])
            .arg(&archive)
            .arg(id)
            .status()
    } else {
        Process::new(tool)
            .arg("push")
            .arg(id)
            .arg(format!("oci-archive:{}", archive.display()))
            .status()
    }
    .with_context(|| format!("cannot run {tool}"))?;
    if !status.success() {
        bail!("{tool} could not save the built image ({status})");
    }
    let source = stamp_oci::archive::Source::OciArchive {
        path: archive.clone(),
        tag: None,
    };
    let imported = stamp_oci::archive::import(
        store,
        &source,
        &stamp_oci::archive::ImportOptions::default(),
    )
    .context("cannot import the built image")?;
    Ok(imported.descriptor)
}

/// Whether `tool` is on PATH.
fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
}
