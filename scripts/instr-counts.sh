#!/usr/bin/env bash
# Instructions per lookup (hot, 1,000 entries, 16 B keys, 64 B values) under
# valgrind's callgrind: each variant runs at 100,000 and 300,000 lookups and
# the difference is divided by 200,000, so setup cancels out. Writes
# target/shmkv-bench/instructions.json for scripts/bench-report.py.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --example lookup_loop
bin=target/release/examples/lookup_loop
mkdir -p target/shmkv-bench
out="{"
for w in get_ref unchecked archived std; do
  a=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$w" 100000 2>&1 | awk '/Collected/ {print $4}')
  b=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$w" 300000 2>&1 | awk '/Collected/ {print $4}')
  per=$(( (b - a) / 200000 ))
  echo "$w: $per instructions per lookup"
  out="$out\"$w\": $per, "
done
echo "${out%, }}" > target/shmkv-bench/instructions.json
