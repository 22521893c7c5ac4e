"""DailyDilemmas scoring speed: dilemmas per second, batched vs one at a time.

    python benchmarks/bench_evaluate.py [--model smollm2-135m] [--n 32] [--batch-size 16] [--repeats 1]

Scores the same ``n`` test-split dilemmas at c = 0 with ``batch_size`` rows per forward
pass and with one row per pass; prints dilemmas/second for each, the ratio (target >= 4x),
and the largest log-ratio difference between the two (parity, not a timing). The
choice and the ΔNLL span come from the same pass, so this is the whole cost of one
coefficient. Timings are medians over ``repeats``; the machine's other load shows in them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from interp.models import DEFAULT_MODEL
from interp.dilemmas import load_dilemmas, split_dilemmas
from interp.evaluate import EvalConfig, score_dilemmas
from interp.models import load_model


def _rate(model, data, batch_size: int, repeats: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = score_dilemmas(model, None, [0.0], data, EvalConfig(batch_size=batch_size, min_pmass=0.0), progress=False)
        times.append(time.perf_counter() - start)
    return len(data) / statistics.median(times), out["log_ratio"].values.ravel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--n", type=int, default=32, help="number of dilemmas")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dilemmas", default=None, help="DailyDilemmas folder")
    args = parser.parse_args(argv)

    model = load_model(args.model)
    data = split_dilemmas(load_dilemmas(args.dilemmas))["test"].head(args.n)
    score_dilemmas(model, None, [0.0], data.head(2), progress=False)  # warm-up (first-call allocations)
    batched, lr_b = _rate(model, data, args.batch_size, args.repeats)
    single, lr_s = _rate(model, data, 1, args.repeats)
    print(f"model {args.model}, {len(data)} dilemmas, torch threads {torch.get_num_threads()}")
    print(f"batched (batch {args.batch_size}): {batched:.2f} dilemmas/s")
    print(f"one at a time:          {single:.2f} dilemmas/s")
    print(f"ratio batched / single: {batched / single:.2f}x (target >= 4x)")
    print(f"max |log-ratio difference|: {np.nanmax(np.abs(lr_b - lr_s)):.2e}")


if __name__ == "__main__":
    main()
