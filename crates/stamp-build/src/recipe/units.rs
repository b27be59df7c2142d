//! systemd units enabled, disabled and masked the way `systemctl enable|disable|mask` does it
//! offline: the unit file's `[Install]` section (`WantedBy=`, `RequiredBy=`, `UpheldBy=`,
//! `Alias=`, `Also=`, `DefaultInstance=`) becomes symlinks under `/etc/systemd/system`.

use std::collections::HashSet;

use stamp_fs::Kind;

use super::tree_io::Io;
use super::{Origin, Recipe, Units};
use crate::Result;

/// Where systemctl looks for unit files, in its order (Debian's split-usr build lists `/lib`
/// before `/usr/lib`; both are the same directory on a merged-usr image).
const SEARCH: [&str; 4] = [
    "/etc/systemd/system",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];

/// Where `systemctl enable` writes.
const ETC: &str = "/etc/systemd/system";

/// Most units one `Also=` chain reaches.
const MAX_ALSO: usize = 64;

/// A unit's `[Install]` section.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Install {
    /// `WantedBy=`.
    pub wanted_by: Vec<String>,
    /// `RequiredBy=`.
    pub required_by: Vec<String>,
    /// `UpheldBy=`.
    pub upheld_by: Vec<String>,
    /// `Alias=`.
    pub alias: Vec<String>,
    /// `Also=`.
    pub also: Vec<String>,
    /// `DefaultInstance=`.
    pub default_instance: Option<String>,
}

impl Install {
    fn is_empty(&self) -> bool {
        self.wanted_by.is_empty()
            && self.required_by.is_empty()
            && self.upheld_by.is_empty()
            && self.alias.is_empty()
            && self.also.is_empty()
    }
}

/// Parses the `[Install]` section of unit file `text` (comments, continuation lines and empty
/// assignments that reset a list, as systemd reads them).
pub fn parse_install(text: &str) -> Install {
    let mut out = Install::default();
    let mut in_install = false;
    let mut logical = String::new();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        logical.clear();
        logical.push_str(l.trim());
        while logical.ends_with('\\') {
            logical.pop();
            logical.push(' ');
            match lines.next() {
                Some(n) => logical.push_str(n.trim()),
                None => break,
            }
        }
        let l = logical.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if l.starts_with('[') {
            in_install = l == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let list = match k.trim() {
            "WantedBy" => &mut out.wanted_by,
            "RequiredBy" => &mut out.required_by,
            "UpheldBy" => &mut out.upheld_by,
            "Alias" => &mut out.alias,
            "Also" => &mut out.also,
            "DefaultInstance" => {
                out.default_instance = (!v.is_empty()).then(|| v.to_string());
                continue;
            }
            _ => continue,
        };
        if v.is_empty() {
            list.clear();
        } else {
            list.extend(v.split_whitespace().map(str::to_string));
        }
    }
    out
}

/// `(prefix, instance, suffix)` of a unit name: `getty@tty1.service` → `("getty", Some("tty1"),
/// "service")`; a template has `Some("")`.
fn split_unit(name: &str) -> (&str, Option<&str>, &str) {
    let (stem, suffix) = name.rsplit_once('.').unwrap_or((name, ""));
    match stem.split_once('@') {
        Some((p, i)) => (p, Some(i), suffix),
        None => (stem, None, suffix),
    }
}

/// Expands the specifiers systemctl expands in `[Install]` values.
fn specifiers(v: &str, name: &str) -> String {
    let (prefix, inst, suffix) = split_unit(name);
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push_str(name),
            Some('N') => out.push_str(stem),
            Some('p') | Some('P') => out.push_str(prefix),
            Some('i') | Some('I') => out.push_str(inst.unwrap_or("")),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
        let _ = suffix;
    }
    out
}

/// The unit file for `name`: (the path systemctl would link to, the file's text). An instance
/// without its own file uses its template's. None if there is no such unit. A name that is a
/// symlink to another unit (an alias) is returned as that unit's name in `Some(real)`.
struct Found {
    path: String,
    text: String,
    real: Option<String>,
    masked: bool,
}

fn find(io: &Io<'_>, name: &str) -> Result<Option<Found>> {
    let (prefix, inst, suffix) = split_unit(name);
    let mut candidates = vec![name.to_string()];
    if inst.is_some_and(|i| !i.is_empty()) {
        candidates.push(format!("{prefix}@.{suffix}"));
    }
    for cand in &candidates {
        for dir in SEARCH {
            let path = format!("{dir}/{cand}");
            let Some((_, id)) = io.tree.resolve(path.as_bytes(), false) else {
                continue;
            };
            if let Kind::Symlink(t) = &io.tree.entry(id).kind {
                if t == b"/dev/null" {
                    return Ok(Some(Found {
                        path,
                        text: String::new(),
                        real: None,
                        masked: true,
                    }));
                }
                // An alias: the unit it names.
                let Some((canon, _)) = io.tree.resolve(path.as_bytes(), true) else {
                    continue;
                };
                let real = canon
                    .rsplit(|c| *c == b'/')
                    .next()
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .unwrap_or_default();
                if real != *cand {
                    let real = if cand == name {
                        real
                    } else {
                        // An aliased template: keep the instance.
                        let (rp, _, rs) = split_unit(&real);
                        format!("{rp}@{}.{rs}", inst.unwrap_or(""))
                    };
                    return Ok(Some(Found {
                        path,
                        text: String::new(),
                        real: Some(real),
                        masked: false,
                    }));
                }
            }
            if let Some(text) = io.read_text(&path)? {
                return Ok(Some(Found {
                    path,
                    text,
                    real: None,
                    masked: false,
                }));
            }
        }
    }
    Ok(None)
}

/// Records a visit of `name` while following Also=: false if it was seen already, an error
/// past [`MAX_ALSO`] units.
fn first_visit(
    io: &Io<'_>,
    name: &str,
    origin: &Origin,
    seen: &mut HashSet<String>,
) -> Result<bool> {
    if !seen.insert(name.to_string()) {
        return Ok(false);
    }
    if seen.len() > MAX_ALSO {
        return Err(io.recipe_err(
            origin,
            format!("{name}: more than {MAX_ALSO} units through Also="),
        ));
    }
    Ok(true)
}

/// Enables `name` as `systemctl enable` does; `origin` is named in errors.
pub fn enable(io: &mut Io<'_>, name: &str, origin: &Origin) -> Result<()> {
    let mut seen = HashSet::new();
    enable_one(io, name, origin, &mut seen)
}

fn enable_one(
    io: &mut Io<'_>,
    name: &str,
    origin: &Origin,
    seen: &mut HashSet<String>,
) -> Result<()> {
    if !first_visit(io, name, origin, seen)? {
        return Ok(());
    }
    let found = find(io, name)?.ok_or_else(|| {
        io.recipe_err(
            origin,
            format!("unit {name} not found in the image ({})", SEARCH.join(", ")),
        )
    })?;
    if found.masked {
        return Err(io.recipe_err(origin, format!("unit {name} is masked ({})", found.path)));
    }
    if let Some(real) = found.real {
        return enable_one(io, &real, origin, seen);
    }
    let install = parse_install(&found.text);
    if install.is_empty() {
        tracing::warn!(
            "unit {name} has no [Install] section (it is static or pulled in by others); nothing to enable"
        );
        return Ok(());
    }
    let (prefix, inst, suffix) = split_unit(name);
    let name = match (inst, &install.default_instance) {
        (Some(""), Some(d)) => format!("{prefix}@{d}.{suffix}"),
        _ => name.to_string(),
    };
    let template_only = split_unit(&name).1 == Some("");
    for (list, dir) in [
        (&install.wanted_by, "wants"),
        (&install.required_by, "requires"),
        (&install.upheld_by, "upholds"),
    ] {
        for t in list {
            if template_only {
                tracing::warn!(
                    "unit {name} is a template without DefaultInstance=; not linked into {t}"
                );
                continue;
            }
            let t = specifiers(t, &name);
            io.mkdir(&format!("{ETC}/{t}.{dir}"))?;
            io.symlink(&format!("{ETC}/{t}.{dir}/{name}"), &found.path)?;
        }
    }
    for a in &install.alias {
        let a = specifiers(a, &name);
        if !super::parse::valid_unit(&a) || a == name {
            continue;
        }
        io.symlink(&format!("{ETC}/{a}"), &found.path)?;
    }
    for also in &install.also {
        let also = specifiers(also, &name);
        enable_one(io, &also, origin, seen)?;
    }
    Ok(())
}

/// Disables `name` as `systemctl disable` does: removes the symlinks in `/etc/systemd/system`
/// (and its `.wants`/`.requires`/`.upholds` directories) named after it or its aliases; a
/// template without instance disables every instance.
pub fn disable(io: &mut Io<'_>, name: &str, origin: &Origin) -> Result<()> {
    let mut seen = HashSet::new();
    disable_one(io, name, origin, &mut seen)
}

fn disable_one(
    io: &mut Io<'_>,
    name: &str,
    origin: &Origin,
    seen: &mut HashSet<String>,
) -> Result<()> {
    if !first_visit(io, name, origin, seen)? {
        return Ok(());
    }
    let found = find(io, name)?
        .ok_or_else(|| io.recipe_err(origin, format!("unit {name} not found in the image")))?;
    let install = parse_install(&found.text);
    let mut names: HashSet<String> = HashSet::from([name.to_string()]);
    names.extend(install.alias.iter().map(|a| specifiers(a, name)));
    if let Some(real) = &found.real {
        names.insert(real.clone());
    }
    let (prefix, inst, suffix) = split_unit(name);
    let matches = |n: &str| {
        names.contains(n)
            || (inst == Some("") && {
                let (p, i, s) = split_unit(n);
                p == prefix && i.is_some() && s == suffix
            })
    };
    let mut doomed = Vec::new();
    for (entry, id) in io.list(ETC) {
        let path = format!("{ETC}/{entry}");
        let is_link_dir = [".wants", ".requires", ".upholds"]
            .iter()
            .any(|s| entry.ends_with(s));
        if is_link_dir && io.tree.entry(id).is_dir() {
            for (n, kid) in io.list(&path) {
                if matches!(io.tree.entry(kid).kind, Kind::Symlink(_)) && matches(&n) {
                    doomed.push(format!("{path}/{n}"));
                }
            }
        } else if let Kind::Symlink(t) = &io.tree.entry(id).kind
            && t != b"/dev/null"
            && matches(&entry)
            && !(found.real.is_none() && entry == name && found.path == path)
        {
            doomed.push(path);
        }
    }
    for p in doomed {
        io.remove(&p)?;
    }
    for also in &install.also {
        disable_one(io, &specifiers(also, name), origin, seen)?;
    }
    Ok(())
}

/// Masks `name`: `/etc/systemd/system/<name>` → `/dev/null`. A unit file of that name in
/// `/etc/systemd/system` is an error, as systemctl refuses it.
pub fn mask(io: &mut Io<'_>, name: &str, origin: &Origin) -> Result<()> {
    let path = format!("{ETC}/{name}");
    if let Some((_, id)) = io.tree.resolve(path.as_bytes(), false)
        && !matches!(io.tree.entry(id).kind, Kind::Symlink(_))
    {
        return Err(io.recipe_err(
            origin,
            format!("cannot mask {name}: {path} is a unit file, not a link"),
        ));
    }
    io.symlink(&path, "/dev/null")?;
    Ok(())
}

/// Applies `[units]` enable, disable and mask lists, in that order.
pub fn apply(r: &Recipe, units: &Units, io: &mut Io<'_>) -> Result<()> {
    for (i, u) in units.enable.iter().enumerate() {
        enable(io, u, &r.origin(&format!("units.enable[{i}]")))?;
    }
    for (i, u) in units.disable.iter().enumerate() {
        disable(io, u, &r.origin(&format!("units.disable[{i}]")))?;
    }
    for (i, u) in units.mask.iter().enumerate() {
        mask(io, u, &r.origin(&format!("units.mask[{i}]")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_sections_read_as_systemd_reads_them() {
        let i = parse_install(
            "[Unit]\nWantedBy=nope.target\n[Install]\nWantedBy=a.target \\\n  b.target\n# c\nAlias=x.service\nAlias=\nAlias=y.service\nDefaultInstance=tty1\n[Service]\nAlso=z\n",
        );
        assert_eq!(i.wanted_by, ["a.target", "b.target"]);
        assert_eq!(i.alias, ["y.service"]);
        assert_eq!(i.default_instance.as_deref(), Some("tty1"));
        assert!(i.also.is_empty());
        assert_eq!(specifiers("%p-%i.%%", "getty@tty1.service"), "getty-tty1.%");
    }
}
