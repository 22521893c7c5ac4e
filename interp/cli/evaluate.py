"""``python -m interp.evaluate``: score a saved adapter (or the base model) on a concept's own measure.

The floor check of the base model comes first; below it the effects are not printed as
results. ``--out`` keeps ``scores.nc``, ``table.md`` and ``table.csv``, and is held from the
start of the run (a second evaluation into the same folder is refused at once).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import xarray as xr

from interp.adapters.io import AdapterLoadError, load_adapter
from interp.backends import RemoteUnavailable
from interp.cli import add_measure_args, add_shared_args, join_negative_values, measure_from_args, model_from_args, positive_int
from interp.files import RunLocked, run_lock, write_netcdf, write_text
from interp.models import ModelLoadError
from interp.floor import FLOOR_MESSAGE, FloorCheck, floored_table
from interp.provenance import to_attr
from interp.splits import SPLIT_SEED
from interp.tables import shown

DEFAULT_COEFFS: tuple[float, ...] = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


def write_results(ds: xr.Dataset, table: pd.DataFrame, out_dir: str | Path, floor: FloorCheck | None = None,
                  target: str | None = None) -> dict[str, Path]:
    """``scores.nc``, ``table.md`` and ``table.csv`` in ``out_dir`` (atomic writes); ``floor`` heads the markdown
    and is stored in the dataset's attrs; the labels name ``target`` (default: the dataset's own)."""
    out = Path(out_dir)
    target = target or str(ds.attrs.get("target", "target"))
    if floor is not None:
        ds = ds.assign_attrs(floor_check=to_attr(floor.to_dict()))
    with run_lock(out):  # the three files come from one run
        return {"dataset": write_netcdf(ds, out / "scores.nc"),
                "markdown": write_text(out / "table.md", floored_table(table, floor, target)),
                "csv": write_text(out / "table.csv", table.to_csv(index=False))}


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    p = argparse.ArgumentParser(prog="python -m interp.evaluate",
                                description="Score a saved adapter (or the base model) on a concept's own measure.")
    add_shared_args(p, out="folder for scores.nc / table.md / table.csv (default: print only)", seed="bootstrap seed",
                    quick="score 16 items: a smoke run", n_eval="score only the first N items of the split", backends=True)
    add_measure_args(p)
    p.add_argument("--adapter", default=None, help="saved adapter folder (default: the base model only)")
    p.add_argument("--coeffs", default=",".join(f"{c:g}" for c in DEFAULT_COEFFS),
                   help="comma-separated coefficients, 0 added if missing (e.g. --coeffs -1,1)")
    p.add_argument("--split", choices=("calibration", "validation", "test"), default="test")
    p.add_argument("--dilemmas", default=None, help="DailyDilemmas folder (a dailydilemmas measure)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="rows per forward pass")
    p.add_argument("--min-pmass", type=float, default=None, help="DailyDilemmas: rows with p(Yes)+p(No) below are NaN")
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the calibration/validation/test split (default: the protocol's one split for every analysis)")
    p.add_argument("--no-floor-check", action="store_true",
                   help="skip the floor check (base model at chance and prompting does not move it -> effects are not shown)")
    args = p.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv, ["--coeffs"]))
    try:
        args.coeffs = sorted({0.0, *(float(c) for c in args.coeffs.split(","))})
    except ValueError:
        p.error(f"--coeffs must be comma-separated numbers, got {args.coeffs!r}")
    if args.min_pmass is not None and not 0.0 <= args.min_pmass <= 1.0:
        p.error(f"--min-pmass must lie in [0, 1], got {args.min_pmass}")
    if args.quick and args.n_eval is None:
        args.n_eval = 16
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out} is a file; a results folder is needed")
    return args, p


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    args, p = parse_args(argv)
    measure = measure_from_args(args, p.error, dilemmas=args.dilemmas, min_pmass=args.min_pmass, batch_size=args.batch_size)
    try:
        with run_lock(args.out) if args.out else contextlib.nullcontext():
            return _evaluate(args, p, measure)
    except RunLocked as err:
        p.error(str(err))
    except RemoteUnavailable as err:
        p.exit(2, f"{p.prog}: cannot run remotely: {err}\n")
    except (AdapterLoadError, ModelLoadError, ValueError) as err:  # the library's own errors name their input
        p.error(str(err))


def _evaluate(args: argparse.Namespace, p: argparse.ArgumentParser, measure) -> pd.DataFrame:
    model = model_from_args(args)
    method = None
    if args.adapter:
        method = load_adapter(model, args.adapter)
    items = measure.splits(SPLIT_SEED if args.split_seed is None else args.split_seed)[args.split]
    if args.n_eval is not None:
        if args.n_eval < 2:
            p.error(f"--n-eval must be >= 2, got {args.n_eval}")
        items = items.head(args.n_eval)
    progress = not args.no_progress
    ds = measure.score(model, method, items, args.coeffs, progress=progress, seed=args.seed)
    floor = None
    if not args.no_floor_check:
        try:
            floor = measure.floor(model, items, base=ds.isel(method=[0]).sel(coeff=[0.0]), progress=progress, seed=args.seed)[0]
        except ValueError as err:  # too few scorable items in this selection
            print(f"no floor check: {err}")
    table = measure.table(ds, args.seed)
    print(f"{len(items)} items ({args.split} split) of {measure.label}")
    if floor is not None:
        print(floor.summary())
    if floor is None or floor.passes:
        print(shown(table, measure.label).to_markdown(index=False, floatfmt=".4g"))
    else:
        print(f"{FLOOR_MESSAGE}: effects not printed (--out keeps them in table.md under that heading)")
    if args.out:
        for path in write_results(ds, table, args.out, floor, measure.label).values():
            print(f"wrote {path}")
    return table
