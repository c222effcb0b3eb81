#!/usr/bin/env bash
# The C ABI and the PHP library, tested from C and PHP (part of
# scripts/test.sh). Installs what is missing: cbindgen (cargo), a C
# compiler, PHP with FFI and APCu, and PHPUnit (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc libc6-dev)
command -v valgrind >/dev/null || need_apt+=(valgrind)
if ! command -v php >/dev/null || ! php -m | grep -qx FFI; then
    need_apt+=(php8.2-cli)
fi
php -m 2>/dev/null | grep -qx apcu || need_apt+=(php8.2-apcu)
command -v phpunit >/dev/null || need_apt+=(phpunit)
if ((${#need_apt[@]})); then
    echo "test-ffi: installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v cbindgen >/dev/null; then
    echo "test-ffi: installing cbindgen"
    cargo install cbindgen --locked --quiet
fi

echo "== header: ffi/include/shmkv.h matches a fresh cbindgen run"
fresh=$(mktemp)
trap 'rm -f "$fresh"' EXIT
(cd ffi && cbindgen --quiet --config cbindgen.toml --crate shmkv-ffi --output "$fresh")
if ! diff -u ffi/include/shmkv.h "$fresh"; then
    echo "test-ffi: ffi/include/shmkv.h is out of date; regenerate it with:" >&2
    echo "  (cd ffi && cbindgen --config cbindgen.toml --crate shmkv-ffi --output include/shmkv.h)" >&2
    exit 1
fi

echo "== build libshmkv_ffi (release)"
cargo build --release -p shmkv-ffi --quiet
LIB=$ROOT/target/release

echo "== C: ffi/tests/c/api_test.c"
out=$(mktemp -d)
trap 'rm -rf "$out" "$fresh"' EXIT
cc -std=c11 -D_DEFAULT_SOURCE -Wall -Wextra -Werror -I ffi/include ffi/tests/c/api_test.c \
    -L "$LIB" -lshmkv_ffi -Wl,-rpath,"$LIB" -o "$out/api_test"
"$out/api_test"
echo "== C, under valgrind (memory errors and definite leaks fail the run)"
valgrind -q --error-exitcode=9 --leak-check=full --show-possibly-lost=no --errors-for-leak-kinds=definite \
    "$out/api_test"
echo "== C, linked statically (libshmkv_ffi.a)"
cc -std=c11 -D_DEFAULT_SOURCE -Wall -Wextra -Werror -I ffi/include ffi/tests/c/api_test.c \
    "$LIB/libshmkv_ffi.a" -lpthread -ldl -lm -o "$out/api_test_static"
"$out/api_test_static"

echo "== PHP: bindings/php/tests (PHPUnit)"
export SHMKV_FFI_LIB=$LIB/libshmkv_ffi.so
# The PHP tests also run the Rust `shmkv` command (cross-language checks).
if [ -z "${SHMKV_CLI:-}" ]; then
    cargo build --quiet -p shmkv-cli
    export SHMKV_CLI=$ROOT/target/debug/shmkv
fi
php -d ffi.enable=1 -d apc.enable_cli=1 "$(command -v phpunit)" -c bindings/php/phpunit.xml
