"""Report interleaved rounds: the variants share one process, one machine state.

Ratios are taken on the fastest round of each variant (as ``timeit`` advises): on a
shared VM, whose scheduler adds stalls of tens of milliseconds to some rounds, the
minimum is what the code costs and the median shows how noisy the machine was.

Where two variants differ by a few percent of a system call's cost (a connect), the ratio
of two minimums is itself noisy: each minimum is its variant's luckiest round, taken at
different moments. :func:`paired_ratio` compares each round's variants with each other
instead (they ran back to back) and takes the median over rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import TypeVar

_T = TypeVar("_T")


def rotated(variants: Iterable[_T], round_index: int) -> list[_T]:
    """The variants in the order for round *round_index*: each one starts as many rounds.

    A fixed order charges drift within a round to the variants that run last: on loopback
    every closed connection leaves a TIME_WAIT entry for 60 s, and connect() slows as they
    pile up (tens of thousands in a run), so the last variant of a round always met more.
    """
    order = list(variants)
    shift = round_index % len(order) if order else 0
    return order[shift:] + order[:shift]


def report(title: str, samples: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Print min and median per call (µs) and each variant's ratio to *baseline*; return the minimums."""
    fastest = {name: min(values) for name, values in samples.items()}
    print(title)
    for name, values in samples.items():
        ratio = fastest[name] / fastest[baseline]
        median = statistics.median(values)
        print(
            f"  {name:<28} min {fastest[name] * 1e6:8.2f} us  median {median * 1e6:8.2f} us"
            f"   ratio {ratio:5.3f} vs {baseline}"
        )
    return fastest


def paired_ratio(samples: dict[str, list[float]], name: str, baseline: str) -> float:
    """The median over rounds of *name*'s time over *baseline*'s in the same round.

    Paired: drift (TIME_WAIT entries piling up, the host's load) hits both sides of each
    ratio alike, and the median leaves out the rounds a stall hit on one side only.
    """
    return statistics.median(mine / base for mine, base in zip(samples[name], samples[baseline], strict=True))
