"""``kapatch doctor | profiles | status``: what a person runs to trust kapatch (``check``: ``_check``).

Each ``run_*`` function parses its own argv, prints, and returns the exit status
(0 fine, 1 something is wrong, 2 bad usage or configuration), so ``kapatch.cli``
only dispatches. Also runnable as ``python -m kapatch.doctor doctor --json``.

The doctor never patches its own process: the live self-test runs in a child
interpreter (:mod:`kapatch._selftest`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from ._errors import ConfigError
from ._sysinfo import (
    AdapterInfo,
    activation_files,
    activation_works,
    adapter_infos,
    kernel_defaults,
    platform_summary,
    probe_kernel,
)
from .config import Config, load_config
from .policy import POLICY_FIELDS, Policy
from .profiles import PROFILES
from .sockopts import compile_plan

__all__ = ["collect_report", "main", "render_report", "run_doctor", "run_profiles", "run_status"]

# Built-in clients the self-test knows how to drive: adapter name -> (distribution, module).
_CLIENT_LIBRARIES = {
    "urllib3": ("urllib3", "urllib3"),
    "redis": ("redis", "redis"),
    "psycopg": ("psycopg", "psycopg"),
    "httpx": ("httpx", "httpx"),
    "gevent": ("gevent", "gevent"),
    "uvloop": ("uvloop", "uvloop"),
}


# --- doctor -----------------------------------------------------------------------------------
def _policy_dict(policy: Policy) -> dict[str, Any]:
    return {
        **{name: getattr(policy, name) for name in POLICY_FIELDS},
        "user_timeout_ms": policy.user_timeout_ms,
        "detection_bound_s": policy.detection_bound_s,
        "describe": policy.describe(),
    }


def _pool_support(name: str, policy: Policy) -> str:
    """What heartbeat/max_idle do for adapter *name*'s library ("" when neither is set)."""
    from ._registry import adapter_entry_points
    from .runtime import _load, pool_support

    target = adapter_entry_points().get(name)
    if target is None or (policy.heartbeat is None and policy.max_idle is None):
        return ""
    try:
        return pool_support(_load(target), policy)
    except Exception as error:  # a third-party adapter that does not load: said, not hidden
        return f"unknown (the adapter does not load: {error})"


def _config_section(config: Config, adapters: Sequence[str]) -> dict[str, Any]:
    per_adapter = {}
    for name in adapters:
        adapter = config.for_adapter(name)
        per_adapter[name] = {
            "selected": config.wants_adapter(name),
            "policy": _policy_dict(adapter.policy),
            "mode": str(adapter.mode),
            "sources": dict(adapter.sources),
            "pools": _pool_support(name, adapter.policy),
        }
    return {
        "enabled": config.enabled,
        "profile": config.profile,
        "mode": str(config.mode),
        "config_file": config.config_file,
        "policy": _policy_dict(config.policy),
        "sources": dict(config.sources),
        "rules": [rule.describe() for rule in config.rules],
        "adapters": per_adapter,
    }


def _libraries(infos: Sequence[AdapterInfo]) -> dict[str, str]:
    """Adapter name -> module to import, for every client library installed here."""
    found: dict[str, str] = {}
    for name, (distribution, module) in _CLIENT_LIBRARIES.items():
        try:
            importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[name] = module
    for info in infos:  # third-party adapters: their first module stands for the library
        if info.name not in found and info.modules and info.version is not None:
            found[info.name] = info.modules[0]
    return found


def _run_self_test(
    settings: Mapping[str, Any], libraries: Mapping[str, str], timeout: float
) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if k.startswith("KAPATCH_")}
    child_env = dict(os.environ)
    # The child installs the policy itself; automatic activation (.pth) would only do it twice.
    child_env.pop("KAPATCH_ENABLED", None)
    request = {
        "sys_path": sys.path,
        "environ": environ,
        "settings": dict(settings),
        "libraries": dict(libraries),
        "timeout": timeout,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", _bootstrap()],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=child_env,
            timeout=timeout * 10 + 30,
            check=False,
        )
    except subprocess.TimeoutExpired:  # run() kills the child it started
        return {"crash": f"the self-test did not finish within {timeout * 10 + 30:.0f} s"}
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {"crash": f"the self-test child exited {done.returncode}: " + " | ".join(tail)}
    return result


def _bootstrap() -> str:
    from ._selftest import CHILD_BOOTSTRAP

    return CHILD_BOOTSTRAP


def collect_report(
    settings: Mapping[str, Any] | None = None, *, self_test: bool = True, timeout: float = 5.0
) -> dict[str, Any]:
    """Everything the doctor knows, as one JSON-ready dict; ``report["problems"]`` lists what is wrong."""
    import kapatch

    settings = dict(settings or {})
    problems: list[str] = []
    notes: list[str] = []
    report: dict[str, Any] = {
        "kapatch": {"version": kapatch.__version__, "path": os.path.dirname(kapatch.__file__)},
        "platform": platform_summary(),
        "kernel_defaults": _kernel_section(notes),
    }
    infos = adapter_infos()
    report["libraries"] = _libraries_section(infos, problems)
    report["activation"] = _activation_section(notes)
    try:
        config: Config | None = load_config(**settings)
    except ConfigError as error:
        problems.append(f"configuration error: {error}")
        report["configuration"] = {"error": str(error)}
        config = None
    if config is not None:
        report["configuration"] = _config_section(config, [info.name for info in infos])
        if not config.enabled:
            notes.append(
                "kapatch is disabled by the configuration (enabled = false); the self-test enables it"
            )
        plan = compile_plan(config.policy)
        report["platform"]["options"] = [op.name for op in plan.ioctls] + [op.name for op in plan.setsockopts]
        report["platform"]["unsupported"] = list(plan.unsupported)
        report["kernel_probe"] = _probe_section(config, [info.name for info in infos], problems)
        if self_test and report["activation"]["files"]:
            works, detail = activation_works()
            report["activation"]["fresh_interpreter"] = detail
            if not works:
                problems.append(f"automatic activation is installed but {detail}")
        if self_test:
            result = _run_self_test(settings, _libraries(infos), timeout)
            report["self_test"] = result
            problems.extend(_self_test_problems(result))
            unverified = [c["client"] for c in result.get("checks", []) if not c.get("verified")]
            if unverified and "crash" not in result:
                notes.append(
                    f"not verified on a socket: {', '.join(unverified)} (see the self-test notes: a rule, "
                    "the adapter selection or respect mode left them alone)"
                )
    if self_test:
        report["audit"] = _audit_this_process(problems)
    if not self_test:
        report["self_test"] = {"skipped": "--no-self-test"}
    report["coverage"] = _coverage_section(infos, config, report.get("self_test", {}), notes)
    report["notes"] = notes
    report["problems"] = problems
    report["ok"] = not problems
    return report


def _coverage_section(
    infos: Sequence[AdapterInfo], config: Config | None, self_test: Mapping[str, Any], notes: list[str]
) -> dict[str, Any]:
    """Each installed library kapatch knows of: do its connections carry the policy (``_coverage``)."""
    from ._coverage import coverage_section

    adapters: dict[str, str | None] = {}
    for info in infos:
        reason = info.load_error or info.unavailable
        if reason is None and config is not None and not config.wants_adapter(info.name):
            reason = "not selected by the configuration"
        adapters[info.name] = reason
    section = coverage_section(adapters, self_test.get("checks", []))
    missed = [
        f"{name} ({entry['why']})"
        for name, entry in section.items()
        if entry["state"] != "verified" and entry["state"] not in ("covered",)
    ]
    if missed:
        notes.append("connections of these installed libraries do NOT carry the policy: " + "; ".join(missed))
    return section


def _audit_this_process(problems: list[str]) -> dict[str, Any]:
    """``kapatch.audit()`` of the doctor's own process, after the self-test (issue 14)."""
    from ._audit import audit

    try:
        found = audit()
    except Exception as error:
        problems.append(f"audit: {error!r}")
        return {"error": repr(error)}
    problems.extend(f"audit: fd {e.fd} {e.local} -> {e.peer} missed the policy" for e in found.missed)
    return {"rendered": found.render(), "missed": len(found.missed), "sockets": len(found.entries)}


def _kernel_section(notes: list[str]) -> dict[str, int | None]:
    kernel = kernel_defaults()
    idle, intvl, probes = (
        kernel.get(k) for k in ("tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes")
    )
    if idle is not None and intvl is not None and probes is not None:
        notes.append(
            f"without a policy, keepalive (where a library turns it on at all) declares a silent peer "
            f"dead {idle + intvl * probes} s after the last packet"
        )
    return kernel


def _libraries_section(infos: Sequence[AdapterInfo], problems: list[str]) -> dict[str, Any]:
    section = {}
    for info in infos:
        entry: dict[str, Any] = {
            "target": info.target,
            "distribution": info.distribution,
            "version": info.version,
            "supported": info.supported,
            "state": "ok",
        }
        if info.load_error is not None:
            entry["state"] = f"adapter failed to load: {info.load_error}"
            problems.append(f"adapter {info.name} ({info.target}) failed to load: {info.load_error}")
        elif info.unavailable is not None:
            entry["state"] = info.unavailable
            if info.version is not None:  # installed, but a version kapatch does not support
                problems.append(f"{info.name}: {info.unavailable}")
        section[info.name] = entry
    return section


def _activation_section(notes: list[str]) -> dict[str, Any]:
    files = activation_files()
    if not files:
        notes.append(
            "automatic activation is not installed (no kapatch .pth in site-packages): "
            "KAPATCH_ENABLED=1 alone will not patch processes; use `import kapatch.auto` or `kapatch run`"
        )
    return {
        "files": [{"path": f.path, "line": f.line} for f in files],
        "KAPATCH_ENABLED": os.environ.get("KAPATCH_ENABLED"),
    }


def _probe_section(config: Config, names: Sequence[str], problems: list[str]) -> dict[str, Any]:
    section = {}
    for policy in dict.fromkeys(config.for_adapter(n).policy for n in names):
        probe = probe_kernel(policy)
        section[policy.describe()] = {
            "applied": list(probe.applied),
            "refused": list(probe.refused),
            "unsupported": list(probe.unsupported),
            "mismatches": list(probe.mismatches),
        }
        problems.extend(f"the kernel refuses {r} (policy {policy.describe()})" for r in probe.refused)
        problems.extend(f"after applying {policy.describe()}: {m}" for m in probe.mismatches)
    return section


def _self_test_problems(result: Mapping[str, Any]) -> list[str]:
    if "crash" in result:
        return [f"self-test: {result['crash']}"]
    problems = []
    for name, error in result.get("imports", {}).items():
        if error:
            problems.append(f"{name} is installed but fails to import: {error}")
    if result.get("install_error"):
        problems.append(f"self-test: install() failed: {result['install_error']}")
    for check in result.get("checks", []):
        if check.get("error"):
            problems.append(f"self-test {check['client']}: {check['error']}")
        for mismatch in check.get("mismatches", []):
            problems.append(f"self-test {check['client']} (adapter {check['owner']}): {mismatch}")
    return problems


def _section(lines: list[str], title: str) -> None:
    lines.extend(["", title])


def render_report(report: Mapping[str, Any]) -> str:
    """The doctor's report for people: sections, then one verdict line."""
    lines = [f"kapatch {report['kapatch']['version']} ({report['kapatch']['path']})"]
    _render_platform(lines, report)
    _render_configuration(lines, report.get("configuration", {}))
    _render_probes(lines, report.get("kernel_probe", {}))
    _section(lines, "Client libraries")
    for name, lib in report["libraries"].items():
        version = lib["version"] or (
            "stdlib" if lib["distribution"] is None and lib["state"] == "ok" else "-"
        )
        if lib["distribution"] not in (None, name):  # e.g. the httpx adapter follows httpcore's version
            version = f"{lib['distribution']} {version}"
        state = "supported" if lib["state"] == "ok" else lib["state"]
        lines.append(f"  {name:<9} {version:<16} {lib['supported']:<14} {state}")
    activation = report["activation"]
    _section(lines, "Automatic activation")
    lines.extend(f"  {found['path']}: {found['line']}" for found in activation["files"])
    if not activation["files"]:
        lines.append("  no kapatch .pth found in site-packages")
    if "fresh_interpreter" in activation:
        lines.append(f"  checked: {activation['fresh_interpreter']}")
    lines.append(f"  KAPATCH_ENABLED={activation['KAPATCH_ENABLED'] or '(unset)'} in this shell")
    if "coverage" in report:
        from ._coverage import render_coverage

        _section(lines, "Coverage (installed libraries and runtimes: do their connections carry the policy?)")
        lines.extend(render_coverage(report["coverage"]))
    result = report.get("self_test")
    if result is not None:
        _section(lines, "Live self-test (child process, loopback, options read back with getsockopt)")
        lines.extend(_render_self_test(result))
    if "audit" in report:
        _section(lines, "Audit of this process (every TCP socket it holds, read back)")
        lines.extend(
            "  " + line
            for line in report["audit"].get("rendered", report["audit"].get("error", "")).splitlines()
        )
    for note in report["notes"]:
        lines.append("")
        lines.extend(textwrap.wrap(f"note: {note}", 100, subsequent_indent="  "))
    problems = report["problems"]
    if problems:
        _section(lines, "Problems")
        lines.extend(f"  - {p}" for p in problems)
        lines.extend(["", f"kapatch doctor: {len(problems)} problem(s)"])
    else:
        lines.extend(["", "kapatch doctor: OK"])
    return "\n".join(lines)


def _render_platform(lines: list[str], report: Mapping[str, Any]) -> None:
    plat = report["platform"]
    _section(lines, "Platform")
    lines.append(f"  {plat['system']}, {plat['python']} ({plat['executable']})")
    if "options" in plat:
        lines.append(f"  options set on {plat['platform']}: {', '.join(plat['options']) or 'none'}")
        lines.extend(f"  not supported: {note}" for note in plat["unsupported"])
    kernel = report["kernel_defaults"]
    if kernel:
        _section(lines, "Kernel defaults (sysctl net.ipv4.*)")
        for name, value in kernel.items():
            lines.append(f"  {name:<22} {'unreadable' if value is None else value}")


def _render_configuration(lines: list[str], config: Mapping[str, Any]) -> None:
    _section(lines, "Configuration (each value <- where it came from)")
    if "error" in config:
        lines.append(f"  ERROR: {config['error']}")
        return
    sources = config["sources"]
    lines.append(
        f"  enabled {config['enabled']} ({sources.get('enabled', 'default')}); "
        f"profile {config['profile']} ({sources.get('profile', 'default')}); "
        f"mode {config['mode']} ({sources.get('mode', 'default')})"
    )
    if config["config_file"]:
        lines.append(f"  config file: {config['config_file']}")
    lines.extend(f"  rule: {rule}" for rule in config["rules"])
    for name, adapter in config["adapters"].items():
        selected = "" if adapter["selected"] else "  [not selected]"
        lines.append(f"  {name}: {adapter['policy']['describe']}; mode {adapter['mode']}{selected}")
        by_source: dict[str, list[str]] = {}
        for field in (*POLICY_FIELDS, "mode"):
            by_source.setdefault(adapter["sources"].get(field, "default"), []).append(field)
        lines.extend(f"      {', '.join(fields)} <- {source}" for source, fields in by_source.items())
        if adapter.get("pools"):
            lines.append(f"      pooled connections: {adapter['pools']}")


def _render_probes(lines: list[str], probes: Mapping[str, Any]) -> None:
    if not probes:
        return
    _section(lines, "Kernel accepts the policy (fresh socket, no connection)")
    for policy, probe in probes.items():
        verdict = "yes" if not probe["refused"] and not probe["mismatches"] else "NO"
        lines.append(f"  {verdict}: {policy}")
        lines.extend(f"      refused {r}" for r in probe["refused"])
        lines.extend(f"      {m}" for m in probe["mismatches"])


def _render_self_test(result: Mapping[str, Any]) -> list[str]:
    if "skipped" in result:
        return [f"  skipped ({result['skipped']})"]
    if "crash" in result:
        return [f"  FAILED: {result['crash']}"]
    lines = [f"  import {name}: {error or 'ok'}" for name, error in result.get("imports", {}).items()]
    if result.get("install_error"):
        lines.append(f"  install() failed: {result['install_error']}")
    for check in result.get("checks", []):
        client = check["client"]
        if check.get("error"):
            lines.append(f"  FAIL {client}: {check['error']}")
            continue
        kernel = check["kernel"]
        read = (
            f"kernel: keepalive {'on' if kernel['enabled'] else 'off'}, idle {kernel['idle']}, "
            f"interval {kernel['interval']}, count {kernel['count']}, "
            f"user timeout {kernel['user_timeout_ms']}ms"
        )
        if check["verified"]:
            verdict = "ok  " if not check["mismatches"] else "FAIL"
            lines.append(f"  {verdict} {client} (adapter {check['owner']}): wants {check['expected']}")
        else:
            lines.append(f"  --   {client}: not compared: {check['note']}")
        lines.append(f"       {read}")
        lines.append(f"       via {check['how']}")
        lines.extend(f"       mismatch: {m}" for m in check["mismatches"])
        if check["verified"] and check["note"]:
            lines.append(f"       note: {check['note']}")
    lines.extend(f"  log: {message}" for message in result.get("log", []))
    return lines


def _settings_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config file (default: KAPATCH_CONFIG)")
    parser.add_argument("--profile", help=f"one of {', '.join(PROFILES)} (default: KAPATCH_PROFILE)")


def _settings_from(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def run_doctor(argv: list[str]) -> int:
    """``kapatch doctor [--json] [--no-self-test] [--config FILE] [--profile NAME]``."""
    parser = argparse.ArgumentParser(
        prog="kapatch doctor",
        description="Check that kapatch works here: platform, kernel defaults, configuration and "
        "where each value came from, client libraries, automatic activation, and a live "
        "self-test on loopback. Exit status 1 when something is wrong.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--no-self-test", action="store_true", help="skip the live loopback self-test")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per self-test connection")
    _settings_parser(parser)
    args = parser.parse_args(argv)
    settings = _settings_from(args, ("config", "profile"))
    report = collect_report(settings, self_test=not args.no_self_test, timeout=args.timeout)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render_report(report))
    return 0 if report["ok"] else 1


# --- profiles ---------------------------------------------------------------------------------
def run_profiles(argv: list[str]) -> int:
    """``kapatch profiles [--json]``: the built-in profiles and why their numbers."""
    parser = argparse.ArgumentParser(prog="kapatch profiles", description="The built-in keepalive profiles.")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    rows = [
        {"name": p.name, **_policy_dict(p.policy), "reason": p.reason}
        for p in PROFILES.values()
    ]  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0

    def cell(value: object, unit: str) -> str:
        return "os" if value is None else f"{value}{unit}"

    def millis(value: object) -> str:
        return "off" if not isinstance(value, int) else f"{value / 1000:g}s"

    header = (
        f"{'profile':<14} {'idle':>6} {'interval':>8} {'count':>5} {'user timeout':>13} {'dead after':>10}"
        f" {'heartbeat':>9} {'max idle':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['name']:<14} {cell(row['idle'], 's'):>6} {cell(row['interval'], 's'):>8} "
            f"{cell(row['count'], ''):>5} {millis(row['user_timeout_ms']):>13} "
            f"{cell(row['detection_bound_s'], 's'):>10} "
            f"{millis(row['heartbeat']):>9} {millis(row['max_idle']):>8}"
        )
        lines.extend(textwrap.wrap(str(row["reason"]), 96, initial_indent="    ", subsequent_indent="    "))
    print("\n".join(lines))
    return 0


# --- status -----------------------------------------------------------------------------------
def run_status(argv: list[str]) -> int:
    """``kapatch status``: install from the environment in this process and show the result."""
    parser = argparse.ArgumentParser(
        prog="kapatch status",
        description="Install kapatch from the environment (KAPATCH_*, config file) in this process "
        "and print what each adapter would do.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    from .runtime import install, uninstall

    try:
        current = install()
    except ConfigError as error:
        print(f"kapatch status: {error}", file=sys.stderr)
        return 2
    try:
        if args.json:
            adapters = [
                {
                    "name": a.name,
                    "enabled": a.enabled,
                    "reason": a.reason,
                    "version": a.version,
                    "supported": a.supported,
                    "policy": _policy_dict(a.policy),
                    "mode": str(a.mode),
                }
                for a in current.adapters
            ]
            print(json.dumps({"installed": current.installed, "adapters": adapters}, indent=2))
        else:
            print(current.render())
    finally:
        uninstall()
    return 0


def run_check(argv: list[str]) -> int:
    """``kapatch check``: see :mod:`kapatch._check`."""
    from ._check import run_check as check

    return check(argv)


_COMMANDS = {"doctor": run_doctor, "check": run_check, "profiles": run_profiles, "status": run_status}


def main(argv: list[str] | None = None) -> int:
    """``python -m kapatch.doctor doctor|check|profiles|status ...`` (the CLI's subcommands)."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in _COMMANDS:
        print(f"usage: python -m kapatch.doctor {{{'|'.join(_COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return _COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
