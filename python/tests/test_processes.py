"""Several processes: fork after open, multiprocessing pools, SIGKILL inside a batch, the CLI."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import time

import pytest

import shmkv

FORK = mp.get_context("fork")
N_KEYS = 8
PAD = 200


def test_fork_after_open(m):
    """A map opened before os.fork() keeps working in the child (reads, writes, batches)."""
    m["parent"] = 1
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert m["parent"] == 1
            m["child"] = os.getpid()
            with m.batch() as b:
                b["child-batch"] = 2
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert m["child"] == pid and m["child-batch"] == 2
    m["after"] = 3  # the parent's handle is unaffected
    m.verify()


@pytest.mark.parametrize("how", ["exception", "commit", "drop"])
def test_a_batch_open_at_fork_stays_the_parents(maps, how):
    """A child forked inside a batch inherits the object but not the lock:
    it can neither stage into the parent's batch (whose records are in the
    shared segment), nor commit it, nor release the parent's lock by
    leaving the block (an exception, e.g. sys.exit) or dropping it."""
    m = maps.new()
    b = m.batch()
    b.__enter__()
    b["p"] = 1
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            try:
                b["c"] = 2
                code |= 1  # staged into the parent's batch
            except RuntimeError:
                pass
            if how == "exception":
                try:
                    b.__exit__(SystemExit, SystemExit(0), None)
                except BaseException:
                    code |= 2  # the exception leaving the block was replaced
            elif how == "commit":
                try:
                    b.commit()
                    code |= 2  # committed the parent's batch
                except RuntimeError:
                    pass
            else:
                del b
                gc.collect()
            other = shmkv.Map(m.name, create=False, lock_timeout=0.3)
            try:
                other["x"] = 3
                code |= 4  # took the lock the parent holds
            except shmkv.LockTimeoutError:
                pass
        except BaseException:
            code |= 64
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    b.commit()
    assert os.waitstatus_to_exitcode(status) == 0
    assert dict(m.items()) == {"p": 1}
    m.verify()


def test_a_child_forked_inside_a_batch_writes_after_the_parent_commits(m):
    """The inherited handle of a child forked inside a batch is not 'inside
    the batch' in the child: its writes wait for the parent's commit
    instead of failing with NestedWriteError for the child's life."""
    with m.batch() as b:
        b["p"] = 1
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                m["c"] = 2  # waits for the parent's lock
                code = 0
            except shmkv.NestedWriteError:
                code = 3
            finally:
                os._exit(code)
        time.sleep(0.2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert m["p"] == 1 and m["c"] == 2
    m.verify()


def _read_passed_map(m):
    return (m["k"], m.codec, m.read_only, os.getpid())


def test_a_map_passed_to_a_spawned_process_reopens(maps):
    """A Map pickled to a spawn-start worker opens the same map there (by name and key)."""
    import pickle

    m = maps.new(codec="json")
    m["k"] = {"v": 1}
    again = pickle.loads(pickle.dumps(m))
    assert again["k"] == {"v": 1} and again.codec == "json" and again.name == m.name
    ro = shmkv.Map(m.name, create=False, read_only=True, codec="json")
    with mp.get_context("spawn").Pool(1) as pool:
        v, codec, read_only, pid = pool.apply(_read_passed_map, (ro,))
    assert v == {"v": 1} and codec == "json" and read_only and pid != os.getpid()


def _fork_worker(i):
    return (_SHARED["k"], os.getpid(), _SHARED.__setitem__(f"w{i}", i))


_SHARED: shmkv.Map


def test_multiprocessing_fork_pool_inherits_the_map(m):
    """multiprocessing (fork start method): pool workers use the map opened in the parent."""
    global _SHARED
    _SHARED = m
    m["k"] = "v"
    with FORK.Pool(4) as pool:
        out = pool.map(_fork_worker, range(16))
    assert all(r[0] == "v" for r in out)
    assert {m[f"w{i}"] for i in range(16)} == set(range(16))


def _writer(name, rounds):
    m = shmkv.Map(name, create=False)
    for r in range(1, rounds + 1):
        with m.batch() as b:
            for k in range(N_KEYS):
                b[f"k{k}"] = (r, bytes([r % 256]) * PAD)
    return rounds


def _reader(name, seconds):
    """Reads until `seconds` pass; returns (reads, problems)."""
    m = shmkv.Map(name, create=False)
    problems = []
    reads = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        # Plain gets: each value whole; once part of a batch was seen, later gets see all of it.
        last = 0
        for k in range(N_KEYS):
            r, pad = m[f"k{k}"]
            reads += 1
            if pad != bytes([r % 256]) * PAD:
                problems.append(f"torn value at k{k}: round {r}")
            if r < last:
                problems.append(f"k{k} round {r} after round {last}: mixed batches")
            last = r
        # A consistent snapshot: every key from one batch.
        rounds = {v[0] for _, v in m.items()}
        if len(rounds) != 1:
            problems.append(f"snapshot mixes rounds {sorted(rounds)}")
        # Zero-copy views are whole too.
        with m.get_buffer("k0") as buf:
            r, pad = pickle.loads(buf)
            if pad != bytes([r % 256]) * PAD:
                problems.append("torn buffer")
    return reads, problems[:10]


def test_pool_of_readers_with_a_writer_process(maps):
    """A multiprocessing.Pool of 3 readers and a writer process doing batches: no torn or mixed-batch values."""
    m = maps.new(capacity=64, arena="256kb")
    with m.batch() as b:
        for k in range(N_KEYS):
            b[f"k{k}"] = (0, bytes([0]) * PAD)
    with FORK.Pool(4) as pool:
        w = pool.apply_async(_writer, (m.name, 1500))
        rs = [pool.apply_async(_reader, (m.name, 2.0)) for _ in range(3)]
        results = [r.get(timeout=120) for r in rs]
        assert w.get(timeout=120) == 1500
    for reads, problems in results:
        assert reads > 0 and problems == []
    assert {v[0] for v in m.values()} == {1500}
    m.verify()


def test_writer_sigkilled_inside_a_batch_leaves_the_map_consistent(maps):
    """SIGKILL while a batch is staged: nothing of it is visible, the lock is free, verify() passes."""
    m = maps.new(capacity=64, arena="256kb")
    m["base"] = 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            mm = shmkv.Map(m.name, create=False)
            with mm.batch() as b:
                for i in range(500):  # enough to grow the map inside the batch
                    b[f"partial{i}"] = "x" * 100
                del b["base"]
                os.write(w, b"staged")
                time.sleep(30)
        finally:
            os._exit(0)
    try:
        assert os.read(r, 6) == b"staged"
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    finally:
        os.close(r)
        os.close(w)
    assert m["base"] == 1 and not any(str(k).startswith("partial") for k in m)
    m["after"] = 2  # the lock was released by the kernel
    m.verify()
    assert dict(m) == {"base": 1, "after": 2}


def _batch_loop(name):
    m = shmkv.Map(name, create=False)
    r = 0
    while True:
        r += 1
        with m.batch() as b:
            for k in range(N_KEYS):
                b[f"k{k}"] = (r, bytes([r % 256]) * PAD)


def test_writer_sigkilled_at_random_points_of_batches(maps):
    """A writer looping over batches is SIGKILLed 15 times at random moments: each time the map verifies and holds one whole batch."""
    import random

    m = maps.new(capacity=64, arena="128kb")
    with m.batch() as b:
        for k in range(N_KEYS):
            b[f"k{k}"] = (0, bytes([0]) * PAD)
    for _ in range(15):
        p = FORK.Process(target=_batch_loop, args=(m.name,))
        p.start()
        time.sleep(random.uniform(0.02, 0.2))
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        m.verify()
        rounds = {v[0] for v in m.values()}
        assert len(rounds) == 1, rounds
        for k in range(N_KEYS):
            r, pad = m[f"k{k}"]
            assert pad == bytes([r % 256]) * PAD


def test_python_reads_what_the_cli_wrote_and_back(maps, cli):
    """`shmkv put` → Python (codec bytes) reads it; Python writes → `shmkv get` prints it; keys agree."""
    name = maps.name("cli")
    subprocess.run([cli, "put", "--create", name, "from-cli", "hello from rust"], check=True)
    m = shmkv.Map(name, create=False, codec="bytes")
    assert m["from-cli"] == b"hello from rust"
    m["from-py"] = b"hello from python \x00\x01"
    out = subprocess.run([cli, "get", name, "from-py"], check=True, capture_output=True).stdout
    assert out == b"hello from python \x00\x01"
    keys = subprocess.run([cli, "keys", name], check=True, capture_output=True, text=True).stdout.split()
    assert sorted(keys) == ["from-cli", "from-py"]
    v = subprocess.run([cli, "verify", name], capture_output=True)
    assert v.returncode == 0, v.stderr
    # A pickled value is bytes to the CLI; what Python stores with json is readable text there.
    j = shmkv.Map(name, create=False, codec="json")
    j["cfg"] = {"port": 8080}
    out = subprocess.run([cli, "get", name, "cfg"], check=True, capture_output=True).stdout
    assert out == b'{"port":8080}'
    subprocess.run([cli, "rm", name, "from-cli"], check=True)
    assert "from-cli" not in m
