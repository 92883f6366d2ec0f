"""The interface every adapter implements, and the context the runtime gives it."""

from __future__ import annotations

import abc

from .._dist_info import version as _installed_version
from .._patching import Patcher
from .._records import field, record

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from typing import ClassVar, Literal

    from ..policy import Policy
    from ._context import AdapterContext

__all__ = ["COUNTERS", "POOL_COUNTERS", "Adapter", "Claim", "Decision", "version_tuple"]

COUNTERS = ("configured", "respected", "skipped", "failed", "uncovered")
"""What became of each connection an adapter saw. configured: the policy written (to every
field, or to the fields nobody chose: see ``kept``); respected: every field the policy would
write was the application's own choice, so nothing was written (respect mode); skipped: a
rule or a disabled policy left it alone; failed: the kernel refused an option (or kapatch
failed; the connection went on); uncovered: a connection kapatch saw but cannot configure
(a path it does not know, e.g. an unknown event loop)."""

POOL_COUNTERS = ("heartbeats_sent", "heartbeats_failed", "replaced", "evicted")
"""What the pool-aware adapters did with pooled connections. heartbeats_sent: application-level
checks (redis PING, psycopg_pool's check) run because of ``heartbeat``; heartbeats_failed: those
that got no good reply within ``heartbeat_timeout``; replaced: connections closed after a failed
heartbeat (the library hands out another); evicted: connections discarded for ``max_idle``."""

_NOTHING: frozenset[str] = frozenset()


@record
class Decision:
    """What to do with one connection, decided once when it is made."""

    action: Literal["apply", "respect", "skip"]
    policy: Policy | None = None
    reason: str = ""
    kept: frozenset[str] = _NOTHING
    """Fields the application chose, left as they are (respect mode); see ``kapatch._respect``."""


@record(frozen=False)
class Claim:
    """A library adapter's claim on the sockets its library connects inside one block."""

    adapter: str
    host: str | None
    port: int | None
    chosen: frozenset[str] | None
    """Fields the application chose for these connections; ``None``: read each socket."""
    decisions: list[Decision] = field(default_factory=list)
    """What was decided for each socket connected inside the block, in order."""

    @property
    def applied(self) -> Decision | None:
        """The decision for the last socket connected in the block, if the policy went on it."""
        for decision in reversed(self.decisions):
            return decision if decision.action == "apply" else None
        return None


def version_tuple(text: str) -> tuple[int, ...]:
    """``"2.8.0"`` -> ``(2, 8, 0)``; pre-release suffixes are ignored."""
    numbers: list[int] = []
    digits = ""
    for char in text.split("+", maxsplit=1)[0] + " ":  # the space ends a trailing number
        if char in "0123456789":
            digits += char
        elif digits:
            numbers.append(int(digits))
            digits = ""
    return tuple(numbers[:3])


class Adapter(abc.ABC):
    """Carries the policy into one client library's own socket path.

    Subclasses set the class attributes and implement :meth:`patch`. Patching is
    lazy: the runtime calls :meth:`patch` for each module in :attr:`modules` when
    that module is imported (at once if it already is), and :meth:`disable` puts
    back every original object. Register a third-party adapter under the
    ``kapatch.adapters`` entry-point group.
    """

    name: ClassVar[str]
    """Short name used in settings: ``KAPATCH_<NAME>_IDLE``, ``[name]`` in TOML."""
    distribution: ClassVar[str | None] = None
    """The PyPI distribution whose version decides support; ``None`` for the stdlib."""
    alternative_distributions: ClassVar[tuple[str, ...]] = ()
    """Other distributions that install the same modules (``psycopg2-binary`` for ``psycopg2``):
    the first of :attr:`distribution` and these that is installed gives the version."""
    modules: ClassVar[tuple[str, ...]] = ()
    """Modules to patch, each when it is first imported."""
    minimum_version: ClassVar[tuple[int, ...]] = ()
    below_version: ClassVar[tuple[int, ...] | None] = None
    """Supported: ``minimum_version <= version < below_version``."""
    socket_hooks: ClassVar[frozenset[str]] = frozenset()
    """Which shared hooks on the stdlib ``socket.socket`` this adapter relies on, installed
    by the runtime while any enabled adapter asks for them: ``"connect"`` (``connect`` and
    ``connect_ex``: the library connects through them and the adapter claims those
    connections) and ``"listen"`` (listening sockets, for the inbound policy)."""
    opt_in: ClassVar[bool] = False
    """Off unless the configuration turns it on by name (``KAPATCH_INBOUND=1``)."""
    pooled: ClassVar[bool] = False
    """The library keeps connections for reuse, so ``heartbeat`` and ``max_idle`` concern it."""
    heartbeat_mechanism: ClassVar[str | None] = None
    """How ``heartbeat`` reaches the library (``"redis-py health_check_interval"``); ``None``
    on a pooled library: it has no application-level check, and ``kapatch doctor`` says so."""
    max_idle_mechanism: ClassVar[str | None] = None
    """How ``max_idle`` reaches the library's pool; ``None`` on a pooled library: not carried."""

    def __init__(self) -> None:
        self.patcher = Patcher()
        self.context: AdapterContext | None = None

    @classmethod
    def installed_distribution(cls) -> tuple[str, str] | None:
        """(distribution, version) of the first installed of :attr:`distribution` and its alternatives."""
        if cls.distribution is None:
            return None
        for name in (cls.distribution, *cls.alternative_distributions):
            version = _installed_version(name)
            if version is not None:
                return name, version
        return None

    @classmethod
    def installed_version(cls) -> str | None:
        """The library's version from its metadata, without importing it; ``None`` if absent."""
        found = cls.installed_distribution()
        return None if found is None else found[1]

    @classmethod
    def supported_range(cls) -> str:
        low = ".".join(map(str, cls.minimum_version)) or "any"
        high = f", <{'.'.join(map(str, cls.below_version))}" if cls.below_version else ""
        return f">={low}{high}"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this adapter cannot be enabled here, or ``None``."""
        if cls.distribution is None:
            return None
        found = cls.installed_distribution()
        if found is None:
            names = " or ".join((cls.distribution, *cls.alternative_distributions))
            return f"{names} is not installed"
        name, version = found
        parsed = version_tuple(version)
        if parsed < cls.minimum_version or (cls.below_version and parsed >= cls.below_version):
            return f"{name} {version} is not supported (supported: {cls.supported_range()})"
        return None

    def enable(self, context: AdapterContext) -> None:
        """Remember the runtime; the runtime then calls :meth:`patch` per imported module."""
        self.context = context

    @abc.abstractmethod
    def patch(self, module_name: str) -> None:
        """Patch *module_name*, which has just been imported. Idempotent."""

    def disable(self) -> None:
        """Restore every patched object exactly; idempotent."""
        self.patcher.restore()
        self.context = None

    @property
    def patched(self) -> bool:
        return bool(self.patcher) or not self.modules
