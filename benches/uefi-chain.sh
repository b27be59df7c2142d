#!/usr/bin/env bash
# The chain of standard tools a user scripts today to make a bootable UEFI disk from a root
# filesystem tar (the peer of `stamp build`, and the reference disk the boot harness is proven on):
#   tar -x as root -> fstab -> mke2fs -t ext4 -d -> a Unified Kernel Image made with objcopy from the
#   tree's systemd-stub (.osrel, .cmdline, .linux, .initrd after the stub's own sections, as
#   systemd-stub(7) shows) -> mkfs.vfat + mcopy (\EFI\BOOT\BOOTX64.EFI) -> sfdisk (GPT: ESP + root
#   with fixed PARTUUIDs) -> dd the filesystems into a raw disk -> qemu-img convert -O qcow2.
# The tar must have a kernel and initrd in /boot and /usr/lib/systemd/boot/efi/linuxx64.efi.stub
# (scripts/debian-image.sh --tar). The kernel boots root=PARTUUID=<root> rw console=ttyS0.
#
# usage: benches/uefi-chain.sh TAR OUT.qcow2      (as root: the extraction keeps owners and devices)
# env:   KEEP_RAW=1 keeps OUT.raw beside OUT.qcow2; STEP_TIMES=1 prints each step's seconds to
#        stderr; CHAIN_WORK=DIR works in DIR (made empty) and leaves it for the caller to remove
#        (benches/build.sh does so outside the timed part: removing the tree is not making the disk)
set -euo pipefail
[[ $# == 2 ]] || { echo "usage: $0 TAR OUT.qcow2" >&2; exit 2; }
tar=$1 out=$2
[[ -s $tar ]] || { echo "error: no $tar" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "error: the extraction keeps owners and device nodes: run as root" >&2; exit 1; }
for t in mke2fs objcopy objdump mkfs.vfat mmd mcopy sfdisk qemu-img; do
  command -v $t >/dev/null || { echo "error: $t is missing (scripts/install-test-deps.sh)" >&2; exit 1; }
done

# Fixed identities, so that the kernel command line is known before the disk exists.
disk_guid=5A4D5354-0000-4000-8000-000000000001
esp_partuuid=5A4D5354-0000-4000-8000-0000000000e5
root_partuuid=5A4D5354-0000-4000-8000-0000000000f0
esp_mib=128

t0=$(date +%s.%N)
step() { # prints the time since the previous step under the previous step's name
  [[ ${STEP_TIMES:-} == 1 ]] || return 0
  local t; t=$(date +%s.%N)
  awk -v n="$1" -v a="$t0" -v b="$t" 'BEGIN { printf "  %-28s %6.2f s\n", n, b - a }' >&2
  t0=$t
}
if [[ -n ${CHAIN_WORK:-} ]]; then
  work=$CHAIN_WORK
  rm -rf "$work"
  mkdir -p "$work"
else
  work=$(mktemp -d "$(dirname "$out")/.uefi-chain.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi
root=$work/root
mkdir "$root"
tar -x --numeric-owner --xattrs --xattrs-include='*' -f "$tar" -C "$root"
step "tar -x"

# The newest kernel and its initrd.
kernel=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -1)
[[ -n $kernel ]] || { echo "error: $tar has no /boot/vmlinuz-*" >&2; exit 1; }
initrd=$root/boot/initrd.img-${kernel##*/vmlinuz-}
[[ -s $initrd ]] || { echo "error: $tar has no /boot/${initrd##*/}" >&2; exit 1; }
stub=$root/usr/lib/systemd/boot/efi/linuxx64.efi.stub
[[ -s $stub ]] || { echo "error: $tar has no ${stub#"$root"}" >&2; exit 1; }
osrel=$root/usr/lib/os-release
[[ -s $osrel ]] || osrel=$root/etc/os-release

printf '%s\n' "PARTUUID=${root_partuuid,,} / ext4 rw,errors=remount-ro 0 1" \
  "PARTUUID=${esp_partuuid,,} /boot/efi vfat umask=0077 0 2" >"$root/etc/fstab"
mkdir -p "$root/boot/efi"

# UKI: each added section starts at the next 4 KiB boundary after the previous one (VMAs relative
# to the image base, which objdump includes).
printf '%s' "root=PARTUUID=${root_partuuid,,} rw console=ttyS0" >"$work/cmdline"
end=0
while read -r idx _ size vma _; do
  [[ $idx =~ ^[0-9]+$ ]] || continue
  ((0x$vma + 0x$size > end)) && end=$((0x$vma + 0x$size))
done < <(objdump -h "$stub")
align() { echo $(( ($1 + 4095) / 4096 * 4096 )); }
args=()
for s in osrel:"$osrel" cmdline:"$work/cmdline" linux:"$kernel" initrd:"$initrd"; do
  name=${s%%:*} file=${s#*:}
  vma=$(align "$end")
  args+=(--add-section ".$name=$file" --change-section-vma ".$name=$(printf '0x%x' "$vma")")
  end=$((vma + $(stat -Lc %s "$file")))
done
objcopy "${args[@]}" "$stub" "$work/uki.efi"
step "fstab + objcopy UKI"

# ESP (FAT32) with the UKI as the removable-media boot path.
mkfs.vfat -F 32 -n ESP -i 5354414d -C "$work/esp.img" $((esp_mib * 1024)) >/dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.img" "$work/uki.efi" ::/EFI/BOOT/BOOTX64.EFI
step "mkfs.vfat + mcopy"

# Root: the tree's size plus a quarter plus 256 MiB.
used_mib=$(du -s --block-size=1M "$root" | cut -f1)
root_mib=$((used_mib * 5 / 4 + 256))
truncate -s "${root_mib}M" "$work/root.img"
mke2fs -q -F -t ext4 -L root -E root_owner=0:0 -d "$root" "$work/root.img" >/dev/null
step "du + mke2fs -d"

# GPT: ESP at 1 MiB, root after it, 1 MiB at the end for the backup table.
raw=$work/disk.raw
truncate -s $((1 + esp_mib + root_mib + 1))M "$raw"
sfdisk -q "$raw" <<GPT
label: gpt
label-id: $disk_guid
start=1MiB, size=${esp_mib}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$esp_partuuid, name="ESP"
start=$((1 + esp_mib))MiB, size=${root_mib}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$root_partuuid, name="root"
GPT
dd if="$work/esp.img" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$raw" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none
step "sfdisk + dd"
qemu-img convert -O qcow2 "$raw" "$out"
step "qemu-img convert"
if [[ ${KEEP_RAW:-} == 1 ]]; then mv "$raw" "${out%.qcow2}.raw"; fi
if [[ -z ${CHAIN_WORK:-} ]]; then
  rm -rf "$work"
  step "rm -rf (clean-up)"
fi
