//! The boot harness: boots a disk under QEMU (software emulation, UEFI firmware from OVMF) and
//! watches its serial console for the strings a test expects.
//!
//! [`boot`] runs `qemu-system-x86_64 -accel tcg -m 1024 -nographic -no-reboot` with OVMF_CODE as a
//! read-only pflash, a private copy of OVMF_VARS, the disk as a virtio drive and, when asked, user
//! networking on a virtio-net card. The console (with `-nographic`, QEMU's stdout: the firmware,
//! the kernel and the getty) is captured to a file and polled. The boot ends at the first of:
//! every string of [`BootOpts::expect`] appeared **in order** (each one is looked for after the end
//! of the previous match, so `["Reached target", "login:"]` means a login prompt after a target),
//! a string of [`BootOpts::fail_on`] appeared anywhere, QEMU exited, or [`BootOpts::timeout`]
//! passed. Then QEMU's process group is killed (unless it exited by itself) and a [`BootLog`] says
//! what happened. With [`BootOpts::wait_exit`] the harness keeps waiting after the expectations
//! for QEMU to exit by itself (an application image powering off), still within the timeout.
//!
//! Tests start with `if !qemu::available() { return; }`: without qemu-system-x86_64 or OVMF they
//! are skipped locally but fail when `STAMP_REQUIRE_QEMU=1` (scripts/test.sh, CI).
//!
//! `boots_a_debian_disk_made_by_the_standard_tool_chain` (ignored: a minute of TCG, needs root)
//! proves the harness on a disk made without stamp by `benches/uefi-chain.sh`.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The firmware: (code, variables template) pairs, the first present one is used.
const OVMF: [(&str, &str); 2] = [
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
];

/// One boot at a time: two TCG guests on two cores would each take twice as long and their
/// timeouts would measure the machine's load. The wait for the lock is not part of a timeout.
static BOOT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How often the console file is polled.
const POLL: Duration = Duration::from_millis(100);

/// The most console output kept in memory; later output is dropped (and said so).
const MAX_CONSOLE: usize = 64 << 20;

/// How many console lines [`assert_booted`] shows on failure.
const TAIL_LINES: usize = 80;

/// The strings that end a boot as failed by default.
pub const DEFAULT_FAIL_ON: [&str; 4] = [
    "Kernel panic",
    "emergency mode",
    "Failed to start",
    "Give root password for maintenance",
];

/// What to boot with and what to wait for.
#[derive(Debug, Clone)]
pub struct BootOpts {
    /// Strings that must appear on the console, in this order.
    pub expect: Vec<String>,
    /// Strings that end the boot as failed as soon as one appears.
    pub fail_on: Vec<String>,
    /// The longest the boot may take (default 240 s).
    pub timeout: Duration,
    /// Adds a virtio-net card on QEMU's user networking (DHCP from 10.0.2.2, no inbound).
    pub network: bool,
    /// Guest memory in MiB (default 1024).
    pub memory_mib: u32,
    /// After every expectation was met, waits for QEMU to exit by itself (within the timeout)
    /// instead of killing it.
    pub wait_exit: bool,
    /// More QEMU arguments, appended as given.
    pub extra_args: Vec<String>,
}

impl Default for BootOpts {
    fn default() -> Self {
        BootOpts {
            expect: vec!["login:".into()],
            fail_on: DEFAULT_FAIL_ON.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(240),
            network: false,
            memory_mib: 1024,
            wait_exit: false,
            extra_args: Vec::new(),
        }
    }
}

impl BootOpts {
    /// The defaults, waiting for `expect` (in order) instead of `login:`.
    pub fn expecting(expect: &[&str]) -> Self {
        BootOpts {
            expect: expect.iter().map(|s| s.to_string()).collect(),
            ..BootOpts::default()
        }
    }
}

/// One expected string and when it appeared.
#[derive(Debug, Clone)]
pub struct Expectation {
    /// The string.
    pub text: String,
    /// Time from QEMU's start to its appearance; `None` if it never appeared.
    pub after: Option<Duration>,
}

/// Why the boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Every expectation was met (and, with `wait_exit`, QEMU exited afterwards).
    Met,
    /// A `fail_on` string appeared.
    FailedOn(String),
    /// QEMU exited before every expectation was met.
    Exited,
    /// The timeout passed.
    TimedOut,
    /// QEMU could not be started or its console not read.
    Error(String),
}

/// What happened during a boot.
#[derive(Debug)]
pub struct BootLog {
    /// The disk that was booted.
    pub disk: PathBuf,
    /// Everything the console showed (lossy UTF-8, at most 64 MiB).
    pub console: String,
    /// QEMU's standard error.
    pub stderr: String,
    /// Each expected string, in order, with the time it took to appear.
    pub expectations: Vec<Expectation>,
    /// Why the boot ended.
    pub end: End,
    /// QEMU's exit status if it exited by itself (it is killed otherwise).
    pub exit: Option<ExitStatus>,
    /// Time from QEMU's start to the end of the boot.
    pub elapsed: Duration,
}

impl BootLog {
    /// True if every expectation was met.
    pub fn all_met(&self) -> bool {
        self.expectations.iter().all(|e| e.after.is_some())
    }

    /// When `text` (one of the expectations) appeared.
    pub fn time_of(&self, text: &str) -> Option<Duration> {
        self.expectations
            .iter()
            .find(|e| e.text == text)
            .and_then(|e| e.after)
    }

    /// QEMU's exit code, if it exited by itself with one.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit.and_then(|s| s.code())
    }

    /// The last `n` lines of the console.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A summary: the end, the expectations and their times, QEMU's status.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "boot of {} ended after {:.1} s: {:?}; qemu exit: {:?}\n",
            self.disk.display(),
            self.elapsed.as_secs_f64(),
            self.end,
            self.exit
        );
        for e in &self.expectations {
            match e.after {
                Some(t) => s += &format!("  met     {:?} after {:.1} s\n", e.text, t.as_secs_f64()),
                None => s += &format!("  NOT met {:?}\n", e.text),
            }
        }
        if !self.stderr.trim().is_empty() {
            s += &format!("qemu stderr:\n{}\n", self.stderr.trim_end());
        }
        s
    }
}

/// Panics unless every expectation was met and no failure string appeared, showing the summary
/// and the last 80 lines of the console.
pub fn assert_booted(log: &BootLog) {
    if log.all_met() && log.end == End::Met {
        return;
    }
    panic!(
        "{}--- last {TAIL_LINES} console lines ---\n{}\n--- end of console ---",
        log.summary(),
        strip_escapes(&log.tail(TAIL_LINES))
    );
}

/// The firmware files (code, variables template), if installed.
pub fn ovmf() -> Option<(PathBuf, PathBuf)> {
    OVMF.iter()
        .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
        .find(|(c, v)| c.is_file() && v.is_file())
}

/// True if qemu-system-x86_64 and OVMF are installed. If not: panics when `STAMP_REQUIRE_QEMU=1`
/// (CI must not skip boot tests silently), else prints that the test is skipped.
pub fn available() -> bool {
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let missing = match (qemu, ovmf().is_some()) {
        (true, true) => return true,
        (false, true) => "qemu-system-x86_64 (apt-get install qemu-system-x86)",
        (true, false) => "OVMF firmware /usr/share/OVMF/OVMF_CODE.fd (apt-get install ovmf)",
        (false, false) => "qemu-system-x86_64 and OVMF (apt-get install qemu-system-x86 ovmf)",
    };
    let required = std::env::var("STAMP_REQUIRE_QEMU").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "boot test cannot run: {missing} is missing and STAMP_REQUIRE_QEMU=1; run scripts/install-test-deps.sh"
    );
    eprintln!("skipped: {missing} is missing; run scripts/install-test-deps.sh");
    false
}

/// A test input from `var` (which must exist when set), else `name` in the cache of
/// scripts/debian-image.sh if it exists.
fn cached_input(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var}={} does not exist", p.display());
        return Some(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let p = cache.join("stamp-dev").join(name);
    p.is_file().then_some(p)
}

/// The Debian rootfs tar with GRUB and shim: `$STAMP_DEBIAN_GRUB_TAR`, else the cache of
/// `scripts/debian-image.sh --grub`.
pub fn debian_grub_tar() -> Option<PathBuf> {
    cached_input("STAMP_DEBIAN_GRUB_TAR", "debian-grub-rootfs.tar")
}

/// The busybox application image (OCI archive): `$STAMP_APP_OCI`, else the cache of
/// `scripts/debian-image.sh --app`.
pub fn app_oci() -> Option<PathBuf> {
    cached_input("STAMP_APP_OCI", "app-oci.tar")
}

/// Kills QEMU's process group when dropped (also when a test panics mid-boot).
struct Guard(Option<Child>);

impl Guard {
    /// Kills the process group and reaps QEMU; returns its status if it had exited by itself.
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.0.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Boots `disk` (a QEMU format name: qcow2, vmdk, vpc, raw, …) and watches the console; see the
/// module's documentation. Never panics on the guest's behaviour: the result says what happened.
pub fn boot(disk: &Path, format: &str, opts: &BootOpts) -> BootLog {
    // A test that panicked while holding the lock has already killed its QEMU (the guard).
    let _one_at_a_time = BOOT_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let start = Instant::now();
    let mut log = BootLog {
        disk: disk.to_path_buf(),
        console: String::new(),
        stderr: String::new(),
        expectations: opts
            .expect
            .iter()
            .map(|t| Expectation {
                text: t.clone(),
                after: None,
            })
            .collect(),
        end: End::TimedOut,
        exit: None,
        elapsed: Duration::ZERO,
    };
    let error = |mut log: BootLog, e: String| {
        log.end = End::Error(e);
        log.elapsed = start.elapsed();
        log
    };
    let Some((code, vars_template)) = ovmf() else {
        return error(log, "no OVMF firmware".into());
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return error(log, format!("tempdir: {e}")),
    };
    let vars = dir.path().join("OVMF_VARS.fd");
    let console_path = dir.path().join("console.log");
    let stderr_path = dir.path().join("qemu.stderr");
    if let Err(e) = std::fs::copy(&vars_template, &vars) {
        return error(log, format!("copy {}: {e}", vars_template.display()));
    }
    let (Ok(console_file), Ok(stderr_file)) =
        (File::create(&console_path), File::create(&stderr_path))
    else {
        return error(log, "cannot create the console files".into());
    };

    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", &opts.memory_mib.to_string()])
        .args(["-nographic", "-no-reboot"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            code.display()
        ))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format={format}",
            // QEMU's -drive separates options with commas; a comma in a path is doubled.
            disk.display().to_string().replace(',', ",,")
        ));
    if opts.network {
        cmd.args(["-nic", "user,model=virtio-net-pci"]);
    } else {
        cmd.args(["-nic", "none"]);
    }
    cmd.args(&opts.extra_args)
        .stdin(Stdio::null())
        .stdout(console_file)
        .stderr(stderr_file)
        .process_group(0);
    let mut guard = match cmd.spawn() {
        Ok(c) => Guard(Some(c)),
        Err(e) => return error(log, format!("cannot run qemu-system-x86_64: {e}")),
    };
    let start = Instant::now();

    let mut reader = match File::open(&console_path) {
        Ok(f) => f,
        Err(e) => return error(log, format!("open {}: {e}", console_path.display())),
    };
    let mut bytes: Vec<u8> = Vec::new();
    // Where the next expectation is looked for, and how far fail_on strings were searched.
    let mut search_from = 0usize;
    let mut next = 0usize;
    let longest_fail = opts.fail_on.iter().map(String::len).max().unwrap_or(0);
    let mut fail_checked = 0usize;
    // How far the current expectation was searched (it may straddle two reads).
    let mut expect_checked = 0usize;
    loop {
        let exited = match guard.0.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status),
            _ => None,
        };
        // Read what the console got (after QEMU exited too: its last words).
        let mut chunk = Vec::new();
        let room = MAX_CONSOLE.saturating_sub(bytes.len());
        if reader.seek(SeekFrom::Start(bytes.len() as u64)).is_ok() {
            let _ = (&mut reader).take(room as u64).read_to_end(&mut chunk);
        }
        bytes.extend_from_slice(&chunk);
        let now = start.elapsed();

        while next < log.expectations.len() {
            let want = log.expectations[next].text.as_bytes();
            let from = search_from.max(expect_checked.saturating_sub(want.len()));
            match find(&bytes[from..], want) {
                Some(at) => {
                    search_from = from + at + want.len();
                    log.expectations[next].after = Some(now);
                    next += 1;
                }
                None => {
                    expect_checked = bytes.len();
                    break;
                }
            }
        }
        let fail_from = fail_checked.saturating_sub(longest_fail);
        if let Some(f) = opts
            .fail_on
            .iter()
            .find(|f| find(&bytes[fail_from..], f.as_bytes()).is_some())
        {
            log.end = End::FailedOn(f.clone());
            break;
        }
        fail_checked = bytes.len();

        let all_met = next == log.expectations.len();
        if let Some(status) = exited {
            log.exit = Some(status);
            log.end = if all_met { End::Met } else { End::Exited };
            break;
        }
        if all_met && !opts.wait_exit {
            log.end = End::Met;
            break;
        }
        if now >= opts.timeout {
            log.end = End::TimedOut;
            break;
        }
        std::thread::sleep(POLL);
    }
    log.elapsed = start.elapsed();
    if let Some(status) = guard.stop() {
        log.exit = Some(status);
    }
    if bytes.len() >= MAX_CONSOLE {
        bytes.extend_from_slice(b"\n[boot harness: console output beyond 64 MiB dropped]\n");
    }
    log.console = String::from_utf8_lossy(&bytes).into_owned();
    log.stderr = std::fs::read(&stderr_path)
        .map(|b| String::from_utf8_lossy(&b[..b.len().min(1 << 20)]).into_owned())
        .unwrap_or_default();
    log
}

/// The offset of the first `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `s` without ANSI escape sequences (systemd colours its status lines), for readable failures.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, up to the final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// A FAT disk (no partition table) whose `startup.nsh` makes OVMF's UEFI shell print
/// `STAMP-NSH` and power off: a real guest that ends by itself in about 15 s under TCG.
fn shell_script_disk(dir: &Path) -> PathBuf {
    let img = dir.join("nsh.img");
    let nsh = dir.join("startup.nsh");
    std::fs::write(&nsh, "echo STAMP-NSH\r\nreset -s\r\n").unwrap();
    let ok = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(Command::new("mkfs.vfat").arg("-C").arg(&img).arg("8192"));
    ok(Command::new("mcopy")
        .arg("-i")
        .arg(&img)
        .arg(&nsh)
        .arg("::/startup.nsh"));
    img
}

#[test]
fn harness_meets_expectations_in_order_and_waits_for_the_guest_to_power_off() {
    if !available() {
        return;
    }
    let d = super::common::tmp();
    let disk = shell_script_disk(d.path());
    let opts = BootOpts {
        wait_exit: true,
        ..BootOpts::expecting(&["UEFI Interactive Shell", "STAMP-NSH"])
    };
    let log = boot(&disk, "raw", &opts);
    assert_booted(&log);
    assert_eq!(log.exit_code(), Some(0), "{}", log.summary());
    let shell = log.time_of("UEFI Interactive Shell").unwrap();
    let marker = log.time_of("STAMP-NSH").unwrap();
    assert!(
        shell <= marker && marker <= log.elapsed,
        "{}",
        log.summary()
    );
    assert!(
        log.console.contains("BdsDxe"),
        "the firmware's output is part of the console"
    );
}

#[test]
fn harness_reports_an_expectation_seen_only_out_of_order_as_not_met() {
    if !available() {
        return;
    }
    let d = super::common::tmp();
    let disk = shell_script_disk(d.path());
    // The banner comes before the marker: after the marker it never appears, and the guest
    // powers off.
    let log = boot(
        &disk,
        "raw",
        &BootOpts::expecting(&["STAMP-NSH", "UEFI Interactive Shell"]),
    );
    assert_eq!(log.end, End::Exited, "{}", log.summary());
    assert!(log.time_of("STAMP-NSH").is_some(), "{}", log.summary());
    assert!(
        log.time_of("UEFI Interactive Shell").is_none(),
        "{}",
        log.summary()
    );
    assert_eq!(log.exit_code(), Some(0));
    let failure = std::panic::catch_unwind(|| assert_booted(&log)).unwrap_err();
    let message = failure.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("NOT met \"UEFI Interactive Shell\"")
            && message.contains("last 80 console lines")
            && message.contains("Shell> reset -s"),
        "{message}"
    );
}

#[test]
fn harness_stops_at_a_failure_string_and_kills_qemu() {
    if !available() {
        return;
    }
    let d = super::common::tmp();
    let disk = shell_script_disk(d.path());
    let opts = BootOpts {
        fail_on: vec!["Mapping table".into()],
        ..BootOpts::expecting(&["STAMP-NSH"])
    };
    let log = boot(&disk, "raw", &opts);
    assert_eq!(
        log.end,
        End::FailedOn("Mapping table".into()),
        "{}",
        log.summary()
    );
    assert!(!log.all_met());
    assert_eq!(log.exit, None, "qemu was killed, it did not exit by itself");
    assert!(!log.console.contains("STAMP-NSH"), "{}", log.summary());
}

#[test]
fn harness_times_out_and_reports_a_qemu_that_cannot_start() {
    if !available() {
        return;
    }
    let d = super::common::tmp();
    let disk = shell_script_disk(d.path());
    let opts = BootOpts {
        timeout: Duration::from_millis(500),
        ..BootOpts::expecting(&["STAMP-NSH"])
    };
    let log = boot(&disk, "raw", &opts);
    assert_eq!(log.end, End::TimedOut, "{}", log.summary());
    assert_eq!(log.exit, None);

    let missing = d.path().join("missing.qcow2");
    let log = boot(&missing, "qcow2", &BootOpts::default());
    assert_eq!(log.end, End::Exited, "{}", log.summary());
    assert_eq!(log.exit_code(), Some(1));
    assert!(log.stderr.contains("missing.qcow2"), "{}", log.summary());
}

/// The harness on a real Debian disk made without stamp (benches/uefi-chain.sh: tar -x, mke2fs -d,
/// an objcopy UKI, mkfs.vfat, sfdisk, qemu-img): it must reach the serial login prompt.
#[test]
#[ignore = "a minute of TCG boot; needs root and the Debian rootfs tar"]
fn boots_a_debian_disk_made_by_the_standard_tool_chain() {
    if !available() {
        return;
    }
    let Some(tar) = super::common::debian_tar() else {
        panic!("no Debian rootfs tar; run scripts/debian-image.sh --tar");
    };
    let d = super::common::tmp();
    let disk = d.path().join("chain.qcow2");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/uefi-chain.sh");
    let out = Command::new(&script).arg(&tar).arg(&disk).output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = boot(&disk, "qcow2", &BootOpts::default());
    assert_booted(&log);
    eprintln!("{}", log.summary());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_stripped_and_text_kept() {
        let s = "[\u{1b}[0;32m  OK  \u{1b}[0m] Reached target\r\nvm login: ";
        assert_eq!(strip_escapes(s), "[  OK  ] Reached target\nvm login: ");
    }

    #[test]
    fn find_locates_the_first_occurrence() {
        assert_eq!(find(b"abcabc", b"ca"), Some(2));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(find(b"abc", b""), Some(0));
    }
}
