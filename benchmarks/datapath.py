"""The data path is untouched: request/response on a kapatch-configured socket vs a plain one.

    .venv/bin/python -m benchmarks.datapath

kapatch acts once, at connect(); send/recv are the stdlib's own methods on the stdlib's
own class. This shows it: 64-byte ping-pong round trips over loopback on two connections
opened in one process, one while kapatch was installed, rounds interleaved.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import kapatch

from ._harness import report, rotated

ROUNDS, PER_ROUND, MESSAGE = 21, 2000, b"x" * 64
BASELINE = "plain socket (baseline)"

# Echoes on every accepted connection from one select loop, in a child process: an echo
# thread in this process would share its GIL, and the round trips would measure thread
# hand-offs (seen: 5 us or 70 us per round trip, at random, for either socket). Stops when
# stdin closes (the benchmark ends) or after 120 s: bounded either way.
_ECHO_SERVER = """
import select, socket, sys, time
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
watched = [server, sys.stdin]
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    for ready in select.select(watched, [], [], 1)[0]:
        if ready is sys.stdin:
            sys.exit(0)
        if ready is server:
            watched.append(server.accept()[0])
            continue
        data = ready.recv(65536)
        if data:
            ready.sendall(data)
        else:
            watched.remove(ready)
            ready.close()
"""


def _ping_pong(sock: socket.socket) -> None:
    for _ in range(PER_ROUND):
        sock.sendall(MESSAGE)
        received = 0
        while received < len(MESSAGE):
            received += len(sock.recv(65536))


def main() -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", _ECHO_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert server.stdout is not None and server.stdin is not None
    address = ("127.0.0.1", int(server.stdout.readline()))
    plain = socket.create_connection(address)
    kapatch.install(profile="balanced")
    configured = socket.create_connection(address)
    kapatch.uninstall()
    assert kapatch.inspect(configured).enabled and not kapatch.inspect(plain).enabled
    assert type(configured) is socket.socket and type(configured).send is socket.socket.send
    samples: dict[str, list[float]] = {BASELINE: [], "kapatch-configured socket": []}
    for round_index in range(ROUNDS):
        for name, sock in rotated(
            ((BASELINE, plain), ("kapatch-configured socket", configured)), round_index
        ):
            start = time.perf_counter()
            _ping_pong(sock)
            samples[name].append((time.perf_counter() - start) / PER_ROUND)
    plain.close()
    configured.close()
    server.stdin.close()
    server.wait(timeout=10)
    report(f"64-byte round trip on loopback, {ROUNDS} rounds x {PER_ROUND}, interleaved:", samples, BASELINE)


if __name__ == "__main__":
    main()
