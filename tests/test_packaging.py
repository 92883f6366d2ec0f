"""What a user downloads: the sdist is lean, both artefacts carry the licence and the metadata.

Built for real with ``python -m build`` (the sdist, then the wheel from it, as PyPI users get
them); scripts/test also runs ``twine check`` on them and the activation tests against the
installed wheel.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SDIST_TOP = {
    "kapatch",
    "activation",
    "tests",
    "README.md",
    "LICENSE",
    "pyproject.toml",
    "PKG-INFO",
    ".gitignore",
}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out


def test_the_sdist_holds_only_the_package_its_tests_and_what_builds_them(dist: Path) -> None:
    (sdist,) = dist.glob("kapatch-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]
    top = {name.split("/", 1)[0] for name in names}
    assert top <= SDIST_TOP, top - SDIST_TOP
    assert {"kapatch", "activation", "tests", "LICENSE", "README.md", "pyproject.toml"} <= top
    assert not [n for n in names if n.startswith((".ci", "integrations", "benchmarks"))]


def test_the_wheel_carries_the_licence_classifiers_and_urls(dist: Path) -> None:
    (wheel,) = dist.glob("kapatch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        licence = archive.read(next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))).decode()
    assert licence.startswith("MIT License") and "kapatch developers" in licence
    assert licence == (ROOT / "LICENSE").read_text()
    assert "License-Expression: MIT" in metadata
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Classifier: Programming Language :: Python :: {version}" in metadata
    assert "Project-URL: Homepage, https://github.com/kapatch/kapatch" in metadata
    assert {"kapatch.pth", "kapatch.start", "_kapatch_gate.py"} <= set(names)
