#!/usr/bin/env bash
# Sets everything up and runs stamp's main job on a real input: a Debian 12 root filesystem
# (made by mmdebstrap with the cloud kernel, systemd and systemd-boot's stub) is stamped into a
# bootable UEFI disk in several formats at once — no root needed for the build, no VM, no
# daemon — and the qcow2 is booted under QEMU (software emulation, OVMF firmware) until its
# serial console shows the login prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
[[ -f /usr/share/OVMF/OVMF_CODE.fd ]] || need+=(ovmf)
if ((${#need[@]})); then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
command -v qemu-system-x86_64 >/dev/null || scripts/install-qemu-system.sh
cargo build --release --locked -q
stamp=$PWD/target/release/stamp
tar=$(scripts/debian-image.sh --tar)
out=${DEMO_DIR:-target/demo}
mkdir -p "$out"
echo "== stamp build rootfs:$tar -f examples/demo.toml -o debian.qcow2 -o debian.vmdk -o debian.vhd"
start=$(date +%s.%N)
"$stamp" build --store "$out/store" -p "rootfs:$tar" -f examples/demo.toml \
  -o "$out/debian.qcow2" -o "$out/debian.vmdk" -o "$out/debian.vhd"
end=$(date +%s.%N)
awk -v a="$start" -v b="$end" 'BEGIN { printf "== built in %.1f s\n", b - a }'
"$stamp" info "$out/debian.qcow2"
echo "== booting debian.qcow2 under QEMU (TCG, OVMF): about a minute to the login prompt"
cp /usr/share/OVMF/OVMF_VARS.fd "$out/vars.fd"
log=$out/console.log
: >"$log"
qemu-system-x86_64 -accel tcg -m 1024 -display none -no-reboot -serial "file:$log" \
  -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd \
  -drive if=pflash,format=raw,file="$out/vars.fd" \
  -drive file="$out/debian.qcow2",if=virtio,format=qcow2 &
qemu=$!
trap 'kill $qemu 2>/dev/null || true' EXIT
tail -n +1 -f --pid=$qemu "$log" &
start=$(date +%s)
while ! grep -q 'login:' "$log"; do
  kill -0 $qemu 2>/dev/null || { echo "== QEMU exited before the login prompt" >&2; exit 1; }
  (( $(date +%s) - start < 300 )) || { echo "== no login prompt after 300 s" >&2; exit 1; }
  sleep 1
done
sleep 1
echo
echo "== reached the login prompt $(( $(date +%s) - start )) s after QEMU started (log: $log)"
grep -a 'STAMP-DEMO' "$log" | head -1 || true
