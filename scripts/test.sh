#!/usr/bin/env bash
# The one command that runs every test, on a fresh machine too:
#   scripts/test.sh
# It installs the test dependencies (apt and pip), then runs the unit, property,
# known-answer and end-to-end tests (the end-to-end tests drive the real NBD clients),
# then every fuzz target for FUZZ_SECONDS (default 30) each (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
cargo test --workspace --profile ci
tests/e2e/boot-vm.sh
scripts/fuzz.sh
