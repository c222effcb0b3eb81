"""The exceptions of :mod:`shmkv` (the native module raises these)."""

from __future__ import annotations


class Error(Exception):
    """Base class of every error shmkv raises (besides TypeError/ValueError
    for arguments of the wrong type)."""


class NotFoundError(Error, KeyError):
    """A key is not in the map (``m[k]``, ``del m[k]``, ``get_buffer``).

    A ``KeyError``, so ``dict``-style code works unchanged. Only for keys:
    a missing map is :class:`MapNotFoundError`."""


class MapNotFoundError(Error):
    """No map exists under this name or key (or it was destroyed)."""


class MapExistsError(Error, FileExistsError):
    """A map already exists under this name (creation only)."""


class PermissionDeniedError(Error, PermissionError):
    """The kernel refused access to the map's SysV objects (EACCES)."""


class ReadOnlyError(PermissionDeniedError):
    """A write through a map opened with ``read_only=True``."""


class InvalidArgumentError(Error, ValueError):
    """A name, size, mode or other option is not acceptable."""


class ReservedKeyError(InvalidArgumentError):
    """A write of a key in the namespace shmkv keeps for itself (keys that
    start with ``b"\\0shmkv:"``, such as the state ``shmkv sync`` stores)."""


class TooLargeError(Error, ValueError):
    """A key or an encoded value is larger than the map accepts."""


class FullError(Error):
    """The map has no room (``max_size`` reached, or the kernel's shared
    memory limits); nothing stored was changed."""


class LockTimeoutError(Error, TimeoutError):
    """The write lock was not obtained within ``lock_timeout`` seconds.

    ``holder_pid`` is the process that holds it (``None`` if unknown),
    ``waited`` the seconds waited."""

    def __init__(self, message: str, holder_pid: int | None = None, waited: float = 0.0):
        super().__init__(message)
        self.holder_pid = holder_pid
        self.waited = waited


class CorruptedError(Error):
    """The map's shared memory fails validation."""


class IncompatibleError(Error):
    """The map was made by an incompatible build, or is another map
    (name mismatch), or is typed by a Rust ``ShmMap``."""


class NestedWriteError(Error, RuntimeError):
    """A write was started on a map while this thread holds its batch open
    (it would deadlock)."""


__all__ = [
    "Error",
    "NotFoundError",
    "MapNotFoundError",
    "MapExistsError",
    "PermissionDeniedError",
    "ReadOnlyError",
    "InvalidArgumentError",
    "ReservedKeyError",
    "TooLargeError",
    "FullError",
    "LockTimeoutError",
    "CorruptedError",
    "IncompatibleError",
    "NestedWriteError",
]

for _name in __all__:
    globals()[_name].__module__ = "shmkv"
del _name
