#!/usr/bin/env bash
# Makes a real Debian 12 disk image to convert, benchmark and (later) boot: a root filesystem with
# kernel, initrd and systemd from mmdebstrap, as an ext4 filesystem in a 1 GiB sparse raw file.
# Prints the raw image's path. Cached: a second run reuses the image.
# With --tar, makes only the root filesystem tar (what the tests read) and prints its path.
# With --grub, makes the root filesystem tar of a GRUB image (GRUB and shim, signed, instead of
# systemd-boot): debian-grub-rootfs.tar; prints its path.
# With --app, makes an application image (no init, no kernel: a static busybox and an entrypoint,
# from crates/stamp/tests/cli/data/app/Dockerfile) as an OCI archive with podman: app-oci.tar;
# prints its path.
#
# usage: scripts/debian-image.sh [--tar|--grub|--app] [CACHE_DIR]
#        (default CACHE_DIR: ${XDG_CACHE_HOME:-~/.cache}/stamp-dev)
set -euo pipefail
mode=raw
case ${1:-} in
  --tar) mode=tar; shift ;;
  --grub) mode=grub; shift ;;
  --app) mode=app; shift ;;
esac
cache=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/stamp-dev}
mkdir -p "$cache"

if [[ $mode == grub ]]; then
  grub="$cache/debian-grub-rootfs.tar"
  if [[ ! -s $grub ]]; then
    echo "building a Debian root filesystem with GRUB and shim with mmdebstrap (about a minute)..." >&2
    rm -f "$grub.tmp"
    mmdebstrap --quiet --format=tar --variant=apt \
      --include=linux-image-cloud-amd64,systemd-sysv,grub-efi-amd64-signed,shim-signed,udev \
      bookworm "$grub.tmp" >&2
    for f in usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed usr/lib/shim/shimx64.efi.signed; do
      tar -tf "$grub.tmp" "./$f" >/dev/null 2>&1 ||
        { echo "error: $grub.tmp has no /$f" >&2; exit 1; }
    done
    mv "$grub.tmp" "$grub"
  fi
  echo "$grub"
  exit 0
fi

if [[ $mode == app ]]; then
  app="$cache/app-oci.tar"
  data="$(cd "$(dirname "$0")/.." && pwd)/crates/stamp/tests/cli/data/app"
  [[ -x /bin/busybox ]] || { echo "error: no /bin/busybox (apt-get install busybox-static)" >&2; exit 1; }
  # Rebuilt when the build context (these files and the host's busybox) differs from the one the
  # cached archive was built from; worktrees share the cache, so mtimes would not do.
  context=$( (cd "$data" && find . -type f -print0 | sort -z | xargs -0 sha256sum; sha256sum /bin/busybox) | sha256sum | cut -d' ' -f1)
  if [[ ! -s $app || $(cat "$app.context" 2>/dev/null) != "$context" ]]; then
    echo "building the application image with podman..." >&2
    file -L /bin/busybox | grep -q 'statically linked' ||
      { echo "error: /bin/busybox is not statically linked (apt-get install busybox-static)" >&2; exit 1; }
    work=$(mktemp -d "$cache/app.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    cp -a "$data/." "$work/ctx"
    cp /bin/busybox "$work/ctx/busybox"
    # Rootless-friendly podman on these machines: no default rlimits (no CAP_SYS_RESOURCE), runc
    # (crun refuses hybrid cgroups), chroot isolation for RUN.
    printf '[containers]\ndefault_ulimits = []\n' >"$work/containers.conf"
    export CONTAINERS_CONF=$work/containers.conf
    tag=localhost/stamp-test-app:build-$$
    podman build -q --runtime runc --isolation chroot -t "$tag" "$work/ctx" >&2
    # Saved under a stable name (the archive's org.opencontainers.image.ref.name).
    podman tag "$tag" localhost/stamp-test-app:latest
    podman save -q --format oci-archive -o "$work/app-oci.tar" localhost/stamp-test-app:latest >&2
    podman rmi -f "$tag" localhost/stamp-test-app:latest >/dev/null 2>&1 || true
    echo "$context" >"$work/context"
    mv "$work/app-oci.tar" "$app"
    mv "$work/context" "$app.context"
  fi
  echo "$app"
  exit 0
fi

tar="$cache/debian-rootfs.tar"
raw="$cache/debian.raw"
if [[ ! -s $tar ]]; then
  echo "building a Debian root filesystem with mmdebstrap (about a minute)..." >&2
  mmdebstrap --quiet --format=tar --variant=apt \
    --include=linux-image-cloud-amd64,systemd-sysv,systemd-boot-efi,udev \
    bookworm "$tar.tmp" >&2
  mv "$tar.tmp" "$tar"
fi
if [[ $mode == tar ]]; then
  echo "$tar"
  exit 0
fi
if [[ ! -s $raw ]]; then
  echo "making a 1 GiB ext4 image of it..." >&2
  root=$(mktemp -d "$cache/root.XXXXXX")
  trap 'rm -rf "$root" "$raw.tmp"' EXIT
  tar -xf "$tar" -C "$root"
  rm -f "$raw.tmp"
  mke2fs -q -t ext4 -L debian -E root_owner=0:0 -d "$root" "$raw.tmp" 1G >&2
  mv "$raw.tmp" "$raw"
fi
echo "$raw"
