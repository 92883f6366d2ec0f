"""Event loops kapatch does not know: said once, at warning level, and counted as uncovered.

asyncio's selector and proactor loops connect through ``socket.socket.connect`` (the
shared hook), and uvloop's through the ``uvloop`` adapter. A third-party loop may
connect in its own code (C, Rust), where the policy never reaches; rather than miss
those connections silently, this adapter watches the one call every loop makes when it
starts running, ``asyncio.events._set_running_loop(loop)`` (once per ``run_forever``,
an ``isinstance`` check), and for a loop class it does not know calls
``context.warn_uncovered`` once per class: the log says so and ``kapatch.status()``
counts it. Nothing is patched on the loop itself; the data path is untouched.

Not detected: a loop that never calls asyncio's ``_set_running_loop`` (it would then
also break ``asyncio.get_running_loop()``).
"""

from __future__ import annotations

import sys

from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar

__all__ = ["EventLoopsAdapter"]


def _known(loop: Any) -> bool:
    """asyncio's own loops (and their subclasses), and uvloop's."""
    selector = sys.modules.get("asyncio.selector_events")
    proactor = sys.modules.get("asyncio.proactor_events")
    uvloop = sys.modules.get("uvloop")
    known = tuple(
        cls
        for cls in (
            getattr(selector, "BaseSelectorEventLoop", None),
            getattr(proactor, "BaseProactorEventLoop", None),
            getattr(uvloop, "Loop", None),
        )
        if isinstance(cls, type)
    )
    return isinstance(loop, known)


class EventLoopsAdapter(Adapter):
    name: ClassVar[str] = "eventloops"
    distribution = None
    modules = ("asyncio",)

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[type] = set()

    def patch(self, module_name: str) -> None:
        asyncio = sys.modules[module_name]
        # base_events calls events._set_running_loop; third-party loops often asyncio's name.
        # Plain functions, patched without wrapt: every asyncio program imports this module.
        self.patcher.wrap_function(asyncio.events, "_set_running_loop", self._set_running_loop)
        self.patcher.wrap_function(asyncio, "_set_running_loop", self._set_running_loop)

    def disable(self) -> None:
        super().disable()
        self._seen.clear()

    def _set_running_loop(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        context = self.context
        loop = args[0] if len(args) == 1 and not kwargs else None
        if context is not None and loop is not None and type(loop) not in self._seen:
            try:
                self._seen.add(type(loop))
                if not _known(loop):
                    kind = f"{type(loop).__module__}.{type(loop).__qualname__}"
                    context.warn_uncovered(
                        self.name,
                        f"event loop {kind} is not one kapatch knows (asyncio's selector or proactor "
                        "loop, uvloop): connections it makes in its own code may not carry the policy",
                    )
            except Exception as error:  # never in the way of starting the loop
                context.record_failure(self.name, "checking the event loop", error)
        return wrapped(*args, **kwargs)
