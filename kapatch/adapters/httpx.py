"""httpx (through httpcore): the sync, anyio (asyncio) and trio backends' ``connect_tcp``.

httpcore connects through the stdlib (``socket.create_connection``, or asyncio/trio
sockets), so the shared connect hook sees every socket; but it writes the
application's ``socket_options`` *after* connecting. Without this adapter an
application's explicit keepalive options would be written over a policy that had
already set TCP_USER_TIMEOUT: a mix of both. So ``connect_tcp`` runs inside a claim
that knows whether ``socket_options`` carry keepalive entries (the application's
explicit choice, kept in respect mode). In override mode the policy is put back
after httpcore wrote the application's options, so the policy wins as promised.
"""

from __future__ import annotations

import sys

from ._base import Adapter
from ._socket_options import sets_keepalive

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from typing import Any, ClassVar

    from ._base import Claim
    from ._context import AdapterContext

__all__ = ["HttpxAdapter", "explicit_keepalive"]

_BACKENDS = {
    "httpcore._backends.sync": "SyncBackend",
    "httpcore._backends.anyio": "AnyIOBackend",
    "httpcore._backends.trio": "TrioBackend",
}


def explicit_keepalive(socket_options: Iterable[Any] | None) -> bool:
    """Whether the application's ``socket_options`` set any keepalive option (``SO_KEEPALIVE=0`` too)."""
    return sets_keepalive(socket_options)


def _arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    # connect_tcp(host, port, timeout=None, local_address=None, socket_options=None)
    host = args[0] if args else kwargs.get("host")
    port = args[1] if len(args) > 1 else kwargs.get("port")
    options = args[4] if len(args) > 4 else kwargs.get("socket_options")
    return host, port, options


class HttpxAdapter(Adapter):
    name: ClassVar[str] = "httpx"
    distribution = "httpcore"
    modules = tuple(_BACKENDS)
    minimum_version = (0, 17)
    below_version = (2,)
    needs_connect_hook = True

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
        explicit = explicit_keepalive(options)
        with context.claim(self.name, host, port, explicit=explicit) as claim:
            stream = wrapped(*args, **kwargs)
        self._after_connect(context, claim, stream, explicit)
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
        explicit = explicit_keepalive(options)
        with context.claim(self.name, host, port, explicit=explicit) as claim:
            stream = await wrapped(*args, **kwargs)
        self._after_connect(context, claim, stream, explicit)
        return stream

    def _after_connect(self, context: AdapterContext, claim: Claim, stream: Any, explicit: bool) -> None:
        policy = claim.applied_policy
        if not explicit or policy is None:
            return  # nothing of the application's was written over the policy
        try:
            sock = stream.get_extra_info("socket")
        except Exception as error:
            context.record_failure(self.name, "finding the connected socket", error)
            return
        if sock is not None:
            context.reapply(sock, self.name, policy)
