"""Inbound (opt-in): accepted connections, through the policy on listening sockets.

Off unless turned on (``KAPATCH_INBOUND=1``, TOML ``inbound = true``,
``install(inbound=True)``), with its own fields like any adapter
(``KAPATCH_INBOUND_IDLE``, ``[inbound]``). For servers whose clients vanish behind a NAT
while a worker waits on them forever.

When a TCP socket starts to listen (the shared ``socket.socket.listen`` hook; gevent's
and uvloop's servers through their adapters), the inbound policy goes on the listening
socket. Linux, macOS and the BSDs copy SO_KEEPALIVE, the keepalive timings and
TCP_USER_TIMEOUT from a listener to every socket it accepts (the tests read it back
from accepted sockets on this kernel), so accepted connections carry it with no
per-accept cost. Respect mode: a listener the application configured itself keeps its
fields (the rule in ``kapatch._respect``). Rules match the listening address and port.
"""

from __future__ import annotations

from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from typing import ClassVar

__all__ = ["InboundAdapter"]


class InboundAdapter(Adapter):
    name: ClassVar[str] = "inbound"
    distribution = None
    modules = ()
    socket_hooks = frozenset({"listen"})
    opt_in = True

    def patch(self, module_name: str) -> None:
        """Nothing of its own to patch: the runtime installs the shared listen hook."""
