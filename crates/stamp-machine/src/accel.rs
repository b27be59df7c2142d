//! Choosing QEMU's accelerator: KVM only when it really works. `/dev/kvm` can exist and open
//! while the CPU exposes no virtualization extensions and a KVM guest hangs at its first
//! instruction, so KVM is used only when the CPU flags say so and a probe guest (a 512-byte
//! boot sector that prints a marker on the serial port) runs under it within a few seconds.
//! The probe's result is cached per boot of the host.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How QEMU runs the guest's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation (slow, works everywhere).
    Tcg,
}

impl Accel {
    /// QEMU's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the probe prints.
const MARKER: &[u8] = b"KVMOK";

/// How long the probe guest may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A boot sector that prints [`MARKER`] on COM1 and halts.
pub fn probe_sector() -> [u8; 512] {
    let mut s = [0u8; 512];
    let code: [u8; 22] = [
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xBE, 0x16, 0x7C, // mov si, 0x7c16 (the message)
        0xAC, // .loop: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz .done
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp .loop
        0xFA, // .done: cli
        0xF4, // hlt
        0xEB, 0xFC, // jmp .done
    ];
    s[..code.len()].copy_from_slice(&code);
    s[code.len()..code.len() + MARKER.len()].copy_from_slice(MARKER);
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

/// Picks the accelerator for `qemu`, probing KVM once per host boot (the result is kept in
/// `cache_dir`). Returns the accelerator and, for TCG, why KVM is not used.
pub fn choose(qemu: &Path, cache_dir: &Path) -> (Accel, Option<String>) {
    if let Err(why) = kvm_usable() {
        return (Accel::Tcg, Some(why));
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let cache = cache_dir.join("kvm-probe");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some((id, result)) = text.split_once('\n') {
            if id == boot_id.trim() {
                return if result.trim() == "ok" {
                    (Accel::Kvm, None)
                } else {
                    (Accel::Tcg, Some(result.trim().to_string()))
                };
            }
        }
    }
    let result = match run_probe(qemu, Accel::Kvm, cache_dir) {
        Ok(()) => "ok".to_string(),
        Err(why) => format!("KVM is present but a probe guest did not run under it ({why})"),
    };
    let _ = std::fs::create_dir_all(cache_dir);
    let _ = std::fs::write(&cache, format!("{}\n{result}\n", boot_id.trim()));
    if result == "ok" {
        (Accel::Kvm, None)
    } else {
        (Accel::Tcg, Some(result))
    }
}

/// Whether the CPU exposes vmx/svm and /dev/kvm opens for reading and writing.
fn kvm_usable() -> std::result::Result<(), String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    if !flags.split_whitespace().any(|f| f == "vmx" || f == "svm") {
        return Err("the CPU exposes no virtualization extensions (vmx/svm)".into());
    }
    std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm cannot be used: {e}"))
}

/// Boots the probe sector under `accel` and waits for its marker on the serial port.
pub fn run_probe(qemu: &Path, accel: Accel, dir: &Path) -> std::result::Result<(), String> {
    let work = tempfile::Builder::new()
        .prefix("kvm-probe")
        .tempdir_in(dir)
        .or_else(|_| tempfile::tempdir())
        .map_err(|e| format!("cannot make a probe directory: {e}"))?;
    let disk = work.path().join("probe.img");
    let out = work.path().join("serial.out");
    std::fs::write(&disk, probe_sector()).map_err(|e| format!("cannot write the probe: {e}"))?;
    let mut child = Command::new(qemu)
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-accel", accel.as_str(), "-m", "16"])
        .arg("-serial")
        .arg(format!("file:{}", out.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let end = Instant::now() + PROBE_TIMEOUT;
    let found = loop {
        let text = std::fs::read(&out).unwrap_or_default();
        if text.windows(MARKER.len()).any(|w| w == MARKER) {
            break true;
        }
        if Instant::now() >= end || child.try_wait().ok().flatten().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    if found {
        Ok(())
    } else {
        Err(format!("no output within {}s", PROBE_TIMEOUT.as_secs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_sector_runs_under_tcg() {
        let Some(qemu) = crate::driver::which("qemu-system-x86_64") else {
            eprintln!("qemu-system-x86_64 not installed: skipped");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        run_probe(&qemu, Accel::Tcg, d.path()).unwrap();
    }

    #[test]
    fn a_sector_without_the_marker_fails_the_probe() {
        // The probe's check is real: a qemu that never prints fails it.
        let d = tempfile::tempdir().unwrap();
        let e = run_probe(Path::new("/bin/true"), Accel::Tcg, d.path()).unwrap_err();
        assert!(e.contains("no output"), "{e}");
    }

    #[test]
    fn choice_is_explained_when_tcg() {
        let d = tempfile::tempdir().unwrap();
        let (accel, why) = choose(Path::new("/nonexistent/qemu"), d.path());
        if accel == Accel::Tcg {
            assert!(why.is_some());
        }
    }
}
