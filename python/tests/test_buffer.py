"""get_buffer: read-only, zero-copy memoryviews that pin their bytes until released."""

from __future__ import annotations

import gc
import os
import threading

import pytest

import shmkv
from conftest import buffer_address, mapping_of


def test_get_buffer_is_zero_copy_and_read_only(mb):
    """The view's bytes are the stored bytes in the shared segment (same address), read-only."""
    mb["k"] = b"0123456789abcdef" * 4
    v = mb.get_buffer("k")
    assert isinstance(v, memoryview) and v.readonly and v.format == "B" and v.nbytes == 64
    assert bytes(v) == b"0123456789abcdef" * 4
    addr = buffer_address(v)
    assert addr == shmkv._shmkv._value_address(mb, "k")
    assert "SYSV" in mapping_of(addr), mapping_of(addr)
    with pytest.raises(TypeError):
        v[0] = 1
    assert v[1:3].tobytes() == b"12"
    v.release()
    with pytest.raises(shmkv.NotFoundError):
        mb.get_buffer("missing")


def test_with_get_buffer_releases(mb):
    """`with m.get_buffer(k) as buf:` works and releases the view at the end."""
    mb["k"] = b"abc"
    with mb.get_buffer("k") as buf:
        assert bytes(buf) == b"abc"
    with pytest.raises(ValueError):
        bytes(buf)


def test_views_outlive_many_compactions_unchanged(mb):
    """Views taken before 60 overwrites + compactions keep their bytes; releasing them unmaps the old generations."""
    for i in range(20):
        mb[f"k{i}"] = bytes([i]) * 100
    views = [mb.get_buffer(f"k{i}") for i in range(20)]
    addrs = [buffer_address(v) for v in views]
    for round_ in range(60):
        for i in range(20):
            mb[f"k{i}"] = bytes([(i + round_ + 1) % 256]) * 100
        mb.compact()
    assert mb.stats()["mapped_generations"] > 1
    for i, v in enumerate(views):
        assert bytes(v) == bytes([i]) * 100
        assert buffer_address(v) == addrs[i]
    for v in views:
        v.release()
    del views
    gc.collect()
    mb.compact()
    assert mb.stats()["mapped_generations"] == 1, "released views must unpin"


def test_dropping_the_view_unpins(mb):
    """A view dropped without release() (garbage collected) ends its pin too."""
    mb["k"] = b"x" * 10
    v = mb.get_buffer("k")
    mb["k"] = b"y" * 10
    mb.compact()
    assert mb.stats()["mapped_generations"] == 2
    del v
    gc.collect()
    mb.compact()
    assert mb.stats()["mapped_generations"] == 1


def test_view_released_on_another_thread(mb):
    """A view released on another thread is handed back to its thread: no crash, unpinned on the next call."""
    mb["k"] = b"z" * 10
    v = mb.get_buffer("k")
    mb.compact()
    t = threading.Thread(target=v.release)
    t.start()
    t.join()
    del v
    mb.compact()
    assert mb.stats()["mapped_generations"] == 1


def test_view_survives_destroy_until_released(maps):
    """A view stays readable after the map is destroyed (the mapping is kept until release)."""
    a = maps.new(codec="bytes")
    a["k"] = b"kept"
    v = a.get_buffer("k")
    a.destroy()
    assert bytes(v) == b"kept"
    v.release()


def test_buffer_of_pickled_value(m):
    """With a codec, the view holds the encoded bytes."""
    import pickle

    m["k"] = {"a": 1}
    with m.get_buffer("k") as buf:
        assert pickle.loads(buf) == {"a": 1}


@pytest.mark.parametrize("taker", ["forking-thread", "other-thread", "exited-thread"])
def test_view_held_across_fork_stays_mapped_in_the_child(mb, taker):
    """A view taken before os.fork(), on the forking thread or on another
    thread (alive at the fork, or already ended), keeps its bytes mapped in
    the child while the child rewrites and compacts; the parent's view is
    unaffected."""
    mb["k"] = b"A" * 1000
    views = []
    took, done = threading.Event(), threading.Event()

    def take():
        views.append(mb.get_buffer("k"))
        took.set()
        done.wait()

    if taker == "forking-thread":
        views.append(mb.get_buffer("k"))
    else:
        t = threading.Thread(target=take)
        t.start()
        took.wait()
        if taker == "exited-thread":
            done.set()
            t.join()
    v = views[0]
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for i in range(5):
                    mb["k"] = bytes([66 + i]) * 1000
                    mb.compact()
                code = 0 if bytes(v) == b"A" * 1000 else 2
                v.release()
                mb.compact()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        # Before: the child died of SIGSEGV (-11) reading a view pinned by
        # the parent's other thread, whose pin the fork reset had voided.
        assert os.waitstatus_to_exitcode(status) == 0
        assert bytes(v) == b"A" * 1000
        assert mb["k"] == b"F" * 1000
    finally:
        done.set()
        if taker != "forking-thread":
            t.join()
        v.release()
