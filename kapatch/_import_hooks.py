"""Call back when a module is first imported: the trigger for lazy patching.

``wrapt.register_post_import_hook`` does the same, and kapatch used it first; but
importing wrapt costs ~75 ms at interpreter start on the reference machine (wrapt 2
imports asyncio and ssl), and a process started with ``KAPATCH_ENABLED=1`` must not
pay that before it imports a single client library. This module imports nothing
beyond ``sys`` and ``_thread``; wrapt is imported by the adapters when the first
library they patch is imported. Unlike wrapt's, these hooks can be removed, so
``uninstall()`` leaves no finder behind.

The mechanism is wrapt's: a finder first on ``sys.meta_path`` answers only for
watched names, asks the other finders for the real spec, and chains the real loader
so the callbacks run right after the module body; the module and its spec see their
real loader throughout.
"""

from __future__ import annotations

import _thread
import os
import sys

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

__all__ = ["HOOKS", "ImportHooks"]


class _ChainedLoader:
    def __init__(self, loader: Any, hooks: ImportHooks) -> None:
        self._loader = loader
        self._hooks = hooks

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        # The module sees its real loader, exactly as without kapatch.
        if getattr(module, "__loader__", None) in (None, self):
            module.__loader__ = self._loader
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        name = getattr(module, "__name__", None)
        self._hooks._executing.add(name)
        try:
            self._loader.exec_module(module)
        finally:
            self._hooks._executing.discard(name)
        self._hooks.notify(module)


class ImportHooks:
    """``when_imported(name, callback)``: now if imported already, else right after its import."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[[ModuleType], None]]] = {}
        self._lock = _thread.RLock()  # _thread, not threading: ~2 ms less at interpreter start
        self._resolving: set[tuple[int, str]] = set()  # (thread id, module) being looked up
        # Modules our loader is executing: in sys.modules, but only partly initialised.
        self._executing: set[str | None] = set()

    def when_imported(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        with self._lock:
            module = sys.modules.get(name)
            # A module whose import is under way (an import it makes just fired another hook)
            # is in sys.modules half made: its callbacks wait for the end of its import.
            if module is None or name in self._executing:
                self._callbacks.setdefault(name, []).append(callback)
                if self not in sys.meta_path:
                    sys.meta_path.insert(0, self)
                return
        callback(module)

    def after_fork_in_child(self) -> None:
        """A lock another thread held at fork time would never be released in the child."""
        self._lock = _thread.RLock()
        self._resolving = set()
        self._executing = set()

    def clear(self) -> None:
        """Forget every callback and leave ``sys.meta_path`` as it was."""
        with self._lock:
            self._callbacks.clear()
            if self in sys.meta_path:
                sys.meta_path.remove(self)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if fullname not in self._callbacks:
            return None
        key = (_thread.get_ident(), fullname)
        if key in self._resolving:
            return None
        self._resolving.add(key)
        try:
            spec = self._real_spec(fullname, path, target)
        finally:
            self._resolving.discard(key)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ChainedLoader(spec.loader, self)  # type: ignore[assignment]  # duck-typed Loader
        return spec

    def _real_spec(self, fullname: str, path: Any, target: Any) -> ModuleSpec | None:
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: ModuleSpec | None = find(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def notify(self, module: ModuleType) -> None:
        with self._lock:
            callbacks = self._callbacks.pop(module.__name__, [])
            if not self._callbacks and self in sys.meta_path:
                sys.meta_path.remove(self)
        for callback in callbacks:
            try:
                callback(module)
            except Exception:  # the callbacks report their own errors
                continue  # an import never fails because of them


HOOKS = ImportHooks()
"""The process's import hooks: the runtime's, and the triggers of a start that waits for the
first network import (``kapatch._bootstrap``). One finder, so that a module whose import one of
them watches is known to be half made while a callback of the other runs."""
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=HOOKS.after_fork_in_child)
