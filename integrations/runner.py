"""Runs the dead-peer matrix: every client x situation, with and without kapatch.

One batch per situation: all clients of that situation (each twice: without kapatch, and
with kapatch enabled by environment variables only) connect to the lab host at once, and
one silent cut is applied to the host. Every wait is bounded; the runner kills only the
client processes it started, by pid, and the lab is torn down in `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import IO, Any

from integrations.client import (
    APP_TIMEOUT,
    APP_TIMEOUTS,
    CLIENTS,
    HEARTBEAT_MECHANISMS,
    HEARTBEAT_S,
    HEARTBEAT_TIMEOUT_S,
    HUNG_PEER_CLIENTS,
    IDLE_BEFORE_CALL,
    INBOUND_CLIENTS,
    LAYERS,
    MARIADB_CLIENTS,
    SITUATIONS,
    USER_BOUND,
)
from integrations.labservers import HTTP_PORT, PG_PORT, REDIS_PORT, REPO_ROOT, LabServers, clean_env
from integrations.netlab import (
    LAB_ADDR,
    NS_NAME,
    LabError,
    TestHost,
    firewall_backend,
    leftovers,
    preflight,
    run,
)

# The kapatch policy the lab asks for, through the environment only.
POLICY_IDLE, POLICY_INTERVAL, POLICY_COUNT = 2, 1, 2
POLICY_BOUND = POLICY_IDLE + POLICY_INTERVAL * POLICY_COUNT  # 4 s
POLICY_USER_TIMEOUT = 3  # s, set only in the user-timeout situation
KAPATCH_ENV = {
    "KAPATCH_ENABLED": "1",
    "KAPATCH_IDLE": str(POLICY_IDLE),
    "KAPATCH_INTERVAL": str(POLICY_INTERVAL),
    "KAPATCH_COUNT": str(POLICY_COUNT),
}
KEEPALIVE_TOLERANCE = 1.0  # s over idle + interval * count
USER_TIMEOUT_TOLERANCE = 2.0  # s over the user timeout (retransmission timer granularity)
DEFAULT_CAP = 30.0  # s a client without kapatch is watched after the cut
READY_TIMEOUT = 45.0  # s for all clients of a batch to connect and warm up
SETTLE = 1.0  # s between the blocking requests and the cut: they are sent and ACKed
TCP_RETRIES2_S = 924.6  # what tcp_retries2=15 gives with an unacknowledged send

# hung-peer: the heartbeat the runner asks for in the heartbeat layer (only when this
# kapatch knows the fields: an unknown KAPATCH_* variable is a start-up error).
HEARTBEAT_ENV = {
    "KAPATCH_HEARTBEAT": f"{HEARTBEAT_S:g}",
    "KAPATCH_HEARTBEAT_TIMEOUT": f"{HEARTBEAT_TIMEOUT_S:g}",
}
HUNG_TOLERANCE = 1.5  # s over a hung-peer bound: 39 processes share 2 cores at the call
# Beyond the read timeout, what the library itself adds before the application sees the
# error: psycopg async cancels the query, then waits up to 5 s for the server to end it.
APP_TIMEOUT_EXTRA = {"psycopg-async": 5.0}
# statement_timeout is a timer in the backend: a frozen backend never fires it.
APP_TIMEOUT_SERVER_SIDE = frozenset({"psycopg-sync", "psycopg-pool"})
# gRPC PINGs come from the keepalive policy (KAPATCH_GRPC_IDLE=2, timeout 1 x 2 s).
PING_CLIENTS = frozenset({"grpc", "grpc-aio"})


def heartbeat_supported() -> bool:
    """Whether this kapatch knows KAPATCH_HEARTBEAT and KAPATCH_HEARTBEAT_TIMEOUT (public
    load_config, in a clean process: the runner itself never imports kapatch)."""
    code = "import kapatch, os; kapatch.load_config(environ=dict(os.environ))"
    env = {**clean_env(), **HEARTBEAT_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, timeout=60, check=False
    )
    return proc.returncode == 0


def kapatch_env(
    situation: str, client: str = "", layer: str | None = None, heartbeat: bool = False
) -> dict[str, str]:
    env = dict(KAPATCH_ENV)
    if situation == "user-timeout":
        env["KAPATCH_USER_TIMEOUT"] = str(POLICY_USER_TIMEOUT)
    if layer == "heartbeat" and heartbeat:
        env.update(HEARTBEAT_ENV)
    if client.startswith("grpc"):
        # A gRPC-specific idle: the lab's server permits the PINGs, so the adapter uses it as
        # given (otherwise it keeps PINGs at the 5 min default servers accept).
        env["KAPATCH_GRPC_IDLE"] = str(POLICY_IDLE)
    return env


def bound_with_kapatch(situation: str) -> float:
    """The time each client must detect the dead host within, with kapatch."""
    if situation == "keepalive":
        return POLICY_BOUND
    if situation == "user-timeout":
        return POLICY_USER_TIMEOUT
    return USER_BOUND  # respect: the application's own values win


def tolerance(situation: str) -> float:
    return USER_TIMEOUT_TOLERANCE if situation == "user-timeout" else KEEPALIVE_TOLERANCE


@dataclass
class ClientRun:
    """One client process in one batch."""

    client: str
    situation: str
    kapatch: bool
    layer: str | None = None  # hung-peer only: keepalive, heartbeat or app-timeout
    heartbeat_env: bool = False  # hung-peer heartbeat layer: KAPATCH_HEARTBEAT* given
    proc: subprocess.Popen[str] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)
    stderr_path: str = ""
    conns: list[dict[str, Any]] = field(default_factory=list)  # ss at the cut (hung-peer: at the cap)
    killed_at_cap: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def first(self, ev: str) -> dict[str, Any] | None:
        with self.lock:
            return next((e for e in self.events if e["ev"] == ev), None)

    @property
    def terminal(self) -> dict[str, Any] | None:
        with self.lock:
            return next((e for e in self.events if e["ev"] in ("error", "returned")), None)

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None


def _reader(run: ClientRun, stream: IO[str]) -> None:
    for line in stream:
        try:
            ev = json.loads(line)
        except ValueError:
            run.noise.append(line.rstrip()[:300])
            continue
        with run.lock:
            run.events.append(ev)


def spawn(run: ClientRun, logdir: str) -> None:
    env = clean_env()  # no KAPATCH_* at all without kapatch
    if run.kapatch:
        env.update(kapatch_env(run.situation, run.client, run.layer, run.heartbeat_env))
        if run.client in INBOUND_CLIENTS:  # opt-in: the server side of a vanished client
            env["KAPATCH_INBOUND"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    variant = run.layer or ("kapatch" if run.kapatch else "plain")
    run.stderr_path = os.path.join(logdir, f"{run.situation}-{run.client}-{variant}.err")
    argv = [run.client, run.situation, *([run.layer] if run.layer else [])]
    with open(run.stderr_path, "w") as err:
        run.proc = subprocess.Popen(
            [sys.executable, "-m", "integrations.client", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=REPO_ROOT,
            env=env,
        )
    assert run.proc.stdout is not None
    threading.Thread(target=_reader, args=(run, run.proc.stdout), daemon=True).start()


def kill(run: ClientRun) -> None:
    """Kill a client this runner started, by its pid."""
    if run.proc is None:
        return
    if run.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        run.proc.wait(timeout=5)
    for stream in (run.proc.stdin, run.proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


_SS_PID = re.compile(r"pid=(\d+)")
_SS_TIMER = re.compile(r"timer:\(([^)]*)\)")
_SS_FIELD = re.compile(r"\b(lastsnd|lastrcv|lastack):(\d+)")
_SS_LOCAL = re.compile(r"\s(\S+):(\d+)\s+" + re.escape(LAB_ADDR) + r":(\d+)\s")


def ss_snapshot() -> tuple[float, dict[int, list[dict[str, Any]]]]:
    """Established connections to the lab host, by owning pid: timer and last-packet ages."""
    t = time.monotonic()
    out = subprocess.run(
        ["ss", "-tinpoH", "state", "established", "dst", LAB_ADDR],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout
    by_pid: dict[int, list[dict[str, Any]]] = {}
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("\t", " ")):
            continue
        info = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].startswith("\t") else ""
        fields = {k: int(v) for k, v in _SS_FIELD.findall(info)}
        local = _SS_LOCAL.search(" " + line + " ")
        timer = _SS_TIMER.search(line)
        conn = {
            "lport": int(local.group(2)) if local else None,
            "rport": int(local.group(3)) if local else None,
            "timer": timer.group(1) if timer else None,
            **fields,
        }
        for pid in {int(p) for p in _SS_PID.findall(line)}:
            by_pid.setdefault(pid, []).append(conn)
    return t, by_pid


def _wait_until(pred: Any, deadline: float, step: float = 0.05) -> bool:
    while not pred():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


@dataclass
class Batch:
    situation: str
    runs: list[ClientRun]
    t_cut: float | None = None  # hung-peer: the freeze
    t_end: float | None = None
    silence: str = ""  # hung-peer: the check that the servers are frozen, the network not
    wall_s: float = 0.0
    frozen: list[str] = field(default_factory=list)  # hung-peer: what was stopped, by pid


def _start_clients(runs: list[ClientRun], logdir: str, situation: str, log: Any) -> list[ClientRun]:
    """Spawn every client and wait (bounded) until each is ready, failed or gone: the ready ones."""
    for r in runs:
        spawn(r, logdir)

    def settled(r: ClientRun) -> bool:
        return r.first("ready") is not None or r.terminal is not None or r.exited

    _wait_until(lambda: all(settled(r) for r in runs), time.monotonic() + READY_TIMEOUT)
    live = [r for r in runs if r.first("ready") is not None and r.terminal is None]
    log(f"[{situation}] {len(live)}/{len(runs)} clients ready")
    return live


def run_batch(
    host: TestHost, situation: str, clients: list[str], *, cap: float, logdir: str, log: Any
) -> Batch:
    t0 = time.monotonic()
    runs = [ClientRun(c, situation, k) for c in clients for k in (False, True)]
    batch = Batch(situation, runs)
    try:
        # 1. every client connected and warmed up (or failed) -- bounded.
        live = _start_clients(runs, logdir, situation, log)
        if situation != "user-timeout":
            _wait_until(
                lambda: all(r.first("blocking") or r.terminal or r.exited for r in live),
                time.monotonic() + 10,
            )
        time.sleep(SETTLE)

        # 2. the silent cut, then the last-packet ages of every connection. Read after the
        # cut, not before: nothing arrives once it is in place, so the ages are those of the
        # last packet before it (a keepalive probe answered between a snapshot and the cut
        # would otherwise go unseen, and the time from the last packet come out ~2 s long).
        batch.t_cut = host.cut()
        t_snap, by_pid = ss_snapshot()
        for r in runs:
            if r.proc is not None:
                r.conns = [{**c, "t_snapshot": t_snap} for c in by_pid.get(r.proc.pid, [])]
        log(f"[{situation}] cut at t={batch.t_cut:.3f}")
        if situation == "user-timeout":
            for r in live:
                assert r.proc is not None
                assert r.proc.stdin is not None
                with contextlib.suppress(OSError):
                    r.proc.stdin.write("go\n")
                    r.proc.stdin.flush()
        batch.silence = host.probe_silence(HTTP_PORT)

        # 3. watch until every client saw an error, or the cap.
        deadline = batch.t_cut + cap + (1.0 if situation == "user-timeout" else 0.0)
        _wait_until(lambda: all(r.terminal is not None or r.exited for r in live), deadline)
        batch.t_end = time.monotonic()
        for r in live:
            if r.terminal is None and not r.exited:
                r.killed_at_cap = True
    finally:
        for r in runs:
            kill(r)
        host.heal()
    time.sleep(0.2)  # let the reader threads drain
    batch.wall_s = time.monotonic() - t0
    return batch


# ---------------------------------------------------------------- hung peer


def _proc_state(pid: int) -> tuple[str, int, str]:
    """(state letter, parent pid, command name) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        stat = fh.read()
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
    return state, int(ppid), comm


class Freezer:
    """SIGSTOPs processes by pid and remembers them, so `thaw` can SIGCONT every one."""

    def __init__(self) -> None:
        self.pids: dict[int, str] = {}

    def freeze(self, pid: int, what: str) -> None:
        self.pids[pid] = what  # first, so that a failure half-way still gets thawed
        os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            del self.pids[pid]

    def states(self) -> dict[int, str]:
        out = {}
        for pid in self.pids:
            try:
                out[pid] = _proc_state(pid)[0]
            except OSError:
                out[pid] = "gone"
        return out


def pg_backends() -> dict[int, int]:
    """Client port -> pid of the PostgreSQL backend serving it, read inside the namespace."""
    out = run(["ip", "netns", "exec", NS_NAME, "ss", "-tnpH", "state", "established",
               "sport", "=", f":{PG_PORT}"], check=False)  # fmt: skip
    found = {}
    for line in out.splitlines():
        peer = re.search(r"\s[\d.]+:(\d+)\s+users:", line)
        pid = _SS_PID.search(line)
        if peer and pid:
            found[int(peer.group(1))] = int(pid.group(1))
    return found


def _freeze_servers(freezer: Freezer, servers: LabServers, runs: list[ClientRun], log: Any) -> list[str]:
    """Freeze what each client talks to. A single-process server (HTTP, redis-server, gRPC,
    MariaDB) is frozen whole. PostgreSQL serves each connection by its own backend process:
    the process at the other end of a client's connection is that backend, so the backends
    of the clients' connections are frozen and the postmaster is not (a backend stuck is the
    hung peer; a new connection still gets a fresh backend, as it would in production)."""
    done: list[str] = []
    wanted = {HUNG_PEER_CLIENTS[r.client] for r in runs}
    for name in sorted(wanted - {"postgres"}):
        proc = servers.procs.get(name)
        if proc is None or proc.poll() is not None:
            raise LabError(f"hung-peer: the {name} server is not running")
        _, _, comm = _proc_state(proc.pid)
        if comm in ("ip", "setpriv"):  # the launcher did not exec the server: not its pid
            raise LabError(f"hung-peer: pid {proc.pid} is {comm}, not the {name} server")
        freezer.freeze(proc.pid, f"{name} ({comm})")
        done.append(f"{name}: pid {proc.pid} ({comm}), the whole server")
    if "postgres" in wanted:
        postmaster = servers.procs["postgres"].pid
        backends = pg_backends()
        for r in runs:
            ready = r.first("ready")
            if HUNG_PEER_CLIENTS[r.client] != "postgres" or ready is None:
                continue
            for o in ready["opts"]:
                pid = backends.get(o["lport"]) if o["peer_port"] == PG_PORT else None
                if pid is None:
                    continue
                _, ppid, comm = _proc_state(pid)
                if ppid != postmaster:  # only a backend of the lab's own postmaster
                    log(f"[hung-peer] {r.client}: pid {pid} is not a backend of {postmaster}")
                    continue
                freezer.freeze(pid, f"postgres backend of {r.client}/{r.layer}")
                done.append(f"postgres: backend pid {pid} of {r.client} ({r.layer})")
    return done


def _probe_frozen(freezer: Freezer, wanted: set[str]) -> str:
    """The network is fine and the servers are not: a connect is accepted (by the kernel),
    a request goes unanswered. Also every frozen pid must be in state T (stopped)."""
    port, request = (HTTP_PORT, http_request_ok()) if "http" in wanted else (REDIS_PORT, b"PING\r\n")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect((LAB_ADDR, port))
        except OSError as exc:
            return f"NOT network-fine: connect to {LAB_ADDR}:{port}: {type(exc).__name__}: {exc}"
        s.sendall(request)
        try:
            reply = s.recv(64)
        except TimeoutError:
            reply = None
    if reply is not None:
        return f"NOT frozen: {LAB_ADDR}:{port} answered {reply[:20]!r}"
    # Read after the wait: a SIGSTOP takes effect only once the target is scheduled.
    states = freezer.states()
    stopped = sum(1 for st in states.values() if st == "T")
    verdict = "frozen" if stopped == len(states) else "NOT all stopped"
    return (
        f"{verdict}: connect to {LAB_ADDR}:{port} accepted (by its kernel), request "
        f"unanswered after 1.0 s; {stopped}/{len(states)} frozen processes in state T"
    )


def http_request_ok() -> bytes:
    return b"GET /ok HTTP/1.1\r\nHost: lab\r\n\r\n"


def run_hung_batch(
    servers: LabServers, clients: list[str], *, cap: float, logdir: str, log: Any, heartbeat: bool
) -> Batch:
    """hung-peer: every client connects and warms up; the servers it talks to are frozen
    (SIGSTOP); each client idles IDLE_BEFORE_CALL s, then makes its next ordinary call."""
    t0 = time.monotonic()
    runs = [
        ClientRun(c, "hung-peer", True, layer=layer, heartbeat_env=heartbeat and layer == "heartbeat")
        for c in clients
        for layer in LAYERS
    ]
    batch = Batch("hung-peer", runs)
    freezer = Freezer()
    try:
        live = _start_clients(runs, logdir, "hung-peer", log)

        batch.frozen = _freeze_servers(freezer, servers, live, log)
        batch.t_cut = time.monotonic()
        log(f"[hung-peer] froze {len(freezer.pids)} processes at t={batch.t_cut:.3f}")
        batch.silence = _probe_frozen(freezer, {HUNG_PEER_CLIENTS[r.client] for r in live})
        for r in live:
            assert r.proc is not None
            assert r.proc.stdin is not None
            with contextlib.suppress(OSError):
                r.proc.stdin.write("go\n")
                r.proc.stdin.flush()

        # The cap runs from the calls: "go" + the idle (+0.5 s for the clients to wake).
        deadline = time.monotonic() + IDLE_BEFORE_CALL + 0.5 + cap
        _wait_until(lambda: all(r.terminal is not None or r.exited for r in live), deadline)
        batch.t_end = time.monotonic()
        # What the kernel did meanwhile: keepalive timers and the last ACK the client got.
        t_snap, by_pid = ss_snapshot()
        for r in live:
            if r.terminal is None and not r.exited:
                r.killed_at_cap = True
            if r.proc is not None:
                r.conns = [{**c, "t_snapshot": t_snap} for c in by_pid.get(r.proc.pid, [])]
    finally:
        try:
            for r in runs:  # first: a thawed server could still answer a waiting client
                kill(r)
        finally:
            freezer.thaw()
    time.sleep(0.2)  # let the reader threads drain
    batch.wall_s = time.monotonic() - t0
    return batch


# ---------------------------------------------------------------- results


def _last_packet(run: ClientRun) -> float | None:
    ts = []
    for c in run.conns:
        ages = [c[k] for k in ("lastrcv", "lastack") if k in c]
        if ages:
            ts.append(c["t_snapshot"] - min(ages) / 1000.0)
    return max(ts) if ts else None


def _opts_summary(opts: list[dict[str, Any]]) -> str:
    if not opts:
        return "no socket seen"
    parts = []
    for o in opts:
        ka = f"{o['idle']}/{o['interval']}/{o['count']}" if o["keepalive"] else "off"
        ut = f", user timeout {o['user_timeout_ms']} ms" if o["user_timeout_ms"] else ""
        parts.append(f"keepalive {ka}{ut}")
    return "; ".join(sorted(set(parts)))


def _kernel_bound(situation: str, opts: list[dict[str, Any]]) -> str:
    """What the options the kernel reports would give, for the no-kapatch column."""
    if not opts:
        return "?"
    o = opts[0]
    if situation == "user-timeout":
        if o["user_timeout_ms"]:
            return f"{o['user_timeout_ms'] / 1000:g} s (user timeout)"
        return f"~{TCP_RETRIES2_S:g} s (tcp_retries2=15)"
    if o["user_timeout_ms"] and o["keepalive"]:
        return f"~{max(o['user_timeout_ms'] / 1000, o['idle'] + o['interval']):g} s"
    if o["keepalive"]:
        return f"{o['idle'] + o['interval'] * o['count']} s (keepalive)"
    return "never (keepalive off)"


def _stderr_tail(run: ClientRun) -> str:
    try:
        return Path(run.stderr_path).read_text(errors="replace")[-1500:]
    except OSError:
        return ""


def _kernel_at_cap(run: ClientRun) -> str:
    """What `ss` showed at the cap: the keepalive timer, its unanswered probes, the last ACK."""
    parts = []
    for c in run.conns:
        timer = c.get("timer") or "no timer"
        probes = ""
        if timer.startswith("keepalive,"):
            probes = f", {timer.rsplit(',', 1)[-1]} unanswered probes"
            timer = "keepalive timer"
        ack = f", last ACK {c['lastack'] / 1000:.1f} s before" if "lastack" in c else ""
        parts.append(f"{timer}{probes}{ack}")
    return "; ".join(sorted(set(parts))) if parts else "no connection to the lab"


def hung_result(batch: Batch, run: ClientRun, cap: float) -> dict[str, Any]:
    """A hung-peer row: what the client's next call did, measured from that call."""
    ready, start, term, sent = run.first("ready"), run.first("start"), run.terminal, run.first("sent")
    opts = ready["opts"] if ready else []
    layer = run.layer or ""
    res: dict[str, Any] = {
        "client": run.client,
        "situation": run.situation,
        "layer": layer,
        "kapatch": run.kapatch,
        "env": kapatch_env(run.situation, run.client, run.layer, run.heartbeat_env),
        "kapatch_loaded": bool(start and start.get("kapatch_loaded")),
        "server": HUNG_PEER_CLIENTS[run.client],
        "opts": opts,
        "opts_summary": _opts_summary(opts),
        "heartbeat": ready.get("heartbeat") if ready else None,
        "mechanism": {
            "keepalive": "the policy as HTTP/2 PINGs (kapatch grpc adapter)"
            if run.client in PING_CLIENTS
            else "TCP keepalive (the policy)",
            "heartbeat": HEARTBEAT_MECHANISMS.get(run.client, "no heartbeat mechanism"),
            "app-timeout": APP_TIMEOUTS[run.client],
        }[layer],
        "cap_s": cap,
        "measured_from": "the call",
        "error": None,
        "detect_s": None,
        "conns_at_cap": run.conns,
        "kernel_at_cap": _kernel_at_cap(run),
        "noise": run.noise[-5:],
    }
    if ready is None or sent is None:
        res["status"] = "setup-failed" if ready is None else "exited"
        if term is not None:
            res["error"] = {k: term.get(k) for k in ("type", "message", "errno")}
        res["stderr_tail"] = _stderr_tail(run)
        res["verdict"] = hung_verdict(res)
        return res
    if term is not None and term["ev"] == "error":
        res["status"] = "detected"
        res["detect_s"] = round(term["t"] - sent["t"], 3)
        res["error"] = {k: term.get(k) for k in ("type", "message", "errno")}
    elif term is not None:
        res["status"] = "returned"  # the library replaced the connection and the call worked
        res["detect_s"] = round(term["t"] - sent["t"], 3)
        res["result"] = term.get("result")
    elif run.killed_at_cap:
        res["status"] = "hanging"
        res["hanging_s"] = round(batch.t_end - sent["t"], 3) if batch.t_end else None
    else:
        res["status"] = "exited"
        res["stderr_tail"] = _stderr_tail(run)
    res["verdict"] = hung_verdict(res)
    return res


def hung_bound(client: str, layer: str) -> float | None:
    """The time from the call within which the layer must catch the frozen server (None:
    it cannot, and the call must still be blocked at the cap)."""
    if layer == "keepalive":
        return float(POLICY_BOUND) if client in PING_CLIENTS else None
    if layer == "heartbeat":
        if client in PING_CLIENTS:
            return float(POLICY_BOUND)  # PINGs on the keepalive policy's timings
        return HEARTBEAT_TIMEOUT_S if client in HEARTBEAT_MECHANISMS else None
    if client in APP_TIMEOUT_SERVER_SIDE:
        return None
    return APP_TIMEOUT + APP_TIMEOUT_EXTRA.get(client, 0.0)


def hung_verdict(res: dict[str, Any]) -> dict[str, Any]:
    """Expectations, by layer. A library with a heartbeat mechanism must catch the freeze;
    if its adapter set no heartbeat on it (the client reads it back), the row fails and says so."""
    client, layer, st = res["client"], res["layer"], res["status"]
    bound = hung_bound(client, layer)
    if bound is None:
        why = {
            "keepalive": "the peer's kernel answers keepalive probes",
            "heartbeat": "no heartbeat mechanism in this library",
            "app-timeout": "statement_timeout runs in the frozen backend",
        }[layer]
        return {"expect": f"still blocked at the cap ({res['cap_s']:g} s): {why}", "ok": st == "hanging"}
    b = bound + HUNG_TOLERANCE
    d = res.get("detect_s")
    ok = st in ("detected", "returned") if layer == "heartbeat" else st == "detected"
    what = "an error or a fresh working connection" if layer == "heartbeat" else "an error"
    note = ""
    if layer == "heartbeat" and not res.get("heartbeat"):
        note = " (but the library shows no heartbeat configured)"
    return {"expect": f"{what} within {b:g} s of the call{note}", "ok": bool(ok and d is not None and d <= b)}


def result_of(batch: Batch, run: ClientRun, cap: float) -> dict[str, Any]:
    if run.situation == "hung-peer":
        return hung_result(batch, run, cap)
    ready = run.first("ready")
    start = run.first("start")
    term = run.terminal
    sent = run.first("sent")
    opts = ready["opts"] if ready else []
    res: dict[str, Any] = {
        "client": run.client,
        "situation": run.situation,
        "kapatch": run.kapatch,
        "env": kapatch_env(run.situation, run.client) if run.kapatch else {},
        "kapatch_loaded": bool(start and start.get("kapatch_loaded")),
        "opts": opts,
        "opts_summary": _opts_summary(opts),
        "kernel_bound": _kernel_bound(run.situation, opts),
        "conns_at_cut": run.conns,
        "cap_s": cap,
        "error": None,
        "detect_s": None,
        "from_last_packet_s": None,
        "noise": run.noise[-5:],
    }
    if ready is None:
        res["status"] = "setup-failed"
        if term is not None:
            res["error"] = {k: term.get(k) for k in ("type", "message", "errno")}
        else:
            res["stderr_tail"] = _stderr_tail(run)
        return res
    ref = sent["t"] if (run.situation == "user-timeout" and sent) else batch.t_cut
    res["measured_from"] = "send" if run.situation == "user-timeout" else "cut"
    if term is not None and term["ev"] == "error":
        res["status"] = "detected"
        res["detect_s"] = round(term["t"] - ref, 3) if ref is not None else None
        res["error"] = {k: term.get(k) for k in ("type", "message", "errno")}
        lp = _last_packet(run)
        if lp is not None and run.situation != "user-timeout":
            res["from_last_packet_s"] = round(term["t"] - lp, 3)
    elif term is not None:
        res["status"] = "returned"
        res["result"] = term.get("result")
    elif run.killed_at_cap:
        res["status"] = "hanging"
        if batch.t_end is not None and ref is not None:
            res["hanging_s"] = round(batch.t_end - ref, 3)
    else:
        res["status"] = "exited"
        res["stderr_tail"] = _stderr_tail(run)
    res["verdict"] = verdict(res)
    return res


def respect_options(client: str) -> str:
    """What the socket must show in the respect situation: the application's own values.

    gRPC has no TCP keepalive option: its own 5 s + 3 x 1 s PINGs show as gRPC core's
    user timeout of 3000 ms (keepalive_timeout_ms), SO_KEEPALIVE off.
    """
    return "user timeout 3000 ms" if client.startswith("grpc") else "keepalive 5/1/3"


def verdict(res: dict[str, Any]) -> dict[str, Any]:
    """Did this row do what the lab expects? `ok` plus the expectation in words.

    Keepalive timers run from the last packet received, so where `ss` gave it, the
    last-packet time is checked too (it is the stricter of the two: the cut comes later).
    """
    sit, with_k = res["situation"], res["kapatch"]
    d, lp = res.get("detect_s"), res.get("from_last_packet_s")
    detected = res["status"] == "detected" and d is not None
    if sit == "respect":
        tol = KEEPALIVE_TOLERANCE
        if lp is not None:
            lo, hi = USER_BOUND - tol, USER_BOUND + tol
            ok = detected and lo <= lp <= hi
            where = "after the last packet"
        else:
            lo, hi = POLICY_BOUND + tol, USER_BOUND + tol
            ok = detected and lo < d <= hi  # type: ignore[operator]
            where = "after the cut"
        wanted = respect_options(res["client"])
        ok = ok and wanted in (res.get("opts_summary") or "")
        return {
            "expect": f"detected {lo:g}..{hi:g} s {where} (the application's own "
            f"{USER_BOUND} s, not the policy's {POLICY_BOUND} s), options {wanted}",
            "ok": bool(ok),
        }
    if with_k:
        b = bound_with_kapatch(sit) + tolerance(sit)
        ok = detected and d <= b  # type: ignore[operator]
        if sit == "keepalive" and lp is not None:
            ok = ok and lp <= b
        return {"expect": f"detected within {b:g} s", "ok": bool(ok)}
    return {
        "expect": f"still hanging at the cap ({res['cap_s']:g} s)",
        "ok": res["status"] == "hanging",
    }


def collect(batches: list[Batch], cap: float, wall_s: float, heartbeat: bool = False) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in (
        "kapatch", "requests", "urllib3", "httpx", "redis", "psycopg", "psycopg-pool", "gevent", "uvloop",
    ):  # fmt: skip
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    rows = [result_of(b, r, cap) for b in batches for r in b.runs]
    return {
        "generated_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "firewall": firewall_backend(),
        "policy_env": KAPATCH_ENV,
        "user_timeout_env": {"KAPATCH_USER_TIMEOUT": str(POLICY_USER_TIMEOUT)},
        "user_keepalive": {"bound_s": USER_BOUND},
        "hung_peer": {
            "heartbeat_env": HEARTBEAT_ENV if heartbeat else {},
            "heartbeat_supported": heartbeat,
            "idle_before_call_s": IDLE_BEFORE_CALL,
            "app_timeout_s": APP_TIMEOUT,
            "tolerance_s": HUNG_TOLERANCE,
        },
        "cap_s": cap,
        "wall_s": round(wall_s, 1),
        "batches": [
            {
                "situation": b.situation,
                "silence_probe": b.silence,
                "wall_s": round(b.wall_s, 1),
                **({"frozen": b.frozen} if b.situation == "hung-peer" else {}),
            }
            for b in batches
        ],
        "rows": rows,
        "ok": all(r.get("verdict", {}).get("ok") for r in rows),
    }


# ---------------------------------------------------------------- the whole lab


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run_lab(
    situations: list[str] | None = None,
    clients: list[str] | None = None,
    cap: float = DEFAULT_CAP,
    log: Any = print,
) -> dict[str, Any]:
    """Set up the lab, run the batches, tear everything down; return the results."""
    reason = preflight()
    if reason:
        raise RuntimeError(reason)
    situations = situations or list(SITUATIONS)
    clients = clients or list(CLIENTS)
    previous = {s: signal.signal(s, _raise_exit) for s in (signal.SIGTERM, signal.SIGHUP)}
    # Also when started with SIGINT ignored (e.g. `cmd &` in a script): Ctrl-C still cleans up.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    host, servers = TestHost(), LabServers(mariadb=not MARIADB_CLIENTS.isdisjoint(clients))
    t0 = time.monotonic()
    batches: list[Batch] = []
    heartbeat = "hung-peer" in situations and heartbeat_supported()
    try:
        host.create()
        servers.start()
        assert servers.tmpdir is not None
        logdir = str(servers.tmpdir)
        up = "http, redis, postgresql, grpc" + (", mariadb" if servers.mariadb else "")
        log(f"lab up in {time.monotonic() - t0:.1f} s: {LAB_ADDR} ({up})")
        for situation in situations:
            if situation != "hung-peer":
                batches.append(run_batch(host, situation, clients, cap=cap, logdir=logdir, log=log))
                continue
            hung = [c for c in clients if c in HUNG_PEER_CLIENTS]
            if not hung:
                log("[hung-peer] none of the chosen clients has a hung-peer scenario: skipped")
                continue
            if not heartbeat:
                log("[hung-peer] this kapatch has no KAPATCH_HEARTBEAT: its heartbeat rows will fail")
            batches.append(
                run_hung_batch(servers, hung, cap=cap, logdir=logdir, log=log, heartbeat=heartbeat)
            )
        # Collect while the client logs still exist.
        results = collect(batches, cap, time.monotonic() - t0, heartbeat)
    finally:
        try:
            servers.stop()
        finally:
            host.destroy()
            for s, h in previous.items():
                signal.signal(s, h)
    results["wall_s"] = round(time.monotonic() - t0, 1)
    results["leftovers"] = leftovers()
    return results
