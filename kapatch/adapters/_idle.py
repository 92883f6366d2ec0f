"""``max_idle`` for the HTTP pools (urllib3, httpcore): is it wanted at all, and for which destination.

Asked once per pool or per new connection, never per request: the answers are cached
by the callers (on the pool, on the connection).
"""

from __future__ import annotations

from ..rules import Destination

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from ._context import AdapterContext

__all__ = ["max_idle_s", "wants_max_idle"]


def wants_max_idle(context: AdapterContext, adapter: str) -> bool:
    """Whether any connection of *adapter* can get a ``max_idle``: the pool hooks go on only then."""
    policy = context.config_for(adapter).policy
    if policy.max_idle is not None:
        return True
    # A rule (or a rule's profile) may give some destinations a max_idle the adapter's policy lacks.
    rules = getattr(getattr(context, "config", None), "rules", None) or ()
    return any(rule.action == "apply" and rule.policy_for(policy).max_idle is not None for rule in rules)


def max_idle_s(context: AdapterContext, adapter: str, host: object, port: object) -> float | None:
    """The idle limit (seconds) for *adapter*'s connections to ``host:port``; ``None``: none."""
    destination = Destination(
        host=host if isinstance(host, str) and host else None,
        port=port if isinstance(port, int) and not isinstance(port, bool) else None,
    )
    decision = context.policy_for(adapter, destination)
    if decision.action == "skip" or decision.policy is None:
        return None  # a skip rule, or a disabled policy: the library's own behaviour
    return decision.policy.max_idle_s
