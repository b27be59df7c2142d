//! Provisioning, rootless: a flake with a base image, layers or includes runs in an image
//! composed from them. The base, the layers and the app image come from stamp's store and
//! are stacked (their layers shared, not copied; later layers' files and whiteouts win), the
//! includes become one more layer each. The result is named in the store after everything
//! that went in (`localhost/stamp-app-NAME:KEY`) and, for the podman engine, loaded into
//! podman once under the same name, so the next launch finds it and starts at once; the vm
//! engine builds its disk from it (cached the same way). `stamp app remove` removes them.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};
use stamp_oci::{Image, Store};

use crate::config::Flake;
use crate::launch::PodmanEnv;
use crate::{Error, Result};

/// Whether `flake` needs provisioning.
pub fn needed(flake: &Flake) -> bool {
    flake.base.is_some()
        || !flake.layers.is_empty()
        || !flake.include_tar.is_empty()
        || !flake.include_path.is_empty()
}

/// The store name of app `name`'s composed images (`localhost/stamp-app-NAME`; each is
/// tagged with the key of what went into it).
pub fn repository(name: &str) -> String {
    format!("localhost/stamp-app-{}", clean(name))
}

/// Opens stamp's store at `root`.
fn open(root: &Path) -> Result<Store> {
    Store::open(root).map_err(|e| Error::Engine(format!("cannot open stamp's store: {e}")))
}

/// The images `flake` is composed from (base, layers, image), and the name of the result.
fn inputs(flake: &Flake, store: &Store) -> Result<(Vec<Image>, String)> {
    let load = |r: &str, what: &str| -> Result<Image> {
        let d = store.resolve(r).map_err(|_| {
            Error::Engine(format!(
                "{}: {what} {r} is not in stamp's store (`stamp pull {r}` or `stamp import` adds it)",
                flake.file.display()
            ))
        })?;
        store
            .image(&d, None)
            .map_err(|e| Error::Engine(format!("{}: {what} {r}: {e}", flake.file.display())))
    };
    let mut images = Vec::new();
    if let Some(b) = &flake.base {
        images.push(load(b, "base image")?);
    }
    for l in &flake.layers {
        images.push(load(l, "layer")?);
    }
    images.push(load(&flake.image, "image")?);
    let tag = format!("{}:{}", repository(&flake.name), key(flake, &images)?);
    Ok((images, tag))
}

/// Makes the composed image `tag` in the store unless it is there.
fn compose_named(flake: &Flake, store: &Store, images: &[Image], tag: &str) -> Result<()> {
    if store.resolve(tag).is_ok() {
        return Ok(());
    }
    let work = tempfile::Builder::new()
        .prefix("stamp-app-")
        .tempdir()
        .map_err(|e| Error::io("create a temporary directory in", std::env::temp_dir(), e))?;
    let mut extra: Vec<PathBuf> = flake.include_tar.clone();
    if !flake.include_path.is_empty() {
        let t = work.path().join("include.tar");
        include_tar(&flake.include_path, &t)?;
        extra.push(t);
    }
    let composed = stamp_oci::compose::stack(store, images, &extra).map_err(|e| {
        Error::Engine(format!(
            "{}: cannot compose its image: {e}",
            flake.file.display()
        ))
    })?;
    store
        .set_name(tag, &composed)
        .map_err(|e| Error::Engine(format!("cannot name the composed image {tag}: {e}")))
}

/// The name in stamp's store of the image composed for `flake` (made now when it is not
/// there): the vm engine builds its disk from it.
pub fn compose(flake: &Flake, store: &Path) -> Result<String> {
    let store = open(store)?;
    let (images, tag) = inputs(flake, &store)?;
    compose_named(flake, &store, &images, &tag)?;
    Ok(tag)
}

/// The image podman runs for `flake`: its own image, or the composed one (made and loaded
/// into podman now when podman does not have it yet). `store` is stamp's image store.
pub fn image(flake: &Flake, store: &Path, env: &PodmanEnv) -> Result<String> {
    if !needed(flake) {
        return Ok(flake.image.clone());
    }
    let store = open(store)?;
    let (images, tag) = inputs(flake, &store)?;
    if exists(env, &tag)? {
        return Ok(tag);
    }
    compose_named(flake, &store, &images, &tag)?;
    let work = tempfile::Builder::new()
        .prefix("stamp-app-")
        .tempdir()
        .map_err(|e| Error::io("create a temporary directory in", std::env::temp_dir(), e))?;
    let archive = work.path().join("image.tar");
    store
        .resolve(&tag)
        .and_then(|d| stamp_oci::archive::export(&store, &d, &archive))
        .map_err(|e| Error::Engine(format!("cannot export the composed image: {e}")))?;
    let out = Command::new(&env.program)
        .arg("load")
        .arg("-q")
        .arg("-i")
        .arg(&archive)
        .output()
        .map_err(|e| Error::Engine(format!("cannot run podman: {e}")))?;
    if !out.status.success() || !exists(env, &tag)? {
        return Err(Error::Engine(format!(
            "podman could not load the composed image {tag}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(tag)
}

/// Removes app `name`'s composed images from stamp's store and from podman; their names.
pub fn remove_images(name: &str, store: &Path, env: &PodmanEnv) -> Result<Vec<String>> {
    let prefix = format!("{}:", repository(name));
    let mut removed = Vec::new();
    if store.join("oci-layout").is_file() {
        let store = open(store)?;
        let names = store
            .list()
            .map_err(|e| Error::Engine(format!("cannot list stamp's store: {e}")))?;
        for n in names.into_iter().filter(|n| n.name.starts_with(&prefix)) {
            store
                .remove_name(&n.name)
                .map_err(|e| Error::Engine(format!("cannot remove {}: {e}", n.name)))?;
            removed.push(n.name);
        }
    }
    let out = Command::new(&env.program)
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}", "--filter"])
        .arg(format!("reference={}", repository(name)))
        .output()
        .map_err(|e| Error::Engine(format!("cannot run podman: {e}")))?;
    let tags: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    for t in tags {
        let out = Command::new(&env.program)
            .args(["rmi", "--force", &t])
            .output()
            .map_err(|e| Error::Engine(format!("cannot run podman: {e}")))?;
        if !out.status.success() {
            return Err(Error::Engine(format!(
                "cannot remove the composed image {t}: podman: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if !removed.contains(&t) {
            removed.push(t);
        }
    }
    Ok(removed)
}

/// What the composed image depends on: the images' manifests, the include tars' and paths'
/// names, sizes and times (a changed host file makes a new image).
fn key(flake: &Flake, images: &[Image]) -> Result<String> {
    let mut h = Sha256::new();
    for i in images {
        h.update(i.manifest_digest.to_string().as_bytes());
        h.update(b"\n");
    }
    for t in &flake.include_tar {
        stamp_of(&mut h, t)?;
    }
    for p in &flake.include_path {
        walk(&mut h, p)?;
    }
    Ok(hex::encode(&h.finalize()[..8]))
}

/// Adds `path`'s name, size and modification time to the hash.
fn stamp_of(h: &mut Sha256, path: &Path) -> Result<()> {
    let m = std::fs::symlink_metadata(path).map_err(|e| Error::io("read", path, e))?;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    h.update(format!(
        "{}\0{}\0{}\0{:o}\n",
        path.display(),
        m.len(),
        mtime,
        {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode()
        }
    ));
    Ok(())
}

/// [`stamp_of`] for `path` and everything below it.
fn walk(h: &mut Sha256, path: &Path) -> Result<()> {
    stamp_of(h, path)?;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io("read", path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            walk(h, &e)?;
        }
    }
    Ok(())
}

/// A tar of the host `paths` at their own absolute paths (directories with what is below).
fn include_tar(paths: &[PathBuf], out: &Path) -> Result<()> {
    let f = std::fs::File::create(out).map_err(|e| Error::io("create", out, e))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    b.follow_symlinks(false);
    for p in paths {
        if !p.is_absolute() {
            return Err(Error::Invalid(format!(
                "include path {}: give an absolute path",
                p.display()
            )));
        }
        let inside = p.strip_prefix("/").unwrap_or(p);
        let meta = std::fs::symlink_metadata(p).map_err(|e| Error::io("read", p, e))?;
        let added = if meta.is_dir() {
            b.append_dir_all(inside, p)
        } else {
            b.append_path_with_name(p, inside)
        };
        added.map_err(|e| Error::io("add to the include layer", p, e))?;
    }
    b.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(|e| Error::io("write", out, e))
}

/// Whether podman has image `tag`.
fn exists(env: &PodmanEnv, tag: &str) -> Result<bool> {
    let s = Command::new(&env.program)
        .args(["image", "exists", tag])
        .output()
        .map_err(|e| Error::Engine(format!("cannot run podman: {e} (apt-get install podman)")))?;
    Ok(s.status.success())
}

/// A name made of `[a-z0-9_.-]` (podman's rule for repository names).
fn clean(s: &str) -> String {
    crate::config::clean_name(s).to_ascii_lowercase()
}
