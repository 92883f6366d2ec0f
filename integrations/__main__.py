"""`python -m integrations`: run the dead-peer lab and write RESULTS.md + results.json.

Exit status: 0 every row met its expectation, 1 some did not, 2 the lab cannot run here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from integrations.client import CLIENTS, SITUATIONS
from integrations.netlab import LabError, preflight
from integrations.report import write
from integrations.runner import DEFAULT_CAP, run_lab


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m integrations", description=__doc__)
    p.add_argument("--situation", action="append", choices=SITUATIONS, help="repeatable; default: all")
    p.add_argument("--client", action="append", choices=list(CLIENTS), help="repeatable")
    p.add_argument("--cap", type=float, default=DEFAULT_CAP, help="seconds to watch a hanging client")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="directory for RESULTS.md and results.json (default: integrations/)",
    )
    args = p.parse_args(argv)
    reason = preflight()
    if reason:
        print(f"dead-peer lab cannot run: {reason}", file=sys.stderr)
        return 2
    try:
        results = run_lab(args.situation, args.client, args.cap, log=lambda m: print(m, flush=True))
    except LabError as exc:
        print(f"dead-peer lab failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dead-peer lab interrupted; everything it created was removed", file=sys.stderr)
        return 130
    md, js = write(results, args.out)
    bad = [r for r in results["rows"] if not r.get("verdict", {}).get("ok")]
    print(f"wrote {md} and {js}; wall time {results['wall_s']} s")
    if results["leftovers"]:
        print(f"LEFTOVERS: {results['leftovers']}", file=sys.stderr)
        return 1
    print(f"{len(results['rows']) - len(bad)}/{len(results['rows'])} rows as expected")
    for r in bad:
        kind = (
            f"layer {r['layer']}" if r.get("layer") else "with kapatch" if r["kapatch"] else "without kapatch"
        )
        print(f"  not as expected: {r['situation']} {r['client']} {kind}: {r['status']} "
              f"{r.get('detect_s')} (expected {r.get('verdict', {}).get('expect')})")  # fmt: skip
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
