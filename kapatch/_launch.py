"""``kapatch run [policy options] -- COMMAND ...``: run any command with kapatch on.

The options become ``KAPATCH_*`` environment variables (plus ``KAPATCH_ENABLED=1``),
are validated with the same parser the runtime uses, and the command replaces this
process (``os.execvpe``), so its exit status is the command's own. Every Python process
in the tree inherits the variables, and the ``kapatch.pth`` start-up hook of its
interpreter turns kapatch on there. Limits, said plainly: a Python that does not process
site-packages ``.pth`` files (``python -S``, or an environment where kapatch is not
installed) is not patched; programs in other languages ignore the variables.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from ._bootstrap import GATE_VARIABLE, PTH_NAME
from ._env import env_name
from ._errors import ConfigError
from ._registry import adapter_names
from ._settings import ADAPTER_FIELDS
from ._sysinfo import installed_file

__all__ = ["OPTIONS", "build_environment", "main"]

EXIT_USAGE = 2
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
"""The shell's codes for a command that cannot run or cannot be found."""

OPTIONS: dict[str, tuple[str, str]] = {
    "--profile": ("profile", "policy profile (see `kapatch profiles`)"),
    "--idle": ("idle", "idle time before the first probe, e.g. 45s"),
    "--interval": ("interval", "time between probes, e.g. 10s"),
    "--count": ("count", "unanswered probes before the connection is dropped"),
    "--user-timeout": ("user_timeout", "TCP_USER_TIMEOUT: a duration, auto or off"),
    "--mode": ("mode", "respect (the application's own options win) or override"),
    "--adapters": ("adapters", "comma-separated adapters to enable (default: all available)"),
    "--disabled-adapters": ("disabled_adapters", "comma-separated adapters never to enable"),
    "--exclude": ("exclude", "comma-separated destinations to leave alone (CIDR, host glob, :port)"),
    "--config": ("config", "TOML file with the policy"),
    "--on-error": ("on_error", "warn (run unpatched) or raise (stop) on a bad setting"),
    "--log-level": ("log_level", "debug, info, warning, error or critical"),
}
"""Option -> (setting, help). Each maps to the variable ``env_name(setting)``."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kapatch run",
        description="Run COMMAND with kapatch enabled in it and in every Python process it starts.",
        epilog="Example: kapatch run --profile aws --set redis.idle=10s -- gunicorn app:wsgi",
    )
    for option, (setting, help_text) in OPTIONS.items():
        parser.add_argument(option, dest=setting, metavar="VALUE", help=help_text)
    parser.add_argument(
        "--set",
        dest="per_adapter",
        action="append",
        default=[],
        metavar="ADAPTER.FIELD=VALUE",
        help=f"per-adapter override, repeatable; fields: {', '.join(ADAPTER_FIELDS)}",
    )
    parser.add_argument(
        "--audit",
        action="store_true",
        help="each Python process of the command prints `kapatch audit` of itself to stderr at exit",
    )
    parser.add_argument(
        "--audit-signal",
        action="store_true",
        help="with --audit: also on SIGUSR1 (where the program has no SIGUSR1 handler of its own)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    return parser


class UsageError(Exception):
    """A bad option; the message names it."""


def build_environment(
    options: Mapping[str, str | None], per_adapter: Sequence[str], base: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The command's environment, and variable -> option for error messages. Validates it.

    Raises :class:`UsageError` naming the option (or the inherited variable) at fault.
    """
    env = dict(base)
    origin: dict[str, str] = {}
    for option, (setting, _) in OPTIONS.items():
        value = options.get(setting)
        if value is None:
            continue
        if setting == "config" and value.strip():
            value = os.path.abspath(value)  # the command may change directory before it is read
        env[env_name(setting)] = value
        origin[env_name(setting)] = option
    names = adapter_names()
    for item in per_adapter:
        target, equals, value = item.partition("=")
        adapter, dot, field = target.strip().lower().partition(".")
        field = field.replace("-", "_")
        if not (equals and dot):
            raise UsageError(f"--set {item!r}: expected ADAPTER.FIELD=VALUE, e.g. redis.idle=10s")
        if adapter not in names:
            raise UsageError(f"--set {item!r}: unknown adapter {adapter!r}; adapters are {', '.join(names)}")
        if field not in ADAPTER_FIELDS:
            raise UsageError(
                f"--set {item!r}: unknown field {field!r}; fields are {', '.join(ADAPTER_FIELDS)}"
            )
        env[env_name(field, adapter)] = value
        origin[env_name(field, adapter)] = f"--set {target}"
    env[GATE_VARIABLE] = "1"
    origin.setdefault(GATE_VARIABLE, "kapatch run")
    _validate(env, origin)
    return env, origin


def _validate(env: Mapping[str, str], origin: Mapping[str, str]) -> None:
    from .config import load_config

    try:
        load_config(environ=env)
    except ConfigError as error:
        raise UsageError(_describe(error, origin)) from None


def _describe(error: ConfigError, origin: Mapping[str, str]) -> str:
    # error.setting is the variable (KAPATCH_IDLE), possibly with where a combination came from.
    for variable, option in sorted(origin.items(), key=lambda item: -len(item[0])):
        if error.setting == variable or error.setting.startswith(variable + " "):
            return f"{option} {error.value!r}: {error.allowed}"
    # A combination (idle set, interval not): name every option that took part in it.
    involved = [opt for var, opt in origin.items() if var != GATE_VARIABLE and f"env {var}" in error.setting]
    if involved:
        label = error.setting.split(" (", 1)[0]
        return f"{', '.join(involved)}: {label}={error.value!r}: {error.allowed}"
    if error.setting.startswith("KAPATCH_"):
        return f"{error} (inherited from the environment)"
    return str(error)


def main(argv: Sequence[str]) -> int:
    """``kapatch run``; returns only on an error (otherwise the command replaces this process)."""
    parser = _parser()
    arguments = parser.parse_args(list(argv))
    command = list(arguments.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.print_usage(sys.stderr)
        sys.stderr.write("kapatch run: no command given; e.g. kapatch run --profile aws -- python app.py\n")
        return EXIT_USAGE
    options = {setting: getattr(arguments, setting) for setting, _ in OPTIONS.values()}
    try:
        env, _ = build_environment(options, arguments.per_adapter, os.environ)
    except UsageError as error:
        sys.stderr.write(f"kapatch run: {error}\n")
        return EXIT_USAGE
    if arguments.audit or arguments.audit_signal:
        from ._audit import AUDIT_VARIABLE

        env[AUDIT_VARIABLE] = "exit,signal" if arguments.audit_signal else "exit"
    if installed_file(PTH_NAME) is None:
        sys.stderr.write(
            f"kapatch run: warning: {PTH_NAME} is not installed for {sys.executable}; Python processes "
            "will not be patched unless their environment has kapatch installed (pip install kapatch)\n"
        )
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        sys.stderr.write(f"kapatch run: {command[0]}: command not found\n")
        return EXIT_NOT_FOUND
    except PermissionError as error:
        sys.stderr.write(f"kapatch run: {command[0]}: {error.strerror}\n")
        return EXIT_NOT_EXECUTABLE
    except OSError as error:
        sys.stderr.write(f"kapatch run: {command[0]}: {error.strerror}\n")
        return EXIT_NOT_EXECUTABLE
