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
from ..rules import Destination
from ._base import Claim, Decision

__all__ = ["AdapterContext"]


class AdapterContext(Protocol):
    """What the runtime offers an adapter. Every method is safe to call from a hook: none raises.

    Three ways a policy reaches a connection, one method each:

    * the library connects through the stdlib ``socket.socket.connect``: the adapter
      sets ``socket_hooks = {"connect"}`` and wraps the library's connect in :meth:`claim`;
    * the library connects another way, with a socket object kapatch can reach (gevent's
      class, uvloop's transports, a C client's ``fileno()``): :meth:`on_connect` (a claim
      in the current context still decides) or :meth:`configure_socket`;
    * the library owns its sockets in C but takes parameters (libpq, gRPC channel
      options): :meth:`decide`, then translate the decision's fields.

    ``chosen`` is the set of keepalive fields the application chose (``kapatch._respect``
    states the rule); ``None`` asks the runtime to read the socket.
    """

    def config_for(self, adapter: str) -> AdapterConfig:
        """The policy and mode configured for *adapter*."""

    def decide(self, adapter: str, destination: Destination, *, chosen: frozenset[str]) -> Decision:
        """Policy for a connection the adapter configures itself (e.g. libpq parameters). Counts it.

        In respect mode ``decision.kept`` names the chosen fields to leave as they are.
        """

    def policy_for(self, adapter: str, destination: Destination) -> Decision:
        """What would be decided for a connection nobody configured; not counted."""

    def configure_socket(
        self,
        sock: socket.socket,
        adapter: str,
        destination: Destination,
        *,
        chosen: frozenset[str] | None = None,
    ) -> Decision:
        """Decide and apply to *sock* (a socket or socket-like object); counts it."""

    def on_connect(self, sock: socket.socket, address: object, *, default_adapter: str = "socket") -> None:
        """*sock* connects (or just connected) to *address* on a path *default_adapter* owns.

        The adapter claiming the current context decides, else *default_adapter*.
        """

    def on_listen(self, sock: socket.socket) -> None:
        """*sock* is about to listen: the inbound policy, when the inbound adapter is on."""

    def claim(
        self, adapter: str, host: str | None, port: int | None, *, chosen: frozenset[str] | None = None
    ) -> AbstractContextManager[Claim]:
        """Inside this block, sockets connected through the shared hooks belong to *adapter*."""

    def reapply(self, sock: socket.socket, adapter: str, decision: Decision) -> None:
        """Put an already decided (and counted) policy back, after the library overwrote it."""

    def count_pool(self, adapter: str, event: str, n: int = 1) -> None:
        """Count a pooled-connection event, one of ``POOL_COUNTERS`` (a heartbeat sent, ...)."""

    def record_failure(self, adapter: str, what: str, error: BaseException) -> None:
        """Log once per kind of failure, count it, carry on."""

    def warn_uncovered(self, adapter: str, what: str) -> None:
        """Log once, at warning level, that connections made through *what* miss the policy; count it."""
