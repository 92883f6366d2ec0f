"""What :func:`kapatch.status` reports."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ._records import field, record
from .adapters._base import COUNTERS, POOL_COUNTERS
from .config import Config
from .policy import Mode, Policy

__all__ = ["COUNTERS", "POOL_COUNTERS", "AdapterStatus", "Status"]


@record
class AdapterStatus:
    name: str
    enabled: bool
    reason: str
    """Why not enabled (or ``"patched"`` / ``"waiting for import of X"`` when enabled)."""
    version: str | None
    supported: str
    policy: Policy
    mode: Mode
    counts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType(dict.fromkeys(COUNTERS, 0)))
    kept: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Respect mode: per field, how many connections kept the application's own value."""
    pool: Mapping[str, int] = field(default_factory=lambda: MappingProxyType(dict.fromkeys(POOL_COUNTERS, 0)))
    """Pooled connections: heartbeats sent and failed, connections replaced and evicted."""
    pool_support: str = ""
    """What ``heartbeat``/``max_idle`` do for this adapter's library, when either is set."""


@record
class Status:
    installed: bool
    config: Config | None
    adapters: tuple[AdapterStatus, ...] = ()

    def adapter(self, name: str) -> AdapterStatus:
        for adapter in self.adapters:
            if adapter.name == name:
                return adapter
        raise KeyError(name)

    def render(self) -> str:
        """A table for people, as ``kapatch status``/``doctor`` print it."""
        if not self.installed or self.config is None:
            return "kapatch: not installed"
        lines = [f"kapatch: installed, profile {self.config.profile}, mode {self.config.mode}"]
        for a in self.adapters:
            state = "on " if a.enabled else "off"
            counts = " ".join(f"{k}={v}" for k, v in a.counts.items())
            version = f" {a.version}" if a.version else ""
            lines.append(f"  [{state}] {a.name}{version}: {a.reason}")
            if a.enabled:
                lines.append(f"        {a.policy.describe()}; mode {a.mode}; {counts}")
                if a.pool_support:
                    pool = " ".join(f"{k}={v}" for k, v in a.pool.items())
                    lines.append(f"        pools: {a.pool_support}; {pool}")
                if a.kept:
                    kept = ", ".join(f"{name} x{n}" for name, n in sorted(a.kept.items()))
                    lines.append(f"        kept as the application chose them: {kept}")
        return "\n".join(lines)
