"""Memory kapatch keeps per connection: 100,000 connections through the hook must retain < 100 KB.

    .venv/bin/python -m benchmarks.memory

Every connection is a fresh ``socket.socket()`` through the stdlib ``connect_ex`` (kapatch's
hook reads the socket, decides, notes it in the ledger, writes and counts) to a loopback
port nobody listens on, then closed: refused at once, so there is no server to run and no
TIME_WAIT to exhaust the ephemeral ports. After a warm-up (the decision made, the ledger's
slot for the descriptor taken), tracemalloc's traced total and the process's RSS are read
before and after; the ledger's and the counters' sizes are printed too.
"""

from __future__ import annotations

import socket
import tracemalloc

import kapatch
from kapatch import _ledger

CONNECTIONS, WARM_UP = 100_000, 1_000


def _closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()  # bound, never listening: connecting is refused at once
    return port


def _rss_kb() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * 4  # resident pages of 4 KiB


def _connect(address: tuple[str, int], count: int) -> None:
    for _ in range(count):
        sock = socket.socket()
        sock.connect_ex(address)
        sock.close()


def measure(connections: int = CONNECTIONS) -> dict[str, float]:
    address = ("127.0.0.1", _closed_port())
    kapatch.install(profile="balanced")
    try:
        _connect(address, WARM_UP)
        tracemalloc.start()
        _connect(address, WARM_UP)
        traced_before = tracemalloc.get_traced_memory()[0]
        rss_before = _rss_kb()
        _connect(address, connections)
        traced_after = tracemalloc.get_traced_memory()[0]
        rss_after = _rss_kb()
        tracemalloc.stop()
        counts = kapatch.status().adapter("socket").counts
    finally:
        kapatch.uninstall()
    return {
        "connections": connections,
        "traced_kb": (traced_after - traced_before) / 1024,
        "rss_kb": rss_after - rss_before,
        "ledger_entries": len(_ledger._ENTRIES),
        "configured": counts["configured"],
    }


def main() -> None:
    found = measure()
    print(f"{found['connections']:,} connections through the hook (respect mode, balanced profile):")
    print(f"  retained, tracemalloc: {found['traced_kb']:+.1f} KB   RSS: {found['rss_kb']:+.0f} KB")
    print(f"  ledger entries: {found['ledger_entries']}   counted configured: {found['configured']:,}")


if __name__ == "__main__":
    main()
