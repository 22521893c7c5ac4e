"""Does a concept's adapter move only its own concept? Each adapter on each concept's measure, at a matched cost.

An honesty adapter that makes the model cheerful would move the sentiment margin as well as (or
instead of) the facts margin. Each saved adapter (trained and sign-calibrated on its own concept, e.g.
by ``interp.train`` or ``compare_methods``) is scaled to the same coherence budget (next-token KL on
its own concept's calibration prompts) and scored at ``-c, 0, +c`` on every measure named (their test
split by default), giving the table rows = adapters, columns = measures. The base model's c = 0 pass
is scored once per measure.

    python -m analyses.cross_concept --adapters honesty=runs/h/adapter,sentiment=runs/s/adapter \\
        --measures honesty:facts,sentiment --budget 0.3 --n-eval 128

Results: ``<out>/cross_concept.nc`` (dims adapter, measure; provenance attrs) and ``cross_concept.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from analyses._io import analysis_parser, load_dataset, result_folder, write_netcdf, write_text
from interp.adapters.io import AdapterLoadError, load_adapter, read_adapter_config
from interp.backends import backend_of
from interp.cli import QUICK, model_from_args, positive_float
from interp.files import RunLocked, run_lock
from interp.measures import Measure, measure_of
from interp.protocol import base_scores, calibrate_method_strength
from interp.provenance import provenance

KEYS = ("coeff", "delta_target", "delta_target_neg", "p_value", "delta_nll", "delta_nll_neg", "flipped_share_neg",
        "token_bias_neg")


def adapter_concept(path: str | Path) -> str:
    """The concept an adapter was trained on (its training record), ``honesty`` where none is recorded."""
    return read_adapter_config(path).get("training", {}).get("config", {}).get("concept", "honesty")


def cross_row(model, adapter_path: str, measures: dict[str, Measure], splits: dict, bases: dict, budget: float,
              seed: int = 0, progress: bool = True) -> dict[str, dict]:
    """One adapter scaled to ``budget`` nats of KL on its own concept's calibration prompts, scored on every measure."""
    own = measure_of(adapter_concept(adapter_path))
    adapter = load_adapter(model, adapter_path)
    try:
        strength = calibrate_method_strength(model, adapter, own, own.splits()["calibration"], budget)
        row = {}
        for name, measure in measures.items():
            c = float(strength)
            ds = measure.score(model, adapter, splits[name], (-c, 0.0, c), progress=progress, seed=seed, base=bases[name])
            row[name] = {"coeff": c, **measure.metrics_at(ds, c, seed)}
    finally:
        adapter.detach()
    return row


def cross_dataset(rows: dict[str, dict[str, dict]], measures: dict[str, Measure], attrs: dict) -> xr.Dataset:
    names, cols = list(rows), list(measures)
    data = {k: (("adapter", "measure"), np.array([[float(rows[a][m].get(k, np.nan)) for m in cols] for a in names]))
            for k in KEYS}
    ds = xr.Dataset(data, coords={"adapter": names, "measure": cols,
                                  "unit": ("measure", [measures[m].unit for m in cols]),
                                  "label": ("measure", [measures[m].label for m in cols])})
    ds.attrs.update(attrs)
    return ds


def markdown(ds: xr.Dataset) -> str:
    """Rows: adapters; per measure, the shift at +c / -c (its own unit) and ΔNLL at +c."""
    table = {"adapter (its concept)": [str(a) for a in ds["adapter"].values]}
    for m in ds["measure"].values:
        r = ds.sel({"measure": m})
        unit = str(r["unit"].values)
        table[f"{m}: Δ at +c / -c ({unit})"] = [f"{p:+.3f} / {n:+.3f}" for p, n in
                                               zip(r["delta_target"].values, r["delta_target_neg"].values)]
        table[f"{m}: ΔNLL +c"] = [f"{v:.3f}" for v in r["delta_nll"].values]
    head = (f"Cross-concept table on {ds.attrs.get('model_spec', '')}, {ds.attrs.get('split', '')} split, every adapter at "
            f"{ds.attrs.get('budget', '')} nats of next-token KL on its own concept's calibration prompts\n\n")
    return head + pd.DataFrame(table).to_markdown(index=False) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = analysis_parser("cross_concept", __doc__, writes="cross_concept.nc and cross_concept.md", quick=f"{QUICK.n_eval} items per measure",
                        n_eval="items of each measure's split (default: all)")
    p.add_argument("--adapters", required=True, help="NAME=PATH,... saved adapters (each records its training concept)")
    p.add_argument("--measures", default="honesty:facts,sentiment",
                   help="CONCEPT[:MEASURE],... the measures every adapter is scored on")
    p.add_argument("--budget", type=positive_float, default=0.3, help="next-token KL (nats) each adapter is scaled to")
    p.add_argument("--split", choices=("validation", "test"), default="test")
    args = p.parse_args(argv)
    args.error = p.error
    try:
        args.adapter_paths = dict(part.split("=", 1) for part in args.adapters.split(",") if part.strip())
    except ValueError:
        p.error(f"--adapters needs NAME=PATH,..., got {args.adapters!r}")
    for name, path in args.adapter_paths.items():
        if not (Path(path) / "adapter.json").is_file():
            p.error(f"--adapters {name}={path}: no saved adapter there (expected {Path(path) / 'adapter.json'})")
    try:
        args.measure_objs = {part: measure_of(*part.split(":", 1)) for part in args.measures.split(",") if part.strip()}
    except ValueError as err:
        p.error(f"--measures {args.measures}: {err}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    out = Path(args.out or result_folder("cross_concept", args.model, args.quick))
    progress = not args.no_progress
    try:
        with run_lock(out):
            model = model_from_args(args)
            splits, bases = {}, {}
            for name, measure in args.measure_objs.items():
                items = measure.scorable(measure.splits()[args.split])
                n = QUICK.n_eval if args.quick and args.n_eval is None else args.n_eval
                splits[name] = items.head(n) if n else items
                bases[name] = base_scores(model, measure, splits[name], out / f"base_{name.replace(':', '-')}.nc",
                                          progress=progress)
            rows = {f"{name} ({adapter_concept(path)})": cross_row(model, path, args.measure_objs, splits, bases, args.budget,
                                                                 seed=args.seed, progress=progress)
                    for name, path in args.adapter_paths.items()}
            attrs = provenance(backend_of(model), config={"adapters": args.adapter_paths, "measures": args.measures},
                               seed=args.seed, split=args.split, budget=args.budget,
                               n_items=json.dumps({k: len(v) for k, v in splits.items()}))
            written = {"dataset": write_netcdf(cross_dataset(rows, args.measure_objs, attrs), out / "cross_concept.nc")}
            text = markdown(load_dataset(written["dataset"]))
            written["table"] = write_text(out / "cross_concept.md", text)
            print(text)
            return written
    except RunLocked as err:
        args.error(str(err))
    except AdapterLoadError as err:
        args.error(str(err))


if __name__ == "__main__":
    main(sys.argv[1:])
