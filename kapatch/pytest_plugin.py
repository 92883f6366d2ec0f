"""pytest plugin for users' own test suites (registered through the ``pytest11`` entry point)."""

from __future__ import annotations
