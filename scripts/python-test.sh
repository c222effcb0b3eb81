#!/usr/bin/env bash
# The Python package's tests (python/tests/, pytest). Builds the package
# into a virtualenv under target/py-venv (created when absent, with
# maturin, pytest, gunicorn and msgpack installed when absent), installs it
# with `maturin develop --release`, and runs pytest. The tests use the
# `shmkv` command (SHMKV_CLI, default target/debug/shmkv, built when absent).
# Nothing is skipped because a program is missing: it is installed, or the
# run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
VENV=$ROOT/target/py-venv
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PY" -m venv "$VENV"
fi
VPY=$VENV/bin/python
for mod in maturin pytest gunicorn msgpack; do
    if ! "$VPY" -c "import $mod" 2>/dev/null; then
        echo "== pip install $mod"
        "$VPY" -m pip install --quiet "$mod"
    fi
done
echo "== maturin develop --release (python/)"
(cd python && VIRTUAL_ENV=$VENV PATH=$VENV/bin:$PATH "$VENV/bin/maturin" develop --release --quiet)
export SHMKV_CLI=${SHMKV_CLI:-$ROOT/target/debug/shmkv}
if [ ! -x "$SHMKV_CLI" ]; then
    echo "== cargo build -p shmkv-cli"
    cargo build -p shmkv-cli
fi
echo "== pytest python/tests"
PATH=$VENV/bin:$PATH "$VPY" -m pytest -q python/tests "$@"
