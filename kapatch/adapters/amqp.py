"""py-amqp (and so kombu's AMQP transport and celery's AMQP broker): the transport's socket.

``amqp.transport._AbstractTransport.connect`` connects the socket (``_connect``, through
the stdlib ``socket.socket.connect``), then ``_init_socket`` rewrites its options: SO_KEEPALIVE
on, and py-amqp's hard-coded defaults (idle 60 s, interval 10 s, count 9, TCP_USER_TIMEOUT
1000 ms) with the application's ``socket_settings`` on top. Those defaults are nobody's
choice (``kapatch._respect``); the ``socket_settings`` entries are.

How the policy gets there: ``connect`` runs inside ``context.claim("amqp", host, port,
chosen=<fields of socket_settings>)``, so the shared connect hook decides once (and counts
once) and applies the *amqp* policy when the socket connects; after py-amqp has written its
options, the same decision is put back with ``context.reapply`` (not counted again): in
respect mode on every field the application's ``socket_settings`` did not set, in override
mode on every field. Where kapatch decided to leave the socket alone (a skip rule, a
disabled policy), py-amqp's own values stay, as without kapatch. The AMQP handshake starts
after ``connect`` returns: py-amqp's values are on the socket only while it sends the
protocol header.

Not covered: a transport class that does not inherit ``_AbstractTransport.connect``.
"""

from __future__ import annotations

import _socket
import sys

from .._respect import NOTHING, option_field
from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar

    from ._base import Claim
    from ._context import AdapterContext

__all__ = ["AmqpAdapter"]

_MODULE = "amqp.transport"


def chosen_in_socket_settings(settings: Any) -> frozenset[str]:
    """The keepalive fields an application's ``socket_settings`` (``{TCP option: value}``) chooses."""
    chosen: set[str] = set()
    for option in dict(settings or {}):
        try:
            field = option_field(_socket.IPPROTO_TCP, int(option))
        except (TypeError, ValueError):
            continue  # py-amqp itself will complain about a malformed entry
        if field is not None:
            chosen.add(field)
    return frozenset(chosen) if chosen else NOTHING


class AmqpAdapter(Adapter):
    name: ClassVar[str] = "amqp"
    pooled = True
    distribution = "amqp"
    modules = (_MODULE,)
    minimum_version = (5,)
    below_version = (6,)
    socket_hooks = frozenset({"connect"})

    def patch(self, module_name: str) -> None:
        transport = sys.modules[module_name]._AbstractTransport
        self.patcher.wrap(transport, "connect", self._connect)

    def _connect(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        context = self.context
        if context is None:
            return wrapped(*args, **kwargs)
        try:
            host, port = instance.host, instance.port
            chosen = chosen_in_socket_settings(instance.socket_settings)
            claim = context.claim(
                self.name, str(host) if host is not None else None, int(port) if port else None, chosen=chosen
            )
        except Exception as error:  # a transport kapatch cannot read: connect as without kapatch
            context.record_failure(self.name, "reading the amqp transport", error)
            return wrapped(*args, **kwargs)
        with claim as record:
            result = wrapped(*args, **kwargs)
        self._put_back(context, record, instance)
        return result

    def _put_back(self, context: AdapterContext, record: Claim, transport: Any) -> None:
        """The connect-time decision again, over the defaults py-amqp wrote after connecting."""
        decision = record.decisions[-1] if record.decisions else None
        if decision is None or decision.action != "apply":
            return  # left alone (skip), all respected, or never seen by the connect hook
        try:
            sock = transport.sock
        except Exception as error:
            context.record_failure(self.name, "reading the transport's socket", error)
            return
        if sock is not None:
            context.reapply(sock, self.name, decision)
