#!/usr/bin/env bash
# Conversion benchmark: stamp against qemu-img (and cp --sparse=always) on a real Debian 12 disk
# image (1 GiB virtual, ~400 MiB of data; see scripts/debian-image.sh), in one run, printing ratios.
# Each timing is the best of RUNS runs (default 5: page-cache effects make single runs of the
# sub-second cases vary by 2-5x here); compressed conversions run once.
#
# usage: benches/convert.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
cargo build --release --locked -q
stamp=$PWD/target/release/stamp
raw=$(scripts/debian-image.sh)
work=$(mktemp -d "${TMPDIR:-/tmp}/stamp-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat "$raw" >/dev/null  # warm the page cache so both tools read from memory

now() { date +%s.%N; }
# best SECONDS of running "$@" $2 times; removes the output ($1) between runs
best() {
  local out=$1 n=$2; shift 2
  local b=""
  for ((i = 0; i < n; i++)); do
    rm -f "$out"
    local s e
    s=$(now); "$@" >/dev/null; e=$(now)
    b=$(awk -v s="$s" -v e="$e" -v b="$b" 'BEGIN { t = e - s; if (b == "" || t < b) print t; else print b }')
  done
  echo "$b"
}
peak_kib() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; }
size_of() { stat -c %s "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

data=$(($(stat -c %b "$raw") * 512))
echo "input: $raw, virtual $(size_of "$raw") bytes, data $data bytes; $(nproc) cores; $(qemu-img --version | head -1)"
printf '%-34s %10s %10s %10s %8s\n' case stamp_s qemu_s cp_s qemu/stamp
q="$work/q.qcow2"; qemu-img convert -O qcow2 "$raw" "$q"

row() { # name stamp_time qemu_time [cp_time]
  local cpcol=${4:--}
  printf '%-34s %10.3f %10.3f %10s %8s\n' "$1" "$2" "$3" "$cpcol" "$(ratio "$3" "$2")x"
  if [[ $cpcol != - ]]; then
    printf '%-34s %10s %10s %10s %8s\n' "  stamp vs cp --sparse=always" "" "" "" "$(ratio "$2" "$4")x of cp"
  fi
}

t_cp=$(best "$work/cp.raw" "$runs" cp --sparse=always "$raw" "$work/cp.raw")
t_s=$(best "$work/s.qcow2" "$runs" "$stamp" convert -O qcow2 "$raw" "$work/s.qcow2")
t_q=$(best "$work/q2.qcow2" "$runs" qemu-img convert -O qcow2 "$raw" "$work/q2.qcow2")
row "raw -> qcow2" "$t_s" "$t_q" "$t_cp"
t_s=$(best "$work/s.vhd" "$runs" "$stamp" convert -O vhd "$raw" "$work/s.vhd")
t_q=$(best "$work/q.vhd" "$runs" qemu-img convert -O vpc "$raw" "$work/q.vhd")
row "raw -> vhd (dynamic)" "$t_s" "$t_q" "$t_cp"
t_s=$(best "$work/s.raw" "$runs" "$stamp" convert -O raw "$q" "$work/s.raw")
t_q=$(best "$work/q.raw" "$runs" qemu-img convert -O raw "$q" "$work/q.raw")
row "qcow2 -> raw" "$t_s" "$t_q" "$t_cp"
t_s=$(best "$work/sc.qcow2" 1 "$stamp" convert -c -O qcow2 "$raw" "$work/sc.qcow2")
t_q=$(best "$work/qc.qcow2" 1 qemu-img convert -c -O qcow2 "$raw" "$work/qc.qcow2")
row "raw -> qcow2 -c (zlib)" "$t_s" "$t_q"
echo "  size: stamp $(size_of "$work/sc.qcow2") qemu $(size_of "$work/qc.qcow2") = $(ratio "$(size_of "$work/sc.qcow2")" "$(size_of "$work/qc.qcow2")")x"
t_s=$(best "$work/s.vmdk" 1 "$stamp" convert -O vmdk -o subformat=streamOptimized "$raw" "$work/s.vmdk")
t_q=$(best "$work/q.vmdk" 1 qemu-img convert -O vmdk -o subformat=streamOptimized "$raw" "$work/q.vmdk")
row "raw -> vmdk streamOptimized" "$t_s" "$t_q"
echo "  size: stamp $(size_of "$work/s.vmdk") qemu $(size_of "$work/q.vmdk") = $(ratio "$(size_of "$work/s.vmdk")" "$(size_of "$work/q.vmdk")")x"
for f in sc.qcow2 s.vmdk s.vhd; do qemu-img compare -q "$raw" "$work/$f" || { echo "MISMATCH: $f" >&2; exit 1; }; done
rm -f "$work/m.qcow2"
echo "peak memory of stamp (raw -> qcow2 -c): $(peak_kib "$stamp" convert -c -O qcow2 "$raw" "$work/m.qcow2") KiB"
rm -f "$work/m.vmdk"
echo "peak memory of stamp (raw -> vmdk streamOptimized): $(peak_kib "$stamp" convert -O vmdk -o subformat=streamOptimized "$raw" "$work/m.vmdk") KiB"
