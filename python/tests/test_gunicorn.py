"""The gunicorn example: 4 workers serve routes from the map; the publisher changes them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT

EXAMPLE = ROOT / "examples" / "python" / "gunicorn"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(port: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_gunicorn_workers_serve_the_published_routes(maps):
    """publish → 4 gunicorn workers (--preload, fork) answer from the map → publish again → new answer."""
    name = maps.name("gunicorn")
    env = dict(os.environ, SHMKV_ROUTES=name)
    pub = [sys.executable, str(EXAMPLE / "publisher.py")]
    subprocess.run(pub + ["/api=10.0.0.7:8080", "/static=10.0.0.9:80"], env=env, check=True)
    port = free_port()
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = subprocess.Popen(
        [str(gunicorn), "--preload", "-w", "4", "-b", f"127.0.0.1:{port}",
         "--chdir", str(EXAMPLE), "app:app"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = fetch(port, "/api")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
        assert status == 200 and body["backend"] == "10.0.0.7:8080"
        workers = set()
        for _ in range(200):
            s, b = fetch(port, "/static")
            assert s == 200 and b["backend"] == "10.0.0.9:80"
            workers.add(b["worker"])
        assert fetch(port, "/nope")[0] == 404
        subprocess.run(pub + ["/api=10.0.0.8:9090"], env=env, check=True)
        # Every worker sees the new table on its next request.
        for _ in range(100):
            s, b = fetch(port, "/api")
            assert s == 200 and b["backend"] == "10.0.0.8:9090"
            workers.add(b["worker"])
            assert fetch(port, "/static")[0] == 404
        assert len(workers) >= 2, f"requests were answered by {workers} only"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
