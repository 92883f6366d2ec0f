"""The shared hooks on ``socket.socket``: what a host program does around them never breaks it.

Each case was a row of issue 12 that failed before the hooks were rebuilt: a fork while
another thread installs or uninstalls, an application that wraps ``connect`` after
kapatch, calls that are about to fail anyway, and wrong arguments.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

import kapatch
from kapatch._socket_hooks import HOOKED_METHODS

STDLIB = {name: vars(socket.socket).get(name) for names in HOOKED_METHODS.values() for name in names}


@pytest.fixture
def listener() -> Iterator[tuple[str, int]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()


def kapatch_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kapatch" and r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------- fork


FORK_STRESS = textwrap.dedent(
    """
    import os, socket, sys, threading, time
    import kapatch
    from kapatch._socket_hooks import HOOKED_METHODS

    # Once before the thread starts, as a program does at start: a fork while another thread
    # is in the middle of *importing* a module (kapatch's included) leaves that module's
    # import lock held in the child, which CPython cannot repair. What is under test is
    # kapatch's own state: its locks and the class's hooks.
    kapatch.install(environ={}, inbound=True)
    kapatch.uninstall()
    stop = threading.Event()

    def toggle():
        while not stop.is_set():
            kapatch.install(environ={}, inbound=True)
            kapatch.uninstall()

    thread = threading.Thread(target=toggle, daemon=True)
    thread.start()
    results = []
    for _ in range(int(sys.argv[1])):
        pid = os.fork()
        if pid == 0:
            # The child: the hooks are all on or all off, never half, and install/uninstall work.
            hooked = [getattr(vars(socket.socket).get(m), "__kapatch_hook__", None) is not None
                      for names in HOOKED_METHODS.values() for m in names]
            if len(set(hooked[:2])) != 1:  # connect and connect_ex differ: half-made
                os._exit(3)
            kapatch.install(environ={})
            kapatch.uninstall()
            if any(m in vars(socket.socket) for names in HOOKED_METHODS.values() for m in names):
                os._exit(4)
            os._exit(0)
        deadline = time.monotonic() + 10
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                results.append(os.waitstatus_to_exitcode(status))
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                results.append("deadlock")
                break
            time.sleep(0.001)
    stop.set()
    thread.join(10)
    print(sorted(set(map(str, results))), len(results))
    """
)


def test_forks_while_another_thread_installs_and_uninstalls_never_deadlock_nor_half_hook():
    forks = 60
    run = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", FORK_STRESS, str(forks)],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"['0'] {forks}", run.stdout + run.stderr


# --------------------------------------------------------------------------- somebody else's wrapper


def test_uninstall_leaves_a_wrapper_the_application_installed_after_kapatch(listener, caplog):
    kapatch.install(environ={}, profile="fast-failover")
    hooked = socket.socket.connect
    calls = []

    def application_wrapper(sock, address):
        calls.append(address)
        return hooked(sock, address)

    socket.socket.connect = application_wrapper  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING, logger="kapatch"):
            kapatch.uninstall()
        assert socket.socket.connect is application_wrapper
        assert any("was replaced after kapatch hooked it" in m for m in kapatch_warnings(caplog))
        with socket.socket() as sock:
            sock.connect(listener)
            # kapatch's hook under the application's wrapper is inert now.
            assert not kapatch.inspect(sock).enabled
        assert calls == [listener]
        assert socket.socket.connect_ex is STDLIB["connect_ex"] or "connect_ex" not in vars(socket.socket)
    finally:
        del socket.socket.connect  # type: ignore[attr-defined]
    assert "connect" not in vars(socket.socket)


def test_uninstall_restores_exactly_what_was_there():
    before = dict(vars(socket.socket))
    kapatch.install(environ={}, inbound=True)
    assert {"connect", "connect_ex", "listen"} <= set(vars(socket.socket))
    kapatch.uninstall()
    assert dict(vars(socket.socket)) == before


# --------------------------------------------------------------------------- calls about to fail anyway


def test_connect_on_a_closed_socket_is_silent_and_fails_as_the_stdlib_does(listener, caplog):
    kapatch.install(environ={})
    sock = socket.socket()
    sock.close()
    with (
        caplog.at_level(logging.DEBUG, logger="kapatch"),
        pytest.raises(OSError, match="Bad file descriptor") as raised,
    ):
        sock.connect(listener)
    assert raised.value.errno == errno.EBADF
    assert kapatch_warnings(caplog) == []
    assert kapatch.status().adapter("socket").counts["failed"] == 0


def test_a_udp_socket_seen_as_stream_is_silent(caplog):
    kapatch.install(environ={})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        with socket.fromfd(udp.fileno(), socket.AF_INET, socket.SOCK_STREAM) as odd:
            with caplog.at_level(logging.DEBUG, logger="kapatch"):
                odd.connect(udp.getsockname())  # UDP connect succeeds: only a default peer
            assert kapatch_warnings(caplog) == []


def test_a_non_socket_is_the_stdlibs_to_reject(caplog):
    kapatch.install(environ={})
    with caplog.at_level(logging.DEBUG, logger="kapatch"), pytest.raises(TypeError) as raised:
        socket.socket.connect(5, ("127.0.0.1", 1))  # type: ignore[arg-type]
    assert "socket" in str(raised.value)
    assert kapatch_warnings(caplog) == []


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.connect(),
        lambda s: s.connect(("127.0.0.1", 1), 2),
        lambda s: s.connect(address=("127.0.0.1", 1)),
        lambda s: s.connect_ex(),
        lambda s: s.listen(1, 2),
    ],
    ids=["no-address", "two-arguments", "keyword", "connect_ex-no-address", "listen-two-arguments"],
)
def test_wrong_arguments_raise_the_stdlibs_own_type_error(call):
    with socket.socket() as sock, pytest.raises(TypeError) as plain:
        call(sock)
    kapatch.install(environ={}, inbound=True)
    with socket.socket() as sock, pytest.raises(TypeError) as hooked:
        call(sock)
    assert str(hooked.value) == str(plain.value)
