"""The README's audit of a small real service: HTTP (requests/urllib3) + redis + PostgreSQL clients.

    python -m benchmarks.audit_service

Starts a private redis, PostgreSQL and HTTP server on loopback (tests/servers.py), then runs
the same small service twice in a fresh interpreter: without kapatch, and with
``KAPATCH_ENABLED=1`` (the .pth, no code change). The service makes its connections,
keeps them open, and prints ``kapatch.audit().render()``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import start_http_server, start_postgres, start_redis  # type: ignore[import-not-found]  # tests/, put on sys.path above

SERVICE = """
import sys, psycopg, redis, urllib3
import kapatch
cache = redis.Redis(host="127.0.0.1", port=int(sys.argv[1])); cache.ping()
web = urllib3.PoolManager(); web.request("GET", sys.argv[2] + "/ok")
db = psycopg.connect(sys.argv[3]); db.execute("select 1")
print(kapatch.audit().render())
"""


def main() -> None:
    with start_redis() as cache, start_postgres() as db, start_http_server() as web:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")}
        for label, extra in (("without kapatch", {}), ("KAPATCH_ENABLED=1", {"KAPATCH_ENABLED": "1"})):
            print(f"$ {label + ' ' if extra else ''}python service.py")
            sys.stdout.flush()
            subprocess.run(
                [sys.executable, "-c", SERVICE, str(cache.port), web.url, db.dsn],
                env={**env, **extra},
                check=True,
            )
            print()


if __name__ == "__main__":
    main()
