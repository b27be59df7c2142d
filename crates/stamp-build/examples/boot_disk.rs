//! Makes a bootable qcow2 disk from a root filesystem tar with the boot files alone (no recipe,
//! no fstab): the ESP (FAT) from `boot::boot_files` and the tree as ext4, in a GPT. For trying
//! the boot files under qemu + OVMF.
//!
//! `cargo run --release -p stamp-build --example boot_disk -- ROOTFS.tar OUT.qcow2 [uki|systemd-boot|grub]`

use std::path::Path;

use stamp_build::boot::{BootMethod, BootRequest, boot_files};
use stamp_fs::ext4::{Ext4Options, ext4};
use stamp_fs::fat::{FatOptions, fat};
use stamp_fs::gpt::{GptOptions, Partition, PartitionType, gpt_disk};
use stamp_fs::source::{SourceOptions, load};

fn guid_text(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: boot_disk ROOTFS.tar OUT.qcow2 [uki|systemd-boot|grub]".into());
    }
    let method = match args.get(3).map(String::as_str) {
        None => None,
        Some("uki") => Some(BootMethod::Uki),
        Some("systemd-boot") => Some(BootMethod::SystemdBoot),
        Some("grub") => Some(BootMethod::Grub),
        Some(m) => return Err(format!("unknown method {m}").into()),
    };
    let loaded = load(&args[1], &SourceOptions::default())?;
    let tree = &loaded.tree;
    let part_guid: [u8; 16] = *b"stamp-root-part!";
    let fs_uuid: [u8; 16] = *b"stamp-root-fs-id";
    let cmdline = format!(
        "root=PARTUUID={} rw console=ttyS0,115200",
        guid_text(&part_guid)
    );
    let t = std::time::Instant::now();
    let boot = boot_files(&BootRequest {
        tree,
        cmdline,
        arch: Default::default(),
        root_fs_uuid: guid_text(&fs_uuid),
        method,
    })?;
    eprintln!(
        "boot files: {:?}, kernel {} ({:?})",
        boot.method,
        boot.kernel.version,
        t.elapsed()
    );
    for (p, id) in boot.esp.walk() {
        eprintln!(
            "  /{} {}",
            String::from_utf8_lossy(&p),
            boot.esp.entry(id).size()
        );
    }
    let esp = fat(&boot.esp, &FatOptions::default())?;
    let root = ext4(
        tree,
        &Ext4Options {
            uuid: Some(fs_uuid),
            ..Default::default()
        },
    )?;
    let mut root_part = Partition::with_image("root", PartitionType::RootX86_64, root);
    root_part.unique_guid = Some(part_guid);
    let disk = gpt_disk(
        vec![
            Partition::with_image("esp", PartitionType::Esp, esp),
            root_part,
        ],
        &GptOptions::default(),
    )?;
    let w = stamp_disk::create(
        Path::new(&args[2]),
        stamp_disk::Format::Qcow2,
        disk.size,
        &Default::default(),
    )?;
    disk.write_to(vec![w])?;
    eprintln!("wrote {} ({:?})", args[2], t.elapsed());
    Ok(())
}
