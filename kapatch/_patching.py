"""Patch attributes with wrapt wrappers and restore the exact original objects.

Restoring means putting back the very object that was in the owner's ``__dict__``
(a classmethod stays that classmethod object; an inherited method is deleted again,
so lookup falls through to the base class as before), so ``uninstall()`` is
identity-exact, not merely behaviour-alike.
"""

from __future__ import annotations

import _thread

from ._first_use import MISSING as _MISSING
from ._first_use import hand_over, take_over

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeAlias

__all__ = ["Patcher", "through"]


Wrapper: TypeAlias = "Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]"


class Patcher:
    """Records every patch one adapter makes, so :meth:`restore` can undo them all."""

    def __init__(self) -> None:
        self._saved: list[tuple[object, str, object]] = []
        self._lock = _thread.allocate_lock()

    def wrap(self, owner: object, name: str, wrapper: Wrapper) -> None:
        """Wrap ``owner.name`` (a class or a module attribute) with *wrapper*; idempotent."""
        with self._lock:
            if any(o is owner and n == name for o, n, _ in self._saved):
                return
            original = vars(owner).get(name, _MISSING)
            # Imported here, not at the top: wrapt 2 imports asyncio and ssl (~75 ms), which a
            # process should pay only when it imports a library kapatch patches.
            import wrapt

            wrapt.wrap_function_wrapper(owner, name, wrapper)
            self._saved.append((owner, name, original))

    def wrap_function(self, owner: object, name: str, wrapper: Wrapper) -> None:
        """Like :meth:`wrap`, for a plain module-level function, without importing wrapt.

        For hooks that go on at interpreter start or on a module every program imports
        (asyncio): wrapt costs ~75 ms to import there. A function needs no descriptor
        handling, so a closure with the same ``(wrapped, instance, args, kwargs)`` call
        does; the original is kept as ``__wrapped__`` and restored exactly.
        """
        self.replace_function(owner, name, lambda original: through(wrapper, original))

    def replace_function(
        self, owner: object, name: str, build: Callable[[Callable[..., Any]], Callable[..., Any]]
    ) -> None:
        """Put ``build(original)`` in place of the function ``owner.name``; idempotent.

        For hooks on a path that runs per request, where even :meth:`wrap_function`'s
        argument tuple and dict count: *build* can return a closure with the original's
        own parameters. It must accept every call the original accepts. The replacement
        gets the original's names (so a wrong call's ``TypeError`` reads the same) and
        ``__wrapped__``; :meth:`restore` puts back the exact original object.
        """
        with self._lock:
            if any(o is owner and n == name for o, n, _ in self._saved):
                return
            saved, original, stand_in = take_over(owner, name)  # a start's stand-in: replaced
            patched = build(original)
            for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
                if hasattr(original, attribute):
                    setattr(patched, attribute, getattr(original, attribute))
            patched.__wrapped__ = original  # type: ignore[attr-defined]
            hand_over(owner, name, patched, stand_in)
            self._saved.append((owner, name, saved))

    def after_fork_in_child(self) -> None:
        """A lock another thread held at fork time would never be released in the child."""
        self._lock = _thread.allocate_lock()

    def is_patched(self, owner: object, name: str) -> bool:
        return any(o is owner and n == name for o, n, _ in self._saved)

    def restore(self) -> None:
        """Put back every original object, newest patch first."""
        with self._lock:
            while self._saved:
                owner, name, original = self._saved.pop()
                if original is _MISSING:
                    delattr(owner, name)
                else:
                    setattr(owner, name, original)

    def __bool__(self) -> bool:
        return bool(self._saved)


def through(wrapper: Wrapper, original: Callable[..., Any]) -> Callable[..., Any]:
    """*original* called through *wrapper* (``wrapper(original, None, args, kwargs)``): the
    function :meth:`Patcher.wrap_function` installs, for a :meth:`Patcher.replace_function`
    builder that falls back to it."""

    def patched(*args: Any, **kwargs: Any) -> Any:
        return wrapper(original, None, args, kwargs)

    return patched
