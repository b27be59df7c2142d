#!/usr/bin/env bash
# Installs what the tests need and runs every test: formatting, lints, unit, property, fuzz-case
# and integration tests against qemu-img and e2fsprogs, including the real Debian root filesystem
# (made once by mmdebstrap and cached). This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
debian_tar=$(scripts/debian-image.sh --tar)
export STAMP_DEBIAN_TAR=$debian_tar
grub_tar=$(scripts/debian-image.sh --grub)
export STAMP_DEBIAN_GRUB_TAR=$grub_tar
app_oci=$(scripts/debian-image.sh --app)
export STAMP_APP_OCI=$app_oci
# The boot, podman and systemd tests fail instead of skipping when their tools are missing.
export STAMP_REQUIRE_QEMU=1 STAMP_REQUIRE_PODMAN=1 STAMP_REQUIRE_SYSTEMD=1
cargo test --workspace --locked
