//! The recipe (`stamp.toml`): what a node image needs beyond its container image, and how it
//! is applied to the image's tree.
//!
//! [`Recipe::load`] reads and validates a recipe (every error names the file, the line and the
//! dotted key); [`Recipe::apply`] writes it into a [`Tree`]: fstab, an empty machine-id, users,
//! files, hostname, locale, timezone, systemd units and the first-boot units. The format is
//! documented in `docs/recipe.md`.

mod files;
mod firstboot;
mod parse;
mod system;
mod tree_io;
mod units;
mod users;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stamp_fs::Tree;

use crate::{Error, Result};

/// The kernel argument [`Recipe::serial_console`] adds.
pub const SERIAL_CONSOLE_ARG: &str = "console=ttyS0,115200";

/// A parsed recipe. Every field is optional; an empty recipe changes only what every bootable
/// image needs (fstab, empty machine-id, no baked-in SSH host keys, first-boot units).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The recipe file (empty for a recipe made in code); errors found while applying name it.
    pub path: PathBuf,
    /// The directory relative host paths are resolved against (the recipe file's directory).
    pub base_dir: PathBuf,
    /// Disk size in bytes (`[disk] size = "4G"`); `None` sizes the disk from the content.
    pub disk_size: Option<u64>,
    /// Extra free space in the root filesystem when sized automatically (`[disk] extra = "1G"`).
    pub extra_space: Option<u64>,
    /// The root filesystem (`[disk] filesystem`); only `"ext4"` for now.
    pub filesystem: String,
    /// Size of the EFI System Partition in bytes (`[disk] esp_size`); `None` lets the pipeline
    /// choose.
    pub esp_size: Option<u64>,
    /// Extra kernel command-line arguments (`[boot] cmdline`).
    pub cmdline: Vec<String>,
    /// Add `console=ttyS0,115200` (`[boot] serial_console`, default true).
    pub serial_console: bool,
    /// `[system] hostname`.
    pub hostname: Option<String>,
    /// `[system] locale` (`LANG`).
    pub locale: Option<String>,
    /// `[system] timezone` (a name under `/usr/share/zoneinfo`).
    pub timezone: Option<String>,
    /// `[system] lock_root`: lock root's password as `passwd -l` does.
    pub lock_root: bool,
    /// `[[users]]`, in order.
    pub users: Vec<User>,
    /// `[[files]]` and `[[directories]]`, in order (directories first).
    pub files: Vec<FileSpec>,
    /// `[units]`.
    pub units: Units,
    /// `[firstboot]`.
    pub firstboot: FirstBoot,
    /// The line of each key written in the recipe file (dotted key → 1-based line), for errors
    /// found while applying it.
    pub lines: BTreeMap<String, usize>,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            path: PathBuf::new(),
            base_dir: PathBuf::new(),
            disk_size: None,
            extra_space: None,
            filesystem: "ext4".into(),
            esp_size: None,
            cmdline: Vec::new(),
            serial_console: true,
            hostname: None,
            locale: None,
            timezone: None,
            lock_root: false,
            users: Vec::new(),
            files: Vec::new(),
            units: Units::default(),
            firstboot: FirstBoot::default(),
            lines: BTreeMap::new(),
        }
    }
}

/// Where in the recipe something was written, for errors found while applying it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// The dotted key (`users[0].groups`).
    pub key: String,
}

/// A user to add (or, if the image already has one of that name, to give keys, groups, sudo or
/// a password).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// User id; the first free one from 1000 when `None`.
    pub uid: Option<u32>,
    /// Primary group id; the uid if free, else the first free one from 1000, when `None`.
    pub gid: Option<u32>,
    /// Primary group name; by default a new group named after the user.
    pub group: Option<String>,
    /// Supplementary groups (must exist in the image or be made by an earlier user).
    pub groups: Vec<String>,
    /// Login shell; `/bin/bash` if the image has it, else `/bin/sh`, when `None`.
    pub shell: Option<String>,
    /// Home directory; `/home/<name>` when `None`.
    pub home: Option<String>,
    /// The GECOS field (full name).
    pub gecos: String,
    /// SSH public keys for `~/.ssh/authorized_keys` (inline ones, then the file's).
    pub ssh_authorized_keys: Vec<String>,
    /// Passwordless sudo (`/etc/sudoers.d/<name>`).
    pub sudo: bool,
    /// A crypt(3) password hash; `None` locks the password (`!`).
    pub password_hash: Option<String>,
    /// Where the user was written.
    pub origin: Origin,
}

/// An owner or group: a number, or a name looked up in the image's `/etc/passwd` or
/// `/etc/group` (after the recipe's users are added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A numeric id.
    Id(u32),
    /// A name.
    Name(String),
}

/// What a [`FileSpec`] puts at its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// A file with this text.
    Inline(String),
    /// A host file, or a host directory copied whole (absolute, resolved against the recipe's
    /// directory).
    Host(PathBuf),
    /// A symbolic link to this target.
    Symlink(String),
    /// An (empty, or existing) directory.
    Dir,
}

/// A file, directory or link to add to the image. Parent directories are created (0755, root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Absolute path in the image.
    pub path: String,
    /// What to put there.
    pub source: FileSource,
    /// Permission bits; by default 0644 for files, 0755 for directories, the host's mode for
    /// host files.
    pub mode: Option<u32>,
    /// Owner; root by default.
    pub owner: Option<Owner>,
    /// Group; root by default.
    pub group: Option<Owner>,
    /// Where the entry was written.
    pub origin: Origin,
}

/// `[units]`: systemd units to write, enable, disable and mask.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Units {
    /// Unit files written to `/etc/systemd/system` (name, content), before enabling.
    pub files: Vec<(String, String)>,
    /// Units to enable as `systemctl enable` does.
    pub enable: Vec<String>,
    /// Units to disable as `systemctl disable` does.
    pub disable: Vec<String>,
    /// Units to mask (`/etc/systemd/system/<unit>` → `/dev/null`).
    pub mask: Vec<String>,
}

/// `[firstboot]`: what the image does on its first boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstBoot {
    /// Grow the root partition and filesystem to the end of the disk (default true).
    pub grow_root: bool,
    /// Remove baked-in SSH host keys and generate new ones on first boot (default true).
    pub ssh_host_keys: bool,
}

impl Default for FirstBoot {
    fn default() -> Self {
        FirstBoot {
            grow_root: true,
            ssh_host_keys: true,
        }
    }
}

/// What applying a recipe needs to know about the disk being built.
#[derive(Debug, Clone)]
pub struct ApplyContext {
    /// The root partition's PARTUUID (lower-case textual GUID), for fstab.
    pub root_partuuid: String,
    /// The ESP's PARTUUID, for fstab's `/boot/efi` (or `/efi`) entry.
    pub esp_partuuid: String,
    /// SOURCE_DATE_EPOCH: timestamps of generated files.
    pub source_date_epoch: Option<i64>,
}

impl Recipe {
    /// Reads and validates `path`. Errors name the file, the line and the key.
    pub fn load(path: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        Recipe::parse(&text, path)
    }

    /// Parses and validates recipe `text` read from `path` (relative host paths are resolved
    /// against `path`'s directory; host files must exist). Errors name `path`, the line and
    /// the key.
    pub fn parse(text: &str, path: &Path) -> Result<Recipe> {
        parse::parse(text, path)
    }

    /// Where dotted `key` was written: its line, or its nearest written parent's (0 if none).
    pub fn origin(&self, key: &str) -> Origin {
        let mut k = key;
        let line = loop {
            if let Some(l) = self.lines.get(k) {
                break *l;
            }
            match k.rfind(['.', '[']) {
                Some(i) => k = &k[..i],
                None => break 0,
            }
        };
        Origin {
            line,
            key: key.to_string(),
        }
    }

    /// The kernel command line the recipe asks for: the serial console (if on), then
    /// [`Recipe::cmdline`], in order. The pipeline prepends the root device.
    pub fn kernel_cmdline(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.cmdline.len() + 1);
        if self.serial_console {
            out.push(SERIAL_CONSOLE_ARG.to_string());
        }
        out.extend(self.cmdline.iter().cloned());
        out
    }

    /// Applies the recipe to `tree`: files and directories, users, root lock, hostname, locale,
    /// timezone, unit files, first-boot units, enabled/disabled/masked units, then fstab, the
    /// empty machine-id and the removal of baked-in SSH host keys.
    pub fn apply(&self, tree: &mut Tree, ctx: &ApplyContext) -> Result<()> {
        let mut io = tree_io::Io::new(tree, ctx.source_date_epoch, &self.path);
        // Users first, so that files can be owned by them.
        users::apply(self, &mut io)?;
        files::apply(self, &mut io)?;
        system::apply(self, &mut io)?;
        for (name, content) in &self.units.files {
            io.write_file(
                &format!("/etc/systemd/system/{name}"),
                content.as_bytes().to_vec(),
                0o644,
            )?;
        }
        let firstboot_units = firstboot::apply(self, &mut io, ctx)?;
        let origin = Origin {
            line: 0,
            key: "firstboot".into(),
        };
        for unit in &firstboot_units {
            units::enable(&mut io, unit, &origin)?;
        }
        units::apply(self, &self.units, &mut io)?;
        Ok(())
    }
}
