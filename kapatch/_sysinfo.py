"""Facts about this machine for ``kapatch doctor``: read-only, nothing patched, nothing imported.

Client libraries are never imported here (only their metadata is read), so the
doctor's own process stays as clean as the application's would be.
"""

from __future__ import annotations

import contextlib
import os
import platform
import site
import socket
import sys
from pathlib import Path

from ._platforms import current_platform
from ._records import record
from ._registry import adapter_entry_points
from .adapters._base import Adapter
from .policy import Policy
from .sockopts import apply_plan, compile_plan, inspect

__all__ = [
    "KERNEL_SYSCTLS",
    "ActivationFile",
    "AdapterInfo",
    "KernelProbe",
    "activation_files",
    "activation_works",
    "adapter_infos",
    "installed_file",
    "kernel_defaults",
    "platform_summary",
    "probe_kernel",
]

KERNEL_SYSCTLS = {
    "tcp_keepalive_time": "/proc/sys/net/ipv4/tcp_keepalive_time",
    "tcp_keepalive_intvl": "/proc/sys/net/ipv4/tcp_keepalive_intvl",
    "tcp_keepalive_probes": "/proc/sys/net/ipv4/tcp_keepalive_probes",
    "tcp_retries2": "/proc/sys/net/ipv4/tcp_retries2",
}


def platform_summary() -> dict[str, str]:
    return {
        "platform": current_platform(),
        "system": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
    }


def kernel_defaults() -> dict[str, int | None]:
    """The sysctls a socket without a policy runs with (Linux only; ``{}`` elsewhere)."""
    if current_platform() != "linux":
        return {}
    found: dict[str, int | None] = {}
    for name, path in KERNEL_SYSCTLS.items():
        try:
            found[name] = int(Path(path).read_text().strip())
        except (OSError, ValueError):
            found[name] = None  # e.g. a container without /proc/sys
    return found


@record
class KernelProbe:
    """What the kernel did with a policy applied to a fresh, unconnected TCP socket."""

    options: tuple[str, ...]
    """The options the compiled plan sets on this platform."""
    applied: tuple[str, ...]
    refused: tuple[str, ...]
    """``"TCP_KEEPCNT: [Errno 22] Invalid argument"``: the kernel refused it."""
    unsupported: tuple[str, ...]
    mismatches: tuple[str, ...]
    """Values the kernel reports differently from the policy after applying it."""

    @property
    def ok(self) -> bool:
        return not self.refused and not self.mismatches


def probe_kernel(policy: Policy) -> KernelProbe:
    """Apply *policy* to a throwaway socket (no connection) and read it back."""
    plan = compile_plan(policy)
    options = tuple([op.name for op in plan.ioctls] + [op.name for op in plan.setsockopts])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        result = apply_plan(sock, plan)
        state = inspect(sock)
    refused = tuple(f"{name}: {error}" for name, error in result.failed)
    return KernelProbe(options, result.applied, refused, result.unsupported, state.mismatches(policy))


@record
class AdapterInfo:
    name: str
    target: str
    distribution: str | None
    version: str | None
    supported: str
    modules: tuple[str, ...]
    unavailable: str | None
    """Why the adapter cannot run here (library absent or unsupported), or ``None``."""
    load_error: str | None = None
    """The adapter class itself failed to load (a broken kapatch or third-party adapter)."""

    @property
    def installed(self) -> bool:
        return self.distribution is None or self.version is not None


def adapter_infos() -> tuple[AdapterInfo, ...]:
    """Every registered adapter, with its library's version read from metadata (not imported)."""
    from .runtime import _load  # the runtime's own loader: same checks as install()

    infos = []
    for name, target in adapter_entry_points().items():
        try:
            cls: type[Adapter] = _load(target)
        except Exception as error:
            infos.append(AdapterInfo(name, target, None, None, "", (), None, f"{error!r}"))
            continue
        infos.append(
            AdapterInfo(
                name=name,
                target=target,
                distribution=cls.distribution,
                version=cls.installed_version(),
                supported=cls.supported_range() if cls.distribution else "stdlib",
                modules=tuple(cls.modules),
                unavailable=cls.unavailable_reason(),
            )
        )
    return tuple(infos)


@record
class ActivationFile:
    path: str
    line: str
    """The first non-comment line that mentions kapatch (what the interpreter runs at start)."""


def _site_dirs() -> list[str]:
    """The directories whose ``.pth`` files site.py runs: not every sys.path entry (PYTHONPATH's are not)."""
    dirs: list[str] = []
    with contextlib.suppress(AttributeError):  # old virtualenv's site.py lacks them
        dirs.extend(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        with contextlib.suppress(AttributeError):
            dirs.append(site.getusersitepackages())
    seen: set[str] = set()
    unique = []
    for d in dirs:
        real = os.path.realpath(d)
        if real not in seen and os.path.isdir(real):
            seen.add(real)
            unique.append(d)
    return unique


def installed_file(name: str) -> str | None:
    """The path of *name* in this interpreter's site directories, or ``None``."""
    for directory in _site_dirs():
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def activation_files() -> tuple[ActivationFile, ...]:
    """``kapatch*.pth`` / ``kapatch*.start`` files in site dirs that mention kapatch.

    A ``.pth`` line starting with ``import`` is what makes ``KAPATCH_ENABLED=1`` work
    without code; the ``.start`` file is its PEP 829 counterpart on Python 3.15+.
    """
    found = []
    for directory in _site_dirs():
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if not (name.endswith((".pth", ".start")) and "kapatch" in name.lower()):
                continue
            path = os.path.join(directory, name)
            try:
                text = Path(path).read_text(errors="replace")
            except OSError:
                continue
            lines = [
                line.strip()
                for line in text.splitlines()
                if "kapatch" in line and not line.lstrip().startswith("#")
            ]
            if lines:
                found.append(ActivationFile(path, lines[0]))
    return tuple(found)


_ACTIVATION_PROBE = (
    "import sys; started = 'kapatch._bootstrap' in sys.modules; from kapatch import runtime; "
    "print('patched' if started and runtime.current_config() is not None else 'not patched')"
)


def activation_works(timeout: float = 30.0) -> tuple[bool, str]:
    """Start a fresh interpreter with ``KAPATCH_ENABLED=1`` and no code: is it patched?"""
    import subprocess

    env = {**os.environ, "KAPATCH_ENABLED": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _ACTIVATION_PROBE],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"a fresh interpreter did not finish within {timeout:.0f} s"
    answer = done.stdout.strip().splitlines()[-1:] or [""]
    if answer[0] == "patched":
        return True, "a fresh interpreter with KAPATCH_ENABLED=1 (and no code) is patched"
    detail = " | ".join(done.stderr.strip().splitlines()[-3:])
    return (
        False,
        f"a fresh interpreter with KAPATCH_ENABLED=1 was not patched ({answer[0] or 'no answer'})"
        + (f": {detail}" if detail else ""),
    )
