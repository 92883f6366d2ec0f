"""Every benchmark in one run, judged against issue 13's targets: ``python -m benchmarks``.

Prints each target's figure, ratio and whether it is met, and writes the same as JSON
(``benchmarks/results.json``, or ``--json PATH``). Ratios come from variants measured in
the same process and run (interleaved rounds; connects and start-ups judged on paired
rounds, start-ups on the children's CPU time). The README's "Cost" table is copied from
this output.

    .venv/bin/python -m benchmarks [--startup-runs 40] [--no-callgrind] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from . import callgrind, connect, memory, pool, startup

HERE = Path(__file__).resolve().parent


def _row(target: str, figure: str, ratio: float | None, limit: str, met: bool | None) -> dict[str, object]:
    """One line of the table; *met* is ``None`` for a line that explains a target, not one."""
    return {"target": target, "figure": figure, "ratio": ratio, "limit": limit, "met": met}


def run(startup_runs: int, with_callgrind: bool) -> dict[str, object]:
    rows = []
    found, paired = connect.measure()
    # Target 1 is judged on paired ratios (benchmarks._harness.paired_ratio): the variants of a
    # round ran back to back, and the median over rounds leaves out the rounds a stall hit.
    # The ratio of the fastest rounds is printed beside it. For override vs by hand, runs here
    # gave 0.993 to 1.123 as that ratio (four runs, 21 rounds of 300) and 1.018 to 1.032 as the
    # paired median (six runs, 101 rounds of 200; see the README's Cost): each process's own
    # memory layout still moves it a little, and no number of rounds in one run averages that out.
    connect_row = "1. loopback connect, kapatch"
    rows_of_target_1 = (
        # (pair, label, limit; "" for a line that explains a target). Respect mode (the default)
        # reads the socket (five getsockopt calls) before it writes: its like for like is the
        # same reads and writes by hand, and the reads' own cost shows against the writes alone.
        # The floor, a hand-written hook that only checks for TCP and writes (benchmarks.floor),
        # bounds any hook that needs no change to the application's code.
        ("override / by hand", f"{connect_row} (override) vs the same options by hand", "<= 1.05"),
        ("respect / read + write by hand",
         f"{connect_row} (respect, the default) vs the same reads and writes by hand", "<= 1.05"),
        ("respect / by hand", "   respect mode's reads: kapatch (respect) vs the writes alone", ""),
        ("read + write / by hand", "   the same reads by hand: reads and writes vs the writes alone", ""),
        ("floor / by hand", "   bound: the floor (a minimal Python hook) vs the same options by hand", ""),
        ("override / floor", "   kapatch (override) vs the floor: deciding, noting, counting", ""),
    )  # fmt: skip
    for pair, label, limit in rows_of_target_1:
        name, baseline = connect.PAIRS[pair]
        ratio = paired[pair]
        figure = (f"fastest rounds {found[name] * 1e6:.2f} vs {found[baseline] * 1e6:.2f} us per "
                  f"socket()+connect()+close() (ratio {found[name] / found[baseline]:.3f}); "
                  f"the ratio: median of {connect.ROUNDS} paired rounds")  # fmt: skip
        rows.append(_row(label, figure, ratio, limit, ratio <= 1.05 if limit else None))
    by_hand, hook = found["5 setsockopt by hand"], found["kapatch's connect hook"]
    ratio = hook / by_hand
    figure = f"{hook * 1e6:.2f} vs {by_hand * 1e6:.2f} us"
    rows.append(_row("2. the hook's own work (override) vs the bare 5 setsockopt", figure, ratio, "<= 1.5",
                     ratio <= 1.5))  # fmt: skip
    floor_work = found[connect.FLOOR_WORK]
    ratio = floor_work / by_hand
    figure = f"{floor_work * 1e6:.2f} vs {by_hand * 1e6:.2f} us"
    rows.append(_row("   bound: the floor's own work (TCP check, loop over writes) vs the bare 5", figure,
                     ratio, "", None))  # fmt: skip
    pooled = pool.run()
    for name, label in (("requests", "requests GET"), ("redis", "redis GET")):
        figures = pooled[name]
        if figures is None:
            continue
        # Judged on what kapatch adds to a pooled request: the pool's hand-out and hand-back
        # (the request's I/O does not pass through kapatch), timed without I/O and set against
        # the request. End to end, on this shared VM, the ratio of two identical code paths
        # swings by up to 5% between runs (min or median), more than the 1% it would judge.
        per = {variant: figures[f"request us, {variant}"] for variant in pool.VARIANTS}
        ratio = figures["throughput installed / no kapatch, from the hand-out cost"]
        hand_out = {variant: figures[f"hand-out us, {variant}"] for variant in pool.VARIANTS}
        figure = (f"{hand_out[pool.INSTALLED]:.2f} vs {hand_out[pool.NONE]:.2f} us at hand-out; end to end "
                  f"{1e6 / per[pool.INSTALLED]:.0f} vs {1e6 / per[pool.NONE]:.0f} requests/s "
                  f"({figures['throughput installed / no kapatch']:.3f}, "
                  f"medians {figures['throughput installed / no kapatch, medians']:.3f})")  # fmt: skip
        rows.append(_row(f"3. pooled {label} throughput, kapatch vs without", figure, ratio, ">= 0.99",
                         ratio >= 0.99))  # fmt: skip
        # issue 11: heartbeat and max_idle configured but not firing cost nothing on the data path
        ratio = figures["throughput configured / installed, from the hand-out cost"]
        figure = (f"+{figures['extra us per request, configured']:.2f} us at hand-out; end to end "
                  f"{1e6 / per[pool.CONFIGURED]:.0f} vs {1e6 / per[pool.INSTALLED]:.0f} requests/s "
                  f"({figures['throughput configured / installed']:.3f}, medians "
                  f"{figures['throughput configured / installed, medians']:.3f})")  # fmt: skip
        rows.append(_row(f"3. {label} with heartbeat and max_idle set (not firing) vs without them", figure,
                         ratio, ">= 0.99", ratio >= 0.99))  # fmt: skip
    retained = memory.measure()
    kept_kb = max(retained["traced_kb"], retained["rss_kb"])
    figure = (f"tracemalloc {retained['traced_kb']:+.1f} KB, RSS {retained['rss_kb']:+.0f} KB, "
              f"ledger {retained['ledger_entries']:.0f} entries")  # fmt: skip
    rows.append(_row(f"4. memory retained by {retained['connections']:,.0f} connections", figure, None,
                     "< 100 KB", kept_kb < 100))  # fmt: skip
    cpu = startup.measure(startup_runs)
    if cpu:
        # Judged on paired figures (startup.measure): each enabled start ran right after its
        # disabled twin, so a change of the host's speed between minutes hits both. The
        # difference of the two cases' own medians is printed beside it.
        start = "5. interpreter start when enabled"
        for label, pair in (
            (f"{start}, `python -c pass`", "added, `python -c pass`"),
            (f"{start}, a program importing asyncio etc.", "added, service imports"),
            # It explains the line above: where the runtime's cost went.
            (
                "   the same program and one loopback connection (the runtime installs at it)",
                "added, one connection",
            ),
        ):
            on, off, judged = startup.PAIRS[pair]
            figure = (f"+{cpu[pair]:.1f} ms CPU, median of paired rounds; the cases' medians "
                      f"{cpu[on]:.1f} vs {cpu[off]:.1f} ms (+{cpu[on] - cpu[off]:.1f})")  # fmt: skip
            verdict = cpu[pair] <= 10 if judged else None
            rows.append(_row(label, figure, None, "<= +10 ms" if judged else "", verdict))
        ratio = cpu["disabled / not installed"]
        disabled, absent = cpu["installed, disabled"], cpu["not installed"]
        figure = (f"median of paired rounds; the cases' medians {disabled:.1f} vs {absent:.1f} ms CPU "
                  f"({disabled / absent:.3f})")  # fmt: skip
        label = "   interpreter start, installed but disabled vs not installed"
        rows.append(_row(label, figure, ratio, "<= 1.02", ratio <= 1.02))
    counts = callgrind.measure() if with_callgrind else {}
    starts = callgrind.measure_startup() if with_callgrind else {}
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "targets": rows,
        "callgrind_instructions_per_iteration": counts,
        "callgrind_instructions_per_start": starts,
    }


def print_table(result: dict[str, object]) -> None:
    print(f"\nissue 13 targets (python {result['python']}, {result['when']}):")
    rows = result["targets"]
    assert isinstance(rows, list)
    for row in rows:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.3f}"
        verdict = "" if row["met"] is None else "met" if row["met"] else "NOT met"
        print(f"  {row['target']:<68} {ratio:>6} {row['limit']:>10}  {verdict}\n      {row['figure']}")
    counts = result["callgrind_instructions_per_iteration"]
    assert isinstance(counts, dict)
    if counts:
        bare = counts["bare"]
        print("callgrind, instructions per connection beyond socket(), connect(), accept(), close():")
        for name, label in callgrind.VARIANTS.items():
            if name != "bare":
                print(f"  {label:36s} {counts[name] - bare:8.0f}")
        callgrind.print_account(counts)
    starts = result["callgrind_instructions_per_start"]
    assert isinstance(starts, dict)
    for name, found in starts.items():
        added = found["enabled"] - found["disabled"]
        print(f"callgrind, interpreter start ({name}): {found['disabled'] / 1e6:.1f}M -> "
              f"{found['enabled'] / 1e6:.1f}M instructions (+{added / 1e6:.1f}M enabled)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--startup-runs", type=int, default=40)
    parser.add_argument("--no-callgrind", action="store_true")
    parser.add_argument("--json", default=str(HERE / "results.json"))
    args = parser.parse_args()
    result = run(args.startup_runs, not args.no_callgrind)
    print_table(result)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
