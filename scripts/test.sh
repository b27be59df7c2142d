#!/usr/bin/env bash
# Installs what the tests need and runs every test: formatting, lints, unit, property, fuzz-case
# and integration tests against qemu-img. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
