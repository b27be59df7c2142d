#!/usr/bin/env bash
# mkfs benchmark: `stamp mkfs ext4` from the Debian rootfs tar (see scripts/debian-image.sh)
# against the fastest existing route to the same image, extracting the tar as root and running
# `mke2fs -t ext4 -d` on the tree, one run each, side by side. Prints both times, their ratio and
# stamp's peak memory (RSS, from /usr/bin/time -f %M).
#
# The mke2fs route needs root (extraction keeps owners and device nodes); run as root or under
# sudo. Both images are checked with `e2fsck -fn` so that a fast but broken image does not count.
#
# usage: benches/mkfs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p stamp
stamp=$PWD/target/release/stamp
scripts/debian-image.sh >/dev/null
tar="${XDG_CACHE_HOME:-$HOME/.cache}/stamp-dev/debian-rootfs.tar"
[[ -s $tar ]] || { echo "no $tar: scripts/debian-image.sh did not make it" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "the mke2fs route extracts the tar as root: run as root" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "/usr/bin/time is needed (apt-get install time)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/stamp-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat "$tar" >/dev/null  # warm the page cache so both routes read from memory

now() { date +%s.%N; }
elapsed() { awk -v s="$1" -v e="$2" 'BEGIN { printf "%.2f", e - s }'; }

# stamp: one command, no root, no extraction.
s=$(now)
/usr/bin/time -f %M -o "$work/stamp.rss" "$stamp" mkfs ext4 --from "$tar" -o "$work/stamp.img"
e=$(now)
t_stamp=$(elapsed "$s" "$e")
rss_kib=$(tail -1 "$work/stamp.rss")

# mke2fs -d: extract as root, then build an image of the same size as stamp's.
size=$(stat -c %s "$work/stamp.img")
s=$(now)
mkdir "$work/root"
tar -xf "$tar" -C "$work/root" --numeric-owner --xattrs --xattrs-include='*'
truncate -s "$size" "$work/mke2fs.img"
mke2fs -q -F -t ext4 -d "$work/root" "$work/mke2fs.img"
e=$(now)
t_mke2fs=$(elapsed "$s" "$e")

e2fsck -fn "$work/stamp.img" >/dev/null
e2fsck -fn "$work/mke2fs.img" >/dev/null

printf '%-40s %8s s\n' "stamp mkfs ext4 --from debian-rootfs.tar" "$t_stamp"
printf '%-40s %8s s\n' "tar -x as root + mke2fs -t ext4 -d" "$t_mke2fs"
awk -v a="$t_stamp" -v b="$t_mke2fs" 'BEGIN { printf "ratio stamp/mke2fs: %.2f (target <= 0.5)\n", a / b }'
awk -v k="$rss_kib" 'BEGIN { printf "stamp peak memory: %.1f MiB (target < 256)\n", k / 1024 }'
