#!/usr/bin/env bash
# Runs the loom models (src/raw/loom_models/) and checks that each planted
# weakening makes its model fail. LOOM_MAX_PREEMPTIONS defaults to 3.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
RUSTFLAGS="--cfg loom" cargo test --release --lib --target-dir target/loom loom_ -- --nocapture --test-threads=1
