#!/usr/bin/env bash
# The project's test command: installs what the privileged tests need, builds the statically
# linked wrapper and the local test images, then runs every test with the privileged ones
# required (a test that needs root, podman or ip fails here instead of skipping).
#
# Usage: tests/run.sh [ARGS...]   ARGS go to the test binaries (e.g. a test name filter).
# Run it as root. Running it again reuses the installed packages, the build and the images.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

step() {
    printf '\n==== %s ====\n' "$*"
}

step "Installing test dependencies"
tests/scripts/install-deps.sh

step "Raising the kernel limits many sidecars need"
tests/scripts/host-limits.sh

export CONTAINERS_CONF=${CONTAINERS_CONF:-$root/tests/scripts/containers.conf}
echo "CONTAINERS_CONF=$CONTAINERS_CONF"

step "Building the statically linked sidespawn-wrapper"
# A target dir of its own: the flag must reach only the wrapper's final link, and the tests
# can rebuild it there without waiting for the lock of the outer cargo's target dir.
cargo rustc --release --bin sidespawn-wrapper --target-dir target/static \
    -- -C target-feature=+crt-static
export SIDESPAWN_STATIC_WRAPPER=$root/target/static/release/sidespawn-wrapper
echo "SIDESPAWN_STATIC_WRAPPER=$SIDESPAWN_STATIC_WRAPPER"

step "Building the test images"
tests/scripts/build-images.sh --wrapper "$SIDESPAWN_STATIC_WRAPPER"

export SIDESPAWN_REQUIRE_PRIVILEGED=1

log=$(mktemp /tmp/sidespawn-tests.XXXXXX)
trap 'rm -f "$log"' EXIT

if [ -f src/lib.rs ]; then
    step "Running the documentation tests"
    cargo test --doc -- "$@" 2>&1 | tee -a "$log"
fi

step "Running the tests"
cargo test --all-targets -- --test-threads=2 "$@" 2>&1 | tee -a "$log"

# A short fuzz of the record and configuration parsers; SKIPPED without the nightly toolchain
# (nothing is installed for it). SIDESPAWN_FUZZ_SECONDS=0 leaves it out.
fuzz_seconds=${SIDESPAWN_FUZZ_SECONDS:-20}
if [ "$fuzz_seconds" -gt 0 ]; then
    step "Fuzzing each parser for ${fuzz_seconds}s"
    tests/scripts/fuzz.sh "$fuzz_seconds"
fi

# One closing line for the whole suite, summed over every test binary.
totals=$(awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d skipped", p, f, i }' "$log")
step "All tests passed"
echo "tests: $totals"
