"""shmkv: a dict-like map in SysV shared memory, shared by unrelated processes.

Reads are lock-free and take nanoseconds (no system call, no lock, no
copy until the value becomes a Python object); writes are atomic and
crash-safe (a writer killed at any point leaves the map before or after its
write). A map outlives every process until :meth:`Map.destroy`.

>>> import shmkv
>>> m = shmkv.Map("routes", capacity=10_000, arena="16mb")
>>> m["/api"] = {"backend": "10.0.0.7:8080"}
>>> m["/api"]["backend"]
'10.0.0.7:8080'
>>> with m.batch() as b:          # all or nothing
...     b["/a"] = 1
...     b["/b"] = 2
>>> m.destroy()
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, List, Tuple, Union

from . import _errors, _shmkv
from ._errors import (
    CorruptedError,
    Error,
    FullError,
    IncompatibleError,
    InvalidArgumentError,
    LockTimeoutError,
    MapExistsError,
    MapNotFoundError,
    NestedWriteError,
    NotFoundError,
    PermissionDeniedError,
    ReadOnlyError,
    ReservedKeyError,
    TooLargeError,
)

Key = Union[str, bytes]

MAX_KEY_LEN: int = _shmkv.MAX_KEY_LEN
parse_size = _shmkv.parse_size


class Map(_shmkv.Map, MutableMapping):
    """A dict-like map in SysV shared memory (a ``MutableMapping``).

    - ``name``: the map's name (hashed to its SysV key unless ``sysv_key``
      or ``ftok=(path, id)`` give the key).
    - ``create``: create the map if it does not exist (otherwise
      :class:`MapNotFoundError`).
    - ``capacity`` (entries), ``arena`` and ``max_size`` (bytes: an int or
      a string such as ``"64mb"``): the initial size and the bound of
      online growth (creation only).
    - ``mode``: SysV permission bits; ``read_only``: attach without write
      access; ``lock_timeout``: seconds a writer waits for the lock.
    - ``codec``: ``"pickle"`` (default), ``"json"``, ``"msgpack"`` (needs the
      ``msgpack`` package) or ``"bytes"`` (values are ``bytes``, stored as
      they are).
    - ``huge_pages``: ``"off"`` (default), ``"try"`` or ``"require"``: put
      the map's data segments on 2 MiB pages (fewer TLB misses for large
      maps; needs pages reserved in ``vm.nr_hugepages``). ``"try"`` falls
      back to normal pages (``stats()["huge_pages"]`` says which);
      ``"require"`` raises :class:`shmkv.Error` naming ``vm.nr_hugepages``
      when the kernel has none. Recorded at creation: later growth follows
      it.

    Keys are ``str`` (stored as UTF-8) or ``bytes``; ``"a"`` and ``b"a"`` are
    the same key. Iteration (and ``keys()``, ``items()``, ``values()``) reads
    one consistent snapshot and yields ``str`` for UTF-8 keys, ``bytes``
    otherwise.

    Operations (the first four are native code: about 60 ns for a 64-byte
    ``bytes`` value):

    - ``m[k]``: the value; :class:`NotFoundError` (a ``KeyError``) if absent.
    - ``m.get(k, default=None)``, ``k in m``, ``len(m)``.
    - ``m[k] = v``, ``del m[k]``: one atomic, crash-safe write each.
    - ``m.get_buffer(k)``: a read-only, zero-copy ``memoryview`` of the
      stored (encoded) bytes, pinned until released
      (``with m.get_buffer(k) as buf:``).
    - ``with m.batch() as b:``: several writes as one (:class:`Batch`).
    - ``m.version``, ``m.wait_for_change(since, timeout=None)``,
      ``m.stats()``, ``m.verify()``, ``m.compact()``, ``m.destroy()``.
    - ``update``, ``clear``, ``pop``, ``setdefault``: one atomic write each.

    Errors derive from :class:`shmkv.Error`: :class:`MapNotFoundError`,
    :class:`FullError`, :class:`LockTimeoutError` (``.holder_pid``),
    :class:`CorruptedError`, :class:`IncompatibleError`,
    :class:`PermissionDeniedError` (a ``PermissionError``),
    :class:`ReservedKeyError` (a ``ValueError``); keys or values
    of the wrong type raise ``TypeError``.

    The object may be shared by threads and survives ``fork()`` (gunicorn
    ``--preload``, ``multiprocessing`` with the fork start method): the
    children keep using it. The GIL is released around writes, batch
    commits, waits and copies of large values.
    """

    __slots__ = ()

    def __reduce__(self):
        """Pickling a map (e.g. to a ``multiprocessing`` spawn worker)
        opens it again, by name and key, in the receiving process."""
        name, key, codec, read_only, lock_timeout = self._reopen_args()
        return (_reopen, (type(self), name, key, codec, read_only, lock_timeout))

    def batch(self) -> "Batch":
        """An atomic batch: ``with m.batch() as b:`` takes the write lock,
        ``b`` has the mapping methods and sees its own writes, and the end
        of the block applies all of them as one write; an exception inside
        the block applies none of them (and propagates). Other writers wait
        meanwhile, so keep it short; see :class:`Batch`."""
        return Batch(self)

    def keys(self) -> List[Key]:  # type: ignore[override]
        """The keys of one consistent snapshot, as a list."""
        return self._keys_snapshot()

    def items(self) -> List[Tuple[Key, Any]]:  # type: ignore[override]
        """The ``(key, value)`` pairs of one consistent snapshot, as a list."""
        return self._items_snapshot()

    def values(self) -> List[Any]:  # type: ignore[override]
        """The values of one consistent snapshot, as a list."""
        return [v for _, v in self._items_snapshot()]

    def update(self, other=(), /, **kwds) -> None:  # type: ignore[override]
        """Like ``dict.update``, as one atomic write."""
        with self.batch() as b:
            b.update(other, **kwds)

    def clear(self) -> None:
        """Removes every entry, as one atomic write."""
        with self.batch() as b:
            for k in list(b):
                del b[k]

    _MISSING = object()

    def pop(self, key: Key, default: Any = _MISSING) -> Any:  # type: ignore[override]
        """Removes ``key`` and returns its value (atomically), or returns
        ``default``; :class:`NotFoundError` if absent and no default."""
        with self.batch() as b:
            if key in b:
                v = b[key]
                del b[key]
                return v
        if default is Map._MISSING:
            raise NotFoundError(key)
        return default

    def setdefault(self, key: Key, default: Any = None) -> Any:
        """``m[key]`` if present, else stores ``default`` (atomically) and
        returns it."""
        with self.batch() as b:
            if key in b:
                return b[key]
            b[key] = default
            return default


def _reopen(cls, name, key, codec, read_only, lock_timeout):
    return cls(name, create=False, sysv_key=key, codec=codec, read_only=read_only,
               lock_timeout=lock_timeout)


class Batch(_shmkv.Batch, MutableMapping):
    """An open write: everything staged is applied as one atomic,
    crash-safe write by ``commit()`` (the end of a ``with`` block), nothing
    by ``abort()`` (an exception in the block).

    It holds the map's write lock from ``__enter__`` until it ends; other
    writers (threads and processes) wait, and a write through the map
    itself from this thread meanwhile raises :class:`NestedWriteError`.
    A batch belongs to the thread that opened it. If its process dies, the
    kernel releases the lock and nothing of the batch is applied. If the
    object is leaked while its thread lives (stored somewhere and never
    ended), the lock stays held until it is garbage collected; if it is
    dropped on another thread, or its thread exits with it open, the lock
    stays held until the process exits (other writers get
    :class:`LockTimeoutError` naming this pid). Always use ``with``.
    """

    __slots__ = ()


def list_maps(all: bool = False) -> List[dict]:
    """Every shmkv map this process can see, as dicts (``name``, ``key``,
    ``state``, ``stats`` or ``None``, ``error`` or ``None``). With ``all``,
    also orphaned roots and unreadable segments."""
    return _shmkv.list_maps(all)


__all__ = [
    "Map",
    "Batch",
    "list_maps",
    "parse_size",
    "MAX_KEY_LEN",
    *_errors.__all__,
]
