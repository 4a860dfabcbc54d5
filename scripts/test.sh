#!/usr/bin/env bash
# The one command that runs every test, on a fresh machine too:
#   scripts/test.sh
# It installs the test dependencies (apt and pip), then runs the unit, property,
# known-answer and end-to-end tests (the end-to-end tests drive the real NBD clients),
# the VM boot, a real /dev/nbdN in a guest (atrest nbd attach, Debian's nbd-client)
# and the whole lab with the aws CLI (tests/e2e/), the S3 server's peak
# memory for a 1 GiB object (benches/s3-memory.sh, at most 256 MiB), then every fuzz
# target for FUZZ_SECONDS each (default: 480 s shared among them, at most 30 s each;
# scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# A system test whose client, root or venv is missing fails here instead of skipping
# (tests/common/system.rs), as a plain `cargo test` on a developer machine does.
export ATREST_REQUIRE_SYSTEM_TESTS=1

scripts/install-test-deps.sh
cargo test --workspace --profile ci
tests/e2e/boot-vm.sh
tests/e2e/attach-vm.sh
tests/e2e/lab.sh
benches/s3-memory.sh --no-build --atrest-bin "${CARGO_TARGET_DIR:-target}/ci/atrest" --max-rss-mib 256
scripts/fuzz.sh
