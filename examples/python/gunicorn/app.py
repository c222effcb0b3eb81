"""A WSGI app whose routing table lives in a shmkv map.

Every gunicorn worker reads the table straight from shared memory (no
copy-on-write duplication, no Redis round trip); `publisher.py` changes it
and the next request of every worker sees the change.

    gunicorn --preload -w 4 -b 127.0.0.1:8000 app:app

The map's name comes from SHMKV_ROUTES (default "routes"). With
`--preload` the map is opened once in the master and the workers inherit it
through fork(); without it each worker opens it at import.
"""

from __future__ import annotations

import json
import os

import shmkv

ROUTES = shmkv.Map(
    os.environ.get("SHMKV_ROUTES", "routes"),
    codec="json",
    capacity=10_000,
    arena="4mb",
)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    route = ROUTES.get(path)
    if route is None:
        status, body = "404 Not Found", {"path": path, "error": "no route"}
    else:
        status, body = "200 OK", {"path": path, "backend": route}
    body["version"] = ROUTES.version
    body["worker"] = os.getpid()
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))])
    return [data]
