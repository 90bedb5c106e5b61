#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, then lints and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
# No import from a lower layer to a higher one (the layers are listed in src/lib.rs).
scripts/layers.py
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
# Every crate of the workspace; the product's race tests need its test-hooks feature.
cargo test --locked --workspace --all-targets --features stagesnap/test-hooks
