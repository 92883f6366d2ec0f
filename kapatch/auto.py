"""``import kapatch.auto``: turn kapatch on from the environment and config file, in one line.

Put it first in the program's entry point. It never raises by default: a bad setting
is one warning and the program runs unpatched; with ``KAPATCH_ON_ERROR=raise`` the
:class:`kapatch.ConfigError` propagates from this import. Importing it again, or after
the ``KAPATCH_ENABLED`` start-up hook or an explicit :func:`kapatch.install`, changes
nothing. Python child processes inherit ``KAPATCH_ENABLED=1`` (see
:func:`kapatch._bootstrap.auto`). :func:`kapatch.install` stays the explicit, raising API.
"""

from __future__ import annotations

from ._bootstrap import auto as _auto

_auto()
