"""The ``kapatch`` command: ``run``, ``doctor``, ``check``, ``profiles``, ``status``.

Subcommands are imported only when used, so ``kapatch run`` stays quick to start.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]

EXIT_USAGE = 2

USAGE = """\
usage: kapatch COMMAND [ARGS...]

commands:
  run [OPTIONS] -- CMD...   run CMD with kapatch enabled in it and every Python process it starts
  doctor [--json]           check this machine, the policy and each client library, with a live self-test
  check HOST:PORT           connect once with the policy and print what the kernel reports
  profiles                  the built-in policy profiles
  status                    the effective configuration
  audit [--pid PID] [--json]  every TCP socket of a process, read back from the kernel, vs the policy

`kapatch COMMAND --help` describes each one. Environment: KAPATCH_ENABLED=1 turns kapatch
on in any Python process without a code change.
"""

# Command -> (module, function); the function takes the remaining arguments, returns the exit status.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("kapatch._launch", "main"),
    "doctor": ("kapatch.doctor", "run_doctor"),
    "check": ("kapatch._check", "run_check"),
    "profiles": ("kapatch.doctor", "run_profiles"),
    "status": ("kapatch.doctor", "run_status"),
    "audit": ("kapatch._audit", "run_audit"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        (sys.stdout if args else sys.stderr).write(USAGE)
        return 0 if args else EXIT_USAGE
    if args[0] == "--version":
        from . import __version__

        print(f"kapatch {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"kapatch: unknown command {name!r}\n{USAGE}")
        return EXIT_USAGE
    module_name, function = COMMANDS[name]
    command: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), function)
    return command(rest)


if __name__ == "__main__":
    sys.exit(main())
