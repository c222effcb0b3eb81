#!/usr/bin/env bash
# Runs each cargo-fuzz target for a short time (default 45 s each).
# Installs cargo-fuzz when absent; needs the nightly toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-45}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
for t in size_parse ops open_corrupted; do
  echo "-- fuzz $t for ${secs}s"
  log="target/fuzz-smoke-$t.log"
  mkdir -p target
  status=0
  cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1 || status=$?
  # The target's own counters (ops: generation switches, Full errors), then the end.
  grep -E '^ops: ' "$log" | tail -n 1 || true
  tail -n 3 "$log"
  test "$status" -eq 0
done
