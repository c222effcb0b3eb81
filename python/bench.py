#!/usr/bin/env python3
"""Read latency of shmkv from Python against the alternatives (not run in CI).

    target/py-venv/bin/python python/bench.py            # after scripts/python-test.sh

At 1,000 and 100,000 entries (16-byte keys, 64-byte values), the median
time per read over several runs of a loop over shuffled keys:

- shmkv.Map.__getitem__ with codec "bytes" and with "pickle", and with
  codec "bytes" on 2 MiB pages (huge_pages="require"; as root the script
  raises vm.nr_hugepages for the run and restores it, otherwise the row is
  missing when too few pages are free),
- shmkv.Map.get_buffer (a zero-copy memoryview, released at once),
- a plain dict in the process,
- a multiprocessing.Manager().dict() proxy,
- redis-py GET on a loopback redis-server started here on a free port,
- UltraDict, if it pip-installs.

Installs redis (and tries UltraDict) into the running interpreter when
absent. Each figure includes the Python loop (`for k in keys: m[k]`); the
empty loop's cost is printed as its own row. Targets: bytes get <= 300 ns
at 1,000 entries; >= 100x faster than the Manager proxy; >= 50x faster than
Redis GET.
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid

import shmkv

REPEATS = 7
HUGE_PAGES = 64  # 2 MiB pages for the huge-page map (100,000 entries: ~33 MiB)
NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"


def free_huge_pages() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("HugePages_Free:"):
                return int(line.split()[1])
    return 0


def reserve_huge_pages() -> int | None:
    """Raises vm.nr_hugepages so that HUGE_PAGES are free (root only);
    returns the old value to restore, or None if nothing was changed."""
    short = HUGE_PAGES - free_huge_pages()
    if short <= 0:
        return None
    try:
        with open(NR_HUGEPAGES) as f:
            old = int(f.read())
        with open(NR_HUGEPAGES, "w") as f:
            f.write(str(old + short))
        return old
    except OSError as e:
        print(f"# huge pages: cannot raise vm.nr_hugepages ({e}); the 2 MiB row may be missing")
        return None


def ensure(module: str, package: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", package],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"# {package}: pip install failed: {r.stderr.strip().splitlines()[-1:]}")
            return False
        try:
            __import__(module)
            return True
        except Exception as e:  # noqa: BLE001
            print(f"# {package}: installed but import failed: {e}")
            return False


def timed(fn, keys, ops):
    """Median ns per call of fn over `ops` keys, REPEATS runs."""
    ks = (keys * (ops // len(keys) + 1))[:ops]
    runs = []
    for _ in range(REPEATS):
        gc.disable()
        t0 = time.perf_counter_ns()
        fn(ks)
        t1 = time.perf_counter_ns()
        gc.enable()
        runs.append((t1 - t0) / ops)
    return statistics.median(runs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    have_redis = ensure("redis", "redis")
    have_ultra = ensure("UltraDict", "UltraDict")
    redis_bin = shutil.which("redis-server") or "/usr/bin/redis-server"
    rows = {}
    for n in (1_000, 100_000):
        rng = random.Random(n)
        keys = [f"k{i:015d}".encode() for i in range(n)]
        val = bytes(range(64))
        order = keys[:]
        rng.shuffle(order)
        hot_ops = 1_000_000 if n == 1_000 else 500_000
        res = {}
        name = f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        mb = shmkv.Map(name + "-b", codec="bytes", capacity=2 * n, arena=str(n * 256 + (1 << 20)))
        mp_ = shmkv.Map(name + "-p", codec="pickle", capacity=2 * n, arena=str(n * 512 + (1 << 20)))
        mh = None
        if free_huge_pages() >= HUGE_PAGES // 2:
            mh = shmkv.Map(name + "-h", codec="bytes", capacity=2 * n,
                           arena=str(n * 256 + (1 << 20)), huge_pages="require")
        else:
            print(f"# huge pages at {n}: {free_huge_pages()} free, the 2 MiB row is missing")
        try:
            mb.update({k: val for k in keys})
            mp_.update({k: val for k in keys})
            if mh is not None:
                mh.update({k: val for k in keys})
                assert mh.stats()["huge_pages"] is True

            def loop(ks):
                for k in ks:
                    pass

            def get_bytes(ks, m=mb):
                for k in ks:
                    m[k]

            def get_pickle(ks, m=mp_):
                for k in ks:
                    m[k]

            def get_buf(ks, gb=mb.get_buffer):
                for k in ks:
                    gb(k)

            d = {k: val for k in keys}

            def get_dict(ks, d=d):
                for k in ks:
                    d[k]

            assert mb[order[0]] == val and mp_[order[0]] == val
            res["empty Python loop"] = timed(loop, order, hot_ops)
            res["dict[k] (in-process)"] = timed(get_dict, order, hot_ops)
            res["shmkv Map[k], codec bytes"] = timed(get_bytes, order, hot_ops)
            if mh is not None:
                def get_huge(ks, m=mh):
                    for k in ks:
                        m[k]

                res["shmkv Map[k], codec bytes, 2 MiB pages"] = timed(get_huge, order, hot_ops)
            res["shmkv Map[k], codec pickle"] = timed(get_pickle, order, hot_ops)
            res["shmkv get_buffer(k)"] = timed(get_buf, order, hot_ops)
        finally:
            mb.destroy()
            mp_.destroy()
            if mh is not None:
                mh.destroy()

        import multiprocessing as mp

        with mp.Manager() as mgr:
            md = mgr.dict()
            md.update({k: val for k in keys})

            def get_mgr(ks, md=md):
                for k in ks:
                    md[k]

            res["multiprocessing.Manager().dict() proxy"] = timed(get_mgr, order, 5_000)

        if have_redis:
            import redis

            port = free_port()
            srv = subprocess.Popen([redis_bin, "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                r = redis.Redis(host="127.0.0.1", port=port)
                for _ in range(100):
                    try:
                        r.ping()
                        break
                    except redis.ConnectionError:
                        time.sleep(0.05)
                pipe = r.pipeline()
                for k in keys:
                    pipe.set(k, val)
                pipe.execute()

                def get_redis(ks, g=r.get):
                    for k in ks:
                        g(k)

                res["redis-py GET (loopback redis-server)"] = timed(get_redis, order, 10_000)
            finally:
                srv.terminate()
                srv.wait()

        if have_ultra:
            try:
                from UltraDict import UltraDict

                ud = UltraDict(name=f"ud{os.getpid()}{n}", create=True,
                               buffer_size=max(1 << 20, n * 200))
                try:
                    ud.update({k: val for k in keys})

                    def get_ultra(ks, u=ud):
                        for k in ks:
                            u[k]

                    res["UltraDict[k]"] = timed(get_ultra, order, 50_000 if n == 1_000 else 20_000)
                finally:
                    ud.unlink()
            except Exception as e:  # noqa: BLE001
                print(f"# UltraDict at {n}: {type(e).__name__}: {e}")
        rows[n] = res

    base = {n: rows[n]["shmkv Map[k], codec bytes"] for n in rows}
    names = list(dict.fromkeys(k for n in rows for k in rows[n]))
    print(f"\nPython {sys.version.split()[0]}, median of {REPEATS} runs, ns per read "
          "(loop included); ratio = row / shmkv bytes get\n")
    print("| read | 1,000 entries | ratio | 100,000 entries | ratio |")
    print("|---|---:|---:|---:|---:|")
    for k in names:
        cells = []
        for n in (1_000, 100_000):
            v = rows[n].get(k)
            cells += ["n/a", ""] if v is None else [f"{v:,.0f}", f"{v / base[n]:.1f}x"]
        print(f"| {k} | " + " | ".join(cells) + " |")
    print()
    print(f"target bytes get <= 300 ns at 1,000: {base[1_000]:.0f} ns -> "
          f"{'met' if base[1_000] <= 300 else 'NOT met'}")
    for n in rows:
        t = rows[n]
        mgr = t["multiprocessing.Manager().dict() proxy"] / base[n]
        print(f"at {n:,}: {mgr:.0f}x faster than the Manager proxy (target 100x: "
              f"{'met' if mgr >= 100 else 'NOT met'})", end="")
        if "redis-py GET (loopback redis-server)" in t:
            rr = t["redis-py GET (loopback redis-server)"] / base[n]
            print(f"; {rr:.0f}x faster than Redis GET (target 50x: {'met' if rr >= 50 else 'NOT met'})")
        else:
            print()
        h = t.get("shmkv Map[k], codec bytes, 2 MiB pages")
        if h is not None:
            mh = t["multiprocessing.Manager().dict() proxy"] / h
            print(f"at {n:,}, 2 MiB pages: {mh:.0f}x faster than the Manager proxy "
                  f"(target 100x: {'met' if mh >= 100 else 'NOT met'})")


if __name__ == "__main__":
    old = reserve_huge_pages()
    try:
        main()
    finally:
        if old is not None:
            with open(NR_HUGEPAGES, "w") as f:
                f.write(str(old))

