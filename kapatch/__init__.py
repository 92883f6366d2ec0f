"""kapatch: one TCP keepalive policy for every outbound connection of a process.

    import kapatch
    kapatch.install(profile="aws")          # or KAPATCH_ENABLED=1 with no code at all

Everything public is here; modules starting with ``_`` are private. Names are loaded
on first use, so ``import kapatch`` (and the pytest plugin, which lives in this
package) costs almost nothing until something is called.

PYTEST_DONT_REWRITE: pytest marks every top-level module of a distribution with a
``pytest11`` plugin for assertion rewriting, and warns (an error under ``-W error``)
when one was imported before it; with ``KAPATCH_ENABLED=1`` this package was, at
interpreter start. It holds no assertions to rewrite; this marker tells pytest so.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    import socket as _socket
    from typing import Any

    from ._audit import AuditEntry, AuditReport, audit
    from ._errors import ConfigError
    from ._plan import Plan
    from ._status import AdapterStatus, Status
    from .adapters import Adapter
    from .config import AdapterConfig, Config, load_config
    from .policy import Mode, Policy
    from .profiles import PROFILES, Profile
    from .rules import Destination, Rule
    from .runtime import install, status, uninstall
    from .sockopts import ApplyResult, KeepaliveState, inspect

__version__ = "0.1.0"

__all__ = [
    "PROFILES",
    "Adapter",
    "AdapterConfig",
    "AdapterStatus",
    "ApplyResult",
    "AuditEntry",
    "AuditReport",
    "Config",
    "ConfigError",
    "Destination",
    "KeepaliveState",
    "Mode",
    "Policy",
    "Profile",
    "Rule",
    "Status",
    "__version__",
    "apply",
    "audit",
    "inspect",
    "install",
    "load_config",
    "plan",
    "status",
    "uninstall",
]

_LAZY = {
    "AuditEntry": "._audit",
    "AuditReport": "._audit",
    "audit": "._audit",
    "ConfigError": "._errors",
    "AdapterStatus": "._status",
    "Status": "._status",
    "Adapter": ".adapters",
    "AdapterConfig": ".config",
    "Config": ".config",
    "load_config": ".config",
    "Mode": ".policy",
    "Policy": ".policy",
    "PROFILES": ".profiles",
    "Profile": ".profiles",
    "Destination": ".rules",
    "Rule": ".rules",
    "install": ".runtime",
    "status": ".runtime",
    "uninstall": ".runtime",
    "ApplyResult": ".sockopts",
    "KeepaliveState": ".sockopts",
    "inspect": ".sockopts",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kapatch' has no attribute {name!r}")
    __import__(__name__ + module)
    value = getattr(sys.modules[__name__ + module], name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def plan(policy: Policy | None = None, platform: str | None = None) -> Plan:
    """The socket operations *policy* means on *platform* (default: this one)."""
    from .sockopts import compile_plan

    return compile_plan(policy or _effective_policy(), platform)


def apply(sock: _socket.socket, policy: Policy | None = None) -> ApplyResult:
    """Apply *policy* to one TCP socket, before or after it connects.

    Without *policy*: the installed global policy, else the one the environment and
    config file describe. Raises ``ValueError`` for a socket that is not TCP (left
    unchanged) and ``OSError`` when the kernel refuses an option (the others are
    still applied; see :func:`kapatch.sockopts.apply_plan` for the non-raising form).
    """
    from .sockopts import apply_plan, compile_plan, not_tcp_reason

    reason = not_tcp_reason(sock)
    if reason is not None:
        raise ValueError(f"kapatch.apply: {reason}; the socket is left unchanged")
    result = apply_plan(sock, compile_plan(policy or _effective_policy()))
    if result.failed:
        option, error = result.failed[0]
        raise OSError(error.errno, f"kapatch.apply: setsockopt {option}: {error.strerror}")
    return result


def _effective_policy() -> Policy:
    from .config import load_config
    from .runtime import current_config

    config = current_config()
    return (config or load_config()).policy
