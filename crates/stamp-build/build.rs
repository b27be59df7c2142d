//! Builds `stamp-init` (stamp's PID 1 for application images) as a static executable and puts
//! it in `$OUT_DIR/stamp-init`, which `src/app.rs` embeds with `include_bytes!`.
//!
//! The init runs inside any image, so it must not need the image's libc: it is built by a
//! nested `cargo build --release -p stamp-init` with `-C target-feature=+crt-static` (static
//! glibc) into its own target directory under `$OUT_DIR`, with the outer build's flags,
//! wrappers (clippy's driver, sccache) and jobserver removed from its environment.
//!
//! `STAMP_INIT=/path/to/stamp-init` at build time embeds that file instead. If the nested
//! build fails (no static libc on the machine), an empty file is embedded with a warning, and
//! stamp then looks for the init at run time (`STAMP_INIT`, or `stamp-init` beside the
//! executable).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env("OUT_DIR"));
    let dest = out_dir.join("stamp-init");
    let init_dir = manifest_dir.join("../stamp-init");
    println!("cargo:rerun-if-changed={}", init_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        init_dir.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../stamp-flake/src/wire.rs").display()
    );
    println!("cargo:rerun-if-env-changed=STAMP_INIT");

    if let Some(prebuilt) = std::env::var_os("STAMP_INIT") {
        println!("cargo:rerun-if-changed={}", Path::new(&prebuilt).display());
        copy(Path::new(&prebuilt), &dest);
        return;
    }
    if !init_dir.join("Cargo.toml").is_file() {
        // Built outside the workspace (a packaged crate): nothing to build; found at run time.
        println!(
            "cargo:warning=stamp-init sources not found; stamp will look for the init at run time"
        );
        write_empty(&dest);
        return;
    }
    let target = env("TARGET");
    let target_dir = out_dir.join("init-target");
    let workspace = manifest_dir.join("../../Cargo.toml");
    let mut last_err = String::new();
    for offline in [true, false] {
        match nested_build(&workspace, &target, &target_dir, offline) {
            Ok(()) => {
                let built = target_dir.join(&target).join("release").join("stamp-init");
                copy(&built, &dest);
                return;
            }
            Err(e) => last_err = e,
        }
    }
    println!(
        "cargo:warning=building the static stamp-init failed; stamp will look for it at run time \
         (STAMP_INIT or stamp-init beside the executable): {}",
        last_err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
    );
    eprintln!("{last_err}");
    write_empty(&dest);
}

fn env(key: &str) -> String {
    match std::env::var(key) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("build.rs: {key} is not set (not run by cargo?)");
            std::process::exit(1);
        }
    }
}

/// `cargo build --release --locked -p stamp-init --target TARGET` with static linking, its
/// output captured (a build script's stdout is read by cargo).
fn nested_build(
    workspace: &Path,
    target: &str,
    target_dir: &Path,
    offline: bool,
) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--locked")
        .args(offline.then_some("--offline"))
        .args(["-p", "stamp-init", "--target", target])
        .arg("--manifest-path")
        .arg(workspace)
        .arg("--target-dir")
        .arg(target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CLIPPY_ARGS",
        "CLIPPY_CONF_DIR",
        "CARGO_INCREMENTAL",
    ] {
        cmd.env_remove(var);
    }
    // Target-specific flags of the outer build (`CARGO_TARGET_<TRIPLE>_RUSTFLAGS`) too.
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if k.starts_with("CARGO_TARGET_") && k.ends_with("_RUSTFLAGS") {
                cmd.env_remove(k);
            }
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_TERM_COLOR", "never");
    let out = cmd
        .output()
        .map_err(|e| format!("running cargo for stamp-init: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cargo build -p stamp-init ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = std::fs::copy(from, to) {
        eprintln!(
            "build.rs: copying {} to {}: {e}",
            from.display(),
            to.display()
        );
        std::process::exit(1);
    }
}

fn write_empty(to: &Path) {
    if let Err(e) = std::fs::write(to, b"") {
        eprintln!("build.rs: writing {}: {e}", to.display());
        std::process::exit(1);
    }
}
