#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: the one command for every benchmark.
#
#   bash scripts/bench.sh
#
# 1. Reserves huge pages for the cold bench's huge-page contenders
#    (vm.nr_hugepages raised by what its largest size needs; the old value is
#    restored on exit, also on failure or Ctrl-C). Needs root; without it the
#    huge-page rows are missing from the report ("not measured").
# 2. Installs redis-server from Debian's packages if it is absent, starts it
#    on a free loopback port without persistence, exports
#    SHMKV_BENCH_REDIS=redis://127.0.0.1:PORT/ for benches/live.rs and stops
#    it (by its pid) on exit.
# 3. Checks the report generator (bench-report.py --selftest), runs
#    cargo bench -p shmkv-benches --bench cold, compare, live and scaling,
#    scripts/instr-counts.sh, then scripts/bench-report.py (BENCHMARKS.md).
#    A step that fails is reported and the others still run; the script then
#    exits non-zero.
# 4. Checks that no SysV objects made during the run are left.
#
# Environment:
#   SHMKV_BENCH_QUICK=1      small sizes and short times (to test this script;
#                            the figures are then not the project's figures)
#   SHMKV_COLD_SIZES=a,b,c   sizes of the cold bench (default 100000,1000000,4000000)
#   SHMKV_BENCH_HUGEPAGES=N  huge pages to add instead of the computed number
#   SHMKV_BENCH_SKIP=cold,compare,live,scaling,instr   steps to leave out (their old
#                            results, if any, are still reported)
#   SHMKV_BENCH_DIR          where the benches write their rows
#                            (default target/shmkv-bench)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

quick=${SHMKV_BENCH_QUICK:-0}
export SHMKV_BENCH_QUICK=$quick
export SHMKV_BENCH_DIR=${SHMKV_BENCH_DIR:-$root/target/shmkv-bench}
if [ "$quick" = 1 ]; then
  export SHMKV_COLD_SIZES=${SHMKV_COLD_SIZES:-10000,100000}
else
  export SHMKV_COLD_SIZES=${SHMKV_COLD_SIZES:-100000,1000000,4000000}
fi
skip=",${SHMKV_BENCH_SKIP:-},"
failed=()
say() { printf '\n== %s\n' "$*"; }

# --- SysV objects present at the start -----------------------------------
ipc_list() { # "shm ID" / "sem ID" lines, one per object
  awk 'NR > 1 { print "shm", $2 }' /proc/sysvipc/shm 2>/dev/null
  awk 'NR > 1 { print "sem", $2 }' /proc/sysvipc/sem 2>/dev/null
}
ipc_before=$(ipc_list | sort)

# --- cleanup on every exit ------------------------------------------------
old_hugepages=""
redis_pid=""
redis_dir=""
cleanup() {
  if [ -n "$redis_pid" ]; then
    kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    echo "stopped redis-server (pid $redis_pid)"
  fi
  [ -n "$redis_dir" ] && rm -rf "$redis_dir"
  if [ -n "$old_hugepages" ]; then
    echo "$old_hugepages" > /proc/sys/vm/nr_hugepages \
      && echo "vm.nr_hugepages restored to $old_hugepages"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- huge pages -----------------------------------------------------------
# The huge-page contenders of benches/cold.rs (a shmkv map on huge pages and
# a pointer chase over the same footprint) may be alive together: twice
# shmkv's footprint at the largest size, ~192 bytes per entry (179 measured
# at 1e6 with 16 B keys and 64 B values) plus 4 MiB, in 2 MiB pages, plus a
# margin.
max_size=$(tr ',' '\n' <<<"$SHMKV_COLD_SIZES" | sed 's/_//g' \
  | python3 -c 'import sys; print(max([int(float(l)) for l in sys.stdin if l.strip()] or [0]))')
need=${SHMKV_BENCH_HUGEPAGES:-$(( (2 * (max_size * 192 + (4 << 20)) + (2 << 20) - 1) / (2 << 20) + 8 ))}
# benches/live.rs grows a map on huge pages to 10⁶ entries (10⁵ quick): about
# 800 bytes per entry at its peak (two generations side by side).
grow_to=$([ "$quick" = 1 ] && echo 100000 || echo 1000000)
need_live=$(( grow_to * 800 / (2 << 20) + 8 ))
[ -z "${SHMKV_BENCH_HUGEPAGES:-}" ] && [ "$need_live" -gt "$need" ] && need=$need_live
hp_size_kb=$(awk '/Hugepagesize/ {print $2}' /proc/meminfo)
if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/nr_hugepages ] && [ "${hp_size_kb:-0}" = 2048 ]; then
  old_hugepages=$(cat /proc/sys/vm/nr_hugepages)
  want=$(( old_hugepages + need ))
  echo "$want" > /proc/sys/vm/nr_hugepages
  got=$(cat /proc/sys/vm/nr_hugepages)
  say "vm.nr_hugepages: $old_hugepages -> $got (asked $want: $need for the largest huge-page maps of the cold and live benches)"
  [ "$got" -lt "$want" ] && echo "warning: the kernel gave only $got huge pages; huge-page contenders may be skipped"
else
  say "huge pages not reserved (needs root and 2 MiB pages): huge-page rows will be missing"
fi

# --- redis ----------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
  say "installing redis-server from Debian's packages"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
      || echo "warning: redis-server could not be installed"
  else
    echo "warning: redis-server is absent and cannot be installed here (needs root and apt-get)"
  fi
fi
if command -v redis-server >/dev/null 2>&1; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis_dir=$(mktemp -d)
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --dir "$redis_dir" --daemonize no --loglevel warning >"$redis_dir/log" 2>&1 &
  redis_pid=$!
  up=0
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$up" = 1 ]; then
    export SHMKV_BENCH_REDIS="redis://127.0.0.1:$port/"
    say "redis-server $(redis-server --version | awk '{print $3}') pid $redis_pid at $SHMKV_BENCH_REDIS"
  else
    echo "warning: redis-server did not start:"; cat "$redis_dir/log"
    redis_pid=""
  fi
fi

# --- what the report states about the run -----------------------------------
mkdir -p "$SHMKV_BENCH_DIR"
python3 - "$SHMKV_BENCH_DIR/run.json" <<PY
import json, os, sys, time
json.dump({
    "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    "quick": os.environ.get("SHMKV_BENCH_QUICK") == "1",
    "cold_sizes": os.environ.get("SHMKV_COLD_SIZES"),
    "nr_hugepages_before": int("${old_hugepages:-0}" or 0) if "${old_hugepages}" else None,
    "nr_hugepages_during": int(open("/proc/sys/vm/nr_hugepages").read()),
    "redis": os.environ.get("SHMKV_BENCH_REDIS"),
    "pin_fence_forced": os.environ.get("SHMKV_PIN_FENCE") not in (None, "", "0"),
}, open(sys.argv[1], "w"), indent=1)
PY

# --- the benches ----------------------------------------------------------
step() { # step NAME COMMAND...
  local name=$1; shift
  if [[ $skip == *",$name,"* ]]; then say "$name: skipped (SHMKV_BENCH_SKIP)"; return; fi
  say "$name: $*"
  local t0=$SECONDS
  if "$@"; then
    echo "$name: done in $(( SECONDS - t0 )) s"
  else
    echo "ERROR: $name failed (exit $?) after $(( SECONDS - t0 )) s"
    failed+=("$name")
  fi
}
# Old results would be reported as if they were this run's.
[[ $skip == *",compare,"* ]] || rm -rf "$root/target/criterion"
# Cargo runs a member's benches in its own directory (benches/): criterion
# writes to the workspace's target/criterion, where the report reads.
export CRITERION_HOME="$root/target/criterion"
for b in cold live scaling; do [[ $skip == *",$b,"* ]] || rm -f "$SHMKV_BENCH_DIR/$b.jsonl"; done

step report-selftest python3 scripts/bench-report.py --selftest
step cold cargo bench -p shmkv-benches --bench cold
step compare cargo bench -p shmkv-benches --bench compare
live_bench() {
  if [ ! -f benches/live.rs ]; then
    echo "ERROR: benches/live.rs does not exist in this tree (reads under writes, growth, writers, redis are not measured)"
    return 1
  fi
  cargo bench -p shmkv-benches --bench live
}
step live live_bench
step scaling cargo bench -p shmkv-benches --bench scaling
step instr bash scripts/instr-counts.sh
step report python3 scripts/bench-report.py

# --- SysV objects left behind -----------------------------------------------
# Objects that did not exist at the start and that no process uses: a
# segment nobody is attached to (every bench process has exited), a
# semaphore set whose key is not that of an attached segment (a shmkv map's
# lock shares its root segment's key). Objects of maps other processes on
# the machine are using now are not counted.
say "SysV objects made during the run"
unused() {
  awk 'NR > 1 && $7 == 0 { print "shm", $2 }' /proc/sysvipc/shm
  awk 'NR == FNR { if (FNR > 1 && $7 > 0) used[$1] = 1; next }
       FNR > 1 && !($1 in used && $1 != 0) { print "sem", $2 }' /proc/sysvipc/shm /proc/sysvipc/sem
}
left=$(comm -12 <(comm -13 <(echo "$ipc_before") <(ipc_list | sort)) <(unused | sort))
if [ -n "$left" ]; then
  echo "ERROR: SysV objects made during the run and used by no process are left:"
  echo "$left"
  ipcs -m -s
  failed+=("ipc")
else
  echo "none left"
fi

if [ ${#failed[@]} -gt 0 ]; then
  say "FAILED: ${failed[*]}"
  exit 1
fi
say "BENCHMARKS.md regenerated"
