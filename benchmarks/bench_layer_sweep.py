"""Time per depth of the main job (``python -m analyses.layer_sweep``) against the sweep it replaced.

The earlier default (DailyDilemmas truthfulness, one ``mlp.out`` site per depth, a separate
sign-calibration pass on 64 calibration dilemmas and 128 validation dilemmas scored on both
questions at -1, 0, +1) is run from the commit it was written in, in a temporary git worktree;
today's default (factual honesty, a band of residual writers, the c = 0 pass reused, sign
calibration on the measure's calibration items) from this checkout. Both run one depth (0.5)
with the same training steps, one torch thread each, one after the other; prints each one's
wall time per depth and the ratio.

    python benchmarks/bench_layer_sweep.py [--steps 40] [--before 96ec383]

Needs the DailyDilemmas folder for the earlier sweep (``$INTERP_DILEMMAS_DIR`` or ../shared/data).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "96ec383"  # the last commit whose main job was the DailyDilemmas single-site sweep


def timed_sweep(checkout: Path, out: Path, steps: int) -> float:
    """Seconds of one depth of ``checkout``'s layer sweep, with its own defaults (a fresh folder, one thread)."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "INTERP_TEST_THREADS": "1"}
    cmd = [sys.executable, "-m", "analyses.layer_sweep", "--layers", "0.5", "--steps", str(steps), "--out", str(out),
           "--figures", "", "--no-progress"]
    if (checkout / "analyses" / "layer_sweep.py").read_text().count("--jobs"):
        cmd += ["--jobs", "1"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"the sweep in {checkout} failed:\n{done.stderr[-3000:]}")
    return seconds


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="training steps per depth (both sweeps)")
    p.add_argument("--before", default=BEFORE, help="the commit of the earlier sweep")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tmp / "before"), args.before],
                       check=True, capture_output=True)
        try:
            before = timed_sweep(tmp / "before", tmp / "out_before", args.steps)
            now = timed_sweep(ROOT, tmp / "out_now", args.steps)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "before")], capture_output=True)
    print(f"one depth, {args.steps} training steps, one thread: before ({args.before}, DailyDilemmas, one site) "
          f"{before / 60:.1f} min; now (facts, a band) {now / 60:.1f} min; ratio now / before {now / before:.2f}")
    return now / before


if __name__ == "__main__":
    main()
