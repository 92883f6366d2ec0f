"""The lab's test host: a network namespace joined to this host by a veth pair.

Addresses come only from 198.18.0.0/15 (RFC 2544 benchmarking range) and exist only
inside the lab. The host can be cut off *silently*: every packet on the veth is dropped
inside the namespace, both ways (nftables, or iptables when nft is missing). The link
stays up, the carrier does not change and nothing answers with ICMP, exactly as when a
host dies or a NAT forgets a flow, so only the client's own TCP timers can notice.
Taking the link down would not be silent: the client's kernel would report EHOSTUNREACH.

Everything created here is removed by `TestHost.destroy()`; `sweep_stale()` removes what
an earlier, killed run may have left, and only the names this lab owns.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import IO

NS_NAME = "kplab"
VETH_HOST = "kplab-h"
VETH_LAB = "kplab-n"
HOST_ADDR = "198.18.0.1"
LAB_ADDR = "198.18.0.2"
PREFIX_LEN = 30
LAB_NET = ipaddress.ip_network("198.18.0.0/15")
LOCK_PATH = "/run/kapatch-lab.lock"
NFT_TABLE = "kplab_cut"
CMD_TIMEOUT = 15.0

assert ipaddress.ip_address(HOST_ADDR) in LAB_NET
assert ipaddress.ip_address(LAB_ADDR) in LAB_NET


def _ensure_sbin_on_path() -> None:
    """Root's PATH on a minimal image may lack the sbin directories where ip/iptables live."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    extra = [d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in parts]
    if extra:
        os.environ["PATH"] = os.pathsep.join([p for p in parts if p] + extra)


_ensure_sbin_on_path()


class LabUnavailable(RuntimeError):
    """The lab cannot run on this machine; the message says why."""


class LabError(RuntimeError):
    """A lab command failed."""


def run(cmd: list[str], *, check: bool = True, timeout: float = CMD_TIMEOUT) -> str:
    """Run a command (bounded in time) and return its stdout."""
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} -> exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def ns_cmd(cmd: list[str]) -> list[str]:
    """Prefix a command so it runs inside the lab namespace."""
    return ["ip", "netns", "exec", NS_NAME, *cmd]


def firewall_backend() -> str | None:
    """'nft' or 'iptables', whichever can drop packets inside the namespace.

    KPLAB_FIREWALL=nft|iptables forces one (e.g. to test the iptables path where both exist).
    """
    forced = os.environ.get("KPLAB_FIREWALL", "").strip()
    if forced in ("nft", "iptables"):
        return forced if shutil.which(forced) else None
    if shutil.which("nft"):
        return "nft"
    if shutil.which("iptables"):
        return "iptables"
    return None


def preflight() -> str | None:
    """Return None when the lab can run here, else a plain reason why it cannot."""
    if os.name != "posix" or not os.path.isdir("/proc/sys/net"):
        return "the dead-peer lab needs Linux (network namespaces)"
    if os.geteuid() != 0:
        return (
            "the dead-peer lab needs root (it creates a network namespace and a veth pair); "
            "run it as root, e.g. `sudo .venv/bin/python -m integrations`"
        )
    if shutil.which("ip") is None:
        return "the dead-peer lab needs iproute2 (`ip`); install it (apt-get install -y iproute2)"
    if firewall_backend() is None:
        return (
            "the dead-peer lab needs nftables or iptables to cut the host silently; "
            "install one (apt-get install -y iptables)"
        )
    try:
        run(["ip", "netns", "list"])
    except (LabError, OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` is unavailable here: {exc}"
    return None


def _links() -> set[str]:
    out = run(["ip", "-o", "link", "show"])
    names = set()
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.add(parts[1].strip().split("@", 1)[0])
    return names


def _namespaces() -> set[str]:
    return {line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()}


def _kill_ns_pids(name: str) -> None:
    """Kill processes left inside a lab-owned namespace (started by an earlier lab run)."""
    out = run(["ip", "netns", "pids", name], check=False)
    for tok in out.split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(tok), signal.SIGKILL)


def _wait_link_gone(name: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while name in _links():
        if time.monotonic() > deadline:
            raise LabError(f"link {name} still present after {timeout} s")
        time.sleep(0.05)


def sweep_stale() -> list[str]:
    """Remove a namespace/veth this lab owns that an earlier (killed) run left behind."""
    removed = []
    if NS_NAME in _namespaces():
        _kill_ns_pids(NS_NAME)
        run(["ip", "netns", "del", NS_NAME], check=False)
        removed.append(f"netns {NS_NAME}")
    if VETH_HOST in _links():
        run(["ip", "link", "del", VETH_HOST], check=False)
        removed.append(f"link {VETH_HOST}")
    if removed:
        _wait_link_gone(VETH_HOST)
    return removed


def _check_address_free() -> None:
    """Refuse to run if some other interface already uses the lab's /30."""
    net = ipaddress.ip_network(f"{HOST_ADDR}/{PREFIX_LEN}", strict=False)
    out = run(["ip", "-o", "-4", "addr", "show"])
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            cidr = fields[fields.index("inet") + 1]
            if ipaddress.ip_interface(cidr).network.overlaps(net):
                raise LabError(f"{net} is already in use on this host: {line.strip()}")


@dataclass
class TestHost:
    """The namespace + veth pair; `cut()` and `heal()` toggle the silent drop."""

    __test__ = False  # not a pytest class

    backend: str = field(default_factory=lambda: firewall_backend() or "")
    created: bool = False
    is_cut: bool = False
    _lock: IO[str] | None = None

    def acquire_lock(self) -> None:
        """One lab at a time on a machine: the names and addresses are fixed."""
        fh = open(LOCK_PATH, "w")  # noqa: SIM115 - held for the lab's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            fh.close()
            raise LabError(f"another lab run holds {LOCK_PATH}") from exc
        self._lock = fh

    def create(self) -> None:
        if not self.backend:
            raise LabUnavailable("no nft or iptables")
        self.acquire_lock()
        sweep_stale()
        _check_address_free()
        self.created = True  # from here on destroy() has work to do
        run(["ip", "netns", "add", NS_NAME])
        run(["ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_LAB])
        run(["ip", "link", "set", VETH_LAB, "netns", NS_NAME])
        run(["ip", "addr", "add", f"{HOST_ADDR}/{PREFIX_LEN}", "dev", VETH_HOST])
        run(["ip", "link", "set", VETH_HOST, "up"])
        run(ns_cmd(["ip", "addr", "add", f"{LAB_ADDR}/{PREFIX_LEN}", "dev", VETH_LAB]))
        run(ns_cmd(["ip", "link", "set", VETH_LAB, "up"]))
        run(ns_cmd(["ip", "link", "set", "lo", "up"]))
        self.wait_reachable()

    def wait_reachable(self, timeout: float = 10.0) -> None:
        """Wait until the lab address answers (a refused TCP connect proves the path)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((LAB_ADDR, 9), timeout=0.5):
                    return
            except ConnectionRefusedError:
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise LabError(f"{LAB_ADDR} not reachable: {exc}") from exc
                time.sleep(0.1)

    def cut(self) -> float:
        """Drop every packet to and from the lab host, inside the namespace. Returns the time."""
        if self.backend == "nft":
            rules = (
                f"table inet {NFT_TABLE} {{\n"
                f"  chain in {{ type filter hook input priority -300; policy accept;"
                f' iifname "{VETH_LAB}" drop; }}\n'
                f"  chain out {{ type filter hook output priority -300; policy accept;"
                f' oifname "{VETH_LAB}" drop; }}\n'
                "}\n"
            )
            subprocess.run(
                ns_cmd(["nft", "-f", "-"]),
                input=rules,
                text=True,
                check=True,
                capture_output=True,
                timeout=CMD_TIMEOUT,
            )
        else:
            run(ns_cmd(["iptables", "-w", "5", "-I", "INPUT", "-i", VETH_LAB, "-j", "DROP"]))
            run(ns_cmd(["iptables", "-w", "5", "-I", "OUTPUT", "-o", VETH_LAB, "-j", "DROP"]))
        self.is_cut = True
        return time.monotonic()

    def heal(self) -> None:
        """Remove the drop rules."""
        if not self.is_cut:
            return
        if self.backend == "nft":
            run(ns_cmd(["nft", "delete", "table", "inet", NFT_TABLE]), check=False)
        else:
            for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
                run(ns_cmd(["iptables", "-w", "5", "-D", chain, flag, VETH_LAB, "-j", "DROP"]))
        self.is_cut = False

    def probe_silence(self, port: int, timeout: float = 1.0) -> str:
        """Connect to the cut host: a silent cut times out (no RST, no ICMP)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            t0 = time.monotonic()
            try:
                s.connect((LAB_ADDR, port))
            except TimeoutError:
                return f"silent: connect to {LAB_ADDR}:{port} timed out after {timeout:.1f} s"
            except OSError as exc:
                return f"NOT silent: {type(exc).__name__}: {exc}"
            return f"NOT cut: connect succeeded in {time.monotonic() - t0:.3f} s"

    def destroy(self) -> None:
        """Remove everything create() made. Safe to call more than once."""
        if self.created:
            with contextlib.suppress(Exception):
                self.heal()
            _kill_ns_pids(NS_NAME)
            run(["ip", "netns", "del", NS_NAME], check=False)
            if VETH_HOST in _links():
                run(["ip", "link", "del", VETH_HOST], check=False)
            with contextlib.suppress(LabError):
                _wait_link_gone(VETH_HOST)
            self.created = False
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def leftovers() -> list[str]:
    """What of the lab still exists on this host (should be empty after a run)."""
    found = []
    if NS_NAME in _namespaces():
        found.append(f"netns {NS_NAME}")
    links = _links()
    found.extend(f"link {name}" for name in (VETH_HOST, VETH_LAB) if name in links)
    return found
