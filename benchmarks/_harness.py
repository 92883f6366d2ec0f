"""Interleaved rounds and medians: the variants share one process, one machine state."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def compare(variants: dict[str, Callable[[], None]], *, rounds: int, per_round: int) -> dict[str, float]:
    """Median seconds per call of each variant; rounds interleave the variants."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            for _ in range(per_round):
                run()
            samples[name].append((time.perf_counter() - start) / per_round)
    return {name: statistics.median(values) for name, values in samples.items()}


def report(
    title: str, medians: dict[str, float], baseline: str, unit: float = 1e-6, label: str = "us"
) -> None:
    print(title)
    base = medians[baseline]
    for name, value in medians.items():
        print(f"  {name:<28} {value / unit:10.2f} {label}   ratio {value / base:5.3f} vs {baseline}")
