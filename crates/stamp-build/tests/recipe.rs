//! The recipe against its documentation and against real tools: every example and doc snippet
//! parses, every error names its line and key, and an applied tree reads back right through
//! debugfs, systemctl, pwck, grpck, getent and visudo.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use stamp_build::Error;
use stamp_build::recipe::{ApplyContext, FileSource, Owner, Recipe};
use stamp_fs::{Content, Entry, Kind, Timestamp, Tree};

const ROOT_UUID: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
const ESP_UUID: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
const EPOCH: i64 = 1_700_000_000;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn parse(text: &str) -> Result<Recipe, Error> {
    Recipe::parse(text, Path::new("stamp.toml"))
}

fn ctx() -> ApplyContext {
    ApplyContext {
        root_partuuid: ROOT_UUID.into(),
        esp_partuuid: ESP_UUID.into(),
        source_date_epoch: Some(EPOCH),
    }
}

fn file(data: &str, mode: u32) -> Entry {
    Entry::new(
        Kind::File(Content::Bytes(Bytes::from(data.as_bytes().to_vec()))),
        mode,
        Timestamp::from_secs(5),
    )
}

fn link(target: &str) -> Entry {
    Entry::new(
        Kind::Symlink(target.as_bytes().to_vec()),
        0o777,
        Timestamp::from_secs(5),
    )
}

/// The text of the regular file at `path` (no symlinks followed).
fn text(t: &Tree, path: &str) -> String {
    let id = t
        .get(path.as_bytes())
        .unwrap_or_else(|| panic!("no {path}"));
    let Kind::File(c) = &t.entry(id).kind else {
        panic!("{path} is not a file")
    };
    let mut buf = vec![0; c.len() as usize];
    c.read_at(&mut buf, 0).unwrap();
    String::from_utf8(buf).unwrap()
}

fn target(t: &Tree, path: &str) -> String {
    let id = t
        .get(path.as_bytes())
        .unwrap_or_else(|| panic!("no {path}"));
    match &t.entry(id).kind {
        Kind::Symlink(s) => String::from_utf8(s.clone()).unwrap(),
        _ => panic!("{path} is not a symlink"),
    }
}

/// (mode, uid, gid) of `path`.
fn meta(t: &Tree, path: &str) -> (u32, u32, u32) {
    let e = t.entry(
        t.get(path.as_bytes())
            .unwrap_or_else(|| panic!("no {path}")),
    );
    (e.mode, e.uid, e.gid)
}

/// A small merged-usr image: accounts, a skeleton, unit files, sshd, systemd-repart, a zone.
fn image() -> Tree {
    let mut t = Tree::default();
    let ins = |t: &mut Tree, p: &str, e: Entry| {
        t.insert(p.as_bytes(), e).unwrap();
    };
    ins(&mut t, "usr/bin/bash", file("elf", 0o755));
    ins(&mut t, "usr/bin/ssh-keygen", file("elf", 0o755));
    ins(&mut t, "usr/bin/systemd-repart", file("elf", 0o755));
    ins(&mut t, "usr/sbin/sshd", file("elf", 0o755));
    ins(&mut t, "bin", link("usr/bin"));
    ins(&mut t, "sbin", link("usr/sbin"));
    ins(&mut t, "lib", link("usr/lib"));
    let u = "usr/lib/systemd/system";
    ins(
        &mut t,
        &format!("{u}/ssh.service"),
        file(
            "[Unit]\nDescription=ssh\n[Service]\nExecStart=/usr/sbin/sshd -D\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n",
            0o644,
        ),
    );
    ins(
        &mut t,
        &format!("{u}/getty@.service"),
        file(
            "[Service]\nExecStart=-/sbin/agetty %I\n[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
            0o644,
        ),
    );
    ins(
        &mut t,
        &format!("{u}/serial-getty@.service"),
        file(
            "[Service]\nExecStart=-/sbin/agetty %I 115200\n[Install]\nWantedBy=getty.target\n",
            0o644,
        ),
    );
    ins(
        &mut t,
        &format!("{u}/static.service"),
        file("[Service]\nExecStart=/bin/true\n", 0o644),
    );
    ins(
        &mut t,
        &format!("{u}/multi-user.target"),
        file("[Unit]\n", 0o644),
    );
    // Also= in a loop: enable and disable must stop.
    ins(
        &mut t,
        &format!("{u}/ping.service"),
        file(
            "[Install]\nWantedBy=multi-user.target\nAlso=pong.service\n",
            0o644,
        ),
    );
    ins(
        &mut t,
        &format!("{u}/pong.service"),
        file(
            "[Install]\nWantedBy=multi-user.target\nAlso=ping.service\n",
            0o644,
        ),
    );
    ins(
        &mut t,
        "etc/passwd",
        file(
            "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nold:x:1000:1000::/home/old:/bin/bash\n",
            0o644,
        ),
    );
    ins(
        &mut t,
        "etc/group",
        file(
            "root:x:0:\nadm:x:4:old\nsudo:x:27:\nshadow:x:42:\nold:x:1000:\n",
            0o644,
        ),
    );
    let mut shadow = file(
        "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nold:!:19000:0:99999:7:::\n",
        0o640,
    );
    shadow.gid = 42;
    ins(&mut t, "etc/shadow", shadow);
    let mut gshadow = file(
        "root:*::\nadm:*::old\nsudo:*::\nshadow:*::\nold:!::\n",
        0o640,
    );
    gshadow.gid = 42;
    ins(&mut t, "etc/gshadow", gshadow);
    ins(&mut t, "etc/skel/.bashrc", file("# bashrc\n", 0o644));
    ins(&mut t, "etc/skel/.config/app/x", file("x", 0o600));
    ins(&mut t, "home/old/.profile", file("", 0o644));
    ins(&mut t, "etc/ssh/sshd_config", file("", 0o644));
    ins(
        &mut t,
        "etc/ssh/ssh_host_ed25519_key",
        file("secret", 0o600),
    );
    ins(
        &mut t,
        "etc/ssh/ssh_host_ed25519_key.pub",
        file("pub", 0o644),
    );
    ins(
        &mut t,
        "etc/machine-id",
        file("0123456789abcdef0123456789abcdef\n", 0o444),
    );
    ins(
        &mut t,
        "etc/fstab",
        file(
            "# UNCONFIGURED FSTAB\n/dev/sda1 / ext4 defaults 0 1\ntmpfs /scratch tmpfs defaults 0 0\n",
            0o644,
        ),
    );
    ins(
        &mut t,
        "etc/hosts",
        file("127.0.0.1\tlocalhost\n::1\tlocalhost\n", 0o644),
    );
    ins(
        &mut t,
        "usr/share/zoneinfo/Europe/Berlin",
        file("TZif", 0o644),
    );
    t
}

fn applied(recipe: &str) -> Tree {
    let r = parse(recipe).unwrap();
    let mut t = image();
    r.apply(&mut t, &ctx()).unwrap();
    t
}

/// Asserts `e` is a recipe error at `line` whose key is `key` and whose detail holds `detail`.
#[track_caller]
fn assert_recipe_err(e: Error, line: usize, key: &str, detail: &str) {
    match &e {
        Error::Recipe {
            line: l,
            key: k,
            detail: d,
            ..
        } => {
            assert_eq!((*l, k.as_str()), (line, key), "{e}");
            assert!(d.contains(detail), "{e} does not say {detail:?}");
        }
        e => panic!("not a recipe error: {e}"),
    }
}

#[test]
fn every_example_parses() {
    let dir = workspace().join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            Recipe::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 3, "{n} examples");
    let k8s = Recipe::load(&dir.join("k8s-node.toml")).unwrap();
    assert_eq!(k8s.disk_size, Some(20 << 30));
    assert_eq!(k8s.esp_size, Some(256 << 20));
    assert_eq!(
        k8s.kernel_cmdline(),
        [
            "console=ttyS0,115200",
            "systemd.unified_cgroup_hierarchy=1",
            "quiet"
        ]
    );
    assert_eq!(k8s.users[0].uid, Some(1500));
    assert_eq!(
        k8s.users[0].ssh_authorized_keys.len(),
        1,
        "keys from files/ops.pub"
    );
    assert_eq!(k8s.units.mask, ["swap.target"]);
    assert_eq!(k8s.units.files.len(), 2);
    assert!(k8s.lock_root);
    let dev = Recipe::load(&dir.join("dev-vm.toml")).unwrap();
    assert_eq!(dev.extra_space, Some(8 << 30));
    assert_eq!(dev.cmdline, ["loglevel=4", "systemd.show_status=auto"]);
    assert_eq!(dev.files[0].owner, Some(Owner::Name("dev".into())));
    assert_eq!(dev.files[0].mode, Some(0o640));
    assert!(matches!(&dev.files[0].source, FileSource::Host(p) if p.ends_with("files/motd.txt")));
}

#[test]
fn every_snippet_of_the_docs_parses() {
    let path = workspace().join("docs/recipe.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let mut n = 0;
    let mut rest = doc.as_str();
    while let Some(i) = rest.find("```toml\n") {
        let body = &rest[i + 8..];
        let end = body.find("```").unwrap();
        Recipe::parse(&body[..end], &path)
            .unwrap_or_else(|e| panic!("snippet {n}: {e}\n{}", &body[..end]));
        n += 1;
        rest = &body[end..];
    }
    assert!(n >= 7, "{n} snippets");
}

#[test]
fn an_empty_recipe_is_the_default() {
    let r = parse("").unwrap();
    let d = Recipe {
        path: "stamp.toml".into(),
        ..Recipe::default()
    };
    assert_eq!(r, d);
    assert!(r.serial_console && r.firstboot.grow_root && r.firstboot.ssh_host_keys);
    assert_eq!(r.filesystem, "ext4");
    assert_eq!(r.kernel_cmdline(), ["console=ttyS0,115200"]);
    let r = parse("[boot]\nserial_console = false\ncmdline = \"a=1  b\"\n").unwrap();
    assert_eq!(r.kernel_cmdline(), ["a=1", "b"]);
}

#[test]
fn errors_name_the_line_and_the_key() {
    let cases: &[(&str, usize, &str, &str)] = &[
        ("[disk]\nsize = \"4Q\"\n", 2, "disk.size", "not a size"),
        (
            "[disk]\n\nextra = true\n",
            3,
            "disk.extra",
            "expected a size",
        ),
        (
            "[disk]\nfilesystem = \"xfs\"\n",
            2,
            "disk.filesystem",
            "only \"ext4\"",
        ),
        ("[disk]\nesp_size = \"1M\"\n", 2, "disk.esp_size", "32M"),
        (
            "[disk]\nsise = \"4G\"\n",
            2,
            "disk.sise",
            "unknown field `sise`",
        ),
        ("[disks]\nsize = 1\n", 1, "disks", "unknown field `disks`"),
        (
            "[boot]\ncmdline = [\"a\", 3]\n",
            2,
            "boot.cmdline[1]",
            "kernel argument",
        ),
        (
            "[boot]\ncmdline = \"root=/dev/sda\"\n",
            2,
            "boot.cmdline",
            "root=",
        ),
        (
            "[boot]\nserial_console = \"yes\"\n",
            2,
            "boot.serial_console",
            "invalid type",
        ),
        (
            "[system]\nhostname = \"bad_name\"\n",
            2,
            "system.hostname",
            "not a valid hostname",
        ),
        (
            "[system]\ntimezone = \"../etc/passwd\"\n",
            2,
            "system.timezone",
            "time zone",
        ),
        (
            "[[users]]\nname = \"a\"\n\n[[users]]\nname = \"b\"\nuid = -1\n",
            6,
            "users[1].uid",
            "invalid value",
        ),
        (
            "[[users]]\nname = \"Bad\"\n",
            2,
            "users[0].name",
            "not a valid user name",
        ),
        (
            "[[users]]\nname = \"a\"\ngroupz = []\n",
            3,
            "users[0].groupz",
            "unknown field",
        ),
        (
            "[[users]]\nname = \"a\"\n[[users]]\nname = \"a\"\n",
            4,
            "users[1].name",
            "already defined",
        ),
        (
            "[[users]]\nuid = 5\n",
            1,
            "users[0]",
            "missing field `name`",
        ),
        (
            "[[users]]\nname = \"a\"\nssh_authorized_keys_file = \"no/such/file.pub\"\n",
            3,
            "users[0].ssh_authorized_keys_file",
            "No such file",
        ),
        (
            "[[files]]\npath = \"/a\"\ncontent = \"x\"\n\n[[files]]\npath = \"/b\"\nsource = \"missing-host-file\"\n",
            7,
            "files[1].source",
            "No such file",
        ),
        (
            "[[files]]\npath = \"relative\"\ncontent = \"\"\n",
            2,
            "files[0].path",
            "absolute",
        ),
        (
            "[[files]]\npath = \"/a/../../b\"\ncontent = \"\"\n",
            2,
            "files[0].path",
            "'..'",
        ),
        (
            "[[files]]\npath = \"/a\"\ncontent = \"\"\nmode = \"0999\"\n",
            4,
            "files[0].mode",
            "not a mode",
        ),
        (
            "[[files]]\npath = \"/a\"\n",
            1,
            "files[0]",
            "exactly one of",
        ),
        (
            "[[files]]\npath = \"/a\"\ncontent = \"\"\nowner = \"Root!\"\n",
            4,
            "files[0].owner",
            "not a valid",
        ),
        (
            "[[directories]]\npath = \"/d\"\nmode = 0o17777\n",
            3,
            "directories[0].mode",
            "not a mode",
        ),
        (
            "[units]\nenable = [\"ok.service\", \"nodot\"]\n",
            2,
            "units.enable[1]",
            "not a unit name",
        ),
        (
            "[units.files]\n\"x.conf\" = \"\"\n",
            2,
            "units.files.x.conf",
            "not a unit file name",
        ),
        (
            "[firstboot]\ngrow_root = 1\n",
            2,
            "firstboot.grow_root",
            "invalid type",
        ),
    ];
    for (text, line, key, detail) in cases {
        let e = parse(text).expect_err(text);
        assert_recipe_err(e, *line, key, detail);
    }
    // A syntax error names its line.
    match parse("[disk]\nsize = \n") {
        Err(Error::Recipe { line: 2, .. }) => {}
        other => panic!("{other:?}"),
    }
    // Load names the file.
    let e = Recipe::load(Path::new("/nonexistent/stamp.toml")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/stamp.toml"), "{e}");
}

#[test]
fn every_image_gets_fstab_an_empty_machine_id_and_no_host_keys() {
    let t = applied("");
    assert_eq!(
        text(&t, "etc/fstab"),
        format!(
            "# Written by stamp.\nPARTUUID={ROOT_UUID} / ext4 rw,errors=remount-ro,x-systemd.growfs 0 1\n\
             PARTUUID={ESP_UUID} /boot/efi vfat umask=0077 0 2\ntmpfs /scratch tmpfs defaults 0 0\n"
        )
    );
    assert_eq!(text(&t, "etc/machine-id"), "");
    assert_eq!(meta(&t, "etc/machine-id"), (0o444, 0, 0));
    assert!(t.get(b"etc/ssh/ssh_host_ed25519_key").is_none());
    assert!(t.get(b"etc/ssh/ssh_host_ed25519_key.pub").is_none());
    assert!(t.get(b"etc/ssh/sshd_config").is_some());
    // First-boot units, enabled.
    let keygen = text(&t, "etc/systemd/system/stamp-ssh-keygen.service");
    assert!(
        keygen.contains("ExecStart=/usr/bin/ssh-keygen -A\n"),
        "{keygen}"
    );
    assert!(keygen.contains("Before=ssh.service"));
    assert_eq!(
        target(
            &t,
            "etc/systemd/system/multi-user.target.wants/stamp-ssh-keygen.service"
        ),
        "/etc/systemd/system/stamp-ssh-keygen.service"
    );
    let grow = text(&t, "etc/systemd/system/stamp-growroot.service");
    assert!(
        grow.contains(
            "ExecStart=/usr/bin/systemd-repart --dry-run=no --definitions=/etc/stamp/repart.d\n"
        ),
        "{grow}"
    );
    assert!(text(&t, "etc/stamp/repart.d/50-root.conf").contains("Type=root\n"));
    assert!(
        t.get(b"etc/systemd/system/local-fs.target.wants/stamp-growroot.service")
            .is_some()
    );
    assert!(t.entry(t.get(b"etc/stamp").unwrap()).is_dir());
    // Created and edited entries carry SOURCE_DATE_EPOCH.
    for p in [
        "etc/fstab",
        "etc/machine-id",
        "etc/systemd/system/stamp-growroot.service",
    ] {
        assert_eq!(
            t.entry(t.get(p.as_bytes()).unwrap()).mtime.sec,
            EPOCH,
            "{p}"
        );
    }

    // Both off: no growfs, keys kept, no units.
    let t = applied("[firstboot]\ngrow_root = false\nssh_host_keys = false\n");
    assert!(!text(&t, "etc/fstab").contains("growfs"));
    assert!(t.get(b"etc/ssh/ssh_host_ed25519_key").is_some());
    assert!(
        t.get(b"etc/systemd/system/stamp-growroot.service")
            .is_none()
    );
    assert!(
        t.get(b"etc/systemd/system/stamp-ssh-keygen.service")
            .is_none()
    );

    // Without systemd-repart but with sfdisk: the script.
    let mut t = image();
    t.remove(b"usr/bin/systemd-repart").unwrap();
    t.insert(b"usr/sbin/sfdisk", file("elf", 0o755)).unwrap();
    parse("").unwrap().apply(&mut t, &ctx()).unwrap();
    let script = text(&t, "usr/lib/stamp/growroot");
    assert!(script.contains("sfdisk --relocate gpt-bak-std"));
    assert_eq!(meta(&t, "usr/lib/stamp/growroot").0, 0o755);
    assert!(
        text(&t, "etc/systemd/system/stamp-growroot.service")
            .contains("ExecStart=/usr/lib/stamp/growroot\n")
    );
}

#[test]
fn users_are_added_as_useradd_would() {
    let t = applied(
        r#"
[system]
lock_root = true

[[users]]
name = "admin"
groups = ["adm", "sudo"]
sudo = true
gecos = "Admin"
ssh_authorized_keys = ["ssh-ed25519 AAAAkey admin@host"]

[[users]]
name = "app"
uid = 2000
group = "adm"
shell = "/usr/sbin/nologin"
home = "/srv/app"
password_hash = "$6$salt$hash"

[[users]]
name = "old"
ssh_authorized_keys = ["ssh-ed25519 AAAAold old@host"]
"#,
    );
    let passwd = text(&t, "etc/passwd");
    assert!(
        passwd.contains("\nadmin:x:1001:1001:Admin:/home/admin:/bin/bash\n"),
        "{passwd}"
    );
    assert!(
        passwd.contains("\napp:x:2000:4::/srv/app:/usr/sbin/nologin\n"),
        "{passwd}"
    );
    assert_eq!(passwd.lines().filter(|l| l.starts_with("old:")).count(), 1);
    let day = EPOCH / 86_400;
    let shadow = text(&t, "etc/shadow");
    assert!(shadow.starts_with("root:!*:19000:"), "{shadow}");
    assert!(
        shadow.contains(&format!("\nadmin:!:{day}:0:99999:7:::\n")),
        "{shadow}"
    );
    assert!(shadow.contains(&format!("\napp:$6$salt$hash:{day}:0:99999:7:::\n")));
    let group = text(&t, "etc/group");
    assert!(group.contains("\nadm:x:4:old,admin\n"), "{group}");
    assert!(group.contains("\nsudo:x:27:admin\n"));
    assert!(group.contains("\nadmin:x:1001:\n"));
    assert!(!group.contains("\napp:"), "app's primary group is adm");
    let gshadow = text(&t, "etc/gshadow");
    assert!(
        gshadow.contains("\nadm:*::old,admin\n") && gshadow.contains("\nadmin:!::\n"),
        "{gshadow}"
    );
    // Secret files keep their metadata.
    assert_eq!(meta(&t, "etc/shadow"), (0o640, 0, 42));
    assert_eq!(meta(&t, "etc/gshadow"), (0o640, 0, 42));
    // Homes from /etc/skel, the user's.
    assert_eq!(meta(&t, "home/admin"), (0o700, 1001, 1001));
    assert_eq!(meta(&t, "home/admin/.bashrc"), (0o644, 1001, 1001));
    assert_eq!(meta(&t, "home/admin/.config/app/x"), (0o600, 1001, 1001));
    assert_eq!(text(&t, "home/admin/.bashrc"), "# bashrc\n");
    assert_eq!(meta(&t, "srv/app"), (0o700, 2000, 4));
    assert_eq!(meta(&t, "home/admin/.ssh"), (0o700, 1001, 1001));
    assert_eq!(
        meta(&t, "home/admin/.ssh/authorized_keys"),
        (0o600, 1001, 1001)
    );
    assert_eq!(
        text(&t, "home/admin/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAkey admin@host\n"
    );
    // An existing user gets keys, keeps its home.
    assert_eq!(
        meta(&t, "home/old/.ssh/authorized_keys"),
        (0o600, 1000, 1000)
    );
    assert!(t.get(b"home/old/.bashrc").is_none());
    assert_eq!(
        text(&t, "etc/sudoers.d/admin"),
        "admin ALL=(ALL) NOPASSWD:ALL\n"
    );
    assert_eq!(meta(&t, "etc/sudoers.d/admin"), (0o440, 0, 0));
    assert!(t.get(b"etc/sudoers.d/app").is_none());

    // Accounts files are created when the image has none, shadow 0600 without a shadow group.
    let mut bare = Tree::default();
    parse("[[users]]\nname = \"solo\"\n")
        .unwrap()
        .apply(&mut bare, &ctx())
        .unwrap();
    assert_eq!(
        text(&bare, "etc/passwd"),
        "solo:x:1000:1000::/home/solo:/bin/sh\n"
    );
    assert_eq!(meta(&bare, "etc/shadow"), (0o600, 0, 0));
    assert_eq!(meta(&bare, "etc/passwd"), (0o644, 0, 0));
}

#[test]
fn user_errors_found_in_the_image_name_their_line() {
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "[[users]]\nname = \"a\"\ngroups = [\"adm\", \"wheel\"]\n",
            3,
            "users[0].groups[1]",
            "no group \"wheel\"",
        ),
        (
            "\n[[users]]\nname = \"a\"\ngroup = \"nope\"\n",
            4,
            "users[0].group",
            "no group \"nope\"",
        ),
        (
            "[[users]]\nname = \"a\"\nuid = 1000\n",
            3,
            "users[0].uid",
            "already used by \"old\"",
        ),
        (
            "[[users]]\nname = \"old\"\nuid = 5\n",
            3,
            "users[0].uid",
            "already exists",
        ),
        (
            "[[files]]\npath = \"/x\"\ncontent = \"\"\nowner = \"nobody2\"\n",
            4,
            "files[0].owner",
            "no owner \"nobody2\"",
        ),
        (
            "[[directories]]\npath = \"/x\"\ngroup = \"wheel\"\n",
            3,
            "directories[0].group",
            "no group",
        ),
        (
            "[units]\nenable = [\"ssh.service\",\n  \"nope.service\"]\n",
            3,
            "units.enable[1]",
            "nope.service not found",
        ),
        (
            "[units]\ndisable = [\"nope.service\"]\n",
            2,
            "units.disable[0]",
            "not found",
        ),
        (
            "[units]\nmask = [\"x.service\"]\n[units.files]\n\"x.service\" = \"\"\n",
            2,
            "units.mask[0]",
            "cannot mask",
        ),
        (
            "[system]\ntimezone = \"Mars/Olympus\"\n",
            2,
            "system.timezone",
            "no /usr/share/zoneinfo/Mars/Olympus",
        ),
    ];
    for (recipe, line, key, detail) in cases {
        let r = parse(recipe).unwrap();
        let e = r.apply(&mut image(), &ctx()).expect_err(recipe);
        assert_recipe_err(e, *line, key, detail);
    }
}

#[test]
fn files_directories_and_links_land_with_their_owner_and_mode() {
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(host.path().join("tree/sub")).unwrap();
    std::fs::write(host.path().join("tree/a.txt"), "a").unwrap();
    std::fs::write(host.path().join("tree/sub/run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        host.path().join("tree/sub/run.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("a.txt", host.path().join("tree/l")).unwrap();
    std::fs::write(host.path().join("one.conf"), "one\n").unwrap();
    let big = vec![7u8; 100_000];
    std::fs::write(host.path().join("big.bin"), &big).unwrap();
    let recipe = r#"
[[users]]
name = "svc"

[[directories]]
path = "/var/lib/svc/"
mode = "0750"
owner = "svc"
group = 27

[[files]]
path = "/etc/motd"
content = "hi\n"

[[files]]
path = "/etc/svc/one.conf"
source = "one.conf"
mode = 0o600
owner = "svc"
group = "svc"

[[files]]
path = "/opt/tree"
source = "tree"
group = "adm"

[[files]]
path = "/opt/big.bin"
source = "big.bin"

[[files]]
path = "/usr/local/bin/sh2"
symlink = "/bin/sh"

[[files]]
path = "/bin/tool"
content = "through the /bin symlink"
"#;
    let path = host.path().join("stamp.toml");
    std::fs::write(&path, recipe).unwrap();
    let r = Recipe::load(&path).unwrap();
    let mut t = image();
    r.apply(&mut t, &ctx()).unwrap();
    assert_eq!(meta(&t, "var/lib/svc"), (0o750, 1001, 27));
    assert_eq!(meta(&t, "var/lib"), (0o755, 0, 0));
    assert_eq!(text(&t, "etc/motd"), "hi\n");
    assert_eq!(meta(&t, "etc/motd"), (0o644, 0, 0));
    assert_eq!(text(&t, "etc/svc/one.conf"), "one\n");
    assert_eq!(meta(&t, "etc/svc/one.conf"), (0o600, 1001, 1001));
    assert_eq!(text(&t, "opt/tree/a.txt"), "a");
    assert_eq!(meta(&t, "opt/tree/sub/run.sh"), (0o750, 0, 4));
    assert_eq!(target(&t, "opt/tree/l"), "a.txt");
    assert_eq!(text(&t, "opt/big.bin").len(), big.len());
    assert_eq!(target(&t, "usr/local/bin/sh2"), "/bin/sh");
    assert_eq!(text(&t, "usr/bin/tool"), "through the /bin symlink");
    assert!(matches!(
        t.entry(t.get(b"bin").unwrap()).kind,
        Kind::Symlink(_)
    ));
    assert_eq!(t.entry(t.get(b"etc/motd").unwrap()).mtime.sec, EPOCH);
}

#[test]
fn units_are_enabled_disabled_and_masked_as_systemctl_does() {
    let t = applied(
        r#"
[units]
enable = ["ping.service", "ssh.service", "getty@.service", "serial-getty@ttyS1.service", "app.service", "static.service"]
mask = ["systemd-timesyncd.service"]

[units.files]
"app.service" = """
[Service]
ExecStart=/bin/true
[Install]
WantedBy=multi-user.target
RequiredBy=app.target
"""
"#,
    );
    let e = "etc/systemd/system";
    assert_eq!(
        target(&t, &format!("{e}/multi-user.target.wants/ssh.service")),
        "/lib/systemd/system/ssh.service"
    );
    assert_eq!(
        target(&t, &format!("{e}/sshd.service")),
        "/lib/systemd/system/ssh.service"
    );
    assert_eq!(
        target(&t, &format!("{e}/getty.target.wants/getty@tty1.service")),
        "/lib/systemd/system/getty@.service"
    );
    assert_eq!(
        target(
            &t,
            &format!("{e}/getty.target.wants/serial-getty@ttyS1.service")
        ),
        "/lib/systemd/system/serial-getty@.service"
    );
    assert_eq!(
        target(&t, &format!("{e}/multi-user.target.wants/app.service")),
        "/etc/systemd/system/app.service"
    );
    assert_eq!(
        target(&t, &format!("{e}/app.target.requires/app.service")),
        "/etc/systemd/system/app.service"
    );
    assert_eq!(meta(&t, &format!("{e}/app.service")), (0o644, 0, 0));
    assert_eq!(
        target(&t, &format!("{e}/systemd-timesyncd.service")),
        "/dev/null"
    );
    assert!(
        t.get(format!("{e}/multi-user.target.wants/static.service").as_bytes())
            .is_none()
    );

    // Disable undoes enable, aliases included; a template disables every instance.
    assert!(
        t.get(format!("{e}/multi-user.target.wants/pong.service").as_bytes())
            .is_some()
    );
    let r = parse("[units]\ndisable = [\"ssh.service\", \"getty@.service\", \"pong.service\"]\n")
        .unwrap();
    let mut t2 = t.clone();
    r.apply(&mut t2, &ctx()).unwrap();
    assert!(
        t2.get(format!("{e}/multi-user.target.wants/ssh.service").as_bytes())
            .is_none()
    );
    assert!(t2.get(format!("{e}/sshd.service").as_bytes()).is_none());
    assert!(
        t2.get(format!("{e}/multi-user.target.wants/ping.service").as_bytes())
            .is_none()
    );
    assert!(
        t2.get(format!("{e}/getty.target.wants/getty@tty1.service").as_bytes())
            .is_none()
    );
    assert!(
        t2.get(format!("{e}/getty.target.wants/serial-getty@ttyS1.service").as_bytes())
            .is_some()
    );
    assert!(
        t2.get(format!("{e}/multi-user.target.wants/app.service").as_bytes())
            .is_some()
    );
    assert!(t2.get(format!("{e}/app.service").as_bytes()).is_some());
}

#[test]
fn hostname_locale_and_timezone() {
    let t = applied(
        "[system]\nhostname = \"node-1.example.com\"\nlocale = \"en_US.UTF-8\"\ntimezone = \"Europe/Berlin\"\n",
    );
    assert_eq!(text(&t, "etc/hostname"), "node-1.example.com\n");
    assert_eq!(
        text(&t, "etc/hosts"),
        "127.0.0.1\tlocalhost\n127.0.1.1\tnode-1.example.com node-1\n::1\tlocalhost\n"
    );
    assert_eq!(text(&t, "etc/default/locale"), "LANG=en_US.UTF-8\n");
    assert_eq!(text(&t, "etc/locale.conf"), "LANG=en_US.UTF-8\n");
    assert_eq!(
        target(&t, "etc/localtime"),
        "../usr/share/zoneinfo/Europe/Berlin"
    );
    assert_eq!(text(&t, "etc/timezone"), "Europe/Berlin\n");
    // UTC needs no zone file.
    let t = applied("[system]\ntimezone = \"UTC\"\nhostname = \"h\"\n");
    assert!(t.get(b"etc/localtime").is_none());
    assert_eq!(text(&t, "etc/timezone"), "UTC\n");
    assert!(text(&t, "etc/hosts").contains("\n127.0.1.1\th\n"));
}

#[test]
fn applying_is_reproducible() {
    let recipe = "[[users]]\nname = \"a\"\n[units]\nenable = [\"ssh.service\"]\n";
    let a = applied(recipe);
    let b = applied(recipe);
    let wa: Vec<_> = a
        .walk()
        .into_iter()
        .map(|(p, id)| (p, format!("{:?}", a.entry(id))))
        .collect();
    let wb: Vec<_> = b
        .walk()
        .into_iter()
        .map(|(p, id)| (p, format!("{:?}", b.entry(id))))
        .collect();
    assert_eq!(wa, wb);
}

// --- Real tools --------------------------------------------------------------------------------

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let s = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), s)
}

/// debugfs reads back owners, modes and link targets of an applied tree written as ext4.
#[test]
fn debugfs_reads_back_the_applied_tree() {
    if !have("debugfs") {
        eprintln!("skipped: no debugfs");
        return;
    }
    let mut t = applied(
        "[[users]]\nname = \"admin\"\nsudo = true\nssh_authorized_keys = [\"ssh-ed25519 AAAA k\"]\n[units]\nenable = [\"ssh.service\"]\n",
    );
    t.compact();
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("root.ext4");
    let image = stamp_fs::ext4::ext4(&t, &stamp_fs::ext4::Ext4Options::default()).unwrap();
    let w = stamp_disk::create(
        &img,
        stamp_disk::Format::Raw,
        image.size,
        &Default::default(),
    )
    .unwrap();
    image.write_to(vec![w]).unwrap();
    let (ok, out) = run(Command::new("e2fsck").arg("-fn").arg(&img));
    assert!(ok, "{out}");
    let stat = |p: &str| {
        run(Command::new("debugfs")
            .arg("-R")
            .arg(format!("stat {p}"))
            .arg(&img))
        .1
    };
    let s = stat("/home/admin/.ssh/authorized_keys");
    assert!(s.contains("User:  1001   Group:  1001"), "{s}");
    assert!(s.contains("Mode:  0600"), "{s}");
    let s = stat("/home/admin/.ssh");
    assert!(
        s.contains("Type: directory") && s.contains("Mode:  0700") && s.contains("User:  1001"),
        "{s}"
    );
    let s = stat("/etc/sudoers.d/admin");
    assert!(
        s.contains("Mode:  0440") && s.contains("User:     0"),
        "{s}"
    );
    let s = stat("/etc/systemd/system/multi-user.target.wants/ssh.service");
    assert!(
        s.contains("Type: symlink") && s.contains("\"/lib/systemd/system/ssh.service\""),
        "{s}"
    );
    let s = stat("/etc/shadow");
    assert!(
        s.contains("Mode:  0640") && s.contains("Group:    42"),
        "{s}"
    );
    let s = stat("/etc/machine-id");
    assert!(s.contains("Size: 0") && s.contains("Mode:  0444"), "{s}");
}

/// Writes `t` under `dir` with owners and modes (needs root for chown).
fn extract(t: &Tree, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::lchown;
    for (p, id) in t.walk() {
        let e = t.entry(id);
        let dst = dir.join(String::from_utf8_lossy(&p).as_ref());
        match &e.kind {
            Kind::Dir => {
                std::fs::create_dir_all(&dst)?;
            }
            Kind::File(c) => {
                let mut f = std::fs::File::create(&dst)?;
                let mut off = 0;
                let mut buf = vec![0u8; 1 << 20];
                while off < c.len() {
                    let n = (c.len() - off).min(buf.len() as u64) as usize;
                    c.read_at(&mut buf[..n], off)
                        .map_err(std::io::Error::other)?;
                    std::io::Write::write_all(&mut f, &buf[..n])?;
                    off += n as u64;
                }
            }
            Kind::Symlink(s) => {
                std::os::unix::fs::symlink(String::from_utf8_lossy(s).as_ref(), &dst)?;
            }
            _ => continue,
        }
        lchown(&dst, Some(e.uid), Some(e.gid))?;
        if !matches!(e.kind, Kind::Symlink(_)) {
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(e.mode))?;
        }
    }
    Ok(())
}

/// The Debian rootfs tar: `STAMP_TEST_ROOTFS` if set (another mmdebstrap tar, for manual
/// checks), else the cached one.
fn debian_tar() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STAMP_TEST_ROOTFS") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let p = cache.join("stamp-dev/debian-rootfs.tar");
    p.exists().then_some(p)
}

/// The real Debian tree: the recipe applied, then checked by systemctl, pwck, grpck, getent and
/// visudo running against the extracted result.
#[test]
fn debian_tree_passes_systemctl_pwck_grpck_getent_and_visudo() {
    let Some(tar) = debian_tar() else {
        eprintln!(
            "skipped: no ~/.cache/stamp-dev/debian-rootfs.tar (scripts/debian-image.sh --tar)"
        );
        return;
    };
    let loaded = stamp_fs::source::load(tar.to_str().unwrap(), &Default::default()).unwrap();
    let mut t = loaded.tree;
    let recipe = r#"
[system]
hostname = "stamped"
locale = "C.UTF-8"
timezone = "UTC"
lock_root = true

[[users]]
name = "admin"
groups = ["sudo", "adm"]
sudo = true
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGa2kWSbqnM7iFYi3I9Kz2EWvFbvQb7k0Uo1f0mS3xkB admin@example"]

[[files]]
path = "/etc/motd"
content = "stamped\n"
owner = "admin"
group = "adm"

[units]
enable = ["serial-getty@ttyS0.service", "systemd-networkd.service"]
mask = ["apt-daily.timer"]
"#;
    let r = parse(recipe).unwrap();
    r.apply(&mut t, &ctx()).unwrap();
    assert_eq!(text(&t, "etc/machine-id"), "");
    assert!(text(&t, "etc/fstab").contains(&format!("PARTUUID={ROOT_UUID} / ext4")));
    assert!(
        t.get(b"etc/systemd/system/stamp-growroot.service")
            .is_some(),
        "Debian has systemd-repart"
    );

    let d = tempfile::tempdir().unwrap();
    let root = match std::env::var_os("STAMP_TEST_KEEP") {
        Some(k) => PathBuf::from(k),
        None => d.path().join("root"),
    };
    if let Err(e) = extract(&t, &root) {
        eprintln!("skipped the real-tool checks: extracting needs root ({e})");
        return;
    }
    let sc = |unit: &str| {
        run(Command::new("systemctl")
            .arg(format!("--root={}", root.display()))
            .arg("is-enabled")
            .arg(unit))
        .1
        .trim()
        .to_string()
    };
    if have("systemctl") {
        assert_eq!(sc("serial-getty@ttyS0.service"), "enabled");
        assert_eq!(sc("systemd-networkd.service"), "enabled");
        assert_eq!(sc("stamp-growroot.service"), "enabled");
        assert_eq!(sc("apt-daily.timer"), "masked");
    }
    // systemd-analyze verifies the generated unit.
    if have("systemd-analyze") {
        let (ok, out) = run(Command::new("systemd-analyze")
            .arg(format!("--root={}", root.display()))
            .arg("verify")
            .arg("/etc/systemd/system/stamp-growroot.service"));
        assert!(ok || !out.contains("stamp-growroot"), "{out}");
    }
    let (ok, out) = run(Command::new("pwck").arg("-r").arg("-R").arg(&root));
    assert!(!out.contains("admin"), "pwck: {out}");
    let _ = ok;
    let (ok, out) = run(Command::new("grpck").arg("-r").arg("-R").arg(&root));
    assert!(ok, "grpck: {out}");
    let (ok, out) = run(Command::new("chroot")
        .arg(&root)
        .args(["getent", "passwd", "admin"]));
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "admin:x:1000:1000::/home/admin:/bin/bash");
    let (ok, out) = run(Command::new("chroot").arg(&root).args(["id", "admin"]));
    assert!(
        ok && out.contains("(sudo)") && out.contains("(adm)"),
        "{out}"
    );
    let (_, out) = run(Command::new("chroot")
        .arg(&root)
        .args(["passwd", "-S", "root"]));
    assert!(out.starts_with("root L "), "root is locked: {out}");
    if have("visudo") {
        let (ok, out) = run(Command::new("visudo")
            .arg("-cf")
            .arg(root.join("etc/sudoers.d/admin")));
        assert!(ok, "visudo: {out}");
    }
    let m = std::fs::symlink_metadata(root.join("home/admin/.ssh/authorized_keys")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((m.uid(), m.mode() & 0o7777), (1000, 0o600));
}

/// The repart definition stamp-growroot gives systemd-repart, run by the host's systemd-repart
/// on a GPT disk (ESP + Discoverable Partitions root) that was then made larger: partition 2
/// must end at the new end of the disk, the ESP untouched, the GPT valid.
#[test]
fn the_growroot_repart_definition_grows_partition_2_to_the_end_of_the_disk() {
    if !have("systemd-repart") || !have("sfdisk") {
        eprintln!("skipped: no systemd-repart or sfdisk on the host");
        return;
    }
    let t = applied("");
    let d = tempfile::tempdir().unwrap();
    let defs = d.path().join("repart.d");
    std::fs::create_dir(&defs).unwrap();
    std::fs::write(
        defs.join("50-root.conf"),
        text(&t, "etc/stamp/repart.d/50-root.conf"),
    )
    .unwrap();
    let disk = d.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    let mut sf = Command::new("sfdisk")
        .arg("-q")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        sf.stdin.as_mut().unwrap(),
        b"label: gpt\nsize=64M, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nsize=100M, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n",
    )
    .unwrap();
    assert!(sf.wait().unwrap().success());
    std::fs::File::options()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(600 << 20)
        .unwrap();
    let (ok, out) = run(Command::new("systemd-repart")
        .arg("--dry-run=no")
        .arg(format!("--definitions={}", defs.display()))
        .arg(&disk));
    assert!(ok, "systemd-repart: {out}");
    let (ok, out) = run(Command::new("sfdisk").arg("--json").arg(&disk));
    assert!(ok, "{out}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let parts = j["partitiontable"]["partitions"].as_array().unwrap();
    let last_lba = j["partitiontable"]["lastlba"].as_u64().unwrap();
    assert_eq!(
        parts[0]["size"].as_u64(),
        Some((64 << 20) / 512),
        "the ESP is untouched"
    );
    let end = parts[1]["start"].as_u64().unwrap() + parts[1]["size"].as_u64().unwrap() - 1;
    assert!(
        last_lba - end < 2048,
        "partition 2 ends at {end}, the disk's last LBA is {last_lba}"
    );
    if have("sgdisk") {
        let (ok, out) = run(Command::new("sgdisk").arg("-v").arg(&disk));
        assert!(ok && out.contains("No problems found"), "{out}");
    }
}

/// Boots the real Debian tree with a recipe applied, under qemu (TCG) and OVMF, on a disk made
/// with the host's tools (sfdisk, mkfs.ext4 -d, mkfs.vfat, mtools, systemd-boot from the image)
/// and made 1 GiB larger than its partitions: on first boot the image must generate its
/// machine-id, know its hostname and user, and grow partition 2 and its filesystem to the disk.
/// A unit from the recipe prints a report on the console and powers off.
#[test]
#[ignore = "boots Debian under qemu TCG (1-3 minutes): cargo test -p stamp-build --test recipe -- --ignored"]
fn debian_boots_with_the_recipe_applied_and_grows_its_root() {
    boot_debian(false);
}

/// The same without systemd-repart in the image but with sfdisk (the host's, with the one
/// library Debian's minimal image lacks): stamp-growroot runs stamp's grow script instead.
#[test]
#[ignore = "boots Debian under qemu TCG (1-3 minutes): cargo test -p stamp-build --test recipe -- --ignored"]
fn debian_without_systemd_repart_grows_its_root_with_the_sfdisk_script() {
    boot_debian(true);
}

fn boot_debian(script: bool) {
    let Some(tar) = debian_tar() else {
        eprintln!("skipped: no Debian rootfs tar");
        return;
    };
    for tool in [
        "qemu-system-x86_64",
        "qemu-img",
        "sfdisk",
        "mkfs.ext4",
        "mkfs.vfat",
        "mcopy",
    ] {
        if !have(tool) {
            eprintln!("skipped: no {tool}");
            return;
        }
    }
    let esp_uuid = "6c3d7e1a-0b7e-4d8e-9a43-1f3f0c1c0001";
    let root_uuid = "6c3d7e1a-0b7e-4d8e-9a43-1f3f0c1c0002";
    let recipe = r#"
[system]
hostname = "stamped-vm"

[[users]]
name = "admin"
groups = ["sudo"]
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGa2kWSbqnM7iFYi3I9Kz2EWvFbvQb7k0Uo1f0mS3xkB admin@example"]

[units]
enable = ["stamp-report.service"]

[units.files]
"stamp-report.service" = """
[Unit]
Description=Report what the recipe did, then power off
After=multi-user.target stamp-growroot.service systemd-growfs-root.service

[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=/bin/sh -c 'echo REPORT machine-id=$(cat /etc/machine-id) hostname=$(hostname) growroot=$(systemctl is-active stamp-growroot.service) done=$(ls /etc/stamp/growroot.done) part=$(cat /sys/class/block/vda2/size) disk=$(cat /sys/class/block/vda/size) fs=$(df -B1 --output=size / | tail -1 | tr -d " ") user=$(id -nG admin | tr " " ,) END'
ExecStartPost=/bin/systemctl poweroff

[Install]
WantedBy=multi-user.target
"""
"#;
    let loaded = stamp_fs::source::load(tar.to_str().unwrap(), &Default::default()).unwrap();
    let mut t = loaded.tree;
    let c = ApplyContext {
        root_partuuid: root_uuid.into(),
        esp_partuuid: esp_uuid.into(),
        source_date_epoch: Some(EPOCH),
    };
    let mut recipe = recipe.to_string();
    if script {
        if !Path::new("/usr/sbin/sfdisk").exists() {
            eprintln!("skipped: no /usr/sbin/sfdisk on the host");
            return;
        }
        t.remove(b"usr/bin/systemd-repart").unwrap();
        recipe.push_str(
            "[[files]]\npath = \"/usr/sbin/sfdisk\"\nsource = \"/usr/sbin/sfdisk\"\n\
             [[files]]\npath = \"/usr/lib/x86_64-linux-gnu/libreadline.so.8\"\n\
             source = \"/lib/x86_64-linux-gnu/libreadline.so.8.2\"\n",
        );
    }
    parse(&recipe).unwrap().apply(&mut t, &c).unwrap();
    assert_eq!(
        text(&t, "etc/systemd/system/stamp-growroot.service").contains("/usr/lib/stamp/growroot"),
        script
    );
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    if let Err(e) = extract(&t, &root) {
        eprintln!("skipped: extracting needs root ({e})");
        return;
    }
    let sh = |script: &str| {
        let (ok, out) = run(Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(d.path()));
        assert!(ok, "{script}: {out}");
    };
    let esp_mib = 64;
    let root_mib = 900;
    sh(&format!(
        "mkfs.ext4 -q -F -d root -L root root.img {root_mib}M
         mkfs.vfat -F 32 -C esp.img {} >/dev/null
         mmd -i esp.img ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
         mcopy -i esp.img root/usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
         mcopy -i esp.img root/boot/vmlinuz-* ::/vmlinuz
         mcopy -i esp.img root/boot/initrd.img-* ::/initrd
         printf 'default debian.conf\\ntimeout 0\\n' > loader.conf
         printf 'title Debian\\nlinux /vmlinuz\\ninitrd /initrd\\noptions root=PARTUUID={root_uuid} rw console=ttyS0,115200\\n' > debian.conf
         mcopy -i esp.img loader.conf ::/loader/loader.conf
         mcopy -i esp.img debian.conf ::/loader/entries/debian.conf
         truncate -s {}M disk.img
         printf 'label: gpt\\nstart=2048, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={esp_uuid}\\nsize={}, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid={root_uuid}\\n' | sfdisk -q disk.img
         dd if=esp.img of=disk.img bs=1M seek=1 conv=notrunc status=none
         dd if=root.img of=disk.img bs=1M seek={} conv=notrunc status=none
         qemu-img convert -O qcow2 disk.img disk.qcow2
         qemu-img resize -q disk.qcow2 +1G
         cp /usr/share/OVMF/OVMF_VARS.fd vars.fd",
        esp_mib * 1024,
        esp_mib + root_mib + 2,
        esp_mib * 2048,
        root_mib * 2048,
        esp_mib + 1,
    ));
    let out = Command::new("timeout")
        .args([
            "600",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-nographic",
            "-no-reboot",
        ])
        .args([
            "-drive",
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
        ])
        .args(["-drive", "if=pflash,format=raw,file=vars.fd"])
        .args(["-drive", "file=disk.qcow2,if=virtio,format=qcow2"])
        .current_dir(d.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = console
        .lines()
        .find(|l| l.contains("REPORT machine-id="))
        .unwrap_or_else(|| panic!("no report on the console:\n{console}"));
    let field = |k: &str| -> String {
        report
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {report}"))
            .to_string()
    };
    eprintln!("{report}");
    let mid = field("machine-id");
    assert!(
        mid.len() == 32 && mid.bytes().all(|c| c.is_ascii_hexdigit()),
        "{report}"
    );
    assert_eq!(field("hostname"), "stamped-vm");
    assert_eq!(field("growroot"), "active", "{report}");
    assert_eq!(field("done"), "/etc/stamp/growroot.done");
    assert_eq!(field("user"), "admin,sudo");
    let part: u64 = field("part").parse().unwrap();
    let disk: u64 = field("disk").parse().unwrap();
    let start = 2048 + esp_mib * 2048;
    assert!(
        disk - (start + part) < 2048,
        "partition 2 ends {} sectors before the disk's end: {report}",
        disk - (start + part)
    );
    let fs: u64 = field("fs").parse().unwrap();
    assert!(
        fs > (root_mib + 900) << 20,
        "the filesystem did not grow: {report}"
    );
}
