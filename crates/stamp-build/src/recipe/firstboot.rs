//! What every bootable image needs and what it does on its first boot: `/etc/fstab`, an empty
//! `/etc/machine-id`, no baked-in SSH host keys (and a unit that makes new ones), and a unit that
//! grows the root partition and filesystem to the end of the disk.

use super::tree_io::Io;
use super::{ApplyContext, Recipe};
use crate::Result;

/// The unit that grows the root partition.
pub const GROWROOT_UNIT: &str = "stamp-growroot.service";
/// The unit that generates SSH host keys.
pub const SSH_KEYGEN_UNIT: &str = "stamp-ssh-keygen.service";
/// Where stamp keeps its first-boot files in the image.
const STAMP_ETC: &str = "/etc/stamp";
/// The definitions stamp-growroot gives systemd-repart (not `/etc/repart.d`, which the image's
/// own `systemd-repart.service` would also read on every boot).
const REPART_DIR: &str = "/etc/stamp/repart.d";
/// The grow script used when the image has no systemd-repart.
const GROW_SCRIPT: &str = "/usr/lib/stamp/growroot";

/// Looks for `name` in the usual binary directories; returns the path found.
fn which(io: &Io<'_>, name: &str) -> Option<String> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| format!("{d}/{name}"))
        .find(|p| io.is_file(p))
}

/// Writes fstab and machine-id, removes baked-in SSH host keys and writes the first-boot units;
/// returns the units to enable.
pub fn apply(r: &Recipe, io: &mut Io<'_>, ctx: &ApplyContext) -> Result<Vec<String>> {
    let mut enable = Vec::new();
    write_fstab(r, io, ctx)?;

    // An empty machine-id: systemd generates one on first boot; none is baked into the image.
    io.write_file("/etc/machine-id", Vec::new(), 0o444)?;
    if let Some((_, id)) = io.tree.resolve(b"/var/lib/dbus/machine-id", false)
        && matches!(io.tree.entry(id).kind, stamp_fs::Kind::File(_))
    {
        io.remove("/var/lib/dbus/machine-id")?;
        io.symlink("/var/lib/dbus/machine-id", "/etc/machine-id")?;
    }

    if r.firstboot.ssh_host_keys {
        let keys: Vec<String> = io
            .list("/etc/ssh")
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with("ssh_host_"))
            .collect();
        for k in keys {
            io.remove(&format!("/etc/ssh/{k}"))?;
        }
        let sshd = which(io, "sshd").is_some();
        if let (true, Some(keygen)) = (sshd, which(io, "ssh-keygen")) {
            let unit = format!(
                "# Written by stamp: SSH host keys are made on the machine, never baked into the image.\n\
                 [Unit]\n\
                 Description=Generate SSH host keys\n\
                 Before=ssh.service sshd.service\n\
                 ConditionPathExists=!{STAMP_ETC}/ssh-keygen.done\n\
                 \n\
                 [Service]\n\
                 Type=oneshot\n\
                 RemainAfterExit=yes\n\
                 ExecStart={keygen} -A\n\
                 ExecStart=/bin/sh -c ': > {STAMP_ETC}/ssh-keygen.done'\n\
                 \n\
                 [Install]\n\
                 WantedBy=multi-user.target\n"
            );
            io.mkdir(STAMP_ETC)?;
            io.write_file(
                &format!("/etc/systemd/system/{SSH_KEYGEN_UNIT}"),
                unit.into_bytes(),
                0o644,
            )?;
            enable.push(SSH_KEYGEN_UNIT.to_string());
        }
    }

    if r.firstboot.grow_root {
        let exec = if let Some(repart) = which(io, "systemd-repart") {
            // Type=root is the Discoverable Partitions root type the pipeline gives partition 2;
            // without a size limit, systemd-repart grows it into the free space after it.
            io.write_file(
                &format!("{REPART_DIR}/50-root.conf"),
                b"# Written by stamp: grow the root partition to the end of the disk.\n[Partition]\nType=root\n"
                    .to_vec(),
                0o644,
            )?;
            Some(format!("{repart} --dry-run=no --definitions={REPART_DIR}"))
        } else if which(io, "growpart").is_some() || which(io, "sfdisk").is_some() {
            io.write_file(GROW_SCRIPT, GROW_SH.as_bytes().to_vec(), 0o755)?;
            Some(GROW_SCRIPT.to_string())
        } else {
            tracing::warn!(
                "the image has neither systemd-repart, growpart nor sfdisk: the root partition will not grow to the disk"
            );
            None
        };
        if let Some(exec) = exec {
            let unit = format!(
                "# Written by stamp: grow the root partition to the end of the disk on first boot;\n\
                 # the filesystem follows through x-systemd.growfs in /etc/fstab.\n\
                 [Unit]\n\
                 Description=Grow the root partition to the end of the disk\n\
                 DefaultDependencies=no\n\
                 After=systemd-remount-fs.service\n\
                 Before=systemd-growfs-root.service systemd-growfs@-.service local-fs.target shutdown.target\n\
                 Conflicts=shutdown.target\n\
                 ConditionPathExists=!{STAMP_ETC}/growroot.done\n\
                 ConditionVirtualization=!container\n\
                 \n\
                 [Service]\n\
                 Type=oneshot\n\
                 RemainAfterExit=yes\n\
                 ExecStart={exec}\n\
                 ExecStart=/bin/sh -c ': > {STAMP_ETC}/growroot.done'\n\
                 \n\
                 [Install]\n\
                 WantedBy=local-fs.target\n"
            );
            io.mkdir(STAMP_ETC)?;
            io.write_file(
                &format!("/etc/systemd/system/{GROWROOT_UNIT}"),
                unit.into_bytes(),
                0o644,
            )?;
            enable.push(GROWROOT_UNIT.to_string());
        }
    }
    Ok(enable)
}

/// Grows the partition holding `/` with growpart, or sfdisk (backup GPT moved to the new end
/// first) and partx, then the filesystem with resize2fs where systemd-growfs is missing.
const GROW_SH: &str = r#"#!/bin/sh
# Written by stamp: grow the root partition to the end of the disk.
set -eu
dev=$(readlink -f "$(findmnt -no SOURCE /)")
name=${dev##*/}
sys=/sys/class/block/$name
if [ ! -r "$sys/partition" ]; then
    echo "stamp-growroot: $dev is not a partition; nothing to grow" >&2
    exit 0
fi
part=$(cat "$sys/partition")
disk=/dev/$(basename "$(readlink -f "$sys/..")")
if command -v growpart >/dev/null 2>&1; then
    growpart "$disk" "$part" || [ $? -eq 1 ]
else
    sfdisk --relocate gpt-bak-std "$disk"
    echo ', +' | sfdisk --no-reread --no-tell-kernel -N "$part" "$disk"
    partx -u "$disk"
fi
if [ ! -x /usr/lib/systemd/systemd-growfs ] && [ ! -x /lib/systemd/systemd-growfs ] && command -v resize2fs >/dev/null 2>&1; then
    resize2fs "$dev"
fi
"#;

/// Writes `/etc/fstab`: the root by PARTUUID, the ESP at `/boot/efi`, and any other lines the
/// image had that mount elsewhere.
fn write_fstab(r: &Recipe, io: &mut Io<'_>, ctx: &ApplyContext) -> Result<()> {
    let growfs = if r.firstboot.grow_root {
        ",x-systemd.growfs"
    } else {
        ""
    };
    let mut text = format!(
        "# Written by stamp.\n\
         PARTUUID={} / {} rw,errors=remount-ro{growfs} 0 1\n\
         PARTUUID={} /boot/efi vfat umask=0077 0 2\n",
        ctx.root_partuuid, r.filesystem, ctx.esp_partuuid
    );
    if let Some(old) = io.read_text("/etc/fstab")? {
        for l in old.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.is_empty() || f[0].starts_with('#') {
                continue;
            }
            if matches!(f.get(1), Some(&"/") | Some(&"/boot/efi") | Some(&"/efi")) {
                continue;
            }
            text.push_str(l);
            text.push('\n');
        }
    }
    io.edit_file("/etc/fstab", text.into_bytes(), 0o644)?;
    Ok(())
}
