"""Cost per outbound connection: nothing vs hand-written setsockopt vs kapatch.

    .venv/bin/python -m benchmarks.connect

kapatch runs once per connection, at connect(). This measures that once on real
loopback connections (socket() + connect() + close(), the same path for every
variant) in one process, rounds interleaved, and prints ratios against the baseline.
"""

from __future__ import annotations

import socket
import statistics
import threading
from collections.abc import Callable

import kapatch

from ._harness import report

ROUNDS, PER_ROUND = 21, 300


def _accept_forever(server: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        conn.close()


def main() -> None:
    server = socket.create_server(("127.0.0.1", 0), backlog=1024)
    address = server.getsockname()
    threading.Thread(target=_accept_forever, args=(server,), daemon=True).start()

    def plain() -> None:
        sock = socket.socket()
        sock.connect(address)
        sock.close()

    def by_hand() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 110_000)
        sock.connect(address)
        sock.close()

    variants: dict[str, tuple[Callable[[], None], bool]] = {
        "no keepalive (baseline)": (plain, False),
        "hand-written setsockopt": (by_hand, False),
        "kapatch installed": (plain, True),  # the application's code is the baseline's
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    import time

    for _ in range(ROUNDS):
        for name, (run, installed) in variants.items():
            if installed:
                kapatch.install(profile="balanced")
            start = time.perf_counter()
            for _ in range(PER_ROUND):
                run()
            samples[name].append((time.perf_counter() - start) / PER_ROUND)
            kapatch.uninstall()
    server.close()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    report(
        f"socket() + connect() + close() on loopback, median of {ROUNDS} rounds x {PER_ROUND}:",
        medians,
        "no keepalive (baseline)",
    )
    extra = medians["kapatch installed"] - medians["hand-written setsockopt"]
    print(f"  kapatch vs the same options written by hand: {extra * 1e6:+.2f} us per connection")


if __name__ == "__main__":
    main()
