//! Users and groups: `/etc/passwd`, `/etc/shadow`, `/etc/group` and `/etc/gshadow` edited as
//! `useradd`, `usermod -aG` and `passwd -l` would, home directories from `/etc/skel`, SSH
//! authorized keys and sudoers drop-ins.

use std::collections::HashSet;

use stamp_fs::{Kind, NodeId};

use super::tree_io::Io;
use super::{Recipe, User};
use crate::{Error, Result};

/// First uid and gid given to users without one (Debian's and Fedora's FIRST_UID).
const FIRST_ID: u32 = 1000;
/// Last uid and gid given automatically (LAST_UID).
const LAST_ID: u32 = 59999;
/// Most entries copied from `/etc/skel` (a bound on a skeleton directory gone wrong).
const MAX_SKEL: usize = 10_000;

/// One of the account files, as lines.
struct Db {
    path: &'static str,
    lines: Vec<String>,
    existed: bool,
}

impl Db {
    fn load(io: &Io<'_>, path: &'static str) -> Result<Db> {
        let text = io.read_text(path)?;
        Ok(Db {
            path,
            existed: text.is_some(),
            lines: text
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect(),
        })
    }

    /// Index of the line for `name`.
    fn find(&self, name: &str) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| l.split(':').next() == Some(name))
    }

    /// Field `n` (0-based) of `name`'s line, as a number; a malformed one is an error.
    fn id(&self, i: usize, n: usize) -> Result<u32> {
        let l = &self.lines[i];
        l.split(':')
            .nth(n)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| Error::BadFile {
                path: self.path.into(),
                detail: format!("line {}: field {} is not a number: {l:?}", i + 1, n + 1),
            })
    }

    /// Every id in field `n` of the lines that are not comments.
    fn ids(&self, n: usize) -> HashSet<u32> {
        self.lines
            .iter()
            .filter_map(|l| l.split(':').nth(n).and_then(|f| f.parse().ok()))
            .collect()
    }

    /// The name on the first line with id `id` in field `n`.
    fn name_of_id(&self, n: usize, id: u32) -> Option<String> {
        self.lines.iter().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(n).and_then(|v| v.parse::<u32>().ok()) == Some(id)).then(|| f[0].to_string())
        })
    }

    /// Replaces field `n` of line `i` with `f(old)`, padding missing fields.
    fn set_field(&mut self, i: usize, n: usize, f: impl FnOnce(&str) -> String) {
        let mut fields: Vec<String> = self.lines[i].split(':').map(str::to_string).collect();
        while fields.len() <= n {
            fields.push(String::new());
        }
        fields[n] = f(&fields[n]);
        self.lines[i] = fields.join(":");
    }

    /// Adds `user` to the comma-separated member list in field `n` of line `i`.
    fn add_member(&mut self, i: usize, n: usize, user: &str) {
        self.set_field(i, n, |old| {
            let mut m: Vec<&str> = old.split(',').filter(|s| !s.is_empty()).collect();
            if !m.contains(&user) {
                m.push(user);
            }
            m.join(",")
        });
    }

    fn text(&self) -> Vec<u8> {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s.into_bytes()
    }
}

/// The id of `name` in `/etc/passwd` (`file` = `/etc/passwd`) or `/etc/group`, if any.
pub fn id_of(io: &Io<'_>, file: &'static str, name: &str) -> Result<Option<u32>> {
    let db = Db::load(io, file)?;
    db.find(name).map(|i| db.id(i, 2)).transpose()
}

/// Applies `[[users]]` and `[system] lock_root`.
pub fn apply(r: &Recipe, io: &mut Io<'_>) -> Result<()> {
    if r.users.is_empty() && !r.lock_root {
        return Ok(());
    }
    let mut passwd = Db::load(io, "/etc/passwd")?;
    let mut shadow = Db::load(io, "/etc/shadow")?;
    let mut group = Db::load(io, "/etc/group")?;
    let mut gshadow = Db::load(io, "/etc/gshadow")?;
    let lastchg = io
        .epoch
        .map_or(String::new(), |e| e.div_euclid(86_400).to_string());

    for u in &r.users {
        add_user(
            r,
            io,
            u,
            &mut passwd,
            &mut shadow,
            &mut group,
            &mut gshadow,
            &lastchg,
        )?;
    }
    if r.lock_root {
        let i = match shadow.find("root") {
            Some(i) => i,
            None => {
                shadow
                    .lines
                    .insert(0, format!("root:!:{lastchg}:0:99999:7:::"));
                0
            }
        };
        shadow.set_field(i, 1, |old| {
            if old.starts_with('!') {
                old.to_string()
            } else {
                format!("!{old}")
            }
        });
    }

    // Secret files: root and the shadow group may read them, as Debian and Fedora ship them.
    let shadow_gid = group.find("shadow").map(|i| group.id(i, 2)).transpose()?;
    let secret_mode = if shadow_gid.is_some() { 0o640 } else { 0o600 };
    for (db, secret) in [
        (&passwd, false),
        (&group, false),
        (&shadow, true),
        (&gshadow, true),
    ] {
        if db.lines.is_empty() && !db.existed {
            continue;
        }
        let id = io.edit_file(db.path, db.text(), if secret { secret_mode } else { 0o644 })?;
        if secret && !db.existed {
            io.tree.entry_mut(id).gid = shadow_gid.unwrap_or(0);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn add_user(
    r: &Recipe,
    io: &mut Io<'_>,
    u: &User,
    passwd: &mut Db,
    shadow: &mut Db,
    group: &mut Db,
    gshadow: &mut Db,
    lastchg: &str,
) -> Result<()> {
    let at = |key: &str| {
        let mut o = r.origin(&format!("{}.{key}", u.origin.key));
        if o.line == 0 {
            o.line = u.origin.line;
        }
        o
    };
    let (uid, gid, home) = if let Some(i) = passwd.find(&u.name) {
        let uid = passwd.id(i, 2)?;
        if u.uid.is_some_and(|w| w != uid) {
            return Err(io.recipe_err(
                &at("uid"),
                format!(
                    "user {:?} already exists in the image with uid {uid}",
                    u.name
                ),
            ));
        }
        let gid = passwd.id(i, 3)?;
        let home = passwd.lines[i].split(':').nth(5).unwrap_or("/").to_string();
        if let Some(h) = &u.password_hash {
            let j = match shadow.find(&u.name) {
                Some(j) => j,
                None => {
                    shadow
                        .lines
                        .push(format!("{}:*:{lastchg}:0:99999:7:::", u.name));
                    shadow.lines.len() - 1
                }
            };
            shadow.set_field(j, 1, |_| h.clone());
        }
        (uid, gid, home)
    } else {
        let used = passwd.ids(2);
        let uid = match u.uid {
            Some(uid) => {
                if let Some(other) = passwd.name_of_id(2, uid) {
                    return Err(io.recipe_err(
                        &at("uid"),
                        format!("uid {uid} is already used by {other:?}"),
                    ));
                }
                uid
            }
            None => free_id(&used).ok_or_else(|| {
                io.recipe_err(&u.origin, format!("no free uid in {FIRST_ID}..={LAST_ID}"))
            })?,
        };
        let gids = group.ids(2);
        let gid = if let Some(g) = &u.group {
            let i = group.find(g).ok_or_else(|| {
                io.recipe_err(
                    &at("group"),
                    format!("no group {g:?} in the image's /etc/group"),
                )
            })?;
            group.id(i, 2)?
        } else if let Some(i) = group.find(&u.name) {
            group.id(i, 2)?
        } else if let Some(gid) = u.gid.filter(|g| gids.contains(g)) {
            gid
        } else {
            let gid = match u.gid {
                Some(g) => g,
                None if !gids.contains(&uid) => uid,
                None => free_id(&gids).ok_or_else(|| {
                    io.recipe_err(&u.origin, format!("no free gid in {FIRST_ID}..={LAST_ID}"))
                })?,
            };
            group.lines.push(format!("{}:x:{gid}:", u.name));
            gshadow.lines.push(format!("{}:!::", u.name));
            gid
        };
        let home = u
            .home
            .clone()
            .unwrap_or_else(|| format!("/home/{}", u.name));
        let shell = u.shell.clone().unwrap_or_else(|| {
            if io.is_file("/bin/bash") {
                "/bin/bash".into()
            } else {
                "/bin/sh".into()
            }
        });
        passwd.lines.push(format!(
            "{}:x:{uid}:{gid}:{}:{home}:{shell}",
            u.name, u.gecos
        ));
        let pw = u.password_hash.as_deref().unwrap_or("!");
        shadow
            .lines
            .push(format!("{}:{pw}:{lastchg}:0:99999:7:::", u.name));
        make_home(io, &home, uid, gid)?;
        (uid, gid, home)
    };

    for (j, g) in u.groups.iter().enumerate() {
        let i = group.find(g).ok_or_else(|| {
            io.recipe_err(
                &at(&format!("groups[{j}]")),
                format!("no group {g:?} in the image's /etc/group"),
            )
        })?;
        group.add_member(i, 3, &u.name);
        if let Some(i) = gshadow.find(g) {
            gshadow.add_member(i, 3, &u.name);
        }
    }

    if !u.ssh_authorized_keys.is_empty() {
        let ssh = format!("{}/.ssh", home.trim_end_matches('/'));
        let d = io.mkdir(&ssh)?;
        set_owner(io, d, 0o700, uid, gid);
        let file = format!("{ssh}/authorized_keys");
        let mut text = io.read_text(&file)?.unwrap_or_default();
        for k in &u.ssh_authorized_keys {
            if !text.lines().any(|l| l.trim() == k) {
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(k);
                text.push('\n');
            }
        }
        let f = io.edit_file(&file, text.into_bytes(), 0o600)?;
        set_owner(io, f, 0o600, uid, gid);
    }

    if u.sudo {
        if io.lookup("/usr/bin/sudo").is_none() {
            tracing::warn!(
                "user {}: sudo = true but the image has no /usr/bin/sudo; writing the sudoers rule anyway",
                u.name
            );
        }
        // sudo skips sudoers.d files whose names hold a '.'.
        let file = format!("/etc/sudoers.d/{}", u.name.replace('.', "_"));
        io.write_file(
            &file,
            format!("{} ALL=(ALL) NOPASSWD:ALL\n", u.name).into_bytes(),
            0o440,
        )?;
    }
    Ok(())
}

fn free_id(used: &HashSet<u32>) -> Option<u32> {
    (FIRST_ID..=LAST_ID).find(|i| !used.contains(i))
}

fn set_owner(io: &mut Io<'_>, id: NodeId, mode: u32, uid: u32, gid: u32) {
    let e = io.tree.entry_mut(id);
    e.mode = mode;
    e.uid = uid;
    e.gid = gid;
}

/// Creates `home` (0700, the user's) with a copy of `/etc/skel`, unless it exists.
fn make_home(io: &mut Io<'_>, home: &str, uid: u32, gid: u32) -> Result<()> {
    if io.lookup(home).is_some() {
        return Ok(());
    }
    let d = io.mkdir(home)?;
    set_owner(io, d, 0o700, uid, gid);
    let Some(skel) = io
        .lookup("/etc/skel")
        .filter(|s| io.tree.entry(*s).is_dir())
    else {
        return Ok(());
    };
    let mut todo: Vec<(NodeId, String)> = vec![(skel, home.trim_end_matches('/').to_string())];
    let mut copied = 0;
    while let Some((src, dst)) = todo.pop() {
        let kids: Vec<(String, NodeId)> = io
            .tree
            .children(src)
            .map(|(n, id)| (String::from_utf8_lossy(n).into_owned(), id))
            .collect();
        for (name, kid) in kids {
            copied += 1;
            if copied > MAX_SKEL {
                return Err(Error::BadFile {
                    path: "/etc/skel".into(),
                    detail: format!("more than {MAX_SKEL} entries to copy"),
                });
            }
            let mut e = io.tree.entry(kid).clone();
            e.uid = uid;
            e.gid = gid;
            e.mtime = io.now;
            e.atime = io.now;
            e.ctime = io.now;
            let path = format!("{dst}/{name}");
            let is_dir = matches!(e.kind, Kind::Dir);
            io.put(&path, e)?;
            if is_dir {
                todo.push((kid, path));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(text: &str) -> Db {
        Db {
            path: "/etc/group",
            lines: text.lines().map(str::to_string).collect(),
            existed: true,
        }
    }

    #[test]
    fn member_lists_and_free_ids() {
        let mut g = db("adm:x:4:\nsudo:x:27:a\nshort:x:5");
        g.add_member(0, 3, "u");
        g.add_member(1, 3, "u");
        g.add_member(1, 3, "u");
        g.add_member(2, 3, "u");
        assert_eq!(g.lines, ["adm:x:4:u", "sudo:x:27:a,u", "short:x:5:u"]);
        assert_eq!(g.ids(2), HashSet::from([4, 27, 5]));
        assert_eq!(g.name_of_id(2, 27).as_deref(), Some("sudo"));
        assert_eq!(free_id(&HashSet::from([1000, 1001, 1003])), Some(1002));
        let bad = db("x:x:notanumber:");
        assert!(matches!(bad.id(0, 2), Err(Error::BadFile { .. })));
    }
}
