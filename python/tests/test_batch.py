"""`with m.batch() as b:`: all or nothing, own writes visible, the lock."""

from __future__ import annotations

import threading

import pytest

import shmkv


def test_batch_commits_all_at_once(m):
    """Writes staged in a batch are invisible to other handles until the block ends, then all visible."""
    other = shmkv.Map(m.name, create=False)
    m["old"] = 0
    v = m.version
    with m.batch() as b:
        assert isinstance(b, shmkv.Batch)
        b["a"] = 1
        b["b"] = 2
        del b["old"]
        assert "a" not in other and other["old"] == 0
    assert other["a"] == 1 and other["b"] == 2 and "old" not in other
    assert m.version == v + 1


def test_exception_in_batch_aborts_it(m):
    """An exception inside the block applies nothing and propagates."""
    m["keep"] = "before"
    v = m.version
    with pytest.raises(RuntimeError, match="boom"):
        with m.batch() as b:
            b["keep"] = "after"
            b["new"] = 1
            raise RuntimeError("boom")
    assert m["keep"] == "before" and "new" not in m and m.version == v
    m["x"] = 1  # the lock was released
    m.verify()


def test_batch_sees_its_own_writes(m):
    """b[k], b.get, `in`, len and iteration include the batch's staged writes."""
    m["a"] = 1
    m["gone"] = 0
    with m.batch() as b:
        b["b"] = 2
        b["a"] = 10
        del b["gone"]
        assert b["a"] == 10 and b["b"] == 2 and b.get("gone") is None and b.get("zz", 5) == 5
        assert "b" in b and "gone" not in b and 3 not in b
        assert sorted(b) == ["a", "b"] and len(b) == 2
        with pytest.raises(shmkv.NotFoundError):
            b["gone"]
        with pytest.raises(KeyError):
            del b["gone"]
        with pytest.raises(TypeError):
            b[5] = 1
        b.update({"c": 3})
        assert b.pop("c") == 3
    assert dict(m) == {"a": 10, "b": 2}


def test_batch_outside_with_and_reuse(m):
    """A batch not entered, or ended, refuses use; commit()/abort() work without `with`."""
    b = m.batch()
    with pytest.raises(RuntimeError):
        b["a"] = 1
    b.__enter__()
    b["a"] = 1
    b.commit()
    assert m["a"] == 1
    with pytest.raises(RuntimeError):
        b["b"] = 2
    with pytest.raises(RuntimeError):
        b.__enter__()
    c = m.batch().__enter__()
    c["z"] = 1
    c.abort()
    assert "z" not in m


def test_nested_write_from_the_same_thread_is_an_error(m):
    """A write through the map while this thread holds a batch: NestedWriteError, not a deadlock."""
    with m.batch() as b:
        b["a"] = 1
        with pytest.raises(shmkv.NestedWriteError):
            m["b"] = 2
    assert m["a"] == 1 and "b" not in m


def test_batch_blocks_other_writers_until_it_ends(m):
    """Another thread's write waits for the batch (GIL released meanwhile) and lands after it."""
    order = []
    with m.batch() as b:
        b["a"] = 1
        t = threading.Thread(target=lambda: (m.__setitem__("a", 2), order.append("writer")))
        t.start()
        t.join(0.3)
        assert t.is_alive(), "the writer should wait for the batch's lock"
        order.append("batch")
    t.join()
    assert order == ["batch", "writer"] and m["a"] == 2


def test_batch_used_from_another_thread_is_refused(m):
    """A batch belongs to its thread: use from another thread raises, the map stays usable."""
    errors = []
    with m.batch() as b:
        b["a"] = 1

        def other():
            try:
                b["b"] = 2
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert errors and isinstance(errors[0], RuntimeError)
    assert m["a"] == 1 and "b" not in m


def test_a_leaked_batch_holds_the_lock_until_collected_or_process_exit(m):
    """What the README promises for a batch not used with `with`: leaked on
    its own (living) thread, the lock is held until the object is collected,
    and nothing of it is applied; left open by a thread that exits, the lock
    stays held (writers get LockTimeoutError naming this pid)."""
    import gc
    import os

    other = shmkv.Map(m.name, create=False, lock_timeout=0.3)
    b = m.batch()
    b.__enter__()
    b["leaked"] = 1
    with pytest.raises(shmkv.LockTimeoutError) as e:
        other["x"] = 1
    assert e.value.holder_pid == os.getpid()
    del b
    gc.collect()
    other["x"] = 1  # released with the object
    assert "leaked" not in m and m["x"] == 1

    # Left open by a thread that exits: held until the process exits, so
    # this part runs in a child process (exit code 0 = as promised).
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            mine = shmkv.Map(m.name, create=False)
            probe = shmkv.Map(m.name, create=False, lock_timeout=0.3)
            kept = []

            def leave_open():
                t = mine.batch()
                t.__enter__()
                t["abandoned"] = 1
                kept.append(t)

            th = threading.Thread(target=leave_open)
            th.start()
            th.join()
            held = []
            for _ in range(2):
                try:
                    probe["y"] = 1
                    held.append(False)
                except shmkv.LockTimeoutError as err:
                    held.append(err.holder_pid == os.getpid())
                kept.clear()  # dropped on a thread that is not its own
                gc.collect()
            code = 0 if held == [True, True] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    other["y"] = 1  # the kernel released the lock with the process
    assert "abandoned" not in m and m["y"] == 1
