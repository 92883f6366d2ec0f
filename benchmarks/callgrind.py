"""Instructions per connection under valgrind's callgrind: stable where wall time is not.

    .venv/bin/python -m benchmarks.callgrind

Each variant runs in a child under ``valgrind --tool=callgrind`` twice, with two loop
counts; the difference of the two totals over the difference of the counts is the cost
of one iteration, with interpreter start and set-up cancelled out. Each iteration is a
real loopback connection: ``socket()``, ``connect()`` (through the hook, where one is
installed), ``accept()`` and both ``close()``; the kernel's work is not counted, the
user-space work is the same in every variant and cancels out in each difference.
Variants: nothing; the five ``setsockopt`` calls written by hand (and respect mode's reads
and writes, by hand); the floor (``benchmarks.floor``: a hand-written hook that checks for
TCP and writes) and the floor plus, one at a time, what kapatch keeps per connection; and
kapatch installed, in respect mode (it reads the socket first) and override mode.
``ACCOUNT`` names the differences.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

from .startup import FIRST_CONNECTION, SERVICE_IMPORTS

LOW, HIGH = 200, 1200

_CHILD = """
import socket, sys
variant, count = sys.argv[1], int(sys.argv[2])
server = socket.create_server(("127.0.0.1", 0), backlog=64)
address = server.getsockname()
prepare = None
if variant == "hand":
    def prepare(sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 110_000)
elif variant == "hand_respect":
    from benchmarks.connect import _read_chosen, _write_unchosen
    def prepare(sock):
        _write_unchosen(sock, _read_chosen(sock))
elif variant in ("floor_hook", "noted", "counted"):
    from benchmarks import floor
    installed = floor.installed(getattr(floor, variant))
    installed.__enter__()
elif variant != "bare":
    import kapatch
    kapatch.install(profile="balanced", mode=variant)
def once():
    sock = socket.socket()
    if prepare is not None:
        prepare(sock)
    sock.connect(address)
    server.accept()[0].close()
    sock.close()
for _ in range(3):  # warm: the first connection decides and caches
    once()
for _ in range(count):
    once()
"""

VARIANTS = {"bare": "socket(), connect(), accept(), close()", "hand": "5 setsockopt by hand",
            "hand_respect": "5 getsockopt + 5 setsockopt by hand", "floor_hook": "floor: TCP check + writes",
            "noted": "floor + the ledger's note", "counted": "floor + note + count",
            "respect": "kapatch hook, respect mode", "override": "kapatch hook, override mode"}  # fmt: skip
ACCOUNT = (
    ("the five setsockopt calls, by hand", "bare", "hand"),
    ("a hook's frame, the TCP check, the loop over the writes", "hand", "floor_hook"),
    ("the ledger's note (fd -> weak reference, note)", "floor_hook", "noted"),
    ("the count (next() on an itertools.count)", "noted", "counted"),
    ("kapatch's table lookup, claim check, error handling", "counted", "override"),
)
"""kapatch's override hook, instruction by instruction: (what, from variant, to variant)."""


# One string hash seed for every child: with a random one, dict and set layouts (and so the
# garbage collector's timing) differ between runs, and the same code's counts moved by up to
# ~1M instructions per start and ~200 per connection.
_SEED = {"PYTHONHASHSEED": "0"}


def _instructions(variant: str, count: int, work: str) -> int:
    out = os.path.join(work, f"cg.{variant}.{count}")
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", _CHILD,
         variant, str(count)],
        env={**os.environ, **_SEED}, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    with open(out, encoding="utf-8") as f:
        match = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.MULTILINE)
    assert match is not None, "no totals in callgrind output"
    return int(match.group(1))


def measure() -> dict[str, float]:
    """Instructions per iteration of each variant (the connection itself included)."""
    if shutil.which("valgrind") is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="kapatch-callgrind-") as work:
        return {
            name: (_instructions(name, HIGH, work) - _instructions(name, LOW, work)) / (HIGH - LOW)
            for name in VARIANTS
        }


STARTUP_PROGRAMS = {
    "pass": "pass",
    "service imports": SERVICE_IMPORTS,
    "service imports, one connection": FIRST_CONNECTION,
}
"""The programs ``benchmarks.startup`` times, counted here."""


def _start_instructions(program: str, enabled: bool, work: str) -> int:
    out = os.path.join(work, f"cg.start.{enabled}.{len(program)}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")} | _SEED
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # compiled once, as an installed wheel is
    if enabled:
        env["KAPATCH_ENABLED"] = "1"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
               "-X", f"pycache_prefix={work}/pyc", "-c", program]  # fmt: skip
    for _ in range(2):  # the first run writes the .pyc files; the second is the one counted
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    with open(out, encoding="utf-8") as f:
        match = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.MULTILINE)
    assert match is not None, "no totals in callgrind output"
    return int(match.group(1))


def measure_startup() -> dict[str, dict[str, int]]:
    """Instructions of one interpreter start (this venv, kapatch installed), disabled and enabled."""
    if shutil.which("valgrind") is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="kapatch-callgrind-") as work:
        return {
            name: {
                state: _start_instructions(program, state == "enabled", work)
                for state in ("disabled", "enabled")
            }
            for name, program in STARTUP_PROGRAMS.items()
        }


def main() -> None:
    found = measure()
    if not found:
        print("valgrind is not installed")
        return
    bare = found["bare"]
    print(f"instructions per iteration (callgrind, {HIGH} - {LOW} iterations):")
    for name, label in VARIANTS.items():
        print(f"  {label:36s} {found[name]:9.0f}   {found[name] - bare:8.0f} over the bare connection")
    print_account(found)
    print("instructions per interpreter start (callgrind), kapatch disabled -> enabled:")
    for name, counts in measure_startup().items():
        added = counts["enabled"] - counts["disabled"]
        before, after = counts["disabled"] / 1e6, counts["enabled"] / 1e6
        print(f"  {name:30s} {before:7.1f}M -> {after:7.1f}M  (+{added / 1e6:.1f}M)")


def print_account(found: dict[str, float]) -> None:
    """kapatch's override hook per connection, piece by piece (each a difference of two variants)."""
    print("kapatch's hook (override), instruction by instruction (callgrind, per connection):")
    for what, start, end in ACCOUNT:
        print(f"  {what:58s} {found[end] - found[start]:+8.0f}")
    print(f"  {'total, over the bare connection':58s} {found['override'] - found['bare']:8.0f}")


if __name__ == "__main__":
    main()
