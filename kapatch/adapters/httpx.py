"""httpx (through httpcore): the sync, anyio (asyncio) and trio backends' ``connect_tcp``.

httpcore connects through the stdlib (``socket.create_connection``, or asyncio/trio
sockets), so the shared connect hook sees every socket; but it writes the
application's ``socket_options`` *after* connecting, over whatever was set at connect
time. So ``connect_tcp`` runs inside a claim that knows which keepalive fields those
options choose: in respect mode the policy goes only on the other fields (the
application's then land on top, as it asked); in override mode the policy is put back
after httpcore wrote the application's options, so the policy wins as promised.
"""

from __future__ import annotations

import sys

from .._respect import chosen_in_options
from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import Any, ClassVar

    from ._base import Claim
    from ._context import AdapterContext

__all__ = ["HttpxAdapter"]

_BACKENDS = {
    "httpcore._backends.sync": "SyncBackend",
    "httpcore._backends.anyio": "AnyIOBackend",
    "httpcore._backends.trio": "TrioBackend",
}


def _arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    # connect_tcp(host, port, timeout=None, local_address=None, socket_options=None)
    host = args[0] if args else kwargs.get("host")
    port = args[1] if len(args) > 1 else kwargs.get("port")
    options = args[4] if len(args) > 4 else kwargs.get("socket_options")
    return host, port, options


class HttpxAdapter(Adapter):
    name: ClassVar[str] = "httpx"
    pooled = True
    distribution = "httpcore"
    modules = tuple(_BACKENDS)
    minimum_version = (0, 17)
    below_version = (2,)
    socket_hooks = frozenset({"connect"})

    def patch(self, module_name: str) -> None:
        backend = getattr(sys.modules[module_name], _BACKENDS[module_name])
        if module_name == "httpcore._backends.sync":
            self.patcher.wrap(backend, "connect_tcp", self._connect_sync)
        else:
            self.patcher.wrap(backend, "connect_tcp", self._connect_async)

    def _connect_sync(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        context = self.context
        if context is None:
            return wrapped(*args, **kwargs)
        host, port, options = _arguments(args, kwargs)
        chosen = chosen_in_options(options)
        with context.claim(self.name, host, port, chosen=chosen) as claim:
            stream = wrapped(*args, **kwargs)
        self._after_connect(context, claim, stream, chosen)
        return stream

    async def _connect_async(
        self,
        wrapped: Callable[..., Awaitable[Any]],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        # wrapt returns whatever the wrapper returns: here the coroutine the caller awaits.
        context = self.context
        if context is None:
            return await wrapped(*args, **kwargs)
        host, port, options = _arguments(args, kwargs)
        chosen = chosen_in_options(options)
        with context.claim(self.name, host, port, chosen=chosen) as claim:
            stream = await wrapped(*args, **kwargs)
        self._after_connect(context, claim, stream, chosen)
        return stream

    def _after_connect(
        self, context: AdapterContext, claim: Claim, stream: Any, chosen: frozenset[str]
    ) -> None:
        decision = claim.applied
        if not chosen or decision is None:
            return  # nothing of the application's was written over the policy
        try:
            sock = stream.get_extra_info("socket")
        except Exception as error:
            context.record_failure(self.name, "finding the connected socket", error)
            return
        if sock is not None:
            # Respect mode: only the fields the application did not choose (theirs stay);
            # override mode: every field, over what httpcore just wrote.
            context.reapply(sock, self.name, decision)
