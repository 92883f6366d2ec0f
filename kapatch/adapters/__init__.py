"""Adapters: one module per client library, all with the :class:`Adapter` interface."""

from __future__ import annotations

from ._base import Adapter, Decision

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from ._context import AdapterContext

__all__ = ["Adapter", "AdapterContext", "Decision"]


def __getattr__(name: str) -> object:
    # AdapterContext is a typing.Protocol: loaded when asked for, not when an adapter loads.
    if name == "AdapterContext":
        from ._context import AdapterContext

        return AdapterContext
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
