#!/usr/bin/env bash
# Makes a real Debian 12 disk image to convert, benchmark and (later) boot: a root filesystem with
# kernel, initrd and systemd from mmdebstrap, as an ext4 filesystem in a 1 GiB sparse raw file.
# Prints the raw image's path. Cached: a second run reuses the image.
# With --tar, makes only the root filesystem tar (what the tests read) and prints its path.
#
# usage: scripts/debian-image.sh [--tar] [CACHE_DIR]    (default: ${XDG_CACHE_HOME:-~/.cache}/stamp-dev)
set -euo pipefail
tar_only=false
if [[ ${1:-} == --tar ]]; then
  tar_only=true
  shift
fi
cache=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/stamp-dev}
mkdir -p "$cache"
tar="$cache/debian-rootfs.tar"
raw="$cache/debian.raw"
if [[ ! -s $tar ]]; then
  echo "building a Debian root filesystem with mmdebstrap (about a minute)..." >&2
  mmdebstrap --quiet --format=tar --variant=apt \
    --include=linux-image-cloud-amd64,systemd-sysv,systemd-boot-efi,udev \
    bookworm "$tar.tmp" >&2
  mv "$tar.tmp" "$tar"
fi
if $tar_only; then
  echo "$tar"
  exit 0
fi
if [[ ! -s $raw ]]; then
  echo "making a 1 GiB ext4 image of it..." >&2
  root=$(mktemp -d "$cache/root.XXXXXX")
  trap 'rm -rf "$root" "$raw.tmp"' EXIT
  tar -xf "$tar" -C "$root"
  rm -f "$raw.tmp"
  mke2fs -q -t ext4 -L debian -E root_owner=0:0 -d "$root" "$raw.tmp" 1G
  mv "$raw.tmp" "$raw"
fi
echo "$raw"
