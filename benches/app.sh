#!/usr/bin/env bash
# stamp app benchmark (issue 9): the launch overhead of a podman flake against a plain
# `podman run --rm` of the same image, N calls each, alternating (the busybox image of the
# tests, localhost/stamp-test-busybox:1, made here by `podman import` when missing).
# Prints the mean wall time of a call of each and the ratio flake/podman.
#
# usage: benches/app.sh [-n N]
# env:   STAMP_BIN=path uses that stamp binary instead of building target/release/stamp;
#        STAMP_PODMAN_RUNTIME (default runc, as crun does not work on these machines)
set -euo pipefail
cd "$(dirname "$0")/.."
n=20
[[ ${1:-} == -n ]] && n=$2
if [[ -n ${STAMP_BIN:-} ]]; then
  stamp=$STAMP_BIN
else
  cargo build --release --locked -q -p stamp
  stamp=$PWD/target/release/stamp
fi
export STAMP_PODMAN_RUNTIME=${STAMP_PODMAN_RUNTIME:-runc}
work=$(mktemp -d /tmp/stamp-bench-app.XXXXXX)
trap 'rm -rf "$work"' EXIT
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
