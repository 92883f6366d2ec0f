"""Pooled request throughput with kapatch installed vs not: requests and redis-py.

    .venv/bin/python -m benchmarks.pooled

A pooled client connects once and then reuses its connection: kapatch's cost is at
connect(), so on the request path it must not show. Both variants run in this process,
rounds interleaved; each round opens a fresh client (so its connection is configured by
kapatch, or not) and times PER_ROUND requests on it. The HTTP server is a child process
(an in-process server thread would share the GIL); redis is a private ``redis-server``
on a free loopback port, stopped by pid at the end.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from collections.abc import Callable

import kapatch

from ._harness import report

ROUNDS, PER_ROUND = 21, 300

# HTTP/1.1 keep-alive from one select loop: each request (read to its blank line) gets one
# fixed response in one write (no Nagle/delayed-ACK stall, no per-request parsing: the
# server's share of each round trip is small and steady). Stops when stdin closes or
# after 300 s: bounded either way.
_HTTP_SERVER = """
import select, socket, sys, time
RESPONSE = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nContent-Type: text/plain\\r\\n\\r\\nok"
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
watched, pending = [server, sys.stdin], {}
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    for ready in select.select(watched, [], [], 1)[0]:
        if ready is sys.stdin:
            sys.exit(0)
        if ready is server:
            conn = server.accept()[0]
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            watched.append(conn)
            pending[conn] = b""
            continue
        data = ready.recv(65536)
        if not data:
            watched.remove(ready)
            pending.pop(ready, None)
            ready.close()
            continue
        buffered = pending[ready] + data
        while b"\\r\\n\\r\\n" in buffered:
            buffered = buffered.split(b"\\r\\n\\r\\n", 1)[1]
            ready.sendall(RESPONSE)
        pending[ready] = buffered
"""


def _interleave(make: Callable[[], tuple[Callable[[], None], Callable[[], None]]]) -> dict[str, list[float]]:
    """Seconds per request for each variant; *make* opens a client: (one request, close).

    The variants swap places every round (ABBA) and each starts from a collected heap, so
    neither always runs second, after the other's garbage.
    """
    samples: dict[str, list[float]] = {"without kapatch (baseline)": [], "kapatch installed": []}
    names = list(samples)
    for round_ in range(ROUNDS):
        for name in names if round_ % 2 == 0 else names[::-1]:
            if name == "kapatch installed":
                kapatch.install(profile="balanced")
            request, close = make()
            request()  # connects (configured by kapatch, or not)
            gc.collect()
            start = time.perf_counter()
            for _ in range(PER_ROUND):
                request()
            samples[name].append((time.perf_counter() - start) / PER_ROUND)
            close()
            kapatch.uninstall()
    return samples


def bench_requests() -> dict[str, float]:
    import requests

    server = subprocess.Popen(
        [sys.executable, "-c", _HTTP_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert server.stdout is not None and server.stdin is not None
    try:
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/"

        def make() -> tuple[Callable[[], None], Callable[[], None]]:
            session = requests.Session()
            return (lambda: session.get(url, timeout=10).raise_for_status()), session.close

        samples = _interleave(make)
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    return report(f"requests.Session().get on loopback, {ROUNDS} rounds x {PER_ROUND}, interleaved:",
                  samples, "without kapatch (baseline)")  # fmt: skip


def bench_redis() -> dict[str, float]:
    import redis

    sys.path.insert(0, ".")
    from tests.servers import start_redis

    server = start_redis()
    try:

        def make() -> tuple[Callable[[], None], Callable[[], None]]:
            client = redis.Redis(host=server.host, port=server.port, single_connection_client=True)
            client.set("kapatch-bench", b"x" * 64)
            return (lambda: client.get("kapatch-bench") and None), client.close

        samples = _interleave(make)
    finally:
        server.stop()
    return report(f"redis GET on a private redis-server, {ROUNDS} rounds x {PER_ROUND}, interleaved:",
                  samples, "without kapatch (baseline)")  # fmt: skip


def main() -> None:
    bench_requests()
    bench_redis()


if __name__ == "__main__":
    main()
