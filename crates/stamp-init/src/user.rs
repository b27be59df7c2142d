//! The image's `User`: `name`, `uid`, `name:group`, `uid:gid` (any mix), resolved from the
//! image's own `/etc/passwd` and `/etc/group` the way container runtimes do: a name must be in
//! the file; a number need not be (then the group is 0 and HOME is `/`).

/// Largest `/etc/passwd` or `/etc/group` read.
pub const MAX_FILE: u64 = 4 << 20;

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Member login names.
    pub members: Vec<String>,
}

/// Parses `/etc/passwd` (`name:pw:uid:gid:gecos:home:shell`); malformed lines are skipped.
pub fn parse_passwd(text: &str) -> Vec<Passwd> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(Passwd {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group` (`name:pw:gid:member,member`); malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<Group> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(Group {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Who the app runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups (from `/etc/group` membership of the login name).
    pub groups: Vec<u32>,
    /// HOME (from passwd; `/` when the user is not in it).
    pub home: String,
}

/// Resolves `spec` against the texts of `/etc/passwd` and `/etc/group` (empty when absent).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Ids, String> {
    let users = parse_passwd(passwd);
    let groups = parse_group(group);
    let spec = spec.trim();
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entry = match u.parse::<u32>() {
        Ok(uid) => users.iter().find(|p| p.uid == uid).cloned().ok_or(uid),
        Err(_) => Ok(users
            .iter()
            .find(|p| p.name == u)
            .cloned()
            .ok_or_else(|| format!("user '{u}' is not in the image's /etc/passwd"))?),
    };
    let (uid, mut gid, home, name) = match entry {
        Ok(p) => (p.uid, p.gid, p.home, Some(p.name)),
        Err(uid) => (uid, 0, "/".to_string(), None),
    };
    if let Some(g) = g.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|x| x.name == g)
                .map(|x| x.gid)
                .ok_or_else(|| format!("group '{g}' is not in the image's /etc/group"))?,
        };
    }
    let mut sup = vec![gid];
    if let Some(name) = &name {
        for grp in &groups {
            if grp.members.iter().any(|m| m == name) && !sup.contains(&grp.gid) {
                sup.push(grp.gid);
            }
        }
    }
    let home = if home.is_empty() {
        "/".to_string()
    } else {
        home
    };
    Ok(Ids {
        uid,
        gid,
        groups: sup,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        broken:x:notanumber:0::/:/bin/sh\n\
        app:x:1000:1001:App,,,:/home/app:/bin/sh\n\
        nohome:x:1002:1002:::/bin/false\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:app,other\napp:x:1001:\naudio:x:29:app\nstaff:x:50:\n";

    #[test]
    fn empty_is_root_with_roots_home() {
        let ids = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((ids.uid, ids.gid, ids.home.as_str()), (0, 0, "/root"));
        assert_eq!(resolve("", "", "").unwrap().home, "/");
    }

    #[test]
    fn name_gives_primary_and_supplementary_groups() {
        let ids = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!(
            ids,
            Ids {
                uid: 1000,
                gid: 1001,
                groups: vec![1001, 10, 29],
                home: "/home/app".into()
            }
        );
    }

    #[test]
    fn numeric_ids_need_no_files() {
        let ids = resolve("4242:4343", "", "").unwrap();
        assert_eq!((ids.uid, ids.gid, ids.home.as_str()), (4242, 4343, "/"));
        assert_eq!(resolve("4242", "", "").unwrap().gid, 0);
        // A listed uid takes its passwd entry.
        assert_eq!(resolve("1000", PASSWD, GROUP).unwrap().home, "/home/app");
    }

    #[test]
    fn name_and_group_mix() {
        assert_eq!(resolve("app:staff", PASSWD, GROUP).unwrap().gid, 50);
        assert_eq!(resolve("1000:staff", PASSWD, GROUP).unwrap().gid, 50);
        assert_eq!(resolve("app:7", PASSWD, GROUP).unwrap().gid, 7);
        assert_eq!(resolve("nohome", PASSWD, GROUP).unwrap().home, "/");
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(
            resolve("nobody", PASSWD, GROUP)
                .unwrap_err()
                .contains("'nobody'")
        );
        assert!(
            resolve("app:nogroup", PASSWD, GROUP)
                .unwrap_err()
                .contains("'nogroup'")
        );
        assert!(resolve("broken", PASSWD, GROUP).is_err());
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert_eq!(parse_passwd("a:b\n::1:1::/:\nx:x:1:2:g:/h:/s").len(), 1);
        assert_eq!(parse_group("g:x:1\ng:x:2:\n").len(), 1);
    }
}
