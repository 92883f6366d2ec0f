"""Cost per outbound connection: nothing vs hand-written setsockopt vs kapatch.

    .venv/bin/python -m benchmarks.connect

kapatch runs once per connection, at connect(). This measures that once on real
loopback connections (socket() + connect() + close(), the same path for every
variant) in one process, rounds interleaved, and prints ratios against the baseline.
Each round installs kapatch afresh, and kapatch decides at the first connection after an
install (once per configuration, ~65 us here): every variant's round starts with one connection
outside the timing, and that first connection is reported on its own.
The server accepts in a child process: an accept thread in this process would share
its GIL and turn the measurement into one of thread hand-offs.
"""

from __future__ import annotations

import functools
import operator
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import kapatch

from . import floor
from ._harness import paired_ratio, report, rotated

# Paired ratios over many short rounds (see _harness.paired_ratio). 6 variants x 101 x 200 =
# 121,200 connections in ~5 s, each leaving a TIME_WAIT entry for 60 s: under this machine's
# table (net.ipv4.tcp_max_tw_buckets = 131,072), past which the kernel drops the entries and
# closes in later rounds would cost less than in earlier ones.
ROUNDS, PER_ROUND = 101, 200


# Accepts and closes until stdin closes (the benchmark ends) or 120 s pass: bounded either way.
# One listening port per round: every connection closed leaves a TIME_WAIT entry for 60 s,
# and tens of thousands towards one port exhaust the local ports for that destination, after
# which each connect() searches for a reusable one: its cost then grows through the run and
# swamps what is measured. A fresh destination per round keeps every round on fresh ports.
_SERVER = """
import select, socket, sys, time
servers = [socket.create_server(("127.0.0.1", 0), backlog=1024) for _ in range(int(sys.argv[1]))]
print(*(server.getsockname()[1] for server in servers), flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    ready, _, _ = select.select([*servers, sys.stdin], [], [], 1)
    if sys.stdin in ready:
        break
    for server in ready:
        server.accept()[0].close()
"""


def start_server(ports: int) -> tuple[subprocess.Popen[bytes], list[tuple[str, int]]]:
    """The accepting child and its addresses (one per round)."""
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(ports)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert server.stdout is not None
    return server, [("127.0.0.1", int(port)) for port in server.stdout.readline().split()]


FLOOR = "minimal Python hook (floor)"

PAIRS = {
    "override / by hand": ("kapatch, override mode", "hand-written setsockopt"),
    "respect / by hand": ("kapatch, respect mode", "hand-written setsockopt"),
    "respect / read + write by hand": ("kapatch, respect mode", "hand-written read + write"),
    "read + write / by hand": ("hand-written read + write", "hand-written setsockopt"),
    "floor / by hand": (FLOOR, "hand-written setsockopt"),
    "override / floor": ("kapatch, override mode", FLOOR),
}
"""The paired ratios in the table, each as (variant, baseline): per round, median over rounds."""


def measure() -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per connection (fastest round) of each variant and of the hook's own work; and
    the paired ratios (:data:`PAIRS`)."""
    server, addresses = start_server(ROUNDS)
    assert server.stdin is not None
    address = addresses[0]

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

    def by_hand_respecting() -> None:
        sock = socket.socket()
        _write_unchosen(sock, _read_chosen(sock))
        sock.connect(address)
        sock.close()

    # The application's code is the baseline's where kapatch is installed. Override mode
    # writes what the hand-written variant writes; respect mode (the default) reads the
    # socket first (five getsockopt calls) to keep what the application chose, and its
    # hand-written twin does the same reads and writes.
    # The floor (benchmarks.floor) is a hand-written hook around connect() that checks for
    # TCP and writes, and does nothing else: the least a hook without code changes can cost.
    variants: dict[str, tuple[Callable[[], None], str | None]] = {
        "no keepalive (baseline)": (plain, None),
        "hand-written setsockopt": (by_hand, None),
        "hand-written read + write": (by_hand_respecting, None),
        FLOOR: (plain, "floor"),
        "kapatch, override mode": (plain, "override"),
        "kapatch, respect mode": (plain, "respect"),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    firsts: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(ROUNDS):
        address = addresses[round_index]  # the variants' closures read it: a fresh port per round
        for name, (run, mode) in rotated(variants.items(), round_index):
            with _installed(mode):
                start = time.perf_counter()
                run()  # the first connection: kapatch decides (untimed for every variant alike)
                started = time.perf_counter()
                for _ in range(PER_ROUND):
                    run()
                samples[name].append((time.perf_counter() - started) / PER_ROUND)
                firsts[name].append(started - start)
    server.stdin.close()
    server.wait(timeout=10)
    fastest = report(
        f"socket() + connect() + close() on loopback, {ROUNDS} rounds x {PER_ROUND}, interleaved:",
        samples,
        "no keepalive (baseline)",
    )
    for mode in ("override", "respect"):
        extra = fastest[f"kapatch, {mode} mode"] - fastest["hand-written setsockopt"]
        print(f"  kapatch ({mode}) vs the same options written by hand: {extra * 1e6:+.2f} us per connection")
    first = {name: statistics.median(times) for name, times in firsts.items()}
    for mode in ("override", "respect"):
        extra = first[f"kapatch, {mode} mode"] - first["hand-written setsockopt"]
        print(f"  the first connection after an install, kapatch ({mode}) vs by hand: {extra * 1e6:+.1f} us "
              "(kapatch decides: once per configuration; medians)")  # fmt: skip
    extra = fastest[FLOOR] - fastest["hand-written setsockopt"]
    print(f"  the floor (a hook that only checks for TCP and writes) vs by hand: {extra * 1e6:+.2f} us")
    extra = fastest["kapatch, override mode"] - fastest[FLOOR]
    print(f"  kapatch (override) vs the floor: {extra * 1e6:+.2f} us (decide, note for audit, count)")
    extra = fastest["kapatch, respect mode"] - fastest["hand-written read + write"]
    print(f"  kapatch (respect) vs the same reads and writes by hand: {extra * 1e6:+.2f} us per connection")
    paired = {pair: paired_ratio(samples, name, baseline) for pair, (name, baseline) in PAIRS.items()}
    print(f"  paired ratios (median over {ROUNDS} rounds of each round's ratio):")
    for pair, ratio in paired.items():
        print(f"    {pair:<32} {ratio:5.3f}")
    return {**fastest, **_decision_cost(address)}, paired


@contextmanager
def _installed(mode: str | None) -> Iterator[None]:
    """Nothing, the floor's hook, or kapatch in *mode*, for the time of one variant's round."""
    if mode is None:
        yield
    elif mode == "floor":
        with floor.installed():
            yield
    else:
        kapatch.install(profile="balanced", mode=mode)
        try:
            yield
        finally:
            kapatch.uninstall()


_KERNEL_DEFAULTS: list[tuple[int, int, int]] = []


def _read_chosen(sock: socket.socket) -> tuple[bool, bool, bool, bool, bool]:
    """What respect mode reads, written by hand: which of the five fields someone already set."""
    if not _KERNEL_DEFAULTS:  # a fresh socket's idle/interval/count, read once (as kapatch does)
        with socket.socket() as fresh:
            _KERNEL_DEFAULTS.append(tuple(fresh.getsockopt(socket.IPPROTO_TCP, o) for o in _TIMINGS))  # type: ignore[arg-type]
    idle, interval, count = _KERNEL_DEFAULTS[0]
    return (
        bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) != idle,
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) != interval,
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) != count,
        bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)),
    )


_TIMINGS = (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)


def _write_unchosen(sock: socket.socket, chosen: tuple[bool, bool, bool, bool, bool]) -> None:
    """The balanced profile's options, on the fields nobody chose."""
    keepalive, idle, interval, count, user_timeout = chosen
    if not keepalive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if not idle:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
    if not interval:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
    if not count:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
    if not user_timeout:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 110_000)


def main() -> None:
    measure()


FLOOR_WORK = "floor: TCP check + 5 writes"


def _decision_cost(address: tuple[str, int]) -> dict[str, float]:
    """kapatch's own work per connection, without the connect: no I/O, so no scheduler noise."""
    from kapatch import _first_use, _socket_hooks, runtime

    sock = socket.socket()

    def by_hand() -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 110_000)

    kapatch.install(profile="balanced", mode="override")  # override: the same socket each call
    # kapatch's connect hook as socket.socket.connect holds it, around a C call that does
    # nothing (operator.is_) where the real one connects: kapatch's side pays that call.
    made = _socket_hooks._Hook("connect", _first_use.MISSING, operator.is_, runtime.context())
    hook = made.function
    hook(sock, address)  # the first call decides (once per configuration): not timed
    # Each variant is one call from the loop into a function, as the hook is one call from
    # the application's code: a lambda would add a frame to the hook's side only.
    variants: dict[str, Callable[[], None]] = {
        "5 setsockopt by hand": by_hand,
        FLOOR_WORK: functools.partial(floor.floor_hook, sock, address),
        "kapatch's connect hook": functools.partial(hook, sock, address),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(ROUNDS):
        for name, run in rotated(variants.items(), round_index):
            start = time.perf_counter()
            for _ in range(PER_ROUND * 10):
                run()
            samples[name].append((time.perf_counter() - start) / (PER_ROUND * 10))
    kapatch.uninstall()
    sock.close()
    fastest = report("the same five options on one socket, no connect (kapatch decides, counts, applies):",
                     samples, "5 setsockopt by hand")  # fmt: skip
    extra = fastest["kapatch's connect hook"] - fastest["5 setsockopt by hand"]
    print(f"  kapatch's own work per connection: {extra * 1e6:+.2f} us")
    extra = fastest[FLOOR_WORK] - fastest["5 setsockopt by hand"]
    print(f"  the floor's own work (TCP check, a loop over the writes): {extra * 1e6:+.2f} us\n")
    return fastest


if __name__ == "__main__":
    main()
