#!/usr/bin/env bash
# The test command: prepares the machine (scripts/services.sh), then checks formatting, runs clippy
# with warnings as errors, and runs every test (unit, conformance, engine, broker and store
# integration tests, doc tests) with all features, after a test of the default feature set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo fmt --all -- --check
cargo clippy --all-targets --all-features -- -D warnings
# The default features, as a user gets them (`idemq = "0.1"`): built and run on their own.
cargo test --test default_features
cargo test --all-features
