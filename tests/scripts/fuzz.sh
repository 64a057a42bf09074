#!/usr/bin/env bash
# Runs each cargo-fuzz target in fuzz/ for SECONDS (default 20), starting from the seed corpus
# in fuzz/corpus/<target>/. Fails if a target finds a crash (libFuzzer leaves the input in
# fuzz/artifacts/<target>/ and prints how to reproduce it).
#
# Usage: tests/scripts/fuzz.sh [SECONDS]
#
# Needs the nightly toolchain (cargo-fuzz builds with sanitizers): without it, it prints
# SKIPPED and exits 0, and no toolchain is installed. cargo-fuzz, when missing, is installed
# from crates.io (`cargo install cargo-fuzz`); should that fail, SKIPPED too. A longer run, for
# instance an hour per target:
#
#   tests/scripts/fuzz.sh 3600
#
# or one target by hand, keeping what it learns in the corpus:
#
#   cd fuzz && cargo +nightly fuzz run record corpus/record -- -max_total_time=3600
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
seconds=${1:-20}
case $seconds in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS]" >&2
    exit 2
    ;;
esac

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: SKIPPED (needs the nightly toolchain)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    # A fresh machine has the toolchains but not cargo-fuzz; it comes from crates.io.
    echo "fuzz: installing cargo-fuzz from crates.io"
    if ! cargo install --locked cargo-fuzz >/dev/null 2>&1 || ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        echo "fuzz: SKIPPED (needs cargo-fuzz, and \`cargo install cargo-fuzz\` failed)"
        exit 0
    fi
fi

# New inputs go to a scratch directory (libFuzzer writes into the first corpus it is given),
# so a run never changes the committed seeds.
scratch=$(mktemp -d /tmp/sidespawn-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

cd fuzz
targets=$(cargo +nightly fuzz list)
for target in $targets; do
    mkdir -p "$scratch/$target"
    echo "==> fuzzing $target for ${seconds}s"
    # -timeout: an input taking over 10 s is a hang worth reporting (the pattern matcher once
    # went exponential); -rss_limit_mb: the same for memory.
    status=0
    cargo +nightly fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$scratch/$target.log" 2>&1 || status=$?
    grep -E '^(INFO: seed corpus|stat::number_of_executed_units|stat::new_units_added)' \
        "$scratch/$target.log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$scratch/$target.log" >&2
        echo "fuzz: $target FAILED (exit $status); the input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
echo "fuzz: $(echo $targets | wc -w) targets ran ${seconds}s each without a crash"
