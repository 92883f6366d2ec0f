"""``kapatch check HOST:PORT``: one real connection with the policy, the kernel's values read back."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Mapping
from typing import Any

from ._errors import ConfigError
from .config import Config, load_config
from .doctor import _policy_dict, _settings_from, _settings_parser
from .policy import POLICY_FIELDS, Policy
from .sockopts import compile_plan, wanted_values

__all__ = ["parse_host_port", "run_check"]


def parse_host_port(text: str) -> tuple[str, int]:
    """``host:port``, ``1.2.3.4:80`` or ``[::1]:6379`` -> (host, port); ValueError otherwise."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r}: write IPv6 addresses as [ADDRESS]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r}: expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"{text!r}: write IPv6 addresses as [ADDRESS]:PORT")
    if not port_text.isdecimal() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


_CHECK_ROWS = (
    ("SO_KEEPALIVE", "enabled", ""),
    ("TCP_KEEPIDLE", "idle", " s"),
    ("TCP_KEEPINTVL", "interval", " s"),
    ("TCP_KEEPCNT", "count", ""),
    ("TCP_USER_TIMEOUT", "user_timeout_ms", " ms"),
)


def run_check(argv: list[str]) -> int:
    """``kapatch check HOST:PORT [policy options]``: one real connection, values read back."""
    parser = argparse.ArgumentParser(
        prog="kapatch check",
        description="Connect once to HOST:PORT with the policy and print what the kernel reports "
        "for that connection. Exit status 1 when it differs from the policy or the connection fails.",
    )
    parser.add_argument("target", metavar="HOST:PORT", help="e.g. db.internal:5432 or [::1]:6379")
    _settings_parser(parser)
    for name in ("idle", "interval", "count", "user_timeout"):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="VALUE")
    parser.add_argument("--adapter", default=None, help="use this adapter's policy (per-adapter overrides)")
    parser.add_argument("--timeout", type=float, default=5.0, help="connect timeout in seconds (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    try:
        host, port = parse_host_port(args.target)
    except ValueError as error:
        parser.error(str(error))
    settings = _settings_from(args, ("config", "profile", "idle", "interval", "count", "user_timeout"))
    try:
        config = load_config(**settings)
        adapter_config = config.for_adapter(args.adapter or "socket")
    except ConfigError as error:
        print(f"kapatch check: {error}", file=sys.stderr)
        return 2
    policy = config.policy if args.adapter is None else adapter_config.policy
    sources = config.sources if args.adapter is None else adapter_config.sources
    out: dict[str, Any] = {"target": args.target, "host": host, "port": port, "policy": _policy_dict(policy)}
    out["sources"] = {name: sources.get(name, "default") for name in POLICY_FIELDS}
    try:
        out.update(
            _check_connection(
                host,
                port,
                policy=policy,
                config=config,
                adapter=args.adapter or "socket",
                timeout=args.timeout,
            )
        )
    except OSError as error:
        out["error"] = f"{type(error).__name__}: {error}"
    ok = "error" not in out and not out.get("mismatches")
    out["ok"] = ok
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(_render_check(out))
    return 0 if ok else 1


def _check_connection(
    host: str, port: int, *, policy: Policy, config: Config, adapter: str, timeout: float
) -> dict[str, Any]:
    from . import inspect
    from .rules import Destination, first_match
    from .sockopts import apply_plan

    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, kind, proto, _, address in infos[:8]:  # bounded: a few addresses at most
        rule = first_match(config.rules, adapter, Destination(host, str(address[0]), port))
        effective = policy if rule is None or rule.action == "skip" else rule.policy_for(policy)
        sock = socket.socket(family, kind, proto)
        try:
            applied: list[str] = []
            if rule is None or rule.action != "skip":
                result = apply_plan(sock, compile_plan(effective))
                if result.failed:
                    refused = "; ".join(f"{name}: {err}" for name, err in result.failed)
                    raise OSError(f"the kernel refused {refused}")
                applied = list(result.applied)
            sock.settimeout(timeout)
            sock.connect(address)
            state = inspect(sock)
        except OSError as error:
            last = error
            sock.close()
            continue
        sock.close()
        found: dict[str, Any] = {
            "address": str(address[0]),
            "applied": applied,
            "kernel": {
                name: getattr(state, name)
                for name in ("enabled", "idle", "interval", "count", "user_timeout_ms")
            },
        }
        if rule is not None and rule.action == "skip":
            found["rule"] = f"skipped by rule {rule.describe()}: left as the kernel makes it"
            found["mismatches"] = []
        else:
            if rule is not None:
                found["rule"] = f"rule {rule.describe()}"
                found["policy"] = _policy_dict(effective)
            found["mismatches"] = list(state.mismatches(effective))
            found["wanted"] = wanted_values(effective)
        return found
    raise last or OSError(f"no address for {host}")


def _render_check(out: Mapping[str, Any]) -> str:
    lines = [f"kapatch check {out['target']}"]
    lines.append(f"policy: {out['policy']['describe']}")
    by_source: dict[str, list[str]] = {}
    for name, source in out["sources"].items():
        by_source.setdefault(source, []).append(name)
    lines.extend(f"  {', '.join(names)} <- {source}" for source, names in by_source.items())
    if "rule" in out:
        lines.append(out["rule"])
    if "error" in out:
        lines.extend([f"connection failed: {out['error']}", "kapatch check: FAILED"])
        return "\n".join(lines)
    lines.append(f"connected to {out['address']} port {out['port']}; the kernel reports:")
    wanted = out.get("wanted", {})
    for option, name, unit in _CHECK_ROWS:
        value = out["kernel"][name]
        shown = (
            "unknown"
            if value is None
            else ("on" if value is True else "off" if value is False else f"{value}{unit}")
        )
        want = wanted.get(name)
        if want is None:
            lines.append(f"  {option:<17} {shown}")
            continue
        want_shown = "on" if want is True else f"{want}{unit}"
        mark = "ok" if value is None or value == want else "DIFFERS"
        lines.append(f"  {option:<17} {shown:<12} policy {want_shown:<12} {mark}")
    if out["mismatches"]:
        lines.append(f"kapatch check: {len(out['mismatches'])} mismatch(es)")
    else:
        lines.append("kapatch check: OK")
    return "\n".join(lines)
