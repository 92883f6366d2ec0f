"""How long ``kapatch audit --pid`` takes for a child process holding N loopback connections.

    python -m benchmarks.audit [--connections 2000] [--rounds 5]

The child (a plain interpreter, kapatch off) opens N connections to a listener of its own
(so it holds 2N + 1 TCP sockets: each client and its accepted end), then waits. The audit
runs in this process through pidfd_getfd (run as root) and is timed whole: /proc tables,
one duplicate + getsockopt per socket, the verdicts. Prints the fastest and median round.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import textwrap
import time

CHILD = textwrap.dedent(
    """
    import socket, sys, time
    n = int(sys.argv[1])
    server = socket.create_server(("127.0.0.1", 0), backlog=n)
    port = server.getsockname()[1]
    held = []
    for _ in range(n):
        held.append(socket.create_connection(("127.0.0.1", port)))
        held.append(server.accept()[0])
    print("ready", flush=True)
    time.sleep(600)
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    limit = 2 * args.connections + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(args.connections)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        import kapatch

        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            report = kapatch.audit(child.pid)
            times.append(time.perf_counter() - started)
        assert not report.partial, report.notes
        print(
            f"audit --pid of a process holding {args.connections} loopback connections "
            f"({len(report.entries)} TCP sockets): fastest {min(times) * 1000:.0f} ms, "
            f"median {statistics.median(times) * 1000:.0f} ms over {args.rounds} rounds"
        )
    finally:
        child.kill()
        child.wait()


if __name__ == "__main__":
    main()
