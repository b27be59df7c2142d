//! ova tests: OVA packages read like qemu-img reads the disk extracted from them (qemu-img has no
//! OVA driver: tar, sha1sum and sha256sum are the other oracles), malformed packages are refused
//! with an error naming the file and the fault, and stamp's OVAs pass tar, sha256sum and
//! qemu-img check/compare.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use super::common::*;
use stamp_disk::{Error, Format, OpenOptions};

/// Opens `path` as an OVA (as `-f ova` does) and returns the error it must give.
fn refused(path: &Path) -> Error {
    match stamp_disk::open(path, Some(Format::Ova)) {
        Ok(r) => panic!("{} opened: {:?}", path.display(), r.info()),
        Err(e) => {
            assert!(
                e.is_bad_input(),
                "{}: not a bad-input error: {e}",
                path.display()
            );
            e
        }
    }
}

/// Asserts the error message contains every one of `words`.
fn says(e: &Error, words: &[&str]) {
    let msg = e.to_string();
    for w in words {
        assert!(msg.contains(w), "error does not say '{w}': {msg}");
    }
}

/// Extracts member `name` of the tar at `ova` into `dir` with the tar crate.
fn extract(ova: &Path, name: &str, dir: &Path) -> PathBuf {
    let mut ar = tar::Archive::new(std::fs::File::open(ova).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some(name) {
            let out = dir.join(name);
            e.unpack(&out).unwrap();
            return out;
        }
    }
    panic!("{} has no member {name}", ova.display());
}

/// Writes a ustar archive of `members` at `dst` with the tar crate.
fn pack(dst: &Path, members: &[(&str, &[u8])]) {
    let mut b = tar::Builder::new(std::fs::File::create(dst).unwrap());
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.finish().unwrap();
}

/// A minimal OVF 1.0 descriptor with one disk in `href` of `capacity` bytes.
fn ovf(href: &str, capacity: u64) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:href="{href}" ovf:id="file1"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="vm">
    <Info>A virtual machine</Info>
    <Name>test-vm</Name>
  </VirtualSystem>
</Envelope>
"#
    )
}

/// `tool` (sha1sum, sha256sum) of `data`, computed by the coreutils command.
fn digest(tool: &str, data: &[u8]) -> String {
    let d = tmp();
    let p = d.path().join("f");
    std::fs::write(&p, data).unwrap();
    let out = Command::new(tool).arg(&p).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A random sparse raw disk of `size` bytes at `dir/disk.img`, and its contents.
fn raw_disk(dir: &Path, size: u64, seed: u64) -> (PathBuf, Vec<u8>) {
    let p = dir.join("disk.img");
    random_sparse_raw(&p, size, 12, seed);
    let data = std::fs::read(&p).unwrap();
    (p, data)
}

#[test]
fn bad_fixtures_are_refused_with_the_file_and_the_fault() {
    let dir = fixtures().join("ova");
    let e = refused(&dir.join("BAD-glance-not-tar.ova"));
    says(&e, &["BAD-glance-not-tar.ova", "not a tar archive"]);

    let e = refused(&dir.join("BAD-glance-no-ovf.ova"));
    says(
        &e,
        &[
            "BAD-glance-no-ovf.ova",
            "no OVF descriptor",
            "testserver-disk1.vmdk",
        ],
    );

    let e = refused(&dir.join("BAD-glance-no-disk.ova"));
    assert!(matches!(e, Error::Missing { .. }), "{e}");
    says(
        &e,
        &[
            "BAD-glance-no-disk.ova",
            "referenced by the OVF",
            "testserver-disk1.vmdk",
            "not found",
        ],
    );

    let e = refused(&dir.join("BAD-glance-bad-ovf.ova"));
    says(
        &e,
        &[
            "BAD-glance-bad-ovf.ova",
            "illegal-xml.ovf",
            "line 2, column",
            "illegal XML",
        ],
    );

    // The VMDK was cut to 1 MiB (its manifest digest was made of the cut file, so it matches);
    // the descriptor's ovf:size still says 10595840 bytes.
    let e = refused(&dir.join("BAD-ovftool-ttylinux-truncated.ova"));
    says(
        &e,
        &[
            "BAD-ovftool-ttylinux-truncated.ova",
            "ttylinux-pc_i486-16.1-disk1.vmdk",
            "10595840",
            "1048576",
        ],
    );

    // A monolithicSparse VMDK whose header went through a UTF-8 round trip: the VMDK reader
    // refuses it with qemu-img's words, naming the disk inside the package.
    let e = refused(&dir.join("BAD-forklift-utf8-mangled-vmdk.ova"));
    says(
        &e,
        &[
            "BAD-forklift-utf8-mangled-vmdk.ova/2nd_disk.vmdk",
            "L2 table size too big",
        ],
    );

    // Detection finds the same packages (their first member is the .ovf) and refuses them alike.
    for name in [
        "BAD-glance-bad-ovf.ova",
        "BAD-glance-no-disk.ova",
        "BAD-ovftool-ttylinux-truncated.ova",
    ] {
        let p = dir.join(name);
        assert_eq!(stamp_disk::detect_path(&p).unwrap(), Format::Ova, "{name}");
        assert!(stamp_disk::open(&p, None).is_err(), "{name}");
    }
}

#[test]
fn virtualbox_testserver_reads_like_qemu_reads_the_extracted_disk() {
    let ova = fixtures().join("ova/virtualbox-testserver.ova");
    let d = tmp();
    let disk = extract(&ova, "testserver-disk1.vmdk", d.path());
    let q = qemu_read(&disk, Some("raw"));
    let r = stamp_disk::open(&ova, None).unwrap();
    let s = read_all(r.as_ref());
    // 4 bytes of data: qemu-img (and stamp) count whole sectors, a 512-byte disk.
    assert_eq!(s.len(), 512);
    assert_eq!(s, q);
    assert_eq!(&s[..4], b"ABCD");

    let i = r.info();
    assert_eq!(i.format, "ova");
    assert_eq!(i.details["ovf_version"], "1.0");
    assert_eq!(i.details["descriptor"], "testserver.ovf");
    assert_eq!(i.details["virtual_system"], "testserver");
    assert_eq!(i.details["manifest"], "none");
    assert_eq!(i.disks.len(), 1);
    assert_eq!(i.disks[0].format, "raw");
    // The OVF claims 8 GiB; the disk (trusted, as VirtualBox and VMware do) is 4 bytes.
    assert_eq!(i.disks[0].details["ovf_capacity"], "8589934592");
    assert_eq!(i.virtual_size, s.len() as u64);
    assert_eq!(r.check().unwrap().exit_code(), 0);
}

#[test]
fn raw_disk_with_manifests_reads_like_qemu_and_digests_are_checked() {
    let d = tmp();
    let (disk_path, disk) = raw_disk(d.path(), 4 << 20, 7);
    let q = qemu_read(&disk_path, Some("raw"));
    let desc = ovf("disk.img", 4 << 20);
    for (alg, tool) in [("SHA1", "sha1sum"), ("SHA256", "sha256sum")] {
        let mf = format!(
            "{alg}(app.ovf)= {}\n{alg}(disk.img)= {}\n",
            digest(tool, desc.as_bytes()),
            digest(tool, &disk)
        );
        // ovf, disk, mf (VirtualBox, stamp) and ovf, mf, disk (ovftool).
        let p = d.path().join(format!("{alg}.ova"));
        pack(
            &p,
            &[
                ("app.ovf", desc.as_bytes()),
                ("disk.img", &disk),
                ("app.mf", mf.as_bytes()),
            ],
        );
        let r = stamp_disk::open(&p, None).unwrap();
        assert_eq!(read_all(r.as_ref()), q, "{alg}");
        let i = r.info();
        assert_eq!(i.details["manifest"], format!("app.mf ({alg}, verified)"));
        assert_eq!(i.details["virtual_system"], "test-vm");
        assert_eq!(r.check().unwrap().exit_code(), 0);

        let p2 = d.path().join(format!("{alg}-ovftool-order.ova"));
        pack(
            &p2,
            &[
                ("app.ovf", desc.as_bytes()),
                ("app.mf", mf.as_bytes()),
                ("disk.img", &disk),
            ],
        );
        assert_eq!(stamp_read(&p2), q);

        // One byte of the disk changed: the digest no longer matches.
        let mut bad = disk.clone();
        bad[1 << 20] ^= 1;
        let p3 = d.path().join(format!("{alg}-wrong.ova"));
        pack(
            &p3,
            &[
                ("app.ovf", desc.as_bytes()),
                ("disk.img", &bad),
                ("app.mf", mf.as_bytes()),
            ],
        );
        let e = refused(&p3);
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        says(
            &e,
            &[
                &format!("{alg}-wrong.ova"),
                "manifest app.mf",
                alg,
                "of disk.img",
                "line 2",
            ],
        );
    }

    // The manifest lists a file that is not in the archive.
    let mf = format!(
        "SHA256(disk.img)= {}\nSHA256(gone.iso)= {}\n",
        digest("sha256sum", &disk),
        digest("sha256sum", b"")
    );
    let p = d.path().join("missing.ova");
    pack(
        &p,
        &[
            ("app.ovf", desc.as_bytes()),
            ("disk.img", &disk),
            ("app.mf", mf.as_bytes()),
        ],
    );
    let e = refused(&p);
    assert!(matches!(e, Error::Missing { .. }), "{e}");
    says(&e, &["missing.ova", "listed in the manifest", "gone.iso"]);

    // A manifest line that is not a digest line.
    let p = d.path().join("garbled-mf.ova");
    pack(
        &p,
        &[
            ("app.ovf", desc.as_bytes()),
            ("disk.img", &disk),
            ("app.mf", b"MD5(disk.img)= 00\n"),
        ],
    );
    says(&refused(&p), &["manifest app.mf", "MD5"]);
}

#[test]
fn real_tar_outputs_and_odd_layouts_are_read() {
    let d = tmp();
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let (disk_path, disk) = raw_disk(&src, 2 << 20, 3);
    let q = qemu_read(&disk_path, Some("raw"));
    // A capacity that disagrees with the disk: the disk wins, the OVF's value is shown.
    std::fs::write(src.join("a.ovf"), ovf("disk.img", 1 << 30)).unwrap();
    for fmt in ["gnu", "pax", "ustar", "v7"] {
        let p = d.path().join(format!("{fmt}.ova"));
        let st = Command::new("tar")
            .args([&format!("--format={fmt}"), "-cf", p.to_str().unwrap(), "-C"])
            .arg(&src)
            .args(["./a.ovf", "./disk.img"])
            .status()
            .unwrap();
        assert!(st.success());
        let r = stamp_disk::open(&p, Some(Format::Ova)).unwrap();
        assert_eq!(read_all(r.as_ref()), q, "{fmt}");
        let i = r.info();
        assert_eq!(i.virtual_size, disk.len() as u64);
        assert_eq!(i.disks[0].details["ovf_capacity"], (1u64 << 30).to_string());
        assert_eq!(i.disks[0].details["ovf_file"], "disk.img");
    }

    // The descriptor not first (against the spec, but seen): found anyway with -f ova.
    let p = d.path().join("late-ovf.ova");
    pack(
        &p,
        &[
            ("disk.img", &disk),
            ("a.ovf", ovf("disk.img", 2 << 20).as_bytes()),
        ],
    );
    assert_eq!(stamp_disk::detect_path(&p).unwrap(), Format::Raw);
    let r = stamp_disk::open(&p, Some(Format::Ova)).unwrap();
    assert_eq!(read_all(r.as_ref()), q);

    // An href with a %20 escape for a member whose name has a space.
    let p = d.path().join("escaped.ova");
    pack(
        &p,
        &[
            ("a.ovf", ovf("my%20disk.img", 2 << 20).as_bytes()),
            ("my disk.img", &disk),
        ],
    );
    assert_eq!(stamp_read(&p), q);
}

#[test]
fn disks_that_reach_outside_the_archive_are_refused() {
    let d = tmp();
    // A VMDK descriptor whose flat extent is a host file.
    let vmdk = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 8 FLAT \"/etc/hostname\" 0\n";
    let p = d.path().join("escape.ova");
    pack(
        &p,
        &[("a.ovf", ovf("d.vmdk", 4096).as_bytes()), ("d.vmdk", vmdk)],
    );
    says(
        &refused(&p),
        &["escape.ova", "d.vmdk", "outside the archive"],
    );

    // An OVA inside an OVA.
    let inner = d.path().join("inner.ova");
    pack(
        &inner,
        &[
            ("b.ovf", ovf("x.img", 512).as_bytes()),
            ("x.img", &[1u8; 512]),
        ],
    );
    let inner = std::fs::read(&inner).unwrap();
    let p = d.path().join("nested.ova");
    pack(
        &p,
        &[("a.ovf", ovf("in.ova", 0).as_bytes()), ("in.ova", &inner)],
    );
    says(&refused(&p), &["nested.ova", "an OVA inside an OVA"]);

    // Reading stays within the member: the disk ends where the member ends, even though more of
    // the archive follows it.
    let p = d.path().join("bounded.ova");
    pack(
        &p,
        &[
            ("a.ovf", ovf("x.img", 1024).as_bytes()),
            ("x.img", &[9u8; 1024]),
            ("z", &[7u8; 4096]),
        ],
    );
    let r = stamp_disk::open(&p, None).unwrap();
    assert_eq!(r.virtual_size(), 1024);
    assert!(r.read_at(&mut [0u8; 2], 1023).is_err());
    assert_eq!(read_all(r.as_ref()), vec![9u8; 1024]);
}

#[test]
fn chains_too_deep_are_refused() {
    let d = tmp();
    let p = d.path().join("a.ova");
    pack(
        &p,
        &[
            ("a.ovf", ovf("x.img", 512).as_bytes()),
            ("x.img", &[1u8; 512]),
        ],
    );
    let deep = OpenOptions {
        format: Some(Format::Ova),
        depth: stamp_disk::MAX_CHAIN_DEPTH + 1,
        ..Default::default()
    };
    assert!(stamp_disk::open_with(&p, &deep).is_err());
}

#[test]
fn opened_for_check_package_faults_are_corruptions() {
    // `stamp check` opens with for_check: what open refuses (a digest that does not match, a
    // listed file that is absent, a size the descriptor contradicts) is reported by check().
    let d = tmp();
    let (_, disk) = raw_disk(d.path(), 1 << 20, 9);
    let desc = ovf("disk.img", 1 << 20)
        .replace(r#"ovf:id="file1"/>"#, r#"ovf:id="file1" ovf:size="4096"/>"#);
    let mf = format!(
        "SHA256(disk.img)= {}\nSHA256(a.ovf)= {}\nSHA1(gone.iso)= {}\n",
        digest("sha256sum", b"something else"),
        digest("sha256sum", desc.as_bytes()),
        digest("sha1sum", b""),
    );
    let p = d.path().join("faulty.ova");
    pack(
        &p,
        &[
            ("a.ovf", desc.as_bytes()),
            ("disk.img", &disk),
            ("a.mf", mf.as_bytes()),
        ],
    );
    refused(&p);
    let opts = OpenOptions {
        for_check: true,
        ..Default::default()
    };
    let r = stamp_disk::open_with(&p, &opts).unwrap();
    let c = r.check().unwrap();
    assert_eq!(c.exit_code(), 2);
    assert_eq!(c.corruptions.len(), 3, "{:?}", c.corruptions);
    assert!(c.corruptions[0].contains("gone.iso"), "{:?}", c.corruptions);
    assert!(
        c.corruptions[1].contains("SHA256 of disk.img"),
        "{:?}",
        c.corruptions
    );
    assert!(
        c.corruptions[2].contains("4096 bytes"),
        "{:?}",
        c.corruptions
    );
    assert_eq!(
        r.info().details["manifest"],
        "a.mf (SHA256, SHA1, DOES NOT VERIFY)"
    );
    assert_eq!(read_all(r.as_ref()), disk);
}

#[test]
fn mutated_packages_never_panic() {
    let d = tmp();
    let (_, disk) = raw_disk(d.path(), 64 << 10, 11);
    let desc = ovf("disk.img", 64 << 10);
    let mf = format!(
        "SHA256(a.ovf)= {}\nSHA1(disk.img)= {}\n",
        digest("sha256sum", desc.as_bytes()),
        digest("sha1sum", &disk)
    );
    // Manifest checked: most mutations stop at the digest.
    let p = d.path().join("fuzz.ova");
    pack(
        &p,
        &[
            ("a.ovf", desc.as_bytes()),
            ("a.mf", mf.as_bytes()),
            ("disk.img", &disk),
        ],
    );
    fuzz_mutations(&p, 150, 4096, 1);
    // No manifest: mutations reach the descriptor parser and the disk.
    let p = d.path().join("fuzz2.ova");
    pack(&p, &[("a.ovf", desc.as_bytes()), ("disk.img", &disk)]);
    fuzz_mutations(&p, 150, 3072, 2);
}

/// Member names of the tar at `p`, in order, as GNU tar lists them.
fn tar_list(p: &Path) -> Vec<String> {
    let out = Command::new("tar").arg("tf").arg(p).output().unwrap();
    assert!(out.status.success(), "tar tf {}", p.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Extracts the whole tar at `p` into `dir` with GNU tar.
fn untar(p: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let st = Command::new("tar")
        .arg("xf")
        .arg(p)
        .arg("-C")
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn virtualbox_ovf2_package_reads_like_qemu_reads_its_vmdk() {
    let dir = fixtures().join("ovf/virtualbox-ovf2");
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    let (ovf, vmdk, mf) = (
        read("ubuntu.2.0.ovf"),
        read("ubuntu.2.0-disk1.vmdk"),
        read("ubuntu.2.0.mf"),
    );
    let d = tmp();
    let p = d.path().join("ubuntu.ova");
    pack(
        &p,
        &[
            ("ubuntu.2.0.ovf", &ovf),
            ("ubuntu.2.0-disk1.vmdk", &vmdk),
            ("ubuntu.2.0.mf", &mf),
        ],
    );
    let r = stamp_disk::open(&p, None).unwrap();
    let i = r.info();
    let q = qemu_info(&dir.join("ubuntu.2.0-disk1.vmdk"));
    assert_eq!(i.virtual_size, q["virtual-size"].as_u64().unwrap());
    assert_eq!(i.details["ovf_version"], "2.0");
    assert_eq!(i.details["manifest"], "ubuntu.2.0.mf (SHA256, verified)");
    assert_eq!(i.disks[0].format, "vmdk");
    assert_eq!(i.disks[0].details["ovf_capacity"], "8589934592");
    // 8 GiB, nearly all unallocated: compare through a sparse raw copy.
    let out = d.path().join("stamp.raw");
    stamp_convert(&p, &out, Format::Raw, "", false);
    let (code, text) = qemu_img_status(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "vmdk",
        out.to_str().unwrap(),
        dir.join("ubuntu.2.0-disk1.vmdk").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn broken_vmdks_inside_are_refused_by_the_vmdk_reader() {
    let d = tmp();
    let fx = fixtures().join("ova");
    // The truncated ttylinux disk, with the descriptor's ovf:size made to agree and the manifest
    // dropped, so the OVA layer lets it through: the VMDK reader must refuse it, as qemu-img
    // refuses the extracted file.
    let src = fx.join("BAD-ovftool-ttylinux-truncated.ova");
    let x = d.path().join("tty");
    untar(&src, &x);
    let disk = x.join("ttylinux-pc_i486-16.1-disk1.vmdk");
    let (code, _) = qemu_img_status(&["info", disk.to_str().unwrap()]);
    let (ccode, _) = qemu_img_status(&[
        "convert",
        "-O",
        "raw",
        disk.to_str().unwrap(),
        d.path().join("q.raw").to_str().unwrap(),
    ]);
    assert!(code != 0 || ccode != 0, "qemu-img reads the truncated vmdk");
    let ovf = std::fs::read_to_string(x.join("ttylinux-pc_i486-16.1.ovf"))
        .unwrap()
        .replace("ovf:size=\"10595840\"", "ovf:size=\"1048576\"");
    let p = d.path().join("tty.ova");
    pack(
        &p,
        &[
            ("ttylinux-pc_i486-16.1.ovf", ovf.as_bytes()),
            (
                "ttylinux-pc_i486-16.1-disk1.vmdk",
                &std::fs::read(&disk).unwrap(),
            ),
        ],
    );
    let e = refused(&p);
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    says(&e, &["tty.ova/ttylinux-pc_i486-16.1-disk1.vmdk", "footer"]);

    // The UTF-8-mangled monolithicSparse VMDK: qemu-img says "L2 table size too big".
    let e = refused(&fx.join("BAD-forklift-utf8-mangled-vmdk.ova"));
    says(
        &e,
        &[
            "BAD-forklift-utf8-mangled-vmdk.ova",
            "2nd_disk.vmdk",
            "vmdk",
        ],
    );
    let x = d.path().join("fk");
    untar(&fx.join("BAD-forklift-utf8-mangled-vmdk.ova"), &x);
    let (code, text) = qemu_img_status(&["info", x.join("2nd_disk.vmdk").to_str().unwrap()]);
    assert_ne!(code, 0, "{text}");
}

#[test]
fn stamp_ova_passes_tar_sha256sum_python_xml_and_qemu_img() {
    let d = tmp();
    let src = d.path().join("src.raw");
    random_sparse_raw(&src, 32 << 20, 24, 5);
    let ova = d.path().join("appliance.ova");
    stamp_convert(&src, &ova, Format::Ova, "", false);
    assert_eq!(
        tar_list(&ova),
        ["appliance.ovf", "appliance-disk1.vmdk", "appliance.mf"]
    );
    let x = d.path().join("x");
    untar(&ova, &x);
    let vmdk = x.join("appliance-disk1.vmdk");

    // Every manifest line verifies with sha256sum.
    let mf = std::fs::read_to_string(x.join("appliance.mf")).unwrap();
    assert_eq!(mf.lines().count(), 2);
    for l in mf.lines() {
        let (name, hex) = l
            .strip_prefix("SHA256(")
            .and_then(|r| r.split_once(")= "))
            .unwrap_or_else(|| panic!("manifest line '{l}'"));
        assert_eq!(
            digest("sha256sum", &std::fs::read(x.join(name)).unwrap()),
            hex,
            "{name}"
        );
    }

    // The VMDK is a clean streamOptimized image of the source.
    let q = qemu_info(&vmdk);
    assert_eq!(q["format"], "vmdk");
    assert_eq!(q["virtual-size"].as_u64().unwrap(), 32 << 20);
    assert_eq!(
        q["format-specific"]["data"]["create-type"],
        "streamOptimized"
    );
    assert_qemu_check_clean(&vmdk);
    assert_qemu_identical(&src, &vmdk);
    // Its embedded descriptor names the controller the OVF attaches it to.
    let head = std::fs::read(&vmdk).unwrap();
    let head = String::from_utf8_lossy(&head[..head.len().min(64 << 10)]);
    assert!(head.contains("ddb.adapterType = \"lsilogic\""), "{head}");

    // The descriptor is well-formed XML (Python's parser) with the right sizes.
    let py = r#"
import sys, xml.etree.ElementTree as ET
ns = {'o': 'http://schemas.dmtf.org/ovf/envelope/1'}
a = '{http://schemas.dmtf.org/ovf/envelope/1}'
root = ET.parse(sys.argv[1]).getroot()
f = root.find('o:References/o:File', ns)
disk = root.find('o:DiskSection/o:Disk', ns)
print(f.get(a + 'href'), f.get(a + 'size'), disk.get(a + 'capacity'), disk.get(a + 'capacityAllocationUnits'), disk.get(a + 'fileRef') == f.get(a + 'id'))
"#;
    let out = Command::new("python3")
        .args(["-c", py])
        .arg(x.join("appliance.ovf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vmdk_len = std::fs::metadata(&vmdk).unwrap().len();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("appliance-disk1.vmdk {vmdk_len} {} byte True", 32 << 20)
    );

    // stamp reads its own OVA as qemu-img reads the source.
    assert_eq!(stamp_read(&ova), qemu_read(&src, None));

    // Deterministic: the same disk gives the same bytes.
    let d2 = tmp();
    let ova2 = d2.path().join("appliance.ova");
    stamp_convert(&src, &ova2, Format::Ova, "", false);
    assert_eq!(std::fs::read(&ova).unwrap(), std::fs::read(&ova2).unwrap());

    // Options are refused, and nothing is left behind.
    let d3 = tmp();
    let o = stamp_disk::CreateOptions::parse("subformat=streamOptimized").unwrap();
    let e = stamp_disk::create(&d3.path().join("a.ova"), Format::Ova, 1 << 20, &o).err();
    assert!(matches!(e, Some(Error::InvalidOption(_))), "{e:?}");
    assert_eq!(std::fs::read_dir(d3.path()).unwrap().count(), 0);
}

#[test]
fn multi_disk_package_reads_the_first_disk_and_lists_all() {
    let d = tmp();
    let desc = r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:href="one.img" ovf:id="f1" ovf:size="1024"/>
    <File ovf:href="two.img" ovf:id="f2"/>
  </References>
  <DiskSection>
    <Info>disks</Info>
    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="scratch"/>
    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^10" ovf:diskId="boot" ovf:fileRef="f1"/>
    <Disk ovf:capacity="2048" ovf:diskId="data" ovf:fileRef="f2"/>
  </DiskSection>
</Envelope>"#;
    let p = d.path().join("multi.ova");
    pack(
        &p,
        &[
            ("multi.ovf", desc.as_bytes()),
            ("one.img", &[1u8; 1024]),
            ("two.img", &[2u8; 2048]),
        ],
    );
    let r = stamp_disk::open(&p, None).unwrap();
    assert_eq!(read_all(r.as_ref()), vec![1u8; 1024]);
    let i = r.info();
    assert_eq!(i.details["disk_read"], "boot");
    let ids: Vec<_> = i
        .disks
        .iter()
        .map(|d| d.details["ovf_disk_id"].as_str())
        .collect();
    assert_eq!(ids, ["scratch", "boot", "data"]);
    assert_eq!(i.disks[0].virtual_size, 1 << 30);
    assert_eq!(i.disks[2].virtual_size, 2048);
    assert_eq!(i.disks[2].details["ovf_file"], "two.img");
    assert_eq!(r.check().unwrap().exit_code(), 0);

    // A disk whose fileRef names no File.
    let bad = desc.replace(r#"ovf:fileRef="f2""#, r#"ovf:fileRef="f9""#);
    let p = d.path().join("dangling.ova");
    pack(
        &p,
        &[
            ("multi.ovf", bad.as_bytes()),
            ("one.img", &[1u8; 1024]),
            ("two.img", &[2u8; 2048]),
        ],
    );
    says(
        &refused(&p),
        &[
            "dangling.ova",
            "multi.ovf",
            "'f9'",
            "References does not list",
        ],
    );
}

#[test]
fn qcow2_disk_inside_reads_like_qemu_and_backing_files_are_refused() {
    let d = tmp();
    let (raw, _) = raw_disk(d.path(), 8 << 20, 21);
    let q2 = d.path().join("disk.qcow2");
    qemu_convert(&raw, &q2, "qcow2", "", false);
    let p = d.path().join("q.ova");
    pack(
        &p,
        &[
            ("q.ovf", ovf("disk.qcow2", 8 << 20).as_bytes()),
            ("disk.qcow2", &std::fs::read(&q2).unwrap()),
        ],
    );
    assert_eq!(stamp_read(&p), qemu_read(&q2, None));
    assert_eq!(stamp_disk::info(&p, None).unwrap().disks[0].format, "qcow2");

    // An overlay whose backing file is on the host, not in the package.
    let overlay = d.path().join("overlay.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        raw.to_str().unwrap(),
        "-F",
        "raw",
        overlay.to_str().unwrap(),
    ]);
    let p = d.path().join("overlay.ova");
    pack(
        &p,
        &[
            ("o.ovf", ovf("overlay.qcow2", 8 << 20).as_bytes()),
            ("overlay.qcow2", &std::fs::read(&overlay).unwrap()),
        ],
    );
    says(
        &refused(&p),
        &[
            "overlay.ova",
            "overlay.qcow2",
            "backing file",
            "outside the archive",
        ],
    );
}
