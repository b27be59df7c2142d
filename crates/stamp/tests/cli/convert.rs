//! `stamp convert`, `info`, `check` and `create` through the binary, checked by qemu-img.

use super::common::*;

/// Every output format with the `-o` options worth covering, and qemu-img's name and subformat.
const OUTPUTS: &[(&str, &str, &str)] = &[
    ("raw", "", "raw"),
    ("qcow2", "", "qcow2"),
    ("qcow2", "compat=0.10", "qcow2"),
    ("vmdk", "", "vmdk"),
    ("vmdk", "subformat=streamOptimized", "vmdk"),
    ("vhd", "", "vpc"),
    ("vhd", "subformat=fixed", "vpc"),
    ("vhdx", "", "vhdx"),
    ("vdi", "", "vdi"),
];

#[test]
fn every_output_format_passes_qemu_img_check_and_compare() {
    let d = tmp();
    let src = d.path().join("src.raw");
    pattern_raw(&src, 24 << 20, 24, 7);
    for (i, (fmt, opts, qemu_fmt)) in OUTPUTS.iter().enumerate() {
        let dst = d.path().join(format!("out{i}.{fmt}"));
        let mut args = vec!["convert", "-O", fmt];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([s(&src), s(&dst)]);
        let r = stamp(&args);
        assert_eq!(r.code, 0, "convert -O {fmt} -o {opts:?}: {}", r.stderr);
        assert!(
            r.stdout.is_empty() && r.stderr.is_empty(),
            "convert must be quiet without a TTY"
        );
        // qemu-img probes fixed VHDs as raw, so it is told the format.
        let info: serde_json::Value = serde_json::from_str(&qemu_ok(&[
            "info",
            "-f",
            qemu_fmt,
            "--output=json",
            s(&dst),
        ]))
        .unwrap();
        assert_eq!(info["format"], *qemu_fmt, "{fmt} {opts}");
        if *fmt != "raw" {
            let c = qemu_img(&["check", "-f", qemu_fmt, s(&dst)]);
            assert!(
                c.code == 0 || c.stderr.contains("does not support checks"),
                "qemu-img check {fmt} {opts}: {} {}",
                c.stdout,
                c.stderr
            );
        }
        let cmp = qemu_img(&["compare", "-F", qemu_fmt, s(&src), s(&dst)]);
        assert_eq!(cmp.code, 0, "qemu-img compare {fmt} {opts}: {}", cmp.stdout);
        // And back: stamp reads its own output like the source.
        let back = d.path().join(format!("back{i}.raw"));
        assert_eq!(stamp(&["convert", "-O", "raw", s(&dst), s(&back)]).code, 0);
        assert_eq!(stamp(&["compare", s(&src), s(&back)]).code, 0);
    }
    assert!(temp_leftovers(d.path()).is_empty());
}

#[test]
fn output_format_follows_the_extension_when_not_given() {
    let d = tmp();
    let src = d.path().join("src.raw");
    pattern_raw(&src, 4 << 20, 4, 1);
    let dst = d.path().join("disk.qcow2");
    let r = stamp(&["convert", s(&src), s(&dst)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let info: serde_json::Value =
        serde_json::from_str(&qemu_ok(&["info", "--output=json", s(&dst)])).unwrap();
    assert_eq!(info["format"], "qcow2");
}

#[test]
fn input_format_is_detected_from_content_not_name() {
    let d = tmp();
    let src = d.path().join("src.raw");
    pattern_raw(&src, 4 << 20, 4, 2);
    // A qcow2 image named .vmdk, and a raw file named .qcow2.
    let misnamed = d.path().join("really-qcow2.vmdk");
    qemu_ok(&["convert", "-O", "qcow2", s(&src), s(&misnamed)]);
    let r = stamp(&["info", "--json", s(&misnamed)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["virtual_size"], 4 << 20);
    assert_eq!(v["schema_version"], 1);
    let back = d.path().join("back.raw");
    assert_eq!(
        stamp(&["convert", "-O", "raw", s(&misnamed), s(&back)]).code,
        0
    );
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&src).unwrap());
}

#[test]
fn create_makes_empty_images_qemu_img_accepts() {
    let d = tmp();
    for (fmt, qemu_fmt) in [
        ("raw", "raw"),
        ("qcow2", "qcow2"),
        ("vmdk", "vmdk"),
        ("vhdx", "vhdx"),
        ("vdi", "vdi"),
    ] {
        let p = d.path().join(format!("empty.{fmt}"));
        let r = stamp(&["create", "-f", fmt, s(&p), "64M"]);
        assert_eq!(r.code, 0, "create {fmt}: {}", r.stderr);
        let info: serde_json::Value =
            serde_json::from_str(&qemu_ok(&["info", "--output=json", s(&p)])).unwrap();
        assert_eq!(info["format"], qemu_fmt);
        assert_eq!(info["virtual-size"], 64 << 20, "{fmt}");
    }
}

#[test]
fn check_reports_clean_images_with_exit_zero() {
    let d = tmp();
    let src = d.path().join("src.raw");
    pattern_raw(&src, 8 << 20, 8, 3);
    let q = d.path().join("a.qcow2");
    qemu_ok(&["convert", "-O", "qcow2", s(&src), s(&q)]);
    let r = stamp(&["check", s(&q)]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert!(r.stdout.contains("No errors"), "{}", r.stdout);
    let r = stamp(&["check", "--json", s(&q)]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["result"], "clean");
}

#[test]
fn check_of_an_unreadable_image_exits_one() {
    let d = tmp();
    let p = d.path().join("trunc.qcow2");
    let src = d.path().join("src.raw");
    pattern_raw(&src, 8 << 20, 8, 3);
    qemu_ok(&["convert", "-O", "qcow2", s(&src), s(&p)]);
    let data = std::fs::read(&p).unwrap();
    std::fs::write(&p, &data[..100]).unwrap();
    let r = stamp(&["check", s(&p)]);
    assert_eq!(r.code, 1, "{} {}", r.stdout, r.stderr);
}

#[test]
fn interrupted_conversion_leaves_nothing_behind() {
    use std::os::unix::fs::FileExt;
    let d = tmp();
    let src = d.path().join("big.raw");
    // 768 MiB of incompressible-ish data: compressing it takes seconds, long enough to interrupt.
    let f = std::fs::File::create(&src).unwrap();
    let mut x = 0x9E3779B97F4A7C15u64;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..768u64 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all_at(&buf, i << 20).unwrap();
    }
    drop(f);
    let dst = d.path().join("out.qcow2");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_stamp"))
        .args(["convert", "-c", "-O", "qcow2", s(&src), s(&dst)])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the temporary output exists, then interrupt.
    let start = std::time::Instant::now();
    while temp_leftovers(d.path()).is_empty() && start.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !temp_leftovers(d.path()).is_empty(),
        "conversion never started"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!dst.exists(), "partial output left at the destination");
    assert!(
        temp_leftovers(d.path()).is_empty(),
        "temporary file left behind"
    );
}
