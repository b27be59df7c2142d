#!/usr/bin/env bash
# Installs what stamp's tests need on a Debian machine, idempotently: nothing is fetched when
# everything is already there.
set -euo pipefail
need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v qemu-io >/dev/null || need+=(qemu-utils)
command -v e2fsck >/dev/null || need+=(e2fsprogs)
command -v gzip >/dev/null || need+=(gzip)
command -v tar >/dev/null || need+=(tar)
command -v fsck.fat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
command -v fatlabel >/dev/null || need+=(dosfstools)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v sgdisk >/dev/null || need+=(gdisk)
command -v debugfs >/dev/null || need+=(e2fsprogs)
command -v file >/dev/null || need+=(file)
command -v python3 >/dev/null || need+=(python3)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v setpriv >/dev/null || need+=(util-linux)
# The registry client's tests: a real registry on loopback, htpasswd (bcrypt) and a TLS cert.
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v openssl >/dev/null || need+=(openssl)
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v skopeo >/dev/null || need+=(skopeo)
# stamp run --systemd: systemd-analyze verifies the units; systemd runs as PID 1 in a container.
command -v systemd-analyze >/dev/null || need+=(systemd)
# stamp build: boot the disks it makes (QEMU with UEFI firmware, TCG), a static busybox for the
# application image, objcopy for the benchmark's UKI, /usr/bin/time for its peak memory.
qemu_system=0
command -v qemu-system-x86_64 >/dev/null || qemu_system=1
[[ -s /usr/share/OVMF/OVMF_CODE.fd && -s /usr/share/OVMF/OVMF_VARS.fd ]] || need+=(ovmf)
[[ -x /bin/busybox ]] || need+=(busybox-static)
command -v objcopy >/dev/null || need+=(binutils)
[[ -x /usr/bin/time ]] || need+=(time)
if ((${#need[@]} || qemu_system)); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if ((${#need[@]})); then
    apt-get install -y -qq $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
  fi
  if ((qemu_system)); then
    "$(dirname "$0")/install-qemu-system.sh"
  fi
fi
# stamp-aws: moto_server emulates EC2, EBS direct and S3; boto3 and the AWS CLI are the
# reference clients.
if ! command -v moto_server >/dev/null; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-pip >/dev/null
  fi
  python3 -m pip install -q --break-system-packages 'moto[server]' boto3 awscli
fi
# stamp-serve: PostgreSQL's server for the task store's tests, which start a private cluster
# (tests/support/pg.rs) and skip with a message only when it could not be installed.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; } ||
    echo "warning: postgresql could not be installed; the PostgreSQL tests will skip" >&2
fi
command -v cargo >/dev/null || { echo "error: cargo is not installed (install Rust with rustup)" >&2; exit 1; }
# stamp app's vsock transport: vhost-device-vsock, a user-space virtio-vsock device for QEMU
# that speaks Firecracker's hybrid vsock protocol (about 45 s to build, once).
if ! command -v vhost-device-vsock >/dev/null; then
  cargo install --quiet --locked vhost-device-vsock@0.3.0
  command -v vhost-device-vsock >/dev/null ||
    { echo "error: vhost-device-vsock was installed off PATH (add cargo's bin directory)" >&2; exit 1; }
fi
