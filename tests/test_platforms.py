"""Per-platform plans, checked call by call against a fake socket module.

Only Linux runs here; darwin, win32, freebsd and unknown platforms are compiled with
``compile_plan(policy, platform, module=fake)`` and applied to fake sockets that record
every ``setsockopt``/``ioctl``. The expected calls are built below from the header
values in ``tests/fakesocket.py``, independently of ``kapatch/_platforms.py``.
"""

from __future__ import annotations

import errno
import math
import socket

import pytest
from fakesocket import HEADERS, FakeSocket, fake_socket_module
from hypothesis import given
from hypothesis import strategies as st

import kapatch
from kapatch import PROFILES, Policy
from kapatch._platforms import current_platform
from kapatch.sockopts import apply_plan, compile_plan

PLATFORMS = ("linux", "darwin", "freebsd", "win32", "generic")
FOREIGN = ("darwin", "freebsd", "win32", "generic")


def wanted_user_timeout_ms(policy: Policy) -> int | None:
    """TCP_USER_TIMEOUT in ms, computed here rather than by Policy.user_timeout_ms."""
    if policy.user_timeout == "off":
        return None
    if policy.user_timeout == "auto":
        if policy.idle is None or policy.interval is None or policy.count is None:
            return None
        return (policy.idle + policy.interval * policy.count) * 1000
    return policy.user_timeout


def expected(platform: str, policy: Policy) -> tuple[list[tuple[object, ...]], set[str]]:  # noqa: PLR0912
    """The exact calls *policy* must make on *platform*, and the fields reported unsupported."""
    if not policy.enabled:
        return [], set()
    h = HEADERS[platform]
    tcp = h["IPPROTO_TCP"]
    keepalive_on = ("setsockopt", h["SOL_SOCKET"], h["SO_KEEPALIVE"], 1)
    timed = policy.idle is not None
    timeout = wanted_user_timeout_ms(policy)
    unsupported: set[str] = set()
    calls: list[tuple[object, ...]]
    if platform in ("linux", "freebsd", "darwin"):
        idle_option = h["TCP_KEEPALIVE"] if platform == "darwin" else h["TCP_KEEPIDLE"]
        calls = [keepalive_on]
        if timed:
            calls += [
                ("setsockopt", tcp, idle_option, policy.idle),
                ("setsockopt", tcp, h["TCP_KEEPINTVL"], policy.interval),
                ("setsockopt", tcp, h["TCP_KEEPCNT"], policy.count),
            ]
        if platform == "linux":  # "off" is written as 0, so none is left behind
            calls.append(("setsockopt", tcp, h["TCP_USER_TIMEOUT"], timeout or 0))
        elif timeout is not None:
            if platform == "darwin":  # seconds, rounded up: never give up sooner than asked
                calls.append(("setsockopt", tcp, h["TCP_RXT_CONNDROPTIME"], math.ceil(timeout / 1000)))
            else:
                unsupported.add("user_timeout")
    elif platform == "win32":
        if timed:
            assert policy.interval is not None
            calls = [
                ("ioctl", h["SIO_KEEPALIVE_VALS"], (1, policy.idle * 1000, policy.interval * 1000)),
                ("setsockopt", tcp, h["TCP_KEEPCNT"], policy.count),
            ]
        else:
            calls = [keepalive_on]
        if timeout is not None:
            calls.append(("setsockopt", tcp, h["TCP_MAXRT"], math.ceil(timeout / 1000)))
    else:
        calls = [keepalive_on]
        if timed:
            unsupported.add("idle/interval/count")
        if timeout is not None:
            unsupported.add("user_timeout")
    return calls, unsupported


def run(platform: str, policy: Policy, refuse: tuple[tuple[str, int], ...] = ()) -> tuple[FakeSocket, object]:
    module = fake_socket_module(platform)
    for name, error in refuse:
        module.refuse(name, error)
    plan = compile_plan(policy, platform, module=module)
    sock = module.socket()
    return sock, apply_plan(sock, plan)  # type: ignore[arg-type]  # a fake socket


def unsupported_fields(notes: tuple[str, ...]) -> set[str]:
    return {note.split(":", 1)[0] for note in notes}


# ---------------------------------------------------------------- the header values


def test_the_plan_tables_use_the_header_values() -> None:
    """Each option kapatch names resolves to the number the platform's header defines."""
    timed = Policy(idle=60, interval=10, count=5, user_timeout=30_000)
    for platform in FOREIGN:
        plan = compile_plan(timed, platform, module=fake_socket_module(platform))
        h = HEADERS[platform]
        for op in plan.setsockopts:
            assert (op.level, op.option) == (
                h["SOL_SOCKET"] if op.name.startswith("SO_") else h["IPPROTO_TCP"],
                h[op.name],
            ), (platform, op)
        for ioctl in plan.ioctls:
            assert ioctl.control == h[ioctl.name] == 0x98000004


def test_a_foreign_plan_ignores_the_running_socket_module() -> None:
    """Linux's TCP_KEEPINTVL (5) is not Darwin's (0x101): compiling for darwin here must not mix them."""
    plan = compile_plan(Policy(), "darwin", module=socket)
    options = {op.name: op.option for op in plan.setsockopts}
    assert options == {
        "SO_KEEPALIVE": 0x8,
        "TCP_KEEPALIVE": 0x10,
        "TCP_KEEPINTVL": 0x101,
        "TCP_KEEPCNT": 0x102,
        "TCP_RXT_CONNDROPTIME": 0x80,
    }
    assert socket.TCP_KEEPINTVL == 5  # what a naive getattr(socket, ...) would have used


def test_the_native_plan_uses_the_running_socket_module() -> None:
    plan = compile_plan(Policy(), "linux", module=socket)
    options = {op.name: (op.level, op.option) for op in plan.setsockopts}
    assert options == {
        "SO_KEEPALIVE": (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "TCP_KEEPIDLE": (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "TCP_KEEPINTVL": (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "TCP_KEEPCNT": (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "TCP_USER_TIMEOUT": (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    }
    # ...and this machine's socket module agrees with the Linux header table.
    assert {name: option for name, (_, option) in options.items()} == {
        name: HEADERS["linux"][name] for name in options
    }


@pytest.mark.parametrize(
    ("raw", "platform"),
    [
        ("linux", "linux"),
        ("darwin", "darwin"),
        ("win32", "win32"),
        ("freebsd14", "freebsd"),
        ("freebsd13", "freebsd"),
        ("cygwin", "generic"),
        ("sunos5", "generic"),
        ("openbsd7", "generic"),
    ],
)
def test_sys_platform_names_map_to_a_table(raw: str, platform: str) -> None:
    assert current_platform(raw) == platform


# ---------------------------------------------------------------- every profile, every platform


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_profile_makes_exactly_the_right_calls(platform: str, profile: str) -> None:
    policy = PROFILES[profile].policy
    calls, unsupported = expected(platform, policy)
    sock, result = run(platform, policy)
    assert sock.call_tuples() == calls
    assert result.failed == ()  # type: ignore[attr-defined]
    assert unsupported_fields(result.unsupported) == unsupported  # type: ignore[attr-defined]
    assert len(result.applied) == len(calls)  # type: ignore[attr-defined]


@st.composite
def valid_policies(draw: st.DrawFn) -> Policy:
    """Any policy the constructor accepts (an "auto" user timeout must fit in a C int)."""
    timed = draw(st.booleans())
    idle = draw(st.integers(1, 32767)) if timed else None
    interval = draw(st.integers(1, 32767)) if timed else None
    count = draw(st.integers(1, 127)) if timed else None
    timeout: int | str = draw(st.one_of(st.sampled_from(["off", "auto"]), st.integers(1, 2**31 - 1)))
    if timeout == "auto" and timed:
        assert idle is not None and interval is not None and count is not None
        if (idle + interval * count) * 1000 > 2**31 - 1:
            timeout = "off"
    return Policy(idle=idle, interval=interval, count=count, user_timeout=timeout,  # type: ignore[arg-type]
                  enabled=draw(st.booleans()))  # fmt: skip


@given(policy=valid_policies(), platform=st.sampled_from(PLATFORMS))
def test_any_valid_policy_makes_exactly_the_right_calls(policy: Policy, platform: str) -> None:
    calls, unsupported = expected(platform, policy)
    sock, result = run(platform, policy)
    assert sock.call_tuples() == calls
    assert unsupported_fields(result.unsupported) == unsupported  # type: ignore[attr-defined]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_disabled_policy_touches_nothing(platform: str) -> None:
    plan = compile_plan(Policy(enabled=False), platform, module=fake_socket_module(platform))
    assert plan.is_empty
    sock, result = run(platform, Policy(enabled=False))
    assert sock.calls == []
    assert result.applied == ()  # type: ignore[attr-defined]


def test_user_timeout_rounds_up_to_whole_seconds_where_the_option_counts_seconds() -> None:
    policy = Policy(user_timeout=1500)
    for platform, option in (("darwin", 0x80), ("win32", 5)):
        sock, _ = run(platform, policy)
        assert ("setsockopt", 6, option, 2) in sock.call_tuples(), platform
    sock, _ = run("linux", policy)
    assert ("setsockopt", 6, 18, 1500) in sock.call_tuples()


def test_public_plan_matches_compile_plan() -> None:
    policy = PROFILES["aws"].policy
    for platform in PLATFORMS:
        assert kapatch.plan(policy, platform) == compile_plan(policy, platform)


# ---------------------------------------------------------------- refusals


def test_windows_before_1703_refuses_keepcnt_which_is_reported_unsupported() -> None:
    policy = PROFILES["fast-failover"].policy
    sock, result = run("win32", policy, refuse=(("TCP_KEEPCNT", errno.ENOPROTOOPT),))
    assert result.failed == ()  # type: ignore[attr-defined]
    assert result.ok  # type: ignore[attr-defined]
    notes = result.unsupported  # type: ignore[attr-defined]
    assert len(notes) == 1
    assert notes[0].startswith("count: TCP_KEEPCNT not supported by this OS")
    # The ioctl (idle, interval) and TCP_MAXRT were still applied.
    assert result.applied == ("SIO_KEEPALIVE_VALS", "TCP_MAXRT")  # type: ignore[attr-defined]
    assert sock.options[("ioctl", 0x98000004)] == (1, 10_000, 5_000)  # type: ignore[index]
    assert sock.options[(6, 5)] == 25


def test_windows_refusing_maxrt_reports_the_user_timeout_unsupported() -> None:
    sock, result = run("win32", Policy(), refuse=(("TCP_MAXRT", errno.ENOPROTOOPT),))
    assert result.failed == ()  # type: ignore[attr-defined]
    assert unsupported_fields(result.unsupported) == {"user_timeout"}  # type: ignore[attr-defined]
    assert sock.options[(6, 16)] == 5


def test_a_refused_ioctl_is_a_failure_and_the_rest_still_runs() -> None:
    sock, result = run("win32", Policy(), refuse=(("SIO_KEEPALIVE_VALS", errno.EINVAL),))
    (name, error), *rest = result.failed  # type: ignore[attr-defined]
    assert (name, error.errno, rest) == ("SIO_KEEPALIVE_VALS", errno.EINVAL, [])
    assert not result.ok  # type: ignore[attr-defined]
    assert result.applied == ("TCP_KEEPCNT", "TCP_MAXRT")  # type: ignore[attr-defined]
    assert [call.kind for call in sock.calls] == ["ioctl", "setsockopt", "setsockopt"]


@pytest.mark.parametrize("platform", ["darwin", "freebsd", "linux"])
def test_a_refused_required_option_is_a_failure_and_the_others_are_applied(platform: str) -> None:
    sock, result = run(platform, Policy(), refuse=(("TCP_KEEPINTVL", errno.EINVAL),))
    assert [(name, error.errno) for name, error in result.failed] == [  # type: ignore[attr-defined]
        ("TCP_KEEPINTVL", errno.EINVAL)
    ]
    calls, _ = expected(platform, Policy())
    assert sock.call_tuples() == calls  # every call was still tried, in order
    intvl = (6, HEADERS[platform]["TCP_KEEPINTVL"])
    assert intvl not in sock.options
    assert len(sock.options) == len(calls) - 1


@pytest.mark.parametrize("platform", ["darwin", "freebsd", "generic", "win32"])
def test_a_closed_socket_fails_every_option_without_raising(platform: str) -> None:
    module = fake_socket_module(platform)
    sock = module.socket()
    sock.close()
    result = apply_plan(sock, compile_plan(Policy(), platform, module=module))  # type: ignore[arg-type]
    calls, _ = expected(platform, Policy())
    assert len(result.failed) == len(calls)
    assert {error.errno for _, error in result.failed} == {errno.EBADF}
    assert result.applied == ()


def test_a_windows_plan_on_a_socket_without_ioctl_does_not_raise() -> None:
    plan = compile_plan(Policy(), "win32", module=fake_socket_module("win32"))
    sock = fake_socket_module("darwin").socket()
    result = apply_plan(sock, plan)  # type: ignore[arg-type]
    assert [name for name, _ in result.failed] == ["SIO_KEEPALIVE_VALS"]
