"""pytest plugin for users' own test suites (registered through the ``pytest11`` entry point).

Fixtures:

* ``kapatch_install``: a factory, ``kapatch_install(profile="aws", overrides={...})``,
  taking the arguments of :func:`kapatch.install`; kapatch is installed for this
  test only and uninstalled afterwards, even when the test fails.
* ``kapatch_installed``: installs at setup with the settings of the test's
  ``@pytest.mark.kapatch(...)`` marker (none: the default policy); returns the Status.
* ``assert_keepalive``: :func:`kapatch.testing.assert_keepalive`.

The process environment (``KAPATCH_*``) is ignored unless a test passes
``environ=os.environ``, so a developer's shell cannot change a test's result.

Loading this module installs nothing and imports no client library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._status import Status

__all__ = ["assert_keepalive", "kapatch_install", "kapatch_installed"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "kapatch(**settings): settings for the kapatch_installed fixture, as kapatch.install() takes them",
    )


@pytest.fixture
def kapatch_install() -> Iterator[Callable[..., Status]]:
    """Install kapatch for this test only: ``kapatch_install(**kwargs)`` as ``kapatch.install``."""
    from . import runtime

    previous = runtime.current_config()  # e.g. KAPATCH_ENABLED=1 patched the test process itself
    used = False

    def install(
        *,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Mapping[str, object]] | None = None,
        rules: Any = (),
        **settings: object,
    ) -> Status:
        nonlocal used
        used = True
        return runtime.install(
            environ={} if environ is None else environ, overrides=overrides, rules=rules, **settings
        )

    try:
        yield install
    finally:
        if used:
            # Put the process back as the test found it: the earlier installation, or none.
            if previous is not None:
                runtime.install_config(previous)
            else:
                runtime.uninstall()


@pytest.fixture
def kapatch_installed(request: pytest.FixtureRequest, kapatch_install: Callable[..., Status]) -> Status:
    """kapatch installed with the settings of ``@pytest.mark.kapatch(...)`` for this test."""
    marker = request.node.get_closest_marker("kapatch")
    if marker is not None and marker.args:
        raise pytest.UsageError(
            "@pytest.mark.kapatch takes keyword arguments only, e.g. kapatch(profile='aws')"
        )
    return kapatch_install(**(marker.kwargs if marker is not None else {}))


@pytest.fixture
def assert_keepalive() -> Callable[..., Any]:
    """:func:`kapatch.testing.assert_keepalive`: ``assert_keepalive(sock_or_client, policy, **fields)``."""
    from .testing import assert_keepalive as helper

    return helper
