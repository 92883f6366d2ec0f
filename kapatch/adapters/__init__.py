"""Adapters: one module per client library, all with the :class:`Adapter` interface."""

from ._base import Adapter, AdapterContext, Decision

__all__ = ["Adapter", "AdapterContext", "Decision"]
