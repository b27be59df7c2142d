//! Boot files: the UKI from the real Debian stub and kernel checked with binutils, the ESP
//! layouts of systemd-boot and GRUB, and the errors that tell users what to install.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use stamp_build::Error;
use stamp_build::boot::{BootFiles, BootMethod, BootRequest, boot_files, find_kernel, pe};
use stamp_fs::{Content, Entry, Kind, Timestamp, Tree};

const CMDLINE: &str = "root=PARTUUID=01234567-89ab-cdef-0123-456789abcdef rw console=ttyS0,115200";
const FS_UUID: &str = "76543210-89ab-cdef-0123-456789abcdef";

fn request(tree: &Tree, method: Option<BootMethod>) -> BootRequest<'_> {
    BootRequest {
        tree,
        cmdline: CMDLINE.into(),
        arch: Default::default(),
        root_fs_uuid: FS_UUID.into(),
        method,
    }
}

fn add(t: &mut Tree, path: &str, data: Vec<u8>, mtime: i64) {
    t.insert(
        path.as_bytes(),
        Entry::new(
            Kind::File(Content::Bytes(Bytes::from(data))),
            0o644,
            Timestamp::from_secs(mtime),
        ),
    )
    .unwrap();
}

fn symlink(t: &mut Tree, path: &str, target: &str) {
    t.insert(
        path.as_bytes(),
        Entry::new(
            Kind::Symlink(target.as_bytes().to_vec()),
            0o777,
            Timestamp::from_secs(1),
        ),
    )
    .unwrap();
}

/// The bytes of the ESP file at `path`.
fn esp_file(b: &BootFiles, path: &str) -> Vec<u8> {
    let id = b
        .esp
        .get(path.as_bytes())
        .unwrap_or_else(|| panic!("no {path} on the ESP"));
    let Kind::File(c) = &b.esp.entry(id).kind else {
        panic!("{path} is not a file");
    };
    let mut buf = vec![0u8; c.len() as usize];
    c.read_at(&mut buf, 0).unwrap();
    buf
}

/// A minimal PE32+ EFI application for x86-64: `.text` and `.data`, file alignment 0x200,
/// section alignment 0x1000, headers 0x400.
fn tiny_stub() -> Vec<u8> {
    let mut d = vec![0u8; 0x800];
    let put16 = |d: &mut [u8], o: usize, v: u16| d[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |d: &mut [u8], o: usize, v: u32| d[o..o + 4].copy_from_slice(&v.to_le_bytes());
    d[..2].copy_from_slice(b"MZ");
    put32(&mut d, 0x3c, 0x80);
    d[0x80..0x84].copy_from_slice(b"PE\0\0");
    put16(&mut d, 0x84, 0x8664);
    put16(&mut d, 0x86, 2);
    put16(&mut d, 0x84 + 16, 240);
    let o = 0x98;
    put16(&mut d, o, 0x20b);
    put32(&mut d, o + 32, 0x1000);
    put32(&mut d, o + 36, 0x200);
    put32(&mut d, o + 56, 0x3000);
    put32(&mut d, o + 60, 0x400);
    put32(&mut d, o + 108, 16);
    for (i, (name, va, raw)) in [(b".text", 0x1000u32, 0x400u32), (b".data", 0x2000, 0x600)]
        .iter()
        .enumerate()
    {
        let h = o + 240 + i * 40;
        d[h..h + 5].copy_from_slice(*name);
        put32(&mut d, h + 8, 0x100);
        put32(&mut d, h + 12, *va);
        put32(&mut d, h + 16, 0x200);
        put32(&mut d, h + 20, *raw);
    }
    d
}

/// A tree with a kernel 6.1.0-10 (and an older one) and an os-release.
fn kernel_tree() -> Tree {
    let mut t = Tree::default();
    add(
        &mut t,
        "boot/vmlinuz-6.1.0-10-cloud-amd64",
        vec![0xaa; 5000],
        100,
    );
    add(
        &mut t,
        "boot/initrd.img-6.1.0-10-cloud-amd64",
        vec![0xbb; 3000],
        200,
    );
    add(
        &mut t,
        "boot/vmlinuz-6.1.0-9-cloud-amd64",
        vec![0xcc; 10],
        50,
    );
    symlink(&mut t, "vmlinuz", "boot/vmlinuz-6.1.0-9-cloud-amd64");
    add(
        &mut t,
        "usr/lib/os-release",
        b"PRETTY_NAME=\"Test OS 1\"\nID=test\n".to_vec(),
        1,
    );
    symlink(&mut t, "etc/os-release", "../usr/lib/os-release");
    t
}

#[test]
fn uki_from_a_synthetic_stub_has_every_section_in_place() {
    let mut t = kernel_tree();
    add(
        &mut t,
        "usr/lib/systemd/boot/efi/linuxx64.efi.stub",
        tiny_stub(),
        300,
    );
    let b = boot_files(&request(&t, None)).unwrap();
    assert_eq!(b.method, BootMethod::Uki);
    assert_eq!(b.kernel.version, "6.1.0-10-cloud-amd64");
    let id = b.esp.get(b"EFI/BOOT/BOOTX64.EFI").unwrap();
    // The newest input's time.
    assert_eq!(b.esp.entry(id).mtime, Timestamp::from_secs(300));
    assert_eq!(
        b.esp.entry(b.esp.get(b"EFI").unwrap()).mtime,
        Timestamp::default()
    );
    let uki = esp_file(&b, "EFI/BOOT/BOOTX64.EFI");
    let p = pe::parse(&uki, "uki").unwrap();
    let names: Vec<String> = p.sections.iter().map(|s| s.name_str()).collect();
    assert_eq!(
        names,
        [
            ".text", ".data", ".osrel", ".cmdline", ".uname", ".initrd", ".linux"
        ]
    );
    let data = |name: &str| {
        let s = p.sections.iter().find(|s| s.name_str() == name).unwrap();
        let at = s.pointer_to_raw_data as usize;
        uki[at..at + s.virtual_size as usize].to_vec()
    };
    assert_eq!(data(".osrel"), b"PRETTY_NAME=\"Test OS 1\"\nID=test\n");
    assert_eq!(data(".cmdline"), format!("{CMDLINE}\0").as_bytes());
    assert_eq!(data(".uname"), b"6.1.0-10-cloud-amd64");
    assert_eq!(data(".initrd"), vec![0xbb; 3000]);
    assert_eq!(data(".linux"), vec![0xaa; 5000]);
    for w in p.sections.windows(2) {
        assert!(w[0].virtual_address + w[0].virtual_size <= w[1].virtual_address);
    }
    let last = p.sections.last().unwrap();
    assert_eq!(
        p.size_of_image,
        (last.virtual_address + last.virtual_size).next_multiple_of(0x1000)
    );
}

#[test]
fn systemd_boot_gets_a_loader_entry_and_the_kernel_on_the_esp() {
    let mut t = kernel_tree();
    add(
        &mut t,
        "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        b"sd-boot".to_vec(),
        7,
    );
    let b = boot_files(&request(&t, None)).unwrap();
    assert_eq!(b.method, BootMethod::SystemdBoot);
    assert_eq!(esp_file(&b, "EFI/BOOT/BOOTX64.EFI"), b"sd-boot");
    assert_eq!(esp_file(&b, "EFI/systemd/systemd-bootx64.efi"), b"sd-boot");
    let v = "6.1.0-10-cloud-amd64";
    assert_eq!(esp_file(&b, &format!("stamp/{v}/linux")), vec![0xaa; 5000]);
    assert_eq!(esp_file(&b, &format!("stamp/{v}/initrd")), vec![0xbb; 3000]);
    let entry = String::from_utf8(esp_file(&b, "loader/entries/stamp.conf")).unwrap();
    assert_eq!(
        entry,
        format!(
            "title Test OS 1\nversion {v}\nlinux /stamp/{v}/linux\ninitrd /stamp/{v}/initrd\n\
             options {CMDLINE}\n"
        )
    );
    let conf = String::from_utf8(esp_file(&b, "loader/loader.conf")).unwrap();
    assert!(conf.contains("default stamp.conf\n") && conf.contains("timeout 0\n"));
}

#[test]
fn grub_behind_shim_with_its_config_where_debian_grub_looks() {
    let mut t = kernel_tree();
    add(
        &mut t,
        "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
        b"grub".to_vec(),
        1,
    );
    add(
        &mut t,
        "usr/lib/shim/shimx64.efi.signed",
        b"shim".to_vec(),
        1,
    );
    add(&mut t, "usr/lib/shim/shimx64.efi", b"unsigned".to_vec(), 1);
    add(&mut t, "usr/lib/shim/mmx64.efi.signed", b"mm".to_vec(), 1);
    let b = boot_files(&request(&t, None)).unwrap();
    assert_eq!(b.method, BootMethod::Grub);
    assert_eq!(esp_file(&b, "EFI/BOOT/BOOTX64.EFI"), b"shim");
    assert_eq!(esp_file(&b, "EFI/BOOT/grubx64.efi"), b"grub");
    assert_eq!(esp_file(&b, "EFI/BOOT/mmx64.efi"), b"mm");
    let cfg = String::from_utf8(esp_file(&b, "EFI/debian/grub.cfg")).unwrap();
    assert_eq!(esp_file(&b, "EFI/BOOT/grub.cfg"), cfg.as_bytes());
    assert!(cfg.contains(&format!(
        "search --no-floppy --fs-uuid --set=root {FS_UUID}\n"
    )));
    assert!(cfg.contains(&format!(
        "\tlinux /boot/vmlinuz-6.1.0-10-cloud-amd64 {CMDLINE}\n"
    )));
    assert!(cfg.contains("\tinitrd /boot/initrd.img-6.1.0-10-cloud-amd64\n"));
    assert!(cfg.contains("set timeout=0\n"));
    // Without shim, GRUB is the boot file.
    t.remove(b"usr/lib/shim").unwrap();
    let b = boot_files(&request(&t, None)).unwrap();
    assert_eq!(esp_file(&b, "EFI/BOOT/BOOTX64.EFI"), b"grub");
    assert!(b.esp.get(b"EFI/BOOT/grubx64.efi").is_none());
}

#[test]
fn missing_pieces_say_what_to_install() {
    // No kernel.
    let t = Tree::default();
    let e = boot_files(&request(&t, None)).unwrap_err();
    assert!(matches!(e, Error::NoKernel { .. }), "{e}");
    let s = e.to_string();
    assert!(
        s.contains("apt install linux-image-cloud-amd64") && s.contains("--kernel"),
        "{s}"
    );
    // A kernel but nothing to boot it.
    let mut t = kernel_tree();
    let s = boot_files(&request(&t, None)).unwrap_err().to_string();
    assert!(
        s.contains("systemd-boot-efi") && s.contains("grub-efi-amd64-signed"),
        "{s}"
    );
    // GRUB's modules without a monolithic image.
    add(&mut t, "usr/lib/grub/x86_64-efi/ext2.mod", vec![1], 1);
    let s = boot_files(&request(&t, None)).unwrap_err().to_string();
    assert!(
        s.contains("no monolithic GRUB") && s.contains("grub-efi-amd64-signed"),
        "{s}"
    );
    // A method asked for that the image cannot do.
    add(
        &mut t,
        "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        b"sd".to_vec(),
        1,
    );
    let s = boot_files(&request(&t, Some(BootMethod::Uki)))
        .unwrap_err()
        .to_string();
    assert!(s.contains("linuxx64.efi.stub"), "{s}");
    assert_eq!(
        boot_files(&request(&t, Some(BootMethod::SystemdBoot)))
            .unwrap()
            .method,
        BootMethod::SystemdBoot
    );
    // A malformed stub names itself.
    add(
        &mut t,
        "usr/lib/systemd/boot/efi/linuxx64.efi.stub",
        b"MZ-not-really".to_vec(),
        1,
    );
    let s = boot_files(&request(&t, None)).unwrap_err().to_string();
    assert!(
        s.starts_with("/usr/lib/systemd/boot/efi/linuxx64.efi.stub: DOS header"),
        "{s}"
    );
}

/// The Debian 12 rootfs tar (STAMP_DEBIAN_TAR, else the dev cache), if present.
fn debian_tar() -> Option<PathBuf> {
    let p = std::env::var_os("STAMP_DEBIAN_TAR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/stamp-dev/debian-rootfs.tar"))
        })?;
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipped: no Debian rootfs tar at {} (set STAMP_DEBIAN_TAR or run \
             scripts/debian-image.sh --tar)",
            p.display()
        );
        None
    }
}

fn tool(name: &str) -> bool {
    let ok = Command::new(name).arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipped: {name} is not installed (binutils)");
    }
    ok
}

fn read_tree_file(t: &Tree, path: &str) -> Vec<u8> {
    let id = t.get(path.as_bytes()).unwrap();
    let Kind::File(c) = &t.entry(id).kind else {
        panic!("{path} is not a file")
    };
    let mut buf = vec![0u8; c.len() as usize];
    c.read_at(&mut buf, 0).unwrap();
    buf
}

#[test]
fn debian_uki_passes_binutils() {
    let Some(tar) = debian_tar() else { return };
    if !tool("objdump") || !tool("objcopy") {
        return;
    }
    let loaded = stamp_fs::source::load(tar.to_str().unwrap(), &Default::default()).unwrap();
    let t = &loaded.tree;
    let k = find_kernel(t).unwrap().unwrap();
    assert!(k.version.starts_with("6.1."), "{k:?}");
    assert_eq!(k.vmlinuz, format!("/boot/vmlinuz-{}", k.version));
    let initrd = k.initrd.clone().unwrap();

    // Our checksum agrees with the one the stub's linker wrote.
    let stub = read_tree_file(t, "usr/lib/systemd/boot/efi/linuxx64.efi.stub");
    let sp = pe::parse(&stub, "stub").unwrap();
    let at = sp.opt_offset + 64;
    let stored = u32::from_le_bytes(stub[at..at + 4].try_into().unwrap());
    assert_eq!(pe::checksum(&stub, at), stored);

    let b = boot_files(&request(t, None)).unwrap();
    assert_eq!(b.method, BootMethod::Uki);
    let uki = esp_file(&b, "EFI/BOOT/BOOTX64.EFI");
    // Reproducible: the same tree gives the same bytes.
    let again = esp_file(
        &boot_files(&request(t, None)).unwrap(),
        "EFI/BOOT/BOOTX64.EFI",
    );
    assert!(uki == again, "two builds of the UKI differ");
    drop(again);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uki.efi");
    std::fs::write(&path, &uki).unwrap();
    let p = pe::parse(&uki, "uki").unwrap();
    let out = Command::new("objdump")
        .arg("-h")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("file format pei-x86-64"), "{text}");
    // Idx Name Size VMA LMA File-off Algn
    let mut rows = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 7 && f[0].parse::<u32>().is_ok() {
            let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
            rows.push((f[1].to_string(), hex(f[2]), hex(f[3]), hex(f[5])));
        }
    }
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    for s in [".osrel", ".cmdline", ".uname", ".initrd", ".linux"] {
        assert!(names.contains(&s), "{s} missing: {text}");
    }
    assert_eq!(names.last(), Some(&".linux"));
    for w in rows.windows(2) {
        assert!(
            w[0].2 + w[0].1 <= w[1].2,
            "{} and {} overlap or are out of order",
            w[0].0,
            w[1].0
        );
    }
    for (name, _, vma, off) in rows.iter().skip(sp.sections.len()) {
        assert_eq!(vma % u64::from(p.section_alignment), 0, "{name} VMA");
        assert_eq!(off % u64::from(p.file_alignment), 0, "{name} file offset");
        // Above everything of the stub.
        assert!(
            *vma >= u64::from(sp.size_of_image),
            "{name} below the stub's end"
        );
    }
    let section = |name: &str| {
        let o = dir.path().join(name.trim_start_matches('.'));
        let st = Command::new("objcopy")
            .args(["-O", "binary", "--only-section", name])
            .arg(&path)
            .arg(&o)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::read(o).unwrap()
    };
    assert!(
        section(".linux") == read_tree_file(t, &k.vmlinuz),
        ".linux differs"
    );
    assert!(
        section(".initrd") == read_tree_file(t, &initrd),
        ".initrd differs"
    );
    assert_eq!(section(".cmdline"), format!("{CMDLINE}\0").as_bytes());
    assert_eq!(section(".uname"), k.version.as_bytes());
    assert_eq!(section(".osrel"), read_tree_file(t, "usr/lib/os-release"));
    // The checksum written is the file's.
    let at = p.opt_offset + 64;
    let stored = u32::from_le_bytes(uki[at..at + 4].try_into().unwrap());
    assert_eq!(stored, pe::checksum(&uki, at));
}
