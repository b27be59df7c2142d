#!/usr/bin/env bash
# stamp run benchmark (issue 8): a stamp-built Debian disk (scripts/debian-image.sh --tar, then
# `stamp build`) booted under QEMU (TCG here) two ways in one run:
#   stamp: `stamp run -d --name bench DISK` (overlay, QMP, monitor, detached)
#   qemu:  the same QEMU command line stamp used, run by hand on its own overlay
#          (qemu-img create -b DISK), with its serial console in a file.
# For each: the time from the command to QEMU's process start (stamp's own overhead), to the
# first byte on the serial console, and to the `login:` prompt (log polled every 10 ms); plus
# the resident memory of stamp's monitor process while the machine runs.
#
# usage: benches/machine.sh [TAR]
# env:   STAMP_BIN=path uses that stamp binary instead of building target/release/stamp
set -euo pipefail
cd "$(dirname "$0")/.."
tar=${1:-$(scripts/debian-image.sh --tar)}
if [[ -n ${STAMP_BIN:-} ]]; then
  stamp=$STAMP_BIN
else
  cargo build --release --locked -q -p stamp
  stamp=$PWD/target/release/stamp
fi
work=$(mktemp -d /tmp/stamp-bench-machine.XXXXXX)
export XDG_STATE_HOME=$work/state XDG_CACHE_HOME=$work/cache
qpid=
cleanup() {
  "$stamp" rm -f bench >/dev/null 2>&1 || true
  [[ -n $qpid ]] && kill "$qpid" 2>/dev/null && wait "$qpid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
echo "== building the disk"
"$stamp" build --store "$work/store" "rootfs:$tar" -o "$work/disk.qcow2" >/dev/null

# Times are seconds since boot (/proc/uptime, CLOCK_BOOTTIME), the clock of process start times.
now() { local up _; read -r up _ </proc/uptime; echo "$up"; }
# wait_for FILE TEXT START: seconds from START until FILE contains TEXT (empty TEXT: any byte).
wait_for() {
  python3 - "$1" "$2" "$3" <<'PY'
import os, sys, time
path, text, start = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
clock = lambda: time.clock_gettime(time.CLOCK_BOOTTIME)
end = clock() + 600
while clock() < end:
    try:
        data = open(path, "rb").read()
    except FileNotFoundError:
        data = b""
    if (text and text in data) or (not text and data):
        print("%.3f" % (clock() - start)); sys.exit(0)
    time.sleep(0.01)
sys.exit("timed out waiting for %r in %s" % (text, path))
PY
}
# started PID START: seconds from START to the process's start (from /proc/PID/stat).
started() {
  python3 - "$1" "$2" <<'PY'
import os, sys
pid, start = sys.argv[1], float(sys.argv[2])
ticks = os.sysconf("SC_CLK_TCK")
stat = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()
print("%.3f" % (int(stat[19]) / ticks - start))
PY
}

echo "== stamp run -d"
t0=$(now)
"$stamp" run -d --name bench --memory 1G "$work/disk.qcow2" >/dev/null 2>"$work/run.err"
run_s=$(echo "$(now) - $t0" | bc)
mdir=$XDG_STATE_HOME/stamp/machines/bench
pid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["vmm"]["pid"])' "$mdir/status.json")
mon=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["monitor"]["pid"])' "$mdir/status.json")
s_start=$(started "$pid" "$t0")
s_first=$(wait_for "$mdir/console.log" "" "$t0")
s_login=$(wait_for "$mdir/console.log" "login:" "$t0")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$mon/status")
mapfile -d '' argv < "/proc/$pid/cmdline"
"$stamp" rm -f bench >/dev/null

echo "== the same QEMU by hand"
qemu-img create -q -f qcow2 -b "$work/disk.qcow2" -F qcow2 "$work/hand.qcow2"
cp /usr/share/OVMF/OVMF_VARS.fd "$work/hand-vars.fd"
hand=()
for a in "${argv[@]}"; do
  a=${a//$mdir\/disk.qcow2/$work/hand.qcow2}
  a=${a//$mdir\/vars.fd/$work/hand-vars.fd}
  a=${a//$mdir\/console.log/$work/hand.log}
  a=${a//$mdir\/qmp.sock/$work/hand-qmp.sock}
  hand+=("$a")
done
t0=$(now)
"${hand[@]}" >/dev/null 2>&1 &
qpid=$!
q_start=$(started "$qpid" "$t0")
q_first=$(wait_for "$work/hand.log" "" "$t0")
q_login=$(wait_for "$work/hand.log" "login:" "$t0")
kill "$qpid"; wait "$qpid" 2>/dev/null || true; qpid=

printf '%-34s %10s %10s\n' "" "stamp run" "qemu"
printf '%-34s %9.3fs %9.3fs\n' "command to QEMU process start" "$s_start" "$q_start"
printf '%-34s %9.3fs %9.3fs\n' "command to first serial output" "$s_first" "$q_first"
printf '%-34s %9.3fs %9.3fs\n' "command to login: prompt" "$s_login" "$q_login"
printf '%-34s %9.3fs\n' "stamp run -d returned after" "$run_s"
printf 'stamp overhead before QEMU starts: %.0f ms\n' "$(echo "($s_start - $q_start) * 1000" | bc -l)"
printf 'login prompt, stamp/qemu: %.2f\n' "$(echo "$s_login / $q_login" | bc -l)"
printf "memory of stamp's monitor while the machine runs: %d KiB RSS\n" "$rss"
