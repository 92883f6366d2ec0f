"""apply() then inspect() on REAL Linux sockets: what the kernel reports back is the policy.

Every value is read back with getsockopt (kapatch.inspect), on connected loopback TCP
sockets, IPv4 and IPv6. Nothing here installs kapatch.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import ipv6_loopback_available

import kapatch
from kapatch import PROFILES, KeepaliveState, Policy
from kapatch._plan import Plan, SockOpt
from kapatch.policy import MAX_COUNT, MAX_IDLE_S, MAX_INTERVAL_S, MAX_USER_TIMEOUT_MS
from kapatch.sockopts import apply_plan, compile_plan

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real Linux kernel only")

FAMILIES = [
    pytest.param(socket.AF_INET, id="ipv4"),
    pytest.param(
        socket.AF_INET6,
        id="ipv6",
        marks=pytest.mark.skipif(not ipv6_loopback_available(), reason="::1 is not available"),
    ),
]
TCP = socket.IPPROTO_TCP


class Listener:
    """A loopback TCP listener whose connections are accepted and closed one by one."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(5)
        self.address = self.sock.getsockname()[:2]

    @contextmanager
    def connection(self, *, before_connect: Policy | None = None) -> Iterator[socket.socket]:
        client = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            if before_connect is not None:
                kapatch.apply(client, before_connect)
            client.connect(self.address)
            # Accept at once so the backlog never fills, however many examples run.
            server_side, _ = self.sock.accept()
            try:
                yield client
            finally:
                server_side.close()
        finally:
            client.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=FAMILIES, scope="module")
def listener(request: pytest.FixtureRequest) -> Iterator[Listener]:
    server = Listener(request.param)
    try:
        yield server
    finally:
        server.close()


def os_timings() -> tuple[int, int, int]:
    """This network namespace's keepalive defaults: what os-default must leave in place."""
    base = Path("/proc/sys/net/ipv4")
    names = ("tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes")
    idle, interval, count = (int((base / name).read_text()) for name in names)
    return idle, interval, count


def exact_state(policy: Policy) -> KeepaliveState:
    """What the kernel must report after *policy* is applied to a fresh socket."""
    timeout = policy.user_timeout_ms or 0
    if policy.keeps_os_timings:
        idle, interval, count = os_timings()
        return KeepaliveState(True, idle, interval, count, timeout)
    return KeepaliveState(True, policy.idle, policy.interval, policy.count, timeout)


# ---------------------------------------------------------------- every profile, both families


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_reads_back_exactly(listener: Listener, profile: str) -> None:
    policy = PROFILES[profile].policy
    with listener.connection() as client:
        assert kapatch.inspect(client) == KeepaliveState(False, *os_timings(), 0)  # untouched
        result = kapatch.apply(client, policy)
        assert result.ok
        assert result.unsupported == ()
        assert kapatch.inspect(client) == exact_state(policy)
        assert kapatch.inspect(client).mismatches(policy) == ()


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_applied_before_connect_survives_the_connect(listener: Listener, profile: str) -> None:
    """The socket adapter applies the plan just before connect(): the kernel keeps it."""
    policy = PROFILES[profile].policy
    with listener.connection(before_connect=policy) as client:
        assert kapatch.inspect(client) == exact_state(policy)


def test_the_limits_are_the_kernels(listener: Listener) -> None:
    """The largest and smallest values Policy allows are accepted by the kernel as they are."""
    for policy in (
        Policy(idle=MAX_IDLE_S, interval=MAX_INTERVAL_S, count=MAX_COUNT, user_timeout=MAX_USER_TIMEOUT_MS),
        Policy(idle=1, interval=1, count=1, user_timeout=1),
    ):
        with listener.connection() as client:
            kapatch.apply(client, policy)
            assert kapatch.inspect(client) == exact_state(policy)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        (socket.TCP_KEEPIDLE, MAX_IDLE_S + 1),
        (socket.TCP_KEEPINTVL, MAX_INTERVAL_S + 1),
        (socket.TCP_KEEPCNT, MAX_COUNT + 1),
        (socket.TCP_KEEPIDLE, 0),
        (socket.TCP_KEEPCNT, 0),
    ],
)
def test_one_past_a_limit_the_kernel_refuses(listener: Listener, option: int, value: int) -> None:
    """Why Policy refuses these values: the kernel would (EINVAL)."""
    with listener.connection() as client, pytest.raises(OSError, match="Invalid argument") as raised:
        client.setsockopt(TCP, option, value)
    assert raised.value.errno == errno.EINVAL


def test_a_c_int_is_the_user_timeout_limit_from_python(listener: Listener) -> None:
    """The kernel keeps u32 ms, but Python's setsockopt(int) passes a C int.

    One past it is not even an OSError: CPython falls back to the bytes form and raises
    TypeError, which apply_plan would not catch; Policy's limit keeps it from happening.
    """
    with listener.connection() as client, pytest.raises(TypeError):
        client.setsockopt(TCP, socket.TCP_USER_TIMEOUT, MAX_USER_TIMEOUT_MS + 1)


@st.composite
def valid_policies(draw: st.DrawFn) -> Policy:
    timed = draw(st.booleans())
    if not timed:
        return Policy(
            idle=None, interval=None, count=None, user_timeout=draw(st.sampled_from(["off", 1, 1500]))
        )
    idle, interval = draw(st.integers(1, MAX_IDLE_S)), draw(st.integers(1, MAX_INTERVAL_S))
    count = draw(st.integers(1, MAX_COUNT))
    fits = (idle + interval * count) * 1000 <= MAX_USER_TIMEOUT_MS
    timeouts = st.one_of(st.just("off"), st.integers(1, MAX_USER_TIMEOUT_MS), *([st.just("auto")] * fits))
    return Policy(idle=idle, interval=interval, count=count, user_timeout=draw(timeouts))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=valid_policies())
def test_any_valid_policy_reads_back_exactly(listener: Listener, policy: Policy) -> None:
    with listener.connection() as client:
        kapatch.apply(client, policy)
        assert kapatch.inspect(client) == exact_state(policy)


def test_mismatches_name_each_difference(listener: Listener) -> None:
    with listener.connection() as client:
        kapatch.apply(client, PROFILES["balanced"].policy)
        found = kapatch.inspect(client).mismatches(PROFILES["aws"].policy)
    assert found == (
        "idle: kernel has 60, policy wants 180",
        "interval: kernel has 10, policy wants 20",
        "count: kernel has 5, policy wants 4",
        "user_timeout_ms: kernel has 110000, policy wants 260000",
    )


def test_a_nonblocking_tcp_socket_is_still_tcp(listener: Listener) -> None:
    """SOCK_NONBLOCK is a flag on the type; the socket is TCP all the same."""
    client = socket.socket(listener.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        policy = PROFILES["fast-failover"].policy
        assert kapatch.apply(client, policy).ok
        assert kapatch.inspect(client) == exact_state(policy)
    finally:
        client.close()


# ---------------------------------------------------------------- not TCP: left alone


def keepalive_flag(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


@pytest.mark.parametrize(
    ("family", "kind"),
    [
        (socket.AF_INET, socket.SOCK_DGRAM),
        (socket.AF_UNIX, socket.SOCK_STREAM),
        (socket.AF_UNIX, socket.SOCK_DGRAM),
    ],
    ids=["udp", "unix-stream", "unix-dgram"],
)
def test_udp_and_unix_sockets_are_refused_and_left_unchanged(family: int, kind: int) -> None:
    sock = socket.socket(family, kind)
    try:
        before = keepalive_flag(sock)
        with pytest.raises(ValueError, match=r"kapatch\.apply: not TCP: .*left unchanged"):
            kapatch.apply(sock, PROFILES["fast-failover"].policy)
        with pytest.raises(ValueError, match=r"kapatch\.inspect: not TCP"):
            kapatch.inspect(sock)
        assert keepalive_flag(sock) == before == 0
    finally:
        sock.close()


def test_a_unix_socketpair_is_left_unchanged() -> None:
    left, right = socket.socketpair()
    try:
        with pytest.raises(ValueError, match="not TCP"):
            kapatch.apply(left)
        assert keepalive_flag(left) == 0
    finally:
        left.close()
        right.close()


# ---------------------------------------------------------------- the kernel refuses


def test_a_refused_option_is_reported_and_the_others_still_applied(listener: Listener) -> None:
    """A plan with one value the kernel refuses: that one fails, every other one lands."""
    good = compile_plan(Policy(idle=30, interval=7, count=4, user_timeout=9000))
    broken = tuple(
        SockOpt(op.name, op.level, op.option, MAX_IDLE_S + 1, op.field) if op.name == "TCP_KEEPIDLE" else op
        for op in good.setsockopts
    )
    with listener.connection() as client:
        result = apply_plan(client, Plan(good.platform, good.policy, setsockopts=broken))
        state = kapatch.inspect(client)
    assert [(name, error.errno) for name, error in result.failed] == [("TCP_KEEPIDLE", errno.EINVAL)]
    assert result.applied == ("SO_KEEPALIVE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT")
    assert (state.enabled, state.interval, state.count, state.user_timeout_ms) == (True, 7, 4, 9000)
    assert state.idle == os_timings()[0]  # untouched by the refused call


def test_a_closed_socket_fails_every_option_and_apply_plan_does_not_raise() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.close()
    plan = compile_plan(PROFILES["balanced"].policy)
    result = apply_plan(sock, plan)
    assert [name for name, _ in result.failed] == [op.name for op in plan.setsockopts]
    assert {error.errno for _, error in result.failed} == {errno.EBADF}
    assert result.applied == ()
    assert not result.ok


def test_public_apply_raises_oserror_naming_the_refused_option() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.close()
    with pytest.raises(OSError, match="setsockopt SO_KEEPALIVE") as raised:
        kapatch.apply(sock, PROFILES["balanced"].policy)
    assert raised.value.errno == errno.EBADF
