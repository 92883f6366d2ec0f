"""The grpc adapter (sync and grpc.aio channels, servers with inbound) against a real gRPC server.

gRPC core owns its sockets in C: every assertion about options reads the client
socket found in /proc/self/fd (the one whose peer is the server's port), through a
duplicate so the channel's descriptor stays open. gRPC sets only TCP_USER_TIMEOUT
(= keepalive_timeout_ms) itself; that the HTTP/2 PINGs are really sent is shown by a
default grpcio server's answer to them (GOAWAY too_many_pings fails a quiet call).
grpc is imported here, before ``install()``; the imported-after case runs in a fresh
interpreter.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest

import kapatch
import kapatch.adapters.grpc as grpc_adapter_module
from kapatch import KeepaliveState, Rule
from kapatch.adapters.grpc import (
    SERVER_PING_FLOOR_S,
    GrpcAdapter,
    channel_options,
    chosen_in_channel_options,
    grpc_destination,
)
from kapatch.policy import Policy
from kapatch.rules import Destination

Install = Callable[..., kapatch.Status]
ORIGINALS = {
    (module.__name__, name): vars(module)[name]
    for module in (grpc, grpc.aio)
    for name in ("insecure_channel", "secure_channel", "server")
}
ENV = {"KAPATCH_IDLE": "11s", "KAPATCH_INTERVAL": "3s", "KAPATCH_COUNT": "4"}
FLOORED_MS = SERVER_PING_FLOOR_S * 1000
FAST = {"KAPATCH_IDLE": "1s", "KAPATCH_INTERVAL": "1s", "KAPATCH_COUNT": "3"}
PING_EVERY_SECOND = [("grpc.keepalive_time_ms", 1000)]


def identity(data: bytes) -> bytes:
    return data


def _wait(request: bytes, context: Any) -> bytes:
    time.sleep(float(request or b"0"))
    return b"done:" + request


def start_server(options: list[tuple[str, Any]] | None = None) -> tuple[grpc.Server, int]:
    """A grpcio server on a free loopback port; method /t.T/Wait sleeps *request* seconds."""
    server = grpc.server(futures.ThreadPoolExecutor(4), options=options)
    handler = grpc.unary_unary_rpc_method_handler(_wait, identity, identity)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", {"Wait": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(scope="module")
def grpc_port() -> Iterator[int]:
    """A default grpcio server (made before any install: no kapatch options on it)."""
    server, port = start_server()
    yield port
    server.stop(0)


def call(channel: grpc.Channel, seconds: float = 0) -> bytes:
    stub = channel.unary_unary("/t.T/Wait", request_serializer=identity, response_deserializer=identity)
    result: bytes = stub(str(seconds).encode(), timeout=30)
    return result


def client_sockets(port: int) -> list[KeepaliveState]:
    """The keepalive options of this process's TCP sockets connected to *port*, read from the kernel.

    Matched on the port alone: gRPC core connects from AF_INET6 sockets to v4-mapped
    addresses (``::ffff:127.0.0.1``), which ``servers.sockets_connected_to`` would miss.
    """
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            duplicate = os.dup(int(name))
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=duplicate)
        except OSError:
            os.close(duplicate)
            continue
        try:
            tcp = sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6)
            if tcp and sock.getpeername()[1] == port:
                found.append(kapatch.inspect(sock))
        except OSError:
            pass  # not connected
        finally:
            sock.close()
    return found


def no_client_sockets(port: int, within: float = 5.0) -> None:
    """Wait until no socket of this process is connected to *port*.

    gRPC core closes a closed channel's sockets on its own threads, a moment later;
    reading sockets before that would count the last channel's too.
    """
    deadline = time.monotonic() + within
    while client_sockets(port):
        assert time.monotonic() < deadline, f"sockets to port {port} still open after {within} s"
        time.sleep(0.01)


def channel_state(port: int, options: Any = None, target: str | None = None) -> KeepaliveState:
    """Open a channel, make one call, read its socket's options; closes the channel."""
    no_client_sockets(port)
    with grpc.insecure_channel(target or f"127.0.0.1:{port}", options=options) as channel:
        assert call(channel) == b"done:0"
        (state,) = client_sockets(port)
    return state


KERNEL = KeepaliveState(False, 7200, 75, 9, 0)  # a socket nobody configured (this kernel's defaults)


def ut(ms: int) -> KeepaliveState:
    """What gRPC core makes of keepalive_timeout_ms: TCP_USER_TIMEOUT, nothing else."""
    return KeepaliveState(False, 7200, 75, 9, ms)


def counts() -> dict[str, int]:
    return dict(kapatch.status().adapter("grpc").counts)


# --- targets and options, without a server -----------------------------------------


@pytest.mark.parametrize(
    ("target", "wanted"),
    [
        ("localhost:50051", Destination(host="localhost", port=50051)),
        ("dns:///example.com:8443", Destination(host="example.com", port=8443)),
        ("dns://8.8.8.8/example.com:81", Destination(host="example.com", port=81)),
        ("example.com", Destination(host="example.com", port=443)),
        ("ipv4:10.0.0.1:5,10.0.0.2:6", Destination(host="10.0.0.1", address="10.0.0.1", port=5)),
        ("ipv6:[::1]:7", Destination(host="::1", address="::1", port=7)),
        ("[::1]:9", Destination(host="::1", address="::1", port=9)),
        ("unix:/tmp/s.sock", None),
        ("unix:///tmp/s.sock", None),
        ("unix-abstract:name", None),
        ("", None),
    ],
)
def test_destination_from_target(target: str, wanted: Destination | None) -> None:
    assert grpc_destination(target) == wanted


def test_options_from_policy_and_choices() -> None:
    policy = Policy(idle=11, interval=3, count=4)
    assert channel_options(policy, specific=True) == {
        "grpc.keepalive_time_ms": 11000,
        "grpc.keepalive_timeout_ms": 12000,
        "grpc.http2.ping_timeout_ms": 12000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
    }
    floored = channel_options(policy, specific=False)
    assert floored["grpc.keepalive_time_ms"] == FLOORED_MS
    assert floored["grpc.keepalive_permit_without_calls"] == 0
    assert channel_options(Policy(idle=None, interval=None, count=None), specific=True) == {}
    assert chosen_in_channel_options([("grpc.keepalive_time_ms", 5000)]) == {"enabled", "idle"}
    assert chosen_in_channel_options([("grpc.keepalive_timeout_ms", 1)]) == {
        "interval",
        "count",
        "user_timeout",
    }
    assert len(chosen_in_channel_options([("grpc.keepalive_time_ms", 2**31 - 1)])) == 5
    assert chosen_in_channel_options([("grpc.max_receive_message_length", 1)]) == frozenset()


# --- the options reach gRPC core: read back from the live client socket --------------


def test_without_kapatch_grpc_sets_nothing(grpc_port: int) -> None:
    assert channel_state(grpc_port) == KERNEL


def test_sync_channel_gets_the_policy(install: Install, grpc_port: int) -> None:
    install(environ={**ENV, "KAPATCH_GRPC_IDLE": "5s"})
    assert channel_state(grpc_port) == ut(12000)  # interval 3 * count 4
    assert channel_state(grpc_port, options=[]) == ut(12000)  # empty options: not given
    assert channel_state(grpc_port, options=(("grpc.max_receive_message_length", 1 << 20),)) == ut(12000)
    assert counts()["configured"] == 3


async def test_aio_channel_gets_the_policy(install: Install, grpc_port: int) -> None:
    install(environ=ENV)
    no_client_sockets(grpc_port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = channel.unary_unary("/t.T/Wait", request_serializer=identity, response_deserializer=identity)
        assert await stub(b"0") == b"done:0"
        (state,) = client_sockets(grpc_port)
    assert state == ut(12000)
    assert counts()["configured"] == 1


def test_secure_channel_with_positional_options(install: Install) -> None:
    """secure_channel(target, credentials, options): local TCP credentials, a real handshake."""
    install(environ=ENV)
    kind = grpc.LocalConnectionType.LOCAL_TCP
    server = grpc.server(futures.ThreadPoolExecutor(2))
    handler = grpc.unary_unary_rpc_method_handler(_wait, identity, identity)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", {"Wait": handler}),))
    port = server.add_secure_port("127.0.0.1:0", grpc.local_server_credentials(kind))
    server.start()
    try:
        own = [("grpc.keepalive_timeout_ms", 8000)]
        with grpc.secure_channel(f"127.0.0.1:{port}", grpc.local_channel_credentials(kind), own) as channel:
            assert call(channel) == b"done:0"
            (state,) = client_sockets(port)
    finally:
        server.stop(0)
    assert state == ut(8000)  # the application's timeout, kept
    assert counts()["configured"] == 1


def test_unix_target_is_left_alone(install: Install, tmp_path: Any) -> None:
    install(environ=ENV)
    path = tmp_path / "g.sock"
    server = grpc.server(futures.ThreadPoolExecutor(2))
    handler = grpc.unary_unary_rpc_method_handler(_wait, identity, identity)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", {"Wait": handler}),))
    server.add_insecure_port(f"unix:{path}")
    server.start()
    try:
        with grpc.insecure_channel(f"unix:{path}") as channel:
            assert call(channel) == b"done:0"
    finally:
        server.stop(0)
    assert counts() == {"configured": 0, "respected": 0, "skipped": 0, "failed": 0, "uncovered": 0}


# --- respect and override, overrides and rules ---------------------------------------


def test_respect_mode_keeps_the_applications_keepalive(install: Install, grpc_port: int) -> None:
    install(environ=ENV)
    own = [("grpc.keepalive_time_ms", 600000), ("grpc.keepalive_timeout_ms", 7000)]
    assert channel_state(grpc_port, options=own) == ut(7000)
    # Only the time chosen: the timeout (and so the user timeout) still comes from the policy.
    assert channel_state(grpc_port, options=[("grpc.keepalive_time_ms", 600000)]) == ut(12000)
    # The application's timeout kept, the policy's time added.
    assert channel_state(grpc_port, options=[("grpc.keepalive_timeout_ms", 9000)]) == ut(9000)
    # Keepalive turned off by the application: gRPC sets no user timeout; respected.
    assert channel_state(grpc_port, options=[("grpc.keepalive_time_ms", 2**31 - 1)]) == KERNEL
    assert counts()["respected"] == 2
    assert counts()["configured"] == 2
    assert kapatch.status().adapter("grpc").kept["idle"] == 3


def test_override_mode_replaces_the_applications_keepalive(install: Install, grpc_port: int) -> None:
    install(environ={**ENV, "KAPATCH_MODE": "override"})
    own = [("grpc.keepalive_time_ms", 600000), ("grpc.keepalive_timeout_ms", 7000)]
    assert channel_state(grpc_port, options=own) == ut(12000)
    assert channel_state(grpc_port, options=[("grpc.keepalive_time_ms", 2**31 - 1)]) == ut(12000)


def test_per_adapter_override(install: Install, grpc_port: int) -> None:
    install(environ={**ENV, "KAPATCH_GRPC_INTERVAL": "2s", "KAPATCH_GRPC_COUNT": "3"})
    assert channel_state(grpc_port) == ut(6000)


def test_skip_rule_by_target_host(install: Install, grpc_port: int) -> None:
    install(environ=ENV, rules=[Rule.build("localhost", skip=True)])
    assert channel_state(grpc_port, target=f"localhost:{grpc_port}") == KERNEL
    assert channel_state(grpc_port) == ut(12000)  # 127.0.0.1: no match
    assert counts()["skipped"] == 1


def test_a_failure_inside_the_adapter_never_stops_the_channel(
    install: Install, grpc_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(environ=ENV)

    def broken(target: object) -> None:
        raise RuntimeError("a kapatch bug")

    monkeypatch.setattr(grpc_adapter_module, "grpc_destination", broken)
    assert channel_state(grpc_port) == KERNEL  # the channel works, without the policy
    assert counts()["failed"] == 1


# --- the PINGs are real: what a default grpcio server does with them ------------------


def test_pings_at_one_second_make_a_default_server_fail_a_quiet_call(
    install: Install, grpc_port: int
) -> None:
    """A gRPC-specific idle of 1 s is used as given: the default server sends GOAWAY too_many_pings."""
    install(environ={**ENV, "KAPATCH_GRPC_IDLE": "1s"})
    started = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, pytest.raises(grpc.RpcError) as failure:
        call(channel, 6)
    elapsed = time.monotonic() - started
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "ping" in (failure.value.details() or "").lower()
    assert 2 < elapsed < 6


def test_the_floor_keeps_a_default_server_happy(install: Install, grpc_port: int) -> None:
    """The process-wide idle (1 s) is not gRPC-specific: PINGs no sooner than the server minimum."""
    install(environ={"KAPATCH_IDLE": "1s", "KAPATCH_INTERVAL": "1s", "KAPATCH_COUNT": "2"})
    no_client_sockets(grpc_port)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        assert call(channel, 5) == b"done:5"
        (state,) = client_sockets(grpc_port)
    assert state == ut(2000)


def test_inbound_makes_servers_welcome_the_pings(install: Install) -> None:
    """With inbound on, a server made after install accepts PINGs at the inbound idle."""
    install(
        environ={"KAPATCH_IDLE": "1s", "KAPATCH_INTERVAL": "1s", "KAPATCH_COUNT": "3", "KAPATCH_INBOUND": "1"}
    )
    server, port = start_server()
    try:
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.keepalive_time_ms", 1000)]
        ) as channel:
            assert call(channel, 5) == b"done:5"  # PINGs every second for 5 s: no GOAWAY
        assert kapatch.status().adapter("inbound").counts["configured"] >= 1
    finally:
        server.stop(0)


def test_servers_are_left_alone_without_inbound(install: Install) -> None:
    install(environ=FAST)
    server, port = start_server()
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.keepalive_time_ms", 1000)]) as channel,
            pytest.raises(grpc.RpcError),
        ):
            call(channel, 6)  # the default server's ping policy: too_many_pings
    finally:
        server.stop(0)


# --- install, import order, uninstall ------------------------------------------------


def test_imported_after_install(grpc_port: int) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, json, os, socket, sys
        import kapatch
        assert "grpc" not in sys.modules
        kapatch.install(environ={ENV!r})
        print(json.dumps({{"waiting": kapatch.status().adapter("grpc").reason}}))
        import grpc, grpc.aio
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_adapter_grpc import call, client_sockets, identity as id_, no_client_sockets

        out = {{}}
        no_client_sockets({grpc_port})
        with grpc.insecure_channel("127.0.0.1:{grpc_port}") as channel:
            call(channel)
            out["sync"] = [s.user_timeout_ms for s in client_sockets({grpc_port})]
        no_client_sockets({grpc_port})
        async def main():
            async with grpc.aio.insecure_channel("127.0.0.1:{grpc_port}") as channel:
                stub = channel.unary_unary("/t.T/Wait", request_serializer=id_, response_deserializer=id_)
                await stub(b"0")
                out["aio"] = [s.user_timeout_ms for s in client_sockets({grpc_port})]
        asyncio.run(main())
        out["counts"] = dict(kapatch.status().adapter("grpc").counts)
        print(json.dumps(out))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().splitlines()
    assert json.loads(first) == {"waiting": "waiting for import of grpc or grpc.aio"}
    out = json.loads(second)
    assert out["sync"] == out["aio"] == [12000]
    assert out["counts"]["configured"] == 2


def test_uninstall_restores_identity(install: Install, grpc_port: int) -> None:
    status = install(environ=ENV)
    assert status.adapter("grpc").reason == "patched"
    for (module, name), original in ORIGINALS.items():
        assert vars(sys.modules[module])[name] is not original
    assert channel_state(grpc_port) == ut(12000)
    kapatch.uninstall()
    for (module, name), original in ORIGINALS.items():
        assert vars(sys.modules[module])[name] is original
    assert grpc.insecure_channel is ORIGINALS[("grpc", "insecure_channel")]
    assert channel_state(grpc_port) == KERNEL


def test_supported_versions() -> None:
    assert GrpcAdapter.unavailable_reason() is None
    assert GrpcAdapter.supported_range() == ">=1.50, <2"


def test_asyncio_is_not_blocked() -> None:
    """The aio wrapper returns the channel object directly (no coroutine is introduced)."""
    assert not asyncio.iscoroutinefunction(grpc.aio.insecure_channel)


# --- what HTTP/2 PINGs see that TCP keepalive does not: a stopped peer process --------


def test_pings_catch_a_stopped_server_process(install: Install) -> None:
    """SIGSTOP the server process: its kernel still ACKs (TCP keepalive sees a live peer),
    but nobody answers the PING, so the blocked call fails within idle + interval x count."""
    import signal

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    server = subprocess.Popen(
        [sys.executable, "-m", "integrations.grpcserver", "127.0.0.1", str(port)],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert "listening" in server.stdout.readline()
        install(environ={**FAST, "KAPATCH_GRPC_IDLE": "1s", "KAPATCH_GRPC_COUNT": "2"})  # bound 3 s
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            ok = channel.unary_unary("/lab.Lab/Ok", identity, identity)
            assert ok(b"", timeout=10) == b"ok"
            hang = channel.unary_unary("/lab.Lab/Hang", identity, identity)
            future = hang.future(b"")
            time.sleep(2.5)  # PINGs answered while the handler hangs: the call stays alive
            assert not future.done()
            server.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            with pytest.raises(grpc.RpcError) as failure:
                future.result(timeout=20)
            elapsed = time.monotonic() - stopped
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert elapsed < 3 + 1
    finally:
        server.send_signal(signal.SIGCONT)
        server.kill()
        server.wait(timeout=10)


def test_the_applications_timeout_gets_no_second_timeout_beside_it() -> None:
    """Respect mode keeps keepalive_timeout_ms and adds no ping_timeout_ms of the policy's."""
    from kapatch.adapters.grpc import _keeper, _merge

    wanted = channel_options(Policy(idle=11, interval=3, count=4), specific=True)
    timeout_fields = frozenset({"interval", "count", "user_timeout"})
    own = [("grpc.keepalive_timeout_ms", 7000)]
    kept = dict(_merge(own, wanted, _keeper(timeout_fields, respect=True)))
    assert kept["grpc.keepalive_timeout_ms"] == 7000
    assert "grpc.http2.ping_timeout_ms" not in kept
    assert kept["grpc.keepalive_time_ms"] == 11000
    replaced = dict(_merge(own, wanted, _keeper(frozenset(), respect=False)))
    assert replaced["grpc.keepalive_timeout_ms"] == replaced["grpc.http2.ping_timeout_ms"] == 12000


# --- heartbeat: the PING is the heartbeat ---------------------------------------------


def test_heartbeat_options() -> None:
    """A heartbeat set for grpc is used as given, PINGs on idle channels too; one inherited
    (KAPATCH_HEARTBEAT, a profile) is floored like the idle; its timeout is heartbeat_timeout."""
    policy = Policy(idle=60, interval=10, count=5, heartbeat=2000, heartbeat_timeout=1500)
    assert channel_options(policy, specific=False, heartbeat_specific=True) == {
        "grpc.keepalive_time_ms": 2000,
        "grpc.keepalive_timeout_ms": 1500,
        "grpc.http2.ping_timeout_ms": 1500,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
    }
    floored = channel_options(policy, specific=False)
    assert floored["grpc.keepalive_time_ms"] == FLOORED_MS
    assert floored["grpc.keepalive_timeout_ms"] == 1500
    assert floored["grpc.keepalive_permit_without_calls"] == 0
    # A grpc-specific idle sooner than the heartbeat: the sooner PING, the heartbeat's timeout.
    assert channel_options(policy.evolve(idle=1), specific=True)["grpc.keepalive_time_ms"] == 1000
    os_timings = Policy(idle=None, interval=None, count=None, heartbeat=5000)
    given = channel_options(os_timings, specific=False, heartbeat_specific=True)
    assert given["grpc.keepalive_time_ms"] == 5000
    assert GrpcAdapter.heartbeat_mechanism


def test_heartbeat_respects_the_applications_ping_time(install: Install, grpc_port: int) -> None:
    install(environ={"KAPATCH_GRPC_HEARTBEAT": "2s", "KAPATCH_GRPC_HEARTBEAT_TIMEOUT": "1500ms"})
    assert channel_state(grpc_port) == ut(1500)  # TCP_USER_TIMEOUT = heartbeat_timeout, by gRPC core
    assert channel_state(grpc_port, [("grpc.keepalive_timeout_ms", 7000)]) == ut(7000)


@pytest.mark.parametrize("with_kapatch", [False, True], ids=["without", "with"])
def test_heartbeat_fails_a_call_to_a_frozen_server(install: Install, with_kapatch: bool) -> None:
    """An idle pooled channel, its server process SIGSTOPped, then a call with a 6 s deadline:
    without kapatch it blocks until the deadline; with a 1 s heartbeat (1.5 s timeout; the
    server allows PINGs every second) it fails UNAVAILABLE within heartbeat + timeout."""
    import signal

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    server = subprocess.Popen(
        [sys.executable, "-m", "integrations.grpcserver", "127.0.0.1", str(port)],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert "listening" in server.stdout.readline()
        if with_kapatch:
            install(environ={"KAPATCH_GRPC_HEARTBEAT": "1s", "KAPATCH_GRPC_HEARTBEAT_TIMEOUT": "1500ms"})
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            ok = channel.unary_unary("/lab.Lab/Ok", identity, identity)
            assert ok(b"", timeout=10) == b"ok"
            time.sleep(1.5)  # idle, PINGs answered
            assert ok(b"", timeout=10) == b"ok"  # the heartbeat alone never breaks a live channel
            server.send_signal(signal.SIGSTOP)
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as failure:
                ok(b"", timeout=6)
            elapsed = time.monotonic() - start
        if with_kapatch:
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            assert elapsed < 1 + 1.5 + 1
        else:
            assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert elapsed >= 6 - 0.1
    finally:
        server.send_signal(signal.SIGCONT)
        server.kill()
        server.wait(timeout=10)
