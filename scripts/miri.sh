#!/usr/bin/env bash
# Runs the heap-memory tests under Miri (nightly): the library's unit tests
# that touch no SysV object (generations, pins, reclamation, slots, sizes),
# the engine over the heap provider (`raw::provider::tests`: several handles
# on one `HeapKernel`, growth, reclamation, destroy, the lock) and
# tests/heap.rs (the engine over `HeapKernel`: a model check, recovery of a
# dead writer's redo log, damaged segments). Installs the Miri component
# when it is absent and rustup can.
#
# Exit codes: 0 all passed; 1 a test failed or Miri found undefined
# behaviour; 3 Miri is not available on this machine (no nightly, the
# component cannot be installed, or `cargo miri setup` fails) -- the caller
# decides whether that fails CI.
#
# Extra arguments go to the test harness (e.g. `--nocapture`). MIRIFLAGS
# from the environment is used as given (default -Zmiri-strict-provenance);
# MIRI_SEEDS (default 0..4) is the seed range of the concurrent generation
# tests, MIRI_PROVIDER_SEEDS (default 0..2) that of the engine-over-heap
# tests. Warm run (Miri sysroot and target/miri built): 210-260 s on 2
# cores; a cold one adds about 70 s (sysroot and dependency builds).
set -uo pipefail
cd "$(dirname "$0")/.."

unavailable() {
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  echo "!! MIRI NOT AVAILABLE: $1" >&2
  echo "!! The heap-memory tests did NOT run under Miri." >&2
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  exit 3
}

# Unit tests run under Miri, by name prefix: everything in the library but
# `sys::` (system calls). Tests that need SysV objects or fork carry
# `#[cfg_attr(miri, ignore = ...)]`. `raw::gens` and `raw::provider` (the
# concurrent ones) run apart, over several seeds.
LIB_FILTERS=(raw:: key:: size:: options::)
# Integration test targets that use heap memory only (`HeapKernel`).
TEST_TARGETS=(heap)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  unavailable "no nightly toolchain (rustup toolchain install nightly)"
fi
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  echo "== installing miri (rustup +nightly component add miri rust-src)"
  if ! out=$(rustup +nightly component add miri rust-src 2>&1); then
    echo "$out" >&2
    unavailable "rustup +nightly component add miri rust-src failed"
  fi
  cargo +nightly miri --version >/dev/null 2>&1 ||
    unavailable "the miri component is installed but cargo +nightly miri does not run"
fi
echo "== $(cargo +nightly miri --version)"
if ! out=$(cargo +nightly miri setup 2>&1); then
  echo "$out" >&2
  unavailable "cargo +nightly miri setup failed"
fi

flags="${MIRIFLAGS--Zmiri-strict-provenance}"
# The generation tests are concurrent: Miri explores one interleaving (and
# one choice of weak-memory outcomes) per seed. Several seeds: the pin
# without its store-load fence passes seed 0 but fails 20 of seeds 0..23.
seeds="${MIRI_SEEDS:-0..4}"
# The engine over the heap provider runs threads too (racing
# open_or_create, a writer waiting for the lock, reclamation by another
# handle's pin); each seed costs about 25 s.
provider_seeds="${MIRI_PROVIDER_SEEDS:-0..2}"
status=0
SECONDS=0
echo "== miri: unit tests (${LIB_FILTERS[*]}, but raw::gens, raw::provider), MIRIFLAGS=$flags"
MIRIFLAGS="$flags" cargo +nightly miri test --lib -- "${LIB_FILTERS[@]}" \
  --skip raw::gens --skip raw::provider "$@" || status=1
echo "== miri: unit tests raw::gens, seeds $seeds"
MIRIFLAGS="$flags -Zmiri-many-seeds=$seeds" cargo +nightly miri test --lib -- raw::gens "$@" ||
  status=1
echo "== miri: unit tests raw::provider (the engine over HeapKernel), seeds $provider_seeds"
MIRIFLAGS="$flags -Zmiri-many-seeds=$provider_seeds" cargo +nightly miri test --lib -- \
  raw::provider "$@" || status=1
for t in "${TEST_TARGETS[@]}"; do
  echo "== miri: tests/$t.rs, MIRIFLAGS=$flags"
  MIRIFLAGS="$flags" cargo +nightly miri test --features __test-hooks --test "$t" -- "$@" || status=1
done
echo "== miri: ${SECONDS} s"
if [ "$status" -ne 0 ]; then
  echo "== miri: FAILED (a test failed or Miri reported undefined behaviour)" >&2
fi
exit "$status"
