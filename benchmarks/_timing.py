"""Timing shared by the benchmarks: median wall time after one warm-up call, and the options of a forward benchmark."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable


def forward_parser(doc: str) -> argparse.ArgumentParser:
    """``--model --batch --tokens --repeats``: the batch a forward benchmark times (random tokens)."""
    from interp.models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    return parser


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` (after one untimed warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_times(fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``fn_a`` and ``fn_b``, called alternately (after one warm-up each), so a
    noisy machine's slow moments fall on both alike."""
    fn_a()
    fn_b()
    a, b = [], []
    for _ in range(repeats):
        for fn, out in ((fn_a, a), (fn_b, b)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def report(head: str, rows: list[tuple[str, str]]) -> None:
    """Print a benchmark's result: a head line, then ``label  value`` rows with the labels aligned."""
    width = max(len(label) for label, _ in rows)
    print(head)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
