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
cargo test --workspace --locked
