"""What the runtime offers an adapter: a Protocol, for adapters' type annotations.

Its own module because ``typing.Protocol`` costs ~7 ms to import at interpreter start,
where the adapters are loaded; nothing imports this module at run time except
``kapatch.adapters.AdapterContext``, on first use.
"""

from __future__ import annotations

import socket
from contextlib import AbstractContextManager
from typing import Protocol

from ..config import AdapterConfig
from ..policy import Policy
from ..rules import Destination
from ._base import Claim, Decision

__all__ = ["AdapterContext"]


class AdapterContext(Protocol):
    """What the runtime offers an adapter. Every method is safe to call from a hook: none raises."""

    def config_for(self, adapter: str) -> AdapterConfig:
        """The policy and mode configured for *adapter*."""

    def decide(self, adapter: str, destination: Destination, *, explicit: bool) -> Decision:
        """Policy for a connection the adapter configures itself (e.g. libpq parameters). Counts it."""

    def configure_socket(
        self, sock: socket.socket, adapter: str, destination: Destination, *, explicit: bool | None
    ) -> Decision:
        """Decide and apply to *sock*; ``explicit=None`` reads SO_KEEPALIVE to tell."""

    def claim(
        self, adapter: str, host: str | None, port: int | None, *, explicit: bool | None = None
    ) -> AbstractContextManager[Claim]:
        """Inside this block, sockets connected through ``socket.socket.connect`` belong to *adapter*."""

    def reapply(self, sock: socket.socket, adapter: str, policy: Policy) -> None:
        """Put an already decided (and counted) policy back, after the library overwrote it."""

    def record_failure(self, adapter: str, what: str, error: BaseException) -> None:
        """Log once per kind of failure, count it, carry on."""
