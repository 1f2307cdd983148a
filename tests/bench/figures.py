"""Helpers to measure and print benchmark figures (never asserted)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(name: str, samples_s: list[float], unit: str = "ms") -> str:
    scale = 1000 if unit == "ms" else 1
    p50, p99 = percentile(samples_s, 50) * scale, percentile(samples_s, 99) * scale
    mean = statistics.fmean(samples_s) * scale
    return f"{name:<48} n={len(samples_s):<4} p50={p50:8.2f} {unit}  p99={p99:8.2f} {unit}  mean={mean:8.2f} {unit}"


@contextmanager
def timed(samples: list[float]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    samples.append(time.perf_counter() - start)


def report(title: str, lines: list[str]) -> None:
    bar = "=" * max(len(title), 60)
    print(f"\n{bar}\n{title}\n{bar}")
    for line in lines:
        print(line)


def repeat(times: int, action: Callable[[], object]) -> list[float]:
    samples: list[float] = []
    for _ in range(times):
        with timed(samples):
            action()
    return samples
