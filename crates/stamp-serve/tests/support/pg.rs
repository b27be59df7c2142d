//! A private PostgreSQL cluster for tests, and a fresh database in it per call.
//!
//! [`database`] returns the URL of a new, empty database. The cluster lives in
//! `$TMPDIR/stamp-test-pg-UID` (or `$STAMP_TEST_PG_DIR`): made by `initdb` the first time,
//! started with `pg_ctl` when it is not running, and left running for the next test binary
//! and the next run (like a system service; `pg_ctl -D DIR/data stop` stops it). It listens
//! only on a Unix socket in `DIR/sock` and trusts local connections as `postgres`; it runs
//! with fsync off (tests kill `stamp serve`, never the database). When the tests run as root,
//! the cluster runs as the `postgres` user (PostgreSQL refuses to run as root).
//!
//! Databases are named `stamp_t_PID_N`; those of test processes that are gone are dropped
//! when a process first asks for one.
//!
//! Without PostgreSQL's server binaries (Debian's `postgresql` package; `$STAMP_PG_BINDIR`
//! overrides where they are looked for), [`database`] prints why and returns `None`: the
//! caller skips. With `STAMP_REQUIRE_POSTGRES=1` it panics instead, as it does when the
//! binaries are there but the cluster cannot be made or started.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The running cluster: its socket directory.
struct Cluster {
    socket_dir: PathBuf,
}

/// The cluster, or why PostgreSQL is not installed.
static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The URL of a fresh, empty database (`postgresql://postgres@%2F…sock/stamp_t_PID_N`), or
/// `None` (after printing why) when PostgreSQL is not installed.
pub fn database() -> Option<String> {
    let cluster = match CLUSTER.get_or_init(|| {
        // Not installed: skip. Installed but failing to start: a failure, not a skip.
        let bin = bin_dir()?;
        Ok(start(&bin).unwrap_or_else(|e| panic!("starting the test PostgreSQL cluster: {e}")))
    }) {
        Ok(c) => c,
        Err(why) => {
            if std::env::var_os("STAMP_REQUIRE_POSTGRES").is_some_and(|v| v == "1") {
                panic!("PostgreSQL is required (STAMP_REQUIRE_POSTGRES=1): {why}");
            }
            eprintln!("skipping the PostgreSQL test: {why}");
            return None;
        }
    };
    let name = format!(
        "stamp_t_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let mut admin = connect(&cluster.socket_dir, "postgres");
    // CREATE DATABASE copies template1, which concurrent creates may not share: one at a time
    // (an advisory lock, as test processes may run side by side).
    let create = format!("CREATE DATABASE {name}");
    admin
        .execute("SELECT pg_advisory_lock(7357)", &[])
        .and_then(|_| admin.batch_execute(&create))
        .and_then(|_| admin.execute("SELECT pg_advisory_unlock(7357)", &[]))
        .unwrap_or_else(|e| panic!("creating database {name}: {e}: {:?}", e.as_db_error()));
    Some(url(&cluster.socket_dir, &name))
}

/// The URL of database `db` on the socket in `socket_dir`.
pub fn url(socket_dir: &Path, db: &str) -> String {
    let mut host = String::new();
    for b in socket_dir.as_os_str().as_encoded_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => host.push(*b as char),
            _ => host.push_str(&format!("%{b:02X}")),
        }
    }
    format!("postgresql://postgres@{host}/{db}")
}

fn connect(socket_dir: &Path, db: &str) -> postgres::Client {
    postgres::Client::connect(&url(socket_dir, db), postgres::NoTls)
        .unwrap_or_else(|e| panic!("connecting to the test cluster in {socket_dir:?}: {e}"))
}

/// The directory with `initdb` and `pg_ctl`: `$STAMP_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("STAMP_PG_BINDIR") {
        return Ok(PathBuf::from(d));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| {
            "PostgreSQL is not installed (/usr/lib/postgresql is missing; \
             scripts/install-test-deps.sh installs it)"
                .to_string()
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(|| {
        "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb; \
         scripts/install-test-deps.sh installs it)"
            .to_string()
    })
}

/// `(uid, gid)` of the `postgres` user, from /etc/passwd.
fn postgres_user() -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == "postgres")
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        })
        .flatten()
        .ok_or_else(|| "running as root and there is no postgres user to run PostgreSQL".into())
}

/// Runs a server binary, as `run_as` if given; its output goes to the error on failure.
fn run(bin: &Path, args: &[&std::ffi::OsStr], run_as: Option<(u32, u32)>) -> Result<(), String> {
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir("/");
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {:?}: {}\n{}{}",
            bin.display(),
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Makes (once) and starts (if needed) the cluster, under a lock shared with other test
/// processes, and drops the databases of test processes that are gone.
fn start(bin: &Path) -> Result<Cluster, String> {
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| format!("/proc/self: {e}"))?;
    let run_as = if euid == 0 {
        Some(postgres_user()?)
    } else {
        None
    };
    let base = match std::env::var_os("STAMP_TEST_PG_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("stamp-test-pg-{euid}")),
    };
    let lock_path = base.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;

    let data = base.join("data");
    let sock = base.join("sock");
    if !data.join("PG_VERSION").exists() {
        // A first run, or one interrupted before initdb finished: start over.
        let _ = std::fs::remove_dir_all(&base);
        for d in [&base, &sock] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(d, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", d.display()))?;
            }
        }
        run(
            &bin.join("initdb"),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
            run_as,
        )?;
        let conf = format!(
            "\n# stamp tests: a private cluster on a Unix socket only\n\
             listen_addresses = ''\n\
             unix_socket_directories = '{}'\n\
             max_connections = 200\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n",
            sock.display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path)
            .map_err(|e| format!("{}: {e}", conf_path.display()))?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).map_err(|e| format!("{}: {e}", conf_path.display()))?;
    }
    let running = run(
        &bin.join("pg_ctl"),
        &["-D".as_ref(), data.as_os_str(), "status".as_ref()],
        run_as,
    )
    .is_ok();
    if !running {
        let log = base.join("server.log");
        run(
            &bin.join("pg_ctl"),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
            run_as,
        )?;
    }
    drop_stale_databases(&sock);
    drop(lock);
    Ok(Cluster { socket_dir: sock })
}

/// Drops `stamp_t_PID_N` databases whose test process is gone.
fn drop_stale_databases(sock: &Path) {
    let mut admin = connect(sock, "postgres");
    let names: Vec<String> = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'stamp\\_t\\_%'",
            &[],
        )
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    for name in names {
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}
