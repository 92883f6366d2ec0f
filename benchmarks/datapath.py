"""The data path is untouched: request/response on a kapatch-configured socket vs a plain one.

    .venv/bin/python -m benchmarks.datapath

kapatch acts once, at connect(); send/recv are the stdlib's own methods on the stdlib's
own class. This shows it: 64-byte ping-pong round trips over loopback on two connections
opened in one process, one while kapatch was installed, rounds interleaved.
"""

from __future__ import annotations

import socket
import threading
import time

import kapatch

from ._harness import report

ROUNDS, PER_ROUND, MESSAGE = 21, 2000, b"x" * 64
BASELINE = "plain socket (baseline)"


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _serve(server: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def _ping_pong(sock: socket.socket) -> None:
    for _ in range(PER_ROUND):
        sock.sendall(MESSAGE)
        received = 0
        while received < len(MESSAGE):
            received += len(sock.recv(65536))


def main() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_serve, args=(server,), daemon=True).start()
    plain = socket.create_connection(server.getsockname())
    kapatch.install(profile="balanced")
    configured = socket.create_connection(server.getsockname())
    kapatch.uninstall()
    assert kapatch.inspect(configured).enabled and not kapatch.inspect(plain).enabled
    assert type(configured) is socket.socket and type(configured).send is socket.socket.send
    samples: dict[str, list[float]] = {BASELINE: [], "kapatch-configured socket": []}
    for _ in range(ROUNDS):
        for name, sock in ((BASELINE, plain), ("kapatch-configured socket", configured)):
            start = time.perf_counter()
            _ping_pong(sock)
            samples[name].append((time.perf_counter() - start) / PER_ROUND)
    plain.close()
    configured.close()
    server.close()
    report(f"64-byte round trip on loopback, {ROUNDS} rounds x {PER_ROUND}, interleaved:", samples, BASELINE)


if __name__ == "__main__":
    main()
