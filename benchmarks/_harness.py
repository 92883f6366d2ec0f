"""Report interleaved rounds: the variants share one process, one machine state.

Ratios are taken on the fastest round of each variant (as ``timeit`` advises): on a
shared VM, whose scheduler adds stalls of tens of milliseconds to some rounds, the
minimum is what the code costs and the median shows how noisy the machine was.
"""

from __future__ import annotations

import statistics


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
