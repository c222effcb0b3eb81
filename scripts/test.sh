#!/usr/bin/env bash
# The README's test command: every test of the workspace, on a fresh
# machine too. Installs what the tests need when it is absent (cbindgen,
# a C compiler, PHP with FFI and APCu; protoc, etcd and etcdctl for the
# sync crate's build and its etcd scenarios), then runs:
#   1. cargo test --workspace --all-features (the library, the CLI, the C
#      ABI's crate, the etcd sync with its scenarios);
#   2. scripts/test-ffi.sh: the checked-in C header against a fresh
#      cbindgen run, the C API from a C program (shared and static
#      library), the PHP library's tests;
#   3. scripts/python-test.sh: the Python package built into a virtualenv
#      (maturin, pytest, gunicorn, msgpack installed there with pip when
#      absent), then its pytest suite.
# Nothing is skipped because a program is missing: it is installed, or the
# run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# The sync crate (shmkv-sync) builds etcd's protocol with protoc, and its
# scenarios start a real etcd and check it with etcdctl.
bash scripts/install-sync-deps.sh
echo "== cargo test --workspace --all-features"
cargo test --workspace --all-features
# The PHP tests run the `shmkv` command built by the step above.
export SHMKV_CLI=$PWD/target/debug/shmkv
echo "== C ABI and PHP library"
bash scripts/test-ffi.sh
echo "== Python package (scripts/python-test.sh)"
bash scripts/python-test.sh
