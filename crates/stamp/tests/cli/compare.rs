//! Acceptance: `stamp compare` agrees with `qemu-img compare` on identical and different pairs
//! across formats.

use super::common::*;

#[test]
fn compare_agrees_with_qemu_img_across_formats() {
    let d = tmp();
    let a = d.path().join("a.raw");
    pattern_raw(&a, 16 << 20, 16, 11);
    // b: a with one byte changed in the middle of the disk; c: a longer disk with zeros past a's end;
    // e: c with data past a's end.
    let b = d.path().join("b.raw");
    std::fs::copy(&a, &b).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&b)
            .unwrap();
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, 9_000_001).unwrap();
        f.write_all_at(&[byte[0] ^ 0x40], 9_000_001).unwrap();
    }
    let c = d.path().join("c.raw");
    std::fs::copy(&a, &c).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&c)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let e = d.path().join("e.raw");
    std::fs::copy(&c, &e).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&e).unwrap();
        f.write_all_at(b"beyond", 18 << 20).unwrap();
    }
    // Each in several formats (made by qemu-img, so only stamp's reading and comparing is tested).
    let mut images = vec![];
    for (name, path) in [("a", &a), ("b", &b), ("c", &c), ("e", &e)] {
        for fmt in ["raw", "qcow2", "vmdk", "vpc", "vhdx", "vdi"] {
            let p = d.path().join(format!("{name}-img.{fmt}"));
            let mut args = vec!["convert", "-O", fmt];
            if fmt == "vpc" {
                args.extend(["-o", "force_size=on"]);
            }
            args.extend([s(path), s(&p)]);
            qemu_ok(&args);
            images.push((name, p));
        }
    }
    let mut pairs = 0;
    for (i, (na, pa)) in images.iter().enumerate() {
        for (nb, pb) in images.iter().skip(i).step_by(5) {
            let q = qemu_img(&["compare", s(pa), s(pb)]);
            let r = stamp(&["compare", s(pa), s(pb)]);
            assert_eq!(
                r.code,
                q.code,
                "{na} {} vs {nb} {}: stamp says {} ({}), qemu-img says {} ({})",
                pa.display(),
                pb.display(),
                r.code,
                r.stdout.trim(),
                q.code,
                q.stdout.trim()
            );
            if q.code == 1 {
                // Both name the same first differing sector.
                assert_eq!(r.stdout.trim(), q.stdout.trim(), "{na} vs {nb}");
            }
            pairs += 1;
        }
    }
    assert!(pairs > 40, "{pairs} pairs");
}

#[test]
fn compare_errors_exit_two() {
    let d = tmp();
    let a = d.path().join("a.raw");
    pattern_raw(&a, 1 << 20, 2, 1);
    let r = stamp(&["compare", s(&a), s(&d.path().join("missing.raw"))]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("missing.raw"), "{}", r.stderr);
}
