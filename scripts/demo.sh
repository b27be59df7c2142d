#!/usr/bin/env bash
# Sets everything up and runs stamp's main job on a real input: a Debian 12 root filesystem
# (made by mmdebstrap with the cloud kernel, systemd and systemd-boot's stub) is stamped into a
# bootable UEFI disk in several formats at once — no root needed for the build, no VM, no
# daemon — and the qcow2 runs as a machine (`stamp run`: QEMU, software emulation here, OVMF
# firmware) until its serial console shows the login prompt; then it is stopped and removed.
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
echo "== stamp run -d debian.qcow2 (QEMU; TCG here, OVMF): about half a minute to the login prompt"
export XDG_STATE_HOME=$PWD/$out/state
"$stamp" rm -f stamp-demo >/dev/null 2>&1 || true
"$stamp" run -d --name stamp-demo "$out/debian.qcow2"
trap '"$stamp" rm -f stamp-demo >/dev/null 2>&1 || true' EXIT
"$stamp" ps
start=$(date +%s)
"$stamp" logs -f stamp-demo &
logs=$!
while ! "$stamp" logs stamp-demo | grep -q 'login:'; do
  [[ $("$stamp" inspect --json stamp-demo | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])') == running ]] ||
    { echo "== the machine stopped before the login prompt" >&2; exit 1; }
  (( $(date +%s) - start < 300 )) || { echo "== no login prompt after 300 s" >&2; exit 1; }
  sleep 1
done
sleep 1
kill $logs 2>/dev/null || true
echo
echo "== reached the login prompt $(( $(date +%s) - start )) s after stamp run"
"$stamp" logs stamp-demo | grep -a 'STAMP-DEMO' | head -1 || true
echo "== stamp stop stamp-demo (the guest shuts itself down)"
"$stamp" stop -t 120 stamp-demo
"$stamp" ps -a
"$stamp" rm stamp-demo
