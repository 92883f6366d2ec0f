"""What runs at interpreter start when enabled: no wrapt, no importlib.metadata, and hooks that work."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap

import pytest

from kapatch import _dist_info
from kapatch._import_hooks import ImportHooks


@pytest.mark.parametrize("group", ["kapatch.adapters", "console_scripts", "pytest11"])
def test_entry_points_agree_with_importlib_metadata(group):
    expected = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=group)}
    assert _dist_info.entry_points(group) == expected
    assert expected  # the group is not trivially empty here


def test_versions_agree_with_importlib_metadata():
    names = {dist.metadata["Name"] for dist in importlib.metadata.distributions()}
    assert len(names) > 20
    for name in names:
        assert _dist_info.version(name) == importlib.metadata.version(name), name
    assert _dist_info.version("no-such-distribution-here") is None


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("kapatch_probe_")]:
        del sys.modules[name]


def test_callback_runs_once_after_the_module_body(module_dir):
    (module_dir / "kapatch_probe_a.py").write_text("VALUE = 42\n")
    hooks, seen = ImportHooks(), []
    hooks.when_imported("kapatch_probe_a", lambda module: seen.append(module.VALUE))
    assert hooks in sys.meta_path
    import kapatch_probe_a  # type: ignore[import-not-found]

    assert seen == [42]
    assert hooks not in sys.meta_path  # nothing left to watch: the finder removes itself
    # The module sees its real loader, as without the hook.
    assert type(kapatch_probe_a.__loader__).__name__ == "SourceFileLoader"
    assert kapatch_probe_a.__spec__.loader is kapatch_probe_a.__loader__


def test_a_callback_for_a_module_half_imported_waits_for_the_end_of_its_import(module_dir):
    """redis.asyncio.client imports redis.asyncio.connection, whose hook loads the adapter,
    which asks for redis.asyncio.client: in sys.modules, but without its classes yet."""
    (module_dir / "kapatch_probe_inner.py").write_text("VALUE = 1\n")
    (module_dir / "kapatch_probe_outer.py").write_text("import kapatch_probe_inner\nClient = 'made'\n")
    hooks, seen = ImportHooks(), []

    def inner_done(module: object) -> None:  # registers for the module importing it
        hooks.when_imported("kapatch_probe_outer", lambda outer: seen.append(outer.Client))

    hooks.when_imported("kapatch_probe_inner", inner_done)
    hooks.when_imported("kapatch_probe_outer", lambda outer: seen.append("first"))
    import kapatch_probe_outer  # type: ignore[import-not-found]  # noqa: F401

    assert seen == ["first", "made"]  # after the whole body, not on a half-made module
    assert hooks not in sys.meta_path


def test_callback_runs_at_once_for_an_imported_module():
    hooks, seen = ImportHooks(), []
    hooks.when_imported("json", lambda module: seen.append(module.__name__))
    assert seen == ["json"]
    assert hooks not in sys.meta_path


def test_a_failing_callback_never_breaks_the_import(module_dir):
    (module_dir / "kapatch_probe_b.py").write_text("VALUE = 1\n")
    hooks = ImportHooks()

    def boom(module: object) -> None:
        raise RuntimeError("boom")

    hooks.when_imported("kapatch_probe_b", boom)
    import kapatch_probe_b  # type: ignore[import-not-found]

    assert kapatch_probe_b.VALUE == 1


def test_clear_forgets_callbacks_and_the_finder(module_dir):
    (module_dir / "kapatch_probe_c.py").write_text("VALUE = 1\n")
    hooks, seen = ImportHooks(), []
    hooks.when_imported("kapatch_probe_c", seen.append)
    hooks.clear()
    assert hooks not in sys.meta_path
    import kapatch_probe_c  # type: ignore[import-not-found]  # noqa: F401

    assert seen == []


def test_enabled_start_imports_neither_wrapt_nor_importlib_metadata(http_server):
    """Both cost tens of ms; they load when the first client library is imported, not before."""
    code = textwrap.dedent(
        """
        import json, sys
        before = {name: name in sys.modules for name in ("wrapt", "importlib.metadata", "kapatch.runtime")}
        import urllib3
        from urllib3.connection import HTTPConnection
        runtime = "kapatch.runtime" in sys.modules  # installed by urllib3's import, not by status()
        import kapatch
        after = {"wrapt": "wrapt" in sys.modules, "runtime": runtime,
                 "patched": kapatch.status().adapter("urllib3").reason}
        print(json.dumps({"before": before, "after": after}))
        """
    )
    done = _python(code, KAPATCH_ENABLED="1")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["before"] == {"wrapt": False, "importlib.metadata": False, "kapatch.runtime": False}
    assert result["after"] == {"wrapt": True, "runtime": True, "patched": "patched"}


# What an enabled start may add to a disabled one, besides kapatch's own modules: C
# modules and tiny pure-Python ones. Everything else (typing, re, enum, logging,
# threading, functools, dataclasses, socket, ...) costs milliseconds each at start; see
# benchmarks/startup.py for the figures.
ALLOWED_AT_START = {"_socket", "errno", "__future__"}


def _python(code: str, **environ: str) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh interpreter whose only KAPATCH_* variables are *environ*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**env, **environ},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )


def _modules_at_start(environ: dict[str, str], program: str = "") -> set[str]:
    code = f"import sys\nstart = set(sys.modules)\n{program}\nprint(' '.join(sorted(start)))"
    done = _python(code, **environ)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_enabled_start_adds_only_kapatch_and_a_few_c_modules():
    disabled = _modules_at_start({})
    enabled = _modules_at_start(
        {"KAPATCH_ENABLED": "1", "KAPATCH_IDLE": "45s", "KAPATCH_EXCLUDE": "*.internal"}
    )
    assert "kapatch.config" in enabled  # it did start (the runtime waits for a network import)
    added = {
        name for name in enabled - disabled if name != "_kapatch_gate" and not name.startswith("kapatch")
    }
    assert added <= ALLOWED_AT_START, sorted(added - ALLOWED_AT_START)


def test_a_start_without_rules_or_claims_loads_neither():
    """Rules load with the first rule (or decision), contextvars with the first library claim,
    the socket read and the ledger with the first connection, and an opt-in adapter left off
    is not loaded even when its trigger (socket) is imported."""
    program = (
        "import socket, sys; print(' '.join(sorted(sys.modules)))\n"
        "with socket.create_server(('127.0.0.1', 0)) as server:\n"
        "    socket.create_connection(server.getsockname()).close()\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    done = _python(program, KAPATCH_ENABLED="1")
    assert done.returncode == 0, done.stderr
    at_start, after_a_connection = (set(line.split()) for line in done.stdout.splitlines())
    assert "kapatch._first_use" in at_start  # it did start: stand-ins wait on socket.socket
    assert "kapatch.adapters.socket" in after_a_connection
    first_connection = {"kapatch._respect", "kapatch._ledger"}
    assert not {"kapatch.rules", "kapatch._memo", "contextvars", "kapatch.adapters.inbound"} & at_start
    assert not first_connection & at_start
    assert first_connection <= after_a_connection


def test_the_runtime_waits_for_the_first_use_of_socket():
    """At start the configuration is read and validated; importing socket puts stand-ins on
    the methods kapatch hooks, and the first call to one installs the runtime (connect path,
    adapters' interface, _socket): that very connection carries the policy."""
    code = textwrap.dedent(
        """
        import sys
        before = sorted(m for m in ("kapatch.config", "kapatch.runtime", "_socket") if m in sys.modules)
        import socket
        standing_in = [name for name in ("connect", "connect_ex", "listen") if name in vars(socket.socket)]
        print(before, "kapatch.runtime" in sys.modules, standing_in)
        server = socket.socket()  # bound and listening without listen(): nothing installs yet
        server.bind(("127.0.0.1", 0))
        print("kapatch.runtime" in sys.modules)
        server.listen()
        client = socket.socket()
        client.connect(server.getsockname())
        hooks = {name: hasattr(vars(socket.socket).get(name), "__kapatch_hook__")
                 for name in ("connect", "connect_ex", "listen")}
        print("kapatch.runtime" in sys.modules, hooks)
        print(client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
              client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE))
        import kapatch
        print(kapatch.status().adapter("socket").counts["configured"])
        """
    )
    done = _python(code, KAPATCH_ENABLED="1", KAPATCH_MODE="override")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "['kapatch.config'] False ['connect', 'connect_ex', 'listen']",
        "False",
        # listen() installed it; listen is not hooked (the inbound adapter is off): its
        # stand-in is gone, and connect and connect_ex carry the runtime's hook
        "True {'connect': True, 'connect_ex': True, 'listen': False}",
        "1 60",  # the balanced profile's idle
        "1",
    ]


def test_the_first_connection_of_each_of_many_threads_carries_the_policy():
    """Threads that meet the stand-in while another installs wait for the install."""
    code = textwrap.dedent(
        """
        import socket, threading
        server = socket.create_server(("127.0.0.1", 0), backlog=64)
        barrier, idles = threading.Barrier(8), []
        def connect():
            barrier.wait()
            sock = socket.create_connection(server.getsockname())
            idles.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE))
        threads = [threading.Thread(target=connect) for _ in range(8)]
        for thread in threads: thread.start()
        for thread in threads: thread.join(30)
        import kapatch
        print(sorted(idles), kapatch.status().adapter("socket").counts["configured"])
        """
    )
    done = _python(code, KAPATCH_ENABLED="1", KAPATCH_IDLE="77", KAPATCH_MODE="override")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[77,", *["77,"] * 6, "77]", "8"]


def test_a_stand_in_kept_by_reference_goes_through_the_hook_once():
    """A library that kept socket.socket.connect before the first connection holds the
    stand-in: after the install it leads to the runtime's hook, counted once per connection."""
    code = textwrap.dedent(
        """
        import socket
        kept = socket.socket.connect
        server = socket.create_server(("127.0.0.1", 0))
        first = socket.create_connection(server.getsockname())  # installs
        sock = socket.socket()
        kept(sock, server.getsockname())
        import kapatch
        print(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
              kapatch.status().adapter("socket").counts["configured"], kept is socket.socket.connect)
        """
    )
    done = _python(code, KAPATCH_ENABLED="1", KAPATCH_IDLE="66", KAPATCH_MODE="override")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["66", "2", "False"]


def test_the_runtime_waits_for_the_first_loop_to_run():
    """asyncio's import puts a stand-in on _set_running_loop: a loop that starts running
    installs the runtime, and a loop kapatch does not know is still reported."""
    code = textwrap.dedent(
        """
        import asyncio, sys
        print("kapatch.runtime" in sys.modules)
        class ForeignLoop(asyncio.SelectorEventLoop.__mro__[-2]):  # AbstractEventLoop
            pass
        asyncio.events._set_running_loop(ForeignLoop())  # as a third-party loop does
        asyncio.events._set_running_loop(None)
        import kapatch
        counts = kapatch.status().adapter("eventloops").counts
        print("kapatch.runtime" in sys.modules, counts["uncovered"])
        asyncio.run(asyncio.sleep(0))  # asyncio's own loop: known, not counted
        print(kapatch.status().adapter("eventloops").counts["uncovered"])
        """
    )
    done = _python(code, KAPATCH_ENABLED="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["False", "True 1", "1"]
    assert "ForeignLoop is not one kapatch knows" in done.stderr


def test_uninstall_after_a_waiting_start_leaves_socket_and_asyncio_as_they_were():
    code = textwrap.dedent(
        """
        import asyncio, socket, _asyncio
        import kapatch
        kapatch.uninstall()
        print([name for name in ("connect", "connect_ex", "listen") if name in vars(socket.socket)],
              asyncio.events._set_running_loop is _asyncio._set_running_loop,
              asyncio._set_running_loop is _asyncio._set_running_loop)
        """
    )
    done = _python(code, KAPATCH_ENABLED="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "True", "True"]


def test_the_stand_ins_cover_what_the_adapters_waiting_for_them_hook():
    """_registry.FIRST_USE must stand in for every hook of the adapters its modules trigger:
    a hook without a stand-in would first run after some other trigger installed kapatch."""
    from kapatch._registry import FIRST_USE, LAZY_ADAPTERS
    from kapatch._socket_hooks import HOOKED_METHODS
    from kapatch.runtime import _load

    stood_in = {name for entries in FIRST_USE.values() for _, _, names in entries for name in names}
    for name, (target, modules) in LAZY_ADAPTERS.items():
        if not set(modules) & set(FIRST_USE):
            continue
        assert set(modules) <= set(FIRST_USE), name  # all of its triggers stand in, or none
        adapter = _load(target)
        for hook in adapter.socket_hooks:
            assert set(HOOKED_METHODS[hook]) <= stood_in, (name, hook)
        if name == "eventloops":
            assert "_set_running_loop" in stood_in


def test_a_bad_setting_is_reported_at_start_though_the_runtime_waits():
    done = _python("pass", KAPATCH_ENABLED="1", KAPATCH_IDLE="soon")
    assert done.returncode == 0
    assert "KAPATCH_IDLE" in done.stderr and "WITHOUT kapatch" in done.stderr
    done = _python("pass", KAPATCH_ENABLED="1", KAPATCH_IDLE="soon", KAPATCH_ON_ERROR="raise")
    assert done.returncode == 78, done.stderr


def test_what_asks_for_the_runtime_finds_kapatch_installed_once():
    """status(), import kapatch.auto, a fork: each sees the start's configuration installed,
    and nothing installs it twice."""
    code = textwrap.dedent(
        """
        import os, sys
        import kapatch.auto  # finds the start's configuration: installs nothing more
        assert "kapatch.runtime" not in sys.modules
        pid = os.fork()
        if pid == 0:  # the child imports socket: installed there, hook included
            import socket
            os._exit(0 if "connect" in vars(socket.socket) else 3)
        _, status = os.waitpid(pid, 0)
        import kapatch
        from kapatch import runtime
        generation = runtime.context().generation
        print(os.waitstatus_to_exitcode(status), kapatch.status().installed, kapatch.status().config.profile)
        import socket
        print(runtime.context().generation == generation, "connect" in vars(socket.socket))
        """
    )
    done = _python(code, KAPATCH_ENABLED="1", KAPATCH_PROFILE="aws")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["0 True aws", "True True"]


def test_a_trigger_fired_while_installing_does_not_install_again(monkeypatch):
    """Installing loads adapters, whose imports could fire another trigger mid-install."""
    from kapatch import _bootstrap, runtime
    from kapatch.config import load_config

    installs = []
    real = runtime.install_config

    def install_config(config):
        installs.append(config)
        _bootstrap.complete_deferred()  # as a trigger module imported mid-install would
        real(config)

    monkeypatch.setattr(runtime, "install_config", install_config)
    monkeypatch.setattr(_bootstrap, "_deferred", [load_config(environ={})])
    try:
        _bootstrap.complete_deferred()
        assert len(installs) == 1
        assert runtime.current_config() is not None
    finally:
        runtime.uninstall()


def test_a_third_party_adapter_installs_the_runtime_at_start():
    """Third parties' adapters are enabled at install: no waiting when one is selected."""
    from kapatch import _registry
    from kapatch.config import Config

    assert _registry.start_triggers(Config(enabled=False)) == ()
    assert "socket" in (_registry.start_triggers(Config()) or ())
    inbound = _registry.LAZY_ADAPTERS["inbound"][0]
    assert _registry.load_when("inbound", inbound, Config()) == _registry.LEFT_OFF
    assert _registry.load_when("inbound", inbound, Config(opted_in=frozenset({"inbound"}))) == ("socket",)
    original = _registry._found
    try:
        _registry._found = {**_registry.adapter_entry_points(), "thirdparty": "somewhere:Adapter"}
        assert _registry.start_triggers(Config()) is None
        assert _registry.start_triggers(Config(disabled_adapters=frozenset({"thirdparty"}))) is not None
    finally:
        _registry._found = original


def test_the_connect_hook_goes_on_when_socket_is_first_imported():
    """Not at start (socket.py costs ~5 ms), but before any socket of the program can connect."""
    code = textwrap.dedent(
        """
        import sys
        import kapatch
        assert "socket" not in sys.modules, "socket was imported at start"
        print(kapatch.status().adapter("socket").reason)
        import socket
        # The hook is set on socket.socket itself; without it both come from _socket.socket.
        print(*(name for name in ("connect", "connect_ex") if name in vars(socket.socket)))
        print(kapatch.status().adapter("socket").reason)
        """
    )
    done = _python(code, KAPATCH_ENABLED="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "waiting for import of socket",
        "connect connect_ex",
        "active (socket.socket.connect hook)",
    ]


def test_enabled_start_loads_no_adapter_module():
    """Adapters load when their library is first imported: none at a start that imports none.

    Nor do sockopts (plans, platforms: needed at the first decision) and importlib.
    """
    enabled = _modules_at_start({"KAPATCH_ENABLED": "1", "KAPATCH_INBOUND": "1"})
    assert "kapatch.config" in enabled
    assert not {"kapatch.sockopts", "kapatch._platforms", "kapatch._plan"} & enabled
    loaded = sorted(n for n in enabled if n.startswith("kapatch.adapters.") and n != "kapatch.adapters._base")
    assert loaded == []


def test_lazy_adapter_table_matches_the_classes():
    """The registry's table says, without importing them, what the adapter classes say."""
    from kapatch._registry import BUILTIN_ADAPTERS, LAZY_ADAPTERS, OPT_IN_ADAPTERS
    from kapatch.runtime import _load

    entry_points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="kapatch.adapters")}
    assert set(LAZY_ADAPTERS) == set(entry_points)
    for name, (target, modules) in LAZY_ADAPTERS.items():
        assert target == entry_points[name] == BUILTIN_ADAPTERS.get(name, target), name
        adapter = _load(target)
        assert adapter.name == name
        assert modules == (adapter.modules or ("socket",)), name
        assert (name in OPT_IN_ADAPTERS) == adapter.opt_in, name
        if not adapter.modules:  # loaded at socket's import: it must need nothing else
            assert adapter.socket_hooks, name


def test_an_adapter_loads_when_its_library_is_imported():
    code = textwrap.dedent(
        """
        import sys
        import kapatch.runtime
        print("kapatch.adapters.redis" in sys.modules)
        import redis
        print("kapatch.adapters.redis" in sys.modules)
        import kapatch
        print(kapatch.status().adapter("redis").reason)
        """
    )
    done = _python(code, KAPATCH_ENABLED="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["False", "True", "patched"]
