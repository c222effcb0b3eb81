"""The mapping API: every method, codecs, keys, sizes, errors, help()."""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time

import pytest

import shmkv


def test_set_get_contains_len_del(m):
    """m[k] = v, m[k], k in m, len, del, get with default; NotFoundError is a KeyError."""
    assert len(m) == 0 and "a" not in m
    m["a"] = {"x": [1, 2]}
    m[b"b"] = 2
    assert m["a"] == {"x": [1, 2]} and m["b"] == 2 and m[b"a"] == {"x": [1, 2]}
    assert "a" in m and b"b" in m and len(m) == 2
    assert m.get("a") == {"x": [1, 2]} and m.get("zz") is None and m.get("zz", 7) == 7
    m["a"] = "replaced"
    assert m["a"] == "replaced" and len(m) == 2
    del m["a"]
    assert "a" not in m and len(m) == 1
    with pytest.raises(shmkv.NotFoundError) as e:
        m["a"]
    assert isinstance(e.value, KeyError) and e.value.args == ("a",)
    with pytest.raises(KeyError):
        del m["a"]
    assert not isinstance(e.value, shmkv.MapNotFoundError)


def test_hot_methods_are_native(m):
    """m[k], get, `in` and m[k] = v resolve to the native class (the ≤300 ns path)."""
    native = shmkv._shmkv.Map
    for name in ("__getitem__", "get", "__contains__", "__setitem__", "__len__", "get_buffer"):
        assert getattr(shmkv.Map, name) is getattr(native, name), name
    assert isinstance(m, shmkv.Map) and isinstance(m, __import__("collections.abc").abc.MutableMapping)


def test_iteration_keys_items_values_snapshot(m):
    """Iteration, keys(), items(), values(); str for UTF-8 keys, bytes otherwise."""
    m["s"] = 1
    m[b"\xff\xfe"] = 2
    assert sorted(m, key=repr) == sorted(["s", b"\xff\xfe"], key=repr)
    assert sorted(m.keys(), key=repr) == sorted(["s", b"\xff\xfe"], key=repr)
    assert dict(m.items()) == {"s": 1, b"\xff\xfe": 2}
    assert sorted(m.values()) == [1, 2]
    it = iter(m)
    m["t"] = 3  # the iterator runs over the snapshot taken before
    assert sorted(it, key=repr) == sorted(["s", b"\xff\xfe"], key=repr)
    assert dict(m) == {"s": 1, b"\xff\xfe": 2, "t": 3}
    assert m == {"s": 1, b"\xff\xfe": 2, "t": 3}


def test_mutablemapping_mixins(m):
    """update (one batch), setdefault, pop, popitem, clear."""
    m.update({"a": 1}, b=2)
    m.update([("c", 3)])
    assert dict(m) == {"a": 1, "b": 2, "c": 3}
    v = m.version
    m.update({"d": 4, "e": 5})
    assert m.version == v + 1, "update is one write"
    assert m.setdefault("a", 9) == 1 and m.setdefault("f", 6) == 6 and m["f"] == 6
    assert m.pop("a") == 1 and "a" not in m
    assert m.pop("a", "dflt") == "dflt"
    with pytest.raises(shmkv.NotFoundError):
        m.pop("a")
    k, val = m.popitem()
    assert k not in m
    m.clear()
    assert len(m) == 0 and list(m) == []


@pytest.mark.parametrize("codec", ["pickle", "json", "msgpack", "bytes"])
def test_codecs(maps, codec):
    """Each codec round-trips its values; the stored bytes are the codec's encoding."""
    m = maps.new(codec=codec)
    assert m.codec == codec
    if codec == "bytes":
        m["a"] = b"raw\x00bytes"
        m["b"] = bytearray(b"ba")
        m["c"] = memoryview(b"mv")
        assert (m["a"], m["b"], m["c"]) == (b"raw\x00bytes", b"ba", b"mv")
        with pytest.raises(TypeError):
            m["d"] = "str is not bytes"
        with pytest.raises(TypeError):
            m["d"] = 5
        return
    value = {"n": 1, "s": "é", "l": [1, 2.5, None, True]}
    m["a"] = value
    assert m["a"] == value
    raw = bytes(m.get_buffer("a"))
    if codec == "pickle":
        assert pickle.loads(raw) == value
        m["set"] = {1, 2}
        assert m["set"] == {1, 2}
    elif codec == "json":
        import json

        assert json.loads(raw) == value
        with pytest.raises(TypeError):
            m["x"] = {1, 2}  # not JSON
    else:
        import msgpack

        assert msgpack.unpackb(raw) == value
        m["bin"] = b"\x00\x01"
        assert m["bin"] == b"\x00\x01"


def test_msgpack_missing_is_a_clear_error(maps, monkeypatch):
    """codec="msgpack" without the package: ImportError naming `pip install msgpack`."""
    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(ImportError, match="pip install msgpack"):
        shmkv.Map(maps.name(), codec="msgpack")


def test_reserved_keys_are_refused_with_reserved_key_error(m):
    """Keys starting with b"\\0shmkv:" belong to shmkv: writes raise ReservedKeyError
    (an InvalidArgumentError, so a ValueError), in the map and in a batch, and change nothing."""
    m["keep"] = 1
    v = m.version
    for key in (b"\0shmkv:sync", "\0shmkv:anything", b"\0shmkv:"):
        with pytest.raises(shmkv.ReservedKeyError) as e:
            m[key] = 1
        assert isinstance(e.value, ValueError) and isinstance(e.value, shmkv.InvalidArgumentError)
        with pytest.raises(shmkv.ReservedKeyError):
            del m[key]
        with pytest.raises(shmkv.ReservedKeyError):
            with m.batch() as b:
                b["other"] = 2
                b[key] = 1
    assert m.version == v and dict(m) == {"keep": 1}
    # Keys that only look alike are ordinary keys.
    m[b"\0shmkv"] = 3
    m["shmkv:sync"] = 4
    assert m[b"\0shmkv"] == 3 and m["shmkv:sync"] == 4


def test_wrong_types_are_type_errors(m):
    """Keys other than str/bytes, bad option types: TypeError/ValueError, never a crash."""
    for bad in (1, 1.5, None, ("t",), ["l"], object()):
        with pytest.raises(TypeError):
            m[bad]
        with pytest.raises(TypeError):
            m[bad] = 1
        with pytest.raises(TypeError):
            del m[bad]
        with pytest.raises(TypeError):
            m.get(bad)
        with pytest.raises(TypeError):
            m.get_buffer(bad)
        assert (bad in m) is False
    with pytest.raises(TypeError):
        shmkv.Map(123)
    with pytest.raises(TypeError):
        shmkv.Map(m.name, capacity="many")
    with pytest.raises(TypeError):
        shmkv.Map(m.name, arena=1.5)
    with pytest.raises(ValueError):
        shmkv.Map(m.name, codec="yaml")
    with pytest.raises(ValueError):
        shmkv.Map(m.name, lock_timeout=-1)
    with pytest.raises(shmkv.InvalidArgumentError):
        shmkv.Map(m.name + "x", arena="12 parsecs")
    with pytest.raises(shmkv.InvalidArgumentError):
        shmkv.Map("", create=True)
    with pytest.raises(TypeError):
        m.wait_for_change("x")
    with pytest.raises(TypeError):
        m["k"] = threading.Lock()  # pickle cannot encode it
    assert "k" not in m


def test_sizes_accept_ints_and_human_strings(maps):
    """arena/max_size: ints or "64mb"-style strings (shmkv::Size::parse)."""
    assert shmkv.parse_size("64mb") == 64 << 20 and shmkv.parse_size("4k") == 4096
    a = maps.new(arena="2mb", capacity=100)
    assert a.stats()["arena_size"] == 2 << 20
    b = maps.new(arena=3 << 20, max_size="64mb")
    assert b.stats()["arena_size"] == 3 << 20
    with pytest.raises(shmkv.InvalidArgumentError):
        shmkv.parse_size("-5mb")


def _free_huge_pages() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("HugePages_Free:"):
                return int(line.split()[1])
    return 0


def test_huge_pages_option(maps):
    """huge_pages='off'|'try'|'require' reaches Options::huge_pages: the policy
    is recorded, 'try' falls back to normal pages when the kernel has none
    free, 'require' then raises an error naming vm.nr_hugepages and creates
    nothing; with free pages both get 2 MiB pages."""
    with pytest.raises(ValueError):
        maps.new(huge_pages="sometimes")
    with pytest.raises(TypeError):
        maps.new(huge_pages=1)
    off = maps.new()
    assert off.stats()["huge_page_policy"] == "Off" and off.stats()["huge_pages"] is False
    # A small map: 1 MiB arena and 1,024 slots fit in a few 2 MiB pages.
    free = _free_huge_pages()
    t = maps.new(huge_pages="try")
    assert t.stats()["huge_page_policy"] == "Try"
    t["k"] = 1
    assert t["k"] == 1
    name = maps.name("req")
    if free >= 4:
        assert t.stats()["huge_pages"] is True
        r = shmkv.Map(name, capacity=1024, arena="1mb", huge_pages="require")
        assert r.stats()["huge_pages"] is True and r.stats()["huge_page_policy"] == "Require"
    else:
        assert t.stats()["huge_pages"] is False
        with pytest.raises(shmkv.Error) as e:
            shmkv.Map(name, capacity=1024, arena="1mb", huge_pages="require")
        assert "nr_hugepages" in str(e.value)
        with pytest.raises(shmkv.MapNotFoundError):
            shmkv.Map(name, create=False)


def test_open_existing_and_missing(maps):
    """create=False opens an existing map; a missing map is MapNotFoundError (not a KeyError)."""
    a = maps.new()
    a["k"] = 1
    b = shmkv.Map(a.name, create=False)
    assert b["k"] == 1
    with pytest.raises(shmkv.MapNotFoundError) as e:
        shmkv.Map(maps.name(), create=False)
    assert not isinstance(e.value, KeyError)


def test_sysv_key_and_ftok(maps, tmp_path):
    """sysv_key= and ftok= address the map by a raw key / a path."""
    key = 0x5E000000 | (os.getpid() & 0xFFFFF)
    a = shmkv.Map(maps.name(), sysv_key=key, capacity=64)
    try:
        a["k"] = 1
        assert a.stats()["key"] == key
        assert shmkv.Map(a.name, sysv_key=key, create=False)["k"] == 1
    finally:
        a.destroy()
    p = tmp_path / "anchor"
    p.write_text("x")
    b = shmkv.Map(maps.name(), ftok=(str(p), 7), capacity=64)
    try:
        b["k"] = 2
        assert shmkv.Map(b.name, ftok=(str(p), 7), create=False)["k"] == 2
    finally:
        b.destroy()


def test_read_only_handle(maps):
    """read_only=True reads; writes raise ReadOnlyError (a PermissionError)."""
    a = maps.new()
    a["k"] = 1
    r = shmkv.Map(a.name, read_only=True, create=False)
    assert r.read_only and r["k"] == 1
    with pytest.raises(shmkv.ReadOnlyError) as e:
        r["k"] = 2
    assert isinstance(e.value, PermissionError)
    with pytest.raises(shmkv.ReadOnlyError):
        del r["k"]


def test_permission_error_for_eacces(maps):
    """Another user opening a 0600 map gets PermissionError (EACCES), as a shmkv.Error."""
    a = maps.new(mode=0o600)
    a["k"] = 1
    if os.geteuid() != 0:
        pytest.fail("this test drops privileges with setuid and needs root; run as root")
    pid = os.fork()
    if pid == 0:
        code = 9
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                shmkv.Map(a.name, create=False)
                code = 1
            except PermissionError as e:
                code = 0 if isinstance(e, shmkv.Error) else 2
            except BaseException:
                code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_too_large_and_full(maps):
    """Oversized keys: TooLargeError (ValueError); max_size reached: FullError, nothing lost."""
    a = maps.new(capacity=16, arena="64kb", max_size="256kb", codec="bytes")
    with pytest.raises(shmkv.TooLargeError):
        a["k" * (shmkv.MAX_KEY_LEN + 1)] = b"v"
    with pytest.raises(ValueError):
        a[b"k" * (shmkv.MAX_KEY_LEN + 1)] = b"v"
    a["keep"] = b"x"
    with pytest.raises((shmkv.FullError, shmkv.TooLargeError)):
        for i in range(10_000):
            a[f"k{i}"] = b"v" * 1000
    assert a["keep"] == b"x"
    a.verify()


def test_lock_timeout_names_the_holder(maps):
    """A writer that cannot get the lock in lock_timeout gets LockTimeoutError with holder_pid."""
    a = maps.new()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with shmkv.Map(a.name, create=False).batch() as b:
                b["held"] = 1
                os.write(w, b"x")
                time.sleep(3)
        finally:
            os._exit(0)
    try:
        assert os.read(r, 1) == b"x"
        t = shmkv.Map(a.name, create=False, lock_timeout=0.2)
        t0 = time.monotonic()
        with pytest.raises(shmkv.LockTimeoutError) as e:
            t["k"] = 1
        assert time.monotonic() - t0 < 2.5
        assert e.value.holder_pid == pid and isinstance(e.value, TimeoutError)
        assert str(pid) in str(e.value)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    assert "held" not in a


def test_version_and_wait_for_change(m):
    """version counts writes; wait_for_change wakes on a write, times out with None."""
    v0 = m.version
    m["a"] = 1
    assert m.version == v0 + 1
    v = m.version
    assert m.wait_for_change(v, timeout=0.05) is None
    assert m.wait_for_change(v - 1, timeout=0) == v
    threading.Timer(0.2, lambda: m.__setitem__("b", 2)).start()
    t0 = time.monotonic()
    assert m.wait_for_change(v, timeout=5) == v + 1
    assert time.monotonic() - t0 < 4


def test_wait_for_change_releases_the_gil(m):
    """While one thread sleeps in wait_for_change, other Python threads run."""
    v = m.version
    count = 0
    stop = threading.Event()

    def spin():
        nonlocal count
        while not stop.is_set():
            count += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.05)
        c0 = count
        time.sleep(0.25)  # releases the GIL: the spinner's free-running rate
        free = count - c0
        before = count
        assert m.wait_for_change(v, timeout=0.25) is None
        ran = count - before
    finally:
        stop.set()
        t.join()
    # With the GIL held for those 0.25 s the spinner would get (almost) nothing.
    assert ran > free // 4, (ran, free)


def test_stats_verify_compact_list_maps_destroy(maps):
    """stats() dict, verify() report, compact(), list_maps(), destroy() then MapNotFoundError."""
    a = maps.new()
    for i in range(100):
        a[f"k{i}"] = i
    for i in range(50):
        del a[f"k{i}"]
    s = a.stats()
    # How many of the 50 deletes leave a tombstone depends on where the keys
    # hash (a tombstone followed by an empty slot goes back to empty), so the
    # count is checked against the slots verify() walks, not against a guess.
    assert s["name"] == a.name and s["live"] == 50
    assert {"capacity", "arena_size", "version", "lock_pid", "mapped_generations"} <= set(s)
    rep = a.verify()
    assert rep["live"] == 50 and rep["tombstones"] == s["tombstones"]
    a.compact()
    after = a.stats()
    assert after["tombstones"] == 0 and after["generation"] == s["generation"] + 1
    assert dict(a) == {f"k{i}": i for i in range(50, 100)}
    listed = {x["name"]: x for x in shmkv.list_maps()}
    assert listed[a.name]["state"] == "ready" and listed[a.name]["stats"]["live"] == 50
    other = shmkv.Map(a.name, create=False)
    a.destroy()
    with pytest.raises(shmkv.MapNotFoundError):
        other["k60"]
    with pytest.raises(shmkv.MapNotFoundError):
        a["k60"] = 1
    assert a.name not in {x["name"] for x in shmkv.list_maps()}


def test_threads_share_one_map(m):
    """One Map object used by 8 threads at once: every write lands, reads never fail."""
    errors = []

    def work(t):
        try:
            for i in range(300):
                m[f"t{t}-{i}"] = i
                assert m[f"t{t}-{i}"] == i
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and len(m) == 8 * 300
    m.verify()


def test_help_reads_well():
    """help(shmkv.Map) shows the constructor, the codecs, batch, get_buffer and the errors."""
    import pydoc

    text = pydoc.render_doc(shmkv.Map, renderer=pydoc.plaintext)
    for needle in ("codec", "capacity", "get_buffer", "batch", "wait_for_change",
                   "zero-copy", "NotFoundError", "fork"):
        assert needle in text, needle
    assert shmkv.NotFoundError.__module__ == "shmkv"
    assert issubclass(shmkv.NotFoundError, KeyError) and issubclass(shmkv.LockTimeoutError, shmkv.Error)


def test_bad_arguments_raise_exceptions_never_panics(m):
    """Out-of-range numbers, NaN/huge timeouts, bad names: ordinary exceptions, never a Rust panic (BaseException)."""
    name = m.name + "-x"
    cases = [
        lambda: shmkv.Map(name, lock_timeout=float("nan")),
        lambda: shmkv.Map(name, capacity=0),
        lambda: shmkv.Map(name, capacity=-1),
        lambda: shmkv.Map(name, capacity=2**70),
        lambda: shmkv.Map(name, arena=0),
        lambda: shmkv.Map(name, max_size=1),
        lambda: shmkv.Map(name, mode=0o7777),
        lambda: shmkv.Map(name, mode=-1),
        lambda: shmkv.Map(name, sysv_key=2**40),
        lambda: shmkv.Map(name, ftok=("/nonexistent/x", 1)),
        lambda: shmkv.Map(name, ftok=("/tmp", 300)),
        lambda: shmkv.Map("n" * 10_000),
        lambda: shmkv.Map("nul\0name"),
        lambda: m.wait_for_change(-1, 0),
        lambda: m.wait_for_change(0, float("nan")),
        lambda: m.wait_for_change(0, -1),
        lambda: m["\ud800"],
        lambda: shmkv.Batch(5),
        lambda: shmkv.list_maps("x"),
    ]
    for i, case in enumerate(cases):
        try:
            case()
        except Exception:
            pass
        except BaseException as e:  # a PanicException is a BaseException
            pytest.fail(f"case {i}: {type(e).__name__}: {e}")
        else:
            pytest.fail(f"case {i} raised nothing")
    # Huge timeouts mean "no limit", not an overflow.
    shmkv.Map(m.name, lock_timeout=1e30, create=False)["k"] = 1
    assert m.wait_for_change(m.version - 1, timeout=1e30) == m.version
    assert shmkv.list_maps() is not None


def test_another_maps_key_is_incompatible(maps):
    """Opening a name at a key that holds another map: IncompatibleError."""
    a = maps.new()
    key = a.stats()["key"]
    with pytest.raises(shmkv.IncompatibleError):
        shmkv.Map(maps.name(), sysv_key=key, create=False)


def test_scribbled_record_is_corrupted_error(maps):
    """A value byte changed behind the map's back: verify() raises CorruptedError."""
    import ctypes

    a = maps.new(codec="bytes")
    a["k"] = b"UNIQUE-PATTERN-0123456789"
    s = a.stats()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.shmdt.argtypes = [ctypes.c_void_p]
    addr = libc.shmat(s["data_shmid"], None, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value)
    try:
        seg = ctypes.string_at(addr, s["segment_size"])
        off = seg.index(b"UNIQUE-PATTERN")
        ctypes.memset(addr + off, ord("X"), 1)
    finally:
        libc.shmdt(ctypes.c_void_p(addr))
    with pytest.raises(shmkv.CorruptedError, match="problem"):
        a.verify()


def test_large_values_round_trip(mb):
    """A 32 MiB value (copied with the GIL released) reads back whole."""
    big = bytes(range(256)) * (32 << 12)
    mb["big"] = big
    assert mb["big"] == big
    with mb.get_buffer("big") as v:
        assert v.nbytes == len(big) and v[-1] == 255


def test_wait_on_a_destroyed_map(maps):
    """wait_for_change on a map destroyed meanwhile: MapNotFoundError."""
    a = maps.new()
    other = shmkv.Map(a.name, create=False)
    threading.Timer(0.2, a.destroy).start()
    with pytest.raises(shmkv.MapNotFoundError):
        other.wait_for_change(other.version, timeout=5)
