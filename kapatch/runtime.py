"""Install and uninstall adapters, decide each connection's policy once, count what happened.

This runs at interpreter start when ``KAPATCH_ENABLED=1``, so it imports no more of the
standard library than it must: ``_thread`` rather than ``threading``, ``_socket`` rather
than ``socket``, logging only when there is something to log. The connect hook goes on
``socket.socket`` when the ``socket`` module is first used (``kapatch._first_use``) or, for
a program that installs kapatch itself, first imported: before any socket can connect,
and without making a process that never opens one import it.
"""

from __future__ import annotations

import _thread
import errno
import itertools as _itertools
import os
import sys

from . import _log
from ._fast_path import OPEN_CLAIMS, claim_closed, claim_opened
from ._import_hooks import HOOKS
from ._registry import LEFT_OFF, adapter_entry_points, load_when
from ._tcp import not_tcp_reason
from .adapters._base import COUNTERS, POOL_COUNTERS, Adapter, Claim, Decision
from .config import AdapterConfig, Config, load_config
from .policy import Mode

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    import contextvars
    import socket
    from collections.abc import Mapping
    from types import ModuleType
    from typing import Any, TypeAlias

    from . import _ledger, _respect
    from . import rules as _rules
    from . import sockopts as _sockopts
    from ._fast_path import Entry, Table
    from ._ledger import Note
    from ._plan import Plan
    from ._socket_hooks import SocketHooks
    from ._status import Status
    from .policy import Policy
    from .rules import Destination  # loaded at the first decision, not at interpreter start
    from .sockopts import ApplyResult

    _Ops: TypeAlias = tuple[tuple[int, int, int], ...]
    # A decision as the connect hook uses it: (decision, its options or None, the ledger's
    # note, the counter it adds to).
    _Made: TypeAlias = tuple[Decision, _Ops | None, Note, str]
    # Per adapter: (the decision per chosen mask or None until made; the table published to
    # the stdlib connect hook, see _fast_path, whose first item is the sockets' read).
    _Tally: TypeAlias = _itertools.count[int]
    _Hot: TypeAlias = tuple[list[_Made | None], Table]

__all__ = ["claim", "current_config", "install", "status", "uninstall"]


class _OnFirstUse:
    """A sibling module in this module's globals, imported at its first attribute read.

    The global then holds the module itself, so later reads are plain attribute reads: an
    ``import`` statement inside a function costs ~1 us at every call, which per-connection
    paths cannot pay.
    """

    __slots__ = ("_global", "_module")

    def __init__(self, module: str, bound_as: str) -> None:
        self._module = f"{__package__}.{module}"
        self._global = bound_as

    def __getattr__(self, attribute: str) -> Any:
        __import__(self._module)
        module = sys.modules[self._module]
        globals()[self._global] = module
        return getattr(module, attribute)


if not TYPE_CHECKING:
    # Needed from the first decision on, not at interpreter start: the socket read (respect
    # mode) and the ledger (~1.4M instructions there for a program that imports socket), the
    # rules, and sockopts (plans, platforms; the common path writes precompiled triples).
    _respect = _OnFirstUse("_respect", "_respect")
    _ledger = _OnFirstUse("_ledger", "_ledger")
    _rules = _OnFirstUse("rules", "_rules")
    _sockopts = _OnFirstUse("sockopts", "_sockopts")


_CLAIM: list[contextvars.ContextVar[Claim | None]] = []
"""The context variable of library adapters' claims, made at the first claim (contextvars is
not imported before): until then no context can hold one, and the connect hook skips the lookup."""


class _Runtime:
    """The one process-wide installation. Every public entry point takes ``_lock``."""

    def __init__(self) -> None:
        self._lock = _thread.RLock()
        self._stats_lock = _thread.allocate_lock()
        self.config: Config | None = None
        self._enabled: dict[str, Adapter] = {}  # loaded and enabled, in the order they were
        self._pending: dict[str, str] = {}  # selected built-ins not loaded yet -> class target
        self.reasons: dict[str, str] = {}
        # adapter -> COUNTERS -> a tally: counted with one next() (atomic under the GIL), no lock
        self.counts: dict[str, dict[str, _Tally]] = {}
        self.kept: dict[str, dict[str, int]] = {}  # adapter -> field -> connections that kept it
        self.pool_counts: dict[str, dict[str, int]] = {}  # adapter -> POOL_COUNTERS -> events
        self.logged: set[tuple[str, ...]] = set()
        self.generation = 0
        self._configs: dict[str, AdapterConfig] = {}
        # (adapter, chosen) -> (decision, its options as (level, option, value), or None: full path)
        self._fast: dict[tuple[str, frozenset[str]], _Made] = {}
        # adapter -> the unclaimed connect path's table (see _Hot)
        self._hot: dict[str, _Hot] = {}
        # adapter -> the cell its connect hook reads its published table from (see _fast_path);
        # cells outlive reinstalls (hooks hold them), their contents do not
        self._cells: dict[str, list[Table | None]] = {}
        self.socket_hooks: SocketHooks | None = None  # made when socket is first imported
        self.import_hooks = HOOKS  # shared with a start that waits for the first network import

    # -- install / uninstall -------------------------------------------------
    def install(self, config: Config) -> None:
        with self._lock:
            self._uninstall_locked()
            self.generation += 1
            self.config = config
            self._forget_decisions()
            level = config.log_level  # set now if logging is loaded, else the moment it is
            self.import_hooks.when_imported("logging", lambda logging: _log.set_level(logging, level))
            if config.enabled:
                generation = self.generation
                for name, target in adapter_entry_points().items():
                    self.counts[name] = _tallies()
                    self.kept.pop(name, None)
                    self.pool_counts.pop(name, None)
                    triggers = load_when(name, target, config)
                    if triggers is None:
                        self._enable(name, target)  # a third party's: its modules are known once loaded
                        continue
                    if isinstance(triggers, str):  # never loaded: not selected, or opt-in and left off
                        self.reasons[name] = _off_unless_turned_on(name) if triggers == LEFT_OFF else triggers
                        continue
                    # A built-in: loaded (with its library's version check) when one of its
                    # modules is first imported, or when someone asks (status, audit).
                    self._pending[name] = target
                    self.reasons[name] = "waiting for import of " + " or ".join(triggers)
                    for module_name in triggers:
                        self._register_load(name, module_name, generation)
                self._sync_socket_hooks(generation)

    def _register_load(self, name: str, module_name: str, generation: int) -> None:
        def on_import(_: ModuleType) -> None:
            with self._lock:
                if generation == self.generation:
                    self._load_pending(name)

        self.import_hooks.when_imported(module_name, on_import)

    def _load_pending(self, name: str) -> None:
        """Load and enable a pending built-in adapter; its hooks patch what is imported already."""
        target = self._pending.pop(name, None)
        if target is None:
            return  # loaded already, or never selected
        self._enable(name, target)
        adapter = self._enabled.get(name)
        if adapter is not None and adapter.socket_hooks:
            self._sync_socket_hooks(self.generation)

    def load_pending(self) -> None:
        """Load every selected built-in adapter not loaded yet (status and audit report them all)."""
        with self._lock:
            for name in list(self._pending):
                self._load_pending(name)

    @property
    def adapters(self) -> dict[str, Adapter]:
        """The enabled adapters, every selected one loaded first."""
        self.load_pending()
        return self._enabled

    def _sync_socket_hooks(self, generation: int) -> None:
        """Hook socket.socket (when socket is imported) for what the loaded adapters ask for."""
        hooks: frozenset[str] = frozenset().union(*(a.socket_hooks for a in self._enabled.values()))
        installed = self.socket_hooks.installed if self.socket_hooks is not None else frozenset()
        if hooks and not hooks <= installed:
            self.import_hooks.when_imported("socket", lambda _: self._hook_socket(generation))

    def _hook_socket(self, generation: int) -> None:
        from ._socket_hooks import SocketHooks

        with self._lock:
            if generation != self.generation:
                return  # an import hook from an earlier install()
            hooks: frozenset[str] = frozenset().union(*(a.socket_hooks for a in self._enabled.values()))
            if self.socket_hooks is None:
                self.socket_hooks = SocketHooks(self)
            self.socket_hooks.install(hooks)
            for adapter in self._enabled.values():
                self.reasons[adapter.name] = self._describe_patch_state(adapter)

    def _enable(self, name: str, target: str) -> None:
        try:
            adapter_class = _load(target)
            reason = adapter_class.unavailable_reason()
        except Exception as error:  # a broken third-party adapter must not stop the others
            self.reasons[name] = f"failed to load {target}: {error!r}"
            _log.warning("kapatch: adapter %s failed to load: %r", name, error)
            return
        if reason is None and adapter_class.opt_in and self.config and name not in self.config.opted_in:
            reason = _off_unless_turned_on(name)
        if reason is not None:
            self.reasons[name] = reason
            return
        adapter = adapter_class()
        adapter.enable(self)
        self._enabled[name] = adapter
        self._say_pool_gaps(adapter)
        generation = self.generation
        for module_name in adapter_class.modules:
            self._register_hook(adapter, module_name, generation)
        self.reasons[name] = self._describe_patch_state(adapter)

    def _register_hook(self, adapter: Adapter, module_name: str, generation: int) -> None:
        def on_import(module: ModuleType) -> None:
            if generation != self.generation or self._enabled.get(adapter.name) is not adapter:
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
            if not adapter.socket_hooks:
                return "active"
            installed = self.socket_hooks.installed if self.socket_hooks is not None else frozenset()
            if not adapter.socket_hooks <= installed:
                return "waiting for import of socket"
            return f"active (socket.socket.{'/'.join(sorted(adapter.socket_hooks))} hook)"
        if adapter.patched:
            return "patched"
        return "waiting for import of " + " or ".join(adapter.modules)

    def uninstall(self) -> None:
        with self._lock:
            self._uninstall_locked()

    def _uninstall_locked(self) -> None:
        for adapter in reversed(list(self._enabled.values())):
            try:
                adapter.disable()
            except Exception as error:
                _log.warning("kapatch: restoring adapter %s failed: %r", adapter.name, error)
        if self.socket_hooks is not None:
            self.socket_hooks.remove()
        self.import_hooks.clear()
        self._enabled.clear()
        self._pending.clear()
        self.reasons.clear()
        self.config = None
        self._forget_decisions()
        self.generation += 1

    def status(self) -> Status:
        from types import MappingProxyType

        from ._status import AdapterStatus, Status  # not needed until someone asks

        with self._lock:
            if self.config is None:
                return Status(installed=False, config=None)
            self.load_pending()
            entries = []
            for name, target in adapter_entry_points().items():
                adapter_config = self.config_for(name)
                adapter = self._enabled.get(name)
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
                        counts=MappingProxyType(_read_tallies(self.counts.get(name))),
                        kept=MappingProxyType(dict(self.kept.get(name, {}))),
                        pool=MappingProxyType(
                            {**dict.fromkeys(POOL_COUNTERS, 0), **self.pool_counts.get(name, {})}
                        ),
                        pool_support=pool_support(adapter, adapter_config.policy) if adapter else "",
                    )
                )
            return Status(installed=True, config=self.config, adapters=tuple(entries))

    # -- the AdapterContext the adapters call --------------------------------
    def config_for(self, adapter: str) -> AdapterConfig:
        found = self._configs.get(adapter)
        if found is None:  # made on first use: an install does not build one per known adapter
            config = self.config
            found = (config or Config()).for_adapter(adapter)
            if config is not None:
                with self._stats_lock:
                    if self.config is config:  # see _forget_decisions
                        self._configs[adapter] = found
        return found

    def decide(self, adapter: str, destination: Destination, *, chosen: frozenset[str]) -> Decision:
        decision = self._decide(adapter, destination, chosen)
        self._count_decision(adapter, decision, _COUNTER_FOR[decision.action])
        return decision

    def _decide(self, adapter: str, destination: Destination, chosen: frozenset[str]) -> Decision:
        adapter_config = self.config_for(adapter)
        policy = adapter_config.policy
        rules = self.config.rules if self.config else ()
        rule = _rules.first_match(rules, adapter, destination) if rules else None
        if rule is not None:
            if rule.action == "skip":
                return Decision("skip", reason=f"rule {rule.describe()}")
            policy = rule.policy_for(policy)
        if not policy.enabled:
            return Decision("skip", reason="policy disabled")
        if not chosen or adapter_config.mode is not Mode.RESPECT:
            return Decision("apply", policy)
        written = _respect.fields_written(policy)
        kept = chosen & written
        if not kept:
            return Decision("apply", policy)
        reason = "the application chose " + ", ".join(sorted(kept))
        if kept == written:
            return Decision("respect", policy, reason=reason, kept=kept)
        return Decision("apply", policy, reason=reason, kept=kept)

    def policy_for(self, adapter: str, destination: Destination) -> Decision:
        """What kapatch would decide for a connection nobody configured (not counted)."""
        return self._decide(adapter, destination, _respect.NOTHING)

    def configure_socket(
        self,
        sock: socket.socket,
        adapter: str,
        destination: Destination,
        *,
        chosen: frozenset[str] | None = None,
    ) -> Decision:
        where = destination
        return self._configure(sock, adapter, chosen, host=where.host, address=where.address, port=where.port)

    def _configure(
        self,
        sock: socket.socket,
        adapter: str,
        chosen: frozenset[str] | None,
        *,
        host: str | None,
        address: str | None,
        port: int | None,
    ) -> Decision:
        """configure_socket(), with a fast path: where no rule can apply, the decision depends
        only on (adapter, chosen), is made once, and its options are a precompiled tuple."""
        try:
            if chosen is None:
                chosen = self._chosen_on(sock, adapter)
                if chosen is None:
                    # Closed, or not really TCP (fromfd of a UDP socket): the application's
                    # own call is about to fail or does not need keepalive. Nothing to say.
                    self._count(adapter, "skipped")
                    return _UNREADABLE
            fast = self._fast.get((adapter, chosen))
            if fast is None:
                destination = _destination(host=host, address=address, port=port)
                fast = self._decide_once(adapter, chosen, destination)
            return self._carry_out(sock, adapter, fast)
        except Exception as error:  # e.g. a closed socket; the connect goes on regardless
            self.record_failure(adapter, "configuring a socket", error)
            return Decision("skip", reason=f"error: {error!r}")

    def _carry_out(self, sock: socket.socket, adapter: str, made: _Made) -> Decision:
        """Note, write and count one connection's decision; raises only what the caller catches."""
        decision, ops, note, counter = made
        _ledger.note_made(sock, note)  # for kapatch.audit
        if ops is not None:
            try:
                for level, option, value in ops:
                    sock.setsockopt(level, option, value)
            except OSError as error:
                if error.errno in _UNUSABLE_SOCKET:  # closed under us: the application's own call fails
                    self._count(adapter, "skipped")
                    return _UNREADABLE
            else:  # the full path below says which option the kernel refused, and why
                self._count_decision(adapter, decision, counter)
                return decision
        if decision.policy is None:  # pragma: no cover - an apply decision always has a policy
            self._count_decision(adapter, decision, counter)
            return decision
        result = apply_decided(sock, decision.policy, decision.kept)
        for name, refusal in result.failed:
            self.record_failure(adapter, f"setsockopt {name}", refusal, count=False)
        for message in result.unsupported:
            self._log_once(("unsupported", message), _log.INFO, "kapatch: %s", message)
        self._count_decision(adapter, decision, "configured" if result.ok else "failed")
        return decision

    def _chosen_on(self, sock: socket.socket, adapter: str) -> frozenset[str] | None:
        """What the socket says was chosen (nothing to read in override mode); ``None``: unreadable."""
        if self.config_for(adapter).mode is Mode.OVERRIDE:
            return _respect.NOTHING  # every field is written
        try:
            return _respect.chosen_on_socket(sock)
        except OSError:
            return None

    def _decide_once(self, adapter: str, chosen: frozenset[str], destination: Destination) -> _Made:
        """Decide, and remember it for (adapter, chosen) where no rule can make it depend on more."""
        config = self.config
        decision = self._decide(adapter, destination, chosen)
        ops = _simple_ops(decision)
        counter = _COUNTER_FOR[decision.action]
        found = (decision, ops, (adapter, decision.action, decision.kept), counter)
        if self._no_rule_for(adapter):
            plain = ops is not None and not decision.kept  # what the stdlib hook can do on its own
            entry = self._entry(adapter, found) if plain else None
            mask = _respect.MASK_OF.get(chosen)
            with self._stats_lock:
                if self.config is not config:  # reinstalled meanwhile: this connection's alone
                    return found
                self._fast[(adapter, chosen)] = found
                hot = self._hot.get(adapter)
                if hot is not None and mask is not None:
                    made, (_, entries, _) = hot
                    made[mask] = found
                    entries[mask] = entry
        return found

    def _entry(self, adapter: str, made: _Made) -> Entry:
        """*made* as the stdlib connect hook applies it (see _fast_path)."""
        _, ops, note, counter = made
        assert ops is not None
        with self._stats_lock:
            tally = self._tallies_of(adapter)[counter]

        def refused(sock: Any) -> None:
            # A write refused (or the socket closed under us): the full path says which
            # option, and why, and counts the connection.
            try:
                self._carry_out(sock, adapter, made)
            except Exception as error:
                self.record_failure(adapter, "configuring a socket", error)

        return (ops, note, tally, refused)

    def table_cell(self, adapter: str) -> list[Table | None]:
        """The cell *adapter*'s connect hook reads its published table from (see _fast_path)."""
        with self._stats_lock:
            return self._cells.setdefault(adapter, [None])

    def _forget_decisions(self) -> None:
        """Drop what was decided under the configuration just replaced (or with a forked
        parent's tallies); called after ``self.config`` changed.

        A connection in another thread may be deciding under the old configuration as this
        runs: each cache checks, under the same lock, that ``self.config`` is still the one
        it decided under before it keeps anything, so nothing stale outlives this.
        """
        with self._stats_lock:
            self._configs = {}
            self._fast = {}
            self._hot = {}
            for cell in self._cells.values():
                cell[0] = None

    def _no_rule_for(self, adapter: str) -> bool:
        """Whether no rule of the configuration can apply to *adapter*'s connections."""
        rules = self.config.rules if self.config else ()
        return all(rule.adapters is not None and adapter not in rule.adapters for rule in rules)

    def claim(
        self, adapter: str, host: str | None, port: int | None, *, chosen: frozenset[str] | None = None
    ) -> _ClaimBlock:
        if not _CLAIM:
            with self._stats_lock:
                if not _CLAIM:
                    import contextvars

                    _CLAIM.append(contextvars.ContextVar("kapatch_claim", default=None))
        return _ClaimBlock(Claim(adapter, host, port, chosen))

    def reapply(self, sock: socket.socket, adapter: str, decision: Decision) -> None:
        if decision.action != "apply" or decision.policy is None:
            return
        try:
            result = apply_decided(sock, decision.policy, decision.kept)
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

    def warn_uncovered(self, adapter: str, what: str) -> None:
        """Say once that connections made through *what* cannot carry the policy (a silent miss)."""
        self._log_once(("uncovered", adapter, what), _log.WARNING, "kapatch: %s adapter: %s", adapter, what)
        self._count(adapter, "uncovered")

    # -- the shared hooks on socket.socket, and the paths that connect elsewhere ---
    def on_connect(  # noqa: PLR0911 - each way out says why the connection is not configured here
        self, sock: socket.socket, address: Any, default_adapter: str = "socket"
    ) -> None:
        """A TCP socket is about to connect to *address* (or has just, where a path connects in C).

        The library adapter claiming the current context decides; otherwise
        *default_adapter*, the adapter of the path itself (``socket`` for the stdlib
        class, ``gevent``, ``uvloop``). Never raises.

        The stdlib class's common case never gets here: its hook applies the table this
        publishes (see _fast_path). What does: the first connection of each kind, claims,
        decisions that need more than plain writes, and the paths that are not the stdlib
        class's. A decision made already is one list index away; the rest is decided.
        *default_adapter* is keyword-only in the interface (``AdapterContext``) but not
        here: a keyword-only default is looked up by name at each call (~200 instructions
        per connection under callgrind), a positional one is not.
        """
        try:
            if not_tcp_reason(sock) is not None:
                return
            if OPEN_CLAIMS[0] and _CLAIM[0].get() is not None:
                self._on_claimed(sock, address, default_adapter)
                return
            try:
                hot = self._hot[default_adapter]
            except KeyError:
                if default_adapter not in self._enabled:
                    return
                hot = self._hot_for(default_adapter)
        except Exception as error:
            self.record_failure(default_adapter, "connect hook", error)
            return
        made, (read, _, _) = hot
        try:
            if read is None:
                mask = 0  # override mode: every field is written, nothing to read
            else:
                try:
                    mask = read(sock)
                except OSError:
                    # Closed, or not really TCP (fromfd of a UDP socket): the application's
                    # own call is about to fail or does not need keepalive. Nothing to say.
                    self._count(default_adapter, "skipped")
                    return
            found = made[mask]
            if found is not None:
                self._carry_out(sock, default_adapter, found)
                return
        except Exception as error:  # as in _configure: the connect goes on regardless
            self.record_failure(default_adapter, "configuring a socket", error)
            return
        try:
            host, port = _host_port(address)
            self._configure(
                sock, default_adapter, _respect._BY_MASK[mask], host=host, address=host, port=port
            )
        except Exception as error:
            self.record_failure(default_adapter, "connect hook", error)

    def _on_claimed(self, sock: socket.socket, address: Any, default_adapter: str) -> None:
        """A connection inside a library adapter's claim block: that adapter decides."""
        owner = _CLAIM[0].get()
        assert owner is not None
        host, port = _host_port(address)
        if owner.adapter not in self._enabled:  # claimed by an adapter that is no longer enabled
            if default_adapter in self._enabled:
                self._configure(sock, default_adapter, None, host=host, address=host, port=port)
            return
        decision = self._configure(
            sock,
            owner.adapter,
            owner.chosen,
            host=owner.host or host,
            address=host,
            port=owner.port or port,
        )
        owner.decisions.append(decision)

    def _hot_for(self, adapter: str) -> _Hot:
        """*adapter*'s decisions by mask and the table published to its connect hook (the
        socket read, the entries the hook applies, the ledger), made on its first unclaimed
        connection and filled as decisions are made (:meth:`_decide_once`).
        """
        config = self.config
        made: list[_Made | None] = [None] * len(_respect._BY_MASK)
        read = None if self.config_for(adapter).mode is Mode.OVERRIDE else _respect.chosen_mask
        table: Table = (read, [None] * len(made), _ledger._ENTRIES)
        found = (made, table)
        with self._stats_lock:
            if self.config is config:  # see _forget_decisions
                self._hot[adapter] = found
                cell = self._cells.get(adapter)
                if cell is not None:
                    cell[0] = table
        return found

    def on_listen(self, sock: socket.socket) -> None:
        """A TCP socket is about to listen: the inbound policy, inherited by every accepted socket."""
        try:
            if "inbound" not in self._enabled or not_tcp_reason(sock) is not None:
                return
            host, port = _host_port(sock.getsockname())
            self.configure_socket(sock, "inbound", _destination(host=host, address=host, port=port))
        except Exception as error:
            self.record_failure("inbound", "listen hook", error)

    # -- bookkeeping ---------------------------------------------------------
    def _count(self, adapter: str, counter: str) -> None:
        with self._stats_lock:
            counts = self._tallies_of(adapter)
        next(counts[counter])

    def _tallies_of(self, adapter: str) -> dict[str, _Tally]:
        """*adapter*'s tallies, made on first use; the stats lock is held."""
        counts = self.counts.get(adapter)
        if counts is None:
            counts = self.counts[adapter] = _tallies()
        return counts

    def count_pool(self, adapter: str, event: str, n: int = 1) -> None:
        try:
            with self._stats_lock:
                counts = self.pool_counts.setdefault(adapter, {})
                counts[event] = counts.get(event, 0) + n
        except Exception:  # a counter must never break the pool that counts
            pass

    def _say_pool_gaps(self, adapter: Adapter) -> None:
        """One log line when ``heartbeat`` or ``max_idle`` is set for a pooled library that cannot carry it.

        Said when the adapter loads (its library is imported): a warning when the user set the
        field; when only a profile did, a notice (doctor and status say it either way): the
        profile cannot know which libraries the program uses.
        """
        if self.config is None:
            return
        adapter_config = self.config_for(adapter.name)
        gaps = uncarried_fields(adapter, adapter_config.policy)
        if not gaps:
            return
        by_user = any(not adapter_config.sources.get(field, "").startswith("profile") for field in gaps)
        self._log_once(
            ("pool-gaps", adapter.name, str(self.generation)),  # once per install
            _log.WARNING if by_user else _log.INFO,
            "kapatch: %s not carried to %s: the library has no mechanism for it, so its pooled "
            "connections get keepalive only (see `kapatch doctor`)",
            " and ".join(gaps),
            adapter.name,
        )

    def _count_decision(self, adapter: str, decision: Decision, counter: str) -> None:
        self._count(adapter, counter)
        if decision.kept:
            with self._stats_lock:
                kept = self.kept.setdefault(adapter, {})
                for name in decision.kept:
                    kept[name] = kept.get(name, 0) + 1

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
        for adapter in list(self._enabled.values()):
            adapter.patcher.after_fork_in_child()
        self.counts = {name: _tallies() for name in self.counts}
        self.kept = {}
        self.pool_counts = {}
        self._forget_decisions()  # the tables hold the parent's tallies
        self.logged = set()


_COUNTER_FOR = {"apply": "configured", "respect": "respected", "skip": "skipped"}
_POOL_MECHANISMS = (("heartbeat", "heartbeat_mechanism"), ("max_idle", "max_idle_mechanism"))


def uncarried_fields(adapter: type[Adapter] | Adapter, policy: Policy) -> list[str]:
    """The pool fields *policy* sets that *adapter*'s pooled library has no mechanism for."""
    if not adapter.pooled:
        return []
    return [
        field
        for field, mechanism in _POOL_MECHANISMS
        if getattr(policy, field) is not None and getattr(adapter, mechanism) is None
    ]


def pool_support(adapter: type[Adapter] | Adapter, policy: Policy) -> str:
    """What this policy's ``heartbeat`` and ``max_idle`` do for *adapter*'s library; "" if neither is set."""
    uncarried = uncarried_fields(adapter, policy)
    parts = []
    for field, mechanism in _POOL_MECHANISMS:
        if getattr(policy, field) is None:
            continue
        if not adapter.pooled:
            parts.append(f"{field}: not applicable (no pool)")
        elif field in uncarried:
            parts.append(f"{field}: NOT carried (the library has no mechanism)")
        else:
            parts.append(f"{field}: {getattr(adapter, mechanism)}")
    return "; ".join(parts)


_UNREADABLE = Decision("skip", reason="the socket cannot be read")


_UNUSABLE_SOCKET = frozenset({errno.EBADF, errno.ENOTSOCK})


def _tallies() -> dict[str, _Tally]:
    """One tally per counter (COUNTERS): ``next()`` on an ``itertools.count`` is one C call that
    no other thread can split, so counting needs no lock."""
    return {name: _itertools.count() for name in COUNTERS}


def _read_tallies(tallies: dict[str, _Tally] | None) -> dict[str, int]:
    """The counts so far. ``repr()`` is an ``itertools.count``'s one public read: ``count(N)``."""
    if tallies is None:
        return dict.fromkeys(COUNTERS, 0)
    return {name: int(repr(tally)[6:-1]) for name, tally in tallies.items()}


def apply_decided(sock: socket.socket, policy: Policy, kept: frozenset[str]) -> ApplyResult:
    """:func:`kapatch.sockopts.apply_decided` (sockopts loads at first use, see _OnFirstUse)."""
    return _sockopts.apply_decided(sock, policy, kept)


def compile_plan(policy: Policy, *, kept: frozenset[str]) -> Plan:
    """:func:`kapatch.sockopts.compile_plan` (sockopts loads at first use, see _OnFirstUse)."""
    return _sockopts.compile_plan(policy, kept=kept)


def _simple_ops(decision: Decision) -> _Ops | None:
    """The decision's options as plain setsockopt triples, or ``None`` when it needs the full path.

    The full path: ioctls (Windows), notes to log (an option this OS lacks), or an auto user
    timeout computed from the socket's own timings (see ``sockopts.apply_decided``).
    """
    policy = decision.policy
    if decision.action != "apply" or policy is None:
        return ()
    kept = decision.kept
    if policy.user_timeout == "auto" and kept & _respect.TIMINGS and "user_timeout" not in kept:
        return None
    plan = compile_plan(policy, kept=decision.kept)
    if plan.ioctls or plan.unsupported or any(op.optional for op in plan.setsockopts):
        return None
    return tuple((op.level, op.option, op.value) for op in plan.setsockopts)


class _ClaimBlock:
    """``with context.claim(...) as record:``; a class, not contextlib's decorator (~1.4 ms at start)."""

    __slots__ = ("_record", "_token")

    def __init__(self, record: Claim) -> None:
        self._record = record

    def __enter__(self) -> Claim:
        self._token = _CLAIM[0].set(self._record)
        claim_opened()
        return self._record

    def __exit__(self, *_: object) -> None:
        claim_closed()
        _CLAIM[0].reset(self._token)


def _off_unless_turned_on(adapter: str) -> str:
    return f"off unless turned on ({adapter} = true, KAPATCH_{adapter.upper()}=1)"


def _destination(*, host: str | None, address: str | None, port: int | None) -> Destination:
    return _rules.Destination(host=host, address=address, port=port)


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

# A start with KAPATCH_ENABLED=1 read its configuration and waits for the first import of a
# module an adapter patches, or the first use of socket or asyncio, to install it
# (kapatch._bootstrap); whoever loads the runtime first, that or the program's own call,
# finds kapatch installed.
_start = sys.modules.get("kapatch._bootstrap")
if _start is not None:
    _start.complete_deferred()
