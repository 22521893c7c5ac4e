"""Which InnerPiSSA recipe moves a concept itself? A search on the validation split.

A *recipe* is a set of training settings (:class:`interp.train.TrainConfig` fields: layer
band, modules, where the loss is read, loss kind, lr, steps, rank, ...). For each recipe
and seed an adapter is trained on the concept's pairs, its sign calibrated on the
calibration split of the concept's own measure (:mod:`interp.measures`), and it is scored
on the *validation* split at ``c = -1, 0, +1``: de-biased DailyDilemmas for honesty
(with the answer bias beside it; only dilemmas where the target label has a sign, as the
target score reads no others), the continuation margin for sentiment. The test split
is never touched here: it is for the final measurement of the recipe chosen.

Before any row, the floor check (:mod:`interp.floor`) of the base model on that split is
stored; a measure below the floor is reported as such and its rows say so.

    python -m analyses.recipe_search --concept sentiment --recipes default,band
    python -m analyses.recipe_search --concept sentiment --recipe 'mine=layers=0.2:0.6;loss_layer=0.7;lr=0.02'

Every (recipe, seed) is a run folder ``<out>/<recipe>/seed_<s>/`` (training log and
checkpoint, the saved adapter, ``result.json``); a killed search resumes, and a recipe
whose settings changed under the same name is refused. The table (markdown + csv) and
``recipe_search.nc`` (dims recipe, seed) are rewritten after every finished run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from tqdm.auto import tqdm

from analyses._io import write_netcdf, write_text
from interp.train import TrainConfig

# Named recipes: TrainConfig overrides as "field=value;field=value" (see parse_recipe).
# Every recipe names what it changes from the earlier single-site default, so the names keep
# their meaning whatever TrainConfig's defaults become ("default" is today's TrainConfig).
_SINGLE = "layers=0.5;modules=mlp.out;loss=proj;loss_layer=none;max_angle=0.3"
_BAND = "layers=0.1:0.5;modules=attn.o,mlp.out;loss_layer=0.55"
RECIPES: dict[str, str] = {
    "default": "",
    # one mlp.out site at depth 0.5, loss read there (the default before this search)
    "single": _SINGLE,
    "single_loss0.7": f"{_SINGLE};loss_layer=0.7",
    "single_angle1": f"{_SINGLE};max_angle=1.0;lr=0.02",
    # a band of residual writers, loss read just after it
    "band": f"{_BAND};loss=proj;max_angle=0.3",
    "band_logsig": f"{_BAND};loss=logsigmoid;max_angle=0.3",
    "band_loss0.8": "layers=0.1:0.5;modules=attn.o,mlp.out;loss_layer=0.8;loss=proj;max_angle=0.3",
    "band_lr0.02": f"{_BAND};loss=proj;lr=0.02;max_angle=0.3",
    "band_mid": "layers=0.3:0.7;modules=attn.o,mlp.out;loss_layer=0.75;loss=proj;max_angle=0.3",
    "band_wide": "layers=0.1:0.8;modules=attn.o,mlp.out;loss_layer=0.85;loss=proj;max_angle=0.3",
    # the rotation bound: 0.3 rad at |c| = 1 saturates within 40 steps
    "band_angle1": f"{_BAND};loss=proj;max_angle=1.0",
    # the band moves the margin by +6 / -3.5 nats/token but costs 1.6 nats of NLL: bound it
    "band_angle0.1": f"{_BAND};loss=proj;max_angle=0.1",
    "band_coh": f"{_BAND};loss=proj;coherence_weight=10;tau=0.05;max_angle=0.3",
    "band_narrow": "layers=0.2:0.4;modules=attn.o,mlp.out;loss_layer=0.45;loss=proj;max_angle=0.3",
    "band_antisym": f"{_BAND};loss=antisym;margin=1.0;max_angle=0.3",
}
_TUPLES = {"modules"}


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_recipe(spec: str) -> dict:
    """``"layers=0.1:0.5;modules=attn.o,mlp.out;lr=0.02"`` -> TrainConfig overrides (names checked)."""
    known = {f.name for f in fields(TrainConfig)}
    out: dict = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ValueError(f"bad recipe part {part!r}: write field=value with a TrainConfig field, one of {sorted(known)}")
        out[key] = tuple(v.strip() for v in value.split(",") if v.strip()) if key in _TUPLES else (
            value.strip() if key == "layers" else _value(value.strip()))
    return out


def recipe_config(base: TrainConfig, spec: str, seed: int) -> TrainConfig:
    """``base`` with the recipe's overrides and the seed."""
    return replace(base, **parse_recipe(spec), seed=seed)


# --------------------------------------------------------------------------- one run


def run_recipe(model, name: str, config: TrainConfig, measure, splits: dict, folder: Path, *, split: str = "validation",
               base=None, progress: bool = True) -> dict:
    """Train (or reload), calibrate the sign and score one recipe -> its ``result.json`` record."""
    from interp.adapters.io import load_adapter, read_adapter_config, save_adapter
    from interp.measures import calibrate_concept_sign, score_measure
    from interp.store import check_run_config
    from interp.train import CHECKPOINT, train_adapter

    done = folder / "result.json"
    folder.mkdir(parents=True, exist_ok=True)
    check_run_config(folder, asdict(config))
    if done.is_file():
        return json.loads(done.read_text())
    saved = folder / "adapter"
    t0 = time.perf_counter()
    if (saved / "adapter.json").is_file():
        adapter = load_adapter(model, saved)
        training = read_adapter_config(saved).get("training", {})
    else:
        adapter, result = train_adapter(model, None, config, out=folder, resume=(folder / CHECKPOINT).is_file(),
                                        progress=progress)
        try:
            calibrate_concept_sign(model, adapter, measure, seed=config.seed)
            training = result.training_extra()
            save_adapter(adapter, saved, extra={"training": training})
        except BaseException:
            adapter.detach()
            raise
    try:
        ds, table = score_measure(model, adapter, measure, splits[split], (-1.0, 0.0, 1.0), progress=progress,
                                  seed=config.seed, base=base)
    finally:
        adapter.detach()
    write_netcdf(ds, folder / "eval.nc")
    record = {"recipe": name, "seed": config.seed, "split": split, "n_items": len(splits[split]),
              "orientation": int(adapter.orientation),
              "sign": (adapter.calibration or {}).get("sign", {}), "train_seconds": training.get("seconds", math.nan),
              "seconds": round(time.perf_counter() - t0, 1), "n_sites": len(adapter.sites),
              "val_gaps": {k: training.get("metrics", {}).get(k) for k in ("gap@-1", "gap@+0", "gap@+1")},
              **row_metrics(table, measure)}
    write_text(done, json.dumps(record, indent=1, default=str))
    return record


def row_metrics(table: pd.DataFrame, measure) -> dict:
    """The +1 / -1 rows of a measure's table as one flat record (names shared by both measures)."""
    t = table.set_index("Coeff")
    if measure.kind == "dailydilemmas":
        pos, neg = t.loc[1.0], t.loc[-1.0]
        return {"effect": float(pos["Δ Truth"]), "effect_neg": float(neg["Δ Truth"]), "p_value": float(pos["p-value"]),
                "delta_nll": float(pos["Δ NLL"]), "delta_nll_neg": float(neg["Δ NLL"]),
                "answer_bias": float(pos["Answer bias"]), "effect_single": float(pos["Δ Truth single-question"]),
                "effect_to_do_half": float(pos["Δ Truth to-do half"]),
                "effect_not_to_do_half": float(pos["Δ Truth not-to-do half"]),
                "monotonic": bool(neg["Δ Truth"] < 0 < pos["Δ Truth"])}
    pos, neg = t.loc[1.0], t.loc[-1.0]
    return {"effect": float(pos["Δ margin"]), "effect_neg": float(neg["Δ margin"]), "p_value": float(pos["p-value"]),
            "delta_nll": float(pos["Δ NLL"]), "delta_nll_neg": float(pos["Δ NLL (-c)"]),
            "monotonic": bool(neg["Δ margin"] < 0 < pos["Δ margin"])}


# --------------------------------------------------------------------------- table


TABLE = ("recipe", "seed", "n_items", "effect", "effect_neg", "monotonic", "p_value", "delta_nll", "delta_nll_neg", "answer_bias",
         "effect_single", "n_sites", "train_seconds")


def finished_records(out: Path, split: str) -> list[dict]:
    """The records of every finished run under ``out`` on ``split`` (oldest first): searches run
    in parallel processes into one folder share one table."""
    paths = sorted(out.glob("*/seed_*/result.json"), key=lambda p: p.stat().st_mtime)
    return [r for r in (json.loads(p.read_text()) for p in paths) if r.get("split") == split]


def search_table(records: Sequence[dict]) -> pd.DataFrame:
    """One row per (recipe, seed), in the order run."""
    return pd.DataFrame([{k: r.get(k, math.nan) for k in TABLE} for r in records])


def search_dataset(records: Sequence[dict], attrs: dict) -> xr.Dataset:
    """Records -> Dataset with dims (recipe, seed)."""
    recipes = list(dict.fromkeys(r["recipe"] for r in records))
    seeds = sorted({r["seed"] for r in records})
    keys = [k for k in TABLE[2:] if k != "monotonic"]
    data = {k: np.full((len(recipes), len(seeds)), np.nan) for k in keys}
    for r in records:
        for k in keys:
            v = r.get(k)
            data[k][recipes.index(r["recipe"]), seeds.index(r["seed"])] = np.nan if v is None else float(v)
    ds = xr.Dataset({k: (("recipe", "seed"), v) for k, v in data.items()}, coords={"recipe": recipes, "seed": seeds})
    ds.attrs.update(attrs)
    return ds


def figure(ds: xr.Dataset):
    """Effect at +1 and -1 (bars, mean over seeds) per recipe, with ΔNLL at +1 on the right axis."""
    import plotly.graph_objects as go

    mean = ds.mean("seed")
    recipes = [str(r) for r in mean["recipe"].values]
    fig = go.Figure()
    fig.add_bar(x=recipes, y=mean["effect"].values, name="Δ at c = +1")
    fig.add_bar(x=recipes, y=mean["effect_neg"].values, name="Δ at c = -1")
    fig.add_scatter(x=recipes, y=mean["delta_nll"].values, name="ΔNLL at +1 (nats/token)", yaxis="y2", mode="markers",
                    marker=dict(size=10, symbol="diamond"))
    fig.update_layout(title=f"Recipe search: {ds.attrs.get('model_spec', '')}, {ds.attrs.get('concept', '')} "
                            f"({ds.attrs.get('split', '')} split)",
                      yaxis_title="Δ measure vs c = 0", barmode="group",
                      yaxis2=dict(title="ΔNLL (nats/token)", overlaying="y", side="right"), legend=dict(orientation="h", y=-0.25))
    return fig


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None):
    from interp.cli import positive_int

    p = argparse.ArgumentParser(prog="python -m analyses.recipe_search", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=TrainConfig.model, help="model spec (see interp.models)")
    p.add_argument("--concept", default="sentiment", help="shipped concept name or a concept .json path")
    p.add_argument("--recipes", default="default,band", help=f"comma-separated names from {sorted(RECIPES)}")
    p.add_argument("--recipe", action="append", default=[], metavar="NAME=SPEC",
                   help="an extra recipe, e.g. 'mine=layers=0.2:0.6;loss_layer=0.7' (repeatable)")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--steps", type=positive_int, default=None, help="override every recipe's steps")
    p.add_argument("--split", choices=("validation", "test"), default="validation",
                   help="scored split (test: only for the final measurement of a chosen recipe)")
    p.add_argument("--n-eval", type=positive_int, default=None,
                   help="score at most this many items of the split (DailyDilemmas: dilemmas with a target sign only)")
    p.add_argument("--out", default=None, help="results folder (default results/recipe_search/<model>/<concept>)")
    p.add_argument("--figures", default="figures", help="folder for the HTML figure ('' for none)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    recipes: dict[str, str] = {}
    for name in filter(None, (n.strip() for n in args.recipes.split(","))):
        if name not in RECIPES:
            p.error(f"unknown recipe {name!r}; named recipes: {sorted(RECIPES)} (or --recipe NAME=SPEC)")
        recipes[name] = RECIPES[name]
    for extra in args.recipe:
        name, sep, spec = extra.partition("=")
        if not sep or not name.strip():
            p.error(f"--recipe needs NAME=SPEC, got {extra!r}")
        recipes[name.strip()] = spec
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        base = replace(TrainConfig(), model=args.model, concept=args.concept,
                       **({"steps": args.steps} if args.steps else {}))
        configs = {(name, s): recipe_config(base, spec, s) for name, spec in recipes.items() for s in seeds}
    except (ValueError, TypeError) as err:
        p.error(str(err))
    return args, configs


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run (or resume) the search; returns the paths written (``dataset``, ``table``, ``figure``)."""
    args, configs = parse_args(argv)
    from interp.floor import floor_line
    from interp.measures import measure_of, measure_splits, stored_floor
    from interp.models import load_model
    from interp.provenance import provenance
    from analyses._io import locked
    from interp.store import load_or_compute

    measure = measure_of(args.concept)
    out = Path(args.out or Path("results") / "recipe_search" / args.model.replace("/", "_") / measure.concept)
    with locked(out):
        progress = not args.no_progress
        model = load_model(args.model)
        splits = measure_splits(measure)
        if measure.kind == "dailydilemmas":  # a search reads the target only: score the dilemmas that carry it
            part = splits[args.split]
            _, signs = part.label_signs([measure.target])
            splits[args.split] = part.subset(part.ids[signs[:, 0] != 0])
        if args.n_eval is not None:
            if args.n_eval < 2:
                raise SystemExit(f"error: --n-eval must be >= 2, got {args.n_eval}")
            splits[args.split] = splits[args.split].head(args.n_eval)
        selection = f"{args.split}{'' if args.n_eval is None else f'_n{len(splits[args.split])}'}"  # names what was scored
        floor = stored_floor(model, measure, splits[args.split], out / f"floor_{selection}.json", progress=progress)
        base = None
        if measure.kind == "dailydilemmas":
            from interp.protocol import base_scores

            base = load_or_compute(out / f"base_{selection}.nc", lambda: base_scores(model, splits[args.split], progress=progress))
        records = []
        for (name, seed), config in tqdm(configs.items(), desc="recipes", disable=not progress):
            records.append(run_recipe(model, name, config, measure, splits, out / name / f"seed_{seed}", split=args.split,
                                      base=base, progress=progress))
            table = search_table(finished_records(out, args.split))  # every finished run in the folder, this one's or not
            header = (f"Recipe search, concept {measure.concept} ({measure.label}), {args.split} split, model {args.model}.\n\n"
                      f"{floor_line(floor)}\n\n")
            write_text(out / f"table_{args.split}.md", header + table.to_markdown(index=False, floatfmt=".4g") + "\n")
            write_text(out / f"table_{args.split}.csv", table.to_csv(index=False))
        ds = search_dataset(records, provenance(model, config={"recipes": {n: asdict(c) for (n, _), c in configs.items()}},
                                                concept=measure.concept, split=args.split, floor_check=json.dumps(floor)))
        written = {"dataset": write_netcdf(ds, out / f"recipe_search_{args.split}.nc"),
                   "table": out / f"table_{args.split}.md"}
        if args.figures:
            from analyses._io import write_html

            written["figure"] = write_html(figure(ds), Path(args.figures) / "recipe_search.html")
        print(search_table(records).to_markdown(index=False, floatfmt=".4g"))
        return written


if __name__ == "__main__":
    main(sys.argv[1:])
