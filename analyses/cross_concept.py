"""Does a concept's adapter move only its own concept? Each adapter on each concept's measure, at a matched cost.

An honesty adapter that makes the model cheerful would move the sentiment margin as well as (or
instead of) the facts margin. Each saved adapter (trained and sign-calibrated on its own concept, e.g.
by ``interp.train`` or ``compare_methods``) is scaled to the same coherence budget (next-token KL on
the calibration prompts of the measure its sign was calibrated on: the facts for an honesty adapter
calibrated there) and scored at ``-c, 0, +c`` on every measure named (their test
split by default), giving the table rows = adapters, columns = measures. The base model's c = 0 pass
is scored once per measure.

    python -m analyses.cross_concept --adapters honesty=runs/h/adapter,sentiment=runs/s/adapter \\
        --measures honesty:facts,sentiment --budget 0.3 --n-eval 128

A name given more than once (``honesty=runs/h0/adapter,honesty=runs/h1/adapter``) names seeds of one
recipe: the table gives their mean and standard deviation. Each adapter's row is stored under
``<out>/rows/`` as it finishes, so a killed run loses at most the row being scored and a re-run
(with more adapters, say) scores only what it has not; a stored row is reused only when the adapter,
the model weights, the measures, items, split, budget and seed all match.

Results: ``<out>/cross_concept.nc`` (dims run, measure; coordinate ``adapter`` names each run's group;
provenance attrs) and ``cross_concept.md``.
"""

from __future__ import annotations

import argparse
import hashlib
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
from interp.files import RunLocked, read_json_file, run_lock
from interp.measures import Measure, concept_measures, measure_of
from interp.protocol import base_scores, calibrate_method_strength
from interp.provenance import provenance

KEYS = ("coeff", "delta_target", "delta_target_neg", "p_value", "delta_nll", "delta_nll_neg", "flipped_share_neg",
        "token_bias_neg")


def adapter_concept(path: str | Path) -> str:
    """The concept an adapter was trained on (its training record), ``honesty`` where none is recorded."""
    return _concept_of(read_adapter_config(path))


def _concept_of(record: dict) -> str:
    return record.get("training", {}).get("config", {}).get("concept", "honesty")


def adapter_measure(path: str | Path) -> Measure:
    """The measure an adapter's sign was calibrated on (its record names the measure by label), where the
    budget is spent: an honesty adapter calibrated on the facts is scaled on the facts' calibration prompts.
    An adapter with no sign record is scaled on its concept's default measure."""
    record = read_adapter_config(path)
    concept, label = _concept_of(record), record.get("calibration", {}).get("sign", {}).get("measure")
    for name in concept_measures(concept):
        measure = measure_of(concept, name)
        if measure.label == label:
            return measure
    return measure_of(concept)


def cross_row(model, adapter_path: str, measures: dict[str, Measure], splits: dict, bases: dict, budget: float,
              seed: int = 0, progress: bool = True) -> dict[str, dict]:
    """One adapter scaled to ``budget`` nats of KL on the calibration prompts of its own measure (the one its sign
    was calibrated on), scored on every measure."""
    own = adapter_measure(adapter_path)
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


def stored_row(folder: Path, key: dict, compute) -> dict[str, dict]:
    """The row stored for ``key`` under ``folder``, or ``compute()`` stored there first (nothing lost on a kill)."""
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = folder / f"{name}.json"
    if path.is_file():
        record = read_json_file(path, "a stored cross-concept row", "delete it to score the adapter again")
        if record.get("key") == key:
            return record["row"]
    row = compute()
    write_text(path, json.dumps({"key": key, "row": row}, indent=1, default=float))
    return row


def adapter_id(path: str | Path) -> str:
    """What identifies a saved adapter's content: its record names its tensors file by content hash."""
    return hashlib.sha256((Path(path) / "adapter.json").read_bytes()).hexdigest()[:16]


def cross_dataset(runs: list[tuple[str, str, dict[str, dict]]], measures: dict[str, Measure], attrs: dict) -> xr.Dataset:
    """``runs``: (group label, adapter path, row) per adapter; dims run x measure."""
    cols = list(measures)
    data = {k: (("run", "measure"), np.array([[float(row[m].get(k, np.nan)) for m in cols] for _, _, row in runs]))
            for k in KEYS}
    ds = xr.Dataset(data, coords={"run": [str(path) for _, path, _ in runs], "adapter": ("run", [g for g, _, _ in runs]),
                                  "measure": cols, "unit": ("measure", [measures[m].unit for m in cols]),
                                  "label": ("measure", [measures[m].label for m in cols])})
    ds.attrs.update(attrs)
    return ds


def _mean_sd(values: np.ndarray) -> str:
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return f"{values.mean():+.3f}" if len(values) else "nan"
    return f"{values.mean():+.3f} ± {values.std(ddof=1):.3f}"


def markdown(ds: xr.Dataset) -> str:
    """Rows: adapter groups (seeds pooled: mean ± sd); per measure, the shift at +c / -c (its own unit) and ΔNLL at +c."""
    groups = {g: ds.isel(run=np.flatnonzero(ds["adapter"].values == g)) for g in dict.fromkeys(ds["adapter"].values)}
    table: dict[str, list] = {"adapter (its concept)": [str(g) for g in groups],
                              "seeds": [int(r.sizes["run"]) for r in groups.values()],
                              "c": [_mean_sd(r["coeff"].isel(measure=0).values).lstrip("+") for r in groups.values()]}
    for m in ds["measure"].values:
        unit = str(ds["unit"].sel(measure=m).values)
        rows = [r.sel(measure=m) for r in groups.values()]
        table[f"{m}: Δ at +c ({unit})"] = [_mean_sd(r["delta_target"].values) for r in rows]
        table[f"{m}: Δ at -c"] = [_mean_sd(r["delta_target_neg"].values) for r in rows]
        table[f"{m}: ΔNLL +c"] = [_mean_sd(r["delta_nll"].values).lstrip("+") for r in rows]
    head = (f"Cross-concept table on {ds.attrs.get('model_spec', '')}, {ds.attrs.get('split', '')} split, every adapter at "
            f"{ds.attrs.get('budget', '')} nats of next-token KL on the calibration prompts of the measure its sign was "
            f"calibrated on (seeds of one adapter name: mean ± sd)\n\n")
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
        args.adapter_paths = [tuple(part.split("=", 1)) for part in args.adapters.split(",") if part.strip()]
        if not args.adapter_paths or any(len(pair) != 2 or not all(pair) for pair in args.adapter_paths):
            raise ValueError
    except ValueError:
        p.error(f"--adapters needs NAME=PATH,..., got {args.adapters!r}")
    paths = [path for _, path in args.adapter_paths]
    if len(set(paths)) < len(paths):
        p.error(f"--adapters names an adapter twice: {sorted({x for x in paths if paths.count(x) > 1})}")
    for name, path in args.adapter_paths:
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
            weights = backend_of(model).weight_hash
            runs = []
            for name, path in args.adapter_paths:
                key = {"adapter": adapter_id(path), "weight_hash": weights, "measures": list(args.measure_objs),
                       "n_items": {k: len(v) for k, v in splits.items()}, "split": args.split, "budget": args.budget,
                       "seed": args.seed}
                row = stored_row(out / "rows", key, lambda path=path: cross_row(
                    model, path, args.measure_objs, splits, bases, args.budget, seed=args.seed, progress=progress))
                runs.append((f"{name} ({adapter_concept(path)})", path, row))
            attrs = provenance(backend_of(model), config={"adapters": [list(a) for a in args.adapter_paths],
                                                          "measures": args.measures},
                               seed=args.seed, split=args.split, budget=args.budget,
                               n_items=json.dumps({k: len(v) for k, v in splits.items()}))
            written = {"dataset": write_netcdf(cross_dataset(runs, args.measure_objs, attrs), out / "cross_concept.nc")}
            text = markdown(load_dataset(written["dataset"]))
            written["table"] = write_text(out / "cross_concept.md", text)
            print(text)
            return written
    except RunLocked as err:
        args.error(str(err))
    except (AdapterLoadError, ValueError) as err:  # a bad adapter or stored row, named
        args.error(str(err))


if __name__ == "__main__":
    main(sys.argv[1:])
