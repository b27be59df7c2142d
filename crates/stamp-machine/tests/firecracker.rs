//! The Firecracker driver under the real runtime ([`Local::run_foreground`], the monitor), with
//! a fake `firecracker`: a Python script that serves the API socket as Firecracker does
//! (204 No Content, 400 with a `fault_message`), records each request, writes a "console" on
//! stdout after InstanceStart and exits when the guest is sent Ctrl-Alt-Del.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use stamp_machine::firecracker::Firecracker;
use stamp_machine::runtime::{Drivers, Local};
use stamp_machine::spec::{MachineSpec, Platform, Source};
use stamp_machine::store::MachineStore;
use stamp_machine::{MachineService, State};

#[path = "support/fake_firecracker.rs"]
mod fake;
use fake::fake_firecracker;

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < end, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_machine_runs_pauses_and_stops_through_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(program) = fake_firecracker(tmp.path()) else {
        eprintln!("skipped: no python3 for the fake firecracker");
        return;
    };
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let mut kernel = b"\x7fELF\x02\x01\x01".to_vec();
    kernel.resize(4096, 0);
    std::fs::write(images.join("vmlinux"), kernel).unwrap();
    std::fs::write(images.join("rootfs.ext4"), vec![0u8; 1 << 20]).unwrap();

    let fc = || Box::new(Firecracker::with_program(&program));
    let local = Arc::new(Local::new(
        MachineStore::new(tmp.path().join("machines")),
        Drivers {
            qemu: fc(),
            firecracker: fc(),
            podman: fc(),
        },
        vec!["unused".into()],
    ));
    let spec = MachineSpec {
        memory: 128 << 20,
        ..MachineSpec::new(
            "fc1",
            "vmlinux",
            Platform::Firecracker,
            Source::Kernel {
                kernel: images.join("vmlinux"),
                initrd: None,
                root: Some(images.join("rootfs.ext4")),
                cmdline: "ro".into(),
            },
        )
    };
    assert_eq!(local.create(&spec).unwrap().state(), State::Created);

    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (local, stop) = (local.clone(), stop.clone());
        std::thread::spawn(move || local.run_foreground("fc1", &stop, &|_| {}))
    };
    wait_until("the machine to be up", || {
        let m = local.get("fc1").unwrap();
        m.state() == State::Running && m.status.ready
    });
    let dir = local.store().open("fc1").unwrap();
    wait_until("the console", || {
        std::fs::read_to_string(dir.console_log()).is_ok_and(|l| l.contains("fake login:"))
    });
    assert_eq!(local.pause("fc1").unwrap().state(), State::Paused);
    assert_eq!(local.resume("fc1").unwrap().state(), State::Running);

    stop.store(true, Ordering::SeqCst);
    let ended = monitor.join().unwrap().unwrap();
    assert_eq!(ended.state(), State::Stopped);
    assert_eq!(ended.status.exit_code, Some(0));

    let log = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap();
    let seen: Vec<String> = log
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let action = v["body"]["action_type"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let state = v["body"]["state"].as_str().unwrap_or_default().to_string();
            format!(
                "{} {} {action}{state}",
                v["method"].as_str().unwrap(),
                v["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            "PUT /machine-config ",
            "PUT /boot-source ",
            "PUT /drives/rootfs ",
            "PUT /vsock ",
            "PUT /actions InstanceStart",
            "PATCH /vm Paused",
            "PATCH /vm Resumed",
            "PUT /actions SendCtrlAltDel",
        ]
    );
    assert!(
        std::fs::read_to_string(dir.console_log())
            .unwrap()
            .contains("reboot: Restarting system")
    );
}

#[test]
fn a_rejected_configuration_fails_the_machine_with_firecrackers_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(program) = fake_firecracker(tmp.path()) else {
        eprintln!("skipped: no python3 for the fake firecracker");
        return;
    };
    let kernel = tmp.path().join("vmlinux");
    let mut k = b"\x7fELF".to_vec();
    k.resize(64, 0);
    std::fs::write(&kernel, k).unwrap();
    std::fs::write(tmp.path().join("initrd"), b"x").unwrap();
    let fc = || Box::new(Firecracker::with_program(&program));
    let local = Local::new(
        MachineStore::new(tmp.path().join("machines")),
        Drivers {
            qemu: fc(),
            firecracker: fc(),
            podman: fc(),
        },
        vec!["unused".into()],
    );
    let spec = MachineSpec {
        memory: 128 << 20,
        ..MachineSpec::new(
            "fc2",
            "vmlinux",
            Platform::Firecracker,
            Source::Kernel {
                kernel: kernel.clone(),
                initrd: Some(tmp.path().join("initrd")),
                root: None,
                cmdline: String::new(),
            },
        )
    };
    local.create(&spec).unwrap();
    // The kernel disappears after the machine was created: Firecracker refuses the boot source.
    std::fs::remove_file(&kernel).unwrap();
    let e = local
        .run_foreground("fc2", &AtomicBool::new(false), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("PUT /boot-source"), "{e}");
    assert!(e.contains("Invalid kernel path"), "{e}");
    let m = local.get("fc2").unwrap();
    assert_eq!(m.state(), State::Failed);
    assert!(m.status.reason.unwrap().contains("Invalid kernel path"));
    assert!(m.status.vmm.is_none(), "the fake firecracker was killed");
}
