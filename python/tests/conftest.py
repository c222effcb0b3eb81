"""Shared fixtures: unique map names whose SysV objects are removed after
each test (also when it fails), the `shmkv` command, helpers."""

from __future__ import annotations

import ctypes
import os
import subprocess
import uuid
from pathlib import Path

import pytest

import shmkv

ROOT = Path(__file__).resolve().parents[2]
PREFIX = f"pytest-{os.getpid()}-"


def unique_name(tag: str = "m") -> str:
    return f"{PREFIX}{tag}-{uuid.uuid4().hex[:10]}"


def destroy_quietly(name: str) -> None:
    try:
        shmkv.Map(name, create=False).destroy()
    except shmkv.MapNotFoundError:
        pass


class Maps:
    """Opens maps under unique names and destroys them at the end."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def name(self, tag: str = "m") -> str:
        n = unique_name(tag)
        self.names.append(n)
        return n

    def new(self, tag: str = "m", **kw) -> shmkv.Map:
        kw.setdefault("capacity", 1024)
        kw.setdefault("arena", "1mb")
        return shmkv.Map(self.name(tag), **kw)

    def cleanup(self) -> None:
        for n in self.names:
            destroy_quietly(n)


@pytest.fixture
def maps():
    m = Maps()
    try:
        yield m
    finally:
        m.cleanup()


@pytest.fixture
def m(maps):
    return maps.new()


@pytest.fixture
def mb(maps):
    return maps.new(codec="bytes")


@pytest.fixture(scope="session")
def cli() -> str:
    path = os.environ.get("SHMKV_CLI") or str(ROOT / "target" / "debug" / "shmkv")
    if not os.access(path, os.X_OK):
        subprocess.run(["cargo", "build", "-p", "shmkv-cli"], cwd=ROOT, check=True)
    assert os.access(path, os.X_OK), f"no shmkv command at {path} (SHMKV_CLI)"
    return path


@pytest.fixture(scope="session", autouse=True)
def no_leftover_maps():
    """After the whole run: no map of this run is left in the kernel."""
    yield
    left = [m["name"] for m in shmkv.list_maps(True) if m["name"].startswith(PREFIX)]
    assert not left, f"maps left behind: {left}"


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


def buffer_address(obj) -> int:
    """The address of the bytes behind a (read-only) buffer object."""
    b = _PyBuffer()
    get = ctypes.pythonapi.PyObject_GetBuffer
    get.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
    rel = ctypes.pythonapi.PyBuffer_Release
    rel.argtypes = [ctypes.POINTER(_PyBuffer)]
    assert get(obj, ctypes.byref(b), 0) == 0
    try:
        return b.buf
    finally:
        rel(ctypes.byref(b))


def mapping_of(addr: int) -> str:
    """The /proc/self/maps path of the mapping holding `addr` ('' if anonymous)."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return " ".join(parts[5:])
    return "<unmapped>"
