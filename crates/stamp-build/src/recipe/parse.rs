//! `stamp.toml` to a [`Recipe`]: serde structures with `deny_unknown_fields`, then checks of
//! every value, each error naming the line and the dotted key.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{FileSource, FileSpec, FirstBoot, Origin, Owner, Recipe, Units, User};
use crate::{Error, Result};

/// Largest recipe file read (a recipe is a few kilobytes; inline files make it larger).
pub const MAX_RECIPE: usize = 16 << 20;

/// Largest `ssh_authorized_keys_file` read.
const MAX_KEYS_FILE: u64 = 1 << 20;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    #[serde(default)]
    disk: RawDisk,
    #[serde(default)]
    boot: RawBoot,
    #[serde(default)]
    system: RawSystem,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    files: Vec<RawFile>,
    #[serde(default)]
    directories: Vec<RawDir>,
    #[serde(default)]
    units: RawUnits,
    #[serde(default)]
    firstboot: RawFirstBoot,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    size: Option<toml::Value>,
    extra: Option<toml::Value>,
    filesystem: Option<String>,
    esp_size: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBoot {
    cmdline: Option<toml::Value>,
    serial_console: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSystem {
    hostname: Option<String>,
    locale: Option<String>,
    timezone: Option<String>,
    lock_root: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    uid: Option<u32>,
    gid: Option<u32>,
    group: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    shell: Option<String>,
    home: Option<String>,
    #[serde(default)]
    gecos: String,
    #[serde(default)]
    ssh_authorized_keys: Vec<String>,
    ssh_authorized_keys_file: Option<String>,
    #[serde(default)]
    sudo: bool,
    password_hash: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: String,
    content: Option<String>,
    source: Option<String>,
    symlink: Option<String>,
    mode: Option<toml::Value>,
    owner: Option<toml::Value>,
    group: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDir {
    path: String,
    mode: Option<toml::Value>,
    owner: Option<toml::Value>,
    group: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUnits {
    #[serde(default)]
    enable: Vec<String>,
    #[serde(default)]
    disable: Vec<String>,
    #[serde(default)]
    mask: Vec<String>,
    #[serde(default)]
    files: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFirstBoot {
    grow_root: Option<bool>,
    ssh_host_keys: Option<bool>,
}

/// Dotted keys and where they are: the key's span (or an array element's span).
struct Spans {
    /// (dotted key, key span, value span).
    keys: Vec<(String, Range<usize>, Range<usize>)>,
    /// Byte offsets of line starts.
    lines: Vec<usize>,
}

impl Spans {
    fn new(text: &str, table: &Spanned<DeTable<'_>>) -> Self {
        let mut keys = Vec::new();
        walk_table(table.get_ref(), "", &mut keys);
        let lines = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Spans { keys, lines }
    }

    fn line_at(&self, offset: usize) -> usize {
        self.lines.partition_point(|&s| s <= offset).max(1)
    }

    /// The line of dotted `key` (or of its nearest written parent), 0 if not written.
    fn line(&self, key: &str) -> usize {
        let mut k = key;
        loop {
            if let Some((_, ks, _)) = self.keys.iter().find(|(n, _, _)| n == k) {
                return self.line_at(ks.start);
            }
            match k.rfind(['.', '[']) {
                Some(i) => k = &k[..i],
                None => return 0,
            }
        }
    }

    /// The deepest key whose key or value span holds `offset`.
    fn key_at(&self, offset: usize) -> String {
        self.keys
            .iter()
            .filter(|(_, k, v)| k.contains(&offset) || v.contains(&offset))
            .max_by_key(|(n, _, _)| n.matches(['.', '[']).count())
            .map(|(n, _, _)| n.clone())
            .unwrap_or_default()
    }
}

fn walk_table(t: &DeTable<'_>, prefix: &str, out: &mut Vec<(String, Range<usize>, Range<usize>)>) {
    for (k, v) in t.iter() {
        let name = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.push((name.clone(), k.span(), v.span()));
        walk_value(v, &name, out);
    }
}

fn walk_value(
    v: &Spanned<DeValue<'_>>,
    name: &str,
    out: &mut Vec<(String, Range<usize>, Range<usize>)>,
) {
    match v.get_ref() {
        DeValue::Table(t) => walk_table(t, name, out),
        DeValue::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                let n = format!("{name}[{i}]");
                out.push((n.clone(), e.span(), e.span()));
                walk_value(e, &n, out);
            }
        }
        _ => {}
    }
}

/// Builds errors for one recipe file.
struct Ctx<'a> {
    path: &'a Path,
    base: PathBuf,
    spans: Spans,
}

impl Ctx<'_> {
    fn err(&self, key: &str, detail: impl Into<String>) -> Error {
        Error::Recipe {
            path: self.path.to_path_buf(),
            line: self.spans.line(key),
            key: key.to_string(),
            detail: detail.into(),
        }
    }

    fn origin(&self, key: &str) -> Origin {
        Origin {
            line: self.spans.line(key),
            key: key.to_string(),
        }
    }

    fn size(&self, key: &str, v: Option<&toml::Value>) -> Result<Option<u64>> {
        match v {
            None => Ok(None),
            Some(toml::Value::Integer(i)) => u64::try_from(*i)
                .map(Some)
                .map_err(|_| self.err(key, format!("a size cannot be negative ({i})"))),
            Some(toml::Value::String(s)) => parse_size(s).map(Some).map_err(|d| self.err(key, d)),
            Some(v) => Err(self.err(
                key,
                format!(
                    "expected a size (\"4G\", \"512M\" or bytes), found a {}",
                    v.type_str()
                ),
            )),
        }
    }

    fn mode(&self, key: &str, v: Option<&toml::Value>) -> Result<Option<u32>> {
        let m = match v {
            None => return Ok(None),
            Some(toml::Value::Integer(i)) => u32::try_from(*i).ok(),
            Some(toml::Value::String(s)) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
                .ok()
                .filter(|_| !s.is_empty()),
            Some(v) => {
                return Err(self.err(
                    key,
                    format!(
                        "expected a mode (\"0644\" or 0o644), found a {}",
                        v.type_str()
                    ),
                ));
            }
        };
        match m {
            Some(m) if m <= 0o7777 => Ok(Some(m)),
            _ => Err(self.err(
                key,
                format!(
                    "not a mode (octal, at most 7777): {}",
                    v.map(display).unwrap_or_default()
                ),
            )),
        }
    }

    fn owner(&self, key: &str, v: Option<&toml::Value>) -> Result<Option<Owner>> {
        match v {
            None => Ok(None),
            Some(toml::Value::Integer(i)) => u32::try_from(*i)
                .map(|i| Some(Owner::Id(i)))
                .map_err(|_| self.err(key, format!("not a valid id: {i}"))),
            Some(toml::Value::String(s)) => {
                if valid_name(s) {
                    Ok(Some(Owner::Name(s.clone())))
                } else {
                    Err(self.err(key, format!("not a valid user or group name: {s:?}")))
                }
            }
            Some(v) => Err(self.err(
                key,
                format!("expected a name or a number, found a {}", v.type_str()),
            )),
        }
    }

    fn image_path(&self, key: &str, p: &str) -> Result<String> {
        if !p.starts_with('/') {
            return Err(self.err(key, format!("{p:?} is not an absolute path in the image")));
        }
        if p.contains('\0') || p.split('/').any(|c| c == ".." || c.len() > 255) {
            return Err(self.err(
                key,
                format!("{p:?} is not a valid path (no '..', NUL or name over 255 bytes)"),
            ));
        }
        let trimmed = p.trim_end_matches('/');
        if trimmed.is_empty() {
            return Err(self.err(key, "the path cannot be the root directory"));
        }
        Ok(trimmed.to_string())
    }

    fn host_path(&self, key: &str, p: &str) -> Result<PathBuf> {
        if p.is_empty() {
            return Err(self.err(key, "empty host path"));
        }
        let path = self.base.join(p);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => Ok(path),
            Err(e) => Err(self.err(key, format!("host path {}: {e}", path.display()))),
        }
    }
}

fn display(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        v => format!("a {}", v.type_str()),
    }
}

/// Parses a size: bytes as an integer, or a string of digits with an optional binary suffix
/// K, M, G, T (also KiB, MB, ...: all powers of 1024, as qemu-img reads them).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, suffix) = t.split_at(digits);
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "not a size: {s:?} (a whole number with an optional K, M, G or T suffix)"
            ));
        }
    };
    let n: u64 = num.parse().map_err(|_| {
        format!("not a size: {s:?} (a whole number with an optional K, M, G or T suffix)")
    })?;
    n.checked_mul(1u64 << shift)
        .filter(|v| *v <= 1 << 60)
        .ok_or_else(|| format!("size {s:?} is too large (at most 1 EiB)"))
}

/// Returns true if and only if `s` is a valid user or group name (as useradd's default
/// NAME_REGEX, a little wider: `[a-z_][a-z0-9_.-]*$?`, at most 32 bytes).
pub fn valid_name(s: &str) -> bool {
    let body = s.strip_suffix('$').unwrap_or(s);
    !body.is_empty()
        && s.len() <= 32
        && body
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
        && body
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(&c))
}

fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// Returns true if and only if `s` is a unit name systemd accepts (`name.type`, instance
/// `name@inst.type` or template `name@.type`).
pub fn valid_unit(s: &str) -> bool {
    const TYPES: [&str; 11] = [
        "service",
        "socket",
        "target",
        "timer",
        "path",
        "mount",
        "automount",
        "swap",
        "slice",
        "scope",
        "device",
    ];
    let Some((stem, ty)) = s.rsplit_once('.') else {
        return false;
    };
    s.len() <= 255
        && TYPES.contains(&ty)
        && !stem.is_empty()
        && !stem.starts_with('@')
        && stem.matches('@').count() <= 1
        && stem
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b":-_.\\@".contains(&c))
}

/// Parses recipe `text` from `path`.
pub fn parse(text: &str, path: &Path) -> Result<Recipe> {
    let syntax = |line: usize, key: String, detail: String| Error::Recipe {
        path: path.to_path_buf(),
        line,
        key,
        detail,
    };
    if text.len() > MAX_RECIPE {
        return Err(syntax(
            0,
            String::new(),
            format!(
                "{} bytes, more than the {MAX_RECIPE} a recipe may have",
                text.len()
            ),
        ));
    }
    let table = DeTable::parse(text).map_err(|e| {
        let line = e.span().map_or(0, |s| {
            1 + text.get(..s.start).map_or(0, |t| t.matches('\n').count())
        });
        syntax(line, String::new(), first_line(e.message()))
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let cx = Ctx {
        path,
        base,
        spans: Spans::new(text, &table),
    };
    let raw: RawRecipe = toml::from_str(text).map_err(|e| {
        let (line, key) = match e.span() {
            Some(s) => (cx.spans.line_at(s.start), cx.spans.key_at(s.start)),
            None => (0, String::new()),
        };
        // serde names an unknown field in its message; name the key itself.
        syntax(line, key, first_line(e.message()))
    })?;
    convert(raw, &cx)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

fn convert(raw: RawRecipe, cx: &Ctx<'_>) -> Result<Recipe> {
    let mut r = Recipe {
        path: cx.path.to_path_buf(),
        base_dir: cx.base.clone(),
        ..Recipe::default()
    };
    r.disk_size = cx.size("disk.size", raw.disk.size.as_ref())?;
    r.extra_space = cx.size("disk.extra", raw.disk.extra.as_ref())?;
    r.esp_size = cx.size("disk.esp_size", raw.disk.esp_size.as_ref())?;
    if let Some(s) = r.esp_size
        && !(32 << 20..=4 << 30).contains(&s)
    {
        return Err(cx.err(
            "disk.esp_size",
            "the ESP must be between 32M (FAT32's minimum) and 4G",
        ));
    }
    if let Some(fs) = raw.disk.filesystem {
        if fs != "ext4" {
            return Err(cx.err(
                "disk.filesystem",
                format!("unsupported filesystem {fs:?}: only \"ext4\" is supported"),
            ));
        }
        r.filesystem = fs;
    }
    r.cmdline = match raw.boot.cmdline {
        None => Vec::new(),
        Some(toml::Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(toml::Value::Array(a)) => {
            let mut out = Vec::new();
            for (i, v) in a.into_iter().enumerate() {
                match v {
                    toml::Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => {
                        out.push(s)
                    }
                    v => {
                        return Err(cx.err(
                            &format!("boot.cmdline[{i}]"),
                            format!(
                                "expected one kernel argument without spaces, found {}",
                                display(&v)
                            ),
                        ));
                    }
                }
            }
            out
        }
        Some(v) => {
            return Err(cx.err(
                "boot.cmdline",
                format!(
                    "expected a string or an array of strings, found a {}",
                    v.type_str()
                ),
            ));
        }
    };
    if let Some(a) = r.cmdline.iter().find(|a| a.starts_with("root=")) {
        return Err(cx.err(
            "boot.cmdline",
            format!("{a:?}: stamp sets root= itself (the root partition's PARTUUID)"),
        ));
    }
    if let Some(s) = raw.boot.serial_console {
        r.serial_console = s;
    }

    if let Some(h) = raw.system.hostname {
        if !valid_hostname(&h) {
            return Err(cx.err(
                "system.hostname",
                format!("{h:?} is not a valid hostname (letters, digits, '-', dot-separated labels of at most 63)"),
            ));
        }
        r.hostname = Some(h);
    }
    if let Some(l) = raw.system.locale {
        if l.is_empty()
            || !l
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_.@-".contains(&c))
        {
            return Err(cx.err(
                "system.locale",
                format!("{l:?} is not a locale name (like \"en_US.UTF-8\" or \"C.UTF-8\")"),
            ));
        }
        r.locale = Some(l);
    }
    if let Some(tz) = raw.system.timezone {
        if tz.is_empty()
            || tz.starts_with('/')
            || tz.split('/').any(|c| c.is_empty() || c == "." || c == "..")
            || !tz
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_+-/".contains(&c))
        {
            return Err(cx.err(
                "system.timezone",
                format!("{tz:?} is not a time zone name (like \"Europe/Berlin\" or \"UTC\")"),
            ));
        }
        r.timezone = Some(tz);
    }
    r.lock_root = raw.system.lock_root.unwrap_or(false);

    let mut seen_users: HashMap<String, usize> = HashMap::new();
    for (i, u) in raw.users.into_iter().enumerate() {
        let k = format!("users[{i}]");
        r.users.push(convert_user(u, &k, cx)?);
        let name = &r.users[i].name;
        if let Some(j) = seen_users.insert(name.clone(), i) {
            return Err(cx.err(
                &format!("{k}.name"),
                format!("user {name:?} is already defined by users[{j}]"),
            ));
        }
    }

    for (i, d) in raw.directories.into_iter().enumerate() {
        let k = format!("directories[{i}]");
        r.files.push(FileSpec {
            path: cx.image_path(&format!("{k}.path"), &d.path)?,
            source: FileSource::Dir,
            mode: cx.mode(&format!("{k}.mode"), d.mode.as_ref())?,
            owner: cx.owner(&format!("{k}.owner"), d.owner.as_ref())?,
            group: cx.owner(&format!("{k}.group"), d.group.as_ref())?,
            origin: cx.origin(&k),
        });
    }
    for (i, f) in raw.files.into_iter().enumerate() {
        let k = format!("files[{i}]");
        let source = match (f.content, f.source, f.symlink) {
            (Some(c), None, None) => FileSource::Inline(c),
            (None, Some(s), None) => FileSource::Host(cx.host_path(&format!("{k}.source"), &s)?),
            (None, None, Some(t)) => {
                if t.is_empty() || t.contains('\0') || t.len() > 4095 {
                    return Err(cx.err(&format!("{k}.symlink"), "not a valid symlink target"));
                }
                FileSource::Symlink(t)
            }
            _ => {
                return Err(cx.err(
                    &k,
                    "give exactly one of content (inline text), source (a host file or directory) or symlink",
                ));
            }
        };
        r.files.push(FileSpec {
            path: cx.image_path(&format!("{k}.path"), &f.path)?,
            source,
            mode: cx.mode(&format!("{k}.mode"), f.mode.as_ref())?,
            owner: cx.owner(&format!("{k}.owner"), f.owner.as_ref())?,
            group: cx.owner(&format!("{k}.group"), f.group.as_ref())?,
            origin: cx.origin(&k),
        });
    }

    let mut units = Units::default();
    for (name, content) in raw.units.files {
        if !valid_unit(&name) {
            return Err(cx.err(
                &format!("units.files.{name}"),
                format!("{name:?} is not a unit file name (like \"app.service\")"),
            ));
        }
        units.files.push((name, content));
    }
    for (list, key, out) in [
        (raw.units.enable, "units.enable", &mut units.enable),
        (raw.units.disable, "units.disable", &mut units.disable),
        (raw.units.mask, "units.mask", &mut units.mask),
    ] {
        for (i, u) in list.into_iter().enumerate() {
            if !valid_unit(&u) {
                return Err(cx.err(
                    &format!("{key}[{i}]"),
                    format!(
                        "{u:?} is not a unit name (like \"ssh.service\" or \"getty@ttyS0.service\")"
                    ),
                ));
            }
            out.push(u);
        }
    }
    r.units = units;

    r.lines = cx
        .spans
        .keys
        .iter()
        .map(|(k, span, _)| (k.clone(), cx.spans.line_at(span.start)))
        .collect();
    r.firstboot = FirstBoot {
        grow_root: raw.firstboot.grow_root.unwrap_or(true),
        ssh_host_keys: raw.firstboot.ssh_host_keys.unwrap_or(true),
    };
    Ok(r)
}

fn convert_user(u: RawUser, k: &str, cx: &Ctx<'_>) -> Result<User> {
    if !valid_name(&u.name) {
        return Err(cx.err(
            &format!("{k}.name"),
            format!(
                "{:?} is not a valid user name ([a-z_][a-z0-9_.-]*, at most 32)",
                u.name
            ),
        ));
    }
    if let Some(g) = &u.group
        && !valid_name(g)
    {
        return Err(cx.err(
            &format!("{k}.group"),
            format!("{g:?} is not a valid group name"),
        ));
    }
    for (i, g) in u.groups.iter().enumerate() {
        if !valid_name(g) {
            return Err(cx.err(
                &format!("{k}.groups[{i}]"),
                format!("{g:?} is not a valid group name"),
            ));
        }
    }
    for (field, v) in [("shell", &u.shell), ("home", &u.home)] {
        if let Some(p) = v
            && (!p.starts_with('/') || p.contains([':', '\n']) || p.split('/').any(|c| c == ".."))
        {
            return Err(cx.err(
                &format!("{k}.{field}"),
                format!("{p:?} is not an absolute path without ':' or '..'"),
            ));
        }
    }
    if u.gecos.contains([':', '\n']) {
        return Err(cx.err(
            &format!("{k}.gecos"),
            "the GECOS field cannot hold ':' or a newline",
        ));
    }
    if let Some(h) = &u.password_hash
        && (h.is_empty() || h.contains([':', '\n']) || h.contains(char::is_whitespace))
    {
        return Err(cx.err(
            &format!("{k}.password_hash"),
            "expected a crypt(3) hash (like \"$6$salt$...\" from `openssl passwd -6`)",
        ));
    }
    let mut keys = Vec::new();
    for (i, key) in u.ssh_authorized_keys.into_iter().enumerate() {
        let key = key.trim().to_string();
        if key.is_empty() || key.contains('\n') {
            return Err(cx.err(
                &format!("{k}.ssh_authorized_keys[{i}]"),
                "expected one public key line (\"ssh-ed25519 AAAA... comment\")",
            ));
        }
        keys.push(key);
    }
    if let Some(f) = u.ssh_authorized_keys_file {
        let key = format!("{k}.ssh_authorized_keys_file");
        let p = cx.host_path(&key, &f)?;
        let meta =
            std::fs::metadata(&p).map_err(|e| cx.err(&key, format!("{}: {e}", p.display())))?;
        if !meta.is_file() || meta.len() > MAX_KEYS_FILE {
            return Err(cx.err(
                &key,
                format!(
                    "{} is not a file of at most {MAX_KEYS_FILE} bytes",
                    p.display()
                ),
            ));
        }
        let text = std::fs::read_to_string(&p)
            .map_err(|e| cx.err(&key, format!("{}: {e}", p.display())))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    Ok(User {
        name: u.name,
        uid: u.uid,
        gid: u.gid,
        group: u.group,
        groups: u.groups,
        shell: u.shell,
        home: u.home,
        gecos: u.gecos,
        ssh_authorized_keys: keys,
        sudo: u.sudo,
        password_hash: u.password_hash,
        origin: cx.origin(k),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_binary_and_bad_ones_are_refused() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("4Q").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn names_and_units_are_checked() {
        assert!(valid_name("admin") && valid_name("_apt") && valid_name("a-b.c"));
        assert!(!valid_name("Admin") && !valid_name("1x") && !valid_name("a:b") && !valid_name(""));
        assert!(valid_unit("ssh.service") && valid_unit("getty@ttyS0.service"));
        assert!(valid_unit("getty@.service"));
        assert!(!valid_unit("ssh") && !valid_unit("a/b.service") && !valid_unit("x.conf"));
        assert!(
            valid_hostname("node-1.example.com") && !valid_hostname("-x") && !valid_hostname("a_b")
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_recipe_or_an_error_never_a_panic(s in "((\\[(disk|boot|system|units|firstboot|units.files)\\]|\\[\\[(users|files|directories)\\]\\]|(size|extra|esp_size|cmdline|name|uid|gid|groups|path|content|source|symlink|mode|owner|group|enable|mask|hostname|timezone|locale|grow_root|\"a.service\") = (\"[^\"\\\\]{0,8}\"|-?[0-9]{1,20}|true|\\[\\]|\\[\"[a-z@.]{0,8}\", 1\\]|\\{\\})|.{0,6})\n){0,14}") {
            if let Ok(r) = parse(&s, Path::new("fuzz.toml")) {
                let ctx = crate::recipe::ApplyContext {
                    root_partuuid: "r".into(),
                    esp_partuuid: "e".into(),
                    source_date_epoch: None,
                };
                let _ = r.apply(&mut stamp_fs::Tree::default(), &ctx);
            }
        }
    }

    #[test]
    fn lines_and_keys_of_nested_values() {
        let text = "[disk]\nsize = \"4G\"\n\n[[users]]\nname = \"a\"\n\n[[users]]\nname = \"b\"\ngroups = [\"x\", 3]\n";
        let t = DeTable::parse(text).unwrap();
        let s = Spans::new(text, &t);
        assert_eq!(s.line("disk.size"), 2);
        assert_eq!(s.line("users[1].name"), 8);
        assert_eq!(s.line("users[1].groups[1]"), 9);
        let off = text.find('3').unwrap();
        assert_eq!(s.key_at(off), "users[1].groups[1]");
    }
}
