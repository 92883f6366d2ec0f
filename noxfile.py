"""Version matrix: `nox -s oldest newest` (scripts/test runs both).

oldest: the oldest supported Python and client libraries (urllib3 1.26, redis-py 5.0,
psycopg 3.1, psycopg2 2.9.1, mysqlclient 2.1); newest: the newest Python here with the
newest releases. The dead-peer lab runs once, in the main suite, not per version.
"""

from __future__ import annotations

import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

TEST_DEPS = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "pytest-asyncio>=0.23",
    "hypothesis>=6.100",
    "PySocks>=1.7",
    "gunicorn>=21",
    "build>=1.2",  # tests/test_packaging.py builds the sdist and wheel
    "sqlalchemy>=2",
    "django>=4.2",
    "botocore>=1.31",
    "asyncpg>=0.28",
    "uvicorn>=0.20",
    "PyMySQL>=1.0",
    "pycurl>=7.45",  # a C client kapatch cannot cover: the doctor must name it
]
UNPINNED_IN_OLDEST = [
    # Client libraries whose adapters came later: the oldest session takes their newest
    # releases (the adapters' own minimum versions were checked by hand; see the README).
    "gevent>=21",
    "uvloop>=0.17",
    "pymongo>=4.9",  # tests/test_adapter_pymongo.py imports pymongo.pool_shared (4.9+)
    "motor>=3.6",
    "amqp>=5.0",
]
OLDEST = [
    "urllib3==1.26.*",
    "requests==2.31.*",
    "redis==5.0.*",
    "psycopg[binary]==3.1.*",
    "psycopg-pool==3.2.*",
    "httpx==0.25.*",
    "psycopg2-binary==2.9.1",  # the first 2.9 with Python 3.10 wheels
    "mysqlclient==2.1.*",  # built from source: scripts/install-system-deps installs libmariadb-dev
    "grpcio==1.50.*",
    "kombu==5.4.*",  # newer kombu refuses redis-py < 6.1 at run time
    "wrapt==1.14.*",
    "tomli==1.1.*",
]


def _python(version: str) -> str | None:
    # Fall back to nox's own interpreter where the wanted one is not installed.
    return version if shutil.which(f"python{version}") else None


def _run_suite(session: nox.Session) -> None:
    session.run("python", "-m", "pytest", "-m", "not lab", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=_python("3.10"))
def oldest(session: nox.Session) -> None:
    session.install("-e", ".", *TEST_DEPS, *UNPINNED_IN_OLDEST, *OLDEST)
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    _run_suite(session)


@nox.session(python=_python("3.13"))
def newest(session: nox.Session) -> None:
    session.install("--upgrade", "-e", ".[all,mysqlclient]", *TEST_DEPS)
    _run_suite(session)
