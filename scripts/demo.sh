#!/usr/bin/env bash
# Sets everything up and runs stamp's main job on a real input. Until `stamp build` lands, the main
# job is conversion: a real Debian 12 disk image (kernel, systemd, 1 GiB ext4) is converted to every
# format stamp writes, each checked by qemu-img and described by `stamp info`.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
cargo build --release --locked -q
stamp=target/release/stamp
raw=$(scripts/debian-image.sh)
out=${DEMO_DIR:-target/demo}
mkdir -p "$out"
for spec in qcow2: "qcow2:-c" vmdk:subformat=streamOptimized vhd:subformat=fixed,force_size=on vhdx: vdi: ova:; do
  fmt=${spec%%:*}; opt=${spec#*:}
  args=(convert -p -O "$fmt")
  case $opt in -c) args+=(-c); name=debian-compressed.$fmt ;; "") name=debian.$fmt ;; *) args+=(-o "$opt"); name=debian-${opt%%=*}.$fmt ;; esac
  start=$(date +%s.%N)
  "$stamp" "${args[@]}" "$raw" "$out/$name"
  end=$(date +%s.%N)
  awk -v n="$name" -v a="$start" -v b="$end" 'BEGIN { printf "\n== %s (%.1f s)\n", n, b - a }'
  "$stamp" info "$out/$name"
  if [[ $fmt != ova ]]; then
    qemu-img compare -q "$raw" "$out/$name" && echo "qemu-img compare: identical to the source"
  fi
done
