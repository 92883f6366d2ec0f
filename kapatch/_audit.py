"""``kapatch.audit()``: every TCP socket a process holds, read back from the kernel, judged.

Sockets are found through the process's open descriptors (``/proc/PID/fd`` and
``/proc/PID/net/tcp{,6}``), not through kapatch's bookkeeping, so a connection made by
any library, runtime or C extension is listed. Each socket is read through a duplicate
of its descriptor (``os.dup`` here, ``pidfd_getfd`` for another process), closed after
five ``getsockopt`` calls: reading never changes a socket.

Direction is a heuristic: ``listening`` is state LISTEN; a connected socket whose local
port is the port of a listening socket of the same network namespace is ``accepted``;
every other one is ``outbound``.

Verdicts: ``matches`` (the kernel's values are the policy's), ``kept`` (different on
purpose: respect mode kept the application's own fields, or a rule skips the
destination), ``missed`` (the policy should be there and is not), ``out-of-scope`` (not
connected, or an inbound socket while the inbound adapter is off), ``unverified`` (a
partial audit that cannot tell). The ledger (:mod:`kapatch._ledger`) says which adapter
configured a socket; it is advisory, the verdict comes from the kernel's values.
"""

from __future__ import annotations

import os
import sys
import time

from ._records import as_dict, record
from ._respect import TIMINGS, fields_written

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from typing import Any

    from ._procfs import TcpRow
    from .config import Config
    from .policy import Policy
    from .sockopts import KeepaliveState

__all__ = ["AUDIT_VARIABLE", "AuditEntry", "AuditReport", "arm_from_environment", "audit", "run_audit"]

AUDIT_VARIABLE = "KAPATCH__AUDIT"
"""Set by ``kapatch run --audit`` (``exit`` or ``exit,signal``); internal, not a setting."""

_FIELD_OF = {"enabled": "enabled", "idle": "idle", "interval": "interval", "count": "count",
             "user_timeout_ms": "user_timeout"}  # fmt: skip


@record
class AuditEntry:
    fd: int | None
    local: str
    peer: str | None
    direction: str
    """``outbound``, ``accepted``, ``listening`` or ``unconnected`` (a heuristic: see the module)."""
    state: str
    keepalive: KeepaliveState | None
    """Read back with getsockopt; ``None`` in a partial audit."""
    timer: str
    """The kernel's timer for the socket, e.g. ``keepalive 41.2s`` (from /proc/net/tcp)."""
    adapter: str | None
    """The adapter that configured it, from the ledger (``None``: none recorded)."""
    policy_adapter: str
    policy: Policy | None
    rule: str | None
    verdict: str
    details: tuple[str, ...] = ()
    partial: bool = False


@record
class AuditReport:
    pid: int
    policy_source: str
    entries: tuple[AuditEntry, ...]
    partial: bool = False
    notes: tuple[str, ...] = ()
    elapsed_s: float = 0.0

    @property
    def missed(self) -> tuple[AuditEntry, ...]:
        return tuple(e for e in self.entries if e.verdict == "missed")

    def render(self) -> str:
        head = f"kapatch audit of pid {self.pid}: {len(self.entries)} TCP socket(s)"
        if self.partial:
            head += " (PARTIAL)"
        lines = [head, f"  policy: {self.policy_source}"]
        lines.extend(f"  note: {n}" for n in self.notes)
        for e in self.entries:
            ka = e.keepalive
            if ka is None:
                values = f"timer {e.timer}"
            else:
                values = (
                    f"keepalive {'on' if ka.enabled else 'off'} {ka.idle}/{ka.interval}/{ka.count} "
                    f"user_timeout {ka.user_timeout_ms}ms"
                )
            who = e.adapter or "-"
            lines.append(
                f"  {e.verdict.upper():<12} fd {e.fd if e.fd is not None else '?':<5} {e.direction:<11} "
                f"{e.local} -> {e.peer or '*'} {e.state}; {values}; adapter {who}; "
                f"policy ({e.policy_adapter}) {e.policy.describe() if e.policy else '-'}"
                + (f"; rule {e.rule}" if e.rule else "")
            )
            lines.extend(f"      {d}" for d in e.details)
        lines.append(f"  {len(self.missed)} missed; audited in {self.elapsed_s * 1000:.1f} ms")
        return "\n".join(lines)

    def to_json(self) -> str:
        import json

        def entry(e: AuditEntry) -> dict[str, Any]:
            out = as_dict(e)
            out["keepalive"] = as_dict(e.keepalive) if e.keepalive is not None else None
            out["policy"] = e.policy.describe() if e.policy is not None else None
            out["details"] = list(e.details)
            return out

        return json.dumps(
            {
                "pid": self.pid,
                "policy_source": self.policy_source,
                "partial": self.partial,
                "notes": list(self.notes),
                "elapsed_s": self.elapsed_s,
                "missed": len(self.missed),
                "entries": [entry(e) for e in self.entries],
            },
            indent=2,
        )


# --- where the policy comes from ----------------------------------------------------------------
class _Judge:
    def __init__(self, config: Config, installed: set[str] | None, in_process: bool) -> None:
        self.config = config
        self.installed = installed  # adapters enabled in the runtime; None: kapatch not installed
        self.in_process = in_process

    def _enabled(self, name: str) -> bool:
        if self.installed is not None:
            return name in self.installed
        if name == "inbound" and "inbound" not in self.config.opted_in:
            return False
        return self.config.wants_adapter(name)

    def policy_for(self, adapter: str, ip: str, port: int) -> tuple[Policy, Any]:
        from .rules import Destination, first_match

        policy = self.config.for_adapter(adapter).policy
        rule = first_match(self.config.rules, adapter, Destination(host=None, address=ip, port=port))
        if rule is not None and rule.action != "skip":
            policy = rule.policy_for(policy)
        return policy, rule

    def judge(  # noqa: PLR0911, PLR0912  (one verdict per case, in order)
        self, row: TcpRow | None, direction: str, state: KeepaliveState | None, ledger: Any
    ) -> tuple[str, str, Policy | None, str | None, list[str]]:
        """(verdict, policy adapter, policy, rule, details)."""
        if row is None or direction == "unconnected":
            return "out-of-scope", "-", None, None, ["not connected: nothing to keep alive"]
        inbound = direction in ("accepted", "listening")
        adapter = ledger.adapter if ledger is not None else ("inbound" if inbound else "socket")
        if inbound and ledger is None and not self._enabled("inbound"):
            return "out-of-scope", "inbound", None, None, ["inbound connections: the inbound adapter is off"]
        ip, port = (row.local_ip, row.local_port) if inbound else (row.peer_ip, row.peer_port)
        policy, rule = self.policy_for(adapter, ip, port)
        described = rule.describe() if rule is not None else None
        if rule is not None and rule.action == "skip":
            return "kept", adapter, policy, described, [f"rule {described} skips this destination"]
        if not policy.enabled:
            return "kept", adapter, policy, described, ["the policy is disabled for this adapter"]
        if state is None:
            verdict, details = _judge_partial(row, policy)
            return verdict, adapter, policy, described, details
        wrong = _mismatched(state, policy, ledger.kept if ledger is not None else frozenset())
        if not wrong:
            return "matches", adapter, policy, described, []
        details = [f"{f}: kernel has {v}, policy wants {w}" for f, v, w in wrong]
        if ledger is None:
            for other in sorted(self.config.adapter_configs):
                if other != adapter and self._enabled(other):
                    candidate, other_rule = self.policy_for(other, ip, port)
                    if candidate.enabled and not _mismatched(state, candidate, frozenset()):
                        return (
                            "matches",
                            other,
                            candidate,
                            other_rule and other_rule.describe(),
                            [
                                f"no ledger entry; the values are the {other} policy "
                                "(set through the library's own parameters)"
                            ],
                        )
        if ledger is not None and (ledger.action == "respect" or ledger.kept):
            kept = fields_written(policy) if ledger.action == "respect" else ledger.kept
            if all(_FIELD_OF[f] in _with_implied(kept) for f, _, _ in wrong):
                return (
                    "kept",
                    adapter,
                    policy,
                    described,
                    [f"respect mode: the application chose {', '.join(sorted(kept))}"],
                )
        if not self.in_process and ledger is None and self.config.for_adapter(adapter).mode == "respect":
            defaults = _kernel_defaults()
            if all(_chosen(f, v, defaults) for f, v, _ in wrong):
                return (
                    "kept",
                    adapter,
                    policy,
                    described,
                    [
                        *details,
                        "presumed kept: respect mode keeps values somebody set (no ledger across processes)",
                    ],
                )
        if ledger is None and not self.in_process:
            details.append("no ledger across processes: which adapter (if any) saw it is not known")
        elif ledger is None and self.installed is None:
            details.append("kapatch is not installed in this process")
        elif ledger is None:
            details.append("kapatch did not configure it (no ledger entry): a path it does not hook")
        return "missed", adapter, policy, described, details


def _with_implied(kept: frozenset[str]) -> frozenset[str]:
    if "enabled" in kept:
        return kept | TIMINGS  # keepalive off chooses the timings too
    return kept


def _mismatched(
    state: KeepaliveState, policy: Policy, kept: frozenset[str]
) -> list[tuple[str, object, object]]:
    from .sockopts import wanted_values

    wanted = wanted_values(policy)
    kept = _with_implied(kept)
    derived = policy.user_timeout == "auto" and kept & TIMINGS and "user_timeout" not in kept
    if derived and state.enabled and None not in (state.idle, state.interval, state.count):
        # apply_decided: auto follows the application's own timings
        wanted["user_timeout_ms"] = (state.idle + state.interval * state.count) * 1000  # type: ignore[operator]
    found = []
    for name, value in wanted.items():
        actual = getattr(state, name)
        if actual is not None and actual != value:
            found.append((name, actual, value))
    return found


def _kernel_defaults() -> dict[str, int]:
    from ._respect import _kernel_defaults as read

    idle_interval_count = read() or (7200, 75, 9)
    return dict(zip(("idle", "interval", "count"), idle_interval_count, strict=True))


def _chosen(name: str, value: object, defaults: dict[str, int]) -> bool:
    if name == "enabled":
        return bool(value)
    if name == "user_timeout_ms":
        return bool(value)
    return value != defaults.get(name)


def _judge_partial(row: TcpRow, policy: Policy) -> tuple[str, list[str]]:
    if row.state == "LISTEN":
        return "unverified", ["listening socket: the kernel shows no keepalive timer for listeners"]
    if row.timer == 2:
        bound = max(policy.idle or 7200, policy.interval or 75)
        if row.timer_s > bound + 1:
            return "missed", [
                f"next keepalive probe in {row.timer_s:.1f}s, later than the policy's idle {bound}s"
            ]
        return "unverified", [
            f"keepalive on (next probe in {row.timer_s:.1f}s, within the policy's {bound}s); "
            "interval, count and user timeout are unreadable without ptrace rights"
        ]
    if row.timer == 0 and row.state == "ESTABLISHED":
        return "missed", ["no keepalive timer on an idle established connection: keepalive is off"]
    return "unverified", [f"timer {row.timer}: keepalive cannot be seen while it runs"]


# --- the audit ------------------------------------------------------------------------------------
def audit(pid: int | None = None) -> AuditReport:  # noqa: PLR0912, PLR0915  (one pass, read in order)
    """Every TCP socket of this process (or *pid*), read back from the kernel and judged.

    For another process, descriptors are duplicated with ``pidfd_getfd`` (ptrace rights:
    root or CAP_SYS_PTRACE, or the same uid where ``kernel.yama.ptrace_scope`` allows).
    Refused, the audit falls back to ``/proc/PID/net/tcp``'s timer column and is partial.
    """
    from . import _ledger, _procfs
    from .sockopts import inspect

    started = time.perf_counter()
    in_process = pid is None or pid == os.getpid()
    target: int | str = "self" if in_process else int(pid)  # type: ignore[arg-type]
    real_pid = os.getpid() if in_process else int(pid)  # type: ignore[arg-type]
    notes: list[str] = []
    config, source, installed = _config_for(real_pid, in_process, notes)
    judge = _Judge(config, installed, in_process)
    table = _procfs.tcp_table(target)
    listening = {r.local_port for r in table.values() if r.state == "LISTEN"}
    partial_reason = None
    pidfd = None
    try:
        fds: dict[int, int] | None = _procfs.socket_fds(target)
    except OSError as error:
        fds = None
        partial_reason = f"/proc/{real_pid}/fd is not readable ({error.strerror})"
    if fds and not in_process:
        try:
            pidfd = os.pidfd_open(real_pid)
            os.close(_procfs.getfd(pidfd, next(iter(fds))))
        except OSError as error:
            partial_reason = f"pidfd_getfd was refused ({error.strerror})"
            if pidfd is not None:
                os.close(pidfd)
                pidfd = None
    entries: list[AuditEntry] = []
    if partial_reason is not None:
        notes.append(partial_reason + ": " + _rights_needed(real_pid))
    if fds is None:
        uid = _uid_of(real_pid)
        notes.append(f"without descriptors, listed: TCP sockets of uid {uid} in its network namespace")
        pairs: list[tuple[int | None, int]] = [(None, r.inode) for r in table.values() if r.uid == uid]
    else:
        pairs = list(fds.items())
    try:
        for fd, inode in sorted(pairs, key=lambda p: (p[0] is None, p[0] or 0, p[1])):
            row = table.get(inode)
            state = None
            local = peer = None
            if fd is not None and (in_process or pidfd is not None):
                try:
                    dup = os.dup(fd) if in_process else _procfs.getfd(pidfd, fd)  # type: ignore[arg-type]
                except OSError:
                    continue  # closed since /proc listed it
                read = _read(dup, inspect)
                if read is None:
                    continue  # not TCP
                state, local, peer = read
            elif row is None:
                continue  # not TCP (a Unix socket, say), as far as the kernel's tables say
            direction = _direction(row, listening)
            if row is not None:
                local = _address(row.local_ip, row.local_port)
                peer = _address(row.peer_ip, row.peer_port) if row.peer_port else None
            ledger = _ledger.lookup(fd) if in_process and fd is not None else None
            verdict, adapter, policy, rule, details = judge.judge(row, direction, state, ledger)
            entries.append(
                AuditEntry(
                    fd=fd,
                    local=local or "?",
                    peer=peer,
                    direction=direction,
                    state=row.state if row is not None else "CLOSE",
                    keepalive=state,
                    timer=f"{_procfs.TIMERS.get(row.timer, row.timer)} {row.timer_s:.1f}s" if row else "none",
                    adapter=ledger.adapter if ledger is not None else None,
                    policy_adapter=adapter,
                    policy=policy,
                    rule=rule,
                    verdict=verdict,
                    details=tuple(details),
                    partial=state is None,
                )
            )
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return AuditReport(
        pid=real_pid,
        policy_source=source,
        entries=tuple(entries),
        partial=partial_reason is not None,
        notes=tuple(notes),
        elapsed_s=time.perf_counter() - started,
    )


def _read(fd: int, inspect: Any) -> tuple[KeepaliveState, str, str | None] | None:
    import _socket

    try:
        sock = _socket.socket(fileno=fd)  # owns the duplicate from here on: closed below
    except OSError:
        os.close(fd)
        return None
    try:
        if sock.family not in (_socket.AF_INET, _socket.AF_INET6) or sock.type != _socket.SOCK_STREAM:
            return None
        if sock.getsockopt(_socket.SOL_SOCKET, getattr(_socket, "SO_PROTOCOL", 38)) != _socket.IPPROTO_TCP:
            return None
        state = inspect(sock)
        local = sock.getsockname()
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        return (state, _address(local[0], local[1]), _address(peer[0], peer[1]) if peer else None)
    finally:
        sock.close()


def _address(ip: str, port: int) -> str:
    if ip.startswith("::ffff:") and "." in ip:
        ip = ip[7:]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _direction(row: TcpRow | None, listening: set[int]) -> str:
    if row is None or (row.state == "CLOSE" and not row.peer_port):
        return "unconnected"
    if row.state == "LISTEN":
        return "listening"
    return "accepted" if row.local_port in listening else "outbound"


def _uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="utf-8") as file:
        for line in file:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return -1


def _rights_needed(pid: int) -> str:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", encoding="ascii") as file:
            scope = f"kernel.yama.ptrace_scope is {file.read().strip()} here"
    except OSError:
        scope = "Yama is not active here, so ptrace_scope does not restrict it"
    return (
        f"reading another process's sockets needs ptrace rights over pid {pid}: run as root or with "
        f"CAP_SYS_PTRACE, or as its own user (uid {_uid_of(pid)}) where kernel.yama.ptrace_scope is 0 "
        f"({scope}). Falling back to what the kernel tells anyone (/proc/{pid}/net/tcp's timer column): "
        "partial"
    )


def _config_for(pid: int, in_process: bool, notes: list[str]) -> tuple[Config, str, set[str] | None]:
    from .config import Config, load_config

    if in_process:
        from .runtime import context, current_config

        config = current_config()
        if config is not None:
            return config, "the installed kapatch runtime's configuration", set(context().adapters)
        try:
            return (
                load_config(),
                "kapatch is not installed here: compared with what load_config() describes",
                None,
            )
        except Exception as error:
            notes.append(f"configuration error: {error}")
            return Config(), "built-in defaults (the configuration has an error)", None
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            raw = file.read().split(b"\0")
        environ = dict(
            item.decode(errors="replace").partition("=")[::2] for item in raw if item.startswith(b"KAPATCH_")
        )
        path = environ.get("KAPATCH_CONFIG", "").strip()
        if path and not os.path.isabs(path):
            environ["KAPATCH_CONFIG"] = os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)
        return (
            load_config(environ=environ),
            f"pid {pid}'s own KAPATCH_* environment (/proc/{pid}/environ)",
            None,
        )
    except OSError as error:
        notes.append(
            f"/proc/{pid}/environ is not readable ({error.strerror}): its policy is assumed to be this one's"
        )
    except Exception as error:
        notes.append(f"pid {pid}'s configuration: {error}")
    try:
        return load_config(), "this environment's configuration (the process's own is unreadable)", None
    except Exception:
        return Config(), "built-in defaults", None


def run_audit(argv: list[str]) -> int:
    """``kapatch audit [--pid PID] [--json]``: exit status 1 when a connection missed the policy."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="kapatch audit",
        description="Every TCP socket of a process, read back from the kernel, checked against the policy.",
    )
    parser.add_argument(
        "--pid", type=int, help="audit another process (needs ptrace rights for a full audit)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    try:
        report = audit(args.pid)
    except OSError as error:
        sys.stderr.write(f"kapatch audit: {error}\n")
        return 2
    print(report.to_json() if args.json else report.render())
    return 1 if report.missed else 0


def arm_from_environment() -> None:
    """``kapatch run --audit``: this process's audit on stderr at exit (and on SIGUSR1); never raises."""
    try:
        wanted = os.environ.get(AUDIT_VARIABLE, "")
        if "exit" in wanted:
            import atexit

            atexit.register(_print_audit, "at exit")
        if "signal" in wanted:
            import signal

            if signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL:
                signal.signal(signal.SIGUSR1, lambda *_: _print_audit("on SIGUSR1"))
    except Exception as error:
        sys.stderr.write(f"kapatch: --audit could not be armed: {error!r}\n")


def _print_audit(when: str) -> None:
    try:
        report = audit()
        command = " ".join(sys.argv)[:120]
        sys.stderr.write(f"kapatch audit {when} (pid {os.getpid()}: {command}):\n{report.render()}\n")
        sys.stderr.flush()
    except Exception as error:  # never break the program's exit
        sys.stderr.write(f"kapatch: audit failed: {error!r}\n")
