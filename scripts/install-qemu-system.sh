#!/usr/bin/env bash
# Installs qemu-system-x86 of the same version as the machine's qemu-img. On Debian 12 machines
# whose qemu-utils is the bookworm-backports build (10.x), bookworm's own qemu-system-x86 (7.2)
# would replace it with qemu-img 7.2; so there, qemu-system-x86 comes from bookworm-backports too.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
utils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
if [[ $utils == *bpo12* ]]; then
  list=/etc/apt/sources.list.d/stamp-bookworm-backports.list
  if ! grep -rqs '^deb .* bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" >"$list"
  fi
  apt-get update -qq
  apt-get install -y -qq -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
else
  apt-get update -qq
  apt-get install -y -qq qemu-system-x86 >/dev/null
fi
