#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20), starting from the committed corpus
# (corpus/<target>/, left unchanged: new inputs go to a scratch directory). Fails on the first
# crash, hang (over 10 s for one input) or out-of-memory, and prints how to reproduce it.
# Without a nightly toolchain or cargo-fuzz it says so and succeeds: `cargo test` replays the
# committed corpus on stable (sfu::fuzzing and control_api::fuzzing).
set -euo pipefail

seconds="${1:-20}"
cd "$(dirname "$0")"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain; skipped (cargo test replayed the corpus)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is not installed (cargo install cargo-fuzz); skipped" \
        "(cargo test replayed the corpus)"
    exit 0
fi

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo +nightly fuzz build
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

for target in $(cargo +nightly fuzz list); do
    mkdir -p "$scratch/$target" "artifacts/$target"
    log="$scratch/$target.log"
    echo "fuzz: $target for ${seconds}s"
    if ! cargo +nightly fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log"
        artifact="$(grep -o 'artifacts/[^ ]*' "$log" | tail -n 1 || true)"
        echo "fuzz: $target FAILED; reproducer: sfu/fuzz/${artifact:-artifacts/$target/}"
        echo "fuzz: reproduce with: cd sfu/fuzz && cargo +nightly fuzz run $target ${artifact:-<file>}"
        echo "fuzz: then add it to sfu/fuzz/corpus/$target/ so cargo test replays it"
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' "$log" | tail -n 1 || true
done
echo "fuzz: all targets ran ${seconds}s without a crash"
