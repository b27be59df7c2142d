#!/usr/bin/env bash
# stamp build benchmark: a bootable UEFI qcow2 from the Debian rootfs tar (see
# scripts/debian-image.sh) made two ways in one run, side by side:
#   stamp:  `stamp build --store EMPTY rootfs:TAR -o stamp.qcow2` (one command, no root; a fresh
#           store each run, so nothing comes from stamp's build cache)
#   chain:  benches/uefi-chain.sh, the standard tools a user scripts today: tar -x as root,
#           mke2fs -t ext4 -d, an objcopy UKI from the tree's systemd-stub, mkfs.vfat + mcopy,
#           sfdisk (GPT, ESP + root), dd, qemu-img convert -O qcow2.
# Prints the wall-clock times (best of N runs each), their ratio, stamp's peak memory (RSS, from
# /usr/bin/time -v) and the disks' sizes; both disks must pass `qemu-img check`. With --boot, also
# boots each disk once under QEMU (TCG, OVMF; the command of crates/stamp/tests/cli/qemu.rs) and
# prints the time from QEMU's start to the serial `login:` prompt.
# If stamp build fails, the chain still runs and the table says "stamp build failed".
#
# usage: benches/build.sh [-n N] [--boot] [TAR]     (as root: the chain extracts the tar as root)
# env:   STAMP_BIN=path uses that stamp binary instead of building target/release/stamp
set -euo pipefail
cd "$(dirname "$0")/.."
runs=1 boot=false tar=
while (($#)); do
  case $1 in
    -n) runs=$2; shift 2 ;;
    --boot) boot=true; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) tar=$1; shift ;;
  esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "-n wants a positive count" >&2; exit 2; }
[[ -n $tar ]] || tar=$(scripts/debian-image.sh --tar)
[[ -s $tar ]] || { echo "no $tar" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "the chain extracts the tar as root: run as root" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "/usr/bin/time is needed (apt-get install time)" >&2; exit 1; }
if [[ -n ${STAMP_BIN:-} ]]; then
  stamp=$STAMP_BIN
else
  cargo build --release --locked -q -p stamp
  stamp=$PWD/target/release/stamp
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/stamp-bench.XXXXXX")
qemu_pgid=
cleanup() {
  [[ -z $qemu_pgid ]] || kill -KILL -- "-$qemu_pgid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cat "$tar" >/dev/null  # warm the page cache so both routes read from memory

now() { date +%s.%N; }
min() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b < a) print b; else print a }'; }
elapsed() { awk -v s="$1" -v e="$2" 'BEGIN { printf "%.2f", e - s }'; }
actual_mib() { qemu-img info --output=json "$1" | awk -F'[:,]' '/"actual-size"/ { printf "%.0f", $2 / 1048576; exit }'; }

# stamp: best of N; peak RSS of the best run.
t_stamp= rss_kib=
for ((i = 0; i < runs; i++)); do
  # A fresh store each run: a cold build, never served from stamp's build cache.
  rm -rf "$work/stamp.qcow2" "$work/store"
  s=$(now)
  if ! /usr/bin/time -v -o "$work/stamp.time" "$stamp" build --store "$work/store" "rootfs:$tar" \
    -o "$work/stamp.qcow2" >"$work/stamp.out" 2>"$work/stamp.err"; then
    t_stamp=failed
    break
  fi
  e=$(now)
  t=$(elapsed "$s" "$e")
  if [[ $(min "$t_stamp" "$t") == "$t" ]]; then
    t_stamp=$t
    rss_kib=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/stamp.time")
  fi
done
if [[ $t_stamp == failed ]]; then
  echo "stamp build failed:" >&2
  tail -5 "$work/stamp.err" >&2
else
  qemu-img check -q "$work/stamp.qcow2"
fi

# the chain of standard tools: best of N, its clean-up not timed.
t_chain=
for ((i = 0; i < runs; i++)); do
  rm -f "$work/chain.qcow2"
  s=$(now)
  CHAIN_WORK=$work/chain-work benches/uefi-chain.sh "$tar" "$work/chain.qcow2"
  e=$(now)
  t_chain=$(min "$t_chain" "$(elapsed "$s" "$e")")
  rm -rf "$work/chain-work"  # not timed: removing the tree is not making the disk
done
qemu-img check -q "$work/chain.qcow2"

# Seconds from QEMU's start to "login:" on the serial console ("failed: ..." otherwise): the
# harness's command, one boot at a time, 240 s at most.
boot_time() {
  local disk=$1 log=$work/boot.log code=/usr/share/OVMF/OVMF_CODE.fd
  cp /usr/share/OVMF/OVMF_VARS.fd "$work/vars.fd"
  : >"$log"
  local s; s=$(now)
  setsid qemu-system-x86_64 -accel tcg -m 1024 -nographic -no-reboot \
    -drive if=pflash,format=raw,readonly=on,file=$code \
    -drive if=pflash,format=raw,file="$work/vars.fd" \
    -drive file="$disk",if=virtio,format=qcow2 -nic none \
    </dev/null >"$log" 2>"$work/boot.err" &
  qemu_pgid=$!
  local result="failed: timeout"
  while true; do
    if grep -q 'login:' "$log"; then result=$(elapsed "$s" "$(now)"); break; fi
    if grep -q -E 'Kernel panic|emergency mode|Failed to start' "$log"; then
      result="failed: $(grep -o -E 'Kernel panic|emergency mode|Failed to start' "$log" | head -1)"; break
    fi
    if ! kill -0 "$qemu_pgid" 2>/dev/null; then result="failed: qemu exited"; break; fi
    if (($(elapsed "$s" "$(now)" | cut -d. -f1) >= 240)); then break; fi
    sleep 0.1
  done
  kill -KILL -- "-$qemu_pgid" 2>/dev/null || true
  wait "$qemu_pgid" 2>/dev/null || true
  qemu_pgid=
  echo "$result"
}
if $boot; then
  b_stamp="-"
  [[ $t_stamp == failed ]] || b_stamp=$(boot_time "$work/stamp.qcow2")
  b_chain=$(boot_time "$work/chain.qcow2")
fi

echo "input: $tar ($(($(stat -c %s "$tar") / 1048576)) MiB); best of $runs; $(nproc) cores"
label_s="stamp build rootfs:$(basename "$tar")"
label_c="chain: tar -x, mke2fs -d, objcopy UKI, mkfs.vfat, sfdisk, dd, qemu-img"
if [[ $t_stamp == failed ]]; then
  printf '%-72s %s\n' "$label_s" "stamp build failed"
else
  printf '%-72s %8s s  %5s MiB disk\n' "$label_s" "$t_stamp" "$(actual_mib "$work/stamp.qcow2")"
fi
printf '%-72s %8s s  %5s MiB disk\n' "$label_c" "$t_chain" "$(actual_mib "$work/chain.qcow2")"
if [[ $t_stamp != failed ]]; then
  awk -v a="$t_stamp" -v b="$t_chain" 'BEGIN { printf "ratio stamp/chain: %.2f\n", a / b }'
  awk -v k="$rss_kib" 'BEGIN { printf "stamp peak memory: %.1f MiB\n", k / 1024 }'
fi
if $boot; then
  printf 'boot to login: (TCG)  stamp %s s   chain %s s\n' "$b_stamp" "$b_chain"
fi
