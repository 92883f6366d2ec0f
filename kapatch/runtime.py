"""Install and uninstall adapters, decide each connection's policy once, count what happened.

This runs at interpreter start when ``KAPATCH_ENABLED=1``, so it imports no more of the
standard library than it must: ``_thread`` rather than ``threading``, ``_socket`` rather
than ``socket``, logging only when there is something to log. The connect hook goes on
``socket.socket`` when the ``socket`` module is first imported: before any socket can
connect, and without making a process that never opens one import it.
"""

from __future__ import annotations

import _socket
import _thread
import contextvars
import os
import sys

from . import _log
from ._import_hooks import ImportHooks
from ._registry import adapter_entry_points
from .adapters._base import COUNTERS, Adapter, Claim, Decision
from .config import AdapterConfig, Config, load_config
from .policy import Mode
from .rules import Destination, first_match
from .sockopts import apply_plan, compile_plan, not_tcp_reason

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    import socket
    from collections.abc import Mapping
    from types import ModuleType
    from typing import Any

    from ._connect_hook import ConnectHook
    from ._status import Status
    from .policy import Policy

__all__ = ["claim", "current_config", "install", "status", "uninstall"]


_CLAIM: contextvars.ContextVar[Claim | None] = contextvars.ContextVar("kapatch_claim", default=None)


class _Runtime:
    """The one process-wide installation. Every public entry point takes ``_lock``."""

    def __init__(self) -> None:
        self._lock = _thread.RLock()
        self._stats_lock = _thread.allocate_lock()
        self.config: Config | None = None
        self.adapters: dict[str, Adapter] = {}
        self.reasons: dict[str, str] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.logged: set[tuple[str, ...]] = set()
        self.generation = 0
        self._configs: dict[str, AdapterConfig] = {}
        self.connect_hook: ConnectHook | None = None  # made when socket is first imported
        self.import_hooks = ImportHooks()

    # -- install / uninstall -------------------------------------------------
    def install(self, config: Config) -> None:
        with self._lock:
            self._uninstall_locked()
            self.generation += 1
            self.config = config
            self._configs = {}
            level = config.log_level  # set now if logging is loaded, else the moment it is
            self.import_hooks.when_imported("logging", lambda logging: _log.set_level(logging, level))
            if config.enabled:
                for name, target in adapter_entry_points().items():
                    self._configs[name] = config.for_adapter(name)
                    self.counts[name] = dict.fromkeys(COUNTERS, 0)
                    if not config.wants_adapter(name):
                        self.reasons[name] = "not selected by the configuration"
                        continue
                    self._enable(name, target)
                if any(adapter.needs_connect_hook for adapter in self.adapters.values()):
                    generation = self.generation
                    self.import_hooks.when_imported("socket", lambda _: self._hook_connect(generation))

    def _hook_connect(self, generation: int) -> None:
        from ._connect_hook import ConnectHook

        with self._lock:
            if generation != self.generation:
                return  # an import hook from an earlier install()
            if self.connect_hook is None:
                self.connect_hook = ConnectHook(self)
            self.connect_hook.install()
            for adapter in self.adapters.values():
                self.reasons[adapter.name] = self._describe_patch_state(adapter)

    def _enable(self, name: str, target: str) -> None:
        try:
            adapter_class = _load(target)
            reason = adapter_class.unavailable_reason()
        except Exception as error:  # a broken third-party adapter must not stop the others
            self.reasons[name] = f"failed to load {target}: {error!r}"
            _log.warning("kapatch: adapter %s failed to load: %r", name, error)
            return
        if reason is not None:
            self.reasons[name] = reason
            return
        adapter = adapter_class()
        adapter.enable(self)
        self.adapters[name] = adapter
        generation = self.generation
        for module_name in adapter_class.modules:
            self._register_hook(adapter, module_name, generation)
        self.reasons[name] = self._describe_patch_state(adapter)

    def _register_hook(self, adapter: Adapter, module_name: str, generation: int) -> None:
        def on_import(module: ModuleType) -> None:
            if generation != self.generation or self.adapters.get(adapter.name) is not adapter:
                return  # a hook from an earlier install()
            try:
                adapter.patch(module_name)
            except Exception as error:  # never break the application's import
                self.record_failure(adapter.name, f"patching {module_name}", error)
            else:
                self.reasons[adapter.name] = self._describe_patch_state(adapter)

        self.import_hooks.when_imported(module_name, on_import)

    def _describe_patch_state(self, adapter: Adapter) -> str:
        if not adapter.modules:
            if not adapter.needs_connect_hook:
                return "active"
            if self.connect_hook is None or not self.connect_hook.installed:
                return "waiting for import of socket"
            return "active (socket.socket.connect hook)"
        if adapter.patched:
            return "patched"
        return "waiting for import of " + " or ".join(adapter.modules)

    def uninstall(self) -> None:
        with self._lock:
            self._uninstall_locked()

    def _uninstall_locked(self) -> None:
        for adapter in reversed(list(self.adapters.values())):
            try:
                adapter.disable()
            except Exception as error:
                _log.warning("kapatch: restoring adapter %s failed: %r", adapter.name, error)
        if self.connect_hook is not None:
            self.connect_hook.remove()
        self.import_hooks.clear()
        self.adapters.clear()
        self.reasons.clear()
        self.config = None
        self._configs = {}
        self.generation += 1

    def status(self) -> Status:
        from types import MappingProxyType

        from ._status import AdapterStatus, Status  # not needed until someone asks

        with self._lock:
            if self.config is None:
                return Status(installed=False, config=None)
            entries = []
            for name, target in adapter_entry_points().items():
                adapter_config = self._configs.get(name) or self.config.for_adapter(name)
                adapter = self.adapters.get(name)
                version = adapter.installed_version() if adapter else _version_for(target)
                entries.append(
                    AdapterStatus(
                        name=name,
                        enabled=adapter is not None,
                        reason=self.reasons.get(name, "kapatch is disabled (enabled = false)"),
                        version=version,
                        supported=adapter.supported_range() if adapter else "",
                        policy=adapter_config.policy,
                        mode=adapter_config.mode,
                        counts=MappingProxyType(dict(self.counts.get(name, dict.fromkeys(COUNTERS, 0)))),
                    )
                )
            return Status(installed=True, config=self.config, adapters=tuple(entries))

    # -- the AdapterContext the adapters call --------------------------------
    def config_for(self, adapter: str) -> AdapterConfig:
        found = self._configs.get(adapter)
        if found is None:
            config = self.config or Config()
            found = config.for_adapter(adapter)
        return found

    def decide(self, adapter: str, destination: Destination, *, explicit: bool) -> Decision:
        decision = self._decide(adapter, destination, explicit=explicit)
        self._count(adapter, _COUNTER_FOR[decision.action])
        return decision

    def _decide(self, adapter: str, destination: Destination, *, explicit: bool) -> Decision:
        adapter_config = self.config_for(adapter)
        policy = adapter_config.policy
        rule = first_match(self.config.rules if self.config else (), adapter, destination)
        if rule is not None:
            if rule.action == "skip":
                return Decision("skip", reason=f"rule {rule.describe()}")
            policy = rule.policy_for(policy)
        if not policy.enabled:
            return Decision("skip", reason="policy disabled")
        if explicit and adapter_config.mode is Mode.RESPECT:
            return Decision("respect", reason="the application configured keepalive itself")
        return Decision("apply", policy)

    def configure_socket(
        self, sock: socket.socket, adapter: str, destination: Destination, *, explicit: bool | None
    ) -> Decision:
        try:
            if explicit is None:
                explicit = bool(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE))
            decision = self._decide(adapter, destination, explicit=explicit)
            if decision.action != "apply" or decision.policy is None:
                self._count(adapter, _COUNTER_FOR[decision.action])
                return decision
            result = apply_plan(sock, compile_plan(decision.policy))
        except Exception as error:  # e.g. a closed socket; the connect goes on regardless
            self.record_failure(adapter, "configuring a socket", error)
            return Decision("skip", reason=f"error: {error!r}")
        for option, refusal in result.failed:
            self.record_failure(adapter, f"setsockopt {option}", refusal, count=False)
        for note in result.unsupported:
            self._log_once(("unsupported", note), _log.INFO, "kapatch: %s", note)
        self._count(adapter, "configured" if result.ok else "failed")
        return decision

    def claim(
        self, adapter: str, host: str | None, port: int | None, *, explicit: bool | None = None
    ) -> _ClaimBlock:
        return _ClaimBlock(Claim(adapter, host, port, explicit))

    def reapply(self, sock: socket.socket, adapter: str, policy: Policy) -> None:
        try:
            result = apply_plan(sock, compile_plan(policy))
        except Exception as error:
            self.record_failure(adapter, "re-applying the policy", error)
            return
        for option, refusal in result.failed:
            self.record_failure(adapter, f"setsockopt {option}", refusal)

    def record_failure(self, adapter: str, what: str, error: BaseException, *, count: bool = True) -> None:
        key = (adapter, what, type(error).__name__, str(getattr(error, "errno", "")))
        self._log_once(key, _log.WARNING, "kapatch: %s adapter: %s failed: %r", adapter, what, error)
        if count:
            self._count(adapter, "failed")

    # -- the one connect hook every socket-based adapter shares -----------------
    def on_connect(self, sock: socket.socket, address: Any) -> None:
        """Called by the socket adapter before ``connect()``; never raises."""
        try:
            if not_tcp_reason(sock) is not None:
                return
            host, port = _host_port(address)
            owner = _CLAIM.get()
            if owner is not None and owner.adapter not in self.adapters:
                owner = None  # claimed by an adapter that is no longer enabled
            if owner is None:
                if "socket" not in self.adapters:
                    return
                destination = Destination(host=host, address=host, port=port)
                self.configure_socket(sock, "socket", destination, explicit=None)
                return
            destination = Destination(host=owner.host or host, address=host, port=owner.port or port)
            owner.decisions.append(
                self.configure_socket(sock, owner.adapter, destination, explicit=owner.explicit)
            )
        except Exception as error:
            self.record_failure("socket", "connect hook", error)

    # -- bookkeeping ---------------------------------------------------------
    def _count(self, adapter: str, counter: str) -> None:
        with self._stats_lock:
            counts = self.counts.get(adapter)
            if counts is None:
                counts = self.counts[adapter] = dict.fromkeys(COUNTERS, 0)
            counts[counter] += 1

    def _log_once(self, key: tuple[str, ...], level: int, message: str, *args: object) -> None:
        with self._stats_lock:
            if key in self.logged:
                return
            self.logged.add(key)
        _log.log(level, message, *args)

    def after_fork_in_child(self) -> None:
        """Locks held by another thread at fork time would never be released in the child."""
        self._lock = _thread.RLock()
        self._stats_lock = _thread.allocate_lock()
        self.counts = {name: dict.fromkeys(COUNTERS, 0) for name in self.counts}
        self.logged = set()


_COUNTER_FOR = {"apply": "configured", "respect": "respected", "skip": "skipped"}


class _ClaimBlock:
    """``with context.claim(...) as record:``; a class, not contextlib's decorator (~1.4 ms at start)."""

    __slots__ = ("_record", "_token")

    def __init__(self, record: Claim) -> None:
        self._record = record

    def __enter__(self) -> Claim:
        self._token = _CLAIM.set(self._record)
        return self._record

    def __exit__(self, *_: object) -> None:
        _CLAIM.reset(self._token)


def _host_port(address: Any) -> tuple[str | None, int | None]:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return (host if isinstance(host, str) else None, port if isinstance(port, int) else None)
    return None, None


def _load(target: str) -> type[Adapter]:
    module_name, _, attribute = target.partition(":")
    __import__(module_name)
    adapter_class = getattr(sys.modules[module_name], attribute)
    if not (isinstance(adapter_class, type) and issubclass(adapter_class, Adapter)):
        raise TypeError(f"{target} is not a kapatch.adapters.Adapter subclass")
    return adapter_class


def _version_for(target: str) -> str | None:
    try:
        return _load(target).installed_version()
    except Exception:
        return None


_RUNTIME = _Runtime()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RUNTIME.after_fork_in_child)


def install(
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
    rules: Any = (),
    **settings: object,
) -> Status:
    """Enable kapatch for this process; idempotent, thread-safe; raises :class:`ConfigError`.

    *settings* take the TOML key names (``profile="aws"``, ``idle="45s"``,
    ``mode="override"``, ``adapters=["redis"]``, ``exclude=["10.0.0.0/8"]``,
    ``config="kapatch.toml"``, ...) and win over the environment and the file.
    Calling it again re-reads everything and reconfigures.
    """
    config = load_config(environ=environ, overrides=overrides, rules=rules, **settings)
    _RUNTIME.install(config)
    return _RUNTIME.status()


def install_config(config: Config) -> None:
    """Install an already merged :class:`Config` (the automatic path: no status built)."""
    _RUNTIME.install(config)


def uninstall() -> None:
    """Restore every patched object exactly; the next connection is as without kapatch."""
    _RUNTIME.uninstall()


def status() -> Status:
    """Each adapter: enabled or why not, version, effective policy, counters."""
    return _RUNTIME.status()


def current_config() -> Config | None:
    return _RUNTIME.config


def context() -> _Runtime:
    """The AdapterContext adapters receive; exposed for tests and third-party adapters."""
    return _RUNTIME


claim = _RUNTIME.claim
