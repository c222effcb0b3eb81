#!/usr/bin/env bash
# shmkv sync's figures (not CI): put->visible latency p50/p99 over 1,000
# updates, snapshot time of 100,000 keys, sustained revisions/s applied, and
# a read of a synced key (shmkv get vs etcd range read vs Redis GET over
# loopback). Starts its own etcd and redis-server on free ports.
# SHMKV_BENCH_QUICK=1 for smaller counts.
set -euo pipefail
cd "$(dirname "$0")/.."
for p in etcd redis-server; do
    command -v "$p" >/dev/null || { echo "bench: $p is needed (apt-get install etcd-server redis-server)"; exit 1; }
done
cargo build --release --quiet -p shmkv-sync --bin shmkv-sync --example bench_sync
SHMKV_SYNC_BIN=$PWD/target/release/shmkv-sync exec target/release/examples/bench_sync
