//! The XDG base directories stamp keeps its files under.

use std::path::PathBuf;

use anyhow::{Result, anyhow};

/// `$VAR/stamp` when `VAR` (`XDG_CACHE_HOME`, `XDG_DATA_HOME`, `XDG_STATE_HOME`) is an
/// absolute path, else `$HOME/FALLBACK/stamp` (`.cache`, `.local/share`, `.local/state`).
pub fn xdg(var: &str, fallback: &str) -> Result<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = match env(var).filter(|p| p.is_absolute()) {
        Some(p) => p,
        None => env("HOME")
            .map(|h| h.join(fallback))
            .ok_or_else(|| anyhow!("no home directory: set {var} or HOME"))?,
    };
    Ok(base.join("stamp"))
}
