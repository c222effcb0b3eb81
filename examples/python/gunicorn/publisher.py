"""Publishes a routing table into the shmkv map the WSGI app reads.

    python publisher.py /api=10.0.0.7:8080 /static=10.0.0.9:80

Each argument is PATH=BACKEND. The whole table is replaced in one atomic
batch: workers see the old table or the new one, never a mix. `--remove
PATH` removes a route; `--destroy` removes the map from the kernel.
"""

from __future__ import annotations

import argparse
import os

import shmkv


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("routes", nargs="*", metavar="PATH=BACKEND")
    p.add_argument("--map", default=os.environ.get("SHMKV_ROUTES", "routes"))
    p.add_argument("--merge", action="store_true", help="keep routes not named here")
    p.add_argument("--remove", action="append", default=[], metavar="PATH")
    p.add_argument("--destroy", action="store_true")
    a = p.parse_args(argv)
    m = shmkv.Map(a.map, codec="json", capacity=10_000, arena="4mb")
    if a.destroy:
        m.destroy()
        return 0
    table = {}
    for r in a.routes:
        path, sep, backend = r.partition("=")
        if not sep or not path.startswith("/"):
            p.error(f"expected PATH=BACKEND with PATH starting with '/', got {r!r}")
        table[path] = backend
    with m.batch() as b:
        if not a.merge and a.routes:
            for k in list(b):
                if k not in table:
                    del b[k]
        for path, backend in table.items():
            b[path] = backend
        for path in a.remove:
            b.pop(path, None)
    print(f"map {a.map!r}: {len(m)} routes, version {m.version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
