"""Built-in named policies, each justified by the idle timeouts of real middleboxes.

The rule behind every timed profile: ``idle + interval * count`` (the time to
declare a silent peer dead) stays below the idle timeout of the boxes it is
named for, so the first probe refreshes the flow long before the box forgets
it, and a peer that really vanished is noticed before the box would have
silently dropped the flow anyway. Figures: ``RESEARCH.md`` and the README.
"""

from __future__ import annotations

from ._errors import ConfigError
from ._records import record
from .policy import Policy

TYPE_CHECKING = False  # collections.abc costs ~1 ms at interpreter start, for an annotation
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    PROFILES: Mapping[str, Profile]
    """Every built-in profile by name."""

__all__ = ["DEFAULT_PROFILE", "PROFILES", "Profile", "get_profile"]


@record
class Profile:
    """A named policy and the reason for its numbers."""

    name: str
    policy: Policy
    reason: str


DEFAULT_PROFILE = "balanced"

_SPECS: dict[str, tuple[Callable[[], Policy], str]] = {
    "balanced": (
        lambda: Policy(idle=60, interval=10, count=5),
        "First probe at 60 s, dead after 110 s: under every L4 idle timeout listed "
        "(Azure LB/NAT 240 s, AWS NLB/NAT Gateway 350 s, IPVS 900 s, GCP Cloud NAT 1200 s), "
        "at one 54-byte probe a minute per idle connection.",
    ),
    "aws": (
        lambda: Policy(idle=180, interval=20, count=4, max_idle=300_000),
        "AWS NLB, NAT Gateway, Gateway LB and Network Firewall forget idle flows after 350 s "
        "(NAT Gateway then answers with RST). First probe at 180 s; dead after 260 s, "
        "still inside 350 s even when probes are lost. Pools drop a connection idle 300 s "
        "(max_idle) rather than reuse one the box may have forgotten.",
    ),
    "azure": (
        lambda: Policy(idle=120, interval=15, count=4, max_idle=200_000),
        "Azure Load Balancer and NAT Gateway default to a 4 min (240 s) idle timeout and "
        "drop silently. First probe at 120 s; dead after 180 s, inside 240 s. Pools drop a "
        "connection idle 200 s (max_idle), before the box's 240 s.",
    ),
    "gcp": (
        lambda: Policy(idle=300, interval=30, count=5, max_idle=540_000),
        "GCP VPC firewall connection tracking forgets idle flows after 10 min (600 s); "
        "Cloud NAT after 1200 s. First probe at 300 s; dead after 450 s, inside 600 s. "
        "Pools drop a connection idle 540 s (max_idle), before the firewall's 600 s.",
    ),
    "kubernetes": (
        lambda: Policy(idle=120, interval=20, count=5, heartbeat=60_000, max_idle=200_000),
        "kube-proxy IPVS and Docker Swarm forget idle flows after 900 s, and clusters usually "
        "sit behind a cloud NAT too; dead after 220 s keeps under the strictest of those "
        "(Azure, 240 s) and well under IPVS. A service mesh sidecar answers keepalive for "
        "the peer, so a pooled connection idle 60 s is proven by a heartbeat before reuse "
        "(its reply within interval * count, 100 s), and one idle 200 s is dropped (max_idle).",
    ),
    "fast-failover": (
        lambda: Policy(idle=10, interval=5, count=3, heartbeat=10_000),
        "For fail-over of databases and caches: a vanished peer is detected 25 s after the "
        "last packet, and unacknowledged data gives up after the same 25 s (user timeout). "
        "Costs one probe every 10 s per idle connection. A pooled connection idle 10 s is "
        "proven by a heartbeat (reply within 15 s) before reuse: a hung server process "
        "answers keepalive from its kernel, never the heartbeat.",
    ),
    "os-default": (
        lambda: Policy(idle=None, interval=None, count=None, user_timeout="off"),
        "SO_KEEPALIVE on with the kernel's own timings (Linux: 7200 s, then 9 probes 75 s "
        "apart): what most libraries' keepalive=True does. Only for hosts whose sysctls are "
        "already tuned.",
    ),
}
"""Profile name -> (its policy, built on first use, and the reason for its numbers)."""

_built: dict[str, Profile] = {}


def _profile(name: str) -> Profile:
    # Built on first use: validating every profile's policy at interpreter start would cost
    # ~2M instructions, and a process uses one or two of them.
    found = _built.get(name)
    if found is None:
        make, reason = _SPECS[name]
        found = _built.setdefault(name, Profile(name, make(), reason))
    return found


def __getattr__(name: str) -> object:
    """``PROFILES``, every built-in profile by name: made on first use (PEP 562)."""
    if name == "PROFILES":
        from types import MappingProxyType

        profiles = MappingProxyType({key: _profile(key) for key in _SPECS})
        globals()["PROFILES"] = profiles
        return profiles
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_profile(name: str, setting: str = "profile") -> Profile:
    """The profile called *name*, or a ConfigError listing the names there are."""
    key = name.strip().lower() if isinstance(name, str) else None
    if key is None or key not in _SPECS:
        raise ConfigError(setting, name, f"one of {', '.join(_SPECS)}")
    return _profile(key)
