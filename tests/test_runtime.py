"""install / uninstall / status, the connect hook, claims and failure handling, on real sockets."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest

import kapatch
from kapatch import runtime
from kapatch.policy import Policy
from kapatch.profiles import PROFILES

FAST = PROFILES["fast-failover"].policy


@pytest.fixture
def listener() -> Iterator[tuple[str, int]]:
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    try:
        yield server.getsockname()[:2]
    finally:
        server.close()


@pytest.fixture
def listener_v6() -> Iterator[tuple[str, int]]:
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6, backlog=16)
    except OSError:
        pytest.skip("IPv6 loopback unavailable")
    try:
        yield server.getsockname()[:2]
    finally:
        server.close()


@pytest.fixture
def refusing_port() -> Iterator[tuple[str, int]]:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[:2]


def connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=5)


def test_connection_after_install_carries_the_policy(listener):
    kapatch.install(profile="fast-failover")
    with connect(listener) as sock:
        state = kapatch.inspect(sock)
    assert state.mismatches(FAST) == ()
    assert (state.idle, state.interval, state.count, state.user_timeout_ms) == (10, 5, 3, 25_000)


def test_ipv6_connection_carries_the_policy(listener_v6):
    kapatch.install(profile="aws")
    with socket.create_connection(listener_v6, timeout=5) as sock:
        assert kapatch.inspect(sock).mismatches(PROFILES["aws"].policy) == ()


def test_connect_ex_is_covered_too(listener):
    kapatch.install(idle=11, interval=3, count=2)
    with socket.socket() as sock:
        assert sock.connect_ex(listener) == 0
        assert kapatch.inspect(sock).idle == 11


def test_without_install_nothing_changes(listener):
    with connect(listener) as sock:
        state = kapatch.inspect(sock)
    assert not state.enabled
    assert state.user_timeout_ms == 0


def test_uninstall_restores_identity_and_defaults(listener):
    before = {name: socket.socket.__dict__.get(name) for name in ("connect", "connect_ex")}
    kapatch.install()
    assert "connect" in socket.socket.__dict__  # the hook is in place
    kapatch.uninstall()
    after = {name: socket.socket.__dict__.get(name) for name in ("connect", "connect_ex")}
    assert after == before == {"connect": None, "connect_ex": None}
    assert socket.socket.connect is socket.socket.__mro__[1].connect  # type: ignore[attr-defined]
    with connect(listener) as sock:
        assert not kapatch.inspect(sock).enabled


def test_socket_class_and_instances_stay_the_stdlib_ones(listener):
    kapatch.install()
    with connect(listener) as sock:
        assert type(sock) is socket.socket


def test_install_twice_is_idempotent_and_reconfigures(listener):
    kapatch.install(profile="aws")
    kapatch.install(profile="aws")
    kapatch.install(profile="fast-failover")
    with connect(listener) as sock:
        assert kapatch.inspect(sock).idle == 10
    kapatch.uninstall()
    kapatch.uninstall()
    assert not kapatch.status().installed


def test_install_is_thread_safe(listener):
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(20):
                kapatch.install(profile="fast-failover")
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    with connect(listener) as sock:
        assert kapatch.inspect(sock).mismatches(FAST) == ()
    kapatch.uninstall()
    assert "connect" not in socket.socket.__dict__


def test_counts_are_exact_under_threads(refusing_port):
    """The connect hook counts without a lock (a tally per counter): no count is lost when
    threads switch as often as the interpreter lets them."""
    kapatch.install(profile="fast-failover", mode="override")
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def worker() -> None:
        for _ in range(500):
            with socket.socket() as sock:
                sock.connect_ex(refusing_port)  # through the hook; refused at once, nothing to accept

    try:
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(switch)
    assert kapatch.status().adapter("socket").counts["configured"] == 2000


def test_respect_mode_keeps_what_the_application_set_field_by_field(listener):
    kapatch.install(profile="fast-failover")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
        sock.connect(listener)
        state = kapatch.inspect(sock)
    # idle is the application's; interval and count were the kernel's defaults: the policy's now,
    # and the auto user timeout spans the probes as they will really run (77 + 5 * 3 s).
    assert (state.enabled, state.idle, state.interval, state.count) == (True, 77, FAST.interval, FAST.count)
    assert state.user_timeout_ms == (77 + FAST.interval * FAST.count) * 1000
    adapter = kapatch.status().adapter("socket")
    assert adapter.counts["configured"] == 1
    assert dict(adapter.kept) == {"enabled": 1, "idle": 1}


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        (socket.TCP_USER_TIMEOUT, 1234, "user_timeout"),
        (socket.TCP_KEEPIDLE, 33, "idle"),
        (socket.TCP_KEEPCNT, 2, "count"),
    ],
)
def test_a_field_set_without_so_keepalive_is_kept_and_the_rest_gets_the_policy(
    listener, option, value, field
):
    kapatch.install(profile="fast-failover")
    with socket.socket() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
        sock.connect(listener)
        state = kapatch.inspect(sock)
    assert state.enabled
    got = {"user_timeout": state.user_timeout_ms, "idle": state.idle, "count": state.count}
    assert got[field] == value
    assert dict(kapatch.status().adapter("socket").kept) == {field: 1}


def test_every_field_set_by_the_application_is_respected_whole(listener):
    kapatch.install(profile="fast-failover")
    with socket.socket() as sock:
        for level, option, value in [
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 7),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 7),
            (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 7777),
        ]:
            sock.setsockopt(level, option, value)
        sock.connect(listener)
        state = kapatch.inspect(sock)
    assert (state.enabled, state.idle, state.interval, state.count, state.user_timeout_ms) == (
        True,
        77,
        7,
        7,
        7777,
    )
    assert kapatch.status().adapter("socket").counts["respected"] == 1


def test_override_mode_replaces_what_the_application_set(listener):
    kapatch.install(profile="fast-failover", mode="override")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
        sock.connect(listener)
        assert kapatch.inspect(sock).mismatches(FAST) == ()


def test_per_adapter_override_beats_the_global_policy(listener):
    kapatch.install(profile="aws", overrides={"socket": {"idle": "9s", "count": 2}})
    with connect(listener) as sock:
        state = kapatch.inspect(sock)
    assert (state.idle, state.interval, state.count) == (9, 20, 2)
    assert state.user_timeout_ms == (9 + 20 * 2) * 1000  # auto follows the override


@pytest.mark.parametrize(
    "pattern",
    ["127.0.0.0/8", "127.0.0.1", "*:{port}", "127.0.0.1:{port}"],
)
def test_exclude_skips_matching_destinations(listener, pattern):
    kapatch.install(exclude=[pattern.format(port=listener[1])])
    with connect(listener) as sock:
        assert not kapatch.inspect(sock).enabled
    assert kapatch.status().adapter("socket").counts["skipped"] == 1


def test_exclude_leaves_other_destinations_alone(listener):
    kapatch.install(exclude=["10.0.0.0/8", "*:1"])
    with connect(listener) as sock:
        assert kapatch.inspect(sock).enabled


def test_destination_rule_changes_the_policy(listener):
    rule = kapatch.Rule.build(f"*:{listener[1]}", profile="fast-failover", count=4)
    kapatch.install(profile="aws", rules=[rule])
    with connect(listener) as sock:
        state = kapatch.inspect(sock)
    assert (state.idle, state.interval, state.count) == (10, 5, 4)


def test_udp_unix_and_listening_sockets_are_left_alone(tmp_path):
    kapatch.install(mode="override")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect(("127.0.0.1", 9))
        assert udp.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen()
        client.connect(path)
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    with socket.create_server(("127.0.0.1", 0)) as server:
        assert server.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    assert kapatch.status().adapter("socket").counts["configured"] == 0


def test_asyncio_open_connection_carries_the_policy(listener):
    kapatch.install(profile="fast-failover")

    async def main() -> kapatch.KeepaliveState:
        _reader, writer = await asyncio.open_connection(*listener)
        try:
            sock = writer.get_extra_info("socket")
            return kapatch.inspect(sock)  # asyncio's TransportSocket forwards getsockopt
        finally:
            writer.close()
            await writer.wait_closed()

    assert asyncio.run(main()).mismatches(FAST) == ()


def test_asyncio_sock_connect_carries_the_policy(listener):
    kapatch.install(profile="fast-failover")

    async def main() -> kapatch.KeepaliveState:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, listener)
            return kapatch.inspect(sock)
        finally:
            sock.close()

    assert asyncio.run(main()).mismatches(FAST) == ()


def test_disabled_policy_and_disabled_switch_patch_nothing(listener):
    status = kapatch.install(enabled=False)
    assert status.installed and not any(a.enabled for a in status.adapters)
    assert "connect" not in socket.socket.__dict__
    kapatch.install(disabled_adapters=["*"])
    assert "connect" not in socket.socket.__dict__


class Claimer(kapatch.Adapter):
    """A stand-in library adapter that claims sockets, registered like a third party's."""

    name = "claimer"
    socket_hooks = frozenset({"connect"})

    def patch(self, module_name: str) -> None:
        pass


@pytest.fixture
def claimer(monkeypatch):
    from kapatch import _registry

    monkeypatch.setitem(_registry.BUILTIN_ADAPTERS, "claimer", f"{__name__}:Claimer")
    _registry.clear_cache()
    yield "claimer"
    kapatch.uninstall()
    _registry.clear_cache()


def test_claims_from_a_library_adapter_use_its_policy_even_with_socket_adapter_off(listener, claimer):
    """The shared hook serves library adapters even when the raw socket adapter is disabled."""
    kapatch.install(profile="aws", disabled_adapters=["socket"], overrides={claimer: {"idle": "13s"}})
    assert kapatch.status().adapter(claimer).enabled
    with runtime.claim(claimer, "cache.internal", listener[1], chosen=frozenset()):
        claimed = connect(listener)
    unclaimed = connect(listener)
    with claimed, unclaimed:
        assert kapatch.inspect(claimed).idle == 13
        assert not kapatch.inspect(unclaimed).enabled
    assert kapatch.status().adapter(claimer).counts["configured"] == 1
    assert kapatch.status().adapter("socket").counts["configured"] == 0


def test_claimed_socket_gets_the_claimers_policy_not_the_socket_adapters(listener, claimer):
    kapatch.install(overrides={"socket": {"idle": "21s"}, claimer: {"idle": "13s"}}, mode="override")
    with runtime.claim(
        claimer, None, None, chosen=frozenset({"enabled", "idle", "interval", "count", "user_timeout"})
    ):  # explicit, but override mode
        claimed = connect(listener)
    with claimed, connect(listener) as plain:
        assert kapatch.inspect(claimed).idle == 13
        assert kapatch.inspect(plain).idle == 21


def test_host_glob_rule_matches_the_name_a_library_claimed(listener, claimer):
    kapatch.install(exclude=["*.internal"])
    with runtime.claim(claimer, "cache.internal", listener[1], chosen=frozenset()):
        sock = connect(listener)
    with sock:
        assert not kapatch.inspect(sock).enabled
    with runtime.claim(claimer, "cache.example", listener[1], chosen=frozenset()):
        sock = connect(listener)
    with sock:
        assert kapatch.inspect(sock).enabled


def refuse_every_write(monkeypatch, name: str, value: int, field: str, *, in_hook: bool):
    """Make every decision write TCP option *name* = *value*, which the kernel refuses.

    Policy validation keeps every value within the kernel's limits, so a real refusal needs
    a hand-built plan. *in_hook*: the published table carries the write too, so the stdlib
    hook's own loop meets the refusal; otherwise only the full path writes. Warnings are
    once per process: each test refuses another option.
    """
    from kapatch._plan import Plan, SockOpt
    from kapatch.sockopts import apply_plan

    option = getattr(socket, name)
    bad = Plan("linux", FAST, setsockopts=(SockOpt(name, socket.IPPROTO_TCP, option, value, field),))
    ops = ((socket.IPPROTO_TCP, option, value),) if in_hook else None
    monkeypatch.setattr(runtime, "apply_decided", lambda sock, policy, kept: apply_plan(sock, bad))
    monkeypatch.setattr(runtime, "_simple_ops", lambda decision: ops)
    return bad


def test_a_refused_option_is_logged_once_counted_and_the_connection_goes_on(listener, caplog, monkeypatch):
    from kapatch.sockopts import apply_plan

    kapatch.install(profile="fast-failover")
    bad = refuse_every_write(monkeypatch, "TCP_KEEPCNT", 500, "count", in_hook=False)  # EINVAL
    with socket.socket() as sock:
        result = apply_plan(sock, bad)
    assert not result.ok and result.failed[0][0] == "TCP_KEEPCNT"

    with caplog.at_level(logging.WARNING, logger="kapatch"):
        first, second = connect(listener), connect(listener)
    with first, second:
        assert kapatch.inspect(first).count != 500  # refused, and the connection is up
        first.sendall(b"x")
    warnings = [r for r in caplog.records if "TCP_KEEPCNT" in r.getMessage()]
    assert len(warnings) == 1
    assert kapatch.status().adapter("socket").counts["failed"] == 2


def test_status_reports_versions_policies_and_counts(listener):
    status = kapatch.install(profile="gcp")
    socket_status = status.adapter("socket")
    assert socket_status.enabled and socket_status.policy == PROFILES["gcp"].policy
    with connect(listener):
        pass
    assert kapatch.status().adapter("socket").counts["configured"] == 1
    assert "profile gcp" in kapatch.status().render()


def test_explicit_install_raises_on_bad_input():
    with pytest.raises(kapatch.ConfigError, match="idle"):
        kapatch.install(idle="abc")
    with pytest.raises(kapatch.ConfigError, match="KAPATCH_COUNT"):
        kapatch.install(environ={"KAPATCH_COUNT": "0"})
    assert not kapatch.status().installed


def test_apply_and_inspect_public_helpers(listener):
    with socket.socket() as sock:
        result = kapatch.apply(sock, Policy(idle=30, interval=5, count=4, user_timeout=1500))
        sock.connect(listener)
        state = kapatch.inspect(sock)
    assert result.ok and "TCP_USER_TIMEOUT" in result.applied
    assert (state.idle, state.interval, state.count, state.user_timeout_ms) == (30, 5, 4, 1500)


def test_library_imported_after_install_is_patched_lazily():
    """A post-import hook fires when the module is first imported, in a fresh interpreter."""
    code = textwrap.dedent(
        """
        import sys, kapatch
        from kapatch.adapters._base import Adapter
        from kapatch import _registry

        class Probe(Adapter):
            name = "probe"
            modules = ("json",)
            patched_modules = []
            def patch(self, module_name):
                Probe.patched_modules.append(module_name)

        class Broken(Adapter):
            name = "broken"
            modules = ("csv",)
            def patch(self, module_name):
                raise RuntimeError("boom")

        sys.modules["probe_mod"] = sys.modules[__name__]
        sys.modules["probe_mod"].Probe = Probe
        sys.modules["probe_mod"].Broken = Broken
        _registry.clear_cache()
        _registry.BUILTIN_ADAPTERS.update(probe="probe_mod:Probe", broken="probe_mod:Broken")
        sys.modules.pop("json", None); sys.modules.pop("csv", None)
        kapatch.install()
        assert Probe.patched_modules == [], Probe.patched_modules
        import json
        assert Probe.patched_modules == ["json"], Probe.patched_modules
        import csv  # the broken hook must not break the import
        assert csv.reader
        st = kapatch.status()
        assert st.adapter("broken").counts["failed"] == 1
        print("OK")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK"
    assert "boom" in done.stderr  # logged, once


# -- the stdlib hook's fast path (kapatch._fast_path): the table the runtime publishes -----


def test_a_claim_after_the_table_is_published_is_still_the_claimers(listener, claimer):
    kapatch.install(overrides={"socket": {"idle": "21s"}, claimer: {"idle": "13s"}})
    with connect(listener) as first, connect(listener) as second:  # the table, then its use
        assert kapatch.inspect(first).idle == kapatch.inspect(second).idle == 21
    with runtime.claim(claimer, None, None, chosen=frozenset()):
        claimed = connect(listener)
    with claimed, connect(listener) as plain:
        assert kapatch.inspect(claimed).idle == 13
        assert kapatch.inspect(plain).idle == 21
    assert kapatch.status().adapter(claimer).counts["configured"] == 1
    assert kapatch.status().adapter("socket").counts["configured"] == 3


def test_a_claim_open_in_another_thread_leaves_this_threads_connections_alone(listener, claimer):
    from kapatch._fast_path import OPEN_CLAIMS

    kapatch.install(overrides={"socket": {"idle": "21s"}, claimer: {"idle": "13s"}})
    connect(listener).close()  # the table is published
    opened, done = threading.Event(), threading.Event()

    def holder() -> None:
        with runtime.claim(claimer, None, None, chosen=frozenset()):
            opened.set()
            done.wait(timeout=30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert opened.wait(timeout=30)
        assert OPEN_CLAIMS[0] == 1
        with connect(listener) as sock:
            assert kapatch.inspect(sock).idle == 21
    finally:
        done.set()
        thread.join(timeout=30)
    assert OPEN_CLAIMS[0] == 0


def test_the_open_claims_count_comes_back_down_when_the_block_raises(claimer):
    from kapatch._fast_path import OPEN_CLAIMS

    def library_call() -> None:
        with runtime.claim(claimer, None, None):
            assert OPEN_CLAIMS[0] == 1
            raise ConnectionError("the library's own failure")

    kapatch.install()
    with pytest.raises(ConnectionError):
        library_call()
    assert OPEN_CLAIMS[0] == 0


def test_a_write_refused_in_the_hook_is_logged_once_counted_and_the_connection_goes_on(
    listener, caplog, monkeypatch
):
    # TCP_KEEPINTVL 40000 is over Linux's 32767 (EINVAL): the hook's own loop meets the
    # refusal, and the full path (refused too) reports it.
    kapatch.install(profile="fast-failover", mode="override")
    refuse_every_write(monkeypatch, "TCP_KEEPINTVL", 40000, "interval", in_hook=True)
    with caplog.at_level(logging.WARNING, logger="kapatch"):
        sockets = [connect(listener) for _ in range(3)]  # the first decides; the others: the hook
    for sock in sockets:
        with sock:
            assert kapatch.inspect(sock).interval != 40000
            sock.sendall(b"x")
    assert len([r for r in caplog.records if "TCP_KEEPINTVL" in r.getMessage()]) == 1
    assert kapatch.status().adapter("socket").counts["failed"] == 3
    assert kapatch.status().adapter("socket").counts["configured"] == 0


def test_a_reinstall_replaces_the_published_table(listener):
    kapatch.install(profile="aws", mode="override")
    with connect(listener) as first, connect(listener) as second:
        assert kapatch.inspect(first).idle == kapatch.inspect(second).idle == PROFILES["aws"].policy.idle
    kapatch.install(profile="fast-failover", mode="override")
    with connect(listener) as first, connect(listener) as second:
        assert kapatch.inspect(first).mismatches(FAST) == kapatch.inspect(second).mismatches(FAST) == ()
    assert kapatch.status().adapter("socket").counts["configured"] == 2
    kapatch.uninstall()
    with connect(listener) as sock:
        assert not kapatch.inspect(sock).enabled


def test_a_forked_child_counts_its_own_connections(listener):
    """The parent's table holds the parent's tallies: a child decides afresh and counts its own."""
    script = textwrap.dedent(f"""
        import os, socket, kapatch
        kapatch.install(profile="fast-failover", mode="override")
        for _ in range(2):
            socket.create_connection({listener!r}, timeout=5).close()
        pid = os.fork()
        if pid == 0:
            with socket.create_connection({listener!r}, timeout=5) as sock:
                idle = kapatch.inspect(sock).idle
            counts = kapatch.status().adapter("socket").counts["configured"]
            os._exit(0 if (idle, counts) == (10, 1) else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child's count or policy is wrong"
        assert kapatch.status().adapter("socket").counts["configured"] == 2
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_reinstall_while_a_connection_decides_leaves_no_stale_decision(listener, monkeypatch):
    """Another thread reinstalls while this one decides under the old configuration: that
    connection may carry the old policy, the ones after it carry the new one."""
    kapatch.install(profile="aws", mode="override")
    runtime_class = type(runtime.context())
    decide, reinstalled = runtime_class._decide, []

    def decide_then_reinstall(self: object, *args: object) -> object:
        decision = decide(self, *args)  # type: ignore[arg-type]
        if not reinstalled:
            reinstalled.append(True)
            settings = {"profile": "fast-failover", "mode": "override"}
            other = threading.Thread(target=kapatch.install, kwargs=settings)
            other.start()
            other.join(timeout=30)
        return decision

    monkeypatch.setattr(runtime_class, "_decide", decide_then_reinstall)
    with connect(listener) as in_flight, connect(listener) as first, connect(listener) as second:
        assert reinstalled
        assert kapatch.inspect(in_flight).idle == PROFILES["aws"].policy.idle
        assert kapatch.inspect(first).mismatches(FAST) == ()
        assert kapatch.inspect(second).mismatches(FAST) == ()
