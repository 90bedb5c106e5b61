#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, then lints and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --check
cargo clippy --all-targets --all-features --locked -- -D warnings
cargo test --locked --all-targets --features test-hooks
