#!/usr/bin/env bash
# stamp app benchmark (issue 9): the launch overhead of a podman flake against a plain
# `podman run --rm` of the same image, N calls each, alternating (the busybox image of the
# tests, localhost/stamp-test-busybox:1, made here by `podman import` when missing).
# Prints the mean wall time of a call of each and the ratio flake/podman.
# Then the vm engine (when the busybox application image and the Debian tar of
# scripts/debian-image.sh are there): a flake of the app image booted with the Debian kernel
# under QEMU (TCG without KVM), the time from the call to the app's first output line, mean of
# M calls (-m, default 3) after a first call that builds the disk; then the same flake with
# --resume: the mean of N calls into its running instance (one machine, booted by the first);
# and, when vhost-device-vsock is on PATH, the same over the vsock transport (Firecracker's
# hybrid vsock protocol), with the ratio vsock/virtio-serial.
#
# usage: benches/app.sh [-n N] [-m M]
# env:   STAMP_BIN=path uses that stamp binary instead of building target/release/stamp;
#        STAMP_PODMAN_RUNTIME (default runc, as crun does not work on these machines)
set -euo pipefail
cd "$(dirname "$0")/.."
n=20 m=3
while [[ $# -gt 1 ]]; do
  case $1 in
    -n) n=$2 ;;
    -m) m=$2 ;;
    *) echo "usage: benches/app.sh [-n N] [-m M]" >&2; exit 2 ;;
  esac
  shift 2
done
if [[ -n ${STAMP_BIN:-} ]]; then
  stamp=$STAMP_BIN
else
  cargo build --release --locked -q -p stamp
  stamp=$PWD/target/release/stamp
fi
export STAMP_PODMAN_RUNTIME=${STAMP_PODMAN_RUNTIME:-runc}
work=$(mktemp -d /tmp/stamp-bench-app.XXXXXX)
trap '[[ -x ${stamp:-} ]] && for a in vres vsres; do "$stamp" app remove $a >/dev/null 2>&1; done; rm -rf "$work"' EXIT
printf '[containers]\ndefault_ulimits = []\n' >"$work/containers.conf"
export CONTAINERS_CONF=$work/containers.conf XDG_DATA_HOME=$work/data
image=localhost/stamp-test-busybox:1
if ! podman image exists "$image"; then
  mkdir -p "$work/root/bin"; cp /bin/busybox "$work/root/bin/"
  for a in sh echo cat sleep httpd; do ln -s busybox "$work/root/bin/$a"; done
  tar -C "$work/root" -cf "$work/root.tar" . && podman import -q "$work/root.tar" "$image" >/dev/null
fi
"$stamp" app register --user --app "$work/bin/bsh" --image "$image" --target /bin/sh >/dev/null
flake=0 plain=0
for _ in $(seq "$n"); do
  t=$(date +%s%N); "$work/bin/bsh" -c true </dev/null; flake=$((flake + $(date +%s%N) - t))
  t=$(date +%s%N); podman --runtime "$STAMP_PODMAN_RUNTIME" run --rm "$image" /bin/sh -c true </dev/null
  plain=$((plain + $(date +%s%N) - t))
done
printf 'flake (stamp launcher):  %.1f ms a call\n' "$(echo "$flake / $n / 1000000" | bc -l)"
printf 'podman run --rm:         %.1f ms a call\n' "$(echo "$plain / $n / 1000000" | bc -l)"
printf 'ratio flake/podman: %.3f\n' "$(echo "$flake / $plain" | bc -l)"

cache=${XDG_CACHE_HOME:-$HOME/.cache}/stamp-dev
app_oci=${STAMP_APP_OCI:-$cache/app-oci.tar}
debian=${STAMP_DEBIAN_TAR:-$cache/debian-rootfs.tar}
if [[ ! -f $app_oci || ! -f $debian ]]; then
  echo "vm engine: skipped (no $app_oci or $debian: scripts/debian-image.sh and --app make them)"
  exit 0
fi
export XDG_CACHE_HOME=$work/cache XDG_RUNTIME_DIR=$work/run
mkdir -p "$work/run"
"$stamp" app register --user --engine vm --no-net --memory 512M --app "$work/bin/vsh" \
  --image "oci-archive:$app_oci" --kernel "rootfs:$debian" --target /bin/sh >/dev/null
# Time from the call to the first line the app writes (the disk is built by the first call).
first_output() {
  local t0 t1
  t0=$(date +%s%N)
  t1=$("$work/bin/${1:-vsh}" -c 'echo ready' </dev/null | { read -r _; date +%s%N; cat >/dev/null; })
  echo $((t1 - t0))
}
build=$(first_output)
vm=0
for _ in $(seq "$m"); do vm=$((vm + $(first_output))); done
printf 'vm engine, first call (builds the disk): %.1f s to the first output\n' "$(echo "$build / 1000000000" | bc -l)"
printf 'vm engine (%s): %.1f s from the call to the first output (mean of %s)\n' \
  "$(sed -n 2p "$work/cache/stamp/kvm-probe" 2>/dev/null | grep -qx ok && echo KVM || echo TCG)" "$(echo "$vm / $m / 1000000000" | bc -l)" "$m"
"$stamp" app register --user --engine vm --no-net --memory 512M --app "$work/bin/vres" --resume \
  --image "oci-archive:$app_oci" --kernel "rootfs:$debian" --target /bin/sh >/dev/null
boot=$(first_output vres)
resume=0
for _ in $(seq "$n"); do resume=$((resume + $(first_output vres))); done
printf 'vm engine, --resume: first call (builds the disk, boots) %.1f s; then %.1f ms a call (mean of %s)\n' \
  "$(echo "$boot / 1000000000" | bc -l)" "$(echo "$resume / $n / 1000000" | bc -l)" "$n"
if ! command -v vhost-device-vsock >/dev/null; then
  echo "vm engine over vsock: skipped (no vhost-device-vsock: cargo install vhost-device-vsock)"
  exit 0
fi
"$stamp" app register --user --engine vm --no-net --memory 512M --app "$work/bin/vsres" --resume \
  --transport vsock --image "oci-archive:$app_oci" --kernel "rootfs:$debian" --target /bin/sh >/dev/null
vboot=$(first_output vsres)
vresume=0
for _ in $(seq "$n"); do vresume=$((vresume + $(first_output vsres))); done
printf 'vm engine over vsock, --resume: first call (boots) %.1f s; then %.1f ms a call (mean of %s)\n' \
  "$(echo "$vboot / 1000000000" | bc -l)" "$(echo "$vresume / $n / 1000000" | bc -l)" "$n"
printf 'ratio vsock/virtio-serial: first call %.3f, resumed call %.3f\n' \
  "$(echo "$vboot / $boot" | bc -l)" "$(echo "$vresume / $resume" | bc -l)"
